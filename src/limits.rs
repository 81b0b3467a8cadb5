//! The worker-count limits, defined once. The manager checks every scale
//! request and drives its workers through these rules, and the operator
//! decides within the same ones, so the two can never disagree about what
//! a pod may run: the min/max bounds, the hard cap on workers per manager,
//! and the memory guard. Values in, values out.

use crate::contract::LimitReason;

/// The most workers one manager runs, whatever is asked. Each worker is a
/// process with its own interpreter (tens of MiB for a Python app), so a
/// thousand of them already want tens of GiB and more cores than any pod
/// gets; past that, more capacity means more pods. The cap is also what
/// keeps a typo (`-w 100000`) from forking a machine to death.
pub const MAX_WORKERS: u32 = 1024;

/// The bounds a worker count must respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub min: u32,
    pub max: u32,
    /// Workers the memory limit holds, once a worker's size is known.
    pub memory_cap: Option<u32>,
}

impl Bounds {
    /// Checks a requested count against what runs now: `Err` names the
    /// limit that refuses it and the count that limit allows.
    pub fn check(&self, requested: u32, current: u32) -> Result<u32, (LimitReason, u32)> {
        if requested < self.min {
            return Err((LimitReason::MinWorkers, self.min));
        }
        if requested > self.max {
            return Err((LimitReason::MaxWorkers, self.max));
        }
        match self.memory_guard(requested, current) {
            Some(held) => Err((LimitReason::MemoryGuard, held)),
            None => Ok(requested),
        }
    }

    /// The memory guard: growth past the cap is held at the cap or at what
    /// runs now, whichever is more; `None` when it lets `desired` through.
    /// It never forces shrinking: a guard that killed running workers
    /// would turn a memory estimate into an outage.
    pub fn memory_guard(&self, desired: u32, current: u32) -> Option<u32> {
        match self.memory_cap {
            Some(cap) if desired > current && desired > cap => Some(cap.max(current).max(self.min)),
            _ => None,
        }
    }

    /// The count to drive towards: `desired`, unless the memory guard
    /// holds it.
    pub fn effective(&self, desired: u32, current: u32) -> u32 {
        self.memory_guard(desired, current).unwrap_or(desired)
    }

    /// The most workers the pod can usefully run: the max (narrowed, on
    /// the operator's side, to its maxWorkers), the workers the memory
    /// limit holds, and the workers the CPU limit can feed (`cpu_fed`,
    /// known only to the operator, which knows the CPU target); never
    /// below the minimum. The operator fills pods to it before it adds
    /// replicas, and the manager's saturation is measured against it.
    pub fn ceiling(&self, cpu_fed: Option<u32>) -> u32 {
        [Some(self.max), self.memory_cap, cpu_fed]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.max)
            .max(self.min)
    }
}

/// How many workers fit in `limit` bytes, keeping `headroom` of it free,
/// once the manager's own memory is paid; `None` before a worker's size
/// is known.
pub fn memory_cap(limit: u64, headroom: f64, manager_rss: u64, per_worker: u64) -> Option<u32> {
    if per_worker == 0 {
        return None;
    }
    let usable = (limit as f64 * (1.0 - headroom)) as u64;
    let room = usable.saturating_sub(manager_rss);
    Some(u32::try_from(room / per_worker).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Bounds = Bounds {
        min: 2,
        max: 10,
        memory_cap: Some(6),
    };

    #[test]
    fn requests_are_checked_against_every_bound() {
        assert_eq!(B.check(4, 3), Ok(4));
        assert_eq!(B.check(1, 3), Err((LimitReason::MinWorkers, 2)));
        assert_eq!(B.check(11, 3), Err((LimitReason::MaxWorkers, 10)));
        assert_eq!(B.check(7, 3), Err((LimitReason::MemoryGuard, 6)));
        // Shrinking is allowed even above the cap.
        assert_eq!(B.check(7, 8), Ok(7));
    }

    #[test]
    fn memory_guard_holds_growth_but_never_shrinks() {
        let b = Bounds { min: 1, ..B };
        let b = Bounds {
            memory_cap: Some(4),
            ..b
        };
        assert_eq!(b.effective(8, 2), 4);
        assert_eq!(b.effective(8, 6), 6);
        assert_eq!(b.effective(3, 6), 3);
        assert_eq!(b.memory_guard(4, 2), None, "up to the cap is fine");
        let unknown = Bounds {
            memory_cap: None,
            ..b
        };
        assert_eq!(unknown.effective(8, 2), 8);
        let tiny = Bounds {
            memory_cap: Some(0),
            ..B
        };
        assert_eq!(tiny.effective(5, 1), 2, "never below min");
    }

    #[test]
    fn the_ceiling_is_the_tightest_of_max_memory_and_cpu() {
        let b = Bounds {
            min: 1,
            max: 8,
            memory_cap: None,
        };
        assert_eq!(b.ceiling(None), 8);
        assert_eq!(b.ceiling(Some(3)), 3);
        let held = Bounds {
            memory_cap: Some(2),
            ..b
        };
        assert_eq!(held.ceiling(Some(3)), 2);
        let tiny = Bounds {
            min: 2,
            memory_cap: Some(0),
            ..b
        };
        assert_eq!(tiny.ceiling(None), 2, "never below min");
    }

    #[test]
    fn memory_cap_keeps_headroom_and_pays_for_the_manager() {
        let mib = 1 << 20;
        assert_eq!(memory_cap(1000 * mib, 0.1, 0, 100 * mib), Some(9));
        assert_eq!(memory_cap(1000 * mib, 0.1, 50 * mib, 100 * mib), Some(8));
        assert_eq!(memory_cap(1000 * mib, 0.1, 0, 0), None);
    }
}
