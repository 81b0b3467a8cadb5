use super::*;
use crate::contract::LimitReason;
use crate::limits::Bounds;

fn cpu(target: f64) -> Metric {
    Metric::Cpu { target }
}

fn pod(current: u32, values: Vec<(Metric, Option<f64>)>) -> PodInput {
    PodInput {
        current,
        bounds: Bounds {
            min: 1,
            max: 12,
            memory_cap: None,
        },
        values,
    }
}

fn no_limits() -> Behavior {
    Behavior {
        up: Rules {
            window: 0,
            select: Select::Max,
            policies: vec![],
        },
        down: Rules {
            window: 0,
            select: Select::Max,
            policies: vec![],
        },
    }
}

#[test]
fn proposals_follow_the_hpa_formula() {
    assert_eq!(propose(cpu(0.5), 1.0, 4), Some(8));
    assert_eq!(propose(cpu(0.7), 0.35, 4), Some(2));
    assert_eq!(propose(cpu(0.7), 0.0, 4), Some(0));
    // Inside the tolerance band: no change.
    assert_eq!(propose(cpu(0.7), 0.75, 4), Some(4));
    assert_eq!(propose(cpu(0.7), 0.65, 4), Some(4));
    assert_eq!(
        propose(Metric::Prometheus { target: 20.0 }, 50.0, 2),
        Some(5)
    );
    assert_eq!(propose(cpu(0.7), f64::NAN, 4), None);
}

#[test]
fn a_zero_queue_target_adds_a_worker_per_waiting_connection() {
    let q = Metric::Queue { target: 0.0 };
    assert_eq!(propose(q, 3.0, 2), Some(5));
    assert_eq!(propose(q, 0.0, 2), Some(0));
    assert_eq!(propose(Metric::Queue { target: 5.0 }, 10.0, 2), Some(4));
}

#[test]
fn the_largest_proposal_wins_and_unknown_values_are_skipped() {
    let input = pod(
        2,
        vec![
            (cpu(0.5), Some(0.5)),
            (Metric::Queue { target: 0.0 }, Some(4.0)),
            (cpu(0.5), None),
        ],
    );
    let d = decide(&input, &History::default(), &no_limits(), 0.0).unwrap();
    assert_eq!(d.desired, 6);
    let unknown = pod(2, vec![(cpu(0.5), None)]);
    assert_eq!(
        decide(&unknown, &History::default(), &no_limits(), 0.0),
        None
    );
}

#[test]
fn concurrency_scales_on_in_flight_requests_per_worker() {
    let c = Metric::Concurrency { target: 4.0 };
    // 2 workers with 10 requests each against a target of 4: 5 workers.
    assert_eq!(propose(c, 10.0, 2), Some(5));
    assert_eq!(propose(c, 1.0, 8), Some(2));
    assert_eq!(propose(c, 4.2, 3), Some(3));
    // An idle pod asks for as few workers as the bounds allow.
    assert_eq!(propose(c, 0.0, 3), Some(0));
}

#[test]
fn a_pod_without_concurrency_is_not_scaled_on_it() {
    let c = Metric::Concurrency { target: 2.0 };
    // Read as 0 it would shrink the pod to minWorkers: unknown, it decides
    // nothing ...
    let shared = pod(6, vec![(c, None)]);
    assert_eq!(
        decide(&shared, &History::default(), &no_limits(), 0.0),
        None
    );
    // ... and leaves the other metrics to decide, the largest still winning.
    let with_cpu = pod(6, vec![(c, None), (cpu(0.5), Some(0.25))]);
    let d = decide(&with_cpu, &History::default(), &no_limits(), 0.0).unwrap();
    assert_eq!(d.desired, 3);
    let both = pod(2, vec![(c, Some(6.0)), (cpu(0.5), Some(0.75))]);
    let d = decide(&both, &History::default(), &no_limits(), 0.0).unwrap();
    assert_eq!(d.desired, 6);
}

#[test]
fn bounds_apply_and_are_named() {
    // Four workers on a CPU target, no rate limits: where the value leads.
    let at = |target: f64, value: f64| {
        let d = decide(
            &pod(4, vec![(cpu(target), Some(value))]),
            &History::default(),
            &no_limits(),
            0.0,
        )
        .unwrap();
        (d.desired, d.limited_by)
    };
    assert_eq!(
        at(0.1, 1.0),
        (12, Some(Limit::Bound(LimitReason::MaxWorkers)))
    );
    assert_eq!(
        at(0.7, 0.0),
        (1, Some(Limit::Bound(LimitReason::MinWorkers)))
    );
}

#[test]
fn the_memory_guard_holds_growth_only() {
    let mut input = pod(3, vec![(cpu(0.5), Some(1.0))]);
    input.bounds.memory_cap = Some(4);
    let d = decide(&input, &History::default(), &no_limits(), 0.0).unwrap();
    assert_eq!(
        (d.desired, d.limited_by),
        (4, Some(Limit::Bound(LimitReason::MemoryGuard)))
    );
    input.current = 6;
    input.values = vec![(cpu(0.5), Some(0.4))];
    let d = decide(&input, &History::default(), &no_limits(), 0.0).unwrap();
    assert_eq!(d.desired, 5);
}

#[test]
fn scale_down_waits_for_the_window_high() {
    let behavior = Behavior {
        down: Rules {
            window: 120,
            select: Select::Max,
            policies: vec![],
        },
        ..no_limits()
    };
    let mut h = History::default();
    h.record(0.0, 8, 0, 300.0);
    let input = pod(8, vec![(cpu(0.8), Some(0.2))]);
    let d = decide(&input, &h, &behavior, 60.0).unwrap();
    assert_eq!((d.desired, d.limited_by), (8, Some(Limit::Stabilization)));
    let d = decide(&input, &h, &behavior, 121.0).unwrap();
    assert_eq!(d.desired, 2);
}

#[test]
fn a_new_history_does_not_scale_down_at_once() {
    let behavior = Behavior::default();
    let h = History::starting_at(8, 1000.0, behavior.down.window);
    let input = pod(8, vec![(cpu(0.8), Some(0.1))]);
    assert_eq!(decide(&input, &h, &behavior, 1000.0).unwrap().desired, 8);
}

#[test]
fn rate_policies_limit_each_period() {
    let behavior = Behavior {
        up: Rules {
            window: 0,
            select: Select::Max,
            policies: vec![Policy {
                kind: PolicyKind::Workers,
                value: 2,
                period: 15,
            }],
        },
        down: Rules {
            window: 0,
            select: Select::Max,
            policies: vec![Policy {
                kind: PolicyKind::Percent,
                value: 50,
                period: 60,
            }],
        },
    };
    let mut h = History::default();
    let d = decide(&pod(2, vec![(cpu(0.1), Some(0.5))]), &h, &behavior, 0.0).unwrap();
    assert_eq!((d.desired, d.limited_by), (4, Some(Limit::ScaleUpPolicy)));
    h.record(0.0, d.recommendation, 2, 300.0);
    // Within the same period, the two already added count against the policy.
    let d = decide(&pod(4, vec![(cpu(0.1), Some(0.5))]), &h, &behavior, 10.0).unwrap();
    assert_eq!(d.desired, 4);
    let d = decide(&pod(4, vec![(cpu(0.1), Some(0.5))]), &h, &behavior, 16.0).unwrap();
    assert_eq!(d.desired, 6);
    // Down: at most half per minute.
    let d = decide(
        &pod(10, vec![(cpu(0.7), Some(0.07))]),
        &History::default(),
        &behavior,
        0.0,
    )
    .unwrap();
    assert_eq!((d.desired, d.limited_by), (5, Some(Limit::ScaleDownPolicy)));
}

#[test]
fn select_policy_chooses_between_policies() {
    let policies = vec![
        Policy {
            kind: PolicyKind::Workers,
            value: 1,
            period: 15,
        },
        Policy {
            kind: PolicyKind::Percent,
            value: 100,
            period: 15,
        },
    ];
    let rules = |select| Behavior {
        up: Rules {
            window: 0,
            select,
            policies: policies.clone(),
        },
        ..no_limits()
    };
    let input = pod(4, vec![(cpu(0.1), Some(1.0))]);
    let h = History::default();
    assert_eq!(
        decide(&input, &h, &rules(Select::Max), 0.0)
            .unwrap()
            .desired,
        8
    );
    assert_eq!(
        decide(&input, &h, &rules(Select::Min), 0.0)
            .unwrap()
            .desired,
        5
    );
    assert_eq!(
        decide(&input, &h, &rules(Select::Disabled), 0.0)
            .unwrap()
            .desired,
        4
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn metric() -> impl Strategy<Value = Metric> {
        prop_oneof![
            (0.05f64..2.0).prop_map(|target| Metric::Cpu { target }),
            (0.0f64..50.0).prop_map(|target| Metric::Queue { target }),
            (0.1f64..100.0).prop_map(|target| Metric::Prometheus { target }),
            (0.1f64..64.0).prop_map(|target| Metric::Concurrency { target }),
        ]
    }

    proptest! {
        #[test]
        fn never_outside_bounds_nor_above_the_memory_cap(
            current in 1u32..40,
            min in 1u32..10,
            span in 0u32..30,
            cap in proptest::option::of(1u32..40),
            values in proptest::collection::vec((metric(), proptest::option::of(0.0f64..1000.0)), 1..4),
            now in 0.0f64..10_000.0,
        ) {
            let max = min + span;
            let input = PodInput { current, bounds: Bounds { min, max, memory_cap: cap }, values };
            if let Some(d) = decide(&input, &History::default(), &Behavior::default(), now) {
                prop_assert!(d.desired >= min && d.desired <= max);
                if let Some(cap) = cap {
                    prop_assert!(d.desired <= cap.max(current).max(min));
                }
            }
        }

        #[test]
        fn no_change_inside_the_tolerance(current in 1u32..40, target in 0.05f64..2.0, wobble in -0.099f64..0.099) {
            let input = PodInput {
                current,
                bounds: Bounds {
                    min: 1,
                    max: 40,
                    memory_cap: None,
                },
                values: vec![(Metric::Cpu { target }, Some(target * (1.0 + wobble)))],
            };
            let d = decide(&input, &History::default(), &Behavior::default(), 0.0).unwrap();
            prop_assert_eq!(d.desired, current);
        }
    }
}
