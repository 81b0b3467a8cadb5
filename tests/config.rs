//! Configuration and listeners through the real binary: bad input exits 2
//! naming the field and starts nothing; flags > env > file > defaults;
//! HUP reloads the file; every kind of bind address works.

mod support;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Output};
use std::time::Duration;

use nix::sys::signal::Signal;
use support::*;

fn corral_cmd(args: &[&str]) -> Output {
    finish(
        Command::new(BIN).args(args).env_remove("WEB_CONCURRENCY"),
        COMMAND_LIMIT,
    )
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("corral-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `corral run ARGS`, expecting a usage error naming `needle`.
fn refused(args: &[&str], needle: &str) {
    let admin = format!("127.0.0.1:{}", free_port());
    let mut full = vec!["run", "--admin-bind", &admin];
    full.extend_from_slice(args);
    let out = corral_cmd(&full);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: stderr does not name {needle:?}: {stderr}"
    );
    assert!(!stderr.contains("worker started"), "{stderr}");
    // Nothing stayed behind holding the admin port.
    std::net::TcpListener::bind(&admin).expect("admin port released");
}

#[test]
fn unknown_flags_are_refused() {
    refused(&["--wrokers", "3"], "--wrokers");
}

#[test]
fn bad_bind_addresses_are_refused() {
    refused(&["--bind", "nowhere"], "nowhere");
    refused(&["--bind", "unix:"], "unix:");
    refused(&["--bind", "fd://1"], "fd://1");
}

#[test]
fn a_port_in_use_is_refused() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    refused(&["--bind", &addr], &addr);
}

#[test]
fn a_missing_command_is_refused() {
    refused(
        &["--", "no-such-program-for-corral"],
        "no-such-program-for-corral",
    );
}

#[test]
fn negative_and_impossible_counts_are_refused() {
    refused(&["-w", "-1"], "-1");
    refused(&["--min-workers", "0"], "min-workers");
    refused(&["-w", "9", "--max-workers", "4"], "workers");
    refused(&["--backlog", "0"], "backlog");
    refused(&["--memory-headroom", "1.5"], "memory-headroom");
}

#[test]
fn proxy_settings_are_refused_outside_proxy_mode_and_checked_in_it() {
    refused(&["--worker-concurrency", "4"], "worker-concurrency");
    refused(&["--max-requests", "100"], "max-requests");
    refused(
        &["--", "gunicorn", "-b", "unix:{socket}", "app"],
        "{socket}",
    );
    refused(&["--proxy", "--kill-stuck"], "kill-stuck");
    refused(
        &["--proxy", "--forwarded-allow-ips", "10.0.0.0/99"],
        "forwarded-allow-ips",
    );
    refused(
        &["--proxy", "--worker-ready-path", "healthz"],
        "worker-ready-path",
    );
    refused(&["--proxy", "--queue-timeout", "0"], "queue-timeout");
    let long = format!("/tmp/{}", "d".repeat(100));
    refused(
        &["--proxy", "-b", "127.0.0.1:0", "--runtime-dir", &long],
        "runtime-dir",
    );
    let out = corral_cmd(&[
        "run",
        "--proxy",
        "--worker-concurrency",
        "8",
        "--check-config",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn out_of_range_durations_sizes_and_counts_are_refused_not_panics() {
    refused(&["--timeout", "1e20", "--check-config"], "--timeout");
    refused(&["--graceful-timeout", "1e300"], "--graceful-timeout");
    refused(&["--shutdown-delay", "inf"], "--shutdown-delay");
    refused(&["--memory-limit", "99Ei"], "--memory-limit");
    refused(&["-w", "100000"], "workers");
    refused(&["--max-workers", "4096"], "max-workers");
    let out = finish(
        Command::new(BIN)
            .args(["run", "--check-config"])
            .env("CORRAL_BOOT_TIMEOUT", "1e99"),
        COMMAND_LIMIT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("boot-timeout"), "{stderr}");
}

#[test]
fn memory_limits_take_kubernetes_quantities() {
    for (given, bytes) in [
        ("1.5Gi", 1610612736u64),
        ("512M", 512_000_000),
        ("1e9", 1_000_000_000),
    ] {
        let config = printed(
            Command::new(BIN)
                .args(["run", "--print-config", "--memory-limit", given])
                .env_remove("WEB_CONCURRENCY"),
        );
        assert_eq!(
            config["memory-limit"],
            serde_json::json!(bytes.to_string()),
            "{given}"
        );
    }
}

#[test]
fn text_logs_to_a_file_have_no_colour_codes() {
    let c = corral().args(&["-w", "1"]).start();
    c.wait_settled(1, Duration::from_secs(30));
    let log = c.log();
    assert!(log.contains("listening"), "{log}");
    assert!(!log.contains('\x1b'), "escape sequences in a file: {log:?}");
}

#[test]
fn bad_config_files_are_refused() {
    let dir = temp_dir("badfiles");
    for (name, text, needle) in [
        ("syntax.yaml", "workers: [\n", "syntax.yaml"),
        ("unknown.yaml", "wrokers: 3\n", "wrokers"),
        ("negative.yaml", "workers: -1\n", "workers"),
        ("badbind.yaml", "bind: [nowhere]\n", "nowhere"),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        refused(&["--config", path.to_str().unwrap()], needle);
    }
    refused(
        &["--config", "/nonexistent/corral.yaml"],
        "/nonexistent/corral.yaml",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_short_admin_token_is_refused() {
    let dir = temp_dir("token");
    let path = dir.join("token");
    std::fs::write(&path, "short\n").unwrap();
    refused(
        &["--admin-token-file", path.to_str().unwrap()],
        "admin-token-file",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_config_validates_and_starts_nothing() {
    let out = corral_cmd(&["run", "--check-config", "-w", "2"]);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    let out = corral_cmd(&["run", "--check-config", "-w", "0"]);
    assert_eq!(out.status.code(), Some(2));
}

/// `--check-config` reads every file a setting names, as a start would,
/// and names the setting whose file is wrong.
#[test]
fn check_config_reads_the_files_settings_name() {
    let dir = temp_dir("check-files");
    let missing = dir.join("missing.pem");
    let not_pem = dir.join("not.pem");
    std::fs::write(&not_pem, "no certificate here\n").unwrap();
    let (missing, not_pem) = (missing.to_str().unwrap(), not_pem.to_str().unwrap());
    for (args, field) in [
        (
            vec!["--proxy", "--certfile", missing, "--keyfile", not_pem],
            "`certfile`",
        ),
        (
            vec!["--proxy", "--certfile", not_pem, "--keyfile", missing],
            "`certfile`",
        ),
        (vec!["--admin-token-file", missing], "`admin-token-file`"),
        (vec!["--", "no-such-server-here", "app:app"], "`command`"),
    ] {
        let mut full = vec!["run", "--check-config"];
        full.extend(args.iter().copied());
        let out = corral_cmd(&full);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(field), "{args:?}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn printed(cmd: &mut Command) -> serde_json::Value {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

#[test]
fn flags_beat_env_beat_file_beat_defaults() {
    let dir = temp_dir("precedence");
    let file = dir.join("corral.yaml");
    std::fs::write(
        &file,
        "workers: 3\nbacklog: 100\ngraceful-timeout: 5s\nmax-workers: 20\n",
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "run",
        "--print-config",
        "--config",
        file.to_str().unwrap(),
        "-w",
        "7",
    ])
    .env("CORRAL_WORKERS", "5")
    .env("CORRAL_BACKLOG", "200")
    .env_remove("WEB_CONCURRENCY");
    let c = printed(&mut cmd);
    assert_eq!(c["workers"], 7, "{c}");
    assert_eq!(c["backlog"], 200, "{c}");
    assert_eq!(c["graceful-timeout"], "5s", "{c}");
    assert_eq!(c["shutdown-delay"], "0s", "{c}");
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--print-config", "--config", file.to_str().unwrap()])
        .env("CORRAL_WORKERS", "5")
        .env_remove("WEB_CONCURRENCY");
    assert_eq!(printed(&mut cmd)["workers"], 5);
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--print-config", "--config", file.to_str().unwrap()])
        .env_remove("WEB_CONCURRENCY");
    assert_eq!(printed(&mut cmd)["workers"], 3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn web_concurrency_and_kubernetes_set_defaults() {
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--print-config"])
        .env("WEB_CONCURRENCY", "3")
        .env("KUBERNETES_SERVICE_HOST", "10.0.0.1");
    let c = printed(&mut cmd);
    assert_eq!(c["workers"], 3);
    assert_eq!(c["shutdown-delay"], "5s");
}

#[test]
fn hup_reloads_the_file_keeps_a_runtime_count_and_survives_a_bad_file() {
    let dir = temp_dir("reload");
    let file = dir.join("corral.yaml");
    std::fs::write(&file, "workers: 2\n").unwrap();
    let c = corral().args(&["--config", file.to_str().unwrap()]).start();
    c.wait_settled(2, Duration::from_secs(30));
    // A broken file is refused; nothing changes.
    std::fs::write(&file, "workers: [\n").unwrap();
    c.signal(Signal::SIGHUP);
    wait_text(
        "the reload to be refused",
        Duration::from_secs(30),
        "reload refused",
        || c.log(),
    );
    let doc = c.workers().unwrap();
    assert_eq!((doc.generation, doc.running), (1, 2), "{doc:#?}");
    // A good one takes effect, with a rolling restart.
    std::fs::write(&file, "workers: 3\n").unwrap();
    c.signal(Signal::SIGHUP);
    c.wait_for("3 workers of generation 2", Duration::from_secs(30), |d| {
        d.generation == 2
            && d.ready == 3
            && d.running == 3
            && d.workers.iter().all(|w| w.generation == 2)
    });
    // A count set at runtime outlives the next reload.
    c.signal(Signal::SIGTTIN);
    c.wait_settled(4, Duration::from_secs(30));
    c.signal(Signal::SIGHUP);
    let doc = c.wait_for("generation 3", Duration::from_secs(30), |d| {
        d.generation == 3
            && d.ready == 4
            && d.running == 4
            && d.workers.iter().all(|w| w.generation == 3)
    });
    assert_eq!((doc.configured, doc.requested), (3, Some(4)));
    let _ = std::fs::remove_dir_all(&dir);
}

fn unix_get(path: &std::path::Path) -> String {
    let mut s = UnixStream::connect(path).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn unix_sockets_replace_stale_files_and_take_their_mode() {
    let dir = temp_dir("unix");
    let path = dir.join("app.sock");
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists(), "a stale socket file is left");
    let spec = format!("unix:{}", path.display());
    let c = corral()
        .args(&["-w", "1", "--bind", &spec, "--socket-mode", "600"])
        .start();
    c.wait_settled(1, Duration::from_secs(30));
    assert!(unix_get(&path).starts_with("HTTP/1.1 200"));
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // A live socket is not stolen by a second manager.
    let out = corral_cmd(&["run", "--bind", &spec, "--admin-bind", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn socket_activation_and_fd_binds_are_adopted() {
    // A stand-in for systemd: bind, move the socket to fd 3, set
    // LISTEN_FDS/LISTEN_PID for the exec'd process, exec corral.
    let port = free_port();
    let activate = format!(
        "import os, socket, sys\n\
         s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('127.0.0.1', {port})); s.listen(64)\n\
         os.dup2(s.fileno(), 3); os.set_inheritable(3, True)\n\
         os.environ['LISTEN_FDS'] = '1'; os.environ['LISTEN_PID'] = str(os.getpid())\n\
         os.execv(sys.argv[1], sys.argv[1:])\n"
    );
    for extra in [&[][..], &["--bind", "fd://3"][..]] {
        let mut args = vec!["-w", "1"];
        args.extend_from_slice(extra);
        let c = corral()
            .without_bind()
            .wrapped(&["python3", "-c", &activate])
            .args(&args)
            .start();
        c.wait_settled(1, Duration::from_secs(30));
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        assert_eq!(get(addr, "/healthz").unwrap().0, 200, "{}", c.log());
        let doc = c.workers().unwrap();
        assert_eq!(doc.listeners[0].address, format!("127.0.0.1:{port}"));
    }
}

#[test]
fn json_logs_are_one_object_per_line() {
    let c = corral().args(&["-w", "1", "--log-format", "json"]).start();
    c.wait_settled(1, Duration::from_secs(30));
    let log = c.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|v| v["message"] == "listening" && v["listener"].is_string()),
        "{log}"
    );
    // The built-in worker follows the manager's format.
    assert!(
        lines
            .iter()
            .any(|v| v["message"] == "built-in worker serving"),
        "{log}"
    );
}
