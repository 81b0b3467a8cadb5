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

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode, Version, http::response};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::backends::Key;
use super::pool::Pool;
use super::request_body::BoxError;

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
    pub fn encode(&mut self, method: &Method, target: &str, headers: &HeaderMap, body: &[u8]) {
        encode(method, target, headers, body, &mut self.out);
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
            if let Some((parts, framing, keep_alive)) = self.parse_head(method)? {
                let mut body = LinkBody {
                    link: Some(self),
                    framing,
                    keep_alive,
                    home: Some(home),
                };
                body.finish_if_done();
                return Ok((parts, body));
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
    #[allow(clippy::type_complexity)]
    fn parse_head(
        &mut self,
        method: &Method,
    ) -> Result<Option<(response::Parts, Framing, bool)>, LinkError> {
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
            // Room for a request's fields too: hyper's server reuses the
            // map of the answer it wrote for the next request it reads,
            // and the forwarded fields are added to that one.
            let mut headers = HeaderMap::with_capacity(self.spans.len().max(12));
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
            return Ok(Some((parts, framing, keep_alive)));
        }
    }
}

/// How an answer's body ends (RFC 9112, 6.3).
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
/// carry another request after it.
pub fn framing(
    method: &Method,
    status: StatusCode,
    version: Version,
    headers: &HeaderMap,
) -> Result<(Framing, bool), &'static str> {
    let mut keep_alive = version == Version::HTTP_11;
    for value in headers.get_all(header::CONNECTION) {
        for token in value.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.eq_ignore_ascii_case(b"close") {
                keep_alive = false;
            } else if token.eq_ignore_ascii_case(b"keep-alive") && version == Version::HTTP_10 {
                keep_alive = true;
            }
        }
    }
    if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Done, keep_alive));
    }
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter().peekable();
    if codings.peek().is_some() {
        let chunked = codings
            .last()
            .and_then(|v| v.as_bytes().rsplit(|&b| b == b',').next())
            .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        // With a Content-Length beside it, the length is ignored and the
        // connection not reused (RFC 9112, 6.3, 3).
        let reuse = keep_alive && !headers.contains_key(header::CONTENT_LENGTH);
        return Ok(if chunked {
            (Framing::Chunked(Chunk::Size), reuse)
        } else {
            (Framing::Close, false)
        });
    }
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let n = std::str::from_utf8(part.trim_ascii())
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or("the Content-Length is not a number")?;
            if length.is_some_and(|l| l != n) {
                return Err("two different Content-Lengths");
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(n) => (Framing::Length(n), keep_alive),
        None => (Framing::Close, false),
    })
}

fn encode(method: &Method, target: &str, headers: &HeaderMap, body: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(256 + body.len());
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() && !headers.contains_key(header::CONTENT_LENGTH) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// A worker's answer body read from its [`Link`].
pub struct LinkBody {
    /// Boxed: a connection lives longer than any one answer, and the
    /// answer's body is moved on its way to the client.
    link: Option<Box<Link>>,
    framing: Framing,
    keep_alive: bool,
    home: Option<(Arc<Pool>, Key)>,
}

impl LinkBody {
    /// Gives the connection back once the body is all read, so that the
    /// one that reads the last byte does not also have to ask for the end.
    fn finish_if_done(&mut self) {
        if self.framing != Framing::Done {
            return;
        }
        if let (Some(link), Some((pool, key))) = (self.link.take(), self.home.take())
            && self.keep_alive
            && link.buf.is_empty()
        {
            pool.checkin_link(key, link);
        }
    }

    fn data(&mut self, n: usize) -> Frame<Bytes> {
        let link = self
            .link
            .as_mut()
            .expect("a body being read holds its link");
        Frame::data(link.buf.split_to(n).freeze())
    }

    /// The next step of the body: a frame, its end, or more to read.
    fn step(&mut self) -> Result<Option<Frame<Bytes>>, &'static str> {
        let Some(link) = self.link.as_mut() else {
            return Ok(None);
        };
        let buffered = link.buf.len();
        match self.framing {
            Framing::Done => Ok(None),
            Framing::Length(left) if buffered > 0 => {
                let n = buffered.min(usize::try_from(left).unwrap_or(usize::MAX));
                self.framing = Framing::Length(left - n as u64);
                if left == n as u64 {
                    self.framing = Framing::Done;
                }
                let frame = self.data(n);
                self.finish_if_done();
                Ok(Some(frame))
            }
            Framing::Close if buffered > 0 => Ok(Some(self.data(buffered))),
            Framing::Chunked(chunk) => self.chunk_step(chunk),
            Framing::Length(_) | Framing::Close => Ok(None),
        }
    }

    fn chunk_step(&mut self, chunk: Chunk) -> Result<Option<Frame<Bytes>>, &'static str> {
        let link = self
            .link
            .as_mut()
            .expect("a body being read holds its link");
        let buf = &mut link.buf;
        match chunk {
            Chunk::Size | Chunk::Trailers => {
                let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
                    if buf.len() > MAX_CHUNK_LINE {
                        return Err("a chunk line is too long");
                    }
                    return Ok(None);
                };
                let line = buf.split_to(end + 2);
                let line = &line[..end];
                self.framing = if chunk == Chunk::Trailers {
                    // Trailer fields end here, as nginx drops them.
                    if line.is_empty() {
                        Framing::Done
                    } else {
                        Framing::Chunked(Chunk::Trailers)
                    }
                } else {
                    match chunk_size(line)? {
                        0 => Framing::Chunked(Chunk::Trailers),
                        n => Framing::Chunked(Chunk::Data(n)),
                    }
                };
                self.finish_if_done();
                self.step()
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                self.framing = Framing::Chunked(if left == n as u64 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left - n as u64)
                });
                Ok(Some(self.data(n)))
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(None);
                }
                if &buf[..2] != b"\r\n" {
                    return Err("a chunk does not end with CRLF");
                }
                buf.advance(2);
                self.framing = Framing::Chunked(Chunk::Size);
                self.step()
            }
        }
    }
}

/// A chunk-size line's size: hex digits, then extensions after `;`.
fn chunk_size(line: &[u8]) -> Result<u64, &'static str> {
    let digits = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if digits.is_empty() || digits.len() > 16 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err("a chunk size is not hexadecimal");
    }
    let text = std::str::from_utf8(digits).map_err(|_| "a chunk size is not hexadecimal")?;
    u64::from_str_radix(text, 16).map_err(|_| "a chunk size is not hexadecimal")
}

impl Body for LinkBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match this.step() {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Err(why) => {
                    this.link = None;
                    return Poll::Ready(Some(Err(LinkError::Malformed(why).into())));
                }
                Ok(None) => {}
            }
            let Some(link) = this.link.as_mut() else {
                return Poll::Ready(None);
            };
            if this.framing == Framing::Done {
                return Poll::Ready(None);
            }
            match ready!(link.poll_fill(cx)) {
                Ok(0) if this.framing == Framing::Close => {
                    this.framing = Framing::Done;
                    this.link = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.link = None;
                    let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
                    return Poll::Ready(Some(Err(LinkError::NoAnswer(eof).into())));
                }
                Ok(_) => {}
                Err(e) => {
                    this.link = None;
                    return Poll::Ready(Some(Err(LinkError::NoAnswer(e).into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn fields(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

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

    #[test]
    fn a_request_gets_a_length_for_its_body_unless_it_has_one() {
        let mut out = Vec::new();
        let h = fields(&[("host", "a")]);
        encode(
            &Method::POST,
            "/x?y",
            &h,
            &Bytes::from_static(b"hi"),
            &mut out,
        );
        assert_eq!(
            out,
            b"POST /x?y HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\nhi"
        );
        encode(&Method::GET, "/", &h, b"", &mut out);
        assert_eq!(out, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n");
        let h = fields(&[("content-length", "2")]);
        encode(&Method::PUT, "/", &h, b"hi", &mut out);
        assert_eq!(out, b"PUT / HTTP/1.1\r\ncontent-length: 2\r\n\r\nhi");
    }

    /// The worker's side of a socket pair: what it read, after writing `answer`.
    async fn exchange(
        method: Method,
        answer: &'static [u8],
    ) -> (Result<(response::Parts, Vec<u8>), String>, Arc<Pool>) {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let pool = Arc::new(Pool::default());
        let worker = tokio::spawn(async move {
            let mut got = vec![0u8; 1024];
            let n = theirs.read(&mut got).await.unwrap();
            // A byte at a time: every state of the parser sees a split.
            for b in answer {
                theirs.write_all(std::slice::from_ref(b)).await.unwrap();
            }
            got.truncate(n);
            got
        });
        let link = Link::new(Box::new(ours));
        let key = Key { id: 1, pid: 1 };
        let mut link = link;
        link.encode(&Method::GET, "/", &HeaderMap::new(), b"");
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
        assert_eq!(sent, b"GET / HTTP/1.1\r\n\r\n");
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
