//! The manager's own life, as opposed to its workers': adopting the workers
//! of the image it replaced, the Kubernetes-aware shutdown (not ready at
//! once, keep serving for the shutdown delay, then stop the workers), HUP
//! reload, and the USR2 re-exec that hands everything to a new image.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal as Sig;
use nix::unistd::Pid;
use tracing::{error, info, warn};

use crate::config::{Config, Settings};
use crate::contract::{ExitReason, WorkerState};

use super::boots::Boots;
use super::listener::Listener;
use super::reexec::{self, HandOff};
use super::table::Worker;
use super::{Manager, now, resolve_command, unix_now};

/// A shutdown in progress.
#[derive(Debug)]
pub(super) struct Shutdown {
    pub quick: bool,
    /// When the listeners close and workers get their stop signal.
    pub stop_at: Instant,
    pub stopping: bool,
}

impl Manager {
    /// Takes over the previous image's workers as the old generation, so
    /// they keep serving until their replacements are ready.
    pub(super) fn adopt(&mut self, h: HandOff, now: Instant) {
        self.generation = h.generation + 1;
        self.requested = h.requested;
        self.boots = Boots::adopted(now, h.workers.iter().any(|w| w.ready));
        for w in h.workers {
            let age = Duration::from_secs_f64((unix_now() - w.started_at).max(0.0));
            self.table.slots.entry(w.id).or_default().restarts = w.restarts;
            let state = if w.ready {
                WorkerState::Ready
            } else {
                WorkerState::Starting
            };
            let started = now.checked_sub(age).unwrap_or(now);
            self.table.workers.push(Worker::new(
                w.id,
                w.generation,
                Pid::from_raw(w.pid),
                state,
                started,
                w.started_at,
            ));
        }
        info!(
            workers = self.table.workers.len(),
            generation = self.generation,
            "re-exec: adopted workers"
        );
    }

    /// TERM (graceful) or INT/QUIT (quick): not ready from now on; the
    /// workers are stopped once the delay has passed ([`Manager::step`]).
    pub(super) fn begin_shutdown(&mut self, quick: bool) {
        let now = now();
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
    pub(super) fn stop_everything(&mut self, quick: bool, now: Instant) {
        self.listeners.clear();
        if let Some(p) = &self.proxy {
            // The front stops accepting and lets its clients finish; the
            // workers are told once it has ([`Manager::tell_workers_at_shutdown`]).
            p.front.stop();
            info!(
                quick,
                "front: no new connections; requests in progress finish"
            );
            return;
        }
        self.ask_workers_to_stop(quick, now);
    }

    /// Every worker not already draining is asked to stop (a quick
    /// shutdown asks them all, with QUIT and a second's grace). In proxy
    /// mode a graceful stop signal waits until the worker holds no request.
    pub(super) fn ask_workers_to_stop(&mut self, quick: bool, now: Instant) {
        let (signal, grace) = if quick {
            (Sig::SIGQUIT, Duration::from_secs(1))
        } else {
            (Sig::SIGTERM, self.config.graceful_timeout)
        };
        let when_idle = self.proxy.is_some() && !quick;
        for w in &mut self.table.workers {
            if w.is_draining() && !quick {
                continue;
            }
            if when_idle {
                w.awaiting_idle = true;
            } else {
                self.processes.signal(w.pid, signal);
            }
            w.begin_stop(ExitReason::Drained, now + grace);
        }
        info!(
            workers = self.table.workers.len(),
            quick, "workers asked to stop"
        );
    }

    /// HUP: read the config again and roll the workers onto it; a config
    /// that does not resolve changes nothing.
    pub(super) fn reload(&mut self) {
        if self.shutdown.is_some() {
            return;
        }
        self.reload_certificate();
        let refused =
            |e: &dyn std::fmt::Display| error!(error = %e, "reload refused: config unchanged");
        let file = match &self.config_path {
            Some(path) => match Settings::load(path) {
                Ok(s) => s,
                Err(e) => return refused(&e),
            },
            None => Settings::default(),
        };
        let config = match Config::resolve(self.cli.clone(), file, &self.host) {
            Ok(c) => c,
            Err(e) => return refused(&e),
        };
        let command = match resolve_command(&config, &self.exe) {
            Ok(c) => c,
            Err(e) => return refused(&e),
        };
        if config.binds != self.config.binds || config.backlog != self.config.backlog {
            warn!("listener changes take effect on re-exec (USR2) or restart, not on HUP");
        }
        if config.proxy != self.config.proxy {
            warn!("proxy settings take effect on restart, not on HUP");
        }
        self.command = command;
        self.config = Config {
            binds: self.config.binds.clone(),
            backlog: self.config.backlog,
            socket_mode: self.config.socket_mode,
            admin_bind: self.config.admin_bind,
            proxy: self.config.proxy.clone(),
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
    pub(super) fn reexec_when_quiet(&mut self) {
        if !self.reexec_pending || self.shutdown.is_some() {
            self.reexec_pending = false;
            return;
        }
        if self.table.any_draining() {
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
                .table
                .workers
                .iter()
                .map(|w| reexec::HandedWorker {
                    pid: w.pid.as_raw(),
                    id: w.facts.id,
                    generation: w.facts.generation,
                    ready: w.facts.state == WorkerState::Ready,
                    started_at: w.started_wall,
                    restarts: self.table.restarts(w.facts.id),
                })
                .collect(),
        };
        info!(exe = %self.exe.display(), "USR2: re-executing");
        let err = reexec::exec(&self.exe, &self.argv, self.base_env.clone(), &handoff);
        error!(error = %err, "re-exec failed; carrying on");
    }
}
