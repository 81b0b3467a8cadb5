//! The supervisor: owns the listeners and the worker table, and runs one
//! event loop that turns signals, notify messages, child exits, admin
//! commands and timer ticks into actions. Decisions come from
//! [`plan::next_actions`]; [`Manager::step`] carries them out. The rooms around
//! it: the worker table and its transitions ([`table`]), each worker's
//! start, readiness and end ([`workers`]), the manager's own lifecycle
//! ([`lifecycle`]), measurement ([`measure`]), what the outside
//! sees ([`view`]) and the commands it takes ([`commands`]). It knows
//! nothing of Kubernetes beyond the shutdown order.

mod boots;
pub mod commands;
pub mod env;
mod lifecycle;
pub mod listener;
mod measure;
pub mod notify;
pub mod plan;
pub mod processes;
mod proxied;
pub mod readings;
pub mod reexec;
pub mod signals;
pub mod spawn;
pub mod table;
pub mod view;
mod workers;

#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal as Sig;
use nix::unistd::Pid;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::config::{Config, Host, Settings};
use crate::contract::{ExitReason, Limited};
use crate::proxy::sockets::{DirError, RuntimeDir};
use boots::Boots;
pub use commands::{Command, ScaleError};
use lifecycle::Shutdown;
use listener::{Inherited, Listener};
use measure::Measurements;
use notify::{Message, NotifySocket};
use plan::{Action, View, WorkerFacts};
use processes::Processes;
use proxied::{Proxied, StartProxyError};
use reexec::HandOff;
use signals::{Signal, Signals};
use table::Table;
pub use view::{Counters, Snapshot};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Listen(#[from] listener::ListenError),
    #[error("command `{0}` not found (searched PATH)")]
    CommandNotFound(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("bad re-exec state: {0}")]
    HandOff(#[from] serde_json::Error),
    #[error(transparent)]
    Proxy(#[from] StartProxyError),
    #[error("invalid value for `runtime-dir`: {0}")]
    RuntimeDir(#[from] DirError),
}

/// The worker command, resolved once.
#[derive(Debug, Clone)]
struct WorkerCommand {
    program: PathBuf,
    args: Vec<String>,
}

pub struct Manager {
    cli: Settings,
    config_path: Option<PathBuf>,
    host: Host,
    config: Config,
    command: WorkerCommand,
    exe: PathBuf,
    argv: Vec<OsString>,
    base_env: Vec<(OsString, OsString)>,
    listeners: Vec<Listener>,
    notify: NotifySocket,
    admin_fd: RawFd,
    measured: Measurements,
    table: Table,
    generation: u64,
    requested: Option<u32>,
    boots: Boots,
    shutdown: Option<Shutdown>,
    reexec_pending: bool,
    last_limited: Option<Limited>,
    counters: Counters,
    processes: Box<dyn Processes>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    /// The private directory: each worker's own, and proxy mode's sockets.
    /// `None` only in shared-socket mode where none could be made.
    runtime: Option<Arc<RuntimeDir>>,
    /// Proxy mode's front and worker sockets.
    proxy: Option<Proxied>,
}

/// Everything the manager is built from, gathered by `corral run`.
pub struct Startup {
    pub cli: Settings,
    pub config_path: Option<PathBuf>,
    pub host: Host,
    pub config: Config,
    pub handoff: Option<HandOff>,
    /// The admin API's listener, handed on at re-exec.
    pub admin_fd: RawFd,
    /// Proxy mode's request series, in the admin API's registry.
    pub proxy_metrics: Option<Arc<crate::proxy::Metrics>>,
}

/// Wall-clock seconds, for documents.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A random number for jitter: std's hasher keys are random per process
/// and per call, which is all spreading lifetimes needs.
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// The loop's clock: tokio's, so that tests can pause and advance it.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn resolve_command(config: &Config, exe: &std::path::Path) -> Result<WorkerCommand, StartError> {
    match &config.command {
        None => Ok(WorkerCommand {
            program: exe.to_path_buf(),
            args: vec!["worker".into()],
        }),
        Some(cmd) => {
            let program =
                crate::config::resolve_program(&cmd[0], std::env::var_os("PATH").as_deref())
                    .ok_or_else(|| StartError::CommandNotFound(cmd[0].clone()))?;
            Ok(WorkerCommand {
                program,
                args: cmd[1..].to_vec(),
            })
        }
    }
}

impl Manager {
    /// Binds (or adopts) every listener and the notify socket. Nothing is
    /// started yet; an error here leaves nothing behind.
    pub fn new(
        start: Startup,
        processes: Box<dyn Processes>,
        snapshot: watch::Sender<Arc<Snapshot>>,
    ) -> Result<Manager, StartError> {
        let exe = std::env::current_exe()?;
        let command = resolve_command(&start.config, &exe)?;
        let inherited_fds = match &start.handoff {
            Some(h) => h.listener_fds.clone(),
            None => start.host.listen_fds.clone(),
        };
        let mut inherited = Inherited::from_fds(&inherited_fds)?;
        let listeners = listener::open_all(
            &start.config.binds,
            start.config.backlog,
            start.config.socket_mode,
            &mut inherited,
        )?;
        // Whatever was inherited and not claimed closes here.
        drop(inherited);
        let runtime = match RuntimeDir::create(start.config.runtime_dir.as_deref()) {
            Ok(dir) => Some(Arc::new(dir)),
            // Shared-socket mode needs it only to give each worker an
            // XDG_RUNTIME_DIR of its own: a pod with a read-only root file
            // system and no writable /tmp still runs, as it did before.
            Err(e) if start.config.proxy.is_none() && start.config.runtime_dir.is_none() => {
                warn!(
                    error = %e,
                    "no private directory: the workers keep the XDG_RUNTIME_DIR they inherit \
                     (several Gunicorn masters then share one control socket path); \
                     set --runtime-dir or mount a writable /tmp"
                );
                None
            }
            Err(e) => return Err(e.into()),
        };
        // With proxy mode the directory was made or start-up ended above.
        let proxy = match (&start.config.proxy, &runtime) {
            (Some(config), Some(runtime)) => {
                // Without the admin API's registry (a test's manager) the
                // series are still kept, in one nobody scrapes.
                let metrics = match start.proxy_metrics {
                    Some(m) => m,
                    None => crate::proxy::Metrics::register(&prometheus::Registry::new())
                        .map_err(|e| std::io::Error::other(e.to_string()))?,
                };
                Some(Proxied::start(
                    config,
                    runtime.clone(),
                    &listeners,
                    metrics,
                )?)
            }
            _ => None,
        };
        let notify = match &start.handoff {
            Some(h) => NotifySocket::from_fd(h.notify_fd, h.notify_address.clone())?,
            None => NotifySocket::bind()?,
        };
        let now = now();
        let mut manager = Manager {
            cli: start.cli,
            config_path: start.config_path,
            host: start.host,
            command,
            exe,
            argv: std::env::args_os().collect(),
            base_env: std::env::vars_os().collect(),
            measured: Measurements::new(listeners.len()),
            listeners,
            notify,
            admin_fd: start.admin_fd,
            table: Table::default(),
            generation: 1,
            requested: None,
            boots: Boots::new(now),
            shutdown: None,
            reexec_pending: false,
            last_limited: None,
            counters: Counters::default(),
            processes,
            snapshot,
            runtime,
            proxy,
            config: start.config,
        };
        if let Some(h) = start.handoff {
            manager.adopt(h, now);
        }
        for l in &manager.listeners {
            info!(listener = %l.name, "listening");
        }
        Ok(manager)
    }

    /// Runs until every worker is gone after a shutdown; returns the exit code.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) -> i32 {
        let mut signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "cannot install signal handlers");
                return 1;
            }
        };
        // Children that ended while this image was starting.
        self.reap();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last_measured = now() - Duration::from_secs(10);
        loop {
            tokio::select! {
                sig = signals.recv() => self.on_signal(sig),
                msg = self.notify.recv() => match msg {
                    Ok((pid, messages)) => self.on_notify(pid, messages),
                    Err(e) => warn!(error = %e, "notify socket"),
                },
                Some(cmd) = commands.recv() => self.on_command(cmd),
                event = proxied::event(&mut self.proxy) => self.on_proxy_event(event),
                _ = tick.tick() => {
                    self.measured.sample_queues(&self.listeners, now());
                    self.sample_concurrency();
                    if now().duration_since(last_measured) >= Duration::from_secs(1) {
                        last_measured = now();
                        self.measure();
                    }
                }
            }
            if let Some(code) = self.step() {
                return code;
            }
        }
    }

    fn on_signal(&mut self, sig: Signal) {
        match sig {
            Signal::Child => self.reap(),
            Signal::Term => self.begin_shutdown(false),
            Signal::Quick => self.begin_shutdown(true),
            Signal::Hup => self.reload(),
            Signal::Ttin => self.nudge(1),
            Signal::Ttou => self.nudge(-1),
            Signal::Usr1 => {
                info!("USR1: passing on to workers");
                for w in &self.table.workers {
                    self.processes.signal(w.pid, Sig::SIGUSR1);
                }
            }
            Signal::Usr2 if self.proxy.is_some() => {
                // The front's open connections live in this process: an
                // exec would cut every one of them.
                warn!("USR2: re-exec is not available in proxy mode; use HUP to roll the workers");
            }
            Signal::Usr2 => {
                info!("USR2: re-exec as soon as no worker is draining");
                self.reexec_pending = true;
            }
        }
    }

    fn on_notify(&mut self, pid: i32, messages: Vec<Message>) {
        let pgid = nix::unistd::getpgid(Some(Pid::from_raw(pid))).ok();
        let Some(w) = self
            .table
            .workers
            .iter_mut()
            .find(|w| w.pid.as_raw() == pid || Some(w.pid) == pgid)
        else {
            debug!(pid, "notify message from an unknown process");
            return;
        };
        let now = now();
        // Told after the loop, which holds the worker's entry.
        let mut ready = false;
        for m in messages {
            match m {
                Message::Ready => {
                    if w.mark_ready() {
                        info!(
                            worker = w.facts.id,
                            pid,
                            boot_ms = now.duration_since(w.facts.started).as_millis() as u64,
                            "worker ready"
                        );
                        ready = true;
                    }
                }
                Message::Stopping => {}
                Message::Watchdog => w.facts.last_heartbeat = Some(now),
                Message::WatchdogTrigger => {
                    // Due now: the planner aborts it on this pass.
                    w.facts.last_heartbeat = Some(
                        now.checked_sub(Duration::from_secs(86400 * 365))
                            .unwrap_or(now),
                    );
                }
                Message::Status(text) => w.status = Some(text),
            }
        }
        if ready {
            self.boots.became_ready();
        }
    }

    /// One pass: advance the shutdown, ask the planner, act, publish.
    /// `Some(code)` when the manager is done.
    fn step(&mut self) -> Option<i32> {
        let now = now();
        let mut stopping = false;
        if let Some(s) = &mut self.shutdown
            && now >= s.stop_at
        {
            stopping = true;
            if !s.stopping {
                s.stopping = true;
                let quick = s.quick;
                self.stop_everything(quick, now);
            }
        }
        self.tell_workers_at_shutdown(now);
        // Proxy mode: the workers serve until the front has let its
        // clients go.
        let holding = stopping && self.proxy.as_ref().is_some_and(|p| !p.workers_told);
        let facts: Vec<WorkerFacts> = self.table.workers.iter().map(|w| w.facts.clone()).collect();
        let policy = self.policy();
        // During the shutdown delay the workers keep serving: the count
        // drops to zero only once they are asked to stop.
        let desired = if stopping && !holding {
            0
        } else {
            self.bounds()
                .effective(self.target(), self.table.active_count())
        };
        let view = View {
            desired,
            generation: self.generation,
            may_spawn: !stopping && self.boots.may_start(now),
            workers: &facts,
            policy: &policy,
        };
        for action in plan::next_actions(&view, now) {
            self.act(action, now);
        }
        self.sync_front(now);
        self.publish();
        self.reexec_when_quiet();
        if stopping && self.table.workers.is_empty() {
            info!("all workers gone; exiting");
            return Some(0);
        }
        if self.boots.given_up(self.config.max_boot_failures) {
            error!(
                failures = self.boots.failures(),
                "no worker ever became ready and boots keep failing; exiting so the orchestrator can see it"
            );
            for w in &self.table.workers {
                self.processes.signal_group(w.pid, Sig::SIGKILL);
            }
            return Some(1);
        }
        None
    }

    fn act(&mut self, action: Action, now: Instant) {
        match action {
            // A start that failed in this pass puts off the pass's others.
            Action::Spawn if !self.boots.may_start(now) => {}
            Action::Spawn => self.spawn_worker(now),
            Action::MarkReady(id) => {
                if let Some(w) = self.table.active(id)
                    && w.mark_ready()
                {
                    info!(
                        worker = id,
                        pid = w.pid.as_raw(),
                        "worker ready (alive past the boot grace)"
                    );
                    self.boots.became_ready();
                }
            }
            Action::Drain(id) => {
                let deadline = now + self.config.graceful_timeout;
                if let Some(w) = self.table.active(id) {
                    info!(
                        worker = id,
                        pid = w.pid.as_raw(),
                        generation = w.facts.generation,
                        "draining worker"
                    );
                    let reason = if w.facts.retiring {
                        ExitReason::Recycled
                    } else {
                        ExitReason::Drained
                    };
                    w.begin_stop(reason, deadline);
                    if self.proxy.is_some() {
                        // Signalled once the front's requests on it are done.
                        w.awaiting_idle = true;
                    } else {
                        self.processes.signal(w.pid, Sig::SIGTERM);
                    }
                }
            }
            Action::Abort(id, reason) => {
                if let Some(w) = self.table.active(id) {
                    warn!(
                        worker = id,
                        pid = w.pid.as_raw(),
                        reason = reason.as_str(),
                        "aborting hung worker"
                    );
                    w.begin_stop(reason, now + ABORT_GRACE);
                    self.processes.signal(w.pid, Sig::SIGABRT);
                }
            }
            Action::Recycle(id, why) => {
                if let Some(w) = self.table.active(id) {
                    info!(
                        worker = id,
                        pid = w.pid.as_raw(),
                        reason = why.as_str(),
                        rss_bytes = w.usage.map_or(0, |u| u.rss_bytes),
                        "recycling worker: its successor starts first"
                    );
                    w.facts.retiring = true;
                }
            }
            Action::Kill(id) => {
                if let Some(w) = self.table.by_id(id) {
                    warn!(
                        worker = id,
                        pid = w.pid.as_raw(),
                        "killing worker past its deadline"
                    );
                    w.mark_killed();
                    self.processes.kill(w.pid);
                }
            }
        }
    }
}

/// How long an aborted (hung) worker gets to write its core or traceback
/// before SIGKILL.
const ABORT_GRACE: Duration = Duration::from_secs(2);
