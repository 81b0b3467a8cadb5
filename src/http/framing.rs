//! A look at each HTTP/1.1 request's framing before hyper parses it, for
//! the one case hyper accepts and a front must not: a request whose length
//! two parties could read differently (request smuggling). hyper itself
//! refuses differing duplicate `Content-Length`s, bad chunk sizes and
//! obsolete line folding; it accepts `Content-Length` together with
//! `Transfer-Encoding` (the chunked framing wins, as RFC 9112 allows) and
//! identical duplicate `Content-Length`s. A [`Feed`] reads the bytes as
//! they pass to hyper (heads, then body lengths, chunk by chunk, to find
//! the next head) and records a verdict per request in order; the server
//! hands each request hyper parses its verdict, and the front answers an
//! ambiguous one 400 without forwarding it. The same reading tells when
//! each request head began, for the header timeout of a keep-alive
//! connection's later requests. (A request the server parses itself came
//! whole in one read, with no duplicate length and no chunked body.)

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::fields;

/// The largest request head (request line and headers) taken, in bytes;
/// a larger one is answered 431. Gunicorn allows 4 KiB per line and 8 KiB
/// per field, nginx 4 x 8 KiB by default: 64 KiB is above what any of
/// them forward.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Header fields per request at most (Gunicorn's `--limit-request-fields`).
pub const MAX_HEADERS: usize = 100;

/// In a request's extensions when its framing could be read two ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ambiguous;

const H2_PREFACE_HEAD: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Where the reader is in the byte stream.
#[derive(Debug, Clone, PartialEq)]
enum State {
    /// Collecting a request head.
    Head(Vec<u8>),
    /// Skipping a body of known length.
    Length(u64),
    /// Reading a chunk-size line.
    ChunkSize(Vec<u8>),
    /// Skipping chunk data, then its CRLF.
    ChunkData(u64),
    /// Reading trailer lines after the last chunk, until an empty one.
    Trailers(Vec<u8>),
    /// Not HTTP/1.1 requests any more (HTTP/2, an upgrade, a framing error
    /// hyper will refuse): nothing more to look at.
    Done,
}

/// The framing rules, over bytes. Pure: no I/O.
#[derive(Debug)]
pub struct Reader {
    state: State,
    /// One per request head, in order: true when ambiguous.
    verdicts: VecDeque<bool>,
    /// Request heads begun so far.
    heads: u64,
}

impl Default for Reader {
    fn default() -> Self {
        Reader {
            state: State::Head(Vec::new()),
            verdicts: VecDeque::new(),
            heads: 0,
        }
    }
}

/// What a request head says about the body after it.
enum Body {
    None,
    Length(u64),
    Chunked,
    /// Ambiguous, or an upgrade: the connection ends after it as far as
    /// framing goes.
    Stop,
}

fn judge(head: &[u8]) -> (bool, Body) {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => judge_parsed(&req),
        // --limit-request-fields may allow more than the usual: room for
        // every line of this head.
        Err(httparse::Error::TooManyHeaders) => {
            let lines = head.windows(2).filter(|w| *w == b"\r\n").count();
            let mut headers = vec![httparse::EMPTY_HEADER; lines];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(head) {
                Ok(httparse::Status::Complete(_)) => judge_parsed(&req),
                _ => (false, Body::Stop),
            }
        }
        // hyper answers what it cannot parse with 400 itself.
        _ => (false, Body::Stop),
    }
}

fn judge_parsed(req: &httparse::Request<'_, '_>) -> (bool, Body) {
    let (mut lengths, mut te, mut upgrade) = (Vec::new(), Vec::new(), false);
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            lengths.push(h.value);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te.push(h.value);
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    if lengths.len() > 1 || (!lengths.is_empty() && !te.is_empty()) {
        return (true, Body::Stop);
    }
    if upgrade {
        return (false, Body::Stop);
    }
    if let Some(last) = te.last() {
        let chunked = fields::ends_chunked(last);
        return (false, if chunked { Body::Chunked } else { Body::Stop });
    }
    match lengths.first() {
        None => (false, Body::None),
        Some(v) => match fields::content_length(v.trim_ascii()) {
            Some(0) => (false, Body::None),
            Some(n) => (false, Body::Length(n)),
            None => (false, Body::Stop),
        },
    }
}

/// Passes over up to `left` of `bytes`; true once `left` is used up.
fn skip(left: &mut u64, bytes: &mut &[u8]) -> bool {
    let take = (*left).min(bytes.len() as u64);
    *left -= take;
    *bytes = &bytes[take as usize..];
    *left == 0
}

impl Reader {
    /// The number of the request head begun and not yet whole, if any.
    pub fn head_in_progress(&self) -> Option<u64> {
        match &self.state {
            State::Head(buf) if !buf.is_empty() => Some(self.heads),
            _ => None,
        }
    }

    /// Between requests: every byte read so far belongs to a request
    /// whose head and body are whole, and none is left for another.
    pub fn at_rest(&self) -> bool {
        matches!(&self.state, State::Head(buf) if buf.is_empty())
    }

    /// Takes the next bytes the client sent.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Done => return,
                State::Head(buf) => {
                    // Blank lines before a request line are allowed (RFC 9112, 2.2).
                    if buf.is_empty() {
                        let skip = bytes
                            .iter()
                            .take_while(|b| **b == b'\r' || **b == b'\n')
                            .count();
                        bytes = &bytes[skip..];
                        if bytes.is_empty() {
                            return;
                        }
                        self.heads += 1;
                    }
                    let before = buf.len();
                    buf.extend_from_slice(bytes);
                    let search_from = before.saturating_sub(3);
                    let Some(end) = buf[search_from..]
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .map(|p| search_from + p + 4)
                    else {
                        if buf.len() > MAX_HEAD_BYTES {
                            // hyper answers 431; nothing to read after it.
                            self.state = State::Done;
                        }
                        return;
                    };
                    let used = end - before;
                    // HTTP/2's preface reads as a head: the rest is frames.
                    if buf.starts_with(H2_PREFACE_HEAD) {
                        self.state = State::Done;
                        return;
                    }
                    let (ambiguous, body) = judge(&buf[..end]);
                    self.verdicts.push_back(ambiguous);
                    self.state = match body {
                        Body::None => State::Head(Vec::new()),
                        Body::Length(n) => State::Length(n),
                        Body::Chunked => State::ChunkSize(Vec::new()),
                        Body::Stop => State::Done,
                    };
                    bytes = &bytes[used..];
                }
                State::Length(left) => {
                    if skip(left, &mut bytes) {
                        self.state = State::Head(Vec::new());
                    }
                }
                State::ChunkSize(line) => {
                    let before = line.len();
                    line.extend_from_slice(bytes);
                    let Some(end) = fields::line_end(&line[before.saturating_sub(1)..])
                        .map(|p| before.saturating_sub(1) + p)
                    else {
                        if line.len() > 4096 {
                            self.state = State::Done;
                        }
                        return;
                    };
                    let size = fields::chunk_size(&line[..end]);
                    bytes = &bytes[end + 2 - before..];
                    self.state = match size {
                        None => State::Done,
                        Some(0) => State::Trailers(Vec::new()),
                        // The data, then its CRLF.
                        Some(n) => State::ChunkData(n.saturating_add(2)),
                    };
                }
                State::ChunkData(left) => {
                    if skip(left, &mut bytes) {
                        self.state = State::ChunkSize(Vec::new());
                    }
                }
                State::Trailers(buf) => {
                    let before = buf.len();
                    buf.extend_from_slice(bytes);
                    // An empty line: CRLF at the start, or CRLFCRLF.
                    let end = if buf.starts_with(b"\r\n") {
                        Some(2)
                    } else {
                        let from = before.saturating_sub(3);
                        buf[from..]
                            .windows(4)
                            .position(|w| w == b"\r\n\r\n")
                            .map(|p| from + p + 4)
                    };
                    let Some(end) = end else {
                        if buf.len() > MAX_HEAD_BYTES {
                            self.state = State::Done;
                        }
                        return;
                    };
                    bytes = &bytes[end - before..];
                    self.state = State::Head(Vec::new());
                }
            }
        }
    }
}

/// What a [`Feed`] shares with its [`Verdicts`].
#[derive(Default)]
struct Seen {
    reader: Reader,
    /// The request head in progress: its number, and when its first byte
    /// came.
    head: Option<(u64, Instant)>,
}

/// Where a connection's bytes for hyper are read by a [`Reader`]: the
/// server's own plain requests are parsed whole and judged where they are
/// parsed (see `server::plain`), so only what hyper reads is fed here.
#[derive(Clone)]
pub struct Feed(Arc<Mutex<Seen>>);

/// A connection's [`Feed`] and its [`Verdicts`].
pub fn watch() -> (Feed, Verdicts) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    (Feed(seen.clone()), Verdicts(seen))
}

impl Feed {
    /// Takes the next bytes hyper reads.
    pub fn bytes(&self, new: &[u8]) {
        if new.is_empty() {
            return;
        }
        let mut seen = lock(&self.0);
        seen.reader.feed(new);
        seen.head = match (seen.reader.head_in_progress(), seen.head) {
            (Some(n), Some((m, since))) if n == m => Some((m, since)),
            (Some(n), _) => Some((n, Instant::now())),
            (None, _) => None,
        };
    }
}

fn lock(seen: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(|e| e.into_inner())
}

/// The verdicts of a watched connection, taken by the server as its
/// requests come.
#[derive(Clone)]
pub struct Verdicts(Arc<Mutex<Seen>>);

impl Verdicts {
    /// Whether the next request in order was found ambiguous. Requests on
    /// one HTTP/1 connection are served in order, so the oldest verdict is
    /// the next request's.
    pub fn next_is_ambiguous(&self) -> bool {
        lock(&self.0).reader.verdicts.pop_front() == Some(true)
    }

    /// Whether the connection is between requests, with every request
    /// read taken by the server: nothing of one is left to read or hand
    /// over.
    pub fn at_rest(&self) -> bool {
        let seen = lock(&self.0);
        seen.reader.at_rest() && seen.reader.verdicts.is_empty()
    }

    /// Resolves once a request head has been arriving for `limit` and is
    /// still not whole: nginx's client_header_timeout for every request
    /// of a keep-alive connection, counted from the head's first byte. It
    /// looks at the head only when polled, so the connection's own future
    /// must be polled first (a `biased` select), which reads the bytes.
    pub fn head_past(&self, limit: Duration) -> HeadPast<'_> {
        HeadPast {
            seen: &self.0,
            limit,
            timer: None,
        }
    }
}

/// The future of [`Verdicts::head_past`].
pub struct HeadPast<'a> {
    seen: &'a Mutex<Seen>,
    limit: Duration,
    /// The head the timer runs for, and the timer: made with the first
    /// head, so a connection that sends none costs no timer.
    timer: Option<(u64, Pin<Box<Sleep>>)>,
}

impl Future for HeadPast<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some((n, since)) = lock(self.seen).head else {
            return Poll::Pending;
        };
        let deadline = since + self.limit;
        let (timing, sleep) = self
            .timer
            .get_or_insert_with(|| (n, Box::pin(tokio::time::sleep_until(deadline))));
        if *timing != n {
            *timing = n;
            sleep.as_mut().reset(deadline);
        }
        sleep.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn verdicts(input: &[u8]) -> Vec<bool> {
        let mut r = Reader::default();
        r.feed(input);
        r.verdicts.into_iter().collect()
    }

    /// Fed one byte at a time, the answer is the same.
    fn verdicts_bytewise(input: &[u8]) -> Vec<bool> {
        let mut r = Reader::default();
        for b in input {
            r.feed(std::slice::from_ref(b));
        }
        r.verdicts.into_iter().collect()
    }

    #[test]
    fn length_and_chunked_bodies_are_skipped_to_the_next_head() {
        let input = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: x\r\n\r\nPOST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\nGET /d HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(verdicts(input), vec![false; 4]);
        assert_eq!(verdicts_bytewise(input), vec![false; 4]);
    }

    #[test]
    fn content_length_with_transfer_encoding_is_ambiguous() {
        let input = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n";
        assert_eq!(
            verdicts(input),
            vec![true],
            "nothing after it is read as a request"
        );
        let te_first =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n";
        assert_eq!(verdicts(te_first), vec![true]);
    }

    #[test]
    fn duplicate_content_lengths_are_ambiguous_even_when_equal() {
        let input = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(verdicts(input), vec![true]);
    }

    #[test]
    fn a_head_is_in_progress_from_its_first_byte_to_its_end() {
        let mut r = Reader::default();
        r.feed(b"\r\n");
        assert_eq!(r.head_in_progress(), None, "blank lines begin nothing");
        r.feed(b"GET / HTTP/1.1\r\nHost: x\r\n");
        assert_eq!(r.head_in_progress(), Some(1));
        r.feed(b"\r\nPOST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nab");
        assert_eq!(r.head_in_progress(), None, "in a body");
        r.feed(b"cG");
        assert_eq!(r.head_in_progress(), Some(3));
    }

    #[test]
    fn at_rest_only_between_whole_requests() {
        let mut r = Reader::default();
        assert!(r.at_rest());
        r.feed(b"\r\n");
        assert!(r.at_rest(), "blank lines begin nothing");
        r.feed(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n");
        assert!(!r.at_rest(), "a head in progress");
        r.feed(b"\r\nab");
        assert!(!r.at_rest(), "a body in progress");
        r.feed(b"c");
        assert!(r.at_rest());
        r.feed(b"PRI * HTTP/2.0\r\n\r\n");
        assert!(!r.at_rest(), "no longer HTTP/1.1 requests");
    }

    #[test]
    fn an_http2_preface_stops_the_reader() {
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        input.extend_from_slice(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00");
        assert!(verdicts(&input).is_empty());
    }

    #[test]
    fn a_bad_chunk_size_stops_the_reader() {
        let input =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(
            verdicts(input),
            vec![false],
            "hyper refuses the body itself"
        );
    }

    #[test]
    fn an_upgrade_hands_the_connection_over() {
        let input = b"GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nGET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n";
        assert_eq!(
            verdicts(input),
            vec![false],
            "tunnel bytes are not requests"
        );
    }

    proptest! {
        #[test]
        fn any_bytes_are_read_without_panic_and_split_reads_agree(
            input in proptest::collection::vec(any::<u8>(), 0..600),
            cut in 0usize..600,
        ) {
            let whole = verdicts(&input);
            let cut = cut.min(input.len());
            let mut r = Reader::default();
            r.feed(&input[..cut]);
            r.feed(&input[cut..]);
            prop_assert_eq!(whole, r.verdicts.into_iter().collect::<Vec<_>>());
        }

        #[test]
        fn request_like_bytes_are_read_without_panic(
            input in "(GET|POST) / HTTP/1.1\r\n((Content-Length|Transfer-Encoding): [0-9a-z, ]{0,8}\r\n){0,3}\r\n[0-9a-f;\r\n]{0,40}",
        ) {
            let _ = verdicts(input.as_bytes());
            let _ = verdicts_bytewise(input.as_bytes());
        }
    }
}
