//! Pure supervision decisions. Given what is known about the workers and
//! the clock's reading, say what to do next: start workers, mark silent ones
//! ready, drain the surplus, abort hung ones, kill the ones past their
//! deadline. No I/O and no clock reads here; the manager calls [`next_actions`]
//! after every event and carries out the actions.

use std::time::{Duration, Instant};

use crate::config::Readiness;
use crate::contract::{ExitReason, WorkerState};

/// What the planner knows about one worker.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerFacts {
    pub id: u32,
    pub generation: u64,
    pub state: WorkerState,
    pub started: Instant,
    /// The last WATCHDOG=1, once the worker has sent one.
    pub last_heartbeat: Option<Instant>,
    /// Set once corral asked the worker to stop: when it must be gone by.
    pub kill_deadline: Option<Instant>,
    pub killed: bool,
    /// Recent CPU use in cores: the idlest worker is drained first.
    pub cpu_recent: f64,
    /// When this worker is due for recycling by age (its own limit,
    /// jitter included, fixed at its start).
    pub retire_at: Option<Instant>,
    /// Memory samples in a row over `--max-worker-memory`.
    pub rss_over: u32,
    /// Chosen for recycling: replaced like an old generation, successor
    /// first, then drained.
    pub retiring: bool,
    /// Proxy mode: requests sent to it so far, and its `--max-requests`
    /// limit (jitter included, fixed at its start).
    pub requests: u64,
    pub max_requests: Option<u64>,
    /// Proxy mode, `--kill-stuck`: a request to it passed `--request-timeout`.
    pub stuck: bool,
}

impl WorkerFacts {
    /// A worker of slot `id` as first seen: nothing heard from it yet.
    pub fn new(id: u32, generation: u64, state: WorkerState, started: Instant) -> WorkerFacts {
        WorkerFacts {
            id,
            generation,
            state,
            started,
            last_heartbeat: None,
            kill_deadline: None,
            killed: false,
            cpu_recent: 0.0,
            retire_at: None,
            rss_over: 0,
            retiring: false,
            requests: 0,
            max_requests: None,
            stuck: false,
        }
    }
}

/// The timing rules the planner applies.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub readiness: Readiness,
    pub boot_grace: Duration,
    pub boot_timeout: Duration,
    pub watchdog: Option<Duration>,
    pub max_surge: u32,
    /// Memory samples in a row over the limit that recycle a worker.
    pub rss_samples: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct View<'a> {
    /// Workers wanted, already held by the memory guard ([`crate::limits::Bounds::effective`]).
    pub desired: u32,
    pub generation: u64,
    /// No new workers during shutdown or while a restart backoff runs.
    pub may_spawn: bool,
    pub workers: &'a [WorkerFacts],
    pub policy: &'a Policy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Spawn,
    MarkReady(u32),
    /// Ask the worker to finish its requests and exit.
    Drain(u32),
    /// The worker is hung: SIGABRT now, SIGKILL if still there shortly after.
    Abort(u32, ExitReason),
    /// Past its deadline: SIGKILL its process group.
    Kill(u32),
    /// Too old or too large: replace it, successor first.
    Recycle(u32, Recycle),
}

/// Why a worker is recycled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recycle {
    Lifetime,
    Memory,
    Requests,
    RequestTimeout,
}

impl Recycle {
    pub fn as_str(self) -> &'static str {
        match self {
            Recycle::Lifetime => "max-worker-lifetime",
            Recycle::Memory => "max-worker-memory",
            Recycle::Requests => "max-requests",
            Recycle::RequestTimeout => "request-timeout",
        }
    }
}

/// One pass over the workers.
pub fn next_actions(view: &View<'_>, now: Instant) -> Vec<Action> {
    let mut actions = Vec::new();
    let policy = view.policy;

    for w in view.workers {
        match (w.state, w.kill_deadline) {
            (WorkerState::Draining, Some(deadline)) if now >= deadline && !w.killed => {
                actions.push(Action::Kill(w.id));
            }
            (WorkerState::Starting, None) => {
                let age = now.saturating_duration_since(w.started);
                if policy.readiness == Readiness::Auto && age >= policy.boot_grace {
                    actions.push(Action::MarkReady(w.id));
                } else if age >= policy.boot_timeout {
                    actions.push(Action::Abort(w.id, ExitReason::BootTimeout));
                }
            }
            (WorkerState::Ready, None) => {
                if let (Some(limit), Some(beat)) = (policy.watchdog, w.last_heartbeat)
                    && now.saturating_duration_since(beat) >= limit
                {
                    actions.push(Action::Abort(w.id, ExitReason::Watchdog));
                } else if let Some(why) = recycle(w, policy, now) {
                    actions.push(Action::Recycle(w.id, why));
                }
            }
            _ => {}
        }
    }
    // What this pass already decided about single workers.
    let recycled = ids(&actions, |a| matches!(a, Action::Recycle(..)));
    let gone = ids(&actions, |a| matches!(a, Action::Abort(..)));
    let newly_ready = ids(&actions, |a| matches!(a, Action::MarkReady(_)));
    let retiring = |w: &WorkerFacts| w.retiring || recycled.contains(&w.id);
    let old = |w: &WorkerFacts| w.generation < view.generation || retiring(w);

    // Workers still counted as capacity: not draining, not being aborted.
    let active: Vec<&WorkerFacts> = view
        .workers
        .iter()
        .filter(|w| w.state != WorkerState::Draining && !gone.contains(&w.id))
        .collect();
    let is_ready = |w: &WorkerFacts| w.state == WorkerState::Ready || newly_ready.contains(&w.id);
    let current = active.iter().filter(|w| !old(w)).count() as u32;
    let active_count = active.len() as u32;

    // Start: enough current-generation workers, with at most `max_surge`
    // extra while old ones still hold the fort.
    if view.may_spawn {
        let wanted = view.desired.saturating_sub(current);
        let room = (view.desired + policy.max_surge).saturating_sub(active_count);
        let spawn = wanted.min(room);
        actions.extend((0..spawn).map(|_| Action::Spawn));
    }

    // Drain: old generations first, then the surplus of the current one,
    // never taking ready capacity below what is desired.
    let mut surplus = active_count.saturating_sub(view.desired);
    let mut current_surplus = current.saturating_sub(view.desired);
    let mut ready = active.iter().filter(|w| is_ready(w)).count() as u32;
    for w in drain_order(&active, &old, &is_ready) {
        if surplus == 0 {
            break;
        }
        let old = old(w);
        if !old && current_surplus == 0 {
            continue;
        }
        if is_ready(w) {
            if ready <= view.desired {
                continue;
            }
            ready -= 1;
        }
        if !old {
            current_surplus -= 1;
        }
        surplus -= 1;
        actions.push(Action::Drain(w.id));
    }
    actions
}

/// The workers named by the actions `pick` selects.
fn ids(actions: &[Action], pick: impl Fn(&Action) -> bool) -> Vec<u32> {
    actions
        .iter()
        .filter(|a| pick(a))
        .filter_map(|a| match a {
            Action::MarkReady(id)
            | Action::Drain(id)
            | Action::Abort(id, _)
            | Action::Kill(id)
            | Action::Recycle(id, _) => Some(*id),
            Action::Spawn => None,
        })
        .collect()
}

/// A ready worker's recycling reason, if it is due: stuck on a request,
/// past its request count or its lifetime, or over the memory limit for
/// enough samples in a row.
fn recycle(w: &WorkerFacts, policy: &Policy, now: Instant) -> Option<Recycle> {
    if w.retiring {
        return None;
    }
    if w.stuck {
        return Some(Recycle::RequestTimeout);
    }
    if w.max_requests.is_some_and(|limit| w.requests >= limit) {
        return Some(Recycle::Requests);
    }
    if w.retire_at.is_some_and(|at| now >= at) {
        return Some(Recycle::Lifetime);
    }
    match policy.rss_samples {
        Some(n) if w.rss_over >= n => Some(Recycle::Memory),
        _ => None,
    }
}

/// Who goes first when workers must drain: old generations (and workers
/// being recycled) before the current one, the oldest of them first, so a
/// successor that is itself due soon cannot keep jumping the line; then,
/// of the current generation, workers still booting before ready ones
/// (they serve nothing yet), then the idlest, then the youngest.
fn drain_order<'a>(
    active: &[&'a WorkerFacts],
    old: &dyn Fn(&WorkerFacts) -> bool,
    is_ready: &dyn Fn(&WorkerFacts) -> bool,
) -> Vec<&'a WorkerFacts> {
    let mut order: Vec<&WorkerFacts> = active.to_vec();
    order.sort_by(|a, b| match (old(a), old(b)) {
        (true, true) => a.started.cmp(&b.started),
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        (false, false) => is_ready(a)
            .cmp(&is_ready(b))
            .then(a.cpu_recent.total_cmp(&b.cpu_recent))
            .then(b.started.cmp(&a.started)),
    });
    order
}

/// A worker's request limit: `limit` plus `random` spread over
/// 0..=jitter, as Gunicorn's `--max-requests-jitter`.
pub fn request_limit(limit: u64, jitter: u64, random: u64) -> u64 {
    limit.saturating_add(random % jitter.saturating_add(1))
}

/// A worker's share of `max`: `random` spread over 0..=max, in
/// milliseconds, so workers started together do not all retire together.
pub fn jitter(max: Duration, random: u64) -> Duration {
    let ms = max.as_millis() as u64;
    Duration::from_millis(if ms == 0 { 0 } else { random % (ms + 1) })
}

#[cfg(test)]
mod tests;
