//! The command line of the one `corral` binary. Only clap types live here;
//! what the values mean is decided in [`crate::config`].

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Settings;

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
