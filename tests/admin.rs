//! The admin API of a real manager: probe semantics through start-up,
//! scale-down and shutdown; auth and bad input on every changing route;
//! the memory guard under a real cgroup limit; the listen queue measured
//! from the kernel; the pod's saturation at and past its ceiling; metrics
//! checked by promtool; the CLI clients.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use corral::contract::{ErrorDoc, LimitReason, WorkersDoc};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::*;

const SETTLE: Duration = Duration::from_secs(30);
const TOKEN: &str = "s3cret-token-for-the-tests";

fn put(admin: SocketAddr, token: Option<&str>, body: &str) -> (u16, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    request(admin, "PUT", "/workers", &headers, body).unwrap()
}

fn error_doc(body: &str) -> ErrorDoc {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[test]
fn readiness_follows_boot_scale_down_and_shutdown() {
    let _heavy = heavy();
    let mut c = corral()
        .flags("-w 2 --readiness auto --boot-grace 1500ms --shutdown-delay 3s")
        .command(&["sh", "-c", "exec sleep 600"])
        .start();
    wait_http(c.admin, "/livez", SETTLE);
    let (status, body) = get(c.admin, "/readyz").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("booting"), "{body}");
    c.wait_settled(2, SETTLE);
    assert_eq!(get(c.admin, "/readyz").unwrap().0, 200);
    // Scaling down never makes the pod unready: ready at every check
    // until one worker runs, and after.
    c.signal(Signal::SIGTTOU);
    eventually("one running worker", SETTLE, || {
        assert_eq!(get(c.admin, "/readyz").unwrap().0, 200);
        match c.workers().unwrap() {
            d if d.running == 1 => Ok(()),
            d => Err(Box::new(d)),
        }
    });
    assert_eq!(get(c.admin, "/readyz").unwrap().0, 200);
    c.signal(Signal::SIGTERM);
    let body = not_ready_within(c.admin, Duration::from_secs(3));
    assert!(body.contains("shutting down"), "{body}");
    // Live, and the API still answers, all through the delay.
    assert_eq!(get(c.admin, "/livez").unwrap().0, 200);
    assert!(c.wait_exit(SETTLE).success());
}

/// Anyone who can reach the admin port could fill its 64 connections with
/// silence; the kubelet's probes (1 s timeout) must still be answered,
/// and the silent connections closed.
#[test]
fn silent_connections_to_the_admin_port_never_starve_the_probes() {
    let c = corral().flags("-w 1").start();
    c.wait_settled(1, SETTLE);
    let silent: Vec<std::net::TcpStream> = (0..100)
        .map(|_| std::net::TcpStream::connect(c.admin).unwrap())
        .collect();
    for path in ["/livez", "/readyz", "/livez", "/readyz", "/workers"] {
        let started = std::time::Instant::now();
        let (code, _) = get(c.admin, path).unwrap();
        assert_eq!(code, 200, "{path}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{path} took {:?} behind 100 silent connections",
            started.elapsed()
        );
    }
    // Each is closed by the 10-s header timeout, if not made room of before.
    for mut s in silent {
        use std::io::Read;
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut buf = [0u8; 1];
        assert!(
            matches!(s.read(&mut buf), Ok(0)),
            "a silent connection stayed open"
        );
    }
}

#[test]
fn changes_are_refused_without_a_configured_token() {
    let c = corral().args(&["-w", "1"]).start();
    c.wait_settled(1, SETTLE);
    let (status, body) = put(c.admin, Some(TOKEN), r#"{"desired": 2}"#);
    assert_eq!(status, 403, "{body}");
    assert!(error_doc(&body).error.contains("--admin-token-file"));
    assert_eq!(
        request(c.admin, "POST", "/workers/restart", &[], "")
            .unwrap()
            .0,
        403
    );
    assert_eq!(c.workers().unwrap().desired, 1);
}

#[test]
fn bad_requests_get_clear_errors_and_change_nothing() {
    let c = corral()
        .flags("-w 2 --min-workers 1 --max-workers 4")
        .token(TOKEN)
        .start();
    let before = c.wait_settled(2, SETTLE);
    let cases: &[(Option<&str>, &str, u16)] = &[
        (None, r#"{"desired": 3}"#, 401),
        (Some("wrong-token-wrong-token"), r#"{"desired": 3}"#, 401),
        (Some(TOKEN), "{desired: 3", 400),
        (Some(TOKEN), "", 400),
        (Some(TOKEN), r#"{"desired": "three"}"#, 422),
        (Some(TOKEN), r#"{"desired": -1}"#, 422),
        (Some(TOKEN), r#"{}"#, 422),
        (Some(TOKEN), r#"{"desired": 3, "extra": 1}"#, 422),
        (Some(TOKEN), "[3]", 422),
        (Some(TOKEN), "[null]", 422),
        (Some(TOKEN), r#"{"desired": 0}"#, 422),
        (Some(TOKEN), r#"{"desired": 5}"#, 422),
    ];
    for (token, body, want) in cases {
        let (status, answer) = put(c.admin, *token, body);
        assert_eq!(status, *want, "{body}: {answer}");
        assert!(!error_doc(&answer).error.is_empty());
    }
    let (_, answer) = put(c.admin, Some(TOKEN), r#"{"desired": 5}"#);
    let e = error_doc(&answer);
    assert_eq!(
        (e.limited_by, e.limit),
        (Some(LimitReason::MaxWorkers), Some(4)),
        "{answer}"
    );
    let (_, answer) = put(c.admin, Some(TOKEN), r#"{"desired": 0}"#);
    assert_eq!(error_doc(&answer).limited_by, Some(LimitReason::MinWorkers));
    let big = format!(r#"{{"desired": 3, "pad": "{}"}}"#, "x".repeat(70_000));
    assert_eq!(put(c.admin, Some(TOKEN), &big).0, 413);
    assert_eq!(
        request(c.admin, "DELETE", "/workers", &[], "").unwrap().0,
        405
    );
    assert_eq!(get(c.admin, "/nope").unwrap().0, 404);
    // Nothing changed.
    let after = c.workers().unwrap();
    assert_eq!(
        (after.desired, after.requested, after.generation),
        (2, None, before.generation)
    );
    assert_eq!(after.workers.len(), 2);
}

#[test]
fn put_and_restart_change_the_workers() {
    let c = corral().flags("-w 2").token(TOKEN).start();
    let before = c.wait_settled(2, SETTLE);
    let (status, body) = put(c.admin, Some(TOKEN), r#"{"desired": 3}"#);
    assert_eq!(status, 200, "{body}");
    let doc: WorkersDoc = serde_json::from_str(&body).unwrap();
    assert_eq!((doc.desired, doc.requested), (3, Some(3)));
    c.wait_settled(3, SETTLE);
    let (status, _) = put(c.admin, Some(TOKEN), r#"{"desired": null}"#);
    assert_eq!(status, 200);
    c.wait_settled(2, SETTLE);
    let auth = format!("Bearer {TOKEN}");
    let (status, body) = request(
        c.admin,
        "POST",
        "/workers/restart",
        &[("Authorization", &auth)],
        "",
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    c.wait_for("the restart", SETTLE, |d| {
        d.generation == before.generation + 1
            && d.ready == 2
            && d.running == 2
            && d.workers.iter().all(|w| w.generation == d.generation)
    });
}

#[test]
fn changes_during_shutdown_are_a_conflict() {
    let mut c = corral()
        .flags("-w 1 --shutdown-delay 3s")
        .token(TOKEN)
        .start();
    c.wait_settled(1, SETTLE);
    c.signal(Signal::SIGTERM);
    c.wait_for("the shutdown to show", Duration::from_secs(2), |d| {
        d.shutting_down
    });
    let (status, body) = put(c.admin, Some(TOKEN), r#"{"desired": 2}"#);
    assert_eq!(status, 409, "{body}");
    assert!(c.wait_exit(SETTLE).success());
}

#[test]
fn memory_guard_refuses_growth_past_the_flag_limit() {
    let c = corral()
        .flags("-w 1 --max-workers 64 --memory-limit 96Mi")
        .token(TOKEN)
        .start();
    c.wait_settled(1, SETTLE);
    let doc = c.wait_for("a measured worker", SETTLE, |d| {
        d.limits.memory_cap.is_some()
    });
    let cap = doc.limits.memory_cap.unwrap();
    assert_eq!(doc.limits.memory_limit_source.as_deref(), Some("flag"));
    assert_eq!(doc.limits.memory_limit_bytes, Some(96 << 20));
    assert!((1..64).contains(&cap), "{doc:#?}");
    let (status, body) = put(
        c.admin,
        Some(TOKEN),
        &format!(r#"{{"desired": {}}}"#, cap + 1),
    );
    assert_eq!(status, 422, "{body}");
    let e = error_doc(&body);
    assert_eq!(e.limited_by, Some(LimitReason::MemoryGuard), "{body}");
    assert!(e.error.contains("MemoryGuard"), "{body}");
    let doc = c.workers().unwrap();
    assert_eq!(
        doc.last_limited.as_ref().map(|l| l.by),
        Some(LimitReason::MemoryGuard)
    );
    assert_eq!(doc.desired, 1);
}

/// A child cgroup (v1, as on these machines; v2 where unified) with limits,
/// removed on drop once empty.
struct Cgroup {
    dirs: Vec<PathBuf>,
}

impl Cgroup {
    fn new(memory: u64, cpu_quota_us: u64) -> Cgroup {
        let name = unique("corral-test");
        let root = Path::new("/sys/fs/cgroup");
        let dirs = if root.join("cgroup.controllers").exists() {
            let dir = root.join(&name);
            std::fs::create_dir(&dir).expect("create a cgroup (tests run as root)");
            std::fs::write(dir.join("memory.max"), memory.to_string()).unwrap();
            std::fs::write(dir.join("cpu.max"), format!("{cpu_quota_us} 100000")).unwrap();
            vec![dir]
        } else {
            let mem = root.join("memory").join(&name);
            let cpu = root.join("cpu").join(&name);
            std::fs::create_dir(&mem).expect("create a memory cgroup (tests run as root)");
            std::fs::create_dir(&cpu).expect("create a cpu cgroup");
            std::fs::write(mem.join("memory.limit_in_bytes"), memory.to_string()).unwrap();
            std::fs::write(cpu.join("cpu.cfs_period_us"), "100000").unwrap();
            std::fs::write(cpu.join("cpu.cfs_quota_us"), cpu_quota_us.to_string()).unwrap();
            vec![mem, cpu]
        };
        Cgroup { dirs }
    }

    /// A shell prefix that moves itself into the cgroup, then execs the rest.
    fn wrapper(&self) -> Vec<String> {
        let joins: String = self
            .dirs
            .iter()
            .map(|d| format!("echo $$ > {}/cgroup.procs; ", d.display()))
            .collect();
        vec![
            "sh".into(),
            "-c".into(),
            format!("{joins}exec \"$@\""),
            "sh".into(),
        ]
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Once its processes are gone; a cgroup left behind fails nothing.
        for d in &self.dirs {
            if !std::thread::panicking() {
                eventually(
                    &format!("{} to be removable", d.display()),
                    Duration::from_secs(5),
                    || std::fs::remove_dir(d),
                );
            } else {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

#[test]
fn cgroup_limits_set_the_default_count_and_the_memory_guard() {
    let limit: u64 = 64 << 20;
    let cg = Cgroup::new(limit, 150_000);
    let wrapper = cg.wrapper();
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let c = corral()
        .wrapped(&wrapper)
        .flags("--max-workers 64")
        .token(TOKEN)
        .start();
    // 1.5 CPUs of quota: two workers by default.
    let doc = c.wait_settled(2, SETTLE);
    assert_eq!(doc.configured, 2, "{doc:#?}");
    assert_eq!(doc.cgroup.cpu_quota_cores, Some(1.5));
    let doc = c.wait_for("a measured worker", SETTLE, |d| {
        d.limits.memory_cap.is_some() && d.cgroup.memory_usage_bytes.is_some()
    });
    assert_eq!(doc.cgroup.memory_limit_bytes, Some(limit));
    assert_eq!(doc.limits.memory_limit_source.as_deref(), Some("cgroup"));
    let cap = doc.limits.memory_cap.unwrap();
    assert!(cap < 64, "{doc:#?}");
    let (status, body) = put(
        c.admin,
        Some(TOKEN),
        &format!(r#"{{"desired": {}}}"#, cap.max(2) + 1),
    );
    assert_eq!(status, 422, "{body}");
    assert_eq!(error_doc(&body).limited_by, Some(LimitReason::MemoryGuard));
    let (_, text) = get(c.admin, "/metrics").unwrap();
    assert_eq!(
        metrics::value(&text, "corral_cgroup_memory_limit_bytes", &[]),
        Some(limit as f64),
        "{text}"
    );
    drop(c);
}

#[test]
fn the_listen_queue_is_measured_while_workers_cannot_accept() {
    let _heavy = heavy();
    let c = corral().args(&["-w", "1", "--max-workers", "1"]).start();
    let doc = c.wait_settled(1, SETTLE);
    let worker = Pid::from_raw(doc.workers[0].pid);
    kill(worker, Signal::SIGSTOP).unwrap();
    let mut clients = queued_requests(c.http, 5);
    let queued = c.wait_for("a queue of 5", SETTLE, |d| {
        d.listeners[0].queue_length == Some(5)
    });
    assert_eq!(queued.listeners[0].queue_max_window, Some(5));
    let (_, text) = get(c.admin, "/metrics").unwrap();
    let listener = c.http.to_string();
    assert_eq!(
        metrics::value(
            &text,
            "corral_listen_queue_length",
            &[("listener", &listener)]
        ),
        Some(5.0),
        "{text}"
    );
    // Without a proxy each waiting connection is a worker's worth of
    // demand, against a ceiling of one.
    until_saturation(&c, 5.0..=5.1, "saturation from the accept queue");
    kill(worker, Signal::SIGCONT).unwrap();
    c.wait_for("the queue to drain", SETTLE, |d| {
        d.listeners[0].queue_length == Some(0)
    });
    assert_answered(&mut clients);
}

/// The pod's saturation, read from a scrape.
fn saturation(c: &Corral) -> Result<f64, String> {
    let (_, text) = get(c.admin, "/metrics").map_err(|e| e.to_string())?;
    metrics::value(&text, "corral_pod_saturation", &[]).ok_or(text)
}

/// Waits until the pod's saturation is within `range`.
fn until_saturation(c: &Corral, range: std::ops::RangeInclusive<f64>, what: &str) -> f64 {
    eventually(what, SETTLE, || match saturation(c)? {
        s if range.contains(&s) => Ok(s),
        s => Err(format!("{s}")),
    })
}

#[test]
fn saturation_reaches_one_at_the_ceiling_and_passes_it_while_requests_queue() {
    let _heavy = heavy();
    let c = corral()
        .flags("--proxy -w 1 --max-workers 1 --worker-concurrency 1")
        .start();
    c.wait_settled(1, SETTLE);
    until_saturation(&c, 0.0..=0.1, "an idle pod");
    let mut held = sent_requests(c.http, "/delay/6000", 1);
    eventually("the request in the worker", SETTLE, || {
        match c.try_workers()?.workers[0].in_flight {
            Some(1) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    until_saturation(&c, 1.0..=1.1, "the one worker it may run busy");
    let mut queued = sent_requests(c.http, "/delay/10", 3);
    // One worker busy and three requests' worth waiting for it.
    until_saturation(&c, 4.0..=4.1, "requests queued at the ceiling");
    assert_answered(&mut held);
    assert_answered(&mut queued);
    until_saturation(&c, 0.0..=0.1, "the pod idle again");
}

#[test]
fn metrics_pass_promtool_and_name_what_design_promises() {
    let c = corral().args(&["-w", "2"]).start();
    c.wait_settled(2, SETTLE);
    // One exit of each kind we can cause cheaply: a crash.
    let victim = c.workers().unwrap().workers[0].pid;
    kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    c.wait_for("the replacement", SETTLE, |d| {
        d.ready == 2 && d.workers.iter().all(|w| w.pid != victim)
    });
    // (name, labels, value): the exact sample; (name, label keys, None):
    // some sample of that name carrying those labels.
    type Labels<'a> = &'a [(&'a str, &'a str)];
    let values: [(&str, Labels, f64); 4] = [
        ("corral_workers", &[("state", "ready")], 2.0),
        ("corral_workers_desired", &[], 2.0),
        ("corral_worker_starts_total", &[], 3.0),
        ("corral_worker_exits_total", &[("reason", "crashed")], 1.0),
    ];
    let present: [(&str, &[&str]); 5] = [
        ("corral_worker_cpu_seconds_total", &["worker"]),
        ("corral_worker_resident_memory_bytes", &["worker"]),
        ("corral_listen_queue_length", &["listener"]),
        ("corral_build_info", &["version"]),
        ("corral_process_resident_memory_bytes", &[]),
    ];
    let missing = |text: &str| -> Vec<String> {
        let wrong = values
            .iter()
            .filter(|(name, labels, v)| metrics::value(text, name, labels) != Some(*v))
            .map(|(name, labels, v)| format!("{name}{labels:?} {v}"));
        let absent = present
            .iter()
            .filter(|(name, keys)| !metrics::has(text, name, keys))
            .map(|(name, keys)| format!("{name}{keys:?}"));
        wrong.chain(absent).collect()
    };
    // The per-worker series follow the next probe of the replacement.
    let metrics = eventually("every promised series", SETTLE, || {
        let (status, text) = get(c.admin, "/metrics").unwrap();
        assert_eq!(status, 200);
        match missing(&text) {
            m if m.is_empty() => Ok(text),
            m => Err(Text(format!("missing {m:?} in:\n{text}"))),
        }
    });
    let (ok, report) = run_with_stdin(
        Command::new("promtool").args(["check", "metrics"]),
        metrics.as_bytes(),
    );
    assert!(ok, "promtool: {report}");
}

#[test]
fn openapi_describes_the_served_routes() {
    let c = corral().args(&["-w", "1"]).start();
    wait_http(c.admin, "/livez", SETTLE);
    let (status, body) = get(c.admin, "/openapi.json").unwrap();
    assert_eq!(status, 200);
    let spec: serde_json::Value = serde_json::from_str(&body).unwrap();
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            if method == "get" {
                assert_ne!(get(c.admin, path).unwrap().0, 404, "{path}");
            }
        }
    }
}

#[test]
fn the_cli_clients_show_and_change_a_running_manager() {
    let token = TokenFile::new(TOKEN);
    let c = corral()
        .args(&["-w", "2", "--admin-token-file", token.path()])
        .start();
    c.wait_settled(2, SETTLE);
    let admin = c.admin.to_string();
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .args(["--admin", &admin])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, table, _) = run(&["status"]);
    assert_eq!(code, Some(0));
    assert!(
        table.contains("desired 2") && table.contains("ready"),
        "{table}"
    );
    let (code, json, _) = run(&["status", "--json"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        serde_json::from_str::<WorkersDoc>(&json).unwrap().desired,
        2
    );
    let (code, _, err) = run(&["scale", "3"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("403") || err.contains("401"), "{err}");
    let (code, out, err) = run(&["scale", "3", "--token-file", token.path()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("desired 3"), "{out}");
    c.wait_settled(3, SETTLE);
    let (code, _, err) = run(&["scale", "99", "--token-file", token.path()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("422"), "{err}");
    let (code, _, err) = run(&["scale", "many", "--token-file", token.path()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("many"), "{err}");
    let (code, out, err) = run(&["restart", "--token-file", token.path()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("generation 2"), "{out}");
    let (_held, port) = refusing_port();
    let (code, _, err) = Command::new(BIN)
        .args(["status", "--admin", &format!("127.0.0.1:{port}")])
        .output()
        .map(|o| {
            (
                o.status.code(),
                (),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .unwrap();
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot reach"), "{err}");
}

/// Schemathesis generates requests from /openapi.json (valid and invalid)
/// and checks every answer: no 5xx, only documented status codes and
/// content types, bodies matching their schemas, auth enforced. Skipped
/// check: "schema-valid requests are accepted", because which counts are
/// accepted depends on runtime limits that the 422 answer documents.
#[test]
fn schemathesis_finds_nothing_wrong_with_the_admin_api() {
    let _heavy = heavy();
    let c = corral().flags("-w 2 --max-workers 4").token(TOKEN).start();
    c.wait_settled(2, SETTLE);
    let work = std::env::temp_dir().join(format!("corral-st-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let out = Command::new(venv().join("bin/st"))
        .current_dir(&work)
        .args([
            "run",
            &format!("http://{}/openapi.json", c.admin),
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "-H",
            &format!("Authorization: Bearer {TOKEN}"),
            "--max-time",
            "30",
            "--workers",
            "1",
        ])
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&work);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("passed"), "{report}");
    assert_eq!(get(c.admin, "/livez").unwrap().0, 200);
}
