//! `corral operator`: the WorkerAutoscaler controller. This module wires
//! the parts together: the Kubernetes client, leader election on a Lease
//! (so two replicas are safe: only the holder runs the controller), the
//! kube-runtime Controller (autoscalers, and the pods they select), and
//! the operator's own /livez, /readyz and /metrics.

pub mod crd;
pub mod decide;
pub mod metrics;
pub mod pods;
pub mod reconcile;
pub mod spec;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use k8s_openapi::api::core::v1::Pod;
use kube::core::SelectorExt;
use kube::runtime::controller::Controller;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Predicate, WatchStreamExt, predicates, watcher};
use kube::{Api, Client, CustomResourceExt, ResourceExt};
use kube_lease_manager::LeaseManagerBuilder;
use tracing::{debug, info, warn};

use crate::cli::OperatorArgs;
use crate::config::LogFormat;
use crate::http::server::Listener;
use crate::http::tls::Certs;
use crd::WorkerAutoscaler;
use metrics::OperatorMetrics;
use reconcile::Context;

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    #[error("kubeconfig: {0}")]
    Config(#[from] kube::config::InferConfigError),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("bad argument: {0}")]
    Usage(String),
    #[error("{0}")]
    Flags(#[from] crate::config::ConfigError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::http::tls::TlsError),
}

/// The CRD as YAML, for `corral crd` and manifests/crd.yaml.
pub fn crd_yaml() -> String {
    let crd = WorkerAutoscaler::crd();
    serde_saphyr::to_string(&crd).unwrap_or_default()
}

struct Health {
    /// The API server has answered and let this replica read the Lease
    /// (until then the operator retries): a standby that cannot read the
    /// Lease could never take over.
    connected: AtomicBool,
    /// This replica holds the lease and runs the controller.
    leading: AtomicBool,
}

pub fn main(args: OperatorArgs) -> Result<(), OperatorError> {
    if args.lease_grace_seconds >= args.lease_duration_seconds || args.lease_grace_seconds == 0 {
        return Err(OperatorError::Usage(
            "--lease-grace-seconds must be above 0 and below --lease-duration-seconds".into(),
        ));
    }
    crate::telemetry::init(args.log_format.unwrap_or(LogFormat::Text), &args.log_level);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: OperatorArgs) -> Result<(), OperatorError> {
    // The certificate is read before anything binds: a bad one changes
    // nothing.
    let certs = args.tls.files()?.map(Certs::new).transpose()?;
    let metrics = Arc::new(OperatorMetrics::new()?);
    let health = Arc::new(Health {
        connected: AtomicBool::new(false),
        leading: AtomicBool::new(false),
    });
    let listener = tokio::net::TcpListener::bind(args.metrics_bind)
        .await
        .map_err(|source| OperatorError::Bind {
            addr: args.metrics_bind,
            source,
        })?;
    let scheme = if certs.is_some() { "https" } else { "http" };
    match listener.local_addr() {
        Ok(addr) => info!(%addr, scheme, "serving /livez, /readyz and /metrics"),
        Err(e) => warn!(error = %e, "metrics listener address"),
    }
    // A Secret volume's update swaps the files under a running operator:
    // the watch picks the new certificate up, a bad one keeps the old.
    let (listener, cert_watch) = match certs {
        Some(certs) => {
            let watch = certs.watch();
            (Listener::Tls(listener, certs), Some(watch))
        }
        None => (Listener::Tcp(listener), None),
    };
    let (stop_http, http_stopped) = tokio::sync::watch::channel(false);
    let server = {
        let (health, metrics) = (health.clone(), metrics.clone());
        let handle = move |req: Request<crate::http::server::RequestBody>, _| {
            let answer = route(req.uri().path(), &health, &metrics);
            async move { answer }
        };
        tokio::spawn(crate::http::server::serve(
            vec![listener],
            crate::http::server::SMALL,
            handle,
            http_stopped,
        ))
    };
    let result = operate(args, &health, metrics).await;
    let _ = stop_http.send(true);
    let _ = server.await;
    if let Some(watch) = cert_watch {
        watch.abort();
    }
    result
}

/// Connects, takes part in leader election and runs the controller while
/// this replica leads, until TERM or INT.
async fn operate(
    args: OperatorArgs,
    health: &Health,
    metrics: Arc<OperatorMetrics>,
) -> Result<(), OperatorError> {
    let config = kube::Config::infer().await?;
    let client = Client::try_from(config)?;
    let mut shutdown = std::pin::pin!(shutdown_signal());
    let version = tokio::select! {
        version = connect(&client) => version,
        _ = &mut shutdown => return Ok(()),
    };
    let identity = args.identity.clone().unwrap_or_else(|| {
        format!(
            "{}-{}",
            std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "corral".into()),
            std::process::id()
        )
    });
    info!(server = %version.git_version, %identity, "operator starting");

    // Building the manager reads or creates the Lease. An API server that
    // has just started can refuse that for a moment (its RBAC cache not yet
    // filled gives a 403), so it is retried like the first connection.
    let build_lease = || {
        LeaseManagerBuilder::new(client.clone(), &args.lease_name)
            .with_namespace(&args.lease_namespace)
            .with_identity(&identity)
            .with_duration(args.lease_duration_seconds)
            .with_grace(args.lease_grace_seconds)
            .build()
    };
    let lease = tokio::select! {
        lease = until_ok("cannot take part in leader election", build_lease) => lease,
        _ = &mut shutdown => return Ok(()),
    };
    health.connected.store(true, Ordering::Relaxed);
    let (mut leader, lease_task) = lease.watch().await;
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "corral-operator".into(),
            instance: Some(identity.clone()),
        },
    );
    let ctx = Arc::new(Context::new(client.clone(), recorder, metrics.clone()));

    loop {
        if !*leader.borrow_and_update() {
            tokio::select! {
                _ = &mut shutdown => break,
                changed = leader.changed() => {
                    if changed.is_err() {
                        warn!("leader election stopped");
                        break;
                    }
                    continue;
                }
            }
        }
        info!(%identity, "leading: starting the controller");
        health.leading.store(true, Ordering::Relaxed);
        let controller = run_controller(client.clone(), ctx.clone(), args.namespace.as_deref());
        let lost = async {
            loop {
                if leader.changed().await.is_err() || !*leader.borrow_and_update() {
                    return;
                }
            }
        };
        tokio::select! {
            _ = controller => warn!("controller stopped"),
            _ = lost => warn!("lost the lease: stopping the controller"),
            _ = &mut shutdown => {
                health.leading.store(false, Ordering::Relaxed);
                break;
            }
        }
        health.leading.store(false, Ordering::Relaxed);
    }
    info!("shutting down: releasing the lease");
    drop(leader);
    match tokio::time::timeout(Duration::from_secs(5), lease_task).await {
        Ok(Ok(Err(e))) => warn!(error = %e, "lease release"),
        Err(_) => warn!("lease release timed out"),
        _ => {}
    }
    Ok(())
}

/// First wait between attempts to reach the API server, and the cap: an
/// operator started before its API server (a control plane coming up, a
/// network policy not yet applied) keeps serving /livez and a 503
/// /readyz, and connects as soon as it can.
const CONNECT_BACKOFF: Duration = Duration::from_millis(500);
const CONNECT_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Asks the API server for its version until it answers.
async fn connect(client: &Client) -> k8s_openapi::apimachinery::pkg::version::Info {
    until_ok("cannot reach the API server", || client.apiserver_version()).await
}

/// Runs `attempt` until it succeeds, with a warning per failure and the
/// connection's backoff between attempts.
async fn until_ok<T, E, F, Fut>(what: &'static str, mut attempt: F) -> T
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut failures = 0u32;
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(e) => {
                failures = failures.saturating_add(1);
                let wait =
                    crate::backoff::exponential(failures, CONNECT_BACKOFF, CONNECT_BACKOFF_MAX);
                warn!(
                    error = %e,
                    attempt = failures,
                    retry_in_ms = wait.as_millis() as u64,
                    "{what}"
                );
                tokio::time::sleep(wait).await;
            }
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Runs the controller until its streams end.
async fn run_controller(client: Client, ctx: Arc<Context>, namespace: Option<&str>) {
    let (autoscalers, pods): (Api<WorkerAutoscaler>, Api<Pod>) = match namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client, ns),
        ),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    // Only spec changes (and deletion, which bumps the generation) and
    // finalizer changes (the finalizer helper waits for its own to land)
    // start a pass; the pass's own status writes do not, or the utilisation
    // it reports would re-trigger it at once. Passes repeat on their own
    // every pollIntervalSeconds, and pod changes still start one.
    let (reader, writer) = reflector::store();
    let changed = watcher(autoscalers, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(
            predicates::generation.combine(predicates::finalizers),
            Default::default(),
        );
    let controller = Controller::for_stream(changed, reader);
    let store = controller.store();
    controller
        .watches(pods, watcher::Config::default(), move |pod: Pod| {
            let labels = reconcile::labels(&pod);
            let ns = pod.namespace();
            store
                .state()
                .into_iter()
                .filter(|wa| wa.namespace() == ns)
                .filter(|wa| {
                    kube::core::Selector::try_from(wa.spec.selector.clone())
                        .is_ok_and(|s| !s.selects_all() && s.matches(&labels))
                })
                .map(|wa| ObjectRef::from_obj(&*wa))
                .collect::<Vec<_>>()
        })
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => debug!(autoscaler = %object.name, "reconciled"),
                Err(e) => warn!(error = %e, "reconcile"),
            }
        })
        .await;
}

fn route(path: &str, health: &Health, metrics: &OperatorMetrics) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header(
                hyper::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    match path {
        "/livez" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" if health.connected.load(Ordering::Relaxed) => {
            let role = if health.leading.load(Ordering::Relaxed) {
                "leader"
            } else {
                "standby"
            };
            text(StatusCode::OK, format!("ready ({role})\n"))
        }
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to the API server or its Lease\n".into(),
        ),
        "/metrics" => text(StatusCode::OK, metrics.render()),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}
