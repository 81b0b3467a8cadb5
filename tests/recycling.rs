//! Recycling in the shared-socket mode: workers replaced for their age
//! (`--max-worker-lifetime`) or their memory (`--max-worker-memory`), each
//! successor ready before the old worker drains, under load, with real
//! workers: the built-in one loses nothing, and Uvicorn + Django loses at
//! most the connections its own shutdown closes unread (uvicorn #2757).

mod support;

use std::time::Duration;

use corral::contract::{ExitReason, WorkersDoc};
use support::*;

const WAIT: Duration = Duration::from_secs(60);

fn recycled(d: &WorkersDoc) -> usize {
    d.recent_exits
        .iter()
        .filter(|e| e.exit.reason == ExitReason::Recycled)
        .count()
}

/// Runs load through `c` until `n` workers were recycled; returns the report.
fn load_until_recycled(c: &Corral, n: usize) -> Report {
    let load = Load::start(c.http, "/", 4, Duration::from_secs(120));
    load.wait_progress(50, Duration::from_secs(10));
    c.wait_for(&format!("{n} recycled workers"), WAIT, |d| recycled(d) >= n);
    load.wait_progress(50, Duration::from_secs(10));
    load.stop()
}

fn assert_nothing_lost(report: &Report) {
    assert_eq!((report.failed, report.unanswered), (0, 0), "{report:?}");
}

fn assert_recycled_cleanly(c: &Corral, workers: u32) {
    let doc = c.wait_settled(workers, WAIT);
    assert!(
        doc.recent_exits
            .iter()
            .all(|e| matches!(e.exit.reason, ExitReason::Recycled | ExitReason::Drained)),
        "{:#?}",
        doc.recent_exits
    );
    assert!(doc.workers.iter().all(|w| w.restarts == 0), "{doc:#?}");
    let (_, text) = get(c.admin, "/metrics").unwrap();
    let recycled = metrics::value(
        &text,
        "corral_worker_exits_total",
        &[("reason", "recycled")],
    );
    assert!(recycled.is_some_and(|n| n > 0.0), "{text}");
}

#[test]
fn builtin_workers_past_their_lifetime_are_replaced_without_a_failed_request() {
    let _heavy = heavy();
    let c = corral()
        .flags("-w 2 --max-worker-lifetime 2 --max-worker-lifetime-jitter 1")
        .start();
    c.wait_settled(2, WAIT);
    let report = load_until_recycled(&c, 4);
    assert_nothing_lost(&report);
    assert!(report.ok > 100, "{report:?}");
    assert_recycled_cleanly(&c, 2);
    assert!(c.log().contains("recycling worker"), "{}", c.log());
}

#[test]
fn builtin_workers_over_the_memory_limit_are_replaced_without_a_failed_request() {
    let _heavy = heavy();
    // Every worker is over 1 MiB: each is recycled after two samples.
    let c = corral()
        .flags("-w 2 --max-worker-memory 1Mi --rss-samples 2")
        .start();
    let report = load_until_recycled(&c, 2);
    assert_nothing_lost(&report);
    assert!(c.log().contains("max-worker-memory"), "{}", c.log());
    let doc = c.workers().unwrap();
    assert!(doc.workers.iter().all(|w| w.restarts == 0), "{doc:#?}");
}

#[test]
fn uvicorn_workers_are_recycled_by_lifetime() {
    let _heavy = heavy();
    let c = corral()
        .django()
        .args(&["-w", "2", "--max-worker-lifetime", "3"])
        .start();
    c.wait_settled(2, WAIT);
    let report = load_until_recycled(&c, 2);
    assert_eq!(report.failed, 0, "{report:?}");
    // Each drained Uvicorn may close what it accepted and had not read.
    assert!(report.unanswered <= 4, "{report:?}");
    assert_recycled_cleanly(&c, 2);
}
