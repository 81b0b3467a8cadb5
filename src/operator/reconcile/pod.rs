//! One pod's part of a pass: read its manager's `/workers` (and any
//! Prometheus query), decide with the pod's record, PUT the change, and
//! say what happened in the pod's status line. The small pure rules (the
//! bounds a manager allows, the pod's address, how much history to keep)
//! are functions of their own, tested below.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use tracing::info;

use crate::contract::WorkersDoc;
use crate::limits::Bounds;

use super::super::crd::{PodScaleStatus, WorkerAutoscaler};
use super::super::decide::fleet::{self, FleetPod};
use super::super::decide::{self, History, Metric, PodInput};
use super::super::pods::{self, PodError};
use super::super::spec::{self, MetricPlan, Plan};
use super::Context;
use super::events::CONCURRENCY_UNREPORTED;
use super::records::{self, PodRecord};

/// What every pod's part of one pass shares.
pub struct Pass<'a> {
    pub ctx: &'a Context,
    pub wa: &'a WorkerAutoscaler,
    pub plan: &'a Plan,
    pub uid: &'a str,
    /// The admin token; `Err` (why) when it could not be read: pods are
    /// measured then, never changed.
    pub token: &'a Result<Option<String>, String>,
    /// The pass's one reading of the clock.
    pub now: Timestamp,
}

/// What one pod yielded this pass.
pub struct PodOutcome {
    pub status: PodScaleStatus,
    pub desired: Option<u32>,
    pub first_metric: Option<f64>,
    pub reachable: bool,
    pub unauthorized: bool,
    pub limited: bool,
    /// The change made this pass, for its Event: up or down, and the note.
    pub scaled: Option<(bool, String)>,
    /// The pod has just been found not to report concurrency: an Event is due.
    pub unreported: bool,
    /// The pod as the replica level counts it, once measured.
    pub fleet: Option<FleetPod>,
}

impl PodOutcome {
    fn new(pod: &str) -> PodOutcome {
        PodOutcome {
            status: PodScaleStatus {
                name: pod.to_string(),
                current: None,
                desired: None,
                limited_by: None,
                last_scale_time: None,
                message: None,
            },
            desired: None,
            first_metric: None,
            reachable: false,
            unauthorized: false,
            limited: false,
            scaled: None,
            unreported: false,
            fleet: None,
        }
    }

    /// Adds to the pod's message: one pass can have several things to say
    /// (a metric left out, then a refused change).
    fn say(&mut self, text: impl Into<String>) {
        let text = text.into();
        self.status.message = Some(match self.status.message.take() {
            Some(before) => format!("{before}; {text}"),
            None => text,
        });
    }
}

impl Pass<'_> {
    /// The pass's time as the scaling maths take it: seconds since the epoch.
    fn seconds(&self) -> f64 {
        self.now.as_millisecond() as f64 / 1000.0
    }

    pub async fn scale(&self, pod: &Pod) -> PodOutcome {
        let pod_name = pod.name_any();
        let mut outcome = PodOutcome::new(&pod_name);
        let Some(ip) = ready_ip(pod) else {
            outcome.say("not running and ready: skipped");
            return outcome;
        };
        let addr = admin_addr(&ip, self.plan.admin_port);
        let doc = match pods::workers(&self.ctx.http, &addr).await {
            Ok(doc) => doc,
            Err(e) => {
                outcome.say(format!("unreachable: {e}"));
                return outcome;
            }
        };
        outcome.reachable = true;
        let current = doc.desired;
        outcome.status.current = Some(current);
        let key = records::key(self.uid, &pod_name);
        let values = self.values(&doc, &pod_name, &mut outcome).await;
        let concurrency_missing = doc.concurrency.is_none()
            && self
                .plan
                .metrics
                .iter()
                .any(|m| matches!(m, MetricPlan::Concurrency { .. }));
        outcome.first_metric = values.first().and_then(|v| v.1);
        outcome.unreported = self.ctx.records.newly_unreported(&key, concurrency_missing);
        let input = PodInput {
            current,
            bounds: bounds(self.plan, &doc),
            values,
        };
        let ceiling = input.bounds.ceiling(fleet::cpu_fed(
            doc.cgroup.cpu_quota_cores,
            self.plan.cpu_target(),
        ));
        let known = self.ctx.records.get(&key);
        let share = match known {
            Some(_) => None,
            None => self.ctx.records.share(self.uid),
        };
        let mut record = known.unwrap_or_else(|| PodRecord {
            history: History::starting_at(current, self.seconds(), self.plan.behavior.down.window),
            last_scale: None,
        });
        let Some(decision) =
            decide::decide(&input, &record.history, &self.plan.behavior, self.seconds()).map(|d| {
                match share {
                    Some(share) => fleet::first_sight(d, share, ceiling),
                    None => d,
                }
            })
        else {
            outcome.say("no metric could be read");
            outcome.status.desired = Some(current);
            outcome.desired = Some(current);
            outcome.fleet = Some(FleetPod {
                workers: current,
                wanted: current,
                ceiling,
            });
            return outcome;
        };
        outcome.status.limited_by = decision.limited_by.map(|l| l.as_str().to_string());
        outcome.limited = decision.limited_by.is_some();
        let mut change = 0i64;
        let mut applied = current;
        // What the status shows: the decision, or what the manager took of it.
        let mut shown = decision.desired;
        if decision.desired != current && !self.plan.paused && self.token.is_ok() {
            let token = self.token.as_ref().ok().and_then(|t| t.as_deref());
            let mut answer =
                pods::set_desired(&self.ctx.http, &addr, token, Some(decision.desired)).await;
            // The manager knows its limits best (its memory guard moves with
            // the workers' size): asked too much, go as far as it allows.
            if let Err(PodError::Limited { by, limit, .. }) = &answer {
                outcome.status.limited_by = Some(decide::Limit::Bound(*by).as_str().to_string());
                outcome.limited = true;
                if *limit != current {
                    answer = pods::set_desired(&self.ctx.http, &addr, token, Some(*limit)).await;
                }
            }
            match answer {
                Ok(after) => {
                    applied = after.desired;
                    shown = applied;
                    change = i64::from(applied) - i64::from(current);
                }
                Err(PodError::Unauthorized { .. }) => {
                    outcome.unauthorized = true;
                    outcome.say("the manager refused the token");
                }
                Err(e) => outcome.say(format!("scale refused: {e}")),
            }
            if change != 0 {
                let direction = if change > 0 { "up" } else { "down" };
                self.ctx
                    .metrics
                    .scale_events
                    .with_label_values(&[direction])
                    .inc();
                record.last_scale = Some(self.now.to_string());
                let note = format!(
                    "pod {pod_name}: {current} -> {applied} workers{}",
                    outcome
                        .status
                        .limited_by
                        .as_ref()
                        .map(|l| format!(" (limited by {l})"))
                        .unwrap_or_default()
                );
                info!(autoscaler = %self.wa.name_any(), pod = %pod_name, from = current, to = applied, "scaled");
                outcome.scaled = Some((change > 0, note));
            }
        }
        outcome.status.desired = Some(shown);
        outcome.desired = Some(applied);
        outcome.fleet = Some(FleetPod {
            workers: applied,
            wanted: decision.wanted,
            ceiling,
        });
        outcome.status.last_scale_time = record.last_scale.clone();
        record.history.record(
            self.seconds(),
            decision.recommendation,
            change,
            self.plan.behavior.history_keep(),
        );
        self.ctx.records.put(key, record);
        outcome
    }

    /// Each metric's value for the pod; what could not be read is `None`,
    /// and said in its status line.
    async fn values(
        &self,
        doc: &WorkersDoc,
        pod: &str,
        outcome: &mut PodOutcome,
    ) -> Vec<(Metric, Option<f64>)> {
        let namespace = self.wa.namespace().unwrap_or_default();
        let mut values = Vec::new();
        let mut told = false;
        for m in &self.plan.metrics {
            let value = match m {
                MetricPlan::Prometheus { server, query, .. } => {
                    let q = spec::render_query(query, pod, &namespace);
                    match pods::prometheus(&self.ctx.http, server, &q).await {
                        Ok(v) => v,
                        Err(e) => {
                            outcome.say(format!("prometheus: {e}"));
                            None
                        }
                    }
                }
                m => {
                    let value = manager_value(m, doc);
                    if value.is_none() && !told {
                        outcome.say(CONCURRENCY_UNREPORTED);
                        told = true;
                    }
                    value
                }
            };
            values.push((m.metric(), value));
        }
        values
    }
}

/// A metric the pod's manager measures, from its `/workers` document.
/// Concurrency is absent outside proxy mode, and absent means "not
/// measured", never 0: read as 0 it would shrink every shared-mode pod to
/// minWorkers.
fn manager_value(metric: &MetricPlan, doc: &WorkersDoc) -> Option<f64> {
    match metric {
        MetricPlan::Cpu { .. } => Some(doc.cpu_utilisation),
        MetricPlan::Queue { .. } => Some(
            doc.listeners
                .iter()
                .filter_map(|l| l.queue_max_window)
                .max()
                .unwrap_or(0) as f64,
        ),
        MetricPlan::Concurrency { .. } => doc.concurrency,
        MetricPlan::Prometheus { .. } => None,
    }
}

/// The autoscaler's bounds narrowed by the manager's own, so a PUT is
/// never refused for a count the manager cannot take.
fn bounds(plan: &Plan, doc: &WorkersDoc) -> Bounds {
    let min = plan.min.max(doc.limits.min).min(doc.limits.max);
    Bounds {
        min,
        max: plan.max.min(doc.limits.max).max(min),
        memory_cap: doc.limits.memory_cap,
    }
}

/// `host:port` of a pod's admin API; IPv6 pod IPs need brackets.
pub fn admin_addr(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// The pod's IP, when it is Running and Ready (and not being deleted).
pub fn ready_ip(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ready = status
        .conditions
        .as_ref()?
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if !ready || pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    status.pod_ip.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_of_one_pass_are_joined() {
        let mut outcome = PodOutcome::new("web-1");
        outcome.say(CONCURRENCY_UNREPORTED);
        assert_eq!(
            outcome.status.message.as_deref(),
            Some(CONCURRENCY_UNREPORTED)
        );
        outcome.say("no metric could be read");
        assert_eq!(
            outcome.status.message.unwrap(),
            format!("{CONCURRENCY_UNREPORTED}; no metric could be read")
        );
    }

    #[test]
    fn ipv6_pod_addresses_are_bracketed() {
        assert_eq!(admin_addr("10.88.0.4", 9000), "10.88.0.4:9000");
        assert_eq!(admin_addr("fd00::4", 9000), "[fd00::4]:9000");
    }

    #[test]
    fn only_running_ready_pods_not_being_deleted_have_an_address() {
        let pod = |phase: &str, ready: &str, deleting: bool| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {
                    "name": "web-1",
                    "deletionTimestamp": deleting.then_some("2026-12-07T00:00:00Z"),
                },
                "status": {
                    "phase": phase,
                    "podIP": "10.88.0.4",
                    "conditions": [{"type": "Ready", "status": ready}],
                },
            }))
            .unwrap()
        };
        assert_eq!(
            ready_ip(&pod("Running", "True", false)).as_deref(),
            Some("10.88.0.4")
        );
        assert_eq!(ready_ip(&pod("Running", "False", false)), None);
        assert_eq!(ready_ip(&pod("Pending", "True", false)), None);
        assert_eq!(ready_ip(&pod("Running", "True", true)), None);
    }
}
