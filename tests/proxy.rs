//! Proxy mode (`corral run --proxy`) driven as a user would: Uvicorn
//! serving Django behind corral's front, two load generators at once (one
//! fresh connection per request, and keep-alive connections held across
//! everything) counting every failure, and real signals, API calls and
//! kills. In this mode nothing may fail at all: no reset, no 5xx.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use corral::contract::{ExitReason, WorkerState, WorkersDoc};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::*;

const SETTLE: Duration = Duration::from_secs(40);
const TOKEN: &str = "s3cret-token-for-the-proxy-tests";

fn proxied(flags: &str) -> Corral {
    corral().flags("--proxy").flags(flags).django().start()
}

/// [`proxied`], once its `n` workers are ready.
fn proxied_ready(flags: &str, n: u32) -> Corral {
    let c = proxied(flags);
    c.wait_settled(n, SETTLE);
    c
}

/// Waits until the first worker has `n` requests in flight.
fn until_in_flight(c: &Corral, n: u32, what: &str) {
    eventually(what, SETTLE, || {
        match c.try_workers()?.workers[0].in_flight {
            Some(k) if k == n => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
}

/// `n` GETs of `/`, each answered 200.
fn answered_ok(c: &Corral, n: usize) {
    for _ in 0..n {
        assert_eq!(get(c.http, "/").unwrap().0, 200);
    }
}

fn pids(doc: &WorkersDoc) -> Vec<i32> {
    doc.workers.iter().map(|w| w.pid).collect()
}

/// Both kinds of client at once, three threads each.
struct Loads {
    fresh: Load,
    kept: Load,
}

impl Loads {
    /// Once `n` workers are settled, both loads on `/`.
    fn on_settled(c: &Corral, n: u32) -> Loads {
        c.wait_settled(n, SETTLE);
        Loads::start(c, "/")
    }

    fn start(c: &Corral, path: &str) -> Loads {
        let limit = Duration::from_secs(180);
        let loads = Loads {
            fresh: Load::start(c.http, path, 3, limit),
            kept: Load::start_keep_alive(c.http, path, 3, limit),
        };
        loads.progress();
        loads
    }

    /// Both are flowing: each answered more since the last look.
    fn progress(&self) {
        self.fresh.wait_progress(30, Duration::from_secs(20));
        self.kept.wait_progress(30, Duration::from_secs(20));
    }

    /// Stops both; not one request may have failed.
    fn stop_clean(self, c: &Corral) -> u64 {
        let fresh = self.fresh.stop();
        let kept = self.kept.stop();
        for (kind, r) in [("fresh connections", &fresh), ("keep-alive", &kept)] {
            assert!(
                r.failed == 0 && r.unanswered == 0,
                "{kind}: {r:?}\n{}",
                c.log()
            );
            assert!(r.ok > 50, "{kind}: too little load to tell: {r:?}");
            eprintln!("{kind}: {} ok, 0 failed", r.ok);
        }
        fresh.ok + kept.ok
    }
}

/// Writes `head` (a whole request, `Connection: close`) on a fresh
/// connection and reads the answer to its end.
fn exchange(addr: SocketAddr, head: &str) -> String {
    exchange_on(&mut TcpStream::connect(addr).unwrap(), head)
}

/// [`exchange`] on a connection already made.
fn exchange_on(s: &mut TcpStream, head: &str) -> String {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    read_all(s).unwrap()
}

fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer:?}"))
}

#[test]
fn hup_three_times_rolls_the_workers_with_no_failed_request() {
    let _heavy = heavy();
    let c = proxied("-w 2");
    let before = c.wait_settled(2, SETTLE);
    let loads = Loads::start(&c, "/");
    for generation in [2, 3, 4] {
        c.signal(Signal::SIGHUP);
        c.wait_generation(generation, 2, SETTLE);
        loads.progress();
    }
    loads.stop_clean(&c);
    let after = c.workers().unwrap();
    assert!(pids(&after).iter().all(|p| !pids(&before).contains(p)));
    // Each old worker was stopped only once idle: drained, not killed.
    assert!(
        after
            .recent_exits
            .iter()
            .all(|e| e.exit.reason == ExitReason::Drained),
        "{:#?}",
        after.recent_exits
    );
}

#[test]
fn ttou_five_times_scales_down_with_no_failed_request() {
    let _heavy = heavy();
    let c = proxied("-w 6");
    let loads = Loads::on_settled(&c, 6);
    for n in (1..=5).rev() {
        c.signal(Signal::SIGTTOU);
        c.wait_settled(n, SETTLE);
        loads.progress();
    }
    loads.stop_clean(&c);
}

#[test]
fn put_workers_down_drops_no_request() {
    let _heavy = heavy();
    let c = corral().flags("--proxy -w 3").token(TOKEN).django().start();
    let loads = Loads::on_settled(&c, 3);
    let auth = format!("Bearer {TOKEN}");
    let (code, body) = request(
        c.admin,
        "PUT",
        "/workers",
        &[("Authorization", auth.as_str())],
        r#"{"desired": 1}"#,
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    c.wait_settled(1, SETTLE);
    loads.progress();
    loads.stop_clean(&c);
}

#[test]
fn max_requests_recycles_workers_under_load_with_no_failed_request() {
    let _heavy = heavy();
    let c = proxied("-w 2 --max-requests 20 --max-requests-jitter 5");
    let loads = Loads::on_settled(&c, 2);
    let doc = c.wait_for("six workers recycled", SETTLE, |d| {
        d.recent_exits
            .iter()
            .filter(|e| e.exit.reason == ExitReason::Recycled)
            .count()
            >= 6
    });
    loads.progress();
    loads.stop_clean(&c);
    // Recycled, oldest first: no worker outlives the others' turns.
    let first = doc.recent_exits.iter().map(|e| e.id).collect::<Vec<_>>();
    assert!(
        first.contains(&1) && first.contains(&2),
        "both slots recycled: {first:?}"
    );
    let reasons = log_fields(
        &c.log(),
        "recycling worker: its successor starts first",
        "reason",
    );
    assert!(reasons.iter().all(|r| r == "max-requests"), "{reasons:?}");
}

#[test]
fn a_worker_killed_five_times_under_get_load_fails_no_request() {
    let _heavy = heavy();
    let c = proxied("-w 2");
    // Answers with a length: the front reads each whole before the client
    // gets a byte, so a killed worker's requests all go elsewhere. A
    // chunked answer (Django's, through Uvicorn, without CommonMiddleware)
    // is sent on after a 2 ms read-ahead, and a worker killed after that
    // has begun its client's answer: no proxy can retry it, so counting
    // none as failed would pass only by timing.
    c.wait_settled(2, SETTLE);
    let loads = Loads::start(&c, "/sized");
    for _ in 0..5 {
        let doc = c.workers().unwrap();
        let victim = doc.workers[0].pid;
        kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
        c.wait_for("a replacement ready", SETTLE, |d| {
            d.ready == 2 && d.running == 2 && !pids(d).contains(&victim)
        });
        loads.progress();
    }
    loads.stop_clean(&c);
    let metrics = get(c.admin, "/metrics").unwrap().1;
    let retries = metrics::sum(&metrics, "corral_http_retries_total");
    eprintln!("retried {retries} requests across five kills");
    assert!(
        retries > 0.0,
        "kills under load must have cost some requests a retry"
    );
    let doc = c.workers().unwrap();
    assert_eq!(
        doc.recent_exits
            .iter()
            .filter(|e| e.exit.reason == ExitReason::Crashed)
            .count(),
        5
    );
}

#[test]
fn term_finishes_slow_requests_then_refuses_late_connections() {
    let _heavy = heavy();
    let mut c = proxied("-w 2 --shutdown-delay 3s --graceful-timeout 20s");
    let loads = Loads::on_settled(&c, 2);
    let mut slow = sent_requests(c.http, "/delay/4000", 3);
    eventually("the slow requests in the workers' hands", SETTLE, || {
        let d = c.try_workers()?;
        match d.workers.iter().filter_map(|w| w.in_flight).sum::<u32>() {
            n if n >= 3 => Ok(()),
            n => Err(format!("{n} in flight")),
        }
    });
    c.signal(Signal::SIGTERM);
    let body = not_ready_within(c.admin, Duration::from_secs(3));
    assert!(body.contains("shutting down"), "{body}");
    // Kubernetes stops routing during the delay: so does the load.
    loads.progress();
    loads.stop_clean(&c);
    wait_text(
        "the front to stop accepting",
        SETTLE,
        "front: no new connections",
        || c.log(),
    );
    // Late clients are refused outright, never queued and reset. The
    // listener closes once the front has taken in what was queued: a
    // client that still got in before that is answered.
    eventually(
        "late connections refused",
        SETTLE,
        || match TcpStream::connect(c.http) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            Err(e) => panic!("a late client failed otherwise: {e}"),
            Ok(mut s) => {
                let answer = exchange_on(&mut s, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
                assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
                Err("still accepting")
            }
        },
    );
    for s in &mut slow {
        let answer = read_all(s).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("slept 4000ms"), "{answer}");
    }
    let status = c.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", c.log());
}

#[test]
fn queue_overflow_is_answered_503_with_retry_after_never_a_reset() {
    let _heavy = heavy();
    let c = proxied_ready("-w 1 --worker-concurrency 1 --max-queue 2", 1);
    let mut held = sent_requests(c.http, "/delay/2000", 1);
    until_in_flight(&c, 1, "the first request in the worker");
    let mut queued = sent_requests(c.http, "/delay/10", 2);
    eventually("two requests queued", SETTLE, || {
        match c.try_workers()?.queued {
            Some(2) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let mut over = sent_requests(c.http, "/", 5);
    for s in &mut over {
        let answer = read_all(s).unwrap();
        assert_eq!(status_of(&answer), 503, "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("retry-after: 1"),
            "{answer}"
        );
    }
    for s in held.iter_mut().chain(queued.iter_mut()) {
        let answer = read_all(s).unwrap();
        assert_eq!(status_of(&answer), 200, "{answer}");
    }
    let metrics = get(c.admin, "/metrics").unwrap().1;
    assert_eq!(
        metrics::requests(&metrics, "503", "GET", "http/1.1"),
        Some(5.0),
        "{metrics}"
    );
    assert!(metrics::sum(&metrics, "corral_http_queue_wait_seconds_count") >= 3.0);
}

#[test]
fn a_request_that_waits_past_the_queue_timeout_gets_503() {
    let c = proxied_ready("-w 1 --worker-concurrency 1 --queue-timeout 500ms", 1);
    let mut held = sent_requests(c.http, "/delay/3000", 1);
    until_in_flight(&c, 1, "the first request in the worker");
    let started = Instant::now();
    let answer = exchange(
        c.http,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&answer), 503, "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(450));
    assert_answered(&mut held);
}

#[test]
fn a_slow_booting_worker_is_ready_when_it_answers_and_requests_wait_for_it() {
    let uvicorn = venv().join("bin/uvicorn");
    let mut c = corral()
        .args(&["--proxy", "-w", "1"])
        .env("SLOW_BOOT", "3")
        .cwd(django_dir())
        .command(&[
            uvicorn.to_str().unwrap(),
            "--fd",
            "{fd}",
            "--log-level",
            "warning",
            "slow_boot:application",
        ])
        .start();
    // Alive well past the 1-s boot grace a shared-socket manager would
    // go by, and still not ready: it does not answer on its socket yet.
    std::thread::sleep(Duration::from_millis(1500));
    let (code, body) = get(c.admin, "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    // A request now waits in corral's queue, then is served.
    let early = in_background(c.http, "/");
    let doc = c.wait_settled(1, SETTLE);
    assert_eq!(doc.workers[0].state, WorkerState::Ready);
    let (code, body) = early.join().unwrap().unwrap();
    assert_eq!((code, body.as_str()), (200, "hello from django\n"));
    assert!(c.log().contains("worker ready (answers on its socket)"));
    let status = {
        c.signal(Signal::SIGTERM);
        c.wait_exit(SETTLE)
    };
    assert!(status.success());
}

#[test]
fn a_stuck_request_gets_504_and_kill_stuck_recycles_its_worker() {
    let c = proxied("-w 2 --request-timeout 1s --kill-stuck");
    let before = c.wait_settled(2, SETTLE);
    let answer = exchange(
        c.http,
        "GET /delay/5000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&answer), 504, "{answer}");
    let after = c.wait_for("the stuck worker replaced", SETTLE, |d| {
        d.ready == 2
            && d.running == 2
            && d.recent_exits
                .iter()
                .any(|e| e.exit.reason == ExitReason::Recycled)
    });
    assert_eq!(
        pids(&after)
            .iter()
            .filter(|p| pids(&before).contains(p))
            .count(),
        1,
        "only the stuck one goes"
    );
    assert_eq!(get(c.http, "/").unwrap().0, 200);
}

#[test]
fn forwarded_headers_are_set_and_trusted_only_from_allowed_peers() {
    let ask = |c: &Corral| {
        exchange(
            c.http,
            "GET /forwarded HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\nX_Forwarded_For: 6.6.6.6\r\nX-Real-IP: 203.0.113.9\r\nConnection: close\r\n\r\n",
        )
    };
    // Loopback is trusted by default, as with Gunicorn and Uvicorn.
    let c = proxied_ready("-w 1", 1);
    let answer = ask(&c);
    assert!(answer.contains("for=203.0.113.9, 127.0.0.1\n"), "{answer}");
    assert!(answer.contains("proto=https\n"), "{answer}");
    assert!(answer.contains("host=shop.example\n"), "{answer}");
    assert!(answer.contains("real-ip=203.0.113.9\n"), "{answer}");
    assert!(
        answer.contains("forwarded=for=127.0.0.1;proto=http;host=\"shop.example\"\n"),
        "{answer}"
    );
    assert!(
        !answer.contains("6.6.6.6"),
        "an underscore spelling got through: {answer}"
    );
    drop(c);
    let c = proxied_ready("-w 1 --forwarded-allow-ips 10.0.0.0/8", 1);
    let answer = ask(&c);
    assert!(answer.contains("for=127.0.0.1\n"), "{answer}");
    assert!(answer.contains("proto=http\n"), "{answer}");
    assert!(
        answer.contains("real-ip=\n"),
        "X-Real-IP from an untrusted peer: {answer}"
    );
    assert!(!answer.contains("6.6.6.6"), "{answer}");
}

/// An absolute-form target names the host (RFC 9112 3.2.2), whatever
/// Host says; TRACE is refused, as nginx does.
#[test]
fn the_target_s_authority_wins_over_host_and_trace_is_refused() {
    let c = proxied_ready("-w 1", 1);
    let answer = exchange(
        c.http,
        "GET http://shop.example/forwarded HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.contains("host=shop.example\n"), "{answer}");
    let answer = exchange(
        c.http,
        "TRACE / HTTP/1.1\r\nHost: x\r\nCookie: secret=1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&answer), 405, "{answer}");
    assert!(!answer.contains("secret"), "{answer}");
}

/// Python's http.server answers HTTP/1.0 and closes, as some WSGI
/// servers and many small apps do: the client still gets HTTP/1.1 and
/// keeps its connection, as from nginx.
#[test]
fn a_worker_answering_http_1_0_gives_clients_http_1_1_kept_alive() {
    let server = "import socket, sys\n\
        from http.server import BaseHTTPRequestHandler, HTTPServer\n\
        class H(BaseHTTPRequestHandler):\n\
        \x20   def log_message(self, *args):\n\
        \x20       pass\n\
        \x20   def do_GET(self):\n\
        \x20       self.send_response(200)\n\
        \x20       self.send_header('Content-Length', '3')\n\
        \x20       self.end_headers()\n\
        \x20       self.wfile.write(b'ok\\n')\n\
        s = HTTPServer(('127.0.0.1', 0), H, bind_and_activate=False)\n\
        s.socket = socket.socket(fileno=int(sys.argv[1]))\n\
        s.socket.listen()\n\
        s.serve_forever()\n";
    let python = venv().join("bin/python").display().to_string();
    let c = corral()
        .flags("--proxy -w 1")
        .command(&[python.as_str(), "-c", server, "{fd}"])
        .start();
    c.wait_settled(1, SETTLE);
    let mut s = TcpStream::connect(c.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut answer = Vec::new();
        while !answer.ends_with(b"ok\n") {
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&buf[..n]);
        }
        let answer = String::from_utf8_lossy(&answer).to_lowercase();
        assert!(answer.starts_with("http/1.1 200"), "{answer}");
        assert!(!answer.contains("connection: close"), "{answer}");
    }
}

#[test]
fn server_sent_events_stream_through_and_keep_the_worker_busy() {
    let c = proxied_ready("-w 1", 1);
    let mut s = TcpStream::connect(c.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /events/10 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 512];
    let n = s.read(&mut first).unwrap();
    let head = String::from_utf8_lossy(&first[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/event-stream"), "{head}");
    // Streamed, not held back whole: the first bytes come before the last
    // event is even made (2 s after the first).
    assert!(!head.contains("data: 9"), "{head}");
    until_in_flight(&c, 1, "the stream counted on its worker");
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    let all = head + &rest;
    assert!(all.contains("data: 0") && all.contains("data: 9"), "{all}");
    until_in_flight(&c, 0, "the worker idle again");
}

/// Reads from `s` until what was read ends with `end` (one answer at a
/// time: the next request is sent only after it).
fn read_until_end(s: &mut TcpStream, end: &str) -> String {
    let mut got = Vec::new();
    while !got.ends_with(end.as_bytes()) {
        let mut buf = [0u8; 4096];
        let n = match s.read(&mut buf) {
            Ok(n) => n,
            Err(e) => panic!("{e} after {:?}", String::from_utf8_lossy(&got)),
        };
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).to_lowercase()
}

/// A whole request read at once is answered by the front itself, not by
/// hyper's server: what the client gets keeps the framing it expects. On
/// one HTTP/1.1 connection: a HEAD (a head, no body), a streamed answer
/// (chunked), then `Connection: close` (said, then the close). HTTP/1.0:
/// kept alive when asked (a HEAD), and a streamed answer ends with the
/// connection.
#[test]
fn plain_requests_are_framed_as_their_clients_expect() {
    let c = proxied_ready("-w 1", 1);
    let mut s = TcpStream::connect(c.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let head = read_until_end(&mut s, "\r\n\r\n");
    assert!(
        head.starts_with("http/1.1 200") && head.contains("date: "),
        "{head}"
    );
    s.write_all(b"GET /events/3 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let streamed = read_until_end(&mut s, "\r\n0\r\n\r\n");
    assert!(
        streamed.starts_with("http/1.1 200"),
        "no body after the HEAD: {streamed}"
    );
    assert!(
        streamed.contains("transfer-encoding: chunked\r\n"),
        "{streamed}"
    );
    assert!(
        streamed.contains("data: 0") && streamed.contains("data: 2"),
        "{streamed}"
    );
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let last = read_all(&mut s).unwrap().to_lowercase();
    assert!(
        last.starts_with("http/1.1 200") && last.contains("connection: close\r\n"),
        "{last}"
    );

    let mut old = TcpStream::connect(c.http).unwrap();
    old.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    old.write_all(b"HEAD / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    let kept = read_until_end(&mut old, "\r\n\r\n");
    assert!(kept.contains("connection: keep-alive\r\n"), "{kept}");
    old.write_all(b"GET /events/2 HTTP/1.0\r\n\r\n").unwrap();
    let to_close = read_all(&mut old).unwrap().to_lowercase();
    assert!(to_close.starts_with("http/1.1 200"), "{to_close}");
    assert!(!to_close.contains("transfer-encoding"), "{to_close}");
    assert!(
        to_close.contains("connection: close\r\n") && to_close.contains("data: 1"),
        "{to_close}"
    );
}

/// A WebSocket in which nothing moves for --tunnel-idle-timeout is
/// closed, and its worker's place freed; one in use is not.
#[test]
fn an_idle_websocket_is_closed_at_the_tunnel_idle_timeout() {
    let (c, mut ws, url) = websocket_front("-w 1 --tunnel-idle-timeout 2s");
    assert_eq!(ws.say(&format!("open a {url}")), "ok");
    for _ in 0..4 {
        ws.echo_pid("a", "alive");
        std::thread::sleep(Duration::from_millis(900));
    }
    until_in_flight(&c, 1, "the open socket holds its worker");
    std::thread::sleep(Duration::from_secs(3));
    let reply = ws.say("send a after");
    assert!(reply.starts_with("error"), "{reply}");
    until_in_flight(&c, 0, "the worker's place freed");
}

/// WebSocket tunnels hold their connection's place under
/// --max-connections after the upgrade: with two open at a cap of two, a
/// third client waits until one closes.
#[test]
fn websocket_tunnels_count_toward_the_connection_cap() {
    let (c, mut ws, url) = websocket_front("-w 1 --max-connections 2");
    for name in ["a", "b"] {
        assert_eq!(ws.say(&format!("open {name} {url}")), "ok");
        ws.echo_pid(name, "alive");
    }
    let third = in_background(c.http, "/");
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !third.is_finished(),
        "a third connection was served beside two tunnels"
    );
    assert_eq!(ws.say("close a"), "ok");
    let (code, _) = third.join().unwrap().unwrap();
    assert_eq!(code, 200);
    ws.echo_pid("b", "still here");
}

/// A proxied Django with one ready worker, a WebSocket client, and the
/// URL of its echo socket.
fn websocket_front(flags: &str) -> (Corral, WsClient, String) {
    let c = proxied_ready(flags, 1);
    let url = format!("ws://{}/ws", c.http);
    (c, WsClient::start(), url)
}

/// The stdin-driven WebSocket client in the Django test app.
struct WsClient {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl WsClient {
    fn start() -> WsClient {
        let mut child = Command::new(venv().join("bin/python"))
            .arg(django_dir().join("ws_client.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        WsClient {
            child,
            stdin,
            stdout,
        }
    }

    fn say(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").unwrap();
        let mut out = String::new();
        self.stdout.read_line(&mut out).unwrap();
        out.trim().to_string()
    }

    /// Sends `text` on `name`; the pid of the worker that echoed it.
    fn echo_pid(&mut self, name: &str, text: &str) -> i32 {
        let reply = self.say(&format!("send {name} {text}"));
        let (pid, echoed) = reply.split_once(' ').unwrap_or_else(|| panic!("{reply}"));
        assert_eq!(echoed, text, "{reply}");
        pid.parse().unwrap_or_else(|_| panic!("{reply}"))
    }
}

impl Drop for WsClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_websocket_keeps_its_worker_across_a_hup_and_new_ones_reach_the_new_workers() {
    let c = proxied("-w 1");
    let before = c.wait_settled(1, SETTLE);
    let old = before.workers[0].pid;
    let url = format!("ws://{}/ws", c.http);
    let mut ws = WsClient::start();
    assert_eq!(ws.say(&format!("open a {url}")), "ok");
    assert_eq!(ws.echo_pid("a", "hello"), old);
    c.signal(Signal::SIGHUP);
    let doc = c.wait_for("the new worker ready, the old one draining", SETTLE, |d| {
        d.generation == 2
            && d.workers
                .iter()
                .any(|w| w.generation == 2 && w.state == WorkerState::Ready)
    });
    let new = doc.workers.iter().find(|w| w.generation == 2).unwrap().pid;
    // The open socket stays where it is; its worker waits for it.
    assert_eq!(ws.echo_pid("a", "still here"), old);
    let draining = c.workers().unwrap();
    assert!(
        draining
            .workers
            .iter()
            .any(|w| w.pid == old && w.state == WorkerState::Draining && w.in_flight == Some(1)),
        "{draining:#?}"
    );
    assert_eq!(ws.say(&format!("open b {url}")), "ok");
    assert_eq!(ws.echo_pid("b", "fresh"), new);
    assert_eq!(ws.say("close a"), "ok");
    c.wait_for("the old worker gone once its socket closed", SETTLE, |d| {
        !pids(d).contains(&old)
            && d.recent_exits
                .iter()
                .any(|e| e.pid == old && e.exit.reason == ExitReason::Drained)
    });
    assert_eq!(ws.echo_pid("b", "after"), new);
}

/// One whole response read from a keep-alive connection: its head, then
/// its Content-Length's worth of body, or chunks to the last.
fn response_on(s: &mut TcpStream) -> String {
    use std::io::Read;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (mut got, mut buf) = (Vec::new(), [0u8; 4096]);
    loop {
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            let chunked = text[..end]
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked");
            let whole = if chunked {
                text.ends_with("\r\n0\r\n\r\n")
            } else {
                got.len() >= end + 4 + length
            };
            if whole {
                return text;
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => panic!("the answer ended early: {text}"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A client that connects and stays silent is closed at
/// --client-header-timeout, one idle after a request at --keep-alive; a
/// client at work meanwhile is served.
#[test]
fn silent_and_idle_clients_are_closed_at_their_deadlines() {
    use std::io::{Read, Write};
    let c = proxied_ready("-w 1 --client-header-timeout 1s --keep-alive 2s", 1);
    let silent: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(c.http).unwrap())
        .collect();
    let mut idle = TcpStream::connect(c.http).unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    // The whole answer, which may come in more than one read.
    let answer = response_on(&mut idle);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let started = std::time::Instant::now();
    answered_ok(&c, 3);
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert!(matches!(s.read(&mut buf), Ok(0)), "a silent client stayed");
    }
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    match idle.read(&mut buf) {
        Ok(0) => {}
        other => panic!(
            "an idle client stayed: {other:?}, {:?} after its answer",
            started.elapsed()
        ),
    }
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "closed before its deadline"
    );
}

/// The head of a keep-alive connection's next request has
/// --client-header-timeout from its first byte, as nginx gives it, not
/// the --keep-alive the connection had while it waited.
#[test]
fn a_second_request_head_trickled_is_cut_off_at_the_header_timeout() {
    use std::io::{Read, Write};
    let c = proxied_ready("-w 1 --client-header-timeout 1s --keep-alive 20s", 1);
    let mut s = TcpStream::connect(c.http).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    std::thread::sleep(Duration::from_secs(2));
    let started = std::time::Instant::now();
    let mut cut = None;
    for byte in b"GET / HTTP/1.1\r\nHost: trickled.example\r\nX-Slow: 1111111111111\r\n".iter() {
        if s.write_all(std::slice::from_ref(byte)).is_err() {
            cut = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let cut = cut.unwrap_or_else(|| started.elapsed());
    assert!(
        cut < Duration::from_secs(4),
        "the trickled head went on for {cut:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "cut before its deadline"
    );
    answered_ok(&c, 2);
}

/// Gunicorn's request-head limits, under their Gunicorn names (the
/// underscore spelling of --limit-request-field_size included): a long
/// request line gets 414, too many or too large fields 431, over HTTP/1.1
/// and HTTP/2, and none of them reaches a worker.
#[test]
fn request_heads_past_gunicorn_s_limits_are_refused() {
    let c = proxied_ready(
        "-w 1 --limit-request-line 100 --limit-request-fields 5 --limit-request-field_size 200",
        1,
    );
    let served = |c: &Corral| c.workers().unwrap().workers[0].requests.unwrap_or(0);
    let before = served(&c);
    let long_line = format!(
        "GET /{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "a".repeat(100)
    );
    assert_eq!(status_of(&exchange(c.http, &long_line)), 414);
    let big_field = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "b".repeat(200)
    );
    assert_eq!(status_of(&exchange(c.http, &big_field)), 431);
    let many = "GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\nConnection: close\r\n\r\n";
    assert_eq!(status_of(&exchange(c.http, many)), 431);
    let url = format!("http://{}/", c.http);
    let mut h2 = vec!["--http2-prior-knowledge"];
    let fields: Vec<String> = (0..6).map(|i| format!("X-F{i}: {i}")).collect();
    for f in &fields {
        h2.extend(["-H", f.as_str()]);
    }
    let (code, version, _) = support::tls::curl(&url, &h2);
    assert_eq!((code.as_str(), version.as_str()), ("431", "2"));
    let fine = "GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nConnection: close\r\n\r\n";
    assert_eq!(status_of(&exchange(c.http, fine)), 200);
    c.wait_for("the request within the limits counted", SETTLE, |d| {
        d.workers[0].requests.unwrap_or(0) > before
    });
    assert_eq!(
        served(&c),
        before + 1,
        "only the request within the limits was forwarded"
    );
}

/// Bodies past --client-max-body-size get 413 and never reach a worker,
/// whether declared (Content-Length), read ahead, or streamed; a body
/// that stalls gets 408 at --client-body-timeout.
#[test]
fn bodies_too_large_or_too_slow_are_refused() {
    use std::io::{Read, Write};
    let c = proxied_ready(
        "-w 1 --client-max-body-size 100Ki --client-body-timeout 1s",
        1,
    );
    let declared = exchange(
        c.http,
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&declared), 413, "{declared}");
    for size in [150 * 1024, 600 * 1024] {
        let mut s = TcpStream::connect(c.http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let chunk = vec![b'a'; 16 * 1024];
        let mut out =
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..size / chunk.len() {
            out.extend(format!("{:x}\r\n", chunk.len()).as_bytes());
            out.extend(&chunk);
            out.extend(b"\r\n");
        }
        out.extend(b"0\r\n\r\n");
        let _ = s.write_all(&out);
        let answer = read_all(&mut s).unwrap_or_default();
        assert_eq!(status_of(&answer), 413, "{size} bytes chunked: {answer}");
    }
    let mut s = TcpStream::connect(c.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        .unwrap();
    let started = std::time::Instant::now();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert_eq!(status_of(&answer), 408, "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(get(c.http, "/").unwrap().0, 200);
}

#[test]
fn the_metrics_and_the_workers_document_count_requests() {
    let c = proxied_ready("-w 2", 2);
    answered_ok(&c, 10);
    assert_eq!(get(c.http, "/no-such-page").unwrap().0, 404);
    // The document is republished on the manager's next pass; a request
    // is done once its response's last byte has gone.
    let doc = c.wait_for("eleven requests counted and done", SETTLE, |d| {
        d.workers.iter().filter_map(|w| w.requests).sum::<u64>() == 11
            && d.workers.iter().all(|w| w.in_flight == Some(0))
    });
    assert!(
        doc.workers.iter().all(|w| w.requests.unwrap() >= 5),
        "least busy spreads them: {doc:#?}"
    );
    assert!(doc.concurrency.is_some() && doc.queued == Some(0));
    let m = get(c.admin, "/metrics").unwrap().1;
    let v = |name: &str, labels: &[(&str, &str)]| metrics::value(&m, name, labels);
    assert_eq!(
        metrics::requests(&m, "200", "GET", "http/1.1"),
        Some(10.0),
        "{m}"
    );
    assert_eq!(metrics::requests(&m, "404", "GET", "http/1.1"), Some(1.0));
    assert_eq!(
        v("corral_http_request_duration_seconds_count", &[]),
        Some(11.0)
    );
    assert_eq!(v("corral_http_requests_in_flight", &[]), Some(0.0));
    assert_eq!(v("corral_http_queue_length", &[]), Some(0.0));
    assert_eq!(metrics::sum(&m, "corral_worker_requests_total"), 11.0);
    assert_eq!(
        v("corral_http_retries_total", &[("reason", "connect")]),
        Some(0.0)
    );
    assert!(metrics::has(
        &m,
        "corral_http_queue_wait_seconds_bucket",
        &["le"]
    ));
}

#[test]
fn the_builtin_worker_serves_behind_the_front_through_a_hup() {
    let _heavy = heavy();
    let c = corral().args(&["--proxy", "-w", "2"]).start();
    let loads = Loads::on_settled(&c, 2);
    c.signal(Signal::SIGHUP);
    c.wait_for("generation 2", SETTLE, |d| {
        d.generation == 2 && d.ready == 2 && d.running == 2
    });
    loads.progress();
    loads.stop_clean(&c);
}

#[test]
fn corral_status_shows_the_requests_of_each_worker() {
    let c = proxied_ready("-w 2", 2);
    answered_ok(&c, 4);
    c.wait_for("four requests counted", SETTLE, |d| {
        d.workers.iter().filter_map(|w| w.requests).sum::<u64>() == 4
    });
    let out = Command::new(BIN)
        .args(["status", "--admin", &c.admin.to_string()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(
        table.contains("INFLIGHT") && table.contains("REQUESTS"),
        "{table}"
    );
    assert!(table.contains("requests in flight per worker"), "{table}");
}
