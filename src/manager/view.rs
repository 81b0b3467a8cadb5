//! The manager as the outside sees it: after every loop pass the worker
//! table, the limits and the measurements become one [`Snapshot`], which
//! the admin API serves (as `/workers` and `/metrics`) without ever
//! waiting on the loop.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::Config;
use crate::contract::{CgroupDoc, ExitReason, Limits, ListenerDoc, VERSION, WorkerDoc, WorkersDoc};

use super::Manager;

/// What the admin API shows, republished after every loop pass.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub doc: WorkersDoc,
    pub min_ready: u32,
    /// Starts that failed in a row (0 once a worker is ready).
    pub failures: u32,
    pub counters: Counters,
    /// Proxy mode's per-worker request limit, which the pod's saturation
    /// counts in.
    pub worker_concurrency: Option<u32>,
}

/// Events counted since the manager started, for the metrics' counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    pub starts: u64,
    pub exits: BTreeMap<&'static str, u64>,
}

impl Counters {
    pub(super) fn exited(&mut self, reason: ExitReason) {
        *self.exits.entry(reason.as_str()).or_default() += 1;
    }
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
                concurrency: None,
                queued: None,
                workers: Vec::new(),
                recent_exits: Vec::new(),
                listeners: Vec::new(),
                cgroup: CgroupDoc::default(),
            },
            min_ready: config.min_ready,
            failures: 0,
            counters: Counters::default(),
            worker_concurrency: config.proxy.as_ref().and_then(|p| p.worker_concurrency),
        }
    }
}

impl Manager {
    pub(super) fn publish(&self) {
        self.snapshot.send_replace(Arc::new(Snapshot {
            doc: self.document(),
            min_ready: self.config.min_ready,
            failures: self.boots.failures(),
            counters: self.counters.clone(),
            worker_concurrency: self
                .config
                .proxy
                .as_ref()
                .and_then(|p| p.worker_concurrency),
        }));
    }

    pub(super) fn document(&self) -> WorkersDoc {
        let bounds = self.bounds();
        let active: Vec<f64> = self
            .table
            .workers
            .iter()
            .filter(|w| !w.is_draining())
            .map(|w| w.facts.cpu_recent)
            .collect();
        let cpu_utilisation = if active.is_empty() {
            0.0
        } else {
            active.iter().sum::<f64>() / active.len() as f64
        };
        let memory = self.memory_limit();
        WorkersDoc {
            version: VERSION,
            desired: if self.shutdown.is_some() {
                0
            } else {
                bounds.effective(self.target(), self.table.active_count())
            },
            configured: self.config.workers,
            requested: self.requested,
            running: self.table.workers.len() as u32,
            ready: self.table.ready_count(),
            shutting_down: self.shutdown.is_some(),
            generation: self.generation,
            limits: Limits {
                min: bounds.min,
                max: bounds.max,
                memory_cap: bounds.memory_cap,
                memory_limit_bytes: memory.map(|m| m.0),
                memory_limit_source: memory.map(|m| m.1.to_string()),
                per_worker_memory_bytes: self.table.per_worker_memory(),
            },
            last_limited: self.last_limited.clone(),
            cpu_utilisation,
            concurrency: self.proxy.as_ref().map(|p| p.mean_concurrency()),
            queued: self.proxy.as_ref().map(|p| p.queued),
            workers: self
                .table
                .workers
                .iter()
                .map(|w| {
                    let slot = self.table.slots.get(&w.facts.id);
                    let load = self.proxy.as_ref().map(|p| {
                        p.load(crate::proxy::Key {
                            id: w.facts.id,
                            pid: w.pid.as_raw(),
                        })
                        .map_or((0, 0), |l| (l.in_flight, l.requests))
                    });
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
                        in_flight: load.map(|l| l.0),
                        requests: load.map(|l| l.1),
                        last_exit: slot.and_then(|s| s.last_exit.clone()),
                    }
                })
                .collect(),
            recent_exits: self.table.recent_exits.iter().cloned().collect(),
            listeners: self
                .listeners
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let (queue_length, queue_max_window) = self.measured.queue(i);
                    ListenerDoc {
                        address: l.name.clone(),
                        queue_length,
                        queue_max_window,
                        backlog: l.is_tcp.then_some(self.config.backlog),
                    }
                })
                .collect(),
            cgroup: CgroupDoc {
                cpu_quota_cores: self.measured.cgroup.cpu_quota_cores,
                memory_limit_bytes: self.measured.cgroup.memory_limit,
                memory_usage_bytes: self.measured.cgroup.memory_usage,
            },
        }
    }
}
