//! The replica level (`scaleTargetRef`): how many pods the fleet needs.
//! Workers are the fast lever (a new worker serves in a fraction of a
//! second, a new pod in seconds to minutes), so pods are filled to their
//! ceiling first, and replicas rise only when every selected pod is at its
//! ceiling and the metrics still ask for more; down, the per-pod level
//! sheds workers, and replicas fall once the demand fits in fewer pods for
//! the replica level's own stabilization window. Values in, values out, as
//! the rest of `decide`.

use super::{Behavior, Decision, History, Limit, Policy, PolicyKind, Rules, Select, behave};

/// One measured pod, as the replica level sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetPod {
    /// Workers the manager drives towards after this pass.
    pub workers: u32,
    /// Workers the pod's metrics asked for, before any bound.
    pub wanted: u32,
    /// The most workers the pod can usefully run: see
    /// [`crate::limits::Bounds::ceiling`],
    /// with what its CPU limit feeds ([`cpu_fed`]).
    pub ceiling: u32,
}

/// Workers a CPU quota of `quota` cores feeds at `target` cores each (at
/// least one); `None` without a quota or a CPU target.
pub fn cpu_fed(quota: Option<f64>, target: Option<f64>) -> Option<u32> {
    let (quota, target) = (quota?, target?);
    if !(quota.is_finite() && target.is_finite() && quota > 0.0 && target > 0.0) {
        return None;
    }
    // A hair of slack so that 2.0 / 0.5 is 4, not 3.999...
    let fed = (quota / target + 1e-9).floor();
    Some(fed.clamp(1.0, f64::from(u32::MAX)) as u32)
}

/// The replica level's behaviour unless the spec says otherwise: an
/// HPA's defaults (up as the worker level, at once by 4 pods or 100 % per
/// 15 s, whichever is more; down after 300 s of lower recommendations, by up to 100 % per
/// 15 s). The down window is longer than the worker level's 120 s, so that
/// workers fall before pods do.
pub fn default_behavior() -> Behavior {
    Behavior {
        down: Rules {
            window: 300,
            select: Select::Max,
            policies: vec![Policy {
                kind: PolicyKind::Percent,
                value: 100,
                period: 15,
            }],
        },
        ..Behavior::default()
    }
}

/// What held the replica count back, as the status names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaLimit {
    MinReplicas,
    MaxReplicas,
    /// Some pod is below its ceiling: workers go up first.
    FillingPods,
    /// Fewer pods were measured than the target has replicas: the last
    /// scale-up has not landed yet, and its pods' workers would be counted
    /// twice.
    PodsStarting,
    Stabilization,
    ScaleUpPolicy,
    ScaleDownPolicy,
}

impl ReplicaLimit {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaLimit::MinReplicas => "minReplicas",
            ReplicaLimit::MaxReplicas => "maxReplicas",
            ReplicaLimit::FillingPods => "fillingPods",
            ReplicaLimit::PodsStarting => "podsStarting",
            ReplicaLimit::Stabilization => "stabilization",
            ReplicaLimit::ScaleUpPolicy => "scaleUpPolicy",
            ReplicaLimit::ScaleDownPolicy => "scaleDownPolicy",
        }
    }
}

/// The fleet as one pass found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetInput {
    /// The target's replicas now (its scale subresource's `spec.replicas`).
    pub replicas: u32,
    pub min: u32,
    pub max: u32,
    /// The pods measured this pass.
    pub pods: Vec<FleetPod>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaDecision {
    /// Workers the metrics ask for over the fleet.
    pub demand: u64,
    /// Workers one pod holds: the smallest ceiling measured.
    pub per_pod: u32,
    /// Replicas the demand needs, within min/max: the value to record.
    pub recommendation: u32,
    pub desired: u32,
    pub limited_by: Option<ReplicaLimit>,
}

/// The replica decision; `None` when nothing can be decided: no pod was
/// measured, or the target is scaled to zero (someone chose that; as an
/// HPA, the autoscaler leaves it).
pub fn decide(
    input: &FleetInput,
    history: &History,
    behavior: &Behavior,
    now: f64,
) -> Option<ReplicaDecision> {
    if input.pods.is_empty() || input.replicas == 0 {
        return None;
    }
    let replicas = input.replicas;
    let per_pod = input.pods.iter().map(|p| p.ceiling).min()?.max(1);
    let demand: u64 = input.pods.iter().map(|p| u64::from(p.wanted)).sum();
    let needed = u32::try_from(demand.div_ceil(u64::from(per_pod)))
        .unwrap_or(u32::MAX)
        .max(1);
    let mut limited_by = None;
    let mut recommendation = if needed <= replicas {
        needed
    } else if input.pods.len() < replicas as usize {
        limited_by = Some(ReplicaLimit::PodsStarting);
        replicas
    } else if input.pods.iter().any(|p| p.workers < p.ceiling) {
        limited_by = Some(ReplicaLimit::FillingPods);
        replicas
    } else {
        needed
    };
    if recommendation > input.max {
        recommendation = input.max;
        limited_by = Some(ReplicaLimit::MaxReplicas);
    } else if recommendation < input.min {
        recommendation = input.min;
        limited_by = Some(ReplicaLimit::MinReplicas);
    }
    let (desired, held) = behave(replicas, recommendation, history, behavior, now);
    // What held the count last is named: a window that holds replicas
    // below maxReplicas is the stabilization, not maxReplicas.
    match held {
        Some(Limit::ScaleUpPolicy) => limited_by = Some(ReplicaLimit::ScaleUpPolicy),
        Some(Limit::ScaleDownPolicy) => limited_by = Some(ReplicaLimit::ScaleDownPolicy),
        Some(_) => limited_by = Some(ReplicaLimit::Stabilization),
        None => {}
    }
    Some(ReplicaDecision {
        demand,
        per_pod,
        recommendation,
        // The bounds win over everything, as in an HPA.
        desired: desired.clamp(input.min, input.max),
        limited_by,
    })
}

/// Each pod's share of the fleet's demand once the replica level has
/// decided: the workers a pod joining now should run. `None` without a
/// demand to share.
pub fn share(decision: &ReplicaDecision) -> Option<u32> {
    if decision.demand == 0 || decision.desired == 0 {
        return None;
    }
    let share = decision.demand.div_ceil(u64::from(decision.desired));
    Some(u32::try_from(share).unwrap_or(u32::MAX))
}

/// The decision for a pod seen for the first time while the fleet has a
/// share. A pod the replica level has just added starts at its configured
/// count and has no load of its own yet (the Service's endpoints are still
/// catching up), so its metrics would leave it there while the old pods,
/// still overloaded, wait for it; it is brought at once to its share,
/// within its ceiling. The share is recorded as its recommendation, so
/// the scale-down window holds it until the load arrives.
pub fn first_sight(decision: Decision, share: u32, ceiling: u32) -> Decision {
    let share = share.min(ceiling);
    if share <= decision.desired {
        return decision;
    }
    Decision {
        recommendation: decision.recommendation.max(share),
        desired: share,
        limited_by: None,
        ..decision
    }
}

#[cfg(test)]
mod tests;
