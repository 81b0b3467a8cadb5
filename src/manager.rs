//! The supervisor: owns the listeners and the worker table, and runs one
//! event loop that turns signals, notify messages, child exits, admin
//! commands and timer ticks into actions. Decisions come from
//! [`plan::decide`]; this module carries them out and keeps the books.
//! It knows nothing of Kubernetes beyond the shutdown order.

pub mod listener;
pub mod notify;
pub mod plan;
pub mod probe;
pub mod reexec;
pub mod signals;
pub mod spawn;

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal as Sig, kill, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::admin::metrics::Metrics;
use crate::config::{Config, Host, LogFormat, Settings};
use crate::contract::{
    CgroupDoc, ExitDoc, ExitReason, LimitReason, Limited, Limits, ListenerDoc, RecentExit, VERSION,
    WorkerDoc, WorkerState, WorkersDoc,
};
use crate::limits::{self, Bounds};
use listener::{Inherited, Listener};
use notify::{Message, NotifySocket};
use plan::{Action, Policy, View, WorkerFacts};
use probe::{CgroupPaths, ProcUsage};
use reexec::HandOff;
use signals::{Signal, Signals};

/// What the admin API may ask of the supervision loop.
#[derive(Debug)]
pub enum Command {
    /// `None` returns to the configured count.
    Scale {
        desired: Option<u32>,
        reply: oneshot::Sender<Result<(), ScaleError>>,
    },
    Restart {
        reply: oneshot::Sender<Result<(), ScaleError>>,
    },
    /// Liveness: answered by the loop itself, so a wedged loop fails it.
    Ping { reply: oneshot::Sender<()> },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScaleError {
    #[error("the manager is shutting down")]
    ShuttingDown,
    #[error("{requested} workers refused by {by:?}: the limit is {limit}")]
    Limited {
        requested: u32,
        by: LimitReason,
        limit: u32,
    },
}

/// What the admin API shows, republished after every loop pass.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub doc: WorkersDoc,
    pub min_ready: u32,
    /// Starts that failed in a row (0 once a worker is ready).
    pub failures: u32,
}

impl Snapshot {
    /// What the API shows before the loop's first pass.
    pub fn empty(config: &Config) -> Snapshot {
        Snapshot {
            doc: WorkersDoc {
                version: VERSION,
                desired: config.workers,
                configured: config.workers,
                requested: None,
                running: 0,
                ready: 0,
                shutting_down: false,
                generation: 1,
                limits: Limits {
                    min: config.min_workers,
                    max: config.max_workers,
                    memory_cap: None,
                    memory_limit_bytes: None,
                    memory_limit_source: None,
                    per_worker_memory_bytes: None,
                },
                last_limited: None,
                cpu_utilisation: 0.0,
                workers: Vec::new(),
                recent_exits: Vec::new(),
                listeners: Vec::new(),
                cgroup: CgroupDoc::default(),
            },
            min_ready: config.min_ready,
            failures: 0,
        }
    }
}

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
}

#[derive(Debug)]
struct Worker {
    facts: WorkerFacts,
    pid: Pid,
    started_wall: f64,
    /// Set when corral asked it to go: the reason its exit is recorded with.
    stop_reason: Option<ExitReason>,
    status: Option<String>,
    usage: Option<ProcUsage>,
    cpu_samples: VecDeque<(Instant, f64)>,
}

#[derive(Debug, Default)]
struct SlotHistory {
    restarts: u32,
    last_exit: Option<ExitDoc>,
}

#[derive(Debug)]
struct Shutdown {
    quick: bool,
    /// When the listeners close and workers get their stop signal.
    stop_at: Instant,
    stopping: bool,
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
    cgroup_paths: Option<CgroupPaths>,
    cgroup: probe::Cgroup,
    manager_rss: u64,
    queue_samples: Vec<VecDeque<(Instant, u32)>>,
    workers: Vec<Worker>,
    slots: BTreeMap<u32, SlotHistory>,
    recent_exits: VecDeque<RecentExit>,
    generation: u64,
    requested: Option<u32>,
    failures: u32,
    next_spawn_at: Instant,
    ever_ready: bool,
    shutdown: Option<Shutdown>,
    reexec_pending: bool,
    last_limited: Option<Limited>,
    metrics: Arc<Metrics>,
    snapshot: watch::Sender<Arc<Snapshot>>,
}

/// Everything the manager is built from, gathered by `corral run`.
pub struct Startup {
    pub cli: Settings,
    pub config_path: Option<PathBuf>,
    pub host: Host,
    pub config: Config,
    pub handoff: Option<HandOff>,
}

/// Wall-clock seconds, for documents.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn resolve_command(config: &Config, exe: &std::path::Path) -> Result<WorkerCommand, StartError> {
    match &config.command {
        None => Ok(WorkerCommand {
            program: exe.to_path_buf(),
            args: vec!["worker".into()],
        }),
        Some(cmd) => {
            let program = spawn::resolve_program(&cmd[0], std::env::var_os("PATH").as_deref())
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
        admin_fd: RawFd,
        metrics: Arc<Metrics>,
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
        let notify = match &start.handoff {
            Some(h) => NotifySocket::from_fd(h.notify_fd, h.notify_address.clone())?,
            None => NotifySocket::bind()?,
        };
        let cgroup_paths = CgroupPaths::detect();
        let cgroup = cgroup_paths
            .as_ref()
            .map(CgroupPaths::read)
            .unwrap_or_default();
        let now = Instant::now();
        let mut manager = Manager {
            cli: start.cli,
            config_path: start.config_path,
            host: start.host,
            command,
            exe,
            argv: std::env::args_os().collect(),
            base_env: std::env::vars_os().collect(),
            queue_samples: listeners.iter().map(|_| VecDeque::new()).collect(),
            listeners,
            notify,
            admin_fd,
            cgroup_paths,
            cgroup,
            manager_rss: probe::self_rss().unwrap_or(0),
            workers: Vec::new(),
            slots: BTreeMap::new(),
            recent_exits: VecDeque::new(),
            generation: 1,
            requested: None,
            failures: 0,
            next_spawn_at: now,
            ever_ready: false,
            shutdown: None,
            reexec_pending: false,
            last_limited: None,
            metrics,
            snapshot,
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

    /// Takes over the previous image's workers as the old generation, so
    /// they keep serving until their replacements are ready.
    fn adopt(&mut self, h: HandOff, now: Instant) {
        self.generation = h.generation + 1;
        self.requested = h.requested;
        self.ever_ready = h.workers.iter().any(|w| w.ready);
        for w in h.workers {
            let age = Duration::from_secs_f64((unix_now() - w.started_at).max(0.0));
            self.slots.entry(w.id).or_default().restarts = w.restarts;
            self.workers.push(Worker {
                facts: WorkerFacts {
                    id: w.id,
                    generation: w.generation,
                    state: if w.ready {
                        WorkerState::Ready
                    } else {
                        WorkerState::Starting
                    },
                    started: now.checked_sub(age).unwrap_or(now),
                    last_heartbeat: None,
                    kill_deadline: None,
                    killed: false,
                    cpu_recent: 0.0,
                },
                pid: Pid::from_raw(w.pid),
                started_wall: w.started_at,
                stop_reason: None,
                status: None,
                usage: None,
                cpu_samples: VecDeque::new(),
            });
        }
        info!(
            workers = self.workers.len(),
            generation = self.generation,
            "re-exec: adopted workers"
        );
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
        let mut last_probe = Instant::now() - Duration::from_secs(10);
        loop {
            tokio::select! {
                sig = signals.recv() => self.on_signal(sig),
                msg = self.notify.recv() => match msg {
                    Ok((pid, messages)) => self.on_notify(pid, messages),
                    Err(e) => warn!(error = %e, "notify socket"),
                },
                Some(cmd) = commands.recv() => self.on_command(cmd),
                _ = tick.tick() => {
                    self.sample_queues();
                    if last_probe.elapsed() >= Duration::from_secs(1) {
                        last_probe = Instant::now();
                        self.probe();
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
                for w in &self.workers {
                    let _ = kill(w.pid, Sig::SIGUSR1);
                }
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
            .workers
            .iter_mut()
            .find(|w| w.pid.as_raw() == pid || Some(w.pid) == pgid)
        else {
            debug!(pid, "notify message from an unknown process");
            return;
        };
        let now = Instant::now();
        for m in messages {
            match m {
                Message::Ready if w.facts.state == WorkerState::Starting => {
                    w.facts.state = WorkerState::Ready;
                    info!(
                        worker = w.facts.id,
                        pid,
                        boot_ms = now.duration_since(w.facts.started).as_millis() as u64,
                        "worker ready"
                    );
                    self.failures = 0;
                    self.ever_ready = true;
                }
                Message::Ready | Message::Stopping => {}
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
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Ping { reply } => {
                let _ = reply.send(());
            }
            Command::Scale { desired, reply } => {
                let result = if self.shutdown.is_some() {
                    Err(ScaleError::ShuttingDown)
                } else {
                    match desired {
                        None => {
                            info!(
                                workers = self.config.workers,
                                "worker count returned to the configured default"
                            );
                            self.requested = None;
                            Ok(())
                        }
                        Some(n) => self.request(n),
                    }
                };
                let _ = reply.send(result);
            }
            Command::Restart { reply } => {
                let result = if self.shutdown.is_some() {
                    Err(ScaleError::ShuttingDown)
                } else {
                    self.generation += 1;
                    info!(generation = self.generation, "rolling restart requested");
                    Ok(())
                };
                let _ = reply.send(result);
            }
        }
    }

    fn target(&self) -> u32 {
        self.requested.unwrap_or(self.config.workers)
    }

    fn active_count(&self) -> u32 {
        self.workers
            .iter()
            .filter(|w| w.facts.state != WorkerState::Draining)
            .count() as u32
    }

    /// Applies a runtime worker count after checking every bound.
    fn request(&mut self, n: u32) -> Result<(), ScaleError> {
        let bounds = self.bounds();
        match bounds.check(n, self.active_count()) {
            Ok(n) => {
                info!(from = self.target(), to = n, "worker count changed");
                self.requested = Some(n);
                Ok(())
            }
            Err((by, limit)) => {
                warn!(requested = n, limited_by = ?by, limit, "worker count refused");
                self.last_limited = Some(Limited {
                    requested: n,
                    applied: self.target(),
                    by,
                    at: unix_now(),
                });
                Err(ScaleError::Limited {
                    requested: n,
                    by,
                    limit,
                })
            }
        }
    }

    fn nudge(&mut self, delta: i32) {
        if self.shutdown.is_some() {
            return;
        }
        let n = self.target().saturating_add_signed(delta);
        let _ = self.request(n);
    }

    fn memory_limit(&self) -> Option<(u64, &'static str)> {
        match self.config.memory_limit {
            Some(l) => Some((l, "flag")),
            None => self.cgroup.memory_limit.map(|l| (l, "cgroup")),
        }
    }

    fn per_worker_memory(&self) -> Option<u64> {
        self.workers
            .iter()
            .filter(|w| w.facts.state != WorkerState::Draining)
            .filter_map(|w| w.usage.map(|u| u.rss_bytes))
            .max()
    }

    fn bounds(&self) -> Bounds {
        let memory_cap = match (self.memory_limit(), self.per_worker_memory()) {
            (Some((limit, _)), Some(per)) => {
                limits::memory_cap(limit, self.config.memory_headroom, self.manager_rss, per)
            }
            _ => None,
        };
        Bounds {
            min: self.config.min_workers,
            max: self.config.max_workers,
            memory_cap,
        }
    }

    fn policy(&self) -> Policy {
        Policy {
            readiness: self.config.readiness,
            boot_grace: self.config.boot_grace,
            boot_timeout: self.config.boot_timeout,
            watchdog: self.config.timeout,
            max_surge: self.config.max_surge,
        }
    }

    fn begin_shutdown(&mut self, quick: bool) {
        let now = Instant::now();
        match &mut self.shutdown {
            Some(s) if quick && !s.quick => {
                info!("quick shutdown: stopping workers now");
                s.quick = true;
                s.stop_at = now;
                s.stopping = false;
            }
            Some(_) => {}
            None => {
                let delay = if quick {
                    Duration::ZERO
                } else {
                    self.config.shutdown_delay
                };
                info!(
                    quick,
                    delay_ms = delay.as_millis() as u64,
                    "shutdown: not ready from now on"
                );
                self.shutdown = Some(Shutdown {
                    quick,
                    stop_at: now + delay,
                    stopping: false,
                });
            }
        }
    }

    /// After the shutdown delay: close our copy of the listeners, so that
    /// late clients are refused at once once the workers close theirs, and
    /// ask every worker to stop.
    fn stop_everything(&mut self, quick: bool, now: Instant) {
        self.listeners.clear();
        let (signal, grace) = if quick {
            (Sig::SIGQUIT, Duration::from_secs(1))
        } else {
            (Sig::SIGTERM, self.config.graceful_timeout)
        };
        for w in &mut self.workers {
            if w.facts.state != WorkerState::Draining || quick {
                let _ = kill(w.pid, signal);
                w.facts.state = WorkerState::Draining;
                w.facts.kill_deadline = Some(now + grace);
                w.stop_reason.get_or_insert(ExitReason::Drained);
            }
        }
        info!(workers = self.workers.len(), quick, "workers asked to stop");
    }

    fn reload(&mut self) {
        if self.shutdown.is_some() {
            return;
        }
        let file = match &self.config_path {
            Some(path) => match Settings::load(path) {
                Ok(s) => s,
                Err(e) => {
                    error!(error = %e, "reload refused: config unchanged");
                    return;
                }
            },
            None => Settings::default(),
        };
        let config = match Config::resolve(self.cli.clone(), file, &self.host) {
            Ok(c) => c,
            Err(e) => {
                error!(error = %e, "reload refused: config unchanged");
                return;
            }
        };
        let command = match resolve_command(&config, &self.exe) {
            Ok(c) => c,
            Err(e) => {
                error!(error = %e, "reload refused: config unchanged");
                return;
            }
        };
        if config.binds != self.config.binds || config.backlog != self.config.backlog {
            warn!("listener changes take effect on re-exec (USR2) or restart, not on HUP");
        }
        self.command = command;
        self.config = Config {
            binds: self.config.binds.clone(),
            backlog: self.config.backlog,
            socket_mode: self.config.socket_mode,
            admin_bind: self.config.admin_bind,
            ..config
        };
        self.generation += 1;
        info!(
            generation = self.generation,
            workers = self.target(),
            "HUP: config reloaded, rolling workers"
        );
    }

    /// Re-execs once no worker is draining: a draining worker cannot be
    /// handed over (the next image would not know to wait for it).
    fn reexec_when_quiet(&mut self) {
        if !self.reexec_pending || self.shutdown.is_some() {
            self.reexec_pending = false;
            return;
        }
        if self
            .workers
            .iter()
            .any(|w| w.facts.state == WorkerState::Draining)
        {
            return;
        }
        self.reexec_pending = false;
        let handoff = HandOff {
            listener_fds: self.listeners.iter().map(Listener::fd).collect(),
            notify_fd: self.notify.raw_fd(),
            notify_address: self.notify.address.clone(),
            admin_fd: self.admin_fd,
            generation: self.generation,
            requested: self.requested,
            workers: self
                .workers
                .iter()
                .map(|w| reexec::HandedWorker {
                    pid: w.pid.as_raw(),
                    id: w.facts.id,
                    generation: w.facts.generation,
                    ready: w.facts.state == WorkerState::Ready,
                    started_at: w.started_wall,
                    restarts: self.slots.get(&w.facts.id).map_or(0, |s| s.restarts),
                })
                .collect(),
        };
        info!(exe = %self.exe.display(), "USR2: re-executing");
        let err = reexec::exec(&self.exe, &self.argv, self.base_env.clone(), &handoff);
        error!(error = %err, "re-exec failed; carrying on");
    }

    /// Collects every child that ended: workers and, as PID 1 or subreaper,
    /// orphans of workers.
    fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.on_exit(pid, Some(code), None),
                Ok(WaitStatus::Signaled(pid, sig, _)) => self.on_exit(pid, None, Some(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return,
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    warn!(error = %e, "waitpid");
                    return;
                }
            }
        }
    }

    fn on_exit(&mut self, pid: Pid, code: Option<i32>, signal: Option<i32>) {
        let Some(pos) = self.workers.iter().position(|w| w.pid == pid) else {
            debug!(pid = pid.as_raw(), code, signal, "reaped an orphan");
            return;
        };
        let w = self.workers.remove(pos);
        // Whatever the worker left running in its group goes with it.
        let _ = killpg(pid, Sig::SIGKILL);
        let reason = w.stop_reason.unwrap_or(ExitReason::Crashed);
        let now = Instant::now();
        let exit = ExitDoc {
            code,
            signal,
            reason,
            at: unix_now(),
        };
        self.recent_exits.push_front(RecentExit {
            id: w.facts.id,
            pid: pid.as_raw(),
            generation: w.facts.generation,
            exit: exit.clone(),
        });
        self.recent_exits.truncate(RECENT_EXITS);
        let slot = self.slots.entry(w.facts.id).or_default();
        slot.last_exit = Some(exit);
        self.metrics.worker_exited(reason);
        if reason == ExitReason::Drained {
            info!(
                worker = w.facts.id,
                pid = pid.as_raw(),
                code,
                signal,
                "worker exited"
            );
            return;
        }
        slot.restarts += 1;
        if self.shutdown.is_some() && reason == ExitReason::Killed {
            warn!(
                worker = w.facts.id,
                pid = pid.as_raw(),
                "worker killed after the graceful timeout"
            );
            return;
        }
        self.failures += 1;
        let delay = plan::backoff(self.failures, self.config.restart_backoff_max);
        self.next_spawn_at = now + delay;
        warn!(
            worker = w.facts.id,
            pid = pid.as_raw(),
            code,
            signal,
            reason = reason.as_str(),
            failures = self.failures,
            restart_in_ms = delay.as_millis() as u64,
            "worker died"
        );
    }

    fn spawn_worker(&mut self, now: Instant) {
        let id = (1..)
            .find(|id| !self.workers.iter().any(|w| w.facts.id == *id))
            .unwrap_or(1);
        let fds: Vec<RawFd> = self.listeners.iter().map(Listener::fd).collect();
        let names: Vec<String> = self
            .listeners
            .iter()
            .map(|l| l.name.replace(':', "_"))
            .collect();
        let mut extra = vec![
            ("LISTEN_FDS", fds.len().to_string()),
            ("LISTEN_FDNAMES", names.join(":")),
            ("NOTIFY_SOCKET", self.notify.address.clone()),
            ("CORRAL_WORKER_ID", id.to_string()),
            ("CORRAL_WORKER_GENERATION", self.generation.to_string()),
            (
                "CORRAL_LOG_FORMAT",
                match self.config.log_format {
                    LogFormat::Text => "text",
                    LogFormat::Json => "json",
                }
                .to_string(),
            ),
        ];
        if let Some(t) = self.config.timeout {
            extra.push(("WATCHDOG_USEC", t.as_micros().to_string()));
        }
        let args = spawn::render_args(&self.command.args, 3, fds.len());
        let spec = spawn::SpawnSpec {
            program: &self.command.program,
            args: &args,
            env: spawn::worker_env(self.base_env.iter().cloned(), extra),
            listen_fds: &fds,
        };
        match spawn::spawn(&spec) {
            Ok(pid) => {
                self.metrics.worker_started();
                debug!(
                    worker = id,
                    pid = pid.as_raw(),
                    generation = self.generation,
                    "worker started"
                );
                self.workers.push(Worker {
                    facts: WorkerFacts {
                        id,
                        generation: self.generation,
                        state: WorkerState::Starting,
                        started: now,
                        last_heartbeat: None,
                        kill_deadline: None,
                        killed: false,
                        cpu_recent: 0.0,
                    },
                    pid,
                    started_wall: unix_now(),
                    stop_reason: None,
                    status: None,
                    usage: None,
                    cpu_samples: VecDeque::new(),
                });
            }
            Err(e) => {
                self.failures += 1;
                let delay = plan::backoff(self.failures, self.config.restart_backoff_max);
                self.next_spawn_at = now + delay;
                error!(error = %e, failures = self.failures, "worker failed to start");
            }
        }
    }

    fn worker_mut(&mut self, id: u32) -> Option<&mut Worker> {
        self.workers
            .iter_mut()
            .find(|w| w.facts.id == id && w.facts.state != WorkerState::Draining)
    }

    /// One pass: advance the shutdown, ask the planner, act, publish.
    fn step(&mut self) -> Option<i32> {
        let now = Instant::now();
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
        let bounds = self.bounds();
        let desired = if stopping {
            0
        } else {
            bounds.effective(self.target(), self.active_count())
        };
        let facts: Vec<WorkerFacts> = self.workers.iter().map(|w| w.facts.clone()).collect();
        let policy = self.policy();
        let view = View {
            desired,
            generation: self.generation,
            may_spawn: !stopping,
            workers: &facts,
            policy: &policy,
        };
        for action in plan::decide(&view, now) {
            match action {
                Action::Spawn => {
                    if now >= self.next_spawn_at {
                        self.spawn_worker(now);
                    }
                }
                Action::MarkReady(id) => {
                    if let Some(w) = self.worker_mut(id) {
                        w.facts.state = WorkerState::Ready;
                        info!(
                            worker = id,
                            pid = w.pid.as_raw(),
                            "worker ready (alive past the boot grace)"
                        );
                        self.failures = 0;
                        self.ever_ready = true;
                    }
                }
                Action::Drain(id) => {
                    let grace = self.config.graceful_timeout;
                    if let Some(w) = self.worker_mut(id) {
                        info!(
                            worker = id,
                            pid = w.pid.as_raw(),
                            generation = w.facts.generation,
                            "draining worker"
                        );
                        let _ = kill(w.pid, Sig::SIGTERM);
                        w.facts.state = WorkerState::Draining;
                        w.facts.kill_deadline = Some(now + grace);
                        w.stop_reason = Some(ExitReason::Drained);
                    }
                }
                Action::Abort(id, reason) => {
                    if let Some(w) = self.worker_mut(id) {
                        warn!(
                            worker = id,
                            pid = w.pid.as_raw(),
                            reason = reason.as_str(),
                            "aborting hung worker"
                        );
                        let _ = kill(w.pid, Sig::SIGABRT);
                        w.facts.state = WorkerState::Draining;
                        w.facts.kill_deadline = Some(now + Duration::from_secs(2));
                        w.stop_reason = Some(reason);
                    }
                }
                Action::Kill(id) => {
                    if let Some(w) = self.workers.iter_mut().find(|w| w.facts.id == id) {
                        warn!(
                            worker = id,
                            pid = w.pid.as_raw(),
                            "killing worker past its deadline"
                        );
                        let _ = killpg(w.pid, Sig::SIGKILL);
                        let _ = kill(w.pid, Sig::SIGKILL);
                        w.facts.killed = true;
                        if w.stop_reason == Some(ExitReason::Drained) {
                            w.stop_reason = Some(ExitReason::Killed);
                        }
                    }
                }
            }
        }
        self.publish();
        self.reexec_when_quiet();
        if stopping && self.workers.is_empty() {
            info!("all workers gone; exiting");
            return Some(0);
        }
        if !self.ever_ready && self.failures >= self.config.max_boot_failures {
            error!(
                failures = self.failures,
                "no worker ever became ready and boots keep failing; exiting so the orchestrator can see it"
            );
            for w in &self.workers {
                let _ = killpg(w.pid, Sig::SIGKILL);
            }
            return Some(1);
        }
        None
    }

    fn sample_queues(&mut self) {
        let now = Instant::now();
        for (l, samples) in self.listeners.iter().zip(&mut self.queue_samples) {
            if !l.is_tcp {
                continue;
            }
            if let Some(q) = probe::listen_queue(l.socket.as_raw_fd()) {
                samples.push_back((now, q.waiting));
                while samples
                    .front()
                    .is_some_and(|(t, _)| now.duration_since(*t) > QUEUE_WINDOW)
                {
                    samples.pop_front();
                }
            }
        }
    }

    fn probe(&mut self) {
        let now = Instant::now();
        for w in &mut self.workers {
            if let Some(u) = probe::proc_usage(w.pid.as_raw()) {
                w.usage = Some(u);
                w.cpu_samples.push_back((now, u.cpu_seconds));
                while w.cpu_samples.len() > CPU_WINDOW_SAMPLES {
                    w.cpu_samples.pop_front();
                }
                w.facts.cpu_recent = cpu_rate(&w.cpu_samples);
            }
        }
        if let Some(paths) = &self.cgroup_paths {
            self.cgroup = paths.read();
        }
        self.manager_rss = probe::self_rss().unwrap_or(self.manager_rss);
    }

    fn publish(&self) {
        let doc = self.document();
        self.snapshot.send_replace(Arc::new(Snapshot {
            doc,
            min_ready: self.config.min_ready,
            failures: self.failures,
        }));
    }

    fn document(&self) -> WorkersDoc {
        let bounds = self.bounds();
        let active: Vec<&Worker> = self
            .workers
            .iter()
            .filter(|w| w.facts.state != WorkerState::Draining)
            .collect();
        let cpu_utilisation = if active.is_empty() {
            0.0
        } else {
            active.iter().map(|w| w.facts.cpu_recent).sum::<f64>() / active.len() as f64
        };
        let memory = self.memory_limit();
        WorkersDoc {
            version: VERSION,
            desired: if self.shutdown.is_some() {
                0
            } else {
                bounds.effective(self.target(), self.active_count())
            },
            configured: self.config.workers,
            requested: self.requested,
            running: self.workers.len() as u32,
            ready: self
                .workers
                .iter()
                .filter(|w| w.facts.state == WorkerState::Ready)
                .count() as u32,
            shutting_down: self.shutdown.is_some(),
            generation: self.generation,
            limits: Limits {
                min: bounds.min,
                max: bounds.max,
                memory_cap: bounds.memory_cap,
                memory_limit_bytes: memory.map(|m| m.0),
                memory_limit_source: memory.map(|m| m.1.to_string()),
                per_worker_memory_bytes: self.per_worker_memory(),
            },
            last_limited: self.last_limited.clone(),
            cpu_utilisation,
            workers: self
                .workers
                .iter()
                .map(|w| {
                    let slot = self.slots.get(&w.facts.id);
                    WorkerDoc {
                        id: w.facts.id,
                        pid: w.pid.as_raw(),
                        state: w.facts.state,
                        generation: w.facts.generation,
                        started_at: w.started_wall,
                        restarts: slot.map_or(0, |s| s.restarts),
                        cpu_seconds: w.usage.map_or(0.0, |u| u.cpu_seconds),
                        cpu_utilisation: w.facts.cpu_recent,
                        rss_bytes: w.usage.map_or(0, |u| u.rss_bytes),
                        status: w.status.clone(),
                        last_exit: slot.and_then(|s| s.last_exit.clone()),
                    }
                })
                .collect(),
            recent_exits: self.recent_exits.iter().cloned().collect(),
            listeners: self
                .listeners
                .iter()
                .zip(&self.queue_samples)
                .map(|(l, samples)| ListenerDoc {
                    address: l.name.clone(),
                    queue_length: samples.back().map(|s| s.1),
                    queue_max_window: samples.iter().map(|s| s.1).max(),
                    backlog: l.is_tcp.then_some(self.config.backlog),
                })
                .collect(),
            cgroup: CgroupDoc {
                cpu_quota_cores: self.cgroup.cpu_quota_cores,
                memory_limit_bytes: self.cgroup.memory_limit,
                memory_usage_bytes: self.cgroup.memory_usage,
            },
        }
    }
}

/// How many ended workers `/workers` remembers.
const RECENT_EXITS: usize = 16;
/// How far back the listen-queue maximum looks.
const QUEUE_WINDOW: Duration = Duration::from_secs(10);
/// CPU utilisation is measured over this many one-second samples (a 2 s
/// window): recent enough that the operator sees a load step within about
/// a second; smoothing beyond that is the autoscaler's job (tolerance,
/// stabilization windows), not the measurement's.
const CPU_WINDOW_SAMPLES: usize = 3;

/// Cores used between the oldest and newest sample.
fn cpu_rate(samples: &VecDeque<(Instant, f64)>) -> f64 {
    match (samples.front(), samples.back()) {
        (Some((t0, c0)), Some((t1, c1))) if t1 > t0 => {
            (c1 - c0).max(0.0) / t1.duration_since(*t0).as_secs_f64()
        }
        _ => 0.0,
    }
}
