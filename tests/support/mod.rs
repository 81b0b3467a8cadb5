//! Test support: start the real `corral` binary in its own process group
//! (killed on drop, so a failing test leaves nothing behind), talk HTTP to
//! it over loopback, and generate bounded load that counts every failure.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the support module"
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use corral::contract::WorkersDoc;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

pub mod cluster;
pub mod prometheus;

pub const BIN: &str = env!("CARGO_BIN_EXE_corral");

/// Tests that run load take turns: on a two-core machine, two load
/// generators at once would measure each other.
pub fn heavy() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The venv with Django and Uvicorn that `.ci/test` prepares.
pub fn venv() -> PathBuf {
    let path = std::env::var_os("CORRAL_TEST_VENV")
        .map(PathBuf::from)
        .expect("CORRAL_TEST_VENV is not set: run the tests with .ci/test, which builds the Python venv");
    assert!(
        path.join("bin/uvicorn").exists(),
        "no uvicorn in {}",
        path.display()
    );
    path
}

pub fn django_dir() -> PathBuf {
    root().join("tests/django_app")
}

/// The worker command for Uvicorn serving the test Django project.
pub fn uvicorn_command() -> Vec<String> {
    let uvicorn = venv().join("bin/uvicorn");
    vec![
        uvicorn.display().to_string(),
        "--fd".into(),
        "{fd}".into(),
        "--no-access-log".into(),
        "--log-level".into(),
        "warning".into(),
        "mysite.asgi:application".into(),
    ]
}

pub struct Corral {
    pub child: Child,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub log_path: PathBuf,
    dir: PathBuf,
    exited: Option<ExitStatus>,
}

pub struct Builder {
    args: Vec<String>,
    command: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<PathBuf>,
    wrapper: Vec<String>,
    bind: bool,
    host: String,
    admin_port: Option<u16>,
}

pub fn corral() -> Builder {
    Builder {
        args: Vec::new(),
        command: Vec::new(),
        env: Vec::new(),
        cwd: None,
        wrapper: Vec::new(),
        bind: true,
        host: "127.0.0.1".into(),
        admin_port: None,
    }
}

impl Builder {
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    pub fn command<S: AsRef<str>>(mut self, cmd: &[S]) -> Self {
        self.command = cmd.iter().map(|s| s.as_ref().to_string()).collect();
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn cwd(mut self, dir: PathBuf) -> Self {
        self.cwd = Some(dir);
        self
    }

    /// Runs corral under another program (e.g. `unshare --pid --fork`).
    pub fn wrapped(mut self, wrapper: &[&str]) -> Self {
        self.wrapper = wrapper.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Leaves `--bind` to the caller (or to inherited sockets); `http` is
    /// then whatever the caller says it is.
    pub fn without_bind(mut self) -> Self {
        self.bind = false;
        self
    }

    /// Listens on `host` (e.g. 127.0.0.2, as a pod IP) with the admin API on `admin_port`.
    pub fn at(mut self, host: &str, admin_port: u16) -> Self {
        self.host = host.into();
        self.admin_port = Some(admin_port);
        self
    }

    /// Uvicorn serving Django, from the test project's directory.
    pub fn django(self) -> Self {
        let cmd = uvicorn_command();
        self.cwd(django_dir()).command(&cmd)
    }

    pub fn start(self) -> Corral {
        let http: SocketAddr = format!("{}:{}", self.host, free_port()).parse().unwrap();
        let admin: SocketAddr = format!(
            "{}:{}",
            self.host,
            self.admin_port.unwrap_or_else(free_port)
        )
        .parse()
        .unwrap();
        let dir = std::env::temp_dir().join(format!(
            "corral-test-{}-{}-{}",
            std::process::id(),
            admin.ip(),
            admin.port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let log_path = dir.join("corral.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut argv: Vec<String> = self.wrapper.clone();
        argv.push(BIN.into());
        argv.push("run".into());
        if self.bind {
            argv.extend(["--bind".into(), http.to_string()]);
        }
        argv.extend(["--admin-bind".into(), admin.to_string()]);
        argv.extend(self.args.clone());
        if !self.command.is_empty() {
            argv.push("--".into());
            argv.extend(self.command.clone());
        }
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .env_remove("WEB_CONCURRENCY")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("CORRAL_LOG_LEVEL", "debug");
        if let Some(cwd) = &self.cwd {
            cmd.current_dir(cwd);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start corral");
        Corral {
            child,
            http,
            admin,
            log_path,
            dir,
            exited: None,
        }
    }
}

impl Corral {
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).unwrap();
    }

    pub fn workers(&self) -> Option<WorkersDoc> {
        let (status, body) = get(self.admin, "/workers").ok()?;
        (status == 200).then(|| serde_json::from_str(&body).unwrap())
    }

    /// Polls /workers until `cond` holds; panics with the log after `limit`.
    pub fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        cond: impl Fn(&WorkersDoc) -> bool,
    ) -> WorkersDoc {
        let deadline = Instant::now() + limit;
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(doc) = self.workers() {
                if cond(&doc) {
                    return doc;
                }
                last = Some(doc);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "timed out waiting for {what}; last /workers: {last:#?}\n--- log ---\n{}",
            self.log()
        );
    }

    /// Waits until `n` workers of the current generation are ready and no other worker runs.
    pub fn wait_settled(&self, n: u32, limit: Duration) -> WorkersDoc {
        self.wait_for(&format!("{n} ready workers"), limit, |d| {
            d.ready == n && d.running == n && d.workers.iter().all(|w| w.generation == d.generation)
        })
    }

    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        if let Some(s) = self.exited {
            return s;
        }
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                self.exited = Some(s);
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "corral did not exit within {limit:?}\n--- log ---\n{}",
            self.log()
        );
    }

    pub fn is_running(&mut self) -> bool {
        self.exited.is_none() && self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Corral {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- corral log ({}) ---\n{}",
                self.log_path.display(),
                self.log()
            );
        }
        let _ = killpg(self.pid(), Signal::SIGKILL);
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One request on a fresh connection; returns status and body.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    req += "\r\n";
    req += body;
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    if let Err(e) = s.read_to_end(&mut raw) {
        if e.kind() == std::io::ErrorKind::ConnectionReset && raw.is_empty() {
            return Err(std::io::Error::new(e.kind(), UNANSWERED));
        }
        return Err(e);
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {text:?}")))?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Ok((
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_string()
        },
    ))
}

/// Decodes a chunked body (Uvicorn streams Django's responses that way).
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// The error text of a connection reset before a single response byte:
/// the server accepted the connection and closed it with the request unread.
pub const UNANSWERED: &str = "reset before any response byte";

pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    request(addr, "GET", path, &[], "")
}

/// How often awaited conditions are checked.
pub const POLL: Duration = Duration::from_millis(50);

/// Checks `check` every [`POLL`] until it gives a value; after `limit`,
/// panics naming `what` and the last thing `check` saw (its `Err`).
pub fn eventually<T, E: std::fmt::Debug>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {limit:?} waiting for {what}; last seen: {last:?}")
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// [`eventually`] for async tests: the runtime's other tasks go on while it waits.
pub async fn eventually_async<T, E: std::fmt::Debug, F: Future<Output = Result<T, E>>>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {limit:?} waiting for {what}; last seen: {last:?}")
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// Waits until a GET answers 200.
pub fn wait_http(addr: SocketAddr, path: &str, limit: Duration) {
    eventually(&format!("200 from {addr}{path}"), limit, || {
        match get(addr, path) {
            Ok((200, _)) => Ok(()),
            other => Err(other),
        }
    });
}

#[derive(Debug, Default)]
pub struct Report {
    pub ok: u64,
    /// Every failure but the ones counted in `unanswered`.
    pub failed: u64,
    /// Connections reset with the request unread (see [`UNANSWERED`]).
    pub unanswered: u64,
    pub errors: Vec<String>,
}

/// Closed-loop load: `conns` threads, each sending one request per fresh
/// connection until stopped or `limit` passes.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    threads: Vec<JoinHandle<(u64, u64, Vec<String>)>>,
}

impl Load {
    pub fn start(addr: SocketAddr, path: &str, conns: usize, limit: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + limit;
        let threads = (0..conns)
            .map(|_| {
                let stop = stop.clone();
                let ok = ok.clone();
                let path = path.to_string();
                std::thread::spawn(move || {
                    let mut failed = 0;
                    let mut unanswered = 0;
                    let mut errors = Vec::new();
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        match get(addr, &path) {
                            Ok((200, _)) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) if e.to_string() == UNANSWERED => {
                                unanswered += 1;
                                if errors.len() < 5 {
                                    errors.push(e.to_string());
                                }
                            }
                            other => {
                                failed += 1;
                                if errors.len() < 5 {
                                    errors.push(format!("{other:?}"));
                                }
                            }
                        }
                    }
                    (failed, unanswered, errors)
                })
            })
            .collect();
        Load { stop, ok, threads }
    }

    pub fn ok_so_far(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` more requests succeeded (the load is flowing).
    pub fn wait_progress(&self, n: u64, limit: Duration) {
        let start = self.ok_so_far();
        let deadline = Instant::now() + limit;
        while self.ok_so_far() < start + n {
            assert!(Instant::now() < deadline, "load made no progress");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        let mut report = Report::default();
        for t in self.threads {
            let (failed, unanswered, errors) = t.join().unwrap();
            report.failed += failed;
            report.unanswered += unanswered;
            report.errors.extend(errors);
        }
        report.ok = self.ok.load(Ordering::Relaxed);
        report
    }
}

/// A request in a thread, for slow requests that must survive a shutdown.
pub fn in_background(addr: SocketAddr, path: &str) -> JoinHandle<std::io::Result<(u16, String)>> {
    let path = path.to_string();
    std::thread::spawn(move || get(addr, &path))
}

/// `n` requests written on fresh connections and not yet answered: with
/// the workers stopped, they wait in the listen queue.
pub fn queued_requests(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            s
        })
        .collect()
}

/// Reads every connection to its end and checks each was answered 200.
pub fn assert_answered(clients: &mut [TcpStream]) {
    for s in clients {
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }
}

/// The repository's root, where the chart, manifests and docs are.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// PATH with the test venv's bin first, as in an image where `uvicorn` is
/// installed.
pub fn path_with_venv() -> String {
    format!(
        "{}:{}",
        venv().join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// `helm ARGS` from the repository root: success, stdout then stderr.
pub fn helm(args: &[&str]) -> (bool, String) {
    let out = Command::new(k8s_tool("helm"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A binary from the helm/kubectl directory .ci/test prepares.
pub fn k8s_tool(name: &str) -> PathBuf {
    let dir = std::env::var_os("CORRAL_K8S_TOOLS")
        .map(PathBuf::from)
        .expect("CORRAL_K8S_TOOLS is not set: run the tests with .ci/test, which installs helm and kubectl");
    dir.join(name)
}

/// Checks Prometheus Operator resources against that project's schemas
/// (the npm models .ci/test installs): the test API server has no
/// monitoring.coreos.com CRDs to dry-run them against.
pub fn validate_monitors(docs: &[serde_json::Value]) -> (bool, String) {
    let models = std::env::var_os("CORRAL_MONITORING_MODELS").expect(
        "CORRAL_MONITORING_MODELS is not set: run the tests with .ci/test, which installs the models",
    );
    let script = root().join("tests/support/validate-monitors.mjs");
    run_with_stdin(
        Command::new("node").arg(script).arg(models),
        serde_json::to_string(docs).unwrap().as_bytes(),
    )
}

/// Runs `cmd` with `input` on its standard input; returns success and
/// stdout followed by stderr.
pub fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> (bool, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Polls until `text()` contains `needle`.
pub fn wait_text(what: &str, limit: Duration, needle: &str, text: impl Fn() -> String) {
    let deadline = Instant::now() + limit;
    while !text().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{}",
            text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Processes whose parent is `ppid`, with their state letter.
pub fn children_of(ppid: i32) -> Vec<(i32, char)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let state = f.next().and_then(|s| s.chars().next()).unwrap_or('?');
        if f.next().and_then(|p| p.parse::<i32>().ok()) == Some(ppid) {
            out.push((pid, state));
        }
    }
    out
}
