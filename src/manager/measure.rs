//! What the manager measures without help from the workers: each worker's
//! CPU and memory from /proc (the CPU rate over a short window), the listen
//! queue of each TCP listener, the cgroup's limits and the manager's own
//! memory. The loop calls these on its timer; the view reads the results.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::listener::Listener;
use super::readings::{self, CgroupPaths};
use super::{Manager, now};

/// How far back the listen-queue maximum looks.
const QUEUE_WINDOW: Duration = Duration::from_secs(10);
/// CPU utilisation is measured over this many one-second samples (a 2 s
/// window): recent enough that the operator sees a load step within about
/// a second; smoothing beyond that is the autoscaler's job (tolerance,
/// stabilization windows), not the measurement's.
const CPU_WINDOW_SAMPLES: usize = 3;

/// What the manager measures of the machine and of itself, owned here
/// and refreshed on the loop's timers.
pub(super) struct Measurements {
    cgroup_paths: Option<CgroupPaths>,
    /// The cgroup's limits and usage, as last read.
    pub cgroup: readings::Cgroup,
    /// The manager's own resident memory, which the workers' cap leaves out.
    pub manager_rss: u64,
    /// Per listener: waiting connections over the last [`QUEUE_WINDOW`].
    queue_samples: Vec<VecDeque<(Instant, u32)>>,
}

impl Measurements {
    pub fn new(listeners: usize) -> Measurements {
        let cgroup_paths = CgroupPaths::detect();
        Measurements {
            cgroup: cgroup_paths
                .as_ref()
                .map(CgroupPaths::read)
                .unwrap_or_default(),
            cgroup_paths,
            manager_rss: readings::self_rss().unwrap_or(0),
            queue_samples: vec![VecDeque::new(); listeners],
        }
    }

    /// Every tick: the waiting connections of each TCP listener.
    pub fn sample_queues(&mut self, listeners: &[Listener], now: Instant) {
        for (l, samples) in listeners.iter().zip(&mut self.queue_samples) {
            if !l.is_tcp {
                continue;
            }
            if let Some(q) = readings::listen_queue(l.socket.as_raw_fd()) {
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

    /// Listener `i`'s waiting connections: the last sample and the most
    /// in the window.
    pub fn queue(&self, i: usize) -> (Option<u32>, Option<u32>) {
        let samples = self.queue_samples.get(i);
        (
            samples.and_then(|s| s.back()).map(|s| s.1),
            samples.and_then(|s| s.iter().map(|s| s.1).max()),
        )
    }

    /// Every second: the cgroup and the manager itself.
    fn refresh(&mut self) {
        if let Some(paths) = &self.cgroup_paths {
            self.cgroup = paths.read();
        }
        self.manager_rss = readings::self_rss().unwrap_or(self.manager_rss);
    }
}

impl Manager {
    /// Every second: worker CPU and memory, the cgroup, the manager itself.
    pub(super) fn measure(&mut self) {
        let now = now();
        for w in &mut self.table.workers {
            if let Some(u) = readings::proc_usage(w.pid.as_raw()) {
                w.usage = Some(u);
                w.facts.rss_over = match self.config.max_worker_memory {
                    Some(limit) if u.rss_bytes > limit => w.facts.rss_over.saturating_add(1),
                    _ => 0,
                };
                w.cpu_samples.push_back((now, u.cpu_seconds));
                while w.cpu_samples.len() > CPU_WINDOW_SAMPLES {
                    w.cpu_samples.pop_front();
                }
                w.facts.cpu_recent = cpu_rate(&w.cpu_samples);
            }
        }
        self.measured.refresh();
    }
}

/// Cores used between the oldest and newest sample.
fn cpu_rate(samples: &VecDeque<(Instant, f64)>) -> f64 {
    match (samples.front(), samples.back()) {
        (Some((t0, c0)), Some((t1, c1))) if t1 > t0 => {
            (c1 - c0).max(0.0) / t1.duration_since(*t0).as_secs_f64()
        }
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_rate_is_cores_over_the_window() {
        let t0 = Instant::now();
        let samples = VecDeque::from([
            (t0, 1.0),
            (t0 + Duration::from_secs(1), 1.5),
            (t0 + Duration::from_secs(2), 2.0),
        ]);
        assert!((cpu_rate(&samples) - 0.5).abs() < 1e-9);
        assert_eq!(cpu_rate(&VecDeque::from([(t0, 1.0)])), 0.0);
        let reset = VecDeque::from([(t0, 5.0), (t0 + Duration::from_secs(1), 1.0)]);
        assert_eq!(cpu_rate(&reset), 0.0, "a reading that went back is no load");
    }
}
