//! The one accept loop for corral's own HTTP servers: the admin API, the
//! operator's probes and metrics, and the built-in worker. It keeps a cap
//! on the connections served at once across all of a server's listeners
//! (the rest wait in the listen backlog), a header-read timeout so a slow
//! client cannot hold a slot, and a graceful shutdown: stop accepting,
//! serve what was already accepted, let answers in progress finish.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, warn};

/// How much one server takes on, and how it lets go.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once, across the server.
    pub connections: usize,
    /// How long a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// How long answers in progress get once shutdown begins; `None`
    /// waits for all of them (whoever stops the server enforces a limit).
    pub shutdown_grace: Option<Duration>,
    /// At shutdown, how long a connection that has not sent its first
    /// request yet gets to send it: a client that connected just before
    /// the listener closed is answered, not reset with its request unread.
    pub first_request_grace: Duration,
}

/// corral's admin-style servers: a handful of probes, scrapes and operator
/// calls at a time, never a flood.
pub const SMALL: Limits = Limits {
    connections: 64,
    header_read_timeout: Duration::from_secs(10),
    shutdown_grace: Some(Duration::from_secs(5)),
    first_request_grace: Duration::ZERO,
};

/// A listener the server accepts on.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// The client's address, in each request's extensions (`None` on a Unix
/// socket): the proxy's X-Forwarded-For and its trust rule read it.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<SocketAddr>);

/// What a handler may answer with: any body of bytes (a full one, or the
/// proxy's stream from a worker).
pub trait ResponseBody: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static {}
impl<B: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static> ResponseBody for B {}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serves `handle` on every listener until `shutdown` turns true (or its
/// sender is dropped), then lets the connections accepted so far finish,
/// those still in the kernel's accept queue included: they are taken in
/// and answered before the listeners close, so no client that connected in
/// time is reset. Requests carry their [`Peer`]; `Upgrade` (WebSocket)
/// connections are handed over to whatever the handler does with them.
pub async fn serve<F, Fut, B>(
    listeners: Vec<Listener>,
    limits: Limits,
    handle: F,
    mut shutdown: watch::Receiver<bool>,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: ResponseBody,
    B::Data: Send,
{
    let slots = Arc::new(Semaphore::new(limits.connections.max(1)));
    let (accepted_tx, mut accepted) = mpsc::unbounded_channel();
    let acceptors: Vec<_> = listeners
        .into_iter()
        .map(|l| {
            tokio::spawn(accept(
                l,
                slots.clone(),
                accepted_tx.clone(),
                shutdown.clone(),
            ))
        })
        .collect();
    drop(accepted_tx);
    let mut connections = JoinSet::new();
    let told = shutdown.clone();
    let spawn = |connections: &mut JoinSet<()>, (conn, permit)| {
        connections.spawn(connection(
            conn,
            permit,
            handle.clone(),
            limits,
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
type Accepted = (Conn, Option<OwnedSemaphorePermit>);

async fn accept_one(listener: &Listener) -> std::io::Result<Conn> {
    match listener {
        Listener::Tcp(l) => l.accept().await.map(|(s, _)| {
            // Small answers must not wait for Nagle.
            let _ = s.set_nodelay(true);
            Conn::Tcp(s)
        }),
        Listener::Unix(l) => l.accept().await.map(|(s, _)| Conn::Unix(s)),
    }
}

async fn accept(
    listener: Listener,
    slots: Arc<Semaphore>,
    accepted: mpsc::UnboundedSender<Accepted>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let next = async {
            let permit = slots.clone().acquire_owned().await.ok();
            (accept_one(&listener).await, permit)
        };
        let (conn, permit) = tokio::select! {
            next = next => next,
            _ = stopped(&mut shutdown) => break,
        };
        match conn {
            Ok(c) => {
                if accepted.send((c, permit)).is_err() {
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
        if accepted.send((conn, None)).is_err() {
            return;
        }
    }
}

async fn connection<F, Fut, B>(
    conn: Conn,
    permit: Option<OwnedSemaphorePermit>,
    handle: F,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: ResponseBody,
{
    match conn {
        Conn::Tcp(s) => {
            let peer = Peer(s.peer_addr().ok());
            serve_io(TokioIo::new(s), peer, handle, limits, shutdown).await
        }
        Conn::Unix(s) => serve_io(TokioIo::new(s), Peer(None), handle, limits, shutdown).await,
    }
    drop(permit);
}

async fn serve_io<I, F, Fut, B>(
    io: I,
    peer: Peer,
    handle: F,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: ResponseBody,
{
    let requested = Arc::new(Notify::new());
    let service = {
        let requested = requested.clone();
        hyper::service::service_fn(move |mut req: Request<Incoming>| {
            requested.notify_one();
            req.extensions_mut().insert(peer);
            let answer = handle(req);
            async move { Ok::<_, Infallible>(answer.await) }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = stopped(&mut shutdown) => {
            // A request already seen left a permit: no wait then.
            tokio::select! {
                result = conn.as_mut() => result,
                _ = tokio::time::timeout(limits.first_request_grace, requested.notified()) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "connection");
    }
}

/// Resolves once shutdown is asked for (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn started(
        limits: Limits,
    ) -> (std::net::SocketAddr, watch::Sender<bool>, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(false);
        let busy = Arc::new(AtomicUsize::new(0));
        let seen = busy.clone();
        tokio::spawn(serve(
            vec![Listener::Tcp(listener)],
            limits,
            move |_req| {
                let seen = seen.clone();
                async move {
                    seen.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Response::new(Full::new(Bytes::from_static(b"ok")))
                }
            },
            rx,
        ));
        (addr, tx, busy)
    }

    async fn get(addr: std::net::SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        out
    }

    #[tokio::test]
    async fn the_connection_cap_holds_across_the_server() {
        let limits = Limits {
            connections: 2,
            ..SMALL
        };
        let (addr, _tx, seen) = started(limits).await;
        let clients: Vec<_> = (0..5).map(|_| tokio::spawn(get(addr))).collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(seen.load(Ordering::SeqCst), 2, "only two served at once");
        for c in clients {
            assert!(c.await.unwrap().starts_with("HTTP/1.1 200"));
        }
        assert_eq!(
            seen.load(Ordering::SeqCst),
            5,
            "the rest waited, none was refused"
        );
    }

    #[tokio::test]
    async fn a_silent_client_is_cut_off_at_the_header_timeout() {
        let limits = Limits {
            header_read_timeout: Duration::from_millis(200),
            ..SMALL
        };
        let (addr, _tx, _) = started(limits).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "the server closed the slow connection");
    }

    #[tokio::test]
    async fn shutdown_finishes_answers_in_progress_and_stops_accepting() {
        let (addr, tx, _) = started(SMALL).await;
        let pending = tokio::spawn(get(addr));
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send(true).unwrap();
        assert!(pending.await.unwrap().starts_with("HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
    }

    #[tokio::test]
    async fn a_connection_made_just_before_shutdown_gets_its_answer() {
        let limits = Limits {
            first_request_grace: Duration::from_secs(2),
            ..SMALL
        };
        let (addr, tx, _) = started(limits).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send(true).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        assert!(out.starts_with("HTTP/1.1 200"), "{out:?}");
    }
}
