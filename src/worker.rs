//! The built-in worker: a small diagnostics app in the spirit of podinfo,
//! served by tokio + hyper on the listeners it inherits (LISTEN_FDS, or
//! `--fd`), or on its own `--bind` when run alone. It is an ordinary
//! worker: it knows its descriptors and the sd_notify protocol, nothing of
//! the manager. One thread, like a Python worker under the GIL: a request
//! burning CPU holds the worker, which is what makes CPU-driven scaling
//! meaningful in demos.

mod app;
pub mod sd_notify;

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use socket2::Socket;
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::cli::WorkerArgs;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("no listeners: run under `corral run`, or pass --fd or --bind")]
    NoListeners,
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Descriptors named by LISTEN_FDS, when LISTEN_PID is this process.
fn systemd_fds() -> Vec<RawFd> {
    let pid_matches = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0);
    if pid_matches {
        (3..3 + count).collect()
    } else {
        Vec::new()
    }
}

fn adopt(fd: RawFd) -> std::io::Result<Listener> {
    // SAFETY: the descriptor was handed to this process to serve on and is
    // adopted once.
    let socket = Socket::from(unsafe { OwnedFd::from_raw_fd(fd) });
    socket.set_cloexec(true)?;
    socket.set_nonblocking(true)?;
    let is_tcp = socket.local_addr()?.as_socket().is_some();
    let owned = OwnedFd::from(socket);
    Ok(if is_tcp {
        Listener::Tcp(TcpListener::from_std(std::net::TcpListener::from(owned))?)
    } else {
        Listener::Unix(UnixListener::from_std(
            std::os::unix::net::UnixListener::from(owned),
        )?)
    })
}

pub fn main(args: WorkerArgs) -> Result<(), WorkerError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(args))
}

async fn serve(args: WorkerArgs) -> Result<(), WorkerError> {
    let mut listeners = Vec::new();
    let fds = if args.fd.is_empty() && args.bind.is_empty() {
        systemd_fds()
    } else {
        args.fd.clone()
    };
    for fd in fds {
        listeners.push(adopt(fd)?);
    }
    for addr in &args.bind {
        listeners.push(Listener::Tcp(TcpListener::bind(addr).await?));
    }
    if listeners.is_empty() {
        return Err(WorkerError::NoListeners);
    }

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let (conn_tx, mut conn_rx) = tokio::sync::mpsc::unbounded_channel::<Conn>();
    let acceptors: Vec<_> = listeners
        .into_iter()
        .map(|l| tokio::spawn(accept_loop(l, conn_tx.clone())))
        .collect();
    drop(conn_tx);

    let notifier = sd_notify::Notifier::from_env();
    notifier.send("READY=1\nSTATUS=serving");
    if let Some(every) = sd_notify::watchdog_interval() {
        let notifier = notifier.clone();
        // Heartbeats ride the same thread as requests: a worker wedged by a
        // long computation misses them, which is what the watchdog is for.
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                notifier.send("WATCHDOG=1");
            }
        });
    }
    info!(pid = std::process::id(), "built-in worker serving");

    loop {
        tokio::select! {
            Some(conn) = conn_rx.recv() => {
                connections.spawn(serve_connection(conn, drain_rx.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = quit.recv() => {
                info!("QUIT: exiting at once");
                std::process::exit(0);
            }
            _ = usr1.recv() => info!("USR1: logs go to stderr; nothing to reopen"),
        }
    }
    // Stop accepting. The accept tasks are parked at `accept`, which is
    // cancel-safe: connections still queued on the shared socket stay
    // there for the other workers. Ones already accepted are served.
    for a in &acceptors {
        a.abort();
    }
    conn_rx.close();
    while let Ok(conn) = conn_rx.try_recv() {
        connections.spawn(serve_connection(conn, drain_rx.clone()));
    }
    notifier.send("STOPPING=1\nSTATUS=draining");
    info!(
        connections = connections.len(),
        "draining in-flight requests"
    );
    let _ = drain_tx.send(true);
    while connections.join_next().await.is_some() {}
    info!("drained; exiting");
    Ok(())
}

/// How long a connection accepted just before the drain may take to send
/// its first request: its client did nothing wrong and deserves an answer.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// Serves one connection; once draining, finishes the request in flight
/// (or the first one, if it is still arriving) and closes.
async fn serve_connection(conn: Conn, mut drain: watch::Receiver<bool>) {
    match conn {
        Conn::Tcp(s) => serve_io(TokioIo::new(s), &mut drain).await,
        Conn::Unix(s) => serve_io(TokioIo::new(s), &mut drain).await,
    }
}

async fn serve_io<I>(io: I, drain: &mut watch::Receiver<bool>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    // Holds a permit once any request has arrived on this connection.
    let requested = Arc::new(Notify::new());
    let service = {
        let requested = requested.clone();
        hyper::service::service_fn(move |req| {
            requested.notify_one();
            app::handle(req)
        })
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    let conn = http.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = drain.wait_for(|d| *d) => {}
    }
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = tokio::time::timeout(FIRST_REQUEST_GRACE, requested.notified()) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

enum Conn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept_loop(listener: Listener, tx: tokio::sync::mpsc::UnboundedSender<Conn>) {
    loop {
        let conn = match &listener {
            Listener::Tcp(l) => l.accept().await.map(|(s, _)| {
                let _ = s.set_nodelay(true);
                Conn::Tcp(s)
            }),
            Listener::Unix(l) => l.accept().await.map(|(s, _)| Conn::Unix(s)),
        };
        match conn {
            Ok(c) => {
                if tx.send(c).is_err() {
                    return;
                }
            }
            Err(e) => {
                warn!(error = %e, "accept");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
