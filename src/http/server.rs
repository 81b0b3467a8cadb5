//! The one accept loop for corral's own HTTP servers: the admin API, the
//! operator's probes and metrics, the built-in worker and proxy mode's
//! front. It keeps a cap on the connections served at once across all of a
//! server's listeners (the rest wait in the listen backlog), a header-read
//! timeout and size limits so a slow or greedy client cannot hold a slot,
//! and a graceful shutdown: stop accepting, serve what was already
//! accepted, let answers in progress finish (HTTP/2 connections get a
//! GOAWAY and their open streams finish). Servers that allow it speak
//! HTTP/2 as well: with prior knowledge on plain listeners (h2c), and by
//! ALPN on TLS ones. Where the framing reader tells where requests end (the
//! front), an HTTP/1.1 connection waiting for its next request holds only
//! its socket (the `session` module).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hyper::body::Body;
use hyper::{Request, Response};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::activity::{Activity, Registration, Registry, Tracked};
use super::framing;
use super::tls::Certs;
pub use body::RequestBody;
use limits::protocols;
pub use limits::{Limits, SMALL};
use session::{Event, Protocols, Session};

mod body;
mod lent;
mod limits;
mod plain;
mod session;

/// How often a new connection waiting at the cap tries again to make room.
const EVICT_RETRY: Duration = Duration::from_millis(50);

/// How long an idle connection being closed gets: HTTP/1.1 closes at
/// once, HTTP/2 sends its GOAWAY.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How long an HTTP/1.1 connection stays with hyper after its last
/// request before it is parked, holding only its socket (see
/// [`session`]): long past the gap between the requests of a busy client
/// in the same network, so that those never pay for it, and short enough
/// that a burst of new clients does not hold hyper's buffers for all of
/// them at once (memory that the allocator keeps once it is freed).
const PARK_AFTER: Duration = Duration::from_millis(50);

/// A listener the server accepts on.
pub enum Listener {
    Tcp(TcpListener),
    /// TCP with TLS, under the (reloadable) certificate.
    Tls(TcpListener, Arc<Certs>),
    Unix(UnixListener),
}

enum Conn {
    Tcp(TcpStream),
    Tls(TcpStream, Arc<Certs>),
    Unix(UnixStream),
}

impl Conn {
    fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            Conn::Tcp(s) | Conn::Tls(s, _) => s.as_raw_fd(),
            Conn::Unix(s) => s.as_raw_fd(),
        }
    }
}

/// Where a request came from, handed to the handler beside it (not in the
/// request's extensions, a map allocated per request): the proxy's
/// X-Forwarded-* and its trust rule read it.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// `None` on a Unix socket.
    pub addr: Option<SocketAddr>,
    pub tls: bool,
}

/// A connection's place under the cap, in the extensions of a request
/// that asks to upgrade it: the tunnel that outlives the connection's
/// task holds it, so WebSocket tunnels count toward the cap too.
#[derive(Clone)]
pub struct ConnectionPlace {
    _permit: Arc<Option<OwnedSemaphorePermit>>,
}

/// What a handler may answer with: any body of bytes (a full one, or the
/// proxy's stream from a worker). Unpin, so that the server holds it
/// where it is rather than in a box of its own.
pub trait ResponseBody: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static {}
impl<B: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static> ResponseBody for B {}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serves `handle` on every listener until `shutdown` turns true (or its
/// sender is dropped), then lets the connections accepted so far finish,
/// those still in the kernel's accept queue included: they are taken in
/// and answered before the listeners close, so no client that connected in
/// time is reset. Each request is handled with its [`Peer`]; `Upgrade` (WebSocket)
/// connections are handed over to whatever the handler does with them.
pub async fn serve<F, Fut, B>(
    listeners: Vec<Listener>,
    limits: Limits,
    handle: F,
    mut shutdown: watch::Receiver<bool>,
) where
    F: Fn(Request<RequestBody>, Peer) -> Fut + Clone + Unpin + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: ResponseBody,
    B::Data: Send,
{
    let slots = Arc::new(Semaphore::new(limits.connections.max(1)));
    let registry = Registry::new();
    let (accepted_tx, mut accepted) = mpsc::unbounded_channel();
    let acceptors: Vec<_> = listeners
        .into_iter()
        .map(|l| {
            tokio::spawn(accept(
                l,
                slots.clone(),
                registry.clone(),
                accepted_tx.clone(),
                shutdown.clone(),
            ))
        })
        .collect();
    drop(accepted_tx);
    let mut connections = JoinSet::new();
    let told = shutdown.clone();
    let protocols = Arc::new(protocols(&limits));
    let spawn = |connections: &mut JoinSet<()>, accepted: Accepted| {
        connections.spawn(connection(
            accepted,
            handle.clone(),
            limits,
            protocols.clone(),
            told.clone(),
        ));
    };
    loop {
        tokio::select! {
            Some(conn) = accepted.recv() => spawn(&mut connections, conn),
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = stopped(&mut shutdown) => break,
        }
    }
    // Stop accepting: each acceptor takes in what is queued and returns,
    // closing its listener; every connection handed over is served.
    loop {
        tokio::select! {
            conn = accepted.recv() => match conn {
                Some(conn) => spawn(&mut connections, conn),
                None => break,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    for a in acceptors {
        let _ = a.await;
    }
    let drained = async { while connections.join_next().await.is_some() {} };
    match limits.shutdown_grace {
        None => drained.await,
        Some(grace) => {
            if tokio::time::timeout(grace, drained).await.is_err() {
                debug!("shutdown grace over: dropping the connections left");
            }
        }
    }
}

/// A connection taken in, with its place under the cap (none for those
/// taken from the queue at shutdown, which must not wait for one).
/// It is registered as it is accepted, so that it can be evicted before its
/// task has even run (a burst of silent clients is taken in faster than
/// their tasks start).
struct Accepted {
    conn: Conn,
    permit: Option<OwnedSemaphorePermit>,
    activity: Arc<Activity>,
    registration: Registration,
}

async fn accept_tcp(l: &TcpListener) -> std::io::Result<TcpStream> {
    let (s, _) = l.accept().await?;
    // Small answers must not wait for Nagle.
    let _ = s.set_nodelay(true);
    Ok(s)
}

async fn accept_one(listener: &Listener) -> std::io::Result<Conn> {
    match listener {
        Listener::Tcp(l) => accept_tcp(l).await.map(Conn::Tcp),
        Listener::Tls(l, certs) => accept_tcp(l).await.map(|s| Conn::Tls(s, certs.clone())),
        Listener::Unix(l) => l.accept().await.map(|(s, _)| Conn::Unix(s)),
    }
}

/// Takes connections in, each with a place under the cap; at the cap, a
/// new connection makes room by evicting the one idle longest, and waits
/// for its place only if every connection is busy.
async fn accept(
    listener: Listener,
    slots: Arc<Semaphore>,
    registry: Arc<Registry>,
    accepted: mpsc::UnboundedSender<Accepted>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let next = async {
            let conn = accept_one(&listener).await;
            let permit = match slots.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) if conn.is_ok() => loop {
                    // Again while waiting: a connection spared for being
                    // new may be idle enough a moment later.
                    registry.evict_idlest();
                    let place = slots.clone().acquire_owned();
                    if let Ok(p) = tokio::time::timeout(EVICT_RETRY, place).await {
                        break p.ok();
                    }
                },
                Err(_) => slots.clone().acquire_owned().await.ok(),
            };
            (conn, permit)
        };
        let (conn, permit) = tokio::select! {
            next = next => next,
            _ = stopped(&mut shutdown) => break,
        };
        match conn {
            Ok(c) => {
                let (activity, registration) = registry.register(c.fd());
                let taken = Accepted {
                    conn: c,
                    permit,
                    activity,
                    registration,
                };
                if accepted.send(taken).is_err() {
                    return;
                }
            }
            Err(e) => {
                // Out of descriptors, most likely: back off, keep serving.
                warn!(error = %e, "accept");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    // A zero timeout still polls the accept once: it takes what the kernel
    // has queued and stops at the first would-block.
    while let Ok(Ok(conn)) = tokio::time::timeout(Duration::ZERO, accept_one(&listener)).await {
        let (activity, registration) = registry.register(conn.fd());
        let taken = Accepted {
            conn,
            permit: None,
            activity,
            registration,
        };
        if accepted.send(taken).is_err() {
            return;
        }
    }
}

async fn connection<F, Fut, B>(
    accepted: Accepted,
    handle: F,
    limits: Limits,
    protocols: Arc<Protocols>,
    shutdown: watch::Receiver<bool>,
) where
    F: Fn(Request<RequestBody>, Peer) -> Fut + Clone + Unpin + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: ResponseBody,
{
    let Accepted {
        conn,
        permit,
        activity,
        registration,
    } = accepted;
    let place = ConnectionPlace {
        _permit: Arc::new(permit),
    };
    let served = Served {
        place: &place,
        activity,
        limits,
        protocols,
        shutdown,
    };
    match conn {
        Conn::Tcp(s) => {
            let peer = Peer {
                addr: s.peer_addr().ok(),
                tls: false,
            };
            serve_io(s, peer, handle, served).await
        }
        // Boxed: a TLS stream is large, and a task is as large as its
        // largest state, which plain connections would pay for too.
        Conn::Tls(s, certs) => Box::pin(serve_tls(s, certs, handle, served)).await,
        Conn::Unix(s) => {
            let peer = Peer {
                addr: None,
                tls: false,
            };
            serve_io(s, peer, handle, served).await
        }
    }
    drop(registration);
    drop(place);
}

/// What every connection is served with, besides its stream and handler.
struct Served<'a> {
    place: &'a ConnectionPlace,
    activity: Arc<Activity>,
    limits: Limits,
    protocols: Arc<Protocols>,
    shutdown: watch::Receiver<bool>,
}

async fn serve_tls<F, Fut, B>(s: TcpStream, certs: Arc<Certs>, handle: F, served: Served<'_>)
where
    F: Fn(Request<RequestBody>, Peer) -> Fut + Clone + Unpin + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: ResponseBody,
{
    let peer = Peer {
        addr: s.peer_addr().ok(),
        tls: true,
    };
    // The handshake counts against the header-read timeout, and
    // the connection may be evicted meanwhile: a client that opens
    // and stays silent is cut off all the same.
    let (activity, limits) = (served.activity.clone(), served.limits);
    let config = match limits.http2 {
        true => certs.current(),
        false => super::tls::http1_only(&certs.current()),
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    // The handshake's futures end before the connection is served, so the
    // task's two states share their room: served inside the `select!`, the
    // connection kept the finished handshake's TLS state beside its own.
    let tls = tokio::select! {
        handshake = acceptor.accept(s) => match handshake {
            Ok(tls) => tls,
            Err(e) => {
                debug!(error = %e, peer = ?peer.addr, "TLS handshake");
                return;
            }
        },
        why = closing(&activity, &limits) => {
            debug!(peer = ?peer.addr, why, "TLS handshake cut off");
            return;
        }
    };
    serve_io(tls, peer, handle, served).await
}

async fn serve_io<S, F, Fut, B>(stream: S, peer: Peer, handle: F, served: Served<'_>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<RequestBody>, Peer) -> Fut + Clone + Unpin + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: ResponseBody,
{
    let Served {
        place,
        activity,
        limits,
        protocols,
        mut shutdown,
    } = served;
    let strict = limits.strict_framing;
    let (feed, verdicts) = framing::watch();
    let heads = verdicts.clone();
    let requested = Arc::new(Notify::new());
    let service = {
        let requested = requested.clone();
        let activity = activity.clone();
        let place = place.clone();
        move |mut req: Request<RequestBody>| {
            requested.notify_one();
            let in_flight = activity.begin();
            // Only what hyper parsed has a verdict or an upgrade: a plain
            // request is neither ambiguous nor an upgrade.
            let parsed_by_hyper = matches!(req.body(), RequestBody::Incoming(_));
            if parsed_by_hyper && req.headers().contains_key(hyper::header::UPGRADE) {
                req.extensions_mut().insert(place.clone());
            }
            if strict
                && parsed_by_hyper
                && req.version() != hyper::Version::HTTP_2
                && verdicts.next_is_ambiguous()
            {
                req.extensions_mut().insert(framing::Ambiguous);
            }
            let answer = handle(req, peer);
            async move { answer.await.map(|b| Tracked::new(b, in_flight)) }
        }
    };
    let mut session = Session::new(stream, service, protocols, strict.then_some(feed));
    // What ends a connection besides its client, polled only when one of
    // its own timers or notifications fires: a connection's task wakes
    // several times per request, and polling these on every wake (each a
    // lock in tokio's Notify) cost more than hyper's parse. Beside them,
    // once hyper serves HTTP/1.1 again, the timer that parks it once quiet:
    // only where the framing reader tells where requests end.
    // Boxed, as FuturesUnordered keeps a spare node as large as its
    // future for the connection's life.
    let guards: Pin<Box<dyn Future<Output = Guard> + Send>> = Box::pin(async {
        tokio::select! {
            _ = activity.stalled_past(limits.send_timeout) => Guard::Stalled,
            why = closing(&activity, &limits) => Guard::Closing(why),
            _ = stopped(&mut shutdown) => Guard::Stopped,
        }
    });
    let mut guards = FuturesUnordered::from_iter([guards]);
    let park_timer =
        || -> Pin<Box<dyn Future<Output = Guard> + Send>> { Box::pin(quiet(&activity)) };
    let mut head_past = heads.head_past(limits.header_read_timeout);
    let result = loop {
        tokio::select! {
            // The connection first: it reads the bytes the head timer looks at,
            // so the head timer is polled after it on every wake.
            biased;
            event = session.next_event() => match event {
                Event::Resumed => if strict {
                    guards.push(park_timer());
                },
                Event::Ended(result) => break result,
            },
            _ = &mut head_past, if strict => {
                debug!(peer = ?peer.addr, "connection closed: a request head took longer than its timeout");
                break Ok(());
            }
            Some(guard) = guards.next() => match guard {
                Guard::Quiet => {
                    if !(heads.at_rest() && session.park()) {
                        guards.push(park_timer());
                    }
                }
                Guard::Stalled => {
                    // Reset, as nginx's reset_timedout_connection: a close would
                    // leave the response queued in the kernel for a client that
                    // does not read it.
                    debug!(peer = ?peer.addr, "connection reset: its client stopped taking its response");
                    activity.reset_on_close();
                    break Ok(());
                }
                Guard::Closing(why) => {
                    debug!(peer = ?peer.addr, why, "connection closed");
                    session.graceful_shutdown();
                    break tokio::time::timeout(CLOSE_GRACE, session.ended()).await.unwrap_or(Ok(()));
                }
                Guard::Stopped => {
                    // A request already seen left a permit: no wait then.
                    break tokio::select! {
                        result = session.ended() => result,
                        _ = tokio::time::timeout(limits.first_request_grace, requested.notified()) => {
                            session.graceful_shutdown();
                            session.ended().await
                        }
                    };
                }
            }
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "connection");
    }
}

/// Resolves once a connection has been quiet for [`PARK_AFTER`].
async fn quiet(activity: &Activity) -> Guard {
    activity.quiet_for(PARK_AFTER).await;
    Guard::Quiet
}

/// Why the server acts on a connection rather than its client.
enum Guard {
    /// No request for a while: park it.
    Quiet,
    /// Its client stopped taking its response past the send timeout.
    Stalled,
    /// Idle, evicted or abandoning (see [`closing`]).
    Closing(&'static str),
    /// The server is shutting down.
    Stopped,
}

/// Resolves when a connection should close, with why: idle past its
/// deadline, evicted to make room at the cap, or its client abandons most
/// of its requests (resets).
async fn closing(activity: &Activity, limits: &Limits) -> &'static str {
    tokio::select! {
        _ = activity.idle_past(limits.header_read_timeout, limits.keep_alive) => "idle past its deadline",
        _ = activity.evicted() => "to make room at the cap",
        _ = activity.abandoning() => "its client abandoned most of its requests",
    }
}

/// Resolves once shutdown is asked for (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests;
