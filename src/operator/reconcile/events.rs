//! The Events a pass records about an autoscaler: a pod scaled, a pod that
//! does not report concurrency, a pass that cannot scale. Per-pod Events
//! are capped per pass (the first pods each get their own, naming the pod
//! as related object, and one more sums up the rest): a rollout of a large
//! Deployment would otherwise write an Event per pod per pass, which the
//! API server rate-limits and `kubectl describe` cannot show anyway.

use k8s_openapi::api::core::v1::Pod;
use kube::Resource;
use kube::runtime::events::{Event, EventType};
use tracing::warn;

use super::super::crd::WorkerAutoscaler;
use super::Context;

/// Pods whose change gets an Event of its own in one pass.
pub const POD_EVENTS_PER_PASS: usize = 10;

/// What a pod's status (and its Event) says when a `Concurrency` metric
/// finds no value: the manager only measures it in the request path.
pub const CONCURRENCY_UNREPORTED: &str =
    "no concurrency reported (its corral runs without --proxy): not scaled on Concurrency";
const UNREPORTED_REASON: &str = "ConcurrencyUnreported";

/// One Event to record; `P` is the pod it concerns, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice<P> {
    pub pod: Option<P>,
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

/// The Events for per-pod `items`: `own` for each of the first
/// [`POD_EVENTS_PER_PASS`], `summary` for all the others together.
fn capped<P: Copy, T>(
    items: &[(P, T)],
    own: impl Fn(P, &T) -> Notice<P>,
    summary: impl FnOnce(&[(P, T)]) -> Notice<P>,
) -> Vec<Notice<P>> {
    let split = items.len().min(POD_EVENTS_PER_PASS);
    let mut notices: Vec<Notice<P>> = items[..split].iter().map(|(p, t)| own(*p, t)).collect();
    if split < items.len() {
        notices.push(summary(&items[split..]));
    }
    notices
}

/// Scale Events: `changes` holds, per pod scaled, whether it went up and
/// the note.
pub fn scaled<P: Copy>(changes: &[(P, (bool, String))]) -> Vec<Notice<P>> {
    capped(
        changes,
        |pod, (up, note)| Notice {
            pod: Some(pod),
            warning: false,
            reason: if *up { "ScaledUp" } else { "ScaledDown" },
            note: note.clone(),
        },
        |rest| {
            let up = rest.iter().filter(|(_, (up, _))| *up).count();
            Notice {
                pod: None,
                warning: false,
                reason: "Scaled",
                note: format!(
                    "{} more pods scaled: {up} up, {} down",
                    rest.len(),
                    rest.len() - up
                ),
            }
        },
    )
}

/// Events for the pods (with their names) newly found not to report
/// concurrency.
pub fn unreported<P: Copy>(pods: &[(P, String)]) -> Vec<Notice<P>> {
    capped(
        pods,
        |pod, name| Notice {
            pod: Some(pod),
            warning: true,
            reason: UNREPORTED_REASON,
            note: format!("pod {name}: {CONCURRENCY_UNREPORTED}"),
        },
        |rest| Notice {
            pod: None,
            warning: true,
            reason: UNREPORTED_REASON,
            note: format!("{} more pods: {CONCURRENCY_UNREPORTED}", rest.len()),
        },
    )
}

/// An Event about the autoscaler itself.
pub fn about_autoscaler(warning: bool, reason: &'static str, note: &str) -> Notice<&'static Pod> {
    Notice {
        pod: None,
        warning,
        reason,
        note: note.to_string(),
    }
}

/// Records `notice` about `wa`, related to its pod when it concerns one,
/// so that Kubernetes' aggregation of repeated Events keeps pods apart.
pub async fn publish(ctx: &Context, wa: &WorkerAutoscaler, notice: Notice<&Pod>) {
    let event = Event {
        type_: if notice.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: notice.reason.to_string(),
        note: Some(notice.note.chars().take(1000).collect()),
        action: "Scale".into(),
        secondary: notice.pod.map(|p| p.object_ref(&())),
    };
    if let Err(e) = ctx.recorder.publish(&event, &wa.object_ref(&())).await {
        warn!(error = %e, "cannot record event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_pods_get_their_own_event_and_one_sums_up_the_rest() {
        let changes: Vec<(usize, (bool, String))> = (0..13)
            .map(|i| (i, (i % 3 != 0, format!("pod web-{i}"))))
            .collect();
        let notices = scaled(&changes);
        assert_eq!(notices.len(), POD_EVENTS_PER_PASS + 1);
        assert_eq!(notices[0].pod, Some(0));
        assert_eq!(notices[0].reason, "ScaledDown");
        assert_eq!(notices[1].reason, "ScaledUp");
        assert_eq!(notices[9].note, "pod web-9");
        let last = notices.last().unwrap();
        assert_eq!(last.pod, None);
        // web-10, 11, 12: 10 % 3 != 0 and 11 % 3 != 0 went up, 12 down.
        assert_eq!(last.note, "3 more pods scaled: 2 up, 1 down");
    }

    #[test]
    fn few_pods_get_no_summary() {
        assert!(scaled::<usize>(&[]).is_empty());
        let pods: Vec<(usize, String)> = (0..POD_EVENTS_PER_PASS)
            .map(|i| (i, format!("web-{i}")))
            .collect();
        let notices = unreported(&pods);
        assert_eq!(notices.len(), POD_EVENTS_PER_PASS);
        assert!(notices.iter().all(|n| n.warning && n.pod.is_some()));
        assert_eq!(
            notices[3].note,
            format!("pod web-3: {CONCURRENCY_UNREPORTED}")
        );
        let more: Vec<(usize, String)> = (0..12).map(|i| (i, format!("web-{i}"))).collect();
        assert_eq!(
            unreported(&more).last().unwrap().note,
            format!("2 more pods: {CONCURRENCY_UNREPORTED}")
        );
    }
}
