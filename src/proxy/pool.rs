//! Keep-alive HTTP/1.1 connections to the workers, one idle list per
//! worker process for each way of speaking to them: corral's own exchange
//! ([`Link`], for a request whose body is in hand) and hyper's
//! connection-level client (for a streamed body or an upgrade). hyper's
//! is used rather than a pooled `Client`: a connection is made before the
//! request is handed over, so a worker that refuses it leaves the request
//! (body and all) in the front's hands to send elsewhere, and
//! `try_send_request` gives back a request the connection closed before
//! writing. Those are the two "never reached a worker" cases a retry is
//! always safe for. hyper's connections also answer the booting worker's
//! readiness probe ([`answers`]). (Outside the request path, corral's
//! HTTP client is `http::client`.)

use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fnv::FnvHashMap;
use http_body_util::Full;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, header};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UnixStream};
use tracing::debug;

use super::backends::Key;
use super::link::{Link, Stream};
use super::request_body::Outgoing;
use super::sockets::Address;

/// Idle connections kept per worker; more are closed when they come back.
const IDLE_PER_WORKER: usize = 64;

/// How long an idle connection is reused: well under the keep-alive
/// timeouts of worker servers (Uvicorn's is 5 s, Gunicorn's 2 s), so the
/// front does not write a request just as the worker closes the connection.
const IDLE_TIMEOUT: Duration = Duration::from_millis(1500);

pub type Sender = SendRequest<Outgoing>;

/// Idle connections of one kind, a list per worker. FNV, not SipHash:
/// the keys are the front's own, and two look-ups per request with
/// SipHash cost some 400 instructions.
struct Idle<T> {
    lists: Mutex<FnvHashMap<Key, Vec<(T, Instant)>>>,
}

impl<T> Default for Idle<T> {
    fn default() -> Idle<T> {
        Idle {
            lists: Mutex::default(),
        }
    }
}

impl<T> Idle<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, FnvHashMap<Key, Vec<(T, Instant)>>> {
        self.lists.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used connection that is still `usable`: the
    /// least likely to have been closed by the worker. Those checked in
    /// longer ago than [`IDLE_TIMEOUT`] are closed.
    fn take(&self, key: Key, mut usable: impl FnMut(&mut T) -> bool) -> Option<T> {
        let mut idle = self.lock();
        let list = idle.get_mut(&key)?;
        // Checked in in order, so the stale ones are a prefix: one clock
        // read per request, not one per idle connection.
        let now = Instant::now();
        let stale = list.partition_point(|(_, at)| now.duration_since(*at) >= IDLE_TIMEOUT);
        list.drain(..stale);
        while let Some((mut conn, _)) = list.pop() {
            if usable(&mut conn) {
                return Some(conn);
            }
        }
        None
    }

    fn put(&self, key: Key, conn: T) {
        let mut idle = self.lock();
        let list = idle.entry(key).or_default();
        if list.len() < IDLE_PER_WORKER {
            list.push((conn, Instant::now()));
        }
    }

    fn retain(&self, alive: &impl Fn(Key) -> bool) {
        self.lock().retain(|k, _| alive(*k));
    }
}

#[derive(Default)]
pub struct Pool {
    senders: Idle<Sender>,
    links: Idle<Box<Link>>,
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
    /// An idle hyper connection ready for a request, else a new one.
    pub async fn checkout(&self, key: Key, address: &Address) -> Result<Sender, ConnectError> {
        // An idle one never has a request in flight: one that is not
        // ready is closing.
        match self.senders.take(key, |sender| sender.is_ready()) {
            Some(sender) => Ok(sender),
            None => handshake(connect(address).await?).await,
        }
    }

    /// A hyper connection whose exchange finished cleanly goes back for
    /// reuse.
    pub fn checkin(&self, key: Key, sender: Sender) {
        if !sender.is_closed() {
            self.senders.put(key, sender);
        }
    }

    /// An idle [`Link`] the worker has not closed, else a new one.
    pub async fn checkout_link(
        &self,
        key: Key,
        address: &Address,
    ) -> Result<Box<Link>, ConnectError> {
        match self.links.take(key, |link| link.usable()) {
            Some(link) => Ok(link),
            None => Ok(Link::new(connect(address).await?)),
        }
    }

    /// A [`Link`] whose answer was read to its end goes back for reuse.
    pub fn checkin_link(&self, key: Key, link: Box<Link>) {
        self.links.put(key, link);
    }

    #[cfg(test)]
    pub fn idle_links(&self, key: Key) -> usize {
        self.links.lock().get(&key).map_or(0, Vec::len)
    }

    /// Closes the idle connections of workers that are gone.
    pub fn retain(&self, alive: impl Fn(Key) -> bool) {
        self.senders.retain(&alive);
        self.links.retain(&alive);
    }
}

/// A new connection to the worker listening at `address`.
async fn connect(address: &Address) -> Result<Box<dyn Stream>, ConnectError> {
    let refused = |e: io::Error| match e.kind() {
        io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound => ConnectError::Refused(e),
        _ => ConnectError::Other(e),
    };
    Ok(match address {
        Address::Unix(path) => Box::new(UnixStream::connect(path).await.map_err(refused)?),
        Address::Tcp(addr) => {
            let stream = TcpStream::connect(addr).await.map_err(refused)?;
            // A request head and its body can be separate writes: without
            // it the body waits for the head's ACK (Nagle).
            stream.set_nodelay(true)?;
            Box::new(stream)
        }
    })
}

async fn handshake(stream: Box<dyn Stream>) -> Result<Sender, ConnectError> {
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
        let mut sender = handshake(connect(address).await.ok()?).await.ok()?;
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
