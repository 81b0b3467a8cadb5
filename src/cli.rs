//! The command line of the one `corral` binary. Only clap types live here;
//! what the values mean is decided in [`crate::config`].

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Settings, TlsArgs};

#[derive(Debug, Parser)]
#[command(
    name = "corral",
    version,
    about = "A process manager for HTTP workers in Kubernetes pods"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the process manager: bind listeners, keep workers running.
    Run(Box<RunArgs>),
    /// Run the built-in HTTP worker on inherited (or its own) listeners.
    Worker(WorkerArgs),
    /// Show a running manager's workers.
    Status(StatusArgs),
    /// Set a running manager's worker count (`default` returns to the configured count).
    Scale(ScaleArgs),
    /// Roll every worker of a running manager, new before old.
    Restart(ClientArgs),
    /// Run the WorkerAutoscaler operator (Kubernetes controller).
    Operator(OperatorArgs),
    /// Print the WorkerAutoscaler CustomResourceDefinition as YAML.
    Crd,
}

#[derive(Debug, Args)]
pub struct OperatorArgs {
    /// Address of the operator's /livez, /readyz and /metrics.
    #[arg(
        long,
        env = "CORRAL_OPERATOR_METRICS_BIND",
        default_value = "0.0.0.0:8080"
    )]
    pub metrics_bind: SocketAddr,

    /// TLS for /livez, /readyz and /metrics, with `corral run`'s flags.
    #[command(flatten)]
    pub tls: TlsArgs,

    /// Watch only this namespace [default: all].
    #[arg(long, env = "CORRAL_OPERATOR_NAMESPACE")]
    pub namespace: Option<String>,

    /// Name of the Lease used for leader election.
    #[arg(
        long,
        env = "CORRAL_OPERATOR_LEASE_NAME",
        default_value = "corral-operator"
    )]
    pub lease_name: String,

    /// Namespace of the Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,

    /// This replica's name in the Lease [default: host name and pid].
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// How long a Lease holds without renewal.
    #[arg(long, default_value_t = 15)]
    pub lease_duration_seconds: u64,

    /// How long before expiry the holder renews.
    #[arg(long, default_value_t = 5)]
    pub lease_grace_seconds: u64,

    /// Log format [default: text].
    #[arg(long, env = "CORRAL_LOG_FORMAT")]
    pub log_format: Option<crate::config::LogFormat>,

    /// Log filter, as RUST_LOG.
    #[arg(long, env = "CORRAL_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// YAML file with the same keys as the flags (`workers: 4`,
    /// `graceful-timeout: 30s`); re-read on SIGHUP.
    #[arg(short = 'c', long, env = "CORRAL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Validate the configuration, print nothing, start nothing.
    #[arg(long)]
    pub check_config: bool,

    /// Print the resolved configuration as YAML and exit.
    #[arg(long)]
    pub print_config: bool,

    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Serve this inherited descriptor instead of those named by LISTEN_FDS.
    #[arg(long, value_name = "FD")]
    pub fd: Vec<i32>,

    /// Bind this address itself (for running the worker alone).
    #[arg(long, value_name = "ADDR")]
    pub bind: Vec<SocketAddr>,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The manager's admin address.
    #[arg(long, env = "CORRAL_ADMIN", default_value = "127.0.0.1:9000")]
    pub admin: String,

    /// File holding the admin bearer token.
    #[arg(long, env = "CORRAL_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientArgs,

    /// Print the raw /workers document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    #[command(flatten)]
    pub client: ClientArgs,

    /// Worker count, or `default`.
    pub workers: String,
}
