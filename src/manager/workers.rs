//! The workers' own lives, as the manager sees them: starting one (its
//! fds, environment and arguments; in proxy mode its own socket and boot
//! probe), the moment it becomes ready, and its end (reaping, the crash
//! count and the backoff before the next start).

use std::os::fd::RawFd;
use std::time::Instant;

use nix::sys::signal::Signal as Sig;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tracing::{debug, error, info, warn};

use crate::config::LogFormat;
use crate::contract::{ExitDoc, ExitReason, WorkerState};

use super::listener::Listener;
use super::table::Worker;
use super::{Manager, now, plan, random, spawn, unix_now};

impl Manager {
    /// Collects every child that ended: workers and, as PID 1 or subreaper,
    /// orphans of workers.
    pub(super) fn reap(&mut self) {
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

    pub(super) fn on_exit(&mut self, pid: Pid, code: Option<i32>, signal: Option<i32>) {
        let exit = ExitDoc {
            code,
            signal,
            reason: ExitReason::Crashed,
            at: unix_now(),
        };
        let Some((w, gone)) = self.table.remove(pid, exit) else {
            debug!(pid = pid.as_raw(), code, signal, "reaped an orphan");
            return;
        };
        // Whatever the worker left running in its group goes with it.
        self.processes.signal_group(pid, Sig::SIGKILL);
        if let Some(p) = &mut self.proxy {
            p.forget(w.facts.id);
        }
        self.counters.exited(gone.reason);
        let worker = w.facts.id;
        if gone.reason.is_asked() {
            info!(worker, pid = pid.as_raw(), code, signal, "worker exited");
            return;
        }
        if self.shutdown.is_some() && gone.reason == ExitReason::Killed {
            warn!(
                worker,
                pid = pid.as_raw(),
                "worker killed after the graceful timeout"
            );
            return;
        }
        let delay = self.boots.failed(now(), self.config.restart_backoff_max);
        warn!(
            worker,
            pid = pid.as_raw(),
            code,
            signal,
            reason = gone.reason.as_str(),
            failures = self.boots.failures(),
            restart_in_ms = delay.as_millis() as u64,
            "worker died"
        );
    }

    pub(super) fn spawn_worker(&mut self, now: Instant) {
        let id = self.table.free_slot();
        // Proxy mode: the worker's own socket instead of the listeners.
        let socket = match &mut self.proxy {
            Some(p) => match p.socket_for(id, spawn::binds_itself(&self.command.args)) {
                Ok(s) => Some(s),
                Err(e) => return self.start_failed(now, &e, "cannot make the worker's socket"),
            },
            None => None,
        };
        let (fds, names): (Vec<RawFd>, Vec<String>) = match &socket {
            Some(s) => (
                s.fd.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect(),
                s.fd.iter().map(|_| "worker".to_string()).collect(),
            ),
            None => (
                self.listeners.iter().map(Listener::fd).collect(),
                self.listeners
                    .iter()
                    .map(|l| l.name.replace(':', "_"))
                    .collect(),
            ),
        };
        let own_dir = match self.runtime.as_ref().map(|r| r.worker_dir(id)).transpose() {
            Ok(d) => d,
            Err(e) => return self.start_failed(now, &e, "cannot make the worker's directory"),
        };
        let mut extra = vec![
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
        if let Some(dir) = own_dir {
            extra.push(("XDG_RUNTIME_DIR", dir.display().to_string()));
        }
        if let Some(t) = self.config.timeout {
            extra.push(("WATCHDOG_USEC", t.as_micros().to_string()));
        }
        // A command told where its sockets are (`{fd}`) is not told again
        // through systemd's variables: Gunicorn takes the LISTEN_FDS
        // sockets and then fails on `-b fd://3` as a second claim on them.
        if !spawn::names_descriptors(&self.command.args) {
            extra.push(("LISTEN_FDS", fds.len().to_string()));
            extra.push(("LISTEN_FDNAMES", names.join(":")));
        }
        let args = spawn::render_args(
            &self.command.args,
            3,
            fds.len(),
            socket.as_ref().and_then(|s| s.path()),
        );
        let spec = spawn::SpawnSpec {
            program: &self.command.program,
            args: &args,
            env: spawn::worker_env(self.base_env.iter().cloned(), extra),
            listen_fds: &fds,
        };
        match self.processes.spawn(&spec) {
            Ok(pid) => {
                self.counters.starts += 1;
                debug!(
                    worker = id,
                    pid = pid.as_raw(),
                    generation = self.generation,
                    "worker started"
                );
                let mut worker = Worker::new(
                    id,
                    self.generation,
                    pid,
                    WorkerState::Starting,
                    now,
                    unix_now(),
                );
                worker.facts.retire_at = self.config.max_worker_lifetime.map(|limit| {
                    now + limit + plan::jitter(self.config.max_worker_lifetime_jitter, random())
                });
                if let Some(p) = &mut self.proxy {
                    worker.facts.max_requests = p.config.max_requests.map(|limit| {
                        plan::request_limit(limit, p.config.max_requests_jitter, random())
                    });
                    p.watch_boot(
                        crate::proxy::Key {
                            id,
                            pid: pid.as_raw(),
                        },
                        self.config.boot_timeout,
                    );
                }
                self.table.workers.push(worker);
            }
            Err(e) => self.start_failed(now, &e, "worker failed to start"),
        }
    }

    /// A start that failed counts as a crash: the next waits for the backoff.
    pub(super) fn start_failed(&mut self, now: Instant, error: &dyn std::fmt::Display, what: &str) {
        self.boots.failed(now, self.config.restart_backoff_max);
        error!(error = %error, failures = self.boots.failures(), "{what}");
    }
}
