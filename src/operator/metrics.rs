//! The operator's own Prometheus metrics: reconciliations by result, their
//! duration, and scale events by direction.

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounterVec, Opts, Registry, TextEncoder};

pub struct OperatorMetrics {
    registry: Registry,
    pub reconciliations: IntCounterVec,
    pub duration: Histogram,
    pub scale_events: IntCounterVec,
}

impl OperatorMetrics {
    pub fn new() -> Result<OperatorMetrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("corral".into()), None)?;
        let reconciliations = IntCounterVec::new(
            Opts::new(
                "operator_reconciliations_total",
                "Reconcile passes, by result.",
            ),
            &["result"],
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "operator_reconcile_duration_seconds",
                "Time one reconcile pass takes.",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )?;
        let scale_events = IntCounterVec::new(
            Opts::new(
                "operator_scale_events_total",
                "Worker count changes made, by direction.",
            ),
            &["direction"],
        )?;
        for result in ["ok", "error"] {
            reconciliations.with_label_values(&[result]);
        }
        for direction in ["up", "down"] {
            scale_events.with_label_values(&[direction]);
        }
        registry.register(Box::new(reconciliations.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(scale_events.clone()))?;
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(OperatorMetrics {
            registry,
            reconciliations,
            duration,
            scale_events,
        })
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
