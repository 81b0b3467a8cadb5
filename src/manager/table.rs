//! The worker table: every live worker with what corral knows of it, each
//! slot's history, and the last exits. A worker enters through
//! [`Worker::new`] and changes state only through the methods here (ready,
//! stopping, killed, gone), so each transition is written once. Sending the
//! signal that goes with a transition is the caller's job.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use nix::unistd::Pid;

use crate::contract::{ExitDoc, ExitReason, RecentExit, WorkerState};

use super::plan::WorkerFacts;
use super::readings::ProcUsage;

/// How many ended workers `/workers` remembers.
const RECENT_EXITS: usize = 16;

#[derive(Debug)]
pub struct Worker {
    pub facts: WorkerFacts,
    pub pid: Pid,
    pub started_wall: f64,
    /// Set when corral asked it to go: the reason its exit is recorded with.
    pub stop_reason: Option<ExitReason>,
    pub status: Option<String>,
    pub usage: Option<ProcUsage>,
    pub cpu_samples: VecDeque<(Instant, f64)>,
    /// Proxy mode: draining, its stop signal held back until the front's
    /// last request on it has finished.
    pub awaiting_idle: bool,
}

impl Worker {
    /// A worker of slot `id`, started (or, for an adopted one, first
    /// seen) at `started`.
    pub fn new(
        id: u32,
        generation: u64,
        pid: Pid,
        state: WorkerState,
        started: Instant,
        started_wall: f64,
    ) -> Worker {
        Worker {
            facts: WorkerFacts::new(id, generation, state, started),
            pid,
            started_wall,
            stop_reason: None,
            status: None,
            usage: None,
            cpu_samples: VecDeque::new(),
            awaiting_idle: false,
        }
    }

    pub fn is_draining(&self) -> bool {
        self.facts.state == WorkerState::Draining
    }

    /// Starting -> ready. False when it was not starting.
    pub fn mark_ready(&mut self) -> bool {
        if self.facts.state != WorkerState::Starting {
            return false;
        }
        self.facts.state = WorkerState::Ready;
        true
    }

    /// The one place a worker starts to stop (drain, abort, shutdown): no
    /// new work is planned for it, it must be gone by `deadline`, and its
    /// exit is recorded as `reason` unless an earlier stop gave one.
    pub fn begin_stop(&mut self, reason: ExitReason, deadline: Instant) {
        self.facts.state = WorkerState::Draining;
        self.facts.kill_deadline = Some(deadline);
        self.stop_reason.get_or_insert(reason);
    }

    /// Past its deadline: SIGKILL is on its way. A drain that had to be
    /// forced is recorded as a kill.
    pub fn mark_killed(&mut self) {
        self.facts.killed = true;
        if self.stop_reason.is_some_and(ExitReason::is_asked) {
            self.stop_reason = Some(ExitReason::Killed);
        }
    }
}

#[derive(Debug, Default)]
pub struct SlotHistory {
    pub restarts: u32,
    pub last_exit: Option<ExitDoc>,
}

/// A worker that has gone, as [`Table::remove`] recorded it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gone {
    pub id: u32,
    pub reason: ExitReason,
}

#[derive(Debug, Default)]
pub struct Table {
    pub workers: Vec<Worker>,
    pub slots: BTreeMap<u32, SlotHistory>,
    pub recent_exits: VecDeque<RecentExit>,
}

impl Table {
    /// The lowest slot number no live worker holds.
    pub fn free_slot(&self) -> u32 {
        (1..)
            .find(|id| !self.workers.iter().any(|w| w.facts.id == *id))
            .unwrap_or(1)
    }

    pub fn by_id(&mut self, id: u32) -> Option<&mut Worker> {
        self.workers.iter_mut().find(|w| w.facts.id == id)
    }

    /// The worker of slot `id` that is not stopping yet.
    pub fn active(&mut self, id: u32) -> Option<&mut Worker> {
        self.workers
            .iter_mut()
            .find(|w| w.facts.id == id && !w.is_draining())
    }

    pub fn active_count(&self) -> u32 {
        self.workers.iter().filter(|w| !w.is_draining()).count() as u32
    }

    pub fn ready_count(&self) -> u32 {
        self.workers
            .iter()
            .filter(|w| w.facts.state == WorkerState::Ready)
            .count() as u32
    }

    pub fn any_draining(&self) -> bool {
        self.workers.iter().any(Worker::is_draining)
    }

    /// The largest resident memory of a worker that is not stopping.
    pub fn per_worker_memory(&self) -> Option<u64> {
        self.workers
            .iter()
            .filter(|w| !w.is_draining())
            .filter_map(|w| w.usage.map(|u| u.rss_bytes))
            .max()
    }

    pub fn restarts(&self, id: u32) -> u32 {
        self.slots.get(&id).map_or(0, |s| s.restarts)
    }

    /// Takes the worker of `pid` off the table and records how it ended;
    /// `None` for a pid that is not a worker (an orphan). Counts a restart
    /// for the slot unless corral asked it to go.
    pub fn remove(&mut self, pid: Pid, exit: ExitDoc) -> Option<(Worker, Gone)> {
        let pos = self.workers.iter().position(|w| w.pid == pid)?;
        let w = self.workers.remove(pos);
        let reason = w.stop_reason.unwrap_or(ExitReason::Crashed);
        let exit = ExitDoc { reason, ..exit };
        self.recent_exits.push_front(RecentExit {
            id: w.facts.id,
            pid: pid.as_raw(),
            generation: w.facts.generation,
            exit: exit.clone(),
        });
        self.recent_exits.truncate(RECENT_EXITS);
        let slot = self.slots.entry(w.facts.id).or_default();
        slot.last_exit = Some(exit);
        if !reason.is_asked() {
            slot.restarts += 1;
        }
        let gone = Gone {
            id: w.facts.id,
            reason,
        };
        Some((w, gone))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn exit() -> ExitDoc {
        ExitDoc {
            code: Some(0),
            signal: None,
            reason: ExitReason::Crashed,
            at: 0.0,
        }
    }

    #[test]
    fn stops_keep_the_first_reason_and_forced_drains_count_as_kills() {
        let now = Instant::now();
        let mut w = Worker::new(1, 1, Pid::from_raw(10), WorkerState::Ready, now, 0.0);
        w.begin_stop(ExitReason::Drained, now + Duration::from_secs(30));
        w.begin_stop(ExitReason::Drained, now + Duration::from_secs(1));
        assert_eq!(w.facts.kill_deadline, Some(now + Duration::from_secs(1)));
        w.mark_killed();
        assert_eq!(w.stop_reason, Some(ExitReason::Killed));
        let mut hung = Worker::new(2, 1, Pid::from_raw(11), WorkerState::Ready, now, 0.0);
        hung.begin_stop(ExitReason::Watchdog, now);
        hung.begin_stop(ExitReason::Drained, now);
        hung.mark_killed();
        assert_eq!(hung.stop_reason, Some(ExitReason::Watchdog));
        assert!(!hung.mark_ready(), "a stopping worker never becomes ready");
    }

    #[test]
    fn removal_records_the_exit_and_counts_restarts_unless_drained() {
        let now = Instant::now();
        let mut t = Table::default();
        for (id, pid) in [(1, 10), (2, 11)] {
            t.workers.push(Worker::new(
                id,
                1,
                Pid::from_raw(pid),
                WorkerState::Ready,
                now,
                0.0,
            ));
        }
        assert_eq!(t.free_slot(), 3);
        t.by_id(1).unwrap().begin_stop(ExitReason::Drained, now);
        let (_, gone) = t.remove(Pid::from_raw(10), exit()).unwrap();
        assert_eq!(gone.reason, ExitReason::Drained);
        let (_, gone) = t.remove(Pid::from_raw(11), exit()).unwrap();
        assert_eq!(gone.reason, ExitReason::Crashed);
        assert_eq!((t.restarts(1), t.restarts(2)), (0, 1));
        assert_eq!(t.recent_exits.len(), 2);
        assert_eq!(t.recent_exits[0].id, 2, "newest first");
        assert!(t.remove(Pid::from_raw(99), exit()).is_none());
        assert_eq!(t.free_slot(), 1);
    }
}
