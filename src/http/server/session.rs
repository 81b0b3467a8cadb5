//! One client connection's HTTP, including the time it waits between
//! requests. Its first bytes choose the protocol: HTTP/2's preface, else
//! HTTP/1.1. A plain HTTP/1.1 request read whole is answered by the
//! session itself where the server allows it (see [`super::plain`]);
//! hyper serves the rest. hyper holds some 25 KB per HTTP/1.1 connection
//! whatever the connection does (its read and write buffers, its state,
//! the slot for the handler's future), so an HTTP/1.1 connection that its
//! server finds quiet is handed back by hyper ([`Session::park`]): only
//! the socket is held while it waits, and the next request is read afresh
//! when the client sends again. HTTP/2 keeps its connection state (stream
//! ids, header tables, settings) for the connection's life, so it is
//! never handed back.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use futures::future::Map;
use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::body::RequestBody;
use super::lent::Lent;
use super::plain;
use crate::http::framing::Feed;

/// How a server speaks each protocol, made once per server.
pub struct Protocols {
    pub http1: http1::Builder,
    /// Plain HTTP/1.1 requests with at most this many header fields are
    /// answered without hyper; `None`: hyper serves every request.
    pub plain: Option<usize>,
    /// `None` where HTTP/2 is not served.
    pub http2: Option<http2::Builder<TokioExecutor>>,
}

/// What an HTTP/2 client sends first (RFC 9113, 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The most of a waiting connection's next bytes read before hyper takes
/// over (it reads the rest itself): a usual request head. On the stack,
/// so a waiting connection holds no buffer.
const FIRST_READ: usize = 4096;

type BoxError = Box<dyn StdError + Send + Sync>;

/// What answers a connection's requests, whichever way they came.
pub trait Service: Clone + Unpin + Send + 'static {
    type Body: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static;
    type Future: Future<Output = Response<Self::Body>> + Send + 'static;
    fn call(&self, request: Request<RequestBody>) -> Self::Future;
}

impl<F, Fut, B> Service for F
where
    F: Fn(Request<RequestBody>) -> Fut + Clone + Unpin + Send + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static,
{
    type Body = B;
    type Future = Fut;
    fn call(&self, request: Request<RequestBody>) -> Fut {
        self(request)
    }
}

/// A [`Service`] as hyper calls it.
#[derive(Clone)]
pub struct Hyper<Svc>(Svc);

type Infallibly<B> = fn(Response<B>) -> Result<Response<B>, Infallible>;

impl<Svc: Service> hyper::service::Service<Request<Incoming>> for Hyper<Svc> {
    type Response = Response<Svc::Body>;
    type Error = Infallible;
    type Future = Map<Svc::Future, Infallibly<Svc::Body>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.0.call(request.map(RequestBody::Incoming)).map(Ok)
    }
}

type Io<S> = TokioIo<Lent<S>>;
type Http1<S, Svc> = Pin<Box<http1::UpgradeableConnection<Io<S>, Hyper<Svc>>>>;
type Http2<S, Svc> = Pin<Box<http2::Connection<Io<S>, Hyper<Svc>, TokioExecutor>>>;

enum State<S, Svc: Service> {
    /// Waiting for the client's next bytes, with those read so far.
    Waiting {
        io: S,
        read: Bytes,
    },
    /// Answering a plain request itself, with what the client sent after.
    Plain {
        io: S,
        rest: Bytes,
        exchange: plain::Exchange<Svc::Future, Svc::Body>,
    },
    /// Closing after a plain answer.
    Closing(S),
    Http1(Http1<S, Svc>),
    /// Parked: hyper finishes and gives the socket back.
    HandingBack(Http1<S, Svc>),
    Http2(Http2<S, Svc>),
    Ended,
}

/// What a session tells the server that drives it.
pub enum Event {
    /// An HTTP/1.1 connection is served by hyper again (or for the first
    /// time): it may be parked once quiet.
    Resumed,
    /// The connection is over.
    Ended(Result<(), Error>),
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error("waiting for a request: {0}")]
    Read(#[from] std::io::Error),
    #[error(transparent)]
    Plain(#[from] plain::Error),
}

/// A client connection, served by hyper or by itself, or parked.
pub struct Session<S, Svc: Service> {
    state: State<S, Svc>,
    protocols: Arc<Protocols>,
    /// Cloned for each hyper connection.
    service: Hyper<Svc>,
    handing_back: Arc<AtomicBool>,
    /// No protocol chosen yet: the first bytes may be HTTP/2's preface.
    fresh: bool,
    /// Asked to end: a parked connection is closed, not waited on.
    closing: bool,
    /// Where the bytes hyper reads go, on a front.
    feed: Option<Feed>,
}

impl<S, Svc> Session<S, Svc>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Svc: Service,
{
    /// A new connection, waiting for its first bytes.
    pub fn new(io: S, service: Svc, protocols: Arc<Protocols>, feed: Option<Feed>) -> Self {
        Session {
            state: State::Waiting {
                io,
                read: Bytes::new(),
            },
            protocols,
            service: Hyper(service),
            handing_back: Arc::new(AtomicBool::new(false)),
            fresh: true,
            closing: false,
            feed,
        }
    }

    /// The next event.
    pub fn next_event(&mut self) -> impl Future<Output = Event> + '_ {
        std::future::poll_fn(|cx| self.poll_event(cx))
    }

    /// Resolves when the connection is over, through any resumption.
    pub async fn ended(&mut self) -> Result<(), Error> {
        loop {
            if let Event::Ended(result) = self.next_event().await {
                return result;
            }
        }
    }

    /// Hands a quiet HTTP/1.1 connection back from hyper, which frees
    /// what it holds; false if the connection is not one hyper serves
    /// over HTTP/1.1. The server asks only when no request is in flight or
    /// begun: should one be after all, hyper answers it first, as it does
    /// at a graceful shutdown.
    pub fn park(&mut self) -> bool {
        if self.closing || !matches!(self.state, State::Http1(_)) {
            return false;
        }
        let State::Http1(mut conn) = std::mem::replace(&mut self.state, State::Ended) else {
            unreachable!("matched above")
        };
        self.handing_back.store(true, Ordering::Relaxed);
        conn.as_mut().graceful_shutdown();
        self.state = State::HandingBack(conn);
        true
    }

    /// Ends the connection once what is in progress is answered (HTTP/2
    /// sends its GOAWAY); a connection waiting for bytes ends at once.
    pub fn graceful_shutdown(&mut self) {
        self.closing = true;
        match &mut self.state {
            State::Waiting { .. } => self.state = State::Ended,
            // Said in the answer's head, or after it.
            State::Plain { .. } | State::Closing(_) => {}
            State::Http1(conn) | State::HandingBack(conn) => conn.as_mut().graceful_shutdown(),
            State::Http2(conn) => conn.as_mut().graceful_shutdown(),
            State::Ended => {}
        }
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        loop {
            match &mut self.state {
                State::Waiting { io, read } => {
                    let h2 = self.fresh && self.protocols.http2.is_some();
                    let preface_begun =
                        h2 && read.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(read);
                    if read.is_empty() || preface_begun {
                        match std::task::ready!(poll_more(io, read, cx)) {
                            Err(e) => return self.end(Err(e.into())),
                            Ok(false) => return self.end(Ok(())),
                            Ok(true) => continue,
                        }
                    }
                    let h2 = h2 && read.starts_with(H2_PREFACE);
                    self.fresh = false;
                    if !h2 && self.answer_plain() {
                        continue;
                    }
                    if self.resume(h2) {
                        return Poll::Ready(Event::Resumed);
                    }
                }
                State::Plain { io, exchange, .. } => {
                    match std::task::ready!(exchange.poll(io, self.closing, cx)) {
                        Err(e) => return self.end(Err(e.into())),
                        Ok(done) => {
                            let State::Plain { io, rest, .. } =
                                std::mem::replace(&mut self.state, State::Ended)
                            else {
                                unreachable!("matched above")
                            };
                            self.state = match (done, self.closing) {
                                (plain::Done::KeepAlive, false) => {
                                    State::Waiting { io, read: rest }
                                }
                                _ => State::Closing(io),
                            };
                        }
                    }
                }
                State::Closing(io) => {
                    let closed = std::task::ready!(Pin::new(io).poll_shutdown(cx));
                    return self.end(closed.map_err(|e| plain::Error::Write(e).into()));
                }
                State::Http1(conn) => return conn.as_mut().poll(cx).map(|r| self.ended_with(r)),
                State::Http2(conn) => return conn.as_mut().poll(cx).map(|r| self.ended_with(r)),
                State::HandingBack(conn) => match std::task::ready!(conn.as_mut().poll(cx)) {
                    Err(e) => return self.end(Err(e.into())),
                    Ok(()) => {
                        let State::HandingBack(conn) =
                            std::mem::replace(&mut self.state, State::Ended)
                        else {
                            unreachable!("matched above")
                        };
                        self.handing_back.store(false, Ordering::Relaxed);
                        // None: upgraded, and so no longer a request's to park.
                        let Some(parts) = Pin::into_inner(conn).into_parts() else {
                            return self.end(Ok(()));
                        };
                        if self.closing {
                            return self.end(Ok(()));
                        }
                        let (io, replay) = parts.io.into_inner().into_parts();
                        self.state = State::Waiting {
                            io,
                            read: read_ahead(&replay, &parts.read_buf),
                        };
                    }
                },
                State::Ended => return Poll::Ready(Event::Ended(Ok(()))),
            }
        }
    }

    /// Begins answering what was read as a plain request, if it is one.
    fn answer_plain(&mut self) -> bool {
        let State::Waiting { read, .. } = &self.state else {
            unreachable!("called while waiting")
        };
        let Some(plain::Parsed {
            request,
            asked,
            rest,
        }) = self
            .protocols
            .plain
            .and_then(|most| plain::parse(read, most))
        else {
            return false;
        };
        let State::Waiting { io, .. } = std::mem::replace(&mut self.state, State::Ended) else {
            unreachable!("matched above")
        };
        let exchange = plain::Exchange::new(self.service.0.call(request), asked);
        self.state = State::Plain { io, rest, exchange };
        true
    }

    /// Hands the waiting socket to a fresh hyper connection; true for
    /// HTTP/1.1.
    fn resume(&mut self, h2: bool) -> bool {
        let State::Waiting { io, read } = std::mem::replace(&mut self.state, State::Ended) else {
            unreachable!("called while waiting")
        };
        let lent = Lent::new(io, read, self.handing_back.clone(), self.feed.clone());
        let io = TokioIo::new(lent);
        let service = self.service.clone();
        let protocols = self.protocols.clone();
        let http2 = protocols.http2.as_ref().filter(|_| h2);
        self.state = match http2 {
            Some(builder) => State::Http2(Box::pin(builder.serve_connection(io, service))),
            None => State::Http1(Box::pin(
                protocols
                    .http1
                    .serve_connection(io, service)
                    .with_upgrades(),
            )),
        };
        if self.closing {
            self.graceful_shutdown();
        }
        http2.is_none()
    }

    fn end(&mut self, result: Result<(), Error>) -> Poll<Event> {
        self.state = State::Ended;
        Poll::Ready(Event::Ended(result))
    }

    fn ended_with(&mut self, result: hyper::Result<()>) -> Event {
        self.state = State::Ended;
        Event::Ended(result.map_err(Error::from))
    }
}

/// Reads what the client sent next onto `read`: false at its end.
fn poll_more<S: AsyncRead + Unpin>(
    io: &mut S,
    read: &mut Bytes,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<bool>> {
    let mut buf = [MaybeUninit::uninit(); FIRST_READ];
    let mut filled = ReadBuf::uninit(&mut buf);
    std::task::ready!(Pin::new(io).poll_read(cx, &mut filled))?;
    let new = filled.filled();
    if new.is_empty() {
        return Poll::Ready(Ok(false));
    }
    *read = if read.is_empty() {
        Bytes::copy_from_slice(new)
    } else {
        read_ahead(read, new)
    };
    Poll::Ready(Ok(true))
}

/// `a` then `b` in a buffer of their own: hyper's read buffer, which its
/// leftover points into, is 8 KiB or more.
fn read_ahead(a: &[u8], b: &[u8]) -> Bytes {
    if a.is_empty() && b.is_empty() {
        return Bytes::new();
    }
    let mut both = BytesMut::with_capacity(a.len() + b.len());
    both.extend_from_slice(a);
    both.extend_from_slice(b);
    both.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use hyper_util::rt::TokioTimer;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// Drives `session` until the client reads an answer ending with `end`.
    async fn answer<Svc: Service>(
        session: &mut Session<DuplexStream, Svc>,
        client: &mut DuplexStream,
        end: &str,
    ) {
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).ends_with(end) {
            let mut buf = [0u8; 1024];
            tokio::select! {
                event = session.next_event() => assert!(
                    matches!(event, Event::Resumed),
                    "the connection ended with {:?} read",
                    String::from_utf8_lossy(&got)
                ),
                n = client.read(&mut buf) => got.extend_from_slice(&buf[..n.unwrap()]),
            }
        }
    }

    /// A parked connection keeps its socket open, and the bytes that wake
    /// it (here half a request head) reach the fresh hyper connection.
    fn session(plain: Option<usize>) -> (Session<DuplexStream, impl Service>, DuplexStream) {
        let (near, client) = tokio::io::duplex(4096);
        let service = |req: Request<RequestBody>| async move {
            let path = req.uri().path().to_string();
            Response::new(Full::new(Bytes::from(path)))
        };
        let mut http1 = http1::Builder::new();
        http1.timer(TokioTimer::new());
        let protocols = Protocols {
            http1,
            plain,
            http2: None,
        };
        (
            Session::new(near, service, Arc::new(protocols), None),
            client,
        )
    }

    #[tokio::test]
    async fn a_parked_connection_is_served_again_from_the_bytes_that_woke_it() {
        let (mut session, mut client) = session(None);
        client
            .write_all(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        answer(&mut session, &mut client, "/one").await;
        assert!(session.park());
        let waiting = tokio::time::timeout(Duration::from_millis(100), session.next_event());
        assert!(waiting.await.is_err(), "parked, waiting for bytes");
        client.write_all(b"GET /tw").await.unwrap();
        assert!(matches!(session.next_event().await, Event::Resumed));
        client
            .write_all(b"o HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        answer(&mut session, &mut client, "/two").await;
        drop(client);
        assert!(matches!(session.ended().await, Ok(())));
    }

    /// Plain requests are answered without hyper, pipelined ones in order;
    /// a head split across reads goes to hyper, and once hyper hands the
    /// connection back, plain requests are answered again.
    #[tokio::test]
    async fn plain_requests_are_answered_by_the_session_and_the_rest_by_hyper() {
        let (mut session, mut client) = session(Some(10));
        client
            .write_all(b"GET /one HTTP/1.1\r\n\r\nGET /two HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        answer(&mut session, &mut client, "/two").await;
        client.write_all(b"GET /thr").await.unwrap();
        assert!(
            matches!(session.next_event().await, Event::Resumed),
            "hyper reads the rest"
        );
        client.write_all(b"ee HTTP/1.1\r\n\r\n").await.unwrap();
        answer(&mut session, &mut client, "/three").await;
        assert!(session.park());
        client
            .write_all(b"GET /four HTTP/1.1\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut rest = String::new();
        let (ended, _) = tokio::join!(session.ended(), client.read_to_string(&mut rest));
        assert!(ended.is_ok());
        assert!(
            rest.contains("connection: close\r\n") && rest.ends_with("/four"),
            "{rest}"
        );
    }
}
