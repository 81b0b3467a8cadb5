//! The manager's side of proxy mode: a socket per worker slot in the
//! private runtime directory, readiness when the worker answers on it,
//! and the worker table kept in step with the front's [`Backends`] after
//! every pass: ready workers opened, draining ones closed and sent their
//! stop signal only once idle, the front's counts read back for the
//! planner (requests, stuck) and the documents (in flight, concurrency).

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal as Sig;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::{ProxyConfig, SocketKind};
use crate::contract::{ExitReason, WorkerState};
use crate::http::server::Listener as ServerListener;
use crate::http::tls::{Certs, TlsError};
use crate::proxy::sockets::{self, Address, RuntimeDir};
use crate::proxy::{self, Front, FrontThreads, Key, Load};

use super::listener::Listener;
use super::{Manager, now};

/// What the front and the socket probes tell the loop.
pub(super) enum Event {
    /// A booting worker answered on its socket.
    Answering(Key),
    /// The front's loads changed in a way the manager acts on.
    Changed,
}

/// The next event from proxy mode's parts; never, in shared mode.
pub(super) async fn event(proxy: &mut Option<Proxied>) -> Event {
    match proxy {
        None => std::future::pending().await,
        Some(p) => tokio::select! {
            Some(key) = p.ready_rx.recv() => Event::Answering(key),
            _ = p.front.backends.changed.notified() => Event::Changed,
        },
    }
}

/// How often a booting worker's socket is tried.
const READY_POLL: Duration = Duration::from_millis(50);

/// Mean concurrency is taken over this window, like the CPU rate's.
const CONCURRENCY_WINDOW: Duration = Duration::from_secs(3);

pub(super) struct Proxied {
    pub front: Front,
    /// The manager's private directory, where the Unix worker sockets are.
    pub dir: Arc<RuntimeDir>,
    /// Where each slot's current worker listens.
    pub addresses: HashMap<u32, Arc<Address>>,
    /// The front's certificate, with the task that watches its files.
    pub tls: Option<(Arc<Certs>, tokio::task::JoinHandle<()>)>,
    pub config: ProxyConfig,
    /// The socket probe of each slot's booting worker.
    pub boots: HashMap<u32, tokio::task::AbortHandle>,
    /// Ready workers reported by the socket probes.
    pub ready_tx: mpsc::UnboundedSender<Key>,
    pub ready_rx: mpsc::UnboundedReceiver<Key>,
    /// (when, requests in flight per ready worker)
    pub concurrency: VecDeque<(Instant, f64)>,
    /// The last loads read from the front.
    pub loads: Vec<Load>,
    pub queued: u32,
    /// Set at shutdown once the workers were told to go.
    pub workers_told: bool,
}

/// The socket a worker gets: one corral bound (`{fd}`), or only a path
/// for a server that binds it itself (`{socket}` without `{fd}`).
pub(super) struct WorkerSocket {
    pub fd: Option<OwnedFd>,
    pub address: Address,
}

impl WorkerSocket {
    /// What `{socket}` stands for: a Unix socket's path (configuration
    /// refuses `{socket}` with `--worker-socket tcp`).
    pub fn path(&self) -> Option<&Path> {
        match &self.address {
            Address::Unix(path) => Some(path),
            Address::Tcp(_) => None,
        }
    }
}

impl Proxied {
    /// Starts the front on `listeners`, the worker sockets in `dir`.
    pub fn start(
        config: &ProxyConfig,
        dir: Arc<RuntimeDir>,
        listeners: &[Listener],
        metrics: Arc<proxy::Metrics>,
    ) -> Result<Proxied, StartProxyError> {
        let certs = config.tls.clone().map(Certs::new).transpose()?;
        let threads = FrontThreads::start(config.front_threads)?;
        // Registered with the front's runtime, whose threads accept on them.
        let served = {
            let _front = threads.handle().enter();
            listeners
                .iter()
                .map(|l| l.serve_copy(certs.as_ref()))
                .collect::<std::io::Result<Vec<ServerListener>>>()?
        };
        let front = Front::start(config, threads, served, metrics);
        let (ready_tx, ready_rx) = mpsc::unbounded_channel();
        info!(
            runtime_dir = %dir.path().display(),
            front_threads = config.front_threads,
            worker_socket = ?config.worker_socket,
            "proxy mode: workers get their own sockets"
        );
        Ok(Proxied {
            tls: certs.map(|c| {
                let watch = c.watch();
                (c, watch)
            }),
            front,
            dir,
            addresses: HashMap::new(),
            config: config.clone(),
            boots: HashMap::new(),
            ready_tx,
            ready_rx,
            concurrency: VecDeque::new(),
            loads: Vec::new(),
            queued: 0,
            workers_told: false,
        })
    }

    /// The socket for a new worker of `slot`, its address kept for the
    /// front and the readiness probe.
    pub fn socket_for(&mut self, slot: u32, binds_itself: bool) -> std::io::Result<WorkerSocket> {
        let socket = match self.config.worker_socket {
            SocketKind::Tcp => {
                let (fd, addr) = sockets::bind_loopback()?;
                WorkerSocket {
                    fd: Some(fd),
                    address: Address::Tcp(addr),
                }
            }
            SocketKind::Unix if binds_itself => {
                self.dir.remove(slot);
                WorkerSocket {
                    fd: None,
                    address: Address::Unix(self.dir.socket_path(slot)),
                }
            }
            SocketKind::Unix => {
                let (fd, path) = self.dir.bind(slot)?;
                WorkerSocket {
                    fd: Some(fd),
                    address: Address::Unix(path),
                }
            }
        };
        self.addresses
            .insert(slot, Arc::new(socket.address.clone()));
        Ok(socket)
    }

    /// Watches a booting worker's socket until it answers, for at most
    /// `limit` (the boot timeout aborts it after that anyway), or until the
    /// worker is gone ([`Proxied::forget`]).
    pub fn watch_boot(&mut self, key: Key, limit: Duration) {
        let Some(address) = self.addresses.get(&key.id).cloned() else {
            return;
        };
        let path = self.config.worker_ready_path.clone();
        let tx = self.ready_tx.clone();
        let probe = tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + limit;
            while tokio::time::Instant::now() < deadline && !tx.is_closed() {
                if proxy::pool::answers(&address, path.as_deref()).await {
                    let _ = tx.send(key);
                    return;
                }
                tokio::time::sleep(READY_POLL).await;
            }
        });
        if let Some(old) = self.boots.insert(key.id, probe.abort_handle()) {
            old.abort();
        }
    }

    /// A worker of `slot` is gone: its socket and its boot probe with it.
    pub fn forget(&mut self, slot: u32) {
        self.dir.remove(slot);
        self.addresses.remove(&slot);
        if let Some(probe) = self.boots.remove(&slot) {
            probe.abort();
        }
    }

    pub fn load(&self, key: Key) -> Option<&Load> {
        self.loads.iter().find(|l| l.key == key)
    }

    /// Mean in-flight requests per ready worker over the window.
    pub fn mean_concurrency(&self) -> f64 {
        if self.concurrency.is_empty() {
            return 0.0;
        }
        self.concurrency.iter().map(|(_, c)| c).sum::<f64>() / self.concurrency.len() as f64
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartProxyError {
    #[error("cannot serve on the listeners: {0}")]
    Listen(#[from] std::io::Error),
    #[error("invalid value for `certfile`: {0}")]
    Tls(#[from] TlsError),
}

impl Drop for Proxied {
    fn drop(&mut self) {
        if let Some((_, watch)) = &self.tls {
            watch.abort();
        }
    }
}

fn key_of(w: &super::table::Worker) -> Key {
    Key {
        id: w.facts.id,
        pid: w.pid.as_raw(),
    }
}

impl Manager {
    /// HUP: the front's certificate is read again (a bad one is refused
    /// and the old one kept).
    pub(super) fn reload_certificate(&self) {
        if let Some(Some((certs, _))) = self.proxy.as_ref().map(|p| &p.tls) {
            let _ = certs.reload("HUP");
        }
    }

    pub(super) fn on_proxy_event(&mut self, event: Event) {
        match event {
            Event::Answering(key) => self.on_answering(key),
            // The pass that follows every event reads the new loads.
            Event::Changed => {}
        }
    }

    /// A probe saw the worker answer on its socket.
    fn on_answering(&mut self, key: Key) {
        let Some(w) = self.table.by_id(key.id) else {
            return;
        };
        if w.pid.as_raw() != key.pid || !w.mark_ready() {
            return;
        }
        info!(
            worker = key.id,
            pid = key.pid,
            boot_ms = now().duration_since(w.facts.started).as_millis() as u64,
            "worker ready (answers on its socket)"
        );
        self.boots.became_ready();
    }

    /// At shutdown, once the front has let its clients go (or the graceful
    /// timeout says enough, or the shutdown is quick), the workers are
    /// told to stop: each gets its signal once it holds no request.
    pub(super) fn tell_workers_at_shutdown(&mut self, now: Instant) {
        let Some(p) = &mut self.proxy else { return };
        let Some(shutdown) = &self.shutdown else {
            return;
        };
        if !shutdown.stopping || p.workers_told {
            return;
        }
        let quick = shutdown.quick;
        if !(quick || p.front.finished() || now >= shutdown.stop_at + self.config.graceful_timeout)
        {
            return;
        }
        p.workers_told = true;
        self.ask_workers_to_stop(quick, now);
    }

    /// Brings the front and the table into step; see the module comment.
    pub(super) fn sync_front(&mut self, now: Instant) {
        let Some(p) = &mut self.proxy else { return };
        let backends = p.front.backends.clone();
        for w in &mut self.table.workers {
            let key = key_of(w);
            match w.facts.state {
                WorkerState::Ready => {
                    if let Some(address) = p.addresses.get(&key.id) {
                        backends.open(key, address.clone());
                    }
                }
                WorkerState::Draining => {
                    if backends.close(key) && w.awaiting_idle {
                        w.awaiting_idle = false;
                        self.processes.signal(w.pid, Sig::SIGTERM);
                    }
                }
                WorkerState::Starting => {}
            }
        }
        let alive = |k: Key| {
            self.table
                .workers
                .iter()
                .any(|w| w.facts.id == k.id && w.pid.as_raw() == k.pid)
        };
        backends.retain(alive);
        p.front.pool.retain(alive);
        let (loads, queued) = backends.loads();
        p.loads = loads;
        p.queued = queued;
        for w in &mut self.table.workers {
            let key = key_of(w);
            let Some(load) = p.loads.iter().find(|l| l.key == key) else {
                continue;
            };
            w.facts.requests = load.requests;
            w.facts.stuck = load.stuck;
            if load.broken && w.facts.state == WorkerState::Ready && !w.facts.killed {
                warn!(
                    worker = key.id,
                    pid = key.pid,
                    "worker refuses connections on its socket: replacing it"
                );
                w.begin_stop(ExitReason::Crashed, now);
                w.mark_killed();
                self.processes.kill(w.pid);
            }
        }
    }

    /// Samples the requests in flight per ready worker (each tick).
    pub(super) fn sample_concurrency(&mut self) {
        let Some(p) = &mut self.proxy else { return };
        let now = now();
        let in_flight: u32 = p.loads.iter().map(|l| l.in_flight).sum();
        let ready = self.table.ready_count().max(1);
        p.concurrency
            .push_back((now, f64::from(in_flight) / f64::from(ready)));
        while p
            .concurrency
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > CONCURRENCY_WINDOW)
        {
            p.concurrency.pop_front();
        }
    }
}
