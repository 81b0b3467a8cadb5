//! Test support: start the real `corral` binary in its own process group
//! (killed on drop, so a failing test leaves nothing behind), talk HTTP to
//! it over loopback, and generate bounded load that counts every failure.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the support module"
)]

use std::fmt::Debug;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use corral::contract::WorkersDoc;
use corral::http::client::{Answer, Client, HttpError, url};
use hyper::{Method, Uri};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

pub mod cluster;
pub mod metrics;
pub mod prometheus;
pub mod tls;

pub const BIN: &str = env!("CARGO_BIN_EXE_corral");

/// Tests that run load take turns: on a two-core machine, two load
/// generators at once would measure each other.
pub fn heavy() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A free port on 127.0.0.1, for the servers whose port must be known
/// before they start (etcd, kube-apiserver, Prometheus); corral itself
/// binds port 0 and logs its address, and tests read it there.
///
/// Not a port the kernel picks for a bind to port 0: that one comes from
/// the ephemeral range, from which every outgoing connection on the
/// machine takes its source port too, so one of them can take it before
/// the server binds it. These come from below that range (10000-29999,
/// under the NodePorts), from a slice of 500 of this test process's own,
/// each checked free and never handed out twice.
pub fn free_port() -> u16 {
    const FIRST: u16 = 10_000;
    const SLICE: u16 = 500;
    const SLICES: u16 = 40;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = FIRST + (std::process::id() % u32::from(SLICES)) as u16 * SLICE;
    for _ in 0..SLICE {
        let n = NEXT.fetch_add(1, Ordering::Relaxed) % u64::from(SLICE);
        let port = base + n as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {base}..{}", base + SLICE)
}

/// A port on 127.0.0.1 that refuses connections for as long as the socket
/// returned is held: bound and never listening, so no other process can
/// take it meanwhile.
pub fn refusing_port() -> (socket2::Socket, u16) {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let port = socket.local_addr().unwrap().as_socket().unwrap().port();
    (socket, port)
}

/// A name no other call in this test run gets: `prefix-PID-N`.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
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
    token: Option<String>,
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
        token: None,
    }
}

impl Builder {
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// The admin API's bearer token, in a file of the run's own.
    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Flags written as on a shell line (`"-w 2 --proxy"`), none with a space.
    pub fn flags(mut self, line: &str) -> Self {
        self.args
            .extend(line.split_whitespace().map(str::to_string));
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
    /// then port 0 on the host: the caller knows its own addresses.
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
        let host: IpAddr = self.host.parse().unwrap();
        let admin = SocketAddr::new(host, self.admin_port.unwrap_or(0));
        let dir = std::env::temp_dir().join(unique(&format!("corral-test-{host}")));
        std::fs::create_dir_all(&dir).unwrap();
        let log_path = dir.join("corral.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut argv: Vec<String> = self.wrapper.clone();
        argv.push(BIN.into());
        argv.push("run".into());
        if self.bind {
            argv.extend(["--bind".into(), SocketAddr::new(host, 0).to_string()]);
        }
        argv.extend(["--admin-bind".into(), admin.to_string()]);
        if let Some(token) = &self.token {
            let path = dir.join("admin-token");
            std::fs::write(&path, format!("{token}\n")).unwrap();
            argv.extend(["--admin-token-file".into(), path.display().to_string()]);
        }
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
        let mut c = Corral {
            child,
            http: SocketAddr::new(host, 0),
            admin,
            log_path,
            dir,
            exited: None,
        };
        // The addresses the kernel gave, as the manager logs them.
        c.admin = c.logged_addr("corral manager starting", "admin", |a| {
            a.ip() == host && (admin.port() == 0 || a.port() == admin.port())
        });
        if self.bind {
            c.http = c.logged_addr("listening", "listener", |a| a.ip() == host);
        }
        c
    }
}

/// The values of `field` in the log lines whose message is `message`, in
/// either log format (text: `... INFO message field=value`; JSON: one
/// object per line).
pub fn log_fields(log: &str, message: &str, field: &str) -> Vec<String> {
    let text_message = format!(" {message} ");
    log.lines()
        .filter_map(|line| {
            if line.trim_start().starts_with('{') {
                let v: serde_json::Value = serde_json::from_str(line).ok()?;
                (v["message"] == message)
                    .then(|| v[field].as_str().map(String::from))
                    .flatten()
            } else {
                let (_, rest) = line.split_once(&text_message)?;
                rest.split_whitespace()
                    .find_map(|t| t.strip_prefix(field)?.strip_prefix('='))
                    .map(|v| v.trim_matches('"').to_string())
            }
        })
        .collect()
}

/// Awaits the first address in `field` of a `message` log line that
/// `accept` takes; panics with the log if the process exits first.
fn await_logged_addr(
    what: &str,
    log_path: &Path,
    child: &mut Child,
    message: &str,
    field: &str,
    accept: impl Fn(&SocketAddr) -> bool,
) -> SocketAddr {
    eventually(
        &format!("{what} to log `{message}` with its {field} address"),
        Duration::from_secs(30),
        || {
            let log = std::fs::read_to_string(log_path).unwrap_or_default();
            let found = log_fields(&log, message, field)
                .iter()
                // A TLS listener logs itself as https://ADDR.
                .filter_map(|v| v.trim_start_matches("https://").parse::<SocketAddr>().ok())
                .find(|a| accept(a));
            if let Some(addr) = found {
                return Ok(addr);
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("{what} exited ({status}) before logging `{message}`:\n{log}");
            }
            Err(WithLog::new("no such line yet", log_path))
        },
    )
}

/// What an awaited check saw last, and the log it is about, read only when
/// the failure is shown.
pub struct WithLog<T> {
    pub seen: T,
    pub log: PathBuf,
}

impl<T> WithLog<T> {
    pub fn new(seen: T, log: &Path) -> WithLog<T> {
        WithLog {
            seen,
            log: log.to_path_buf(),
        }
    }
}

/// A text shown as it is (not quoted and escaped) in a failure message.
pub struct Text(pub String);

impl Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<T: Debug> Debug for WithLog<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:#?}\n--- log ({}) ---\n{}",
            self.seen,
            self.log.display(),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }
}

impl Corral {
    /// Waits until every connection made so far to the HTTP listener has
    /// been accepted by a worker (its accept queue is empty): requests
    /// sent before are in the workers' hands.
    pub fn taken_by_workers(&self) {
        eventually(
            "the workers to accept the requests",
            Duration::from_secs(10),
            || match accept_queue(self.http) {
                Some(0) => Ok(()),
                other => Err(other),
            },
        );
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn logged_addr(
        &mut self,
        message: &str,
        field: &str,
        accept: impl Fn(&SocketAddr) -> bool,
    ) -> SocketAddr {
        await_logged_addr(
            "corral",
            &self.log_path,
            &mut self.child,
            message,
            field,
            accept,
        )
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).unwrap();
    }

    pub fn workers(&self) -> Option<WorkersDoc> {
        self.try_workers().ok()
    }

    /// The /workers document, or what came instead.
    pub fn try_workers(&self) -> Result<WorkersDoc, String> {
        match get(self.admin, "/workers") {
            Ok((200, body)) => Ok(serde_json::from_str(&body).unwrap()),
            Ok((status, body)) => Err(format!("{status} {body}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Polls /workers until `cond` holds; panics with the last document
    /// and the log after `limit`.
    pub fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        cond: impl Fn(&WorkersDoc) -> bool,
    ) -> WorkersDoc {
        let mut last: Option<WorkersDoc> = None;
        eventually(what, limit, || {
            match self.try_workers() {
                Ok(doc) if cond(&doc) => return Ok(doc),
                Ok(doc) => last = Some(doc),
                Err(_) => {}
            }
            Err(WithLog::new(
                Text(format!("last /workers: {last:#?}")),
                &self.log_path,
            ))
        })
    }

    /// Waits until `n` workers of the current generation are ready and no other worker runs.
    pub fn wait_settled(&self, n: u32, limit: Duration) -> WorkersDoc {
        self.wait_for(&format!("{n} ready workers"), limit, |d| {
            d.ready == n && d.running == n && d.workers.iter().all(|w| w.generation == d.generation)
        })
    }

    /// Waits until generation `generation` has taken over: `n` ready
    /// workers, all of it.
    pub fn wait_generation(&self, generation: u64, n: u32, limit: Duration) -> WorkersDoc {
        self.wait_for(&format!("generation {generation}"), limit, |d| {
            d.generation == generation
                && d.ready == n
                && d.running == n
                && d.workers.iter().all(|w| w.generation == generation)
        })
    }

    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        if let Some(s) = self.exited {
            return s;
        }
        let status = eventually(&format!("corral to exit within {limit:?}"), limit, || {
            self.child
                .try_wait()
                .unwrap()
                .ok_or_else(|| WithLog::new("still running", &self.log_path))
        });
        self.exited = Some(status);
        status
    }

    pub fn is_running(&mut self) -> bool {
        self.exited.is_none() && self.child.try_wait().unwrap().is_none()
    }
}

/// A failing test shows the log of `what` it ran.
pub fn show_log_on_panic(what: &str, path: &Path, text: impl FnOnce() -> String) {
    if std::thread::panicking() {
        eprintln!("--- {what} log ({}) ---\n{}", path.display(), text());
    }
}

impl Drop for Corral {
    fn drop(&mut self) {
        show_log_on_panic("corral", &self.log_path, || self.log());
        let _ = killpg(self.pid(), Signal::SIGKILL);
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An attack or load tool run beside a test, its output in a file: killed
/// with its process group if the test ends first, however it ends.
pub struct Tool {
    child: Child,
    out: PathBuf,
}

impl Tool {
    pub fn start(cmd: &mut Command) -> Tool {
        let out = std::env::temp_dir().join(unique("corral-tool"));
        let file = std::fs::File::create(&out).unwrap();
        let child = cmd
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
        Tool { child, out }
    }

    pub fn finished(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// What it printed so far (stdout and stderr).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.out);
    }
}

/// How long one request through [`fetch`] may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The runtime [`fetch`] runs requests on: its own threads, so a request
/// can be made from plain threads and from inside async tests alike.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("test-http")
            .enable_all()
            .build()
            .unwrap()
    })
}

/// One request through corral's own client (`corral::http::client`),
/// blocking until the answer is read. Each call has a client of its own,
/// so each request goes on a fresh connection: which worker answers, and
/// whether a server that just went away refuses, is never hidden by a
/// pooled keep-alive connection.
pub fn fetch(
    method: Method,
    uri: Uri,
    bearer: Option<&str>,
    body: Option<Vec<u8>>,
) -> Result<Answer, HttpError> {
    let bearer = bearer.map(str::to_string);
    let (tx, rx) = std::sync::mpsc::channel();
    runtime().spawn(async move {
        let client = Client::new();
        let answer = client
            .send(method, uri, bearer.as_deref(), body, REQUEST_TIMEOUT)
            .await;
        let _ = tx.send(answer);
    });
    rx.recv().expect("the request task ended without an answer")
}

/// One request on a fresh connection; returns status and body. The only
/// header a test sets is `Authorization: Bearer TOKEN`.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String), HttpError> {
    let mut bearer = None;
    for (k, v) in headers {
        match (
            k.eq_ignore_ascii_case("authorization"),
            v.strip_prefix("Bearer "),
        ) {
            (true, Some(token)) => bearer = Some(token),
            _ => panic!("unsupported header {k}: {v}"),
        }
    }
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let uri = url(&addr.to_string(), path, &[])?;
    let body = (!body.is_empty()).then(|| body.as_bytes().to_vec());
    let answer = fetch(method, uri, bearer, body)?;
    Ok((
        answer.status.as_u16(),
        String::from_utf8_lossy(&answer.body).into_owned(),
    ))
}

pub fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), HttpError> {
    request(addr, "GET", path, &[], "")
}

/// The error text of a connection closed before a single response byte:
/// the server accepted the connection and closed it with the request
/// unread. The client sees a reset when the request had reached the
/// server's socket by then, and an end of stream when it had not: the
/// same event, told apart only by timing.
pub const UNANSWERED: &str = "closed before any response byte";

/// A GET written by hand on a fresh connection with `Connection: close`,
/// for the load generator only. It stays raw because it is the measuring
/// instrument of the zero-failed-requests tests: one connection per
/// request, nothing retried or pooled, and a reset before any response
/// byte ([`UNANSWERED`]) told apart from every other failure, which no
/// general client reports. Returns the status; the body is read to its
/// end (a connection cut mid-answer is a failure) but not decoded.
fn raw_get(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    match s.read_to_end(&mut raw) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && raw.is_empty() => {
            return Err(std::io::Error::new(e.kind(), UNANSWERED));
        }
        Err(e) => return Err(e),
        Ok(0) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                UNANSWERED,
            ));
        }
        Ok(_) => {}
    }
    let text = String::from_utf8_lossy(&raw);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {text:?}")))
}

/// How often awaited conditions are checked.
pub const POLL: Duration = Duration::from_millis(50);

/// Checks `check` every [`POLL`] until it gives a value; after `limit`,
/// panics naming `what` and the last thing `check` saw (its `Err`).
pub fn eventually<T, E: Debug>(
    what: &str,
    limit: Duration,
    check: impl FnMut() -> Result<T, E>,
) -> T {
    eventually_every(what, limit, POLL, check)
}

/// [`eventually`], checking every `every`: for checks that are costly
/// themselves (a process per check, a batch of queries).
pub fn eventually_every<T, E: Debug>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut check: impl FnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {limit:?} waiting for {what}; last seen: {last:?}")
            }
            Err(_) => std::thread::sleep(every),
        }
    }
}

/// [`eventually`] for async tests: the runtime's other tasks go on while it waits.
pub async fn eventually_async<T, E: Debug, F: Future<Output = Result<T, E>>>(
    what: &str,
    limit: Duration,
    check: impl FnMut() -> F,
) -> T {
    eventually_async_every(what, limit, POLL, check).await
}

/// [`eventually_every`] for async tests.
pub async fn eventually_async_every<T, E: Debug, F: Future<Output = Result<T, E>>>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {limit:?} waiting for {what}; last seen: {last:?}")
            }
            Err(_) => tokio::time::sleep(every).await,
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

/// Awaits a 503 from the admin API's /readyz within `limit` (after TERM:
/// the manager's --shutdown-delay, while it still serves); returns its
/// body.
pub fn not_ready_within(admin: SocketAddr, limit: Duration) -> String {
    eventually("/readyz to answer 503", limit, || {
        match get(admin, "/readyz").unwrap() {
            (503, body) => Ok(body),
            other => Err(other),
        }
    })
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

impl Report {
    /// Every failed request, unanswered ones included.
    pub fn failures(&self) -> u64 {
        self.failed + self.unanswered
    }
}

/// One load thread's way of sending a request: the status, or whether it
/// was a reset before any response byte, with the error's text.
pub type LoadClient = Box<dyn Fn() -> Result<u16, (bool, String)> + Send>;

/// Closed-loop load: `conns` threads, each sending requests one after
/// another until stopped, dropped, or `limit` passes.
pub struct Load {
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    threads: Vec<JoinHandle<()>>,
}

/// What the threads of a [`Load`] counted so far.
#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    /// Every failure but the unanswered ones.
    failed: AtomicU64,
    unanswered: AtomicU64,
    /// The first failures of all threads, for messages and the report.
    sample: Mutex<Vec<String>>,
}

/// How many failures a load keeps the text of.
const SAMPLE: usize = 20;

impl Load {
    /// Each request on a fresh connection (`Connection: close`).
    pub fn start(addr: SocketAddr, path: &str, conns: usize, limit: Duration) -> Load {
        let path = path.to_string();
        Load::with_clients(conns, limit, move || fresh_connections(addr, &path))
    }

    /// Each thread keeps one keep-alive connection (corral's pooled
    /// client, one per thread) and sends its requests on it, as browsers
    /// and proxies in front of corral do.
    pub fn start_keep_alive(addr: SocketAddr, path: &str, conns: usize, limit: Duration) -> Load {
        let uri = url(&addr.to_string(), path, &[]).unwrap();
        Load::with_clients(conns, limit, move || {
            let client = Client::new();
            let uri = uri.clone();
            Box::new(move || {
                runtime()
                    .block_on(client.send(Method::GET, uri.clone(), None, None, REQUEST_TIMEOUT))
                    .map(|a| a.status.as_u16())
                    .map_err(|e| (false, e.to_string()))
            })
        })
    }

    /// `conns` threads, each making requests with the client `client()`
    /// makes on that thread (where it may first enter a network namespace)
    /// until stopped or `limit` passes.
    pub fn with_clients(
        conns: usize,
        limit: Duration,
        client: impl Fn() -> LoadClient + Send + Sync + 'static,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let deadline = Instant::now() + limit;
        let client = Arc::new(client);
        let threads = (0..conns)
            .map(|_| {
                let (stop, counts, client) = (stop.clone(), counts.clone(), client.clone());
                std::thread::spawn(move || {
                    let send = client();
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let (count, error) = match send() {
                            Ok(200) => {
                                counts.ok.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            Err((true, e)) => (&counts.unanswered, e),
                            Err((false, e)) => (&counts.failed, e),
                            Ok(status) => (&counts.failed, format!("status {status}")),
                        };
                        count.fetch_add(1, Ordering::Relaxed);
                        let mut sample = counts.sample.lock().unwrap();
                        if sample.len() < SAMPLE {
                            sample.push(error);
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            counts,
            threads,
        }
    }

    pub fn ok_so_far(&self) -> u64 {
        self.counts.ok.load(Ordering::Relaxed)
    }

    /// Failures so far, unanswered ones included.
    pub fn failed_so_far(&self) -> u64 {
        self.counts.failed.load(Ordering::Relaxed) + self.counts.unanswered.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` more requests succeeded (the load is flowing).
    pub fn wait_progress(&self, n: u64, limit: Duration) {
        self.wait_progress_or(n, limit, String::new);
    }

    /// [`Load::wait_progress`]; if the requests do not flow within
    /// `limit`, panics with the first failures and `why()`: what the
    /// requests met on their way.
    pub fn wait_progress_or(&self, n: u64, limit: Duration, why: impl Fn() -> String) {
        let start = self.ok_so_far();
        let deadline = Instant::now() + limit;
        while self.ok_so_far() - start < n {
            if Instant::now() >= deadline {
                panic!(
                    "{} of {n} more requests answered in {limit:?}, {} failed, first failures: {:?}\n{}",
                    self.ok_so_far() - start,
                    self.failed_so_far(),
                    self.counts.sample.lock().unwrap(),
                    why()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    pub fn stop(mut self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.threads) {
            t.join().unwrap();
        }
        let counts = &self.counts;
        Report {
            ok: counts.ok.load(Ordering::Relaxed),
            failed: counts.failed.load(Ordering::Relaxed),
            unanswered: counts.unanswered.load(Ordering::Relaxed),
            errors: std::mem::take(&mut *counts.sample.lock().unwrap()),
        }
    }
}

/// A test that fails while its load runs does not leave the load running
/// into the tests after it (the threads end after their request).
impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A load client sending each GET of `path` on a fresh connection to `addr`.
pub fn fresh_connections(addr: SocketAddr, path: &str) -> LoadClient {
    let path = path.to_string();
    Box::new(move || match raw_get(addr, &path) {
        Ok(code) => Ok(code),
        Err(e) if e.to_string() == UNANSWERED => Err((true, e.to_string())),
        Err(e) => Err((false, e.to_string())),
    })
}

/// A request in a thread, for slow requests that must survive a shutdown.
pub fn in_background(addr: SocketAddr, path: &str) -> JoinHandle<Result<(u16, String), HttpError>> {
    let path = path.to_string();
    std::thread::spawn(move || get(addr, &path))
}

/// `n` GETs of `path` written on fresh connections and not yet answered:
/// connected before this returns, so they are in the listen queue or
/// taken by a worker. Raw sockets, as no client hands back a request it
/// has sent but whose answer it has not read.
pub fn sent_requests(addr: SocketAddr, path: &str, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .unwrap();
            s
        })
        .collect()
}

/// `n` requests written on fresh connections and not yet answered: with
/// the workers stopped, they wait in the listen queue.
pub fn queued_requests(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    sent_requests(addr, "/healthz", n)
}

/// What the server wrote on `s` until it closed it, raw.
pub fn read_all(s: &mut TcpStream) -> std::io::Result<String> {
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Reads every connection to its end and checks each was answered 200.
pub fn assert_answered(clients: &mut [TcpStream]) {
    for s in clients {
        let out = read_all(s).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }
}

/// The connections waiting in the accept queue of the TCP listener at
/// `addr` right now (IPv4; `rx_queue` of a LISTEN socket in
/// /proc/net/tcp), or `None` if nothing listens there.
pub fn accept_queue(addr: SocketAddr) -> Option<u32> {
    let IpAddr::V4(ip) = addr.ip() else {
        panic!("accept_queue reads /proc/net/tcp: IPv4 only, not {addr}");
    };
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(ip.octets()),
        addr.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(1) != Some(&local.as_str()) || f.get(3) != Some(&"0A") {
            return None;
        }
        let (_, rx) = f.get(4)?.split_once(':')?;
        u32::from_str_radix(rx, 16).ok()
    })
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
/// `helm template corral charts/corral --namespace corral-system EXTRA...`:
/// the chart rendered as its manifests are; panics if helm refuses.
pub fn render_chart(extra: &[&str]) -> String {
    let mut args = vec![
        "template",
        "corral",
        "charts/corral",
        "--namespace",
        "corral-system",
    ];
    args.extend_from_slice(extra);
    let (ok, text) = helm(&args);
    assert!(ok, "{text}");
    text
}

/// `helm` with its arguments written as a shell line, none with a space.
pub fn helm_line(line: &str) -> (bool, String) {
    helm(&line.split_whitespace().collect::<Vec<_>>())
}

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
    (out.status.success(), joined(&out))
}

/// Runs `cmd` to its end: success, and stdout then stderr.
/// Runs `cmd` to its end and returns its stdout; panics, naming it and
/// showing its stderr, if it failed.
pub fn stdout_of(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

pub fn output_text(cmd: &mut Command) -> (bool, String) {
    let out = finish(cmd, COMMAND_LIMIT);
    (out.status.success(), joined(&out))
}

/// How long a command run to its end by [`finish`] may take.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(120);

/// `cmd.output()`, within `limit`, in a process group of its own that is
/// killed once it ends. A corral expected to refuse to start that serves
/// instead would otherwise hang the test rather than fail it, and leave
/// its workers behind.
pub fn finish(cmd: &mut Command, limit: Duration) -> std::process::Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
    let group = Pid::from_raw(child.id() as i32);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let ended = rx.recv_timeout(limit);
    let _ = killpg(group, Signal::SIGKILL);
    match ended {
        Ok(out) => out.unwrap_or_else(|e| panic!("{cmd:?}: {e}")),
        Err(_) => {
            let text = rx.recv().ok().and_then(Result::ok).map(|o| joined(&o));
            panic!(
                "{cmd:?} still running after {limit:?}; it printed:\n{}",
                text.unwrap_or_default()
            )
        }
    }
}

fn joined(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Polls until `text()` contains `needle`; on a timeout, shows the last text.
pub fn wait_text(what: &str, limit: Duration, needle: &str, text: impl Fn() -> String) {
    eventually(what, limit, || {
        let now = text();
        if now.contains(needle) {
            Ok(())
        } else {
            Err(Text(now))
        }
    });
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

/// Every query of the chart's Grafana dashboard, with its variables set to
/// All and the rate interval to 10 s, as the dashboard tests run them.
pub fn dashboard_queries() -> Vec<String> {
    let text =
        std::fs::read_to_string(root().join("charts/corral/dashboards/corral.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut queries = Vec::new();
    let mut panels: Vec<&serde_json::Value> =
        dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = panels.pop() {
        if let Some(inner) = panel["panels"].as_array() {
            panels.extend(inner);
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push(
                target["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$namespace", ".*")
                    .replace("$pod", ".*")
                    .replace("$__rate_interval", "10s"),
            );
        }
    }
    queries
}

/// An admin token in a file of its own, removed on drop.
pub struct TokenFile(PathBuf);

impl TokenFile {
    pub fn new(token: &str) -> TokenFile {
        let path = std::env::temp_dir().join(unique("corral-token"));
        std::fs::write(&path, format!("{token}\n")).unwrap();
        TokenFile(path)
    }

    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TokenFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A JSON array of strings, as `&str`s.
pub fn strings(v: &serde_json::Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}
