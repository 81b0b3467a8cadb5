use super::*;

fn open() -> Behavior {
    let free = Rules {
        window: 0,
        select: Select::Max,
        policies: vec![],
    };
    Behavior {
        up: free.clone(),
        down: free,
    }
}

fn pods(n: usize, workers: u32, wanted: u32, ceiling: u32) -> Vec<FleetPod> {
    vec![
        FleetPod {
            workers,
            wanted,
            ceiling
        };
        n
    ]
}

fn fleet(replicas: u32, pods: Vec<FleetPod>) -> FleetInput {
    FleetInput {
        replicas,
        min: 1,
        max: 10,
        pods,
    }
}

fn run(input: &FleetInput) -> ReplicaDecision {
    decide(input, &History::default(), &open(), 0.0).unwrap()
}

#[test]
fn cpu_fed_is_the_workers_a_quota_feeds_at_the_target() {
    assert_eq!(cpu_fed(Some(2.0), Some(0.5)), Some(4));
    assert_eq!(cpu_fed(Some(1.0), Some(0.7)), Some(1));
    assert_eq!(cpu_fed(Some(0.2), Some(0.7)), Some(1), "at least one");
    assert_eq!(cpu_fed(None, Some(0.7)), None);
    assert_eq!(cpu_fed(Some(2.0), None), None);
}

#[test]
fn pods_are_filled_before_replicas_rise() {
    // Two pods of ceiling 4 asking for 6 each, one still at 3 workers.
    let mut p = pods(2, 4, 6, 4);
    p[1].workers = 3;
    let d = run(&fleet(2, p.clone()));
    assert_eq!(
        (d.desired, d.limited_by),
        (2, Some(ReplicaLimit::FillingPods))
    );
    assert_eq!((d.demand, d.per_pod), (12, 4));
    // Both full: 12 workers need 3 pods.
    p[1].workers = 4;
    let d = run(&fleet(2, p));
    assert_eq!((d.desired, d.limited_by), (3, None));
}

#[test]
fn replicas_wait_for_the_last_scale_up_to_land() {
    // The target has 3 replicas, 2 pods are measured: the third is starting.
    let d = run(&fleet(3, pods(2, 4, 8, 4)));
    assert_eq!(
        (d.desired, d.limited_by),
        (3, Some(ReplicaLimit::PodsStarting))
    );
}

#[test]
fn replicas_fall_once_the_demand_fits_in_fewer_pods() {
    // Three pods of ceiling 4 whose metrics want 2 workers each: 6 fit in 2.
    let d = run(&fleet(3, pods(3, 2, 2, 4)));
    assert_eq!(d.desired, 2);
    // ...but not before the down window has seen it all along.
    let mut behavior = open();
    behavior.down.window = 300;
    let h = History::starting_at(3, 1000.0, 300);
    let held = decide(&fleet(3, pods(3, 2, 2, 4)), &h, &behavior, 1000.0).unwrap();
    assert_eq!(
        (held.desired, held.limited_by),
        (3, Some(ReplicaLimit::Stabilization))
    );
    let mut h = History::default();
    h.record(1000.0, 2, 0, 400.0);
    let later = decide(&fleet(3, pods(3, 2, 2, 4)), &h, &behavior, 1301.0).unwrap();
    assert_eq!(later.desired, 2);
}

#[test]
fn min_max_and_policies_bound_replicas() {
    let big = FleetInput {
        max: 5,
        ..fleet(2, pods(2, 4, 40, 4))
    };
    let d = run(&big);
    assert_eq!(
        (d.desired, d.limited_by),
        (5, Some(ReplicaLimit::MaxReplicas))
    );
    let idle = FleetInput {
        min: 2,
        ..fleet(4, pods(4, 1, 0, 4))
    };
    assert_eq!(run(&idle).desired, 2);
    let d = decide(&big, &History::default(), &default_behavior(), 0.0).unwrap();
    assert_eq!(d.desired, 5, "4 pods or 100 % per 15 s: 2 -> 5 at once");
    let mut slow = open();
    slow.up.policies = vec![Policy {
        kind: PolicyKind::Workers,
        value: 1,
        period: 60,
    }];
    let d = decide(&big, &History::default(), &slow, 0.0).unwrap();
    assert_eq!(
        (d.desired, d.limited_by),
        (3, Some(ReplicaLimit::ScaleUpPolicy))
    );
    // A scale-up window holding replicas below maxReplicas is what the
    // status names.
    let mut waiting = open();
    waiting.up.window = 10;
    let d = decide(&big, &History::starting_at(2, 0.0, 5), &waiting, 0.0).unwrap();
    assert_eq!(
        (d.desired, d.limited_by),
        (2, Some(ReplicaLimit::Stabilization))
    );
}

#[test]
fn nothing_is_decided_without_pods_or_replicas() {
    assert_eq!(
        decide(&fleet(2, vec![]), &History::default(), &open(), 0.0),
        None
    );
    assert_eq!(
        decide(
            &fleet(0, pods(1, 1, 9, 1)),
            &History::default(),
            &open(),
            0.0
        ),
        None
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn pod() -> impl Strategy<Value = FleetPod> {
        (1u32..16, 0u32..64, 1u32..16).prop_map(|(workers, wanted, ceiling)| FleetPod {
            workers: workers.min(ceiling),
            wanted,
            ceiling,
        })
    }

    proptest! {
        #[test]
        fn replicas_stay_in_bounds_and_rise_only_over_full_pods(
            replicas in 1u32..12,
            min in 1u32..5,
            span in 0u32..12,
            fleet_pods in proptest::collection::vec(pod(), 1..12),
            now in 0.0f64..10_000.0,
        ) {
            let input = FleetInput { replicas, min, max: min + span, pods: fleet_pods };
            for behavior in [open(), default_behavior()] {
                let d = decide(&input, &History::default(), &behavior, now).unwrap();
                prop_assert!(d.desired >= input.min && d.desired <= input.max);
                let all_full = input.pods.iter().all(|p| p.workers >= p.ceiling);
                let all_seen = input.pods.len() >= replicas as usize;
                if d.desired > replicas.max(input.min) {
                    prop_assert!(all_full && all_seen, "{input:?} -> {d:?}");
                }
                // Free to move and free of bounds, the fleet holds the demand.
                if behavior == open() && all_full && all_seen && d.limited_by.is_none() {
                    prop_assert!(u64::from(d.desired) * u64::from(d.per_pod) >= d.demand);
                }
            }
        }
    }
}

#[test]
fn a_new_pod_is_brought_to_its_share_within_its_ceiling() {
    // Two full pods of ceiling 4 asking for 6 each: 3 replicas, 4 each.
    let d = run(&fleet(2, pods(2, 4, 6, 4)));
    assert_eq!((d.desired, share(&d)), (3, Some(4)));
    let idle = Decision {
        wanted: 1,
        recommendation: 1,
        desired: 1,
        limited_by: Some(Limit::Stabilization),
    };
    let joined = first_sight(idle, 4, 4);
    assert_eq!((joined.desired, joined.recommendation), (4, 4));
    assert_eq!(joined.limited_by, None);
    // Never past its own ceiling, and never below what its metrics ask.
    assert_eq!(first_sight(idle, 4, 2).desired, 2);
    let busy = Decision {
        desired: 5,
        recommendation: 5,
        ..idle
    };
    assert_eq!(first_sight(busy, 4, 8), busy);
    // Nothing to share.
    let none = ReplicaDecision { demand: 0, ..d };
    assert_eq!(share(&none), None);
}
