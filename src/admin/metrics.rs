//! The manager's Prometheus registry, rendered from the latest snapshot at
//! scrape time: the loop counts starts and exits in the snapshot and the
//! counters here catch up to it, so a scrape never waits on the loop and
//! never shows a half-updated table.

mod saturation;

use prometheus::{
    CounterVec, Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::contract::{ExitReason, WorkerState};
use crate::manager::Snapshot;

pub struct Metrics {
    registry: Registry,
    starts: IntCounter,
    exits: IntCounterVec,
    workers: IntGaugeVec,
    desired: IntGauge,
    cpu: CounterVec,
    rss: IntGaugeVec,
    queue: IntGaugeVec,
    cgroup_memory_limit: IntGauge,
    saturation: Gauge,
    proxy: ProxyGauges,
}

/// Proxy mode's moment-to-moment series, from the snapshot; rendered only
/// when the manager runs a front.
struct ProxyGauges {
    in_flight: IntGauge,
    queued: IntGauge,
    worker_requests: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("corral".into()), None)?;
        let starts = IntCounter::new("worker_starts_total", "Worker processes started.")?;
        let exits = IntCounterVec::new(
            Opts::new(
                "worker_exits_total",
                "Worker processes that ended, by reason.",
            ),
            &["reason"],
        )?;
        let workers = IntGaugeVec::new(
            Opts::new("workers", "Worker processes by state."),
            &["state"],
        )?;
        let desired = IntGauge::new(
            "workers_desired",
            "The worker count the manager drives towards.",
        )?;
        let cpu = CounterVec::new(
            Opts::new(
                "worker_cpu_seconds_total",
                "CPU time of each worker process.",
            ),
            &["worker"],
        )?;
        let rss = IntGaugeVec::new(
            Opts::new(
                "worker_resident_memory_bytes",
                "Resident memory of each worker process.",
            ),
            &["worker"],
        )?;
        let queue = IntGaugeVec::new(
            Opts::new(
                "listen_queue_length",
                "Connections waiting in a listener's accept queue.",
            ),
            &["listener"],
        )?;
        let cgroup_memory_limit = IntGauge::new(
            "corral_cgroup_memory_limit_bytes",
            "Memory limit of the manager's cgroup (absent without one).",
        )?;
        let saturation = Gauge::new(
            "pod_saturation",
            "Demand on the pod against the most it can give: 1 when every worker \
             it may run is busy, above 1 while requests wait for one.",
        )?;
        let proxy = ProxyGauges {
            in_flight: IntGauge::new(
                "corral_http_requests_in_flight",
                "Requests the workers hold now (proxy mode).",
            )?,
            queued: IntGauge::new(
                "corral_http_queue_length",
                "Requests waiting in the proxy's queue for a worker.",
            )?,
            worker_requests: IntCounterVec::new(
                Opts::new(
                    "corral_worker_requests_total",
                    "Requests the proxy sent to each worker since it started.",
                ),
                &["worker"],
            )?,
        };
        let build_info =
            IntGaugeVec::new(Opts::new("build_info", "corral's version."), &["version"])?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for reason in ExitReason::ALL {
            exits.with_label_values(&[reason.as_str()]);
        }
        registry.register(Box::new(starts.clone()))?;
        registry.register(Box::new(exits.clone()))?;
        registry.register(Box::new(workers.clone()))?;
        registry.register(Box::new(desired.clone()))?;
        registry.register(Box::new(cpu.clone()))?;
        registry.register(Box::new(rss.clone()))?;
        registry.register(Box::new(queue.clone()))?;
        registry.register(Box::new(saturation.clone()))?;
        registry.register(Box::new(build_info))?;
        let process = prometheus::process_collector::ProcessCollector::for_self();
        Registry::register(&registry, Box::new(process))?;
        Ok(Metrics {
            registry,
            starts,
            exits,
            workers,
            desired,
            cpu,
            rss,
            queue,
            cgroup_memory_limit,
            saturation,
            proxy,
        })
    }

    /// Where other parts register their series (proxy mode's request
    /// counters), so that one scrape shows them all.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Renders the text exposition format from the registry and `snapshot`.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let doc = &snapshot.doc;
        // The snapshot's counts only grow, so the counters catch up by the
        // difference; a scrape that races another sees the same totals.
        let counts = &snapshot.counters;
        self.starts
            .inc_by(counts.starts.saturating_sub(self.starts.get()));
        for (reason, n) in &counts.exits {
            let counter = self.exits.with_label_values(&[*reason]);
            counter.inc_by(n.saturating_sub(counter.get()));
        }
        for (state, name) in [
            (WorkerState::Starting, "starting"),
            (WorkerState::Ready, "ready"),
            (WorkerState::Draining, "draining"),
        ] {
            let n = doc.workers.iter().filter(|w| w.state == state).count();
            self.workers.with_label_values(&[name]).set(n as i64);
        }
        self.desired.set(i64::from(doc.desired));
        // Per-worker series follow the live workers: a replaced worker's
        // series ends, a new one starts from zero (a counter reset).
        self.cpu.reset();
        self.rss.reset();
        for w in &doc.workers {
            let id = w.id.to_string();
            self.cpu
                .with_label_values(&[id.as_str()])
                .inc_by(w.cpu_seconds);
            self.rss
                .with_label_values(&[id.as_str()])
                .set(w.rss_bytes as i64);
        }
        self.queue.reset();
        for l in &doc.listeners {
            if let Some(q) = l.queue_length {
                self.queue
                    .with_label_values(&[l.address.as_str()])
                    .set(i64::from(q));
            }
        }
        self.saturation
            .set(saturation::saturation(&saturation::PodLoad::of(
                doc,
                snapshot.worker_concurrency,
            )));
        let mut families = self.registry.gather();
        if let Some(limit) = doc.cgroup.memory_limit_bytes {
            self.cgroup_memory_limit.set(limit as i64);
            families.extend(prometheus::core::Collector::collect(
                &self.cgroup_memory_limit,
            ));
        }
        if doc.concurrency.is_some() {
            let p = &self.proxy;
            let in_flight: u32 = doc.workers.iter().filter_map(|w| w.in_flight).sum();
            p.in_flight.set(i64::from(in_flight));
            p.queued.set(i64::from(doc.queued.unwrap_or(0)));
            p.worker_requests.reset();
            for w in &doc.workers {
                p.worker_requests
                    .with_label_values(&[w.id.to_string().as_str()])
                    .inc_by(w.requests.unwrap_or(0));
            }
            families.extend(prometheus::core::Collector::collect(&p.in_flight));
            families.extend(prometheus::core::Collector::collect(&p.queued));
            families.extend(prometheus::core::Collector::collect(&p.worker_requests));
        }
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&families, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
