//! Plain HTTP/1.1 requests, answered without hyper. Nearly every request
//! a front gets is one: a whole head read at once, with no body or with a
//! body of known length read with it; no upgrade, no `Expect`, no chunked
//! body. For those, hyper's server was a third of the front's instructions
//! per request (its dispatcher, a body channel per request, a buffer of
//! its own), so the session parses them with httparse, calls the handler
//! and writes the answer itself. Anything else (a head split across reads,
//! a body still to come, an upgrade, a head hyper must refuse with its own
//! 400 or 431) goes to hyper with the bytes read, as every request did
//! before.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::body::Body;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use tokio::io::AsyncWrite;

use super::body::RequestBody;
use crate::http::fields;
use crate::http::framing::MAX_HEADERS;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Buffered answer bytes past which the body is not polled until they are
/// written: the most a slow client makes the front hold per connection.
const OUT_HIGH: usize = 64 * 1024;

/// What the answer to a request depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asked {
    /// HEAD: the answer has no body, whatever its length says.
    pub head: bool,
    /// HTTP/1.0: an answer of unknown length ends with the connection.
    pub http10: bool,
    /// The client keeps the connection for another request.
    pub keep_alive: bool,
}

/// A plain request, from the bytes a connection read.
pub struct Parsed {
    pub request: Request<RequestBody>,
    pub asked: Asked,
    /// What the client sent after it (a pipelined request).
    pub rest: Bytes,
}

/// How an answer's body is framed to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body is sent.
    None,
    /// This many bytes still to send.
    Length(u64),
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client, length unknown).
    Close,
}

/// Why an answer could not be written whole.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing the answer: {0}")]
    Write(#[from] io::Error),
    #[error("the answer's body failed: {0}")]
    Body(BoxError),
    #[error("the answer's body did not match its Content-Length")]
    Length,
}

/// Parses `read` as a plain request: `None` when hyper should take it
/// (not a whole head, a body not all read, an upgrade, `Expect`,
/// `Transfer-Encoding`, more than `max_headers` fields, or anything
/// malformed, which hyper answers with its own error).
pub fn parse(read: &Bytes, max_headers: usize) -> Option<Parsed> {
    let mut fields = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(read, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        _ => return None,
    };
    if req.headers.len() > max_headers {
        return None;
    }
    let http10 = match req.version? {
        0 => true,
        1 => false,
        _ => return None,
    };
    let method = Method::from_bytes(req.method?.as_bytes()).ok()?;
    if method == Method::CONNECT {
        return None;
    }
    let (mut length, mut close, mut keep_alive) = (None, false, false);
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for field in req.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes()).ok()?;
        if name == header::CONTENT_LENGTH {
            if length.is_some() {
                return None;
            }
            length = Some(fields::content_length(field.value)?);
        } else if name == header::TRANSFER_ENCODING
            || name == header::UPGRADE
            || name == header::EXPECT
        {
            return None;
        } else if name == header::CONNECTION {
            if fields::has_token(field.value, b"upgrade") {
                return None;
            }
            close |= fields::has_token(field.value, b"close");
            keep_alive |= fields::has_token(field.value, b"keep-alive");
        }
        let value = HeaderValue::from_maybe_shared(read.slice_ref(field.value)).ok()?;
        headers.append(name, value);
    }
    let end = head_len.checked_add(usize::try_from(length.unwrap_or(0)).ok()?)?;
    if end > read.len() {
        return None;
    }
    let uri = Uri::from_maybe_shared(read.slice_ref(req.path?.as_bytes())).ok()?;
    let mut request = Request::new(RequestBody::whole(read.slice(head_len..end)));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = if http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    *request.headers_mut() = headers;
    let asked = Asked {
        head: request.method() == Method::HEAD,
        http10,
        keep_alive: !close && (keep_alive || !http10),
    };
    Some(Parsed {
        request,
        asked,
        rest: read.slice(end..),
    })
}

/// Writes an answer's head onto `out`, with the framing its body gets and
/// whether the connection closes after it. The handler's own framing
/// fields are replaced by the server's, as hyper's server does: a known
/// length is sent as Content-Length, an unknown one chunked (to an
/// HTTP/1.0 client: until the close). One pass over the fields: each
/// lookup in a header map is a hash.
fn encode_head<B: Body>(
    answer: &Response<B>,
    asked: Asked,
    closing: bool,
    out: &mut Vec<u8>,
) -> (Framing, bool) {
    let status = answer.status();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let (mut declared, mut says_close, mut dated) = (None, false, false);
    for (name, value) in answer.headers() {
        if name == header::TRANSFER_ENCODING {
            continue;
        } else if name == header::CONNECTION {
            says_close |= fields::has_token(value.as_bytes(), b"close");
            continue;
        } else if name == header::CONTENT_LENGTH {
            declared = fields::content_length(value.as_bytes());
        } else if name == header::DATE {
            dated = true;
        }
        fields::put(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let bodiless = asked.head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = match (bodiless, declared, answer.body().size_hint().exact()) {
        (true, _, _) => Framing::None,
        (false, Some(n), _) => Framing::Length(n),
        (false, None, Some(n)) => {
            fields::put(out, b"content-length", n.to_string().as_bytes());
            Framing::Length(n)
        }
        (false, None, None) if asked.http10 => Framing::Close,
        (false, None, None) => {
            fields::put(out, b"transfer-encoding", b"chunked");
            Framing::Chunked
        }
    };
    let close = closing || !asked.keep_alive || says_close || framing == Framing::Close;
    if close {
        fields::put(out, b"connection", b"close");
    } else if asked.http10 {
        fields::put(out, b"connection", b"keep-alive");
    }
    if !dated {
        DATE.with_borrow_mut(|date| fields::put(out, b"date", date.now()));
    }
    out.extend_from_slice(b"\r\n");
    (framing, close)
}

/// The Date field's value (RFC 9110 6.6.1), formatted once a second.
struct Date {
    second: u64,
    text: Vec<u8>,
}

impl Date {
    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second || self.text.is_empty() {
            self.second = second;
            self.text = httpdate::fmt_http_date(now).into_bytes();
        }
        &self.text
    }
}

thread_local! {
    static DATE: RefCell<Date> = const { RefCell::new(Date { second: 0, text: Vec::new() }) };
}

/// One request's answer, from the handler's future to its last byte
/// written.
pub struct Exchange<F, B> {
    stage: Stage<F, B>,
    asked: Asked,
    /// Encoded, not yet written: `out[sent..]`.
    out: Vec<u8>,
    sent: usize,
    close: bool,
}

enum Stage<F, B> {
    Handling(Pin<Box<F>>),
    Body(B, Framing),
    Flushing,
}

/// How an exchange ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Done {
    /// The connection waits for the client's next request.
    KeepAlive,
    Close,
}

impl<F, B> Exchange<F, B>
where
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    pub fn new(answer: F, asked: Asked) -> Self {
        Exchange {
            stage: Stage::Handling(Box::pin(answer)),
            asked,
            out: Vec::new(),
            sent: 0,
            close: false,
        }
    }

    /// Drives the answer onto `io`. `closing`: the server is shutting the
    /// connection, so an answer not begun yet says it closes.
    pub fn poll<S: AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        closing: bool,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Done, Error>> {
        loop {
            match &mut self.stage {
                Stage::Handling(answer) => {
                    let answer = ready!(answer.as_mut().poll(cx));
                    self.out.reserve(1024);
                    let (framing, close) = encode_head(&answer, self.asked, closing, &mut self.out);
                    self.close = close;
                    let body = answer.into_body();
                    self.stage = match framing {
                        Framing::None => Stage::Flushing,
                        Framing::Length(0) if body.is_end_stream() => Stage::Flushing,
                        _ => Stage::Body(body, framing),
                    };
                }
                Stage::Body(body, framing) => {
                    if self.out.len() - self.sent >= OUT_HIGH {
                        ready!(self.poll_write_out(io, cx))?;
                        continue;
                    }
                    match Pin::new(body).poll_frame(cx) {
                        Poll::Ready(Some(Ok(frame))) => {
                            if let Ok(data) = frame.into_data() {
                                put_data(&mut self.out, framing, data)?;
                            }
                        }
                        Poll::Ready(Some(Err(e))) => {
                            return Poll::Ready(Err(Error::Body(e.into())));
                        }
                        Poll::Ready(None) => {
                            match framing {
                                Framing::Length(0) | Framing::None | Framing::Close => {}
                                Framing::Length(_) => return Poll::Ready(Err(Error::Length)),
                                Framing::Chunked => self.out.extend_from_slice(b"0\r\n\r\n"),
                            }
                            self.stage = Stage::Flushing;
                        }
                        Poll::Pending => {
                            if self.sent == self.out.len() {
                                return Poll::Pending;
                            }
                            ready!(self.poll_write_out(io, cx))?;
                        }
                    }
                }
                Stage::Flushing => {
                    ready!(self.poll_write_out(io, cx))?;
                    return Poll::Ready(Ok(if self.close {
                        Done::Close
                    } else {
                        Done::KeepAlive
                    }));
                }
            }
        }
    }

    /// Writes what is encoded, then flushes (a TLS stream holds its last
    /// record until then).
    fn poll_write_out<S: AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.sent < self.out.len() {
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.out[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.out.clear();
        self.sent = 0;
        Pin::new(io).poll_flush(cx)
    }
}

/// Encodes a data frame under its framing.
fn put_data(out: &mut Vec<u8>, framing: &mut Framing, data: Bytes) -> Result<(), Error> {
    match framing {
        Framing::None => {}
        Framing::Length(left) => {
            *left = left.checked_sub(data.len() as u64).ok_or(Error::Length)?;
            out.extend_from_slice(&data);
        }
        Framing::Close => out.extend_from_slice(&data),
        Framing::Chunked if data.is_empty() => {}
        Framing::Chunked => {
            use std::io::Write;
            write!(out, "{:x}\r\n", data.len()).expect("writing to a Vec");
            out.extend_from_slice(&data);
            out.extend_from_slice(b"\r\n");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
