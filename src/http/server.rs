//! The one accept loop for corral's own small HTTP servers (the admin API
//! and the operator's probes and metrics): a cap on the connections served
//! at once across the whole server (the rest wait in the listen backlog),
//! a header-read timeout so a slow client cannot hold a connection slot,
//! and a graceful shutdown that lets answers in progress finish.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{debug, warn};

/// How much one server takes on.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once, across the server.
    pub connections: usize,
    /// How long a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// How long answers in progress get once shutdown begins.
    pub shutdown_grace: Duration,
}

/// What corral's admin-style servers take: a handful of probes, scrapes
/// and operator calls at a time, never a flood.
pub const SMALL: Limits = Limits {
    connections: 64,
    header_read_timeout: Duration::from_secs(10),
    shutdown_grace: Duration::from_secs(5),
};

/// Serves `handle` on `listener` until `shutdown` turns true, then lets the
/// connections in progress finish within the grace.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    limits: Limits,
    handle: F,
    mut shutdown: watch::Receiver<bool>,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.connections.max(1)));
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stopped(&mut shutdown) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of descriptors, most likely: back off, keep serving.
                    warn!(error = %e, "accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let handle = handle.clone();
        let mut stop = shutdown.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let answer = handle(req);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                debug!(%peer, error = %e, "connection");
            }
            drop(permit);
        });
        // Finished connections leave the set as they go.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.shutdown_grace, drained)
        .await
        .is_err()
    {
        debug!("shutdown grace over: dropping the connections left");
    }
}

/// Resolves once shutdown is asked for (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;
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
            listener,
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
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
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
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
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
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "listener closed"
        );
    }
}
