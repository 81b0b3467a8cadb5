use super::*;

fn policy() -> Policy {
    Policy {
        readiness: Readiness::Notify,
        boot_grace: Duration::from_secs(1),
        boot_timeout: Duration::from_secs(10),
        watchdog: Some(Duration::from_secs(5)),
        max_surge: 1,
        rss_samples: Some(3),
    }
}

fn worker(id: u32, generation: u64, state: WorkerState, t0: Instant) -> WorkerFacts {
    WorkerFacts::new(id, generation, state, t0)
}

fn run(desired: u32, generation: u64, workers: &[WorkerFacts], now: Instant) -> Vec<Action> {
    let p = policy();
    next_actions(
        &View {
            desired,
            generation,
            may_spawn: true,
            workers,
            policy: &p,
        },
        now,
    )
}

fn spawns(actions: &[Action]) -> usize {
    actions.iter().filter(|a| **a == Action::Spawn).count()
}

fn drains(actions: &[Action]) -> Vec<u32> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Drain(id) => Some(*id),
            _ => None,
        })
        .collect()
}

#[test]
fn starts_the_desired_count() {
    let t0 = Instant::now();
    assert_eq!(spawns(&run(3, 1, &[], t0)), 3);
    let ws = [worker(1, 1, WorkerState::Ready, t0)];
    assert_eq!(spawns(&run(3, 1, &ws, t0)), 2);
}

#[test]
fn no_spawn_while_backing_off() {
    // As the manager asks while a crashed worker's restart waits: one
    // worker short, and an old generation still to roll.
    let t0 = Instant::now();
    let p = policy();
    let ws = vec![
        worker(1, 1, WorkerState::Ready, t0),
        worker(2, 2, WorkerState::Ready, t0),
    ];
    let view = View {
        desired: 3,
        generation: 2,
        may_spawn: false,
        workers: &ws,
        policy: &p,
    };
    assert!(
        next_actions(&view, t0).is_empty(),
        "no start, and no drain for want of a successor"
    );
    let allowed = View {
        may_spawn: true,
        ..view
    };
    assert_eq!(spawns(&next_actions(&allowed, t0)), 2);
}

#[test]
fn rolling_restart_surges_before_draining() {
    let t0 = Instant::now();
    let mut ws = vec![
        worker(1, 1, WorkerState::Ready, t0),
        worker(2, 1, WorkerState::Ready, t0),
    ];
    // Generation 2 wanted: one new worker, nothing drained yet.
    let a = run(2, 2, &ws, t0);
    assert_eq!(spawns(&a), 1);
    assert!(drains(&a).is_empty());
    // The new one boots: still nothing drained.
    ws.push(worker(3, 2, WorkerState::Starting, t0));
    let a = run(2, 2, &ws, t0);
    assert_eq!(spawns(&a), 0);
    assert!(drains(&a).is_empty());
    // The new one is ready: one old one drains, no more spawns until it has.
    ws[2].state = WorkerState::Ready;
    let a = run(2, 2, &ws, t0);
    assert_eq!(drains(&a).len(), 1);
    assert_eq!(spawns(&a), 0);
    // That one is draining: the next new worker starts.
    let drained = drains(&a)[0];
    ws.iter_mut().find(|w| w.id == drained).unwrap().state = WorkerState::Draining;
    let a = run(2, 2, &ws, t0);
    assert_eq!(spawns(&a), 1);
    assert!(drains(&a).is_empty());
}

#[test]
fn a_crash_looping_new_generation_never_drains_the_old() {
    let t0 = Instant::now();
    let ws = [
        worker(1, 1, WorkerState::Ready, t0),
        worker(2, 1, WorkerState::Ready, t0),
        worker(3, 2, WorkerState::Starting, t0),
    ];
    assert!(drains(&run(2, 2, &ws, t0)).is_empty());
}

#[test]
fn old_workers_still_booting_drain_first() {
    let t0 = Instant::now();
    let ws = [
        worker(1, 1, WorkerState::Ready, t0),
        worker(2, 1, WorkerState::Starting, t0),
        worker(3, 2, WorkerState::Ready, t0),
    ];
    assert_eq!(drains(&run(2, 2, &ws, t0)), vec![2]);
}

#[test]
fn scale_down_drains_the_idlest() {
    let t0 = Instant::now();
    let mut ws = vec![
        worker(1, 1, WorkerState::Ready, t0),
        worker(2, 1, WorkerState::Ready, t0),
        worker(3, 1, WorkerState::Ready, t0),
    ];
    ws[0].cpu_recent = 0.9;
    ws[1].cpu_recent = 0.1;
    ws[2].cpu_recent = 0.5;
    assert_eq!(drains(&run(2, 1, &ws, t0)), vec![2]);
    assert_eq!(drains(&run(1, 1, &ws, t0)), vec![2, 3]);
}

#[test]
fn scale_down_prefers_workers_still_booting() {
    let t0 = Instant::now();
    let ws = [
        worker(1, 1, WorkerState::Ready, t0),
        worker(2, 1, WorkerState::Starting, t0),
    ];
    assert_eq!(drains(&run(1, 1, &ws, t0)), vec![2]);
}

#[test]
fn silent_workers_become_ready_after_the_grace_in_auto_mode() {
    let t0 = Instant::now();
    let p = Policy {
        readiness: Readiness::Auto,
        ..policy()
    };
    let ws = [worker(1, 1, WorkerState::Starting, t0)];
    let view = View {
        desired: 1,
        generation: 1,
        may_spawn: true,
        workers: &ws,
        policy: &p,
    };
    assert!(next_actions(&view, t0 + Duration::from_millis(500)).is_empty());
    assert_eq!(
        next_actions(&view, t0 + Duration::from_secs(1)),
        vec![Action::MarkReady(1)]
    );
}

#[test]
fn notify_mode_aborts_workers_that_never_say_ready() {
    let t0 = Instant::now();
    let ws = [worker(1, 1, WorkerState::Starting, t0)];
    assert!(run(1, 1, &ws, t0 + Duration::from_secs(9)).is_empty());
    let a = run(1, 1, &ws, t0 + Duration::from_secs(10));
    assert_eq!(
        a,
        vec![Action::Abort(1, ExitReason::BootTimeout), Action::Spawn]
    );
}

#[test]
fn watchdog_aborts_only_workers_that_beat_once() {
    let t0 = Instant::now();
    let mut ws = vec![worker(1, 1, WorkerState::Ready, t0)];
    let later = t0 + Duration::from_secs(60);
    assert!(run(1, 1, &ws, later).is_empty());
    ws[0].last_heartbeat = Some(t0 + Duration::from_secs(56));
    assert!(run(1, 1, &ws, later).is_empty());
    ws[0].last_heartbeat = Some(t0 + Duration::from_secs(55));
    assert_eq!(
        run(1, 1, &ws, later),
        vec![Action::Abort(1, ExitReason::Watchdog), Action::Spawn]
    );
}

#[test]
fn draining_workers_are_killed_once_past_their_deadline() {
    let t0 = Instant::now();
    let mut ws = vec![worker(1, 1, WorkerState::Draining, t0)];
    ws[0].kill_deadline = Some(t0 + Duration::from_secs(30));
    assert!(!run(0, 1, &ws, t0 + Duration::from_secs(29)).contains(&Action::Kill(1)));
    assert!(run(0, 1, &ws, t0 + Duration::from_secs(30)).contains(&Action::Kill(1)));
    ws[0].killed = true;
    assert!(!run(0, 1, &ws, t0 + Duration::from_secs(31)).contains(&Action::Kill(1)));
}

#[test]
fn an_old_worker_is_recycled_successor_first() {
    let t0 = Instant::now();
    let mut ws = vec![
        worker(1, 1, WorkerState::Ready, t0),
        worker(2, 1, WorkerState::Ready, t0),
    ];
    ws[0].retire_at = Some(t0 + Duration::from_secs(60));
    let later = t0 + Duration::from_secs(59);
    assert!(run(2, 1, &ws, later).is_empty(), "not due yet");
    let due = t0 + Duration::from_secs(60);
    let a = run(2, 1, &ws, due);
    assert!(a.contains(&Action::Recycle(1, Recycle::Lifetime)), "{a:?}");
    assert_eq!(spawns(&a), 1, "its successor starts in the same pass");
    assert!(
        drains(&a).is_empty(),
        "nothing drains before the successor is ready"
    );
    // Marked: no second recycle; the successor boots, still no drain.
    ws[0].retiring = true;
    ws.push(worker(3, 1, WorkerState::Starting, due));
    let a = run(2, 1, &ws, due);
    assert!(a.is_empty(), "{a:?}");
    // Ready: the retiring one, not the other, drains.
    ws[2].state = WorkerState::Ready;
    assert_eq!(drains(&run(2, 1, &ws, due)), vec![1]);
}

#[test]
fn memory_recycling_needs_enough_samples_in_a_row_and_one_at_a_time() {
    let t0 = Instant::now();
    let mut ws = vec![
        worker(1, 1, WorkerState::Ready, t0),
        worker(2, 1, WorkerState::Ready, t0),
    ];
    ws[0].rss_over = 2;
    ws[1].rss_over = 2;
    assert!(run(2, 1, &ws, t0).is_empty(), "two samples are not three");
    ws[0].rss_over = 3;
    ws[1].rss_over = 3;
    let a = run(2, 1, &ws, t0);
    assert!(a.contains(&Action::Recycle(1, Recycle::Memory)), "{a:?}");
    assert_eq!(spawns(&a), 1, "max-surge 1: one successor at a time");
    let off = Policy {
        rss_samples: None,
        ..policy()
    };
    let view = View {
        desired: 2,
        generation: 1,
        may_spawn: true,
        workers: &ws,
        policy: &off,
    };
    assert!(next_actions(&view, t0).is_empty(), "no limit, no recycling");
}

#[test]
fn jitter_stays_within_its_bound() {
    let max = Duration::from_secs(10);
    assert_eq!(jitter(Duration::ZERO, 12345), Duration::ZERO);
    assert_eq!(jitter(max, 10_000), max);
    assert_eq!(jitter(max, 10_001), Duration::ZERO);
    assert!((0..1000u64).all(|r| jitter(max, r * 7919) <= max));
}

#[test]
fn a_worker_at_its_request_limit_or_stuck_is_recycled() {
    let t0 = Instant::now();
    let mut ws = vec![
        worker(1, 1, WorkerState::Ready, t0),
        worker(2, 1, WorkerState::Ready, t0),
    ];
    ws[0].max_requests = Some(20);
    ws[0].requests = 19;
    assert!(run(2, 1, &ws, t0).is_empty(), "one short of the limit");
    ws[0].requests = 20;
    let a = run(2, 1, &ws, t0);
    assert!(a.contains(&Action::Recycle(1, Recycle::Requests)), "{a:?}");
    assert_eq!(spawns(&a), 1, "successor first");
    assert!(drains(&a).is_empty());
    ws[1].stuck = true;
    let a = run(2, 1, &ws, t0);
    assert!(
        a.contains(&Action::Recycle(2, Recycle::RequestTimeout)),
        "{a:?}"
    );
}

#[test]
fn request_limits_spread_over_the_jitter() {
    assert_eq!(request_limit(100, 0, 987), 100);
    assert_eq!(request_limit(100, 10, 10), 110);
    assert_eq!(request_limit(100, 10, 11), 100);
    assert_eq!(request_limit(u64::MAX, u64::MAX, u64::MAX), u64::MAX);
}
