//! Every setting of `corral run`, declared once: its name (the field, which
//! clap makes the flag and serde the file key), type, default, help and
//! environment variable. The `settings!` table below generates the layer
//! that flags, env and the YAML file each fill (`Settings`), the merge of
//! layers (`or`), the layer over the defaults (`Merged`), the check that
//! proxy-mode settings are not given without proxy mode, and the layer that
//! `--print-config` writes. A default is written as a user would write the
//! value and parsed by the same parser, so the help text and the value in
//! force cannot disagree; a default that depends on the host is described
//! in words and computed in [`super::Config::resolve`].

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::values::{AllowIps, BindAddr, ByteSize, CertReqs, Mode, Secs};

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

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        <LogFormat as ValueEnum>::from_str(s, false)
    }
}

/// What a worker's own socket is in proxy mode: a Unix socket in the
/// private directory, or a loopback TCP port for servers that take only a
/// TCP listener as their inherited fd (Daphne's `--fd`, Twisted's
/// endpoints), as they get one in shared-socket mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SocketKind {
    Unix,
    Tcp,
}

impl FromStr for SocketKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        <SocketKind as ValueEnum>::from_str(s, false)
    }
}

/// Proxy mode's placeholder for the worker's own socket path in the command.
pub const SOCKET_PLACEHOLDER: &str = "{socket}";

/// A setting's key in the file and its flag: the field name in kebab case,
/// made at compile time so error messages can name it as `&'static str`.
macro_rules! key {
    ($name:ident) => {{
        const SNAKE: &str = stringify!($name);
        const BYTES: [u8; SNAKE.len()] = kebab(SNAKE);
        const KEY: &str = match std::str::from_utf8(&BYTES) {
            Ok(key) => key,
            Err(_) => panic!("setting names are ASCII"),
        };
        KEY
    }};
}

const fn kebab<const N: usize>(snake: &str) -> [u8; N] {
    let bytes = snake.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = if bytes[i] == b'_' { b'-' } else { bytes[i] };
        i += 1;
    }
    out
}

/// A default as written in the table, parsed by the setting's own parser.
/// `defaults_parse` below runs every one of them.
fn fixed<T: FromStr>(text: &str) -> T
where
    T::Err: Display,
{
    text.parse()
        .unwrap_or_else(|e| panic!("built-in default `{text}` does not parse: {e}"))
}

/// The merged type of a setting: the value itself where a default is
/// fixed, else still optional (resolution computes or leaves it).
macro_rules! merged_type {
    ($ty:ty) => { Option<$ty> };
    ($ty:ty, $fixed:literal) => { $ty };
}

macro_rules! merged_value {
    ($value:expr) => {
        $value
    };
    ($value:expr, $fixed:literal) => {
        match $value {
            Some(v) => v,
            None => fixed($fixed),
        }
    };
}

macro_rules! as_layer {
    ($value:expr) => {
        $value
    };
    ($value:expr, $fixed:literal) => {
        Some($value)
    };
}

/// Whether a given value counts as set: anything but the fixed default.
macro_rules! differs {
    ($value:expr, $ty:ty) => {
        true
    };
    ($value:expr, $ty:ty, $fixed:literal) => {
        *$value != fixed::<$ty>($fixed)
    };
}

macro_rules! proxy_only {
    () => {
        false
    };
    (proxy) => {
        true
    };
}

/// The table's grammar, one entry per setting:
/// `[proxy] name: Type = "fixed default" | "default in words", "help", (clap args);`
/// where `[proxy]` marks a proxy-mode setting and either default may be left out.
macro_rules! settings {
    (@args $args:ident;
        $($([$scope:ident])? $name:ident: $ty:ty $(= $fixed:literal)? $(| $about:literal)?,
            $help:literal, ($($arg:tt)*);)*
    ) => {
        /// The TLS settings as flags of their own, for `corral operator`.
        #[derive(Debug, Clone, Default, PartialEq, Args)]
        pub struct $args {
            $(
                #[arg(help = concat!($help $(, " [default: ", $fixed, "]")? $(, " [default: ", $about, "]")?), $($arg)*)]
                pub $name: Option<$ty>,
            )*
        }
    };
    ($($([$scope:ident])? $name:ident: $ty:ty $(= $fixed:literal)? $(| $about:literal)?,
        $help:literal, ($($arg:tt)*);)*
    ) => {
        /// One layer of settings. The same struct is filled by clap (flags,
        /// then env) and by the YAML file, so the two can never disagree on
        /// a key.
        #[derive(Debug, Clone, Default, PartialEq, Args, Deserialize, Serialize)]
        #[serde(rename_all = "kebab-case", deny_unknown_fields)]
        pub struct Settings {
            $(
                #[arg(help = concat!($help $(, " [default: ", $fixed, "]")? $(, " [default: ", $about, "]")?), $($arg)*)]
                #[serde(skip_serializing_if = "Option::is_none")]
                pub $name: Option<$ty>,
            )*
            /// The worker command; `{fd}`, `{fd0}`, `{fd1}`... become the
            /// inherited listener descriptors. Without one, corral runs its
            /// built-in worker.
            #[arg(last = true, value_name = "COMMAND")]
            #[serde(skip_serializing_if = "Option::is_none")]
            pub command: Option<Vec<String>>,
        }

        /// The layers merged over the fixed defaults.
        #[derive(Debug, Clone, PartialEq)]
        pub struct Merged {
            $(pub $name: merged_type!($ty $(, $fixed)?),)*
            pub command: Option<Vec<String>>,
        }

        impl Settings {
            /// Fills every unset field of `self` from `lower`.
            pub fn or(self, lower: Settings) -> Settings {
                Settings {
                    $($name: self.$name.or(lower.$name),)*
                    command: self.command.filter(|c| !c.is_empty()).or(lower.command),
                }
            }

            /// The layer with its fixed defaults filled in.
            pub fn merged(self) -> Merged {
                Merged {
                    $($name: merged_value!(self.$name $(, $fixed)?),)*
                    command: self.command.filter(|c| !c.is_empty()),
                }
            }

            /// The first proxy-mode setting given a value other than its
            /// default: without proxy mode it would silently do nothing.
            pub fn first_proxy_setting(&self) -> Option<&'static str> {
                $(
                    if proxy_only!($($scope)?)
                        && self.$name.as_ref().is_some_and(|_v| differs!(_v, $ty $(, $fixed)?))
                    {
                        return Some(key!($name));
                    }
                )*
                None
            }
        }

        impl Merged {
            /// Written back as a layer, for `--print-config`; proxy-mode
            /// settings are left out when proxy mode is off.
            pub fn into_settings(self) -> Settings {
                let proxy = self.proxy;
                let mut layer = Settings {
                    $($name: as_layer!(self.$name $(, $fixed)?),)*
                    command: self.command,
                };
                if !proxy {
                    $(if proxy_only!($($scope)?) {
                        layer.$name = None;
                    })*
                }
                layer
            }
        }
    };
}

/// The TLS settings, shared by `corral run`'s front and `corral operator`'s
/// metrics listener: one declaration spliced into both tables.
macro_rules! with_tls_settings {
    ($table:ident! { $($head:tt)* }) => {
        $table! {
            $($head)*
            [proxy] certfile: PathBuf | "no TLS",
                "TLS certificate chain (PEM). corral run: served on the https:// binds, or on every TCP bind when none is written https:// (proxy mode); corral operator: served on /livez, /readyz and /metrics. Re-read when its files change",
                (long, env = "CORRAL_CERTFILE", value_name = "FILE");
            [proxy] keyfile: PathBuf,
                "The certificate's private key (PEM)",
                (long, env = "CORRAL_KEYFILE", value_name = "FILE");
            [proxy] ca_certs: PathBuf,
                "CA certificates (PEM) that client certificates are checked against",
                (long, env = "CORRAL_CA_CERTS", value_name = "FILE");
            [proxy] cert_reqs: CertReqs | "none, required with --ca-certs",
                "Client certificates: none (0), optional (1) or required (2)",
                (long, env = "CORRAL_CERT_REQS", value_name = "REQS");
        }
    };
}

with_tls_settings!(settings! { @args TlsArgs; });

with_tls_settings!(settings! {
    bind: Vec<BindAddr> | "0.0.0.0:8000, or the sockets LISTEN_FDS passes",
        "Address to listen on (repeatable): host:port, [::]:port, unix:/path, fd://N; https://host:port in proxy mode",
        (short = 'b', long, env = "CORRAL_BIND", value_delimiter = ',', value_name = "ADDR");
    backlog: u32 = "2048",
        "Listen backlog of each socket corral binds",
        (long, env = "CORRAL_BACKLOG", value_name = "N");
    socket_mode: Mode = "660",
        "File mode of unix sockets corral creates, in octal",
        (long, env = "CORRAL_SOCKET_MODE", value_name = "MODE");
    workers: u32 | "WEB_CONCURRENCY, else the CPUs the cgroup allows",
        "Worker processes",
        (short = 'w', long, env = "CORRAL_WORKERS", value_name = "N");
    min_workers: u32 = "1",
        "Fewest workers any scale request may leave",
        (long, env = "CORRAL_MIN_WORKERS", value_name = "N");
    max_workers: u32 | "4 x CPUs, at least --workers",
        "Most workers any scale request may reach, at most 1024",
        (long, env = "CORRAL_MAX_WORKERS", value_name = "N");
    max_surge: u32 | "25% of workers, at least 1",
        "Extra workers a rolling restart may start before old ones drain",
        (long, env = "CORRAL_MAX_SURGE", value_name = "N");
    memory_limit: ByteSize,
        "Memory the workers may use in all, for hosts without a cgroup limit (512Mi, 2G)",
        (long, env = "CORRAL_MEMORY_LIMIT", value_name = "BYTES");
    memory_headroom: f64 = "0.1",
        "Fraction of the memory limit kept free when sizing up",
        (long, env = "CORRAL_MEMORY_HEADROOM", value_name = "FRACTION");
    min_ready: u32 = "1",
        "Ready workers needed for /readyz to answer 200",
        (long, env = "CORRAL_MIN_READY", value_name = "N");
    readiness: Readiness | "notify for the built-in worker, auto for a command",
        "How a worker is judged ready: `auto` (READY=1, or alive for --boot-grace) or `notify` (READY=1 within --boot-timeout)",
        (long, env = "CORRAL_READINESS", value_name = "MODE");
    boot_grace: Secs = "1s",
        "How long a silent worker must stay alive to count as ready",
        (long, env = "CORRAL_BOOT_GRACE", value_name = "SECS");
    boot_timeout: Secs = "60s",
        "How long a notifying worker may take to send READY=1",
        (long, env = "CORRAL_BOOT_TIMEOUT", value_name = "SECS");
    timeout: Secs = "30s",
        "Watchdog: a worker that has sent WATCHDOG=1 and then stays silent this long is aborted and replaced; 0 turns it off",
        (short = 't', long, env = "CORRAL_TIMEOUT", value_name = "SECS");
    graceful_timeout: Secs = "30s",
        "Time in-flight requests get after a worker's stop signal, before KILL",
        (long, env = "CORRAL_GRACEFUL_TIMEOUT", value_name = "SECS");
    shutdown_delay: Secs | "5s in Kubernetes, else 0",
        "On SIGTERM, keep serving this long while /readyz says 503, because Kubernetes removes endpoints late",
        (long, env = "CORRAL_SHUTDOWN_DELAY", value_name = "SECS");
    max_boot_failures: u32 = "5",
        "Failed boots in a row, before any worker was ever ready, after which corral exits non-zero",
        (long, env = "CORRAL_MAX_BOOT_FAILURES", value_name = "N");
    restart_backoff_max: Secs = "30s",
        "Longest wait between restarts of a crashing worker",
        (long, env = "CORRAL_RESTART_BACKOFF_MAX", value_name = "SECS");
    max_worker_memory: ByteSize | "off",
        "Recycle a worker whose resident memory stays over this (512Mi, 1.5Gi) for --rss-samples samples in a row, its successor ready first",
        (long, env = "CORRAL_MAX_WORKER_MEMORY", value_name = "BYTES");
    rss_samples: u32 = "3",
        "One-second memory samples in a row over --max-worker-memory that recycle a worker",
        (long, env = "CORRAL_RSS_SAMPLES", value_name = "N");
    max_worker_lifetime: Secs = "0",
        "Recycle each worker after this long, its successor ready first; 0 turns it off",
        (long, env = "CORRAL_MAX_WORKER_LIFETIME", value_name = "SECS");
    max_worker_lifetime_jitter: Secs = "0",
        "Up to this much longer per worker (random, fixed at its start), so workers started together do not retire together",
        (long, env = "CORRAL_MAX_WORKER_LIFETIME_JITTER", value_name = "SECS");
    proxy: bool = "false",
        "Proxy mode: corral accepts on --bind itself and forwards each request to the least busy worker, each worker on its own socket (`{fd}`; see --worker-socket)",
        (long, env = "CORRAL_PROXY", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true");
    runtime_dir: PathBuf | "$XDG_RUNTIME_DIR, else the temporary directory",
        "Where corral makes its private directory: each worker's own XDG_RUNTIME_DIR and, in proxy mode, the worker sockets",
        (long, env = "CORRAL_RUNTIME_DIR", value_name = "DIR");
    [proxy] front_threads: u32 | "the CPUs the cgroup quota allows (rounded up), else the machine's",
        "Proxy mode: threads the front serves clients on, apart from the supervision loop and the admin API (nginx's worker_processes)",
        (long, env = "CORRAL_FRONT_THREADS", value_name = "N");
    [proxy] worker_socket: SocketKind = "unix",
        "Proxy mode: each worker's own socket, handed over as `{fd}`: `unix` (a Unix socket in the private directory, also named by `{socket}`) or `tcp` (a loopback TCP port the kernel picks, for servers that take only a TCP listener)",
        (long, env = "CORRAL_WORKER_SOCKET", value_name = "KIND");
    [proxy] worker_concurrency: u32 = "0",
        "Proxy mode: requests in flight per worker at most, the rest wait in corral's queue; 0 is unbounded",
        (long, env = "CORRAL_WORKER_CONCURRENCY", value_name = "N");
    [proxy] max_queue: u32 = "1024",
        "Proxy mode: requests that may wait for a worker; more are answered 503",
        (long, env = "CORRAL_MAX_QUEUE", value_name = "N");
    [proxy] queue_timeout: Secs = "30s",
        "Proxy mode: how long a request may wait for a worker before it is answered 503",
        (long, env = "CORRAL_QUEUE_TIMEOUT", value_name = "SECS");
    [proxy] worker_ready_path: String | "once it accepts a connection",
        "Proxy mode: a worker is ready once a GET of this path on its socket answers 2xx-4xx",
        (long, env = "CORRAL_WORKER_READY_PATH", value_name = "PATH");
    [proxy] forwarded_allow_ips: AllowIps = "127.0.0.1,::1",
        "Proxy mode: peers whose X-Forwarded-For, -Proto and -Host are kept: addresses, CIDR blocks or *",
        (long, env = "FORWARDED_ALLOW_IPS", value_name = "LIST");
    [proxy] max_connections: u32 = "16384",
        "Proxy mode: client connections held at once, WebSocket tunnels included; at the cap the one idle longest is closed to make room, and with none idle a new one waits (nginx's worker_connections)",
        (long, env = "CORRAL_MAX_CONNECTIONS", value_name = "N");
    [proxy] keep_alive: Secs = "75s",
        "Proxy mode: how long a client connection may stay idle between requests (an HTTP/2 one with no open stream) before it is closed; at the connection cap the one idle longest is closed first. nginx's keepalive_timeout, Gunicorn's --keep-alive",
        (long, env = "CORRAL_KEEP_ALIVE", value_name = "SECS");
    [proxy] client_header_timeout: Secs = "10s",
        "Proxy mode: how long a client may take, from connecting, to send a request's head (TLS handshake included); a silent or trickling client is closed then",
        (long, env = "CORRAL_CLIENT_HEADER_TIMEOUT", value_name = "SECS");
    [proxy] send_timeout: Secs = "60s",
        "Proxy mode: longest wait for a client to take the next part of its response before it is closed (nginx's send_timeout); the worker's place is freed then",
        (long, env = "CORRAL_SEND_TIMEOUT", value_name = "SECS");
    [proxy] tunnel_idle_timeout: Secs = "60s",
        "Proxy mode: an upgraded connection (WebSocket) in which neither side has sent a byte for this long is closed, and its worker's place freed (what nginx's proxy_read_timeout does to an idle WebSocket)",
        (long, env = "CORRAL_TUNNEL_IDLE_TIMEOUT", value_name = "SECS");
    [proxy] limit_request_line: u32 = "4094",
        "Proxy mode: longest request line (method, target, version) in bytes; a longer one gets 414 and is never forwarded; 0 is unbounded within the 64 KiB head (Gunicorn's)",
        (long, env = "CORRAL_LIMIT_REQUEST_LINE", value_name = "BYTES");
    [proxy] limit_request_fields: u32 = "100",
        "Proxy mode: header fields a request may have, at most 32768; more get 431 (Gunicorn's)",
        (long, env = "CORRAL_LIMIT_REQUEST_FIELDS", value_name = "N");
    [proxy] limit_request_field_size: u32 = "8190",
        "Proxy mode: largest request header field (name and value) in bytes; a larger one gets 431; 0 is unbounded within the 64 KiB head (Gunicorn's --limit-request-field_size)",
        (long, alias = "limit-request-field_size", env = "CORRAL_LIMIT_REQUEST_FIELD_SIZE", value_name = "BYTES");
    [proxy] client_body_timeout: Secs = "60s",
        "Proxy mode: longest wait between two reads of a request body before the client gets 408 and is closed (nginx's client_body_timeout)",
        (long, env = "CORRAL_CLIENT_BODY_TIMEOUT", value_name = "SECS");
    [proxy] client_max_body_size: ByteSize = "1Mi",
        "Proxy mode: largest request body (1Mi, 100M); a larger one gets 413 and is never forwarded; 0 is unbounded (nginx's client_max_body_size and default)",
        (long, env = "CORRAL_CLIENT_MAX_BODY_SIZE", value_name = "BYTES");
    [proxy] max_requests: u64 = "0",
        "Proxy mode: recycle a worker after this many requests, its successor ready first; 0 is off",
        (long, env = "CORRAL_MAX_REQUESTS", value_name = "N");
    [proxy] max_requests_jitter: u64 = "0",
        "Proxy mode: each worker's limit is --max-requests plus a random 0..=N fixed at its start",
        (long, env = "CORRAL_MAX_REQUESTS_JITTER", value_name = "N");
    [proxy] request_timeout: Secs = "0",
        "Proxy mode: answer 504 when a worker has not started its response this long after the request reached it; 0 is off",
        (long, env = "CORRAL_REQUEST_TIMEOUT", value_name = "SECS");
    [proxy] kill_stuck: bool = "false",
        "Proxy mode: a worker that hit --request-timeout is recycled, as Gunicorn's --timeout replaces a silent worker",
        (long, env = "CORRAL_KILL_STUCK", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true");
    admin_bind: SocketAddr = "0.0.0.0:9000",
        "Address of the admin API (probes, /workers, /metrics)",
        (long, env = "CORRAL_ADMIN_BIND", value_name = "ADDR");
    admin_token_file: PathBuf,
        "File holding the bearer token that PUT/POST on the admin API require; without one they are refused",
        (long, env = "CORRAL_ADMIN_TOKEN_FILE", value_name = "FILE");
    log_format: LogFormat = "text",
        "Log format",
        (long, env = "CORRAL_LOG_FORMAT", value_name = "FORMAT");
    log_level: String = "info",
        "Log filter, as RUST_LOG (info, corral=debug)",
        (long, env = "CORRAL_LOG_LEVEL", value_name = "FILTER");
});

impl Settings {
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

impl TlsArgs {
    /// The files to serve with, checked as `corral run`'s are.
    pub fn files(&self) -> Result<Option<super::TlsFiles>, ConfigError> {
        super::tls_files(
            self.certfile.as_ref(),
            self.keyfile.as_ref(),
            self.ca_certs.as_ref(),
            self.cert_reqs,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse() {
        let m = Settings::default().merged();
        assert_eq!(m.backlog, 2048);
        assert_eq!(m.socket_mode, Mode(0o660));
        assert_eq!(m.forwarded_allow_ips, "127.0.0.1,::1".parse().unwrap());
        assert_eq!(m.log_format, LogFormat::Text);
        assert_eq!(m.worker_socket, SocketKind::Unix);
        assert_eq!(m.admin_bind, SocketAddr::from(([0, 0, 0, 0], 9000)));
    }

    #[test]
    fn keys_are_the_names_in_kebab_case() {
        assert_eq!(key!(max_requests_jitter), "max-requests-jitter");
        assert_eq!(key!(proxy), "proxy");
    }

    #[test]
    fn a_proxy_setting_counts_as_given_only_off_its_default() {
        let at_default = Settings {
            max_requests: Some(0),
            kill_stuck: Some(false),
            ..Settings::default()
        };
        assert_eq!(at_default.first_proxy_setting(), None);
        let given = Settings {
            max_queue: Some(10),
            ..Settings::default()
        };
        assert_eq!(given.first_proxy_setting(), Some("max-queue"));
    }

    #[test]
    fn help_shows_the_default() {
        use clap::CommandFactory;
        #[derive(clap::Parser)]
        struct Probe {
            #[command(flatten)]
            settings: Settings,
        }
        let help = Probe::command().render_help().to_string();
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(help.contains("[default: 2048]"), "{help}");
        assert!(
            help.contains("[default: 4 x CPUs, at least --workers]"),
            "{help}"
        );
    }
}
