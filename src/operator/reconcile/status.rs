//! The autoscaler's status from what a pass saw: the conditions (Ready,
//! ScalingActive, ScalingLimited, InvalidSpec, ScalingReplicas), their reasons and
//! messages, and the utilisation column. Pure: the pass's findings and the
//! time come in, the status parts go out.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use super::super::crd::WorkerAutoscalerStatus;
use super::super::spec::MetricPlan;

/// What a pass found, as the conditions need it.
#[derive(Debug, Clone, Copy)]
pub struct Findings<'a> {
    pub paused: bool,
    /// Why the admin token could not be read, if it could not.
    pub token_error: Option<&'a str>,
    /// A pod's manager refused the token.
    pub unauthorized: bool,
    pub selected: usize,
    pub reachable: usize,
    /// Pods held back by a limit, and the first of them with its limit.
    pub limited: usize,
    pub first_limited: Option<(&'a str, &'a str)>,
}

/// Whether the autoscaler scales this pass, and why (ScalingActive).
#[derive(Debug, Clone, PartialEq)]
pub struct Activity {
    pub active: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Findings<'_> {
    pub fn activity(&self) -> Activity {
        let (active, reason, message) = if self.paused {
            (false, "Paused", "spec.paused is set: observing only".into())
        } else if let Some(e) = self.token_error {
            (false, "TokenUnavailable", e.to_string())
        } else if self.unauthorized {
            (
                false,
                "Unauthorized",
                "a pod's manager refused the token: check tokenSecretRef".into(),
            )
        } else if self.selected == 0 {
            (false, "NoPods", "the selector matches no pod".into())
        } else if self.reachable == 0 {
            (
                false,
                "PodsUnreachable",
                "no selected pod's admin API answered".into(),
            )
        } else {
            (
                true,
                "Scaling",
                format!("{} of {} pods measured", self.reachable, self.selected),
            )
        };
        Activity {
            active,
            reason,
            message,
        }
    }

    /// The pass's conditions, each keeping its transition time from
    /// `previous` while it holds.
    pub fn conditions(
        &self,
        previous: &WorkerAutoscalerStatus,
        generation: Option<i64>,
        now: Timestamp,
    ) -> Vec<Condition> {
        let at = Stamp::new(previous, generation, now);
        let activity = self.activity();
        let limited = match self.first_limited {
            Some((pod, by)) => format!("{} pod(s) held back, e.g. {pod} by {by}", self.limited),
            None => "no pod is held back".into(),
        };
        let ready = self.reachable > 0;
        vec![
            at.condition(
                "Ready",
                ready,
                if ready {
                    "PodsMeasured"
                } else {
                    "NoPodMeasured"
                },
                &format!("{} of {} pods reachable", self.reachable, self.selected),
            ),
            at.condition(
                "ScalingActive",
                activity.active,
                activity.reason,
                &activity.message,
            ),
            at.condition(
                "ScalingLimited",
                self.limited > 0,
                if self.limited > 0 {
                    "Limited"
                } else {
                    "NotLimited"
                },
                &limited,
            ),
            at.condition("InvalidSpec", false, "Valid", "the spec is valid"),
        ]
    }

    /// Whether the pass's inactivity deserves a Warning Event: it is new
    /// for this generation, and neither chosen (paused) nor usual (a
    /// Deployment scaled to zero has no pods).
    pub fn warn_inactive(
        &self,
        previous: &WorkerAutoscalerStatus,
        generation: Option<i64>,
    ) -> bool {
        let activity = self.activity();
        !activity.active
            && !self.paused
            && activity.reason != "NoPods"
            && !condition_is(previous, "ScalingActive", "False", generation)
    }
}

/// The conditions of an autoscaler whose spec is invalid: nothing scales.
pub fn invalid_spec_conditions(
    previous: &WorkerAutoscalerStatus,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let at = Stamp::new(previous, generation, now);
    vec![
        at.condition("InvalidSpec", true, "InvalidSpec", message),
        at.condition("Ready", false, "InvalidSpec", "the spec is invalid"),
        at.condition("ScalingActive", false, "InvalidSpec", "no pod is touched"),
    ]
}

/// The condition of the replica level.
pub const REPLICAS: &str = "ScalingReplicas";

/// The ScalingReplicas condition (only with scaleTargetRef): whether the
/// autoscaler sizes the target's replicas, and why not when it does not
/// (an HPA owns them, the target cannot be read).
pub fn replicas_condition(
    previous: &WorkerAutoscalerStatus,
    generation: Option<i64>,
    now: Timestamp,
    active: bool,
    reason: &str,
    message: &str,
) -> Condition {
    Stamp::new(previous, generation, now).condition(REPLICAS, active, reason, message)
}

/// Whether `status` already has condition `type_` with `reason` for this
/// generation (its Event was published then).
pub fn condition_reason_is(
    status: &WorkerAutoscalerStatus,
    type_: &str,
    reason: &str,
    generation: Option<i64>,
) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == type_ && c.reason == reason && c.observed_generation == generation)
}

/// Whether `status` already has condition `type_` at `value` for this
/// generation (its Event was published then).
pub fn condition_is(
    status: &WorkerAutoscalerStatus,
    type_: &str,
    value: &str,
    generation: Option<i64>,
) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == value && c.observed_generation == generation)
}

/// The utilisation column: the first metric's mean over the pods measured,
/// against its target.
pub fn utilisation(first: &MetricPlan, values: &[f64]) -> Option<String> {
    if values.is_empty() {
        return None;
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    Some(match first {
        MetricPlan::Cpu { target } => format!("{:.0}%/{:.0}%", mean * 100.0, target * 100.0),
        MetricPlan::Queue { target }
        | MetricPlan::Concurrency { target }
        | MetricPlan::Prometheus { target, .. } => format!("{mean:.1}/{target}"),
    })
}

/// What every condition of one status is written against.
struct Stamp<'a> {
    previous: &'a WorkerAutoscalerStatus,
    generation: Option<i64>,
    now: Timestamp,
}

impl<'a> Stamp<'a> {
    fn new(previous: &'a WorkerAutoscalerStatus, generation: Option<i64>, now: Timestamp) -> Self {
        Stamp {
            previous,
            generation,
            now,
        }
    }

    /// A condition, keeping the previous transition time when the status
    /// holds.
    fn condition(&self, type_: &str, status: bool, reason: &str, message: &str) -> Condition {
        let status = if status { "True" } else { "False" }.to_string();
        let since = self
            .previous
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(self.now));
        Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message: message.to_string(),
            last_transition_time: since,
            observed_generation: self.generation,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn findings() -> Findings<'static> {
        Findings {
            paused: false,
            token_error: None,
            unauthorized: false,
            selected: 2,
            reachable: 2,
            limited: 0,
            first_limited: None,
        }
    }

    fn find<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
        conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    const T0: Timestamp = Timestamp::UNIX_EPOCH;

    fn later() -> Timestamp {
        Timestamp::from_second(1_000).unwrap()
    }

    #[test]
    fn the_first_reason_not_to_scale_wins() {
        let reason = |f: Findings| f.activity().reason;
        assert_eq!(reason(findings()), "Scaling");
        assert_eq!(findings().activity().message, "2 of 2 pods measured");
        let all_wrong = Findings {
            paused: true,
            token_error: Some("secret web not found"),
            unauthorized: true,
            selected: 0,
            reachable: 0,
            ..findings()
        };
        assert_eq!(reason(all_wrong), "Paused");
        let f = Findings {
            paused: false,
            ..all_wrong
        };
        assert_eq!(reason(f), "TokenUnavailable");
        assert_eq!(f.activity().message, "secret web not found");
        let f = Findings {
            token_error: None,
            ..f
        };
        assert_eq!(reason(f), "Unauthorized");
        let f = Findings {
            unauthorized: false,
            ..f
        };
        assert_eq!(reason(f), "NoPods");
        let f = Findings { selected: 3, ..f };
        assert_eq!(reason(f), "PodsUnreachable");
    }

    #[test]
    fn a_measured_pass_is_ready_active_and_valid() {
        let c = findings().conditions(&WorkerAutoscalerStatus::default(), Some(4), T0);
        let status = |t| find(&c, t).status.as_str();
        assert_eq!(
            [
                status("Ready"),
                status("ScalingActive"),
                status("ScalingLimited"),
                status("InvalidSpec")
            ],
            ["True", "True", "False", "False"]
        );
        assert!(c.iter().all(|c| c.observed_generation == Some(4)));
        assert_eq!(find(&c, "Ready").message, "2 of 2 pods reachable");
    }

    #[test]
    fn a_limited_pod_is_named_with_its_limit() {
        let f = Findings {
            limited: 3,
            first_limited: Some(("web-1", "memoryGuard")),
            ..findings()
        };
        let c = f.conditions(&WorkerAutoscalerStatus::default(), None, T0);
        let limited = find(&c, "ScalingLimited");
        assert_eq!(
            (limited.status.as_str(), limited.reason.as_str()),
            ("True", "Limited")
        );
        assert_eq!(
            limited.message,
            "3 pod(s) held back, e.g. web-1 by memoryGuard"
        );
    }

    #[test]
    fn a_condition_keeps_its_transition_time_while_it_holds() {
        let first = WorkerAutoscalerStatus {
            conditions: findings().conditions(&WorkerAutoscalerStatus::default(), Some(1), T0),
            ..Default::default()
        };
        let unreachable = Findings {
            reachable: 0,
            ..findings()
        };
        let c = unreachable.conditions(&first, Some(1), later());
        // Ready turned False now; InvalidSpec stayed False since T0.
        assert_eq!(find(&c, "Ready").last_transition_time, Time(later()));
        assert_eq!(find(&c, "InvalidSpec").last_transition_time, Time(T0));
    }

    #[test]
    fn inactivity_is_warned_once_per_generation_and_not_when_chosen() {
        let unreachable = Findings {
            reachable: 0,
            ..findings()
        };
        let none = WorkerAutoscalerStatus::default();
        assert!(unreachable.warn_inactive(&none, Some(1)));
        let seen = WorkerAutoscalerStatus {
            conditions: unreachable.conditions(&none, Some(1), T0),
            ..Default::default()
        };
        assert!(!unreachable.warn_inactive(&seen, Some(1)));
        assert!(unreachable.warn_inactive(&seen, Some(2)));
        let paused = Findings {
            paused: true,
            ..unreachable
        };
        assert!(!paused.warn_inactive(&none, Some(1)));
        let no_pods = Findings {
            selected: 0,
            ..unreachable
        };
        assert!(!no_pods.warn_inactive(&none, Some(1)));
        assert!(!findings().warn_inactive(&none, Some(1)));
    }

    #[test]
    fn an_invalid_spec_touches_nothing() {
        let c = invalid_spec_conditions(
            &WorkerAutoscalerStatus::default(),
            "minWorkers is above maxWorkers",
            Some(2),
            T0,
        );
        let invalid = find(&c, "InvalidSpec");
        assert_eq!(invalid.status, "True");
        assert_eq!(invalid.message, "minWorkers is above maxWorkers");
        assert_eq!(find(&c, "Ready").status, "False");
        assert_eq!(find(&c, "ScalingActive").reason, "InvalidSpec");
    }

    #[test]
    fn utilisation_is_the_first_metrics_mean_against_its_target() {
        let cpu = MetricPlan::Cpu { target: 0.7 };
        assert_eq!(utilisation(&cpu, &[]), None);
        assert_eq!(utilisation(&cpu, &[0.5, 0.7]).as_deref(), Some("60%/70%"));
        let queue = MetricPlan::Queue { target: 2.0 };
        assert_eq!(utilisation(&queue, &[1.0, 2.0]).as_deref(), Some("1.5/2"));
    }
}
