//! corral's own HTTP/1.1 exchange with a worker, for a request whose body
//! is in hand (none, or held whole): the head and body go in one write,
//! the answer is parsed where it was read and its fields are slices of
//! that read, and the body is framed here (a length, chunked, or to the
//! close), the connection given back to the pool with its last byte.
//! hyper's client took 11,000 instructions a request for this (its
//! connection task, a channel each way, a parse into a buffer of its own);
//! this takes about 4,000, and the front 30,200 a request instead of
//! 38,900 (docs/benchmarks/front.md). A streamed body or an upgrade
//! still goes through hyper's client (`pool::Sender`), which writes a body
//! as it comes and hands over the connection of a `101`.

mod body;
mod framing;

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BytesMut};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode, Version, http::response};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::backends::Key;
use super::head::Head as RequestHead;
use super::pool::Pool;
use crate::http::fields;
pub use body::LinkBody;
use framing::{Framing, framing};

/// A worker connection's socket, Unix or TCP.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// Bytes asked of the socket per read, as hyper's client does.
const READ_SIZE: usize = 8 * 1024;

/// The longest answer head taken (hyper's client takes about as much).
const MAX_HEAD: usize = 64 * 1024;

/// Fields in an answer head at most (hyper's default).
const MAX_FIELDS: usize = 100;

/// The longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// A keep-alive connection to one worker, with what was read from it
/// and not yet used.
pub struct Link {
    io: Box<dyn Stream>,
    buf: BytesMut,
    /// Where each field of the answer being parsed lies in `buf` (name
    /// and value, offset and length): kept, so a parse allocates nothing.
    spans: Vec<[usize; 4]>,
    /// The request being sent, kept for the same reason.
    out: Vec<u8>,
}

/// An answer's head, with how its body ends and whether the connection
/// can carry another request after it.
struct Head {
    parts: response::Parts,
    framing: Framing,
    keep_alive: bool,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Nothing of the request was written: the worker never saw it.
    #[error("the worker connection closed before the request was written: {0}")]
    Unsent(io::Error),
    /// The request went, and no answer came.
    #[error("no answer from the worker: {0}")]
    NoAnswer(io::Error),
    #[error("the worker's answer is not valid HTTP/1.1: {0}")]
    Malformed(&'static str),
}

impl Link {
    pub fn new(io: Box<dyn Stream>) -> Box<Link> {
        Box::new(Link {
            io,
            buf: BytesMut::new(),
            spans: Vec::new(),
            out: Vec::new(),
        })
    }

    /// Whether an idle connection can carry a request: the worker has not
    /// closed it (nor sent anything unasked). Asked without waiting: the
    /// runtime has recorded a close it saw, and nothing is read otherwise.
    pub fn usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(Waker::noop());
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut probe),
            Poll::Pending
        )
    }

    /// Reads what the worker sent next into the buffer: 0 at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 2 {
            self.buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// Takes the request to send next: `method target HTTP/1.1`, the
    /// fields, and the body with a Content-Length if it has none.
    pub fn encode(&mut self, head: &RequestHead, target: &str, body: &[u8]) {
        encode(head, target, body, &mut self.out);
    }

    /// Sends the request given to [`Link::encode`] and reads the answer's
    /// head. The body comes with it, holding the connection, which goes
    /// `home` once the body has been read to its end.
    pub async fn exchange(
        mut self: Box<Self>,
        method: &Method,
        home: (Arc<Pool>, Key),
    ) -> Result<(response::Parts, LinkBody), LinkError> {
        self.send().await?;
        loop {
            if let Some(head) = self.parse_head(method)? {
                let body = LinkBody::new(self, head.framing, head.keep_alive, home);
                return Ok((head.parts, body));
            }
            if self.buf.len() >= MAX_HEAD {
                return Err(LinkError::Malformed("the answer's head is too large"));
            }
            match self.fill().await {
                Ok(0) => {
                    return Err(LinkError::NoAnswer(io::ErrorKind::UnexpectedEof.into()));
                }
                Ok(_) => {}
                Err(e) => return Err(LinkError::NoAnswer(e)),
            }
        }
    }

    async fn send(&mut self) -> Result<(), LinkError> {
        // A closed connection fails the first write with nothing taken
        // (EPIPE, ECONNRESET): the request can go elsewhere as it is.
        let n = self.io.write(&self.out).await.map_err(LinkError::Unsent)?;
        if n == 0 {
            return Err(LinkError::Unsent(io::ErrorKind::WriteZero.into()));
        }
        self.io
            .write_all(&self.out[n..])
            .await
            .map_err(LinkError::NoAnswer)
    }

    /// The answer's head if the buffer holds all of it; a `1xx` before
    /// it is passed over, as hyper's client does.
    fn parse_head(&mut self, method: &Method) -> Result<Option<Head>, LinkError> {
        loop {
            // Uninitialised: zeroing room for every field cost more than
            // the parse.
            let mut fields = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_FIELDS];
            let mut answer = httparse::Response::new(&mut []);
            let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut answer,
                &self.buf,
                &mut fields,
            );
            let len = match parsed {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(_) => return Err(LinkError::Malformed("the answer's head does not parse")),
            };
            let code = answer.code.unwrap_or(0);
            if (100..200).contains(&code) && code != 101 {
                self.buf.advance(len);
                continue;
            }
            if code == 101 {
                return Err(LinkError::Malformed(
                    "101 to a request that asked no upgrade",
                ));
            }
            let status = StatusCode::from_u16(code)
                .map_err(|_| LinkError::Malformed("the status code is out of range"))?;
            let version = if answer.version == Some(0) {
                Version::HTTP_10
            } else {
                Version::HTTP_11
            };
            let base = self.buf.as_ptr() as usize;
            self.spans.clear();
            self.spans.extend(answer.headers.iter().map(|field| {
                [
                    field.name.as_ptr() as usize - base,
                    field.name.len(),
                    field.value.as_ptr() as usize - base,
                    field.value.len(),
                ]
            }));
            let head = self.buf.split_to(len).freeze();
            let mut headers = HeaderMap::with_capacity(self.spans.len());
            for &[name_at, name_len, value_at, value_len] in &self.spans {
                let name = HeaderName::from_bytes(&head[name_at..name_at + name_len])
                    .map_err(|_| LinkError::Malformed("a field name is not valid"))?;
                let value =
                    HeaderValue::from_maybe_shared(head.slice(value_at..value_at + value_len))
                        .map_err(|_| LinkError::Malformed("a field value is not valid"))?;
                headers.append(name, value);
            }
            let (framing, keep_alive) =
                framing(method, status, version, &headers).map_err(LinkError::Malformed)?;
            let (mut parts, ()) = hyper::Response::new(()).into_parts();
            parts.status = status;
            parts.version = version;
            parts.headers = headers;
            return Ok(Some(Head {
                parts,
                framing,
                keep_alive,
            }));
        }
    }
}

fn encode(head: &RequestHead, target: &str, body: &[u8], out: &mut Vec<u8>) {
    let RequestHead {
        method,
        headers,
        forwarding,
        ..
    } = head;
    out.clear();
    out.reserve(256 + body.len());
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        fields::put(out, name.as_str().as_bytes(), value.as_bytes());
    }
    forwarding.write(out);
    if !body.is_empty() && !headers.contains_key(header::CONTENT_LENGTH) {
        fields::put(out, b"content-length", body.len().to_string().as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::headers::Forwarding;
    use tokio::io::AsyncReadExt;

    pub(super) fn fields(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    /// A request's head as the front makes it, from a client at 10.0.0.1.
    fn head(method: Method, pairs: &[(&str, &str)]) -> RequestHead {
        let mut headers = fields(pairs);
        let allow: crate::values::AllowIps = "127.0.0.1".parse().unwrap();
        let peer = Some("10.0.0.1".parse().unwrap());
        let forwarding = Forwarding::new(&mut headers, peer, false, &allow);
        RequestHead {
            method,
            uri: hyper::Uri::from_static("/"),
            headers,
            forwarding,
        }
    }

    const FORWARDED: &str = "forwarded: for=10.0.0.1;proto=http\r\n\
        x-forwarded-for: 10.0.0.1\r\nx-forwarded-proto: http\r\n";

    #[test]
    fn a_request_gets_the_forwarded_fields_and_a_length_for_its_body_unless_it_has_one() {
        let mut out = Vec::new();
        let mut link_head = |method, pairs: &[(&str, &str)], target, body: &[u8]| {
            let head = head(method, pairs);
            encode(&head, target, body, &mut out);
            String::from_utf8(out.clone()).unwrap()
        };
        assert_eq!(
            link_head(Method::POST, &[("host", "a")], "/x?y", b"hi"),
            "POST /x?y HTTP/1.1\r\nhost: a\r\nforwarded: for=10.0.0.1;proto=http;host=\"a\"\r\n\
             x-forwarded-for: 10.0.0.1\r\nx-forwarded-proto: http\r\nx-forwarded-host: a\r\n\
             content-length: 2\r\n\r\nhi"
        );
        assert_eq!(
            link_head(Method::GET, &[], "/", b""),
            format!("GET / HTTP/1.1\r\n{FORWARDED}\r\n")
        );
        assert_eq!(
            link_head(Method::PUT, &[("content-length", "2")], "/", b"hi"),
            format!("PUT / HTTP/1.1\r\ncontent-length: 2\r\n{FORWARDED}\r\nhi")
        );
    }

    /// The worker's side of a socket pair: what it read, after writing `answer`.
    async fn exchange(
        method: Method,
        answer: &'static [u8],
    ) -> (Result<(response::Parts, Vec<u8>), String>, Arc<Pool>) {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let pool = Arc::new(Pool::default());
        let worker = tokio::spawn(async move {
            let mut got = Vec::new();
            while !got.ends_with(b"\r\n\r\n") {
                let mut room = [0u8; 64];
                let n = theirs.read(&mut room).await.unwrap();
                assert!(n > 0, "closed before the head ended");
                got.extend_from_slice(&room[..n]);
            }
            // A byte at a time: every state of the parser sees a split.
            for b in answer {
                theirs.write_all(std::slice::from_ref(b)).await.unwrap();
            }
            got
        });
        let link = Link::new(Box::new(ours));
        let key = Key { id: 1, pid: 1 };
        let mut link = link;
        link.encode(&head(Method::GET, &[]), "/", b"");
        let result = match link.exchange(&method, (pool.clone(), key)).await {
            Ok((parts, body)) => {
                use http_body_util::BodyExt;
                match body.collect().await {
                    Ok(b) => Ok((parts, b.to_bytes().to_vec())),
                    Err(e) => Err(e.to_string()),
                }
            }
            Err(e) => Err(e.to_string()),
        };
        let sent = worker.await.unwrap();
        assert_eq!(
            sent,
            format!("GET / HTTP/1.1\r\n{FORWARDED}\r\n").as_bytes()
        );
        (result, pool)
    }

    #[tokio::test]
    async fn answers_are_read_by_length_chunks_or_close_and_the_link_goes_home_when_reusable() {
        let key = Key { id: 1, pid: 1 };
        let (r, pool) = exchange(
            Method::GET,
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello",
        )
        .await;
        let (parts, body) = r.unwrap();
        assert_eq!(parts.status, 200);
        assert_eq!(parts.headers["x-a"], "b");
        assert_eq!(body, b"hello");
        assert_eq!(pool.idle_links(key), 1, "given back after its last byte");

        let chunked = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nTrailer: x\r\n\r\n";
        let (r, pool) = exchange(Method::GET, chunked).await;
        let (parts, body) = r.unwrap();
        assert_eq!(parts.status, 201, "the 1xx is passed over");
        assert_eq!(body, b"hello!");
        assert_eq!(pool.idle_links(key), 1);

        let (r, pool) = exchange(Method::GET, b"HTTP/1.0 200 OK\r\n\r\nto the end").await;
        assert_eq!(r.unwrap().1, b"to the end");
        assert_eq!(pool.idle_links(key), 0, "read to its close: not reused");

        let (r, pool) = exchange(
            Method::HEAD,
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
        )
        .await;
        assert_eq!(r.unwrap().1, b"");
        assert_eq!(pool.idle_links(key), 1);
    }

    #[tokio::test]
    async fn broken_answers_are_errors() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhiXX",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"NOT HTTP\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-",
        ] {
            let (r, pool) = exchange(Method::GET, answer).await;
            assert!(
                r.is_err(),
                "{:?} was taken",
                String::from_utf8_lossy(answer)
            );
            assert_eq!(pool.idle_links(Key { id: 1, pid: 1 }), 0);
        }
    }

    #[tokio::test]
    async fn a_link_the_worker_closed_is_not_usable() {
        let (ours, theirs) = tokio::io::duplex(64);
        let mut link = Link::new(Box::new(ours));
        assert!(link.usable());
        drop(theirs);
        assert!(!link.usable());
    }
}
