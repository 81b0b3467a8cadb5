//! The supervision loop's own tests: [`Manager::step`] driven by hand with
//! a fake [`Processes`] that records every start and signal, and tokio's
//! paused clock, so crash backoff, the surge roll, drain order and the
//! shutdown sequence are checked to the millisecond without a process.

use std::sync::{Arc, Mutex};

use nix::sys::signal::Signal as Sig;
use tokio::sync::oneshot;
use tokio::time::advance;

use super::*;
use crate::config::Settings;
use crate::contract::{LimitReason, WorkerState};
use crate::manager::spawn::{SpawnError, SpawnSpec};
use crate::values::BindAddr;

/// What the fake was asked: every pid it handed out, every signal.
#[derive(Debug, Default)]
struct Record {
    spawned: Vec<Pid>,
    signals: Vec<(Pid, Sig)>,
    group_signals: Vec<(Pid, Sig)>,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<Record>>);

/// Fake pids lie above any pid_max (2^22), so a signal that escaped the
/// fake could reach no real process.
const FIRST_PID: i32 = 100_000_000;

impl Processes for Fake {
    fn spawn(&mut self, _: &SpawnSpec<'_>) -> Result<Pid, SpawnError> {
        let mut r = self.0.lock().unwrap();
        let pid = Pid::from_raw(FIRST_PID + r.spawned.len() as i32);
        r.spawned.push(pid);
        Ok(pid)
    }

    fn signal(&mut self, pid: Pid, signal: Sig) {
        self.0.lock().unwrap().signals.push((pid, signal));
    }

    fn signal_group(&mut self, pid: Pid, signal: Sig) {
        self.0.lock().unwrap().group_signals.push((pid, signal));
    }
}

impl Fake {
    fn spawned(&self) -> Vec<Pid> {
        self.0.lock().unwrap().spawned.clone()
    }

    /// Signals sent to single processes since the last call.
    fn take_signals(&self) -> Vec<(Pid, Sig)> {
        std::mem::take(&mut self.0.lock().unwrap().signals)
    }
}

/// A manager with `settings` over the defaults, on an ephemeral loopback port.
fn manager(settings: Settings) -> (Manager, Fake, watch::Receiver<Arc<Snapshot>>) {
    let host = Host {
        cpus: 2,
        web_concurrency: None,
        in_kubernetes: false,
        listen_fds: Vec::new(),
    };
    let cli = Settings {
        bind: Some(vec![BindAddr::Tcp("127.0.0.1:0".parse().unwrap())]),
        ..settings
    };
    let config = Config::resolve(cli.clone(), Settings::default(), &host).unwrap();
    let (tx, rx) = watch::channel(Arc::new(Snapshot::empty(&config)));
    let fake = Fake::default();
    let start = Startup {
        cli,
        config_path: None,
        host,
        config,
        handoff: None,
        admin_fd: -1,
        proxy_metrics: None,
    };
    let m = Manager::new(start, Box::new(fake.clone()), tx).unwrap();
    (m, fake, rx)
}

fn settings(workers: u32) -> Settings {
    Settings {
        workers: Some(workers),
        readiness: Some(crate::config::Readiness::Notify),
        ..Settings::default()
    }
}

/// `settings(workers)` under the settings of a YAML flow mapping.
fn settings_with(workers: u32, yaml: &str) -> Settings {
    Settings::from_yaml(std::path::Path::new("test.yaml"), yaml)
        .unwrap()
        .or(settings(workers))
}

fn ready(m: &mut Manager, pid: Pid) {
    m.on_notify(pid.as_raw(), vec![Message::Ready]);
}

fn state_of(m: &Manager, pid: Pid) -> Option<WorkerState> {
    m.table
        .workers
        .iter()
        .find(|w| w.pid == pid)
        .map(|w| w.facts.state)
}

/// Spawns and readies `n` workers; returns their pids.
fn settled(m: &mut Manager, fake: &Fake) -> Vec<Pid> {
    assert_eq!(m.step(), None);
    let pids = fake.spawned();
    for pid in &pids {
        ready(m, *pid);
    }
    assert_eq!(m.step(), None);
    pids
}

fn scale(m: &mut Manager, desired: Option<u32>) -> Result<(), ScaleError> {
    let (reply, mut rx) = oneshot::channel();
    m.on_command(Command::Scale { desired, reply });
    rx.try_recv().unwrap()
}

/// No new start a millisecond before `wait_ms`, the `starts`th at it.
async fn restarted_after(m: &mut Manager, fake: &Fake, wait_ms: u64, starts: usize) {
    advance(Duration::from_millis(wait_ms - 1)).await;
    assert_eq!(m.step(), None);
    assert_eq!(fake.spawned().len(), starts - 1);
    advance(Duration::from_millis(1)).await;
    assert_eq!(m.step(), None);
    assert_eq!(fake.spawned().len(), starts, "restarted after {wait_ms} ms");
}

#[tokio::test(start_paused = true)]
async fn crashed_workers_come_back_after_a_growing_backoff() {
    let (mut m, fake, _rx) = manager(settings(1));
    let first = settled(&mut m, &fake)[0];
    m.on_exit(first, Some(1), None);
    assert_eq!(m.step(), None);
    assert_eq!(fake.spawned().len(), 1, "no restart before the backoff");
    restarted_after(&mut m, &fake, 100, 2).await;

    // It dies again before it is ever ready: the wait doubles.
    let second = fake.spawned()[1];
    m.on_exit(second, None, Some(9));
    restarted_after(&mut m, &fake, 200, 3).await;
    let doc = m.document();
    assert_eq!(doc.workers[0].restarts, 2);
    assert_eq!(doc.recent_exits[0].exit.reason, ExitReason::Crashed);
    assert_eq!(m.counters.exits.get("crashed"), Some(&2));

    // Readiness ends the crash loop: the next crash waits 100 ms again.
    ready(&mut m, fake.spawned()[2]);
    assert_eq!(m.boots.failures(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_rolling_restart_surges_first_and_drains_only_after_the_new_worker_is_ready() {
    let (mut m, fake, _rx) = manager(settings(2));
    let old = settled(&mut m, &fake);
    fake.take_signals();
    let (reply, mut rx) = oneshot::channel();
    m.on_command(Command::Restart { reply });
    rx.try_recv().unwrap().unwrap();

    assert_eq!(m.step(), None);
    let spawned = fake.spawned();
    assert_eq!(spawned.len(), 3, "one surge worker (max-surge 1)");
    assert!(
        fake.take_signals().is_empty(),
        "nothing drains before it is ready"
    );
    // Still starting after a long while: the old ones keep serving.
    advance(Duration::from_secs(5)).await;
    assert_eq!(m.step(), None);
    assert!(fake.take_signals().is_empty());

    ready(&mut m, spawned[2]);
    assert_eq!(m.step(), None);
    let drained = fake.take_signals();
    assert_eq!(drained.len(), 1, "{drained:?}");
    assert!(old.contains(&drained[0].0) && drained[0].1 == Sig::SIGTERM);
    assert_eq!(m.step(), None);
    assert_eq!(fake.spawned().len(), 4, "the next surge worker");
    assert!(
        fake.take_signals().is_empty(),
        "the other old worker still serves"
    );
    m.on_exit(drained[0].0, Some(0), None);
    ready(&mut m, fake.spawned()[3]);
    assert_eq!(m.step(), None);
    let drained_too = fake.take_signals();
    assert_eq!(drained_too.len(), 1);
    m.on_exit(drained_too[0].0, Some(0), None);
    assert_eq!(m.step(), None);
    let doc = m.document();
    assert_eq!((doc.running, doc.ready, doc.generation), (2, 2, 2));
    assert!(doc.workers.iter().all(|w| w.generation == 2));
    assert_eq!(doc.workers.iter().map(|w| w.restarts).sum::<u32>(), 0);
    assert_eq!(fake.spawned().len(), 4, "no worker more than needed");
}

#[tokio::test(start_paused = true)]
async fn scaling_down_drains_the_idlest_worker_and_kills_it_at_the_deadline() {
    let (mut m, fake, _rx) = manager(settings_with(3, "{graceful-timeout: 10s}"));
    let pids = settled(&mut m, &fake);
    for (w, load) in m.table.workers.iter_mut().zip([0.9, 0.1, 0.5]) {
        w.facts.cpu_recent = load;
    }
    fake.take_signals();
    scale(&mut m, Some(2)).unwrap();
    assert_eq!(m.step(), None);
    assert_eq!(fake.take_signals(), vec![(pids[1], Sig::SIGTERM)]);
    assert_eq!(state_of(&m, pids[1]), Some(WorkerState::Draining));
    assert_eq!(m.document().desired, 2);

    // It does not leave: SIGKILL at the graceful timeout, recorded as killed.
    advance(Duration::from_millis(9_900)).await;
    assert_eq!(m.step(), None);
    assert!(fake.take_signals().is_empty());
    advance(Duration::from_millis(100)).await;
    assert_eq!(m.step(), None);
    assert_eq!(fake.take_signals(), vec![(pids[1], Sig::SIGKILL)]);
    m.on_exit(pids[1], None, Some(9));
    assert_eq!(m.step(), None);
    assert_eq!(m.document().recent_exits[0].exit.reason, ExitReason::Killed);
    assert_eq!(fake.spawned().len(), 3, "a drained slot is not refilled");

    // Beyond the bounds: refused, nothing changes.
    let refused = scale(&mut m, Some(0));
    assert!(matches!(
        refused,
        Err(ScaleError::Limited {
            by: LimitReason::MinWorkers,
            ..
        })
    ));
    assert_eq!(m.document().desired, 2);
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_the_delay_then_stops_everyone_and_exits_when_they_are_gone() {
    let (mut m, fake, rx) = manager(settings_with(
        2,
        "{shutdown-delay: 5s, graceful-timeout: 30s}",
    ));
    let pids = settled(&mut m, &fake);
    fake.take_signals();
    m.begin_shutdown(false);
    assert_eq!(m.step(), None);
    assert!(rx.borrow().doc.shutting_down, "not ready at once");
    assert!(
        fake.take_signals().is_empty(),
        "still serving during the delay"
    );
    assert_eq!(m.listeners.len(), 1);
    assert!(matches!(
        scale(&mut m, Some(3)),
        Err(ScaleError::ShuttingDown)
    ));

    advance(Duration::from_secs(5)).await;
    assert_eq!(m.step(), None);
    let mut stopped = fake.take_signals();
    stopped.sort();
    assert_eq!(
        stopped,
        vec![(pids[0], Sig::SIGTERM), (pids[1], Sig::SIGTERM)]
    );
    assert!(m.listeners.is_empty(), "late connections are refused");
    assert_eq!(fake.spawned().len(), 2, "nothing new during a shutdown");

    m.on_exit(pids[0], Some(0), None);
    advance(Duration::from_secs(30)).await;
    assert_eq!(m.step(), None);
    assert_eq!(fake.take_signals(), vec![(pids[1], Sig::SIGKILL)]);
    m.on_exit(pids[1], None, Some(9));
    assert_eq!(m.step(), Some(0));
    assert_eq!(m.counters.exits.get("drained"), Some(&1));
    assert_eq!(m.counters.exits.get("killed"), Some(&1));
}

#[tokio::test(start_paused = true)]
async fn a_quick_shutdown_during_the_delay_stops_everyone_at_once() {
    let (mut m, fake, _rx) = manager(settings_with(1, "{shutdown-delay: 5s}"));
    let pid = settled(&mut m, &fake)[0];
    fake.take_signals();
    m.begin_shutdown(false);
    assert_eq!(m.step(), None);
    m.begin_shutdown(true);
    assert_eq!(m.step(), None);
    assert_eq!(fake.take_signals(), vec![(pid, Sig::SIGQUIT)]);
    advance(Duration::from_secs(1)).await;
    assert_eq!(m.step(), None);
    assert_eq!(fake.take_signals(), vec![(pid, Sig::SIGKILL)]);
}

#[tokio::test(start_paused = true)]
async fn a_crash_loop_before_any_worker_was_ready_ends_the_manager() {
    let (mut m, fake, _rx) = manager(settings_with(1, "{max-boot-failures: 3}"));
    for _ in 0..2 {
        assert_eq!(m.step(), None);
        let pid = *fake.spawned().last().unwrap();
        m.on_exit(pid, Some(1), None);
        advance(Duration::from_secs(1)).await;
    }
    assert_eq!(m.step(), None);
    let pid = *fake.spawned().last().unwrap();
    m.on_exit(pid, Some(1), None);
    assert_eq!(m.step(), Some(1));
}

#[tokio::test(start_paused = true)]
async fn an_old_worker_is_recycled_after_its_successor_is_ready() {
    let (mut m, fake, _rx) = manager(settings_with(1, "{max-worker-lifetime: 60s}"));
    let old = settled(&mut m, &fake)[0];
    fake.take_signals();
    advance(Duration::from_secs(59)).await;
    assert_eq!(m.step(), None);
    assert_eq!(fake.spawned().len(), 1, "not due yet");
    advance(Duration::from_secs(1)).await;
    assert_eq!(m.step(), None);
    assert_eq!(fake.spawned().len(), 2, "the successor starts first");
    assert!(fake.take_signals().is_empty(), "the old one still serves");
    ready(&mut m, fake.spawned()[1]);
    assert_eq!(m.step(), None);
    assert_eq!(fake.take_signals(), vec![(old, Sig::SIGTERM)]);
    m.on_exit(old, Some(0), None);
    assert_eq!(m.step(), None);
    let doc = m.document();
    assert_eq!(doc.recent_exits[0].exit.reason, ExitReason::Recycled);
    assert_eq!((doc.running, doc.ready, doc.workers[0].restarts), (1, 1, 0));
    assert_eq!(m.counters.exits.get("recycled"), Some(&1));
    assert_eq!(m.boots.failures(), 0, "a recycled worker is no crash");
}
