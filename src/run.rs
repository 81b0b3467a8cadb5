//! `corral run`: resolve and check the whole configuration, bind the admin
//! port and the listeners, then hand over to the supervision loop. Every
//! error before the loop starts exits with status 2 and starts nothing.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tracing::{error, info};

use crate::admin::{self, AdminState, metrics::Metrics};
use crate::cli::RunArgs;
use crate::config::{Checked, Config, Host, Settings};
use crate::manager::processes::System;
use crate::manager::reexec::HandOff;
use crate::manager::{Manager, Snapshot, Startup, readings};
use crate::telemetry;

/// A failure before the supervision loop runs: the exit status and why.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct RunError {
    pub code: i32,
    pub message: String,
}

fn usage(message: impl ToString) -> RunError {
    RunError {
        code: 2,
        message: message.to_string(),
    }
}

/// Facts about this machine and process that defaults depend on.
fn host() -> Host {
    let machine = readings::machine_cpus();
    let quota = readings::CgroupPaths::detect().and_then(|p| p.read().cpu_quota_cores);
    let activated = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id())
        && std::env::var(crate::manager::env::STATE_ENV).is_err();
    let count: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Host {
        cpus: readings::cpus_allowed(quota, machine),
        web_concurrency: std::env::var("WEB_CONCURRENCY").ok(),
        in_kubernetes: std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
        listen_fds: if activated {
            (3..3 + count).collect()
        } else {
            Vec::new()
        },
    }
}

pub fn main(args: RunArgs) -> Result<i32, RunError> {
    let file = match &args.config {
        Some(path) => Settings::load(path).map_err(usage)?,
        None => Settings::default(),
    };
    let host = host();
    let config = Config::resolve(args.settings.clone(), file, &host).map_err(usage)?;
    let checked = config
        .check(std::env::var_os("PATH").as_deref())
        .map_err(usage)?;
    if args.print_config {
        let yaml = serde_saphyr::to_string(&config.printed).map_err(usage)?;
        print!("{yaml}");
        return Ok(0);
    }
    if args.check_config {
        return Ok(0);
    }
    telemetry::init(config.log_format, &config.log_level);
    let handoff = HandOff::from_env().transpose().map_err(usage)?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError {
            code: 1,
            message: e.to_string(),
        })?;
    runtime.block_on(serve(args, config, host, checked, handoff))
}

async fn serve(
    args: RunArgs,
    config: Config,
    host: Host,
    checked: Checked,
    handoff: Option<HandOff>,
) -> Result<i32, RunError> {
    let admin_listener = match &handoff {
        Some(h) => {
            // SAFETY: the previous image handed this descriptor over, once.
            let std = std::net::TcpListener::from(unsafe { OwnedFd::from_raw_fd(h.admin_fd) });
            std.set_nonblocking(true).map_err(usage)?;
            tokio::net::TcpListener::from_std(std).map_err(usage)?
        }
        None => tokio::net::TcpListener::bind(config.admin_bind)
            .await
            .map_err(|e| {
                usage(format!(
                    "cannot bind admin address {}: {e}",
                    config.admin_bind
                ))
            })?,
    };
    let admin_fd = admin_listener.as_raw_fd();
    let metrics = Arc::new(Metrics::new().map_err(|e| RunError {
        code: 1,
        message: e.to_string(),
    })?);
    let proxy_metrics = match config.proxy {
        Some(_) => Some(
            crate::proxy::Metrics::register(metrics.registry()).map_err(|e| RunError {
                code: 1,
                message: e.to_string(),
            })?,
        ),
        None => None,
    };
    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(Snapshot::empty(&config)));
    let admin_addr = admin_listener.local_addr().map_err(usage)?;
    let startup = Startup {
        cli: args.settings,
        config_path: args.config,
        host,
        config,
        handoff,
        admin_fd,
        proxy_metrics,
    };
    let manager = Manager::new(startup, Box::new(System), snapshot_tx).map_err(usage)?;
    // Orphans of workers come to us to be reaped, as they would to PID 1.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        error!(error = %e, "cannot become a subreaper");
    }
    let (commands_tx, commands_rx) = mpsc::channel(16);
    let state = Arc::new(AdminState {
        snapshot: snapshot_rx,
        commands: commands_tx,
        token: checked.token,
        metrics,
    });
    info!(admin = %admin_addr, version = env!("CARGO_PKG_VERSION"), "corral manager starting");
    let (stop_admin, admin_stopped) = watch::channel(false);
    let admin = tokio::spawn(admin::serve(admin_listener, state, admin_stopped));
    let code = manager.run(commands_rx).await;
    // Answers in progress (a last /readyz, a scrape) finish; then exit.
    let _ = stop_admin.send(true);
    let _ = admin.await;
    Ok(code)
}
