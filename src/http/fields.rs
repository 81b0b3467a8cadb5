//! HTTP/1.1's syntax for the few fields and lines corral reads and writes
//! itself, over bytes (RFC 9110, 9112): one rule each, shared by the
//! framing reader (`framing`), the front's plain requests
//! (`server::plain`) and the exchange with the workers (`proxy::link`).

/// The elements of a comma-separated field value (`Connection`,
/// `Transfer-Encoding`), trimmed.
pub fn tokens(value: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    value.split(|b| *b == b',').map(<[u8]>::trim_ascii)
}

/// Whether a comma-separated field value has `token`, in any case.
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    tokens(value).any(|t| t.eq_ignore_ascii_case(token))
}

/// Whether a `Transfer-Encoding` value ends with `chunked`: the only
/// coding that frames a body (RFC 9112 6.3).
pub fn ends_chunked(value: &[u8]) -> bool {
    tokens(value)
        .next_back()
        .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
}

/// A `Content-Length` value: digits only (no sign, no list), as RFC 9110
/// 8.6 has it; `None` past `u64`.
pub fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, b| {
        let digit = b.is_ascii_digit().then(|| u64::from(b - b'0'))?;
        n.checked_mul(10)?.checked_add(digit)
    })
}

/// A chunk-size line's size: hex digits, then any extensions after `;`.
pub fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.split(|b| *b == b';').next()?.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    // Past u64 is an error; leading zeros are not (hyper takes them).
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

/// Where the first CRLF in `buf` begins.
pub fn line_end(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// Writes one field line, `name: value` and its CRLF.
pub fn put(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_digits_only_and_fit_a_u64() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"+5",
            b"-1",
            b"5 ",
            b"1,1",
            b"18446744073709551616",
        ] {
            assert_eq!(
                content_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn chunk_sizes_are_hex_before_their_extensions() {
        assert_eq!(chunk_size(b"1aF"), Some(0x1af));
        assert_eq!(chunk_size(b"5 ;name=value"), Some(5));
        assert_eq!(chunk_size(b"00000000000000005"), Some(5));
        for bad in [&b""[..], b"+5", b"zz", b"10000000000000000"] {
            assert_eq!(chunk_size(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn tokens_are_trimmed_and_compared_in_any_case() {
        assert!(has_token(b"keep-alive, Close", b"close"));
        assert!(!has_token(b"closed", b"close"));
        assert!(ends_chunked(b"gzip, Chunked "));
        assert!(!ends_chunked(b"chunked, gzip"));
        assert_eq!(line_end(b"5\r\nhello\r\n"), Some(1));
    }
}
