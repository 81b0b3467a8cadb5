//! What the admin API (and TTIN/TTOU) may ask of the supervision loop, and
//! how a worker count is checked before it is taken: the bounds come from
//! the config, the memory limit and the measured worker size, and the rule
//! from [`crate::limits`].

use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::contract::{LimitReason, Limited};
use crate::limits::{self, Bounds};

use super::plan::Policy;
use super::{Manager, unix_now};

/// A request to the supervision loop.
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

impl Manager {
    pub(super) fn on_command(&mut self, cmd: Command) {
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

    /// The count asked for: at runtime, else the configured one.
    pub(super) fn target(&self) -> u32 {
        self.requested.unwrap_or(self.config.workers)
    }

    /// Applies a runtime worker count after checking every bound.
    fn request(&mut self, n: u32) -> Result<(), ScaleError> {
        match self.bounds().check(n, self.table.active_count()) {
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

    /// TTIN and TTOU: one worker more or fewer, within the same bounds.
    pub(super) fn nudge(&mut self, delta: i32) {
        if self.shutdown.is_some() {
            return;
        }
        let n = self.target().saturating_add_signed(delta);
        let _ = self.request(n);
    }

    /// The memory limit in force and where it comes from.
    pub(super) fn memory_limit(&self) -> Option<(u64, &'static str)> {
        match self.config.memory_limit {
            Some(l) => Some((l, "flag")),
            None => self.measured.cgroup.memory_limit.map(|l| (l, "cgroup")),
        }
    }

    pub(super) fn bounds(&self) -> Bounds {
        let memory_cap = match (self.memory_limit(), self.table.per_worker_memory()) {
            (Some((limit, _)), Some(per)) => limits::memory_cap(
                limit,
                self.config.memory_headroom,
                self.measured.manager_rss,
                per,
            ),
            _ => None,
        };
        Bounds {
            min: self.config.min_workers,
            max: self.config.max_workers,
            memory_cap,
        }
    }

    pub(super) fn policy(&self) -> Policy {
        Policy {
            // Proxy mode: ready when it answers on its socket (or says so).
            readiness: if self.proxy.is_some() {
                crate::config::Readiness::Notify
            } else {
                self.config.readiness
            },
            boot_grace: self.config.boot_grace,
            boot_timeout: self.config.boot_timeout,
            watchdog: self.config.timeout,
            max_surge: self.config.max_surge,
            rss_samples: self
                .config
                .max_worker_memory
                .map(|_| self.config.rss_samples),
        }
    }
}
