//! The manager's configuration: flags, `CORRAL_*` environment variables and
//! a YAML file with the same keys, merged (flags > env > file > defaults)
//! and validated completely before anything is bound or started. Resolution
//! is pure: facts about the host come in as a [`Host`] value, so every rule
//! here is unit-tested without a cgroup or a socket.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::limits::MAX_WORKERS;
use crate::values::{AllowIps, BindAddr, ByteSize, CertReqs, Mode, Secs};

/// One layer of settings. The same struct is filled by clap (flags, then
/// env) and by the YAML file, so the two can never disagree on a key.
#[derive(Debug, Clone, Default, PartialEq, Args, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Settings {
    /// Address to listen on (repeatable): host:port, [::]:port, unix:/path, fd://N.
    #[arg(
        short = 'b',
        long,
        env = "CORRAL_BIND",
        value_delimiter = ',',
        value_name = "ADDR"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<Vec<BindAddr>>,

    /// Listen backlog of each socket corral binds [default: 2048].
    #[arg(long, env = "CORRAL_BACKLOG", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog: Option<u32>,

    /// File mode of unix sockets corral creates, in octal [default: 660].
    #[arg(long, env = "CORRAL_SOCKET_MODE", value_name = "MODE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_mode: Option<Mode>,

    /// Worker processes [default: WEB_CONCURRENCY, else the CPUs the cgroup allows].
    #[arg(short = 'w', long, env = "CORRAL_WORKERS", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<u32>,

    /// Fewest workers any scale request may leave [default: 1].
    #[arg(long, env = "CORRAL_MIN_WORKERS", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_workers: Option<u32>,

    /// Most workers any scale request may reach, at most 1024 [default: 4 x CPUs, at least --workers].
    #[arg(long, env = "CORRAL_MAX_WORKERS", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_workers: Option<u32>,

    /// Extra workers a rolling restart may start before old ones drain [default: 25% of workers, at least 1].
    #[arg(long, env = "CORRAL_MAX_SURGE", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<u32>,

    /// Memory the workers may use in all, for hosts without a cgroup limit (512Mi, 2G).
    #[arg(long, env = "CORRAL_MEMORY_LIMIT", value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<ByteSize>,

    /// Fraction of the memory limit kept free when sizing up [default: 0.1].
    #[arg(long, env = "CORRAL_MEMORY_HEADROOM", value_name = "FRACTION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_headroom: Option<f64>,

    /// Ready workers needed for /readyz to answer 200 [default: 1].
    #[arg(long, env = "CORRAL_MIN_READY", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_ready: Option<u32>,

    /// How a worker is judged ready: `auto` (READY=1, or alive for --boot-grace)
    /// or `notify` (READY=1 within --boot-timeout) [default: notify for the
    /// built-in worker, auto for a command].
    #[arg(long, env = "CORRAL_READINESS", value_name = "MODE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Readiness>,

    /// How long a silent worker must stay alive to count as ready [default: 1s].
    #[arg(long, env = "CORRAL_BOOT_GRACE", value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_grace: Option<Secs>,

    /// How long a notifying worker may take to send READY=1 [default: 60s].
    #[arg(long, env = "CORRAL_BOOT_TIMEOUT", value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_timeout: Option<Secs>,

    /// Watchdog: a worker that has sent WATCHDOG=1 and then stays silent this
    /// long is aborted and replaced; 0 turns it off [default: 30s].
    #[arg(short = 't', long, env = "CORRAL_TIMEOUT", value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Secs>,

    /// Time in-flight requests get after a worker's stop signal, before KILL [default: 30s].
    #[arg(long, env = "CORRAL_GRACEFUL_TIMEOUT", value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub graceful_timeout: Option<Secs>,

    /// On SIGTERM, keep serving this long while /readyz says 503, because
    /// Kubernetes removes endpoints late [default: 5s in Kubernetes, else 0].
    #[arg(long, env = "CORRAL_SHUTDOWN_DELAY", value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_delay: Option<Secs>,

    /// Failed boots in a row, before any worker was ever ready, after which
    /// corral exits non-zero [default: 5].
    #[arg(long, env = "CORRAL_MAX_BOOT_FAILURES", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_boot_failures: Option<u32>,

    /// Longest wait between restarts of a crashing worker [default: 30s].
    #[arg(long, env = "CORRAL_RESTART_BACKOFF_MAX", value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_backoff_max: Option<Secs>,

    /// Recycle a worker whose resident memory stays over this (512Mi, 1.5Gi)
    /// for --rss-samples samples in a row, its successor ready first [default: off].
    #[arg(long, env = "CORRAL_MAX_WORKER_MEMORY", value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_worker_memory: Option<ByteSize>,

    /// One-second memory samples in a row over --max-worker-memory that recycle a worker [default: 3].
    #[arg(long, env = "CORRAL_RSS_SAMPLES", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_samples: Option<u32>,

    /// Recycle each worker after this long, its successor ready first; 0 turns it off [default: off].
    #[arg(long, env = "CORRAL_MAX_WORKER_LIFETIME", value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_worker_lifetime: Option<Secs>,

    /// Up to this much longer per worker (random, fixed at its start), so
    /// workers started together do not retire together [default: 0].
    #[arg(long, env = "CORRAL_MAX_WORKER_LIFETIME_JITTER", value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_worker_lifetime_jitter: Option<Secs>,

    /// Proxy mode: corral accepts on --bind itself and forwards each request
    /// to the least busy worker, each worker on its own Unix socket
    /// (`{fd}`, `{socket}`) [default: off].
    #[arg(long, env = "CORRAL_PROXY", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<bool>,

    /// Proxy mode: where the private directory of worker sockets is made [default: $XDG_RUNTIME_DIR, else the temporary directory].
    #[arg(long, env = "CORRAL_RUNTIME_DIR", value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime_dir: Option<PathBuf>,

    /// Proxy mode: requests in flight per worker at most, the rest wait in corral's queue; 0 is unbounded [default: 0].
    #[arg(long, env = "CORRAL_WORKER_CONCURRENCY", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_concurrency: Option<u32>,

    /// Proxy mode: requests that may wait for a worker; more are answered 503 [default: 1024].
    #[arg(long, env = "CORRAL_MAX_QUEUE", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_queue: Option<u32>,

    /// Proxy mode: how long a request may wait for a worker before it is answered 503 [default: 30s].
    #[arg(long, env = "CORRAL_QUEUE_TIMEOUT", value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_timeout: Option<Secs>,

    /// Proxy mode: a worker is ready once a GET of this path on its socket
    /// answers 2xx-4xx [default: once it accepts a connection].
    #[arg(long, env = "CORRAL_WORKER_READY_PATH", value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_ready_path: Option<String>,

    /// Proxy mode: peers whose X-Forwarded-For, -Proto and -Host are kept:
    /// addresses, CIDR blocks or * [default: 127.0.0.1,::1].
    #[arg(long, env = "FORWARDED_ALLOW_IPS", value_name = "LIST")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forwarded_allow_ips: Option<AllowIps>,

    /// Proxy mode: recycle a worker after this many requests, its successor ready first; 0 is off [default: 0].
    #[arg(long, env = "CORRAL_MAX_REQUESTS", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u64>,

    /// Proxy mode: each worker's limit is --max-requests plus a random 0..=N fixed at its start [default: 0].
    #[arg(long, env = "CORRAL_MAX_REQUESTS_JITTER", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_requests_jitter: Option<u64>,

    /// Proxy mode: answer 504 when a worker has not started its response
    /// this long after the request reached it; 0 is off [default: 0].
    #[arg(long, env = "CORRAL_REQUEST_TIMEOUT", value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<Secs>,

    /// Proxy mode: a worker that hit --request-timeout is recycled, as
    /// Gunicorn's --timeout replaces a silent worker [default: false].
    #[arg(long, env = "CORRAL_KILL_STUCK", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kill_stuck: Option<bool>,

    /// Proxy mode: TLS certificate chain (PEM) for the https:// binds, or
    /// for every TCP bind when none is written https:// [default: no TLS].
    #[arg(long, env = "CORRAL_CERTFILE", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certfile: Option<PathBuf>,

    /// Proxy mode: the certificate's private key (PEM).
    #[arg(long, env = "CORRAL_KEYFILE", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyfile: Option<PathBuf>,

    /// Proxy mode: CA certificates (PEM) that client certificates are checked against.
    #[arg(long, env = "CORRAL_CA_CERTS", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_certs: Option<PathBuf>,

    /// Proxy mode: client certificates: none (0), optional (1) or required (2) [default: none, required with --ca-certs].
    #[arg(long, env = "CORRAL_CERT_REQS", value_name = "REQS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_reqs: Option<CertReqs>,

    /// Address of the admin API (probes, /workers, /metrics) [default: 0.0.0.0:9000].
    #[arg(long, env = "CORRAL_ADMIN_BIND", value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_bind: Option<SocketAddr>,

    /// File holding the bearer token that PUT/POST on the admin API require;
    /// without one they are refused.
    #[arg(long, env = "CORRAL_ADMIN_TOKEN_FILE", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,

    /// Log format [default: text].
    #[arg(long, env = "CORRAL_LOG_FORMAT", value_name = "FORMAT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,

    /// Log filter, as RUST_LOG (info, corral=debug) [default: info].
    #[arg(long, env = "CORRAL_LOG_LEVEL", value_name = "FILTER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,

    /// The worker command; `{fd}`, `{fd0}`, `{fd1}`... become the inherited
    /// listener descriptors. Without one, corral runs its built-in worker.
    #[arg(last = true, value_name = "COMMAND")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Readiness {
    Auto,
    Notify,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// What resolution needs to know about the machine, read once by the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    /// CPUs the cgroup quota allows, else the machine's.
    pub cpus: u32,
    /// `WEB_CONCURRENCY`, as Gunicorn and Uvicorn read it.
    pub web_concurrency: Option<String>,
    /// `KUBERNETES_SERVICE_HOST` is set: we run in a pod.
    pub in_kubernetes: bool,
    /// Listening sockets passed by systemd-style socket activation; they
    /// are the default binds when none is configured.
    pub listen_fds: Vec<i32>,
}

/// The validated configuration the manager runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub binds: Vec<BindAddr>,
    pub backlog: u32,
    pub socket_mode: u32,
    /// The worker count corral returns to when no runtime request is in force.
    pub workers: u32,
    pub min_workers: u32,
    pub max_workers: u32,
    pub max_surge: u32,
    pub memory_limit: Option<u64>,
    pub memory_headroom: f64,
    pub min_ready: u32,
    pub readiness: Readiness,
    pub boot_grace: Duration,
    pub boot_timeout: Duration,
    pub timeout: Option<Duration>,
    pub graceful_timeout: Duration,
    pub shutdown_delay: Duration,
    pub max_boot_failures: u32,
    pub restart_backoff_max: Duration,
    pub max_worker_memory: Option<u64>,
    pub rss_samples: u32,
    pub max_worker_lifetime: Option<Duration>,
    pub max_worker_lifetime_jitter: Duration,
    /// `Some` in proxy mode.
    pub proxy: Option<ProxyConfig>,
    pub admin_bind: SocketAddr,
    pub admin_token_file: Option<PathBuf>,
    pub log_format: LogFormat,
    pub log_level: String,
    /// `None` runs the built-in worker.
    pub command: Option<Vec<String>>,
}

/// The front's settings, present only in proxy mode.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    pub runtime_dir: Option<PathBuf>,
    pub worker_concurrency: Option<u32>,
    pub max_queue: u32,
    pub queue_timeout: Duration,
    pub worker_ready_path: Option<String>,
    pub forwarded_allow_ips: AllowIps,
    pub max_requests: Option<u64>,
    pub max_requests_jitter: u64,
    pub request_timeout: Option<Duration>,
    pub kill_stuck: bool,
    /// TLS for the https:// binds.
    pub tls: Option<TlsFiles>,
}

/// Where the front's certificate comes from; the files are read at start,
/// on HUP and when they change.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    pub certfile: PathBuf,
    pub keyfile: PathBuf,
    pub ca_certs: Option<PathBuf>,
    pub cert_reqs: CertReqs,
}

/// A setting that cannot be used; `field` is the flag/key name.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid value for `{field}`: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        message: message.into(),
    }
}

/// Which binds serve TLS: those written `https://`, or, given a
/// certificate and none so written, every TCP bind (Gunicorn's meaning of
/// `--certfile`).
fn tls_binds(
    binds: Vec<BindAddr>,
    proxy: Option<&ProxyConfig>,
) -> Result<Vec<BindAddr>, ConfigError> {
    let any_tls = binds.iter().any(|b| matches!(b, BindAddr::Tls(_)));
    match proxy.map(|p| p.tls.is_some()) {
        None if any_tls => Err(invalid(
            "bind",
            "https:// binds are served by proxy mode (--proxy)",
        )),
        Some(false) if any_tls => Err(invalid(
            "bind",
            "https:// binds need --certfile and --keyfile",
        )),
        Some(true) if !any_tls => Ok(binds
            .into_iter()
            .map(|b| match b {
                BindAddr::Tcp(addr) => BindAddr::Tls(addr),
                other => other,
            })
            .collect()),
        _ => Ok(binds),
    }
}

/// Gunicorn's TLS flags made one setting: a certificate needs its key,
/// client certificates need both and a CA to check them against. Used by
/// `corral run --proxy` and by the operator's metrics listener.
pub fn tls_files(
    certfile: Option<&PathBuf>,
    keyfile: Option<&PathBuf>,
    ca_certs: Option<&PathBuf>,
    cert_reqs: Option<CertReqs>,
) -> Result<Option<TlsFiles>, ConfigError> {
    match (certfile, keyfile) {
        (None, None) => {
            if ca_certs.is_some() || cert_reqs.is_some() {
                return Err(invalid(
                    "ca-certs",
                    "client certificates need --certfile and --keyfile",
                ));
            }
            Ok(None)
        }
        (Some(_), None) => Err(invalid("keyfile", "--certfile needs its --keyfile")),
        (None, Some(_)) => Err(invalid("certfile", "--keyfile needs its --certfile")),
        (Some(cert), Some(key)) => {
            let cert_reqs = cert_reqs.unwrap_or(if ca_certs.is_some() {
                CertReqs::Required
            } else {
                CertReqs::None
            });
            if cert_reqs != CertReqs::None && ca_certs.is_none() {
                return Err(invalid(
                    "cert-reqs",
                    "checking client certificates needs --ca-certs",
                ));
            }
            Ok(Some(TlsFiles {
                certfile: cert.clone(),
                keyfile: key.clone(),
                ca_certs: ca_certs.cloned(),
                cert_reqs,
            }))
        }
    }
}

/// The proxy mode's part of the configuration; its settings are refused
/// without `proxy`, where they would silently do nothing.
fn proxy_config(s: &Settings) -> Result<Option<ProxyConfig>, ConfigError> {
    if s.proxy != Some(true) {
        let given: [(&'static str, bool); 14] = [
            ("certfile", s.certfile.is_some()),
            ("keyfile", s.keyfile.is_some()),
            ("ca-certs", s.ca_certs.is_some()),
            ("cert-reqs", s.cert_reqs.is_some()),
            ("runtime-dir", s.runtime_dir.is_some()),
            ("worker-concurrency", s.worker_concurrency.is_some()),
            ("max-queue", s.max_queue.is_some()),
            ("queue-timeout", s.queue_timeout.is_some()),
            ("worker-ready-path", s.worker_ready_path.is_some()),
            ("forwarded-allow-ips", s.forwarded_allow_ips.is_some()),
            ("max-requests", s.max_requests.is_some_and(|n| n > 0)),
            (
                "max-requests-jitter",
                s.max_requests_jitter.is_some_and(|n| n > 0),
            ),
            (
                "request-timeout",
                s.request_timeout.is_some_and(|d| !d.0.is_zero()),
            ),
            ("kill-stuck", s.kill_stuck == Some(true)),
        ];
        if let Some((field, _)) = given.iter().find(|(_, set)| *set) {
            return Err(invalid(field, "only applies in proxy mode (--proxy)"));
        }
        return Ok(None);
    }
    let max_queue = s.max_queue.unwrap_or(1024);
    if max_queue > 1_000_000 {
        return Err(invalid("max-queue", "at most 1000000"));
    }
    let queue_timeout = s.queue_timeout.map_or(Duration::from_secs(30), |d| d.0);
    if queue_timeout.is_zero() {
        return Err(invalid("queue-timeout", "must be more than 0"));
    }
    if let Some(path) = &s.worker_ready_path
        && (!path.starts_with('/') || path.parse::<hyper::Uri>().is_err())
    {
        return Err(invalid(
            "worker-ready-path",
            format!("`{path}` is not a request path (example: /healthz)"),
        ));
    }
    let request_timeout = s.request_timeout.map(|d| d.0).filter(|d| !d.is_zero());
    let kill_stuck = s.kill_stuck.unwrap_or(false);
    if kill_stuck && request_timeout.is_none() {
        return Err(invalid("kill-stuck", "needs --request-timeout"));
    }
    let tls = tls_files(
        s.certfile.as_ref(),
        s.keyfile.as_ref(),
        s.ca_certs.as_ref(),
        s.cert_reqs,
    )?;
    Ok(Some(ProxyConfig {
        tls,
        runtime_dir: s.runtime_dir.clone(),
        worker_concurrency: s.worker_concurrency.filter(|n| *n > 0),
        max_queue,
        queue_timeout,
        worker_ready_path: s.worker_ready_path.clone(),
        forwarded_allow_ips: s
            .forwarded_allow_ips
            .clone()
            .unwrap_or_else(|| "127.0.0.1,::1".parse().expect("the default list parses")),
        max_requests: s.max_requests.filter(|n| *n > 0),
        max_requests_jitter: s.max_requests_jitter.unwrap_or(0),
        request_timeout,
        kill_stuck,
    }))
}

impl Settings {
    /// Fills every unset field of `self` from `lower`.
    pub fn or(self, lower: Settings) -> Settings {
        Settings {
            bind: self.bind.or(lower.bind),
            backlog: self.backlog.or(lower.backlog),
            socket_mode: self.socket_mode.or(lower.socket_mode),
            workers: self.workers.or(lower.workers),
            min_workers: self.min_workers.or(lower.min_workers),
            max_workers: self.max_workers.or(lower.max_workers),
            max_surge: self.max_surge.or(lower.max_surge),
            memory_limit: self.memory_limit.or(lower.memory_limit),
            memory_headroom: self.memory_headroom.or(lower.memory_headroom),
            min_ready: self.min_ready.or(lower.min_ready),
            readiness: self.readiness.or(lower.readiness),
            boot_grace: self.boot_grace.or(lower.boot_grace),
            boot_timeout: self.boot_timeout.or(lower.boot_timeout),
            timeout: self.timeout.or(lower.timeout),
            graceful_timeout: self.graceful_timeout.or(lower.graceful_timeout),
            shutdown_delay: self.shutdown_delay.or(lower.shutdown_delay),
            max_boot_failures: self.max_boot_failures.or(lower.max_boot_failures),
            restart_backoff_max: self.restart_backoff_max.or(lower.restart_backoff_max),
            max_worker_memory: self.max_worker_memory.or(lower.max_worker_memory),
            rss_samples: self.rss_samples.or(lower.rss_samples),
            max_worker_lifetime: self.max_worker_lifetime.or(lower.max_worker_lifetime),
            max_worker_lifetime_jitter: self
                .max_worker_lifetime_jitter
                .or(lower.max_worker_lifetime_jitter),
            proxy: self.proxy.or(lower.proxy),
            runtime_dir: self.runtime_dir.or(lower.runtime_dir),
            worker_concurrency: self.worker_concurrency.or(lower.worker_concurrency),
            max_queue: self.max_queue.or(lower.max_queue),
            queue_timeout: self.queue_timeout.or(lower.queue_timeout),
            worker_ready_path: self.worker_ready_path.or(lower.worker_ready_path),
            forwarded_allow_ips: self.forwarded_allow_ips.or(lower.forwarded_allow_ips),
            max_requests: self.max_requests.or(lower.max_requests),
            max_requests_jitter: self.max_requests_jitter.or(lower.max_requests_jitter),
            request_timeout: self.request_timeout.or(lower.request_timeout),
            kill_stuck: self.kill_stuck.or(lower.kill_stuck),
            certfile: self.certfile.or(lower.certfile),
            keyfile: self.keyfile.or(lower.keyfile),
            ca_certs: self.ca_certs.or(lower.ca_certs),
            cert_reqs: self.cert_reqs.or(lower.cert_reqs),
            admin_bind: self.admin_bind.or(lower.admin_bind),
            admin_token_file: self.admin_token_file.or(lower.admin_token_file),
            log_format: self.log_format.or(lower.log_format),
            log_level: self.log_level.or(lower.log_level),
            command: self.command.filter(|c| !c.is_empty()).or(lower.command),
        }
    }

    /// Parses a YAML config file's text.
    pub fn from_yaml(path: &Path, text: &str) -> Result<Settings, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Settings::default());
        }
        serde_saphyr::from_str(text).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Reads and parses a YAML config file.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Settings::from_yaml(path, &text)
    }
}

impl Config {
    /// Merges the layers (`cli` already holds flags over env) over `file`,
    /// applies defaults and validates everything.
    pub fn resolve(cli: Settings, file: Settings, host: &Host) -> Result<Config, ConfigError> {
        let s = cli.or(file);
        let proxy = proxy_config(&s)?;

        let binds = s.bind.unwrap_or_else(|| {
            if host.listen_fds.is_empty() {
                vec![BindAddr::Tcp(SocketAddr::from(([0, 0, 0, 0], 8000)))]
            } else {
                host.listen_fds.iter().map(|fd| BindAddr::Fd(*fd)).collect()
            }
        });
        if binds.is_empty() {
            return Err(invalid("bind", "at least one address is needed"));
        }
        if binds.len() > 64 {
            return Err(invalid("bind", "at most 64 addresses"));
        }
        for (i, b) in binds.iter().enumerate() {
            if binds[..i].contains(b) {
                return Err(invalid("bind", format!("{b} is listed twice")));
            }
        }
        let binds = tls_binds(binds, proxy.as_ref())?;
        let backlog = s.backlog.unwrap_or(2048);
        if !(1..=65535).contains(&backlog) {
            return Err(invalid("backlog", "must be between 1 and 65535"));
        }

        let web_concurrency = match &host.web_concurrency {
            Some(v) => Some(
                v.trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| {
                        invalid(
                            "WEB_CONCURRENCY",
                            format!("`{v}` is not a positive whole number"),
                        )
                    })?,
            ),
            None => None,
        };
        let cpus = host.cpus.max(1);
        let over_cap = |field: &'static str, n: Option<u32>| match n {
            Some(n) if n > MAX_WORKERS => Err(invalid(
                field,
                format!("{n} is more than {MAX_WORKERS}, the most workers one manager runs"),
            )),
            _ => Ok(()),
        };
        over_cap("workers", s.workers)?;
        over_cap("WEB_CONCURRENCY", web_concurrency)?;
        over_cap("min-workers", s.min_workers)?;
        over_cap("max-workers", s.max_workers)?;
        over_cap("max-surge", s.max_surge)?;
        let min_workers = s.min_workers.unwrap_or(1);
        if min_workers < 1 {
            return Err(invalid("min-workers", "must be at least 1"));
        }
        let explicit_workers = s.workers.or(web_concurrency);
        if explicit_workers == Some(0) {
            return Err(invalid("workers", "must be at least 1"));
        }
        let max_workers = match s.max_workers {
            Some(max) => max,
            None => cpus
                .saturating_mul(4)
                .min(MAX_WORKERS)
                .max(explicit_workers.unwrap_or(0))
                .max(min_workers),
        };
        if max_workers < min_workers {
            return Err(invalid(
                "max-workers",
                format!("{max_workers} is below min-workers ({min_workers})"),
            ));
        }
        let workers = match explicit_workers {
            Some(w) if w < min_workers || w > max_workers => {
                return Err(invalid(
                    "workers",
                    format!(
                        "{w} is outside min-workers..max-workers ({min_workers}..{max_workers})"
                    ),
                ));
            }
            Some(w) => w,
            None => cpus.clamp(min_workers, max_workers),
        };
        let max_surge = s.max_surge.unwrap_or_else(|| workers.div_ceil(4)).max(1);

        let memory_headroom = s.memory_headroom.unwrap_or(0.1);
        if !(0.0..0.9).contains(&memory_headroom) {
            return Err(invalid(
                "memory-headroom",
                "must be a fraction from 0 to 0.9",
            ));
        }
        let memory_limit = s.memory_limit.map(|b| b.0);
        if memory_limit == Some(0) {
            return Err(invalid("memory-limit", "must be more than 0"));
        }
        let min_ready = s.min_ready.unwrap_or(1).min(workers);
        if s.min_ready.is_some_and(|n| n > max_workers) {
            return Err(invalid(
                "min-ready",
                format!("cannot exceed max-workers ({max_workers})"),
            ));
        }

        let command = s.command.filter(|c| !c.is_empty());
        if command.as_ref().is_some_and(|cmd| cmd[0].trim().is_empty()) {
            return Err(invalid("command", "the program name is empty"));
        }
        if proxy.is_none()
            && command
                .iter()
                .flatten()
                .any(|a| a.contains(crate::manager::spawn::SOCKET_PLACEHOLDER))
        {
            return Err(invalid(
                "command",
                "{socket} is the worker's own socket, which only proxy mode (--proxy) makes",
            ));
        }
        let readiness = s.readiness.unwrap_or(if command.is_some() {
            Readiness::Auto
        } else {
            Readiness::Notify
        });
        let boot_grace = s.boot_grace.map_or(Duration::from_secs(1), |d| d.0);
        let boot_timeout = s.boot_timeout.map_or(Duration::from_secs(60), |d| d.0);
        if boot_timeout.is_zero() {
            return Err(invalid("boot-timeout", "must be more than 0"));
        }
        if readiness == Readiness::Auto && boot_grace > boot_timeout {
            return Err(invalid("boot-grace", "cannot be longer than boot-timeout"));
        }
        let timeout =
            Some(s.timeout.map_or(Duration::from_secs(30), |d| d.0)).filter(|d| !d.is_zero());
        let graceful_timeout = s.graceful_timeout.map_or(Duration::from_secs(30), |d| d.0);
        let shutdown_delay = s.shutdown_delay.map_or(
            Duration::from_secs(if host.in_kubernetes { 5 } else { 0 }),
            |d| d.0,
        );
        let max_boot_failures = s.max_boot_failures.unwrap_or(5);
        if max_boot_failures < 1 {
            return Err(invalid("max-boot-failures", "must be at least 1"));
        }
        let restart_backoff_max = s
            .restart_backoff_max
            .map_or(Duration::from_secs(30), |d| d.0);
        if restart_backoff_max < Duration::from_millis(100) {
            return Err(invalid("restart-backoff-max", "must be at least 100ms"));
        }

        let max_worker_memory = s.max_worker_memory.map(|b| b.0);
        if max_worker_memory == Some(0) {
            return Err(invalid("max-worker-memory", "must be more than 0"));
        }
        let rss_samples = s.rss_samples.unwrap_or(3);
        if rss_samples < 1 {
            return Err(invalid("rss-samples", "must be at least 1"));
        }
        let max_worker_lifetime = s.max_worker_lifetime.map(|d| d.0).filter(|d| !d.is_zero());
        let max_worker_lifetime_jitter =
            s.max_worker_lifetime_jitter.map_or(Duration::ZERO, |d| d.0);

        let log_level = s.log_level.unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            return Err(invalid(
                "log-level",
                format!("`{log_level}` is not a log filter"),
            ));
        }

        Ok(Config {
            binds,
            backlog,
            socket_mode: s.socket_mode.map_or(0o660, |m| m.0),
            workers,
            min_workers,
            max_workers,
            max_surge,
            memory_limit,
            memory_headroom,
            min_ready,
            readiness,
            boot_grace,
            boot_timeout,
            timeout,
            graceful_timeout,
            shutdown_delay,
            max_boot_failures,
            restart_backoff_max,
            max_worker_memory,
            rss_samples,
            max_worker_lifetime,
            max_worker_lifetime_jitter,
            proxy,
            admin_bind: s
                .admin_bind
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 9000))),
            admin_token_file: s.admin_token_file,
            log_format: s.log_format.unwrap_or(LogFormat::Text),
            log_level,
            command,
        })
    }

    /// The front's TLS files, in proxy mode with a certificate.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.proxy.as_ref().and_then(|p| p.tls.as_ref())
    }

    /// The configuration written back as a settings layer, for
    /// `--print-config`: the output is itself a valid config file.
    pub fn to_settings(&self) -> Settings {
        Settings {
            bind: Some(self.binds.clone()),
            backlog: Some(self.backlog),
            socket_mode: Some(Mode(self.socket_mode)),
            workers: Some(self.workers),
            min_workers: Some(self.min_workers),
            max_workers: Some(self.max_workers),
            max_surge: Some(self.max_surge),
            memory_limit: self.memory_limit.map(ByteSize),
            memory_headroom: Some(self.memory_headroom),
            min_ready: Some(self.min_ready),
            readiness: Some(self.readiness),
            boot_grace: Some(Secs(self.boot_grace)),
            boot_timeout: Some(Secs(self.boot_timeout)),
            timeout: Some(Secs(self.timeout.unwrap_or_default())),
            graceful_timeout: Some(Secs(self.graceful_timeout)),
            shutdown_delay: Some(Secs(self.shutdown_delay)),
            max_boot_failures: Some(self.max_boot_failures),
            restart_backoff_max: Some(Secs(self.restart_backoff_max)),
            max_worker_memory: self.max_worker_memory.map(ByteSize),
            rss_samples: Some(self.rss_samples),
            max_worker_lifetime: Some(Secs(self.max_worker_lifetime.unwrap_or_default())),
            max_worker_lifetime_jitter: Some(Secs(self.max_worker_lifetime_jitter)),
            proxy: Some(self.proxy.is_some()),
            runtime_dir: self.proxy.as_ref().and_then(|p| p.runtime_dir.clone()),
            worker_concurrency: self
                .proxy
                .as_ref()
                .map(|p| p.worker_concurrency.unwrap_or(0)),
            max_queue: self.proxy.as_ref().map(|p| p.max_queue),
            queue_timeout: self.proxy.as_ref().map(|p| Secs(p.queue_timeout)),
            worker_ready_path: self
                .proxy
                .as_ref()
                .and_then(|p| p.worker_ready_path.clone()),
            forwarded_allow_ips: self.proxy.as_ref().map(|p| p.forwarded_allow_ips.clone()),
            max_requests: self.proxy.as_ref().map(|p| p.max_requests.unwrap_or(0)),
            max_requests_jitter: self.proxy.as_ref().map(|p| p.max_requests_jitter),
            request_timeout: self
                .proxy
                .as_ref()
                .map(|p| Secs(p.request_timeout.unwrap_or_default())),
            kill_stuck: self.proxy.as_ref().map(|p| p.kill_stuck),
            certfile: self.tls().map(|t| t.certfile.clone()),
            keyfile: self.tls().map(|t| t.keyfile.clone()),
            ca_certs: self.tls().and_then(|t| t.ca_certs.clone()),
            cert_reqs: self.tls().map(|t| t.cert_reqs),
            admin_bind: Some(self.admin_bind),
            admin_token_file: self.admin_token_file.clone(),
            log_format: Some(self.log_format),
            log_level: Some(self.log_level.clone()),
            command: self.command.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Host {
        Host {
            cpus: 2,
            web_concurrency: None,
            in_kubernetes: false,
            listen_fds: vec![],
        }
    }

    fn yaml(text: &str) -> Result<Settings, ConfigError> {
        Settings::from_yaml(Path::new("corral.yaml"), text)
    }

    #[test]
    fn defaults_follow_the_host() {
        let c = Config::resolve(Settings::default(), Settings::default(), &host()).unwrap();
        assert_eq!(c.workers, 2);
        assert_eq!(c.max_workers, 8);
        assert_eq!(c.min_workers, 1);
        assert_eq!(c.max_surge, 1);
        assert_eq!(c.backlog, 2048);
        assert_eq!(c.readiness, Readiness::Notify);
        assert_eq!(c.shutdown_delay, Duration::ZERO);
        assert_eq!(c.timeout, Some(Duration::from_secs(30)));
        let in_pod = Host {
            in_kubernetes: true,
            ..host()
        };
        let c = Config::resolve(Settings::default(), Settings::default(), &in_pod).unwrap();
        assert_eq!(c.shutdown_delay, Duration::from_secs(5));
    }

    #[test]
    fn socket_activation_supplies_the_default_binds() {
        let h = Host {
            listen_fds: vec![3, 4],
            ..host()
        };
        let c = Config::resolve(Settings::default(), Settings::default(), &h).unwrap();
        assert_eq!(c.binds, vec![BindAddr::Fd(3), BindAddr::Fd(4)]);
    }

    #[test]
    fn web_concurrency_sets_the_default_count() {
        let h = Host {
            web_concurrency: Some("3".into()),
            ..host()
        };
        assert_eq!(
            Config::resolve(Settings::default(), Settings::default(), &h)
                .unwrap()
                .workers,
            3
        );
        let bad = Host {
            web_concurrency: Some("many".into()),
            ..host()
        };
        let err = Config::resolve(Settings::default(), Settings::default(), &bad).unwrap_err();
        assert!(err.to_string().contains("WEB_CONCURRENCY"), "{err}");
    }

    #[test]
    fn flags_beat_file_and_file_beats_defaults() {
        let file = yaml("workers: 3\nbacklog: 100\ngraceful-timeout: 5s\n").unwrap();
        let cli = Settings {
            workers: Some(4),
            ..Settings::default()
        };
        let c = Config::resolve(cli, file, &host()).unwrap();
        assert_eq!(c.workers, 4);
        assert_eq!(c.backlog, 100);
        assert_eq!(c.graceful_timeout, Duration::from_secs(5));
    }

    #[test]
    fn a_command_defaults_to_auto_readiness() {
        let file = yaml("command: [uvicorn, --fd, '{fd}', app:app]\n").unwrap();
        let c = Config::resolve(Settings::default(), file, &host()).unwrap();
        assert_eq!(c.readiness, Readiness::Auto);
        assert_eq!(c.command.unwrap()[0], "uvicorn");
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            ("workers: 0\n", "workers"),
            ("workers: 10\nmax-workers: 4\n", "workers"),
            ("min-workers: 5\nmax-workers: 2\n", "max-workers"),
            ("memory-headroom: 2\n", "memory-headroom"),
            ("backlog: 0\n", "backlog"),
            ("bind: ['127.0.0.1:1', '127.0.0.1:1']\n", "bind"),
            ("log-level: 'a=b=c'\n", "log-level"),
            ("workers: 100000\n", "workers"),
            ("max-workers: 5000\n", "max-workers"),
            ("max-surge: 2000\n", "max-surge"),
        ];
        for (text, field) in cases {
            let file = yaml(text).unwrap();
            let err = Config::resolve(Settings::default(), file, &host()).unwrap_err();
            assert!(
                matches!(&err, ConfigError::Invalid { field: f, .. } if *f == field),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn bad_files_name_the_key() {
        let err = yaml("wrokers: 3\n").unwrap_err().to_string();
        assert!(err.contains("wrokers"), "{err}");
        let err = yaml("workers: -1\n").unwrap_err().to_string();
        assert!(err.contains("workers"), "{err}");
        let err = yaml("bind: [nowhere]\n").unwrap_err().to_string();
        assert!(err.contains("nowhere"), "{err}");
        assert!(yaml("workers: [\n").is_err());
    }

    #[test]
    fn printed_config_reads_back_the_same() {
        let file =
            yaml("workers: 3\nbind: ['127.0.0.1:8001', 'unix:/tmp/x.sock']\nmemory-limit: 512Mi\n")
                .unwrap();
        let c = Config::resolve(Settings::default(), file, &host()).unwrap();
        let text = serde_saphyr::to_string(&c.to_settings()).unwrap();
        let again = Config::resolve(Settings::default(), yaml(&text).unwrap(), &host()).unwrap();
        assert_eq!(c, again);
    }

    #[test]
    fn proxy_mode_has_defaults_and_reads_back() {
        let file = yaml(
            "proxy: true\nworker-concurrency: 4\nmax-requests: 20\nmax-requests-jitter: 5\nforwarded-allow-ips: 10.0.0.0/8, ::1\nrequest-timeout: 2s\nkill-stuck: true\n",
        )
        .unwrap();
        let c = Config::resolve(Settings::default(), file, &host()).unwrap();
        let p = c.proxy.clone().expect("proxy mode");
        assert_eq!(p.worker_concurrency, Some(4));
        assert_eq!((p.max_requests, p.max_requests_jitter), (Some(20), 5));
        assert_eq!(p.max_queue, 1024);
        assert_eq!(p.queue_timeout, Duration::from_secs(30));
        assert!(p.forwarded_allow_ips.allows("10.1.2.3".parse().unwrap()));
        assert!(!p.forwarded_allow_ips.allows("127.0.0.1".parse().unwrap()));
        assert!(p.kill_stuck);
        let text = serde_saphyr::to_string(&c.to_settings()).unwrap();
        let again = Config::resolve(Settings::default(), yaml(&text).unwrap(), &host()).unwrap();
        assert_eq!(c, again);
        let off = Config::resolve(Settings::default(), Settings::default(), &host()).unwrap();
        let text = serde_saphyr::to_string(&off.to_settings()).unwrap();
        let again = Config::resolve(Settings::default(), yaml(&text).unwrap(), &host()).unwrap();
        assert_eq!(again.proxy, None);
    }

    #[test]
    fn proxy_settings_without_proxy_mode_are_refused_by_name() {
        for (text, key) in [
            ("worker-concurrency: 2\n", "worker-concurrency"),
            ("max-requests: 100\n", "max-requests"),
            (
                "proxy: false\nforwarded-allow-ips: '*'\n",
                "forwarded-allow-ips",
            ),
            ("kill-stuck: true\n", "kill-stuck"),
            ("proxy: true\nkill-stuck: true\n", "kill-stuck"),
            ("proxy: true\nqueue-timeout: 0\n", "queue-timeout"),
            (
                "proxy: true\nworker-ready-path: healthz\n",
                "worker-ready-path",
            ),
            (
                "proxy: true\nforwarded-allow-ips: 10.0.0.0/40\n",
                "forwarded-allow-ips",
            ),
        ] {
            let err = yaml(text)
                .and_then(|f| Config::resolve(Settings::default(), f, &host()))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn out_of_range_values_in_the_file_name_their_key() {
        for (text, key) in [
            ("graceful-timeout: 1e300\n", "graceful-timeout"),
            ("timeout: 1e20\n", "timeout"),
            ("memory-limit: 99Ei\n", "memory-limit"),
            ("backlog: 1e12\n", "backlog"),
        ] {
            let err = yaml(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn the_default_maximum_stays_under_the_cap_on_huge_machines() {
        let big = Host {
            cpus: 100_000,
            ..host()
        };
        let c = Config::resolve(Settings::default(), Settings::default(), &big).unwrap();
        assert_eq!((c.workers, c.max_workers), (MAX_WORKERS, MAX_WORKERS));
    }

    mod arbitrary_input {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_config_file_text_is_an_error_or_a_config(text in any::<String>()) {
                if let Ok(file) = Settings::from_yaml(Path::new("c.yaml"), &text) {
                    let _ = Config::resolve(Settings::default(), file, &host());
                }
            }

            #[test]
            fn any_yaml_mapping_of_known_keys_is_an_error_or_a_config(
                key in prop::sample::select(vec![
                    "bind", "backlog", "workers", "max-workers", "memory-limit",
                    "memory-headroom", "timeout", "graceful-timeout", "shutdown-delay",
                    "socket-mode", "admin-bind", "readiness", "command", "proxy",
                    "worker-concurrency", "max-queue", "queue-timeout", "max-requests",
                    "forwarded-allow-ips", "request-timeout", "worker-ready-path",
                ]),
                value in "[ -~]{0,24}",
            ) {
                let text = format!("{key}: {value}\n");
                if let Ok(file) = Settings::from_yaml(Path::new("c.yaml"), &text) {
                    let _ = Config::resolve(Settings::default(), file, &host());
                }
            }

            #[test]
            fn any_web_concurrency_is_an_error_or_a_config(value in any::<String>()) {
                let h = Host { web_concurrency: Some(value), ..host() };
                let _ = Config::resolve(Settings::default(), Settings::default(), &h);
            }
        }
    }
}
