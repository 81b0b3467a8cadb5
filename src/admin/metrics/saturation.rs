//! How saturated the pod is, as one number for an HPA or KEDA that adds
//! pods: the demand on the pod against the most it can give. Below 1 the
//! pod can still serve more (by more workers, up to its ceiling); 1 means
//! every worker it may run is busy; above 1, requests are waiting for a
//! worker the pod cannot add. Values in, values out.

use crate::contract::WorkersDoc;
use crate::limits::Bounds;

/// The pod at one moment, as saturation sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodLoad {
    /// Each serving (not draining) worker.
    pub workers: Vec<WorkerLoad>,
    /// Requests no worker has taken: the proxy's queue and the connections
    /// in the listeners' accept queues.
    pub waiting: u32,
    /// Requests one worker takes at once (`--worker-concurrency`): proxy
    /// mode with a limit only.
    pub slots: Option<u32>,
    /// The most workers the pod may run: [`Bounds::ceiling`].
    pub ceiling: u32,
    /// The cgroup's CPU quota, in cores.
    pub cpu_quota: Option<f64>,
}

/// One serving worker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkerLoad {
    /// Cores it used over the last seconds.
    pub cores: f64,
    /// Requests it holds now (proxy mode).
    pub in_flight: Option<u32>,
}

impl PodLoad {
    /// From the document the admin API serves; `slots` is the proxy's
    /// per-worker concurrency limit, which the document does not carry.
    pub fn of(doc: &WorkersDoc, slots: Option<u32>) -> PodLoad {
        let bounds = Bounds {
            min: doc.limits.min,
            max: doc.limits.max,
            memory_cap: doc.limits.memory_cap,
        };
        let accept: u32 = doc.listeners.iter().filter_map(|l| l.queue_length).sum();
        PodLoad {
            workers: doc
                .workers
                .iter()
                .filter(|w| w.state != crate::contract::WorkerState::Draining)
                .map(|w| WorkerLoad {
                    cores: w.cpu_utilisation,
                    in_flight: w.in_flight,
                })
                .collect(),
            waiting: accept.saturating_add(doc.queued.unwrap_or(0)),
            slots: slots.filter(|s| *s > 0),
            // The operator narrows the ceiling further by the workers the
            // CPU limit feeds at its CPU target; the manager knows no
            // target, so the CPU limit enters below as a term of its own.
            ceiling: bounds.ceiling(None),
            cpu_quota: doc.cgroup.cpu_quota_cores,
        }
    }
}

/// The larger of two ratios:
///
/// - workers: (busy workers + waiting requests, in workers' worth) over the
///   ceiling. A worker is as busy as the larger of its share of a core (a
///   Python worker does not use more than one) and, with a concurrency
///   limit, its share of its slots; waiting requests count `1 / slots` of a
///   worker each (one without a limit), so a queue at the ceiling lifts
///   saturation past 1 in proportion to the wait it causes.
/// - CPU: cores the workers use over the CPU quota, because a pod whose
///   quota is spent gains nothing from more workers, however few run.
pub fn saturation(pod: &PodLoad) -> f64 {
    let slots = pod.slots.map(f64::from);
    let busy: f64 = pod
        .workers
        .iter()
        .map(|w| {
            let by_cpu = unit(w.cores);
            let by_slots = match (w.in_flight, slots) {
                (Some(n), Some(s)) => unit(f64::from(n) / s),
                _ => 0.0,
            };
            by_cpu.max(by_slots)
        })
        .sum();
    let waiting = f64::from(pod.waiting) / slots.unwrap_or(1.0);
    let by_workers = (busy + waiting) / f64::from(pod.ceiling.max(1));
    let by_cpu = match pod.cpu_quota {
        Some(q) if q.is_finite() && q > 0.0 => {
            pod.workers.iter().map(|w| w.cores.max(0.0)).sum::<f64>() / q
        }
        _ => 0.0,
    };
    by_workers.max(by_cpu)
}

/// `x` within 0..=1; a reading that is not a number counts as idle.
fn unit(x: f64) -> f64 {
    if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) }
}

#[cfg(test)]
mod tests;
