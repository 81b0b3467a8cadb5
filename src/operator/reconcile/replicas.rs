//! The replica level of a pass (with `scaleTargetRef`): find out whether
//! a HorizontalPodAutoscaler already owns the target's replicas (then
//! leave them alone), read the target's scale subresource, decide with
//! the fleet's pods (`decide::fleet`), patch the scale, and say what
//! happened in the ScalingReplicas condition and an Event. The worker
//! level goes on whatever happens here.

use k8s_openapi::api::autoscaling::v1::HorizontalPodAutoscaler;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use super::super::crd::{ScaleTargetRef, WorkerAutoscaler};
use super::super::decide::History;
use super::super::decide::fleet::{self, FleetInput, FleetPod, ReplicaDecision};
use super::super::spec::ReplicaPlan;
use super::Context;

/// What the replica level did this pass.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaOutcome {
    /// The target's replicas when read.
    pub replicas: Option<u32>,
    pub desired: Option<u32>,
    pub limited_by: Option<&'static str>,
    /// The ScalingReplicas condition: whether the autoscaler sizes the
    /// replicas, why, and what it says.
    pub active: bool,
    pub reason: &'static str,
    pub message: String,
    /// A change made: (up, note) for its Event.
    pub scaled: Option<(bool, String)>,
}

impl ReplicaOutcome {
    fn inactive(replicas: Option<u32>, reason: &'static str, message: String) -> Self {
        ReplicaOutcome {
            replicas,
            desired: None,
            limited_by: None,
            active: false,
            reason,
            message,
            scaled: None,
        }
    }
}

/// The ScalingReplicas reason when an HPA owns the target.
pub const HPA_REASON: &str = "HPAControlsReplicas";

/// The API group of an `apiVersion` (`apps/v1` -> `apps`, `v1` -> ``).
fn group(api_version: &str) -> &str {
    api_version
        .rsplit_once('/')
        .map(|(group, _)| group)
        .unwrap_or("")
}

/// Whether an HPA's `scaleTargetRef` names our target: the same kind and
/// name in the same API group (the version may differ: one object, two
/// spellings).
pub fn same_target(hpa: &HorizontalPodAutoscaler, target: &ScaleTargetRef) -> bool {
    let theirs = &hpa.spec.scale_target_ref;
    theirs.kind == target.kind
        && theirs.name == target.name
        && group(theirs.api_version.as_deref().unwrap_or("")) == group(&target.api_version)
}

/// One replica pass.
#[allow(clippy::too_many_arguments)]
pub async fn size(
    ctx: &Context,
    wa: &WorkerAutoscaler,
    plan: &ReplicaPlan,
    uid: &str,
    pods: Vec<FleetPod>,
    paused: bool,
    now: f64,
) -> ReplicaOutcome {
    // A share stands only while this level sizes the fleet.
    ctx.records.put_share(uid, None);
    let ns = wa.namespace().unwrap_or_default();
    let target = &plan.target;
    let what = format!("{} {}", target.kind, target.name);
    let (group_name, version) = match target.api_version.rsplit_once('/') {
        Some((g, v)) => (g, v),
        None => ("", target.api_version.as_str()),
    };
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group_name, version, &target.kind));
    let workload: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &resource);
    let replicas = match workload.get_scale(&target.name).await {
        Ok(scale) => scale.spec.and_then(|s| s.replicas).map(|r| r.max(0) as u32),
        Err(e) => {
            return ReplicaOutcome::inactive(
                None,
                "TargetUnavailable",
                format!("cannot read the scale of {what}: {e}"),
            );
        }
    };

    // Read through autoscaling/v1, which every server serves (1.20 has no
    // autoscaling/v2): the same objects, and scaleTargetRef is all we need.
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(ctx.client.clone(), &ns);
    match hpas.list(&ListParams::default()).await {
        Ok(list) => {
            if let Some(hpa) = list.items.iter().find(|h| same_target(h, target)) {
                return ReplicaOutcome::inactive(
                    replicas,
                    HPA_REASON,
                    format!(
                        "HorizontalPodAutoscaler {} scales {what}: its replicas are left to it; workers are still scaled",
                        hpa.name_any()
                    ),
                );
            }
        }
        Err(e) => {
            return ReplicaOutcome::inactive(
                replicas,
                "HPAUnknown",
                format!("cannot list HorizontalPodAutoscalers, so replicas are left alone: {e}"),
            );
        }
    }

    let Some(replicas) = replicas else {
        return ReplicaOutcome::inactive(
            None,
            "TargetUnavailable",
            format!("{what} has no replicas"),
        );
    };
    let mut history = ctx
        .records
        .replica_history(uid)
        .unwrap_or_else(|| History::starting_at(replicas, now, plan.behavior.down.window));
    let input = FleetInput {
        replicas,
        min: plan.min,
        max: plan.max,
        pods,
    };
    let Some(decision) = fleet::decide(&input, &history, &plan.behavior, now) else {
        let (reason, message) = if replicas == 0 {
            ("ScaledToZero", format!("{what} is scaled to zero: left so"))
        } else {
            ("NoPodMeasured", "no selected pod was measured".to_string())
        };
        return ReplicaOutcome::inactive(Some(replicas), reason, message);
    };
    let limited_by = decision.limited_by.map(|l| l.as_str());
    let mut outcome = ReplicaOutcome {
        replicas: Some(replicas),
        desired: Some(decision.desired),
        limited_by,
        active: true,
        reason: "Scaling",
        message: format!(
            "{} workers wanted, {} per pod: {} replicas{}",
            decision.demand,
            decision.per_pod,
            decision.desired,
            limited_by
                .map(|l| format!(" (held by {l})"))
                .unwrap_or_default()
        ),
        scaled: None,
    };
    let mut change = 0i64;
    if decision.desired != replicas && !paused {
        let patch = serde_json::json!({"spec": {"replicas": decision.desired}});
        match workload
            .patch_scale(&target.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                change = i64::from(decision.desired) - i64::from(replicas);
                info!(autoscaler = %wa.name_any(), target = %what, from = replicas, to = decision.desired, "scaled replicas");
                outcome.scaled = Some((
                    change > 0,
                    format!(
                        "{what}: {replicas} -> {} replicas ({} workers wanted, {} per pod)",
                        decision.desired, decision.demand, decision.per_pod
                    ),
                ));
            }
            Err(e) => {
                warn!(autoscaler = %wa.name_any(), target = %what, error = %e, "cannot scale replicas");
                outcome.desired = Some(replicas);
                outcome.active = false;
                outcome.reason = "ScaleFailed";
                outcome.message = format!("cannot scale {what}: {e}");
            }
        }
    }
    history.record(
        now,
        decision.recommendation,
        change,
        plan.behavior.history_keep(),
    );
    ctx.records.put_replica_history(uid, history);
    let sized = ReplicaDecision {
        desired: outcome.desired.unwrap_or(replicas),
        ..decision
    };
    ctx.records.put_share(uid, fleet::share(&sized));
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hpa(api_version: &str, kind: &str, name: &str) -> HorizontalPodAutoscaler {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {
                "scaleTargetRef": {"apiVersion": api_version, "kind": kind, "name": name},
                "maxReplicas": 3,
            },
        }))
        .unwrap()
    }

    #[test]
    fn an_hpa_on_the_same_workload_is_found_whatever_its_version() {
        let target = ScaleTargetRef {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: "web".into(),
        };
        assert!(same_target(&hpa("apps/v1", "Deployment", "web"), &target));
        assert!(same_target(
            &hpa("apps/v1beta2", "Deployment", "web"),
            &target
        ));
        assert!(!same_target(&hpa("apps/v1", "Deployment", "api"), &target));
        assert!(!same_target(&hpa("apps/v1", "StatefulSet", "web"), &target));
        assert!(!same_target(
            &hpa("example.com/v1", "Deployment", "web"),
            &target
        ));
        assert_eq!(group("v1"), "");
    }
}
