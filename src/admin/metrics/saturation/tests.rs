use proptest::prelude::*;

use super::*;

fn worker(cores: f64, in_flight: Option<u32>) -> WorkerLoad {
    WorkerLoad { cores, in_flight }
}

/// `n` proxied workers with `in_flight` requests each, one slot each.
fn proxied(n: usize, in_flight: u32, waiting: u32, ceiling: u32) -> PodLoad {
    PodLoad {
        workers: vec![worker(0.0, Some(in_flight)); n],
        waiting,
        slots: Some(1),
        ceiling,
        cpu_quota: None,
    }
}

#[test]
fn an_idle_pod_is_not_saturated() {
    assert_eq!(saturation(&proxied(2, 0, 0, 4)), 0.0);
}

#[test]
fn busy_workers_below_the_ceiling_leave_room() {
    assert_eq!(saturation(&proxied(2, 1, 0, 4)), 0.5);
}

#[test]
fn every_worker_busy_at_the_ceiling_is_one() {
    assert_eq!(saturation(&proxied(4, 1, 0, 4)), 1.0);
}

#[test]
fn requests_queued_at_the_ceiling_lift_it_past_one() {
    assert_eq!(saturation(&proxied(1, 1, 3, 1)), 4.0);
    assert_eq!(saturation(&proxied(4, 1, 2, 4)), 1.5);
}

#[test]
fn slots_and_the_queue_are_counted_in_workers_worth() {
    let pod = PodLoad {
        workers: vec![worker(0.1, Some(2)), worker(0.1, Some(4))],
        waiting: 4,
        slots: Some(4),
        ceiling: 2,
        cpu_quota: None,
    };
    // Half of one worker's slots, all of the other's, one worker's worth
    // waiting: (0.5 + 1 + 1) / 2.
    assert_eq!(saturation(&pod), 1.25);
}

#[test]
fn without_slots_a_worker_is_as_busy_as_the_core_it_uses() {
    let pod = PodLoad {
        workers: vec![worker(1.3, Some(7)), worker(0.5, None)],
        waiting: 0,
        slots: None,
        ceiling: 3,
        cpu_quota: None,
    };
    assert_eq!(saturation(&pod), 0.5, "capped at one core each");
    let queued = PodLoad { waiting: 3, ..pod };
    assert_eq!(
        saturation(&queued),
        1.5,
        "each waiting connection a worker's worth"
    );
}

#[test]
fn a_spent_cpu_quota_saturates_however_few_workers_run() {
    let pod = PodLoad {
        workers: vec![worker(0.25, None); 8],
        waiting: 0,
        slots: None,
        ceiling: 16,
        cpu_quota: Some(2.0),
    };
    assert_eq!(saturation(&pod), 1.0);
    let unlimited = PodLoad {
        cpu_quota: None,
        ..pod.clone()
    };
    assert_eq!(saturation(&unlimited), 0.125);
    let nonsense = PodLoad {
        cpu_quota: Some(0.0),
        ..pod
    };
    assert_eq!(saturation(&nonsense), 0.125);
}

#[test]
fn readings_that_are_not_numbers_count_as_idle() {
    let pod = PodLoad {
        workers: vec![worker(f64::NAN, None), worker(-1.0, None)],
        waiting: 0,
        slots: None,
        ceiling: 0,
        cpu_quota: Some(1.0),
    };
    assert_eq!(saturation(&pod), 0.0);
}

#[test]
fn the_document_gives_serving_workers_queues_and_the_ceiling() {
    let doc: WorkersDoc = serde_json::from_value(serde_json::json!({
        "version": 1, "desired": 3, "configured": 3, "requested": null,
        "running": 3, "ready": 2, "shutting_down": false, "generation": 1,
        "limits": {"min": 1, "max": 8, "memory_cap": 3},
        "last_limited": null, "cpu_utilisation": 0.0, "queued": 2,
        "workers": [
            {"id": 1, "pid": 10, "state": "ready", "generation": 1,
             "started_at": 0.0, "restarts": 0, "cpu_seconds": 1.0,
             "cpu_utilisation": 0.5, "rss_bytes": 1, "status": null,
             "in_flight": 1, "last_exit": null},
            {"id": 2, "pid": 11, "state": "draining", "generation": 1,
             "started_at": 0.0, "restarts": 0, "cpu_seconds": 1.0,
             "cpu_utilisation": 0.9, "rss_bytes": 1, "status": null,
             "in_flight": 1, "last_exit": null}
        ],
        "recent_exits": [],
        "listeners": [
            {"address": "0.0.0.0:8000", "queue_length": 1, "queue_max_window": 1, "backlog": 2048},
            {"address": "unix:/x", "queue_length": null, "queue_max_window": null, "backlog": null}
        ],
        "cgroup": {"cpu_quota_cores": 2.0, "memory_limit_bytes": null, "memory_usage_bytes": null}
    }))
    .unwrap();
    assert_eq!(
        PodLoad::of(&doc, Some(0)),
        PodLoad {
            workers: vec![worker(0.5, Some(1))],
            waiting: 3,
            slots: None,
            ceiling: 3,
            cpu_quota: Some(2.0),
        }
    );
    assert_eq!(PodLoad::of(&doc, Some(4)).slots, Some(4));
}

fn pods() -> impl Strategy<Value = PodLoad> {
    (
        prop::collection::vec((0.0f64..2.0, prop::option::of(0u32..10)), 0..12),
        0u32..50,
        prop::option::of(1u32..8),
        0u32..16,
        prop::option::of(0.1f64..8.0),
    )
        .prop_map(|(workers, waiting, slots, ceiling, cpu_quota)| PodLoad {
            workers: workers
                .into_iter()
                .map(|(cores, in_flight)| worker(cores, in_flight))
                .collect(),
            waiting,
            slots,
            ceiling,
            cpu_quota,
        })
}

proptest! {
    #[test]
    fn saturation_is_a_finite_non_negative_number(pod in pods()) {
        let s = saturation(&pod);
        prop_assert!(s.is_finite() && s >= 0.0, "{s}");
    }

    #[test]
    fn more_waiting_or_a_lower_ceiling_never_lowers_it(pod in pods(), more in 1u32..20) {
        let s = saturation(&pod);
        let waiting = PodLoad { waiting: pod.waiting + more, ..pod.clone() };
        prop_assert!(saturation(&waiting) >= s);
        if pod.ceiling > 1 {
            let lower = PodLoad { ceiling: pod.ceiling - 1, ..pod };
            prop_assert!(saturation(&lower) >= s);
        }
    }

    #[test]
    fn at_the_ceiling_it_passes_one_exactly_when_requests_wait(
        ceiling in 1u32..12,
        slots in 1u32..8,
        waiting in 0u32..20,
    ) {
        let pod = PodLoad {
            workers: vec![worker(0.0, Some(slots)); ceiling as usize],
            waiting,
            slots: Some(slots),
            ceiling,
            cpu_quota: None,
        };
        let s = saturation(&pod);
        prop_assert!(s >= 1.0 - 1e-12, "{s}");
        prop_assert_eq!(s > 1.0 + 1e-12, waiting > 0, "{}", s);
    }
}
