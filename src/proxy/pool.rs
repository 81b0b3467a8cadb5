//! Keep-alive HTTP/1.1 connections to the workers, one idle list per
//! worker process. hyper's connection-level client is used rather than a
//! pooled `Client`: a connection is made before the request is handed
//! over, so a worker that refuses it leaves the request (body and all) in
//! the front's hands to send elsewhere, and `try_send_request` gives back
//! a request the connection closed before writing. Those are the two
//! "never reached a worker" cases a retry is always safe for. The same
//! connections answer the booting worker's readiness probe ([`answers`]):
//! one way of speaking HTTP to a worker, whatever the purpose. (Outside
//! the request path, corral's HTTP client is `http::client`.)

use std::collections::HashMap;
use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, header};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tracing::debug;

use super::backends::Key;
use super::request_body::Outgoing;
use super::sockets::Address;

/// Idle connections kept per worker; more are closed when they come back.
const IDLE_PER_WORKER: usize = 64;

/// How long an idle connection is reused: well under the keep-alive
/// timeouts of worker servers (Uvicorn's is 5 s, Gunicorn's 2 s), so the
/// front does not write a request just as the worker closes the connection.
const IDLE_TIMEOUT: Duration = Duration::from_millis(1500);

pub type Sender = SendRequest<Outgoing>;

#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<Key, Vec<(Sender, Instant)>>>,
}

/// A connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Nobody listens on the socket: the worker is gone or going.
    #[error("worker socket refused the connection: {0}")]
    Refused(io::Error),
    #[error("cannot connect to the worker: {0}")]
    Other(#[from] io::Error),
    #[error("HTTP handshake with the worker: {0}")]
    Handshake(#[from] hyper::Error),
}

impl Pool {
    /// An idle connection ready for a request, else a new one.
    pub async fn checkout(&self, key: Key, address: &Address) -> Result<Sender, ConnectError> {
        match self.take_idle(key) {
            Some(sender) => Ok(sender),
            None => connect(address).await,
        }
    }

    fn take_idle(&self, key: Key) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(&key)?;
        // Checked in in order, so the stale ones are a prefix: one clock
        // read per request, not one per idle connection.
        let now = Instant::now();
        let stale = list.partition_point(|(_, at)| now.duration_since(*at) >= IDLE_TIMEOUT);
        list.drain(..stale);
        // Newest first: the most recently used connection is the least
        // likely to have been closed by the worker. One that is not ready
        // is closed (an idle one never has a request in flight).
        while let Some((sender, _)) = list.pop() {
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    /// A connection whose exchange finished cleanly goes back for reuse.
    pub fn checkin(&self, key: Key, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(key).or_default();
        if list.len() < IDLE_PER_WORKER {
            list.push((sender, Instant::now()));
        }
    }

    /// Closes the idle connections of workers that are gone.
    pub fn retain(&self, alive: impl Fn(Key) -> bool) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|k, _| alive(*k));
    }
}

/// A new connection to the worker listening at `address`.
async fn connect(address: &Address) -> Result<Sender, ConnectError> {
    let refused = |e: io::Error| match e.kind() {
        io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound => ConnectError::Refused(e),
        _ => ConnectError::Other(e),
    };
    match address {
        Address::Unix(path) => handshake(UnixStream::connect(path).await.map_err(refused)?).await,
        Address::Tcp(addr) => {
            let stream = TcpStream::connect(addr).await.map_err(refused)?;
            // A request head and its body are separate writes: without
            // it the body waits for the head's ACK (Nagle).
            stream.set_nodelay(true)?;
            handshake(stream).await
        }
    }
}

async fn handshake<S>(stream: S) -> Result<Sender, ConnectError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(error = %e, "worker connection");
        }
    });
    Ok(sender)
}

/// Whether the worker at `address` is ready: it accepts a connection,
/// and, given a `path`, answers a GET of it with a status under 500
/// within 2 s.
pub async fn answers(address: &Address, path: Option<&str>) -> bool {
    let probe = async {
        let mut sender = connect(address).await.ok()?;
        let Some(path) = path else {
            return Some(true);
        };
        let req = Request::get(path)
            .header(header::HOST, "localhost")
            .header(header::USER_AGENT, "corral-ready-probe")
            .body(Outgoing::Full(Full::default()))
            .ok()?;
        let response = sender.send_request(req).await.ok()?;
        Some(response.status().as_u16() < 500)
    };
    tokio::time::timeout(Duration::from_secs(2), probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}
