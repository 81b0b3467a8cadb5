//! The manager's configuration: flags, `CORRAL_*` environment variables and
//! a YAML file with the same keys, merged (flags > env > file > defaults)
//! and validated completely before anything is bound or started. Resolution
//! is pure: facts about the host come in as a [`Host`] value, so every rule
//! here is unit-tested without a cgroup or a socket.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod check;
mod servers;
mod settings;

use crate::http::framing::MAX_HEAD_BYTES;
use crate::http::head_limits::HeadLimits;
use crate::limits::MAX_WORKERS;
use crate::values::{AllowIps, BindAddr, CertReqs, Secs};

pub use crate::http::tls::TlsFiles;
pub use check::{Checked, resolve_program};
pub use settings::{
    LogFormat, Merged, Readiness, SOCKET_PLACEHOLDER, Settings, SocketKind, TlsArgs,
};

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
    /// Where the manager's private directory is made; `None`:
    /// `$XDG_RUNTIME_DIR`, else the temporary directory.
    pub runtime_dir: Option<PathBuf>,
    /// `Some` in proxy mode.
    pub proxy: Option<ProxyConfig>,
    pub admin_bind: SocketAddr,
    pub admin_token_file: Option<PathBuf>,
    pub log_format: LogFormat,
    pub log_level: String,
    /// `None` runs the built-in worker.
    pub command: Option<Vec<String>>,
    /// The configuration written back as a settings layer, for
    /// `--print-config`: the output is itself a valid config file.
    pub printed: Settings,
}

/// The front's settings, present only in proxy mode.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    /// The front's threads, at least 1.
    pub front_threads: u32,
    pub worker_socket: SocketKind,
    pub worker_concurrency: Option<u32>,
    pub max_queue: u32,
    pub queue_timeout: Duration,
    pub max_connections: u32,
    pub head_limits: HeadLimits,
    pub worker_ready_path: Option<String>,
    pub forwarded_allow_ips: AllowIps,
    pub max_requests: Option<u64>,
    pub max_requests_jitter: u64,
    pub request_timeout: Option<Duration>,
    pub kill_stuck: bool,
    pub keep_alive: Duration,
    pub client_header_timeout: Duration,
    pub client_body_timeout: Duration,
    pub send_timeout: Duration,
    pub tunnel_idle_timeout: Duration,
    /// `None`: unbounded.
    pub client_max_body_size: Option<u64>,
    /// TLS for the https:// binds.
    pub tls: Option<TlsFiles>,
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
fn proxy_config(
    given: &Settings,
    m: &Merged,
    host: &Host,
) -> Result<Option<ProxyConfig>, ConfigError> {
    if !m.proxy {
        if let Some(field) = given.first_proxy_setting() {
            return Err(invalid(field, "only applies in proxy mode (--proxy)"));
        }
        return Ok(None);
    }
    let front_threads = m.front_threads.unwrap_or(host.cpus.max(1));
    if !(1..=1024).contains(&front_threads) {
        return Err(invalid("front-threads", "must be between 1 and 1024"));
    }
    if !(1..=1_000_000).contains(&m.max_connections) {
        return Err(invalid("max-connections", "must be between 1 and 1000000"));
    }
    let max_head = MAX_HEAD_BYTES as u32;
    if m.limit_request_line > max_head {
        return Err(invalid("limit-request-line", format!("at most {max_head}")));
    }
    if !(1..=32768).contains(&m.limit_request_fields) {
        return Err(invalid(
            "limit-request-fields",
            "must be between 1 and 32768",
        ));
    }
    if m.limit_request_field_size > max_head {
        return Err(invalid(
            "limit-request-field-size",
            format!("at most {max_head}"),
        ));
    }
    let bound = |n: u32| Some(n as usize).filter(|n| *n > 0);
    let head_limits = HeadLimits {
        line: bound(m.limit_request_line),
        fields: m.limit_request_fields as usize,
        field_size: bound(m.limit_request_field_size),
    };
    if m.max_queue > 1_000_000 {
        return Err(invalid("max-queue", "at most 1000000"));
    }
    if m.queue_timeout.0.is_zero() {
        return Err(invalid("queue-timeout", "must be more than 0"));
    }
    if let Some(path) = &m.worker_ready_path
        && (!path.starts_with('/') || path.parse::<hyper::Uri>().is_err())
    {
        return Err(invalid(
            "worker-ready-path",
            format!("`{path}` is not a request path (example: /healthz)"),
        ));
    }
    let request_timeout = Some(m.request_timeout.0).filter(|d| !d.is_zero());
    if m.kill_stuck && request_timeout.is_none() {
        return Err(invalid("kill-stuck", "needs --request-timeout"));
    }
    if m.keep_alive.0.is_zero() {
        return Err(invalid("keep-alive", "must be more than 0"));
    }
    if m.client_header_timeout.0.is_zero() {
        return Err(invalid("client-header-timeout", "must be more than 0"));
    }
    if m.tunnel_idle_timeout.0.is_zero() {
        return Err(invalid("tunnel-idle-timeout", "must be more than 0"));
    }
    if m.send_timeout.0.is_zero() {
        return Err(invalid("send-timeout", "must be more than 0"));
    }
    if m.client_body_timeout.0.is_zero() {
        return Err(invalid("client-body-timeout", "must be more than 0"));
    }
    let tls = tls_files(
        m.certfile.as_ref(),
        m.keyfile.as_ref(),
        m.ca_certs.as_ref(),
        m.cert_reqs,
    )?;
    Ok(Some(ProxyConfig {
        tls,
        front_threads,
        worker_socket: m.worker_socket,
        worker_concurrency: Some(m.worker_concurrency).filter(|n| *n > 0),
        max_queue: m.max_queue,
        queue_timeout: m.queue_timeout.0,
        max_connections: m.max_connections,
        head_limits,
        worker_ready_path: m.worker_ready_path.clone(),
        forwarded_allow_ips: m.forwarded_allow_ips.clone(),
        max_requests: Some(m.max_requests).filter(|n| *n > 0),
        max_requests_jitter: m.max_requests_jitter,
        request_timeout,
        kill_stuck: m.kill_stuck,
        keep_alive: m.keep_alive.0,
        client_header_timeout: m.client_header_timeout.0,
        client_body_timeout: m.client_body_timeout.0,
        send_timeout: m.send_timeout.0,
        tunnel_idle_timeout: m.tunnel_idle_timeout.0,
        client_max_body_size: Some(m.client_max_body_size.0).filter(|n| *n > 0),
    }))
}

/// `WEB_CONCURRENCY` as Gunicorn and Uvicorn read it: a positive count.
fn web_concurrency(host: &Host) -> Result<Option<u32>, ConfigError> {
    let Some(v) = &host.web_concurrency else {
        return Ok(None);
    };
    match v.trim().parse::<u32>() {
        Ok(n) if n >= 1 => Ok(Some(n)),
        _ => Err(invalid(
            "WEB_CONCURRENCY",
            format!("`{v}` is not a positive whole number"),
        )),
    }
}

/// Every address once, at least one and at most 64; without any, the
/// sockets socket activation passed, else 0.0.0.0:8000.
fn binds(given: Option<Vec<BindAddr>>, host: &Host) -> Result<Vec<BindAddr>, ConfigError> {
    let binds = given.unwrap_or_else(|| {
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
    Ok(binds)
}

/// The worker counts: (workers, min, max, surge).
fn counts(m: &Merged, host: &Host) -> Result<(u32, u32, u32, u32), ConfigError> {
    let web_concurrency = web_concurrency(host)?;
    let over_cap = |field: &'static str, n: Option<u32>| match n {
        Some(n) if n > MAX_WORKERS => Err(invalid(
            field,
            format!("{n} is more than {MAX_WORKERS}, the most workers one manager runs"),
        )),
        _ => Ok(()),
    };
    over_cap("workers", m.workers)?;
    over_cap("WEB_CONCURRENCY", web_concurrency)?;
    over_cap("min-workers", Some(m.min_workers))?;
    over_cap("max-workers", m.max_workers)?;
    over_cap("max-surge", m.max_surge)?;
    let min_workers = m.min_workers;
    if min_workers < 1 {
        return Err(invalid("min-workers", "must be at least 1"));
    }
    let explicit_workers = m.workers.or(web_concurrency);
    if explicit_workers == Some(0) {
        return Err(invalid("workers", "must be at least 1"));
    }
    let cpus = host.cpus.max(1);
    let max_workers = match m.max_workers {
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
                format!("{w} is outside min-workers..max-workers ({min_workers}..{max_workers})"),
            ));
        }
        Some(w) => w,
        None => cpus.clamp(min_workers, max_workers),
    };
    let max_surge = m.max_surge.unwrap_or_else(|| workers.div_ceil(4)).max(1);
    Ok((workers, min_workers, max_workers, max_surge))
}

impl Config {
    /// Merges the layers (`cli` already holds flags over env) over `file`,
    /// applies defaults and validates everything.
    pub fn resolve(cli: Settings, file: Settings, host: &Host) -> Result<Config, ConfigError> {
        let given = cli.or(file);
        let m = given.clone().merged();
        let proxy = proxy_config(&given, &m, host)?;
        let binds = tls_binds(binds(m.bind.clone(), host)?, proxy.as_ref())?;
        if !(1..=65535).contains(&m.backlog) {
            return Err(invalid("backlog", "must be between 1 and 65535"));
        }
        let (workers, min_workers, max_workers, max_surge) = counts(&m, host)?;

        if !(0.0..0.9).contains(&m.memory_headroom) {
            return Err(invalid(
                "memory-headroom",
                "must be a fraction from 0 to 0.9",
            ));
        }
        let memory_limit = m.memory_limit.map(|b| b.0);
        if memory_limit == Some(0) {
            return Err(invalid("memory-limit", "must be more than 0"));
        }
        if m.min_ready > max_workers {
            return Err(invalid(
                "min-ready",
                format!("cannot exceed max-workers ({max_workers})"),
            ));
        }
        let min_ready = m.min_ready.min(workers);

        let command = m.command.clone();
        if command.as_ref().is_some_and(|cmd| cmd[0].trim().is_empty()) {
            return Err(invalid("command", "the program name is empty"));
        }
        let names_socket = command
            .iter()
            .flatten()
            .any(|a| a.contains(SOCKET_PLACEHOLDER));
        match proxy.as_ref().map(|p| p.worker_socket) {
            None if names_socket => {
                return Err(invalid(
                    "command",
                    "{socket} is the worker's own socket, which only proxy mode (--proxy) makes",
                ));
            }
            Some(SocketKind::Tcp) if names_socket => {
                return Err(invalid(
                    "command",
                    "{socket} is the path of a worker's Unix socket, and with --worker-socket tcp \
                     each worker gets a loopback TCP listener instead: name it with {fd} \
                     (a server that can only bind a path itself, as Granian's --uds, \
                     needs --worker-socket unix)",
                ));
            }
            _ => {}
        }
        if let Some(why) = command
            .as_deref()
            .and_then(|cmd| servers::refusal(cmd, proxy.is_some()))
        {
            return Err(invalid("command", why));
        }
        let readiness = m.readiness.unwrap_or(if command.is_some() {
            Readiness::Auto
        } else {
            Readiness::Notify
        });
        let (boot_grace, boot_timeout) = (m.boot_grace.0, m.boot_timeout.0);
        if boot_timeout.is_zero() {
            return Err(invalid("boot-timeout", "must be more than 0"));
        }
        if readiness == Readiness::Auto && boot_grace > boot_timeout {
            return Err(invalid("boot-grace", "cannot be longer than boot-timeout"));
        }
        let shutdown_delay = m.shutdown_delay.map_or(
            Duration::from_secs(if host.in_kubernetes { 5 } else { 0 }),
            |d| d.0,
        );
        if m.max_boot_failures < 1 {
            return Err(invalid("max-boot-failures", "must be at least 1"));
        }
        if m.restart_backoff_max.0 < Duration::from_millis(100) {
            return Err(invalid("restart-backoff-max", "must be at least 100ms"));
        }
        let max_worker_memory = m.max_worker_memory.map(|b| b.0);
        if max_worker_memory == Some(0) {
            return Err(invalid("max-worker-memory", "must be more than 0"));
        }
        if m.rss_samples < 1 {
            return Err(invalid("rss-samples", "must be at least 1"));
        }
        if tracing_subscriber::EnvFilter::try_new(&m.log_level).is_err() {
            return Err(invalid(
                "log-level",
                format!("`{}` is not a log filter", m.log_level),
            ));
        }

        let printed = Merged {
            bind: Some(binds.clone()),
            workers: Some(workers),
            max_workers: Some(max_workers),
            max_surge: Some(max_surge),
            min_ready,
            readiness: Some(readiness),
            shutdown_delay: Some(Secs(shutdown_delay)),
            front_threads: proxy.as_ref().map(|p| p.front_threads),
            cert_reqs: proxy
                .as_ref()
                .and_then(|p| p.tls.as_ref())
                .map(|t| t.cert_reqs),
            ..m.clone()
        }
        .into_settings();
        Ok(Config {
            binds,
            backlog: m.backlog,
            socket_mode: m.socket_mode.0,
            workers,
            min_workers,
            max_workers,
            max_surge,
            memory_limit,
            memory_headroom: m.memory_headroom,
            min_ready,
            readiness,
            boot_grace,
            boot_timeout,
            timeout: Some(m.timeout.0).filter(|d| !d.is_zero()),
            graceful_timeout: m.graceful_timeout.0,
            shutdown_delay,
            max_boot_failures: m.max_boot_failures,
            restart_backoff_max: m.restart_backoff_max.0,
            max_worker_memory,
            rss_samples: m.rss_samples,
            max_worker_lifetime: Some(m.max_worker_lifetime.0).filter(|d| !d.is_zero()),
            max_worker_lifetime_jitter: m.max_worker_lifetime_jitter.0,
            runtime_dir: m.runtime_dir.clone(),
            proxy,
            admin_bind: m.admin_bind,
            admin_token_file: m.admin_token_file,
            log_format: m.log_format,
            log_level: m.log_level,
            command,
            printed,
        })
    }

    /// The front's TLS files, in proxy mode with a certificate.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.proxy.as_ref().and_then(|p| p.tls.as_ref())
    }
}

#[cfg(test)]
mod tests;
