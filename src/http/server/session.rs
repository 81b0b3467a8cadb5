//! One client connection's HTTP, including the time it waits between
//! requests. Its first bytes choose the protocol: HTTP/2's preface, else
//! HTTP/1.1. hyper holds some 25 KB per HTTP/1.1 connection whatever the
//! connection does (its read and write buffers, its state, the slot for
//! the handler's future), so an HTTP/1.1 connection that its server finds
//! quiet is handed back by hyper ([`Session::park`]): only the socket is
//! held while it waits, and a fresh hyper connection takes it up, with
//! the bytes already read, when the client sends again. HTTP/2 keeps its
//! connection state (stream ids, header tables, settings) for the
//! connection's life, so it is never handed back.

use std::error::Error as StdError;
use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::lent::Lent;

/// How a server speaks each protocol, made once per server.
pub struct Protocols {
    pub http1: http1::Builder,
    /// `None` where HTTP/2 is not served.
    pub http2: Option<http2::Builder<TokioExecutor>>,
}

/// What an HTTP/2 client sends first (RFC 9113, 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The most of a waiting connection's next bytes read before hyper takes
/// over (it reads the rest itself): a usual request head. On the stack,
/// so a waiting connection holds no buffer.
const FIRST_READ: usize = 4096;

type Io<S> = TokioIo<Lent<S>>;
type Http1<S, Svc> = Pin<Box<http1::UpgradeableConnection<Io<S>, Svc>>>;

enum State<S, Svc: HttpService<Incoming>> {
    /// Waiting for the client's next bytes, with those read so far.
    Waiting {
        io: S,
        read: Bytes,
    },
    Http1(Http1<S, Svc>),
    /// Parked: hyper finishes and gives the socket back.
    HandingBack(Http1<S, Svc>),
    Http2(Pin<Box<http2::Connection<Io<S>, Svc, TokioExecutor>>>),
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
}

/// A client connection, served by hyper or parked.
pub struct Session<S, Svc: HttpService<Incoming>> {
    state: State<S, Svc>,
    protocols: Arc<Protocols>,
    /// Cloned for each hyper connection.
    service: Svc,
    handing_back: Arc<AtomicBool>,
    /// No protocol chosen yet: the first bytes may be HTTP/2's preface.
    fresh: bool,
    /// Asked to end: a parked connection is closed, not waited on.
    closing: bool,
}

type BoxError = Box<dyn StdError + Send + Sync>;

impl<S, Svc, B> Session<S, Svc>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Svc: HttpService<Incoming, ResBody = B> + Clone + Unpin + Send + 'static,
    Svc::Future: Send + 'static,
    Svc::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// A new connection, waiting for its first bytes.
    pub fn new(io: S, service: Svc, protocols: Arc<Protocols>) -> Self {
        Session {
            state: State::Waiting {
                io,
                read: Bytes::new(),
            },
            protocols,
            service,
            handing_back: Arc::new(AtomicBool::new(false)),
            fresh: true,
            closing: false,
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
                    if self.resume(h2) {
                        return Poll::Ready(Event::Resumed);
                    }
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

    /// Hands the waiting socket to a fresh hyper connection; true for
    /// HTTP/1.1.
    fn resume(&mut self, h2: bool) -> bool {
        let State::Waiting { io, read } = std::mem::replace(&mut self.state, State::Ended) else {
            unreachable!("called while waiting")
        };
        let io = TokioIo::new(Lent::new(io, read, self.handing_back.clone()));
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
    use std::convert::Infallible;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// Drives `session` until the client reads an answer ending with `end`.
    async fn answer<Svc, B>(
        session: &mut Session<DuplexStream, Svc>,
        client: &mut DuplexStream,
        end: &str,
    ) where
        Svc: HttpService<Incoming, ResBody = B> + Clone + Unpin + Send + 'static,
        Svc::Future: Send + 'static,
        Svc::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
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
    #[tokio::test]
    async fn a_parked_connection_is_served_again_from_the_bytes_that_woke_it() {
        let (near, mut client) = tokio::io::duplex(4096);
        let service = hyper::service::service_fn(|req: hyper::Request<Incoming>| async move {
            let path = req.uri().path().to_string();
            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(path))))
        });
        let mut http1 = http1::Builder::new();
        http1.timer(TokioTimer::new());
        let protocols = Arc::new(Protocols { http1, http2: None });
        let mut session = Session::new(near, service, protocols);
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
}
