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
use std::time::Duration;

use socket2::Socket;
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::info;

use crate::cli::WorkerArgs;
use crate::http::server::{self, Limits, Listener};

/// The built-in worker's share of the shared accept loop: many
/// connections (a load test opens hundreds), no limit on the drain (the
/// manager's graceful timeout is the limit), and a second for a
/// connection accepted just before the stop to send its request, so it is
/// answered, not reset unread (what Uvicorn does, uvicorn #2757).
const LIMITS: Limits = Limits {
    connections: 4096,
    header_read_timeout: Duration::from_secs(30),
    keep_alive: Duration::from_secs(5),
    send_timeout: Duration::from_secs(60),
    shutdown_grace: None,
    first_request_grace: Duration::from_secs(1),
    http2: false,
    strict_framing: false,
    max_headers: crate::http::framing::MAX_HEADERS,
};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("no listeners: run under `corral run`, or pass --fd or --bind")]
    NoListeners,
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

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
    // Proxy mode hands over a bound socket that is not listening yet:
    // listening is how this worker says it is ready to serve.
    if !nix::sys::socket::getsockopt(&socket, nix::sys::socket::sockopt::AcceptConn)
        .map_err(std::io::Error::from)?
    {
        socket.listen(1024)?;
    }
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
    // The manager passes its own log format on to its workers.
    let format = match std::env::var("CORRAL_LOG_FORMAT").as_deref() {
        Ok("json") => crate::config::LogFormat::Json,
        _ => crate::config::LogFormat::Text,
    };
    crate::telemetry::init(format, "info");
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
    let (stop, stopped) = watch::channel(false);
    let serving = tokio::spawn(server::serve(
        listeners,
        LIMITS,
        |req, _| app::handle(req),
        stopped,
    ));

    let notifier = sd_notify::Notifier::from_env();
    notifier.send("READY=1\nSTATUS=serving");
    if let Some(every) = sd_notify::watchdog_interval() {
        let notifier = notifier.clone();
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
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = quit.recv() => {
                info!("QUIT: exiting at once");
                std::process::exit(0);
            }
            _ = usr1.recv() => info!("USR1: logs go to stderr; nothing to reopen"),
        }
    }
    notifier.send("STOPPING=1\nSTATUS=draining");
    info!("draining in-flight requests");
    let _ = stop.send(true);
    let _ = serving.await;
    info!("drained; exiting");
    Ok(())
}
