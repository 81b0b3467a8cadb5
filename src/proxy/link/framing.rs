//! How a worker's answer body ends (RFC 9112, 6.3), and whether its
//! connection can carry another request: pure rules over the answer's
//! head, read by [`super::body::LinkBody`].

use hyper::header::{self, HeaderMap};
use hyper::{Method, StatusCode, Version};

use crate::http::fields;

/// How an answer's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body, or all of it read.
    Done,
    /// This many bytes still to come.
    Length(u64),
    Chunked(Chunk),
    /// Everything up to the close.
    Close,
}

/// Where a chunked body's reading stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// The framing of an answer to `method`, and whether the connection can
/// carry another request after it. One pass over the fields in order: a
/// look-up by name is a hash, three per answer.
pub fn framing(
    method: &Method,
    status: StatusCode,
    version: Version,
    headers: &HeaderMap,
) -> Result<(Framing, bool), &'static str> {
    let mut keep_alive = version == Version::HTTP_11;
    let mut last_coding = None;
    let (mut length, mut has_length, mut bad_length) = (None, false, None);
    for (name, value) in headers {
        let value = value.as_bytes();
        if name == header::CONNECTION {
            for token in fields::tokens(value) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && version == Version::HTTP_10 {
                    keep_alive = true;
                }
            }
        } else if name == header::TRANSFER_ENCODING {
            last_coding = Some(value);
        } else if name == header::CONTENT_LENGTH {
            has_length = true;
            for part in fields::tokens(value) {
                if bad_length.is_some() {
                    break;
                }
                match fields::content_length(part) {
                    None => bad_length = Some("the Content-Length is not a number"),
                    Some(n) if length.is_some_and(|l| l != n) => {
                        bad_length = Some("two different Content-Lengths");
                    }
                    Some(n) => length = Some(n),
                }
            }
        }
    }
    if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Done, keep_alive));
    }
    if let Some(coding) = last_coding {
        // With a Content-Length beside it, the length is ignored and the
        // connection not reused (RFC 9112, 6.3, 3).
        return Ok(if fields::ends_chunked(coding) {
            (Framing::Chunked(Chunk::Size), keep_alive && !has_length)
        } else {
            (Framing::Close, false)
        });
    }
    if let Some(why) = bad_length {
        return Err(why);
    }
    Ok(match length {
        Some(n) => (Framing::Length(n), keep_alive),
        None => (Framing::Close, false),
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::fields;
    use super::*;

    #[test]
    fn framing_follows_rfc_9112() {
        let get = Method::GET;
        let ok = StatusCode::OK;
        let v11 = Version::HTTP_11;
        let f = |m: &Method, s: StatusCode, v: Version, h: &[(&str, &str)]| {
            framing(m, s, v, &fields(h))
        };
        assert_eq!(
            f(&get, ok, v11, &[("content-length", "5")]),
            Ok((Framing::Length(5), true))
        );
        assert_eq!(
            f(&get, ok, v11, &[("content-length", "5, 5")]),
            Ok((Framing::Length(5), true))
        );
        assert!(
            f(
                &get,
                ok,
                v11,
                &[("content-length", "5"), ("content-length", "6")]
            )
            .is_err()
        );
        assert!(f(&get, ok, v11, &[("content-length", "+5")]).is_err());
        assert_eq!(
            f(&Method::HEAD, ok, v11, &[("content-length", "5")]),
            Ok((Framing::Done, true))
        );
        assert_eq!(
            f(&get, StatusCode::NO_CONTENT, v11, &[]),
            Ok((Framing::Done, true))
        );
        assert_eq!(
            f(
                &get,
                StatusCode::NOT_MODIFIED,
                v11,
                &[("content-length", "9")]
            ),
            Ok((Framing::Done, true))
        );
        assert_eq!(
            f(&get, ok, v11, &[("transfer-encoding", "gzip, chunked")]),
            Ok((Framing::Chunked(Chunk::Size), true))
        );
        assert_eq!(
            f(
                &get,
                ok,
                v11,
                &[("transfer-encoding", "chunked"), ("content-length", "3")]
            ),
            Ok((Framing::Chunked(Chunk::Size), false)),
            "a length beside chunked is ignored, and the connection not reused"
        );
        assert_eq!(
            f(&get, ok, v11, &[("transfer-encoding", "gzip")]),
            Ok((Framing::Close, false))
        );
        assert_eq!(f(&get, ok, v11, &[]), Ok((Framing::Close, false)));
        assert_eq!(
            f(
                &get,
                ok,
                v11,
                &[("connection", "close"), ("content-length", "1")]
            ),
            Ok((Framing::Length(1), false))
        );
        assert_eq!(
            f(&get, ok, Version::HTTP_10, &[("content-length", "1")]),
            Ok((Framing::Length(1), false))
        );
        assert_eq!(
            f(
                &get,
                ok,
                Version::HTTP_10,
                &[("connection", "Keep-Alive"), ("content-length", "1")]
            ),
            Ok((Framing::Length(1), true))
        );
    }
}
