//! `corral operator` against a real kube-apiserver (with etcd), running as
//! a real process with the ServiceAccount token the manifests' RBAC binds,
//! sizing real `corral run` managers that listen on 127.0.0.x as pod IPs.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use corral::contract::WorkersDoc;
use corral::operator::crd::WorkerAutoscaler;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::Role;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use support::cluster::{self as k, Cluster, Operator};
use support::prometheus::Prometheus;
use support::*;

const TOKEN: &str = "operator-test-token-0123456789";
const WAIT: Duration = Duration::from_secs(90);

struct Env {
    admin: Client,
    kubeconfig: PathBuf,
    ns: String,
    token_file: PathBuf,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.token_file);
    }
}

/// A namespace on the shared server, the CRD and RBAC installed, a token
/// for the operator's ServiceAccount, and the admin token Secret.
async fn setup(name: &str) -> Env {
    let shared = k::shared();
    let admin = k::client(&shared.url, &shared.admin_token);
    static INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    INSTALLED.get_or_init(|| k::install(&admin)).await;
    prepare(admin, name, |user, token| shared.kubeconfig(user, token)).await
}

/// The namespace, Secret, operator token and token file of one test, on
/// the server `admin` talks to.
async fn prepare(admin: Client, name: &str, kubeconfig: impl Fn(&str, &str) -> PathBuf) -> Env {
    let ns = format!("t-{name}");
    k::namespace(&admin, &ns).await;
    k::token_secret(&admin, &ns, "web-corral", TOKEN).await;
    let token = k::operator_token(&admin).await;
    let kubeconfig = kubeconfig(&format!("operator-{name}"), &token);
    let token_file =
        std::env::temp_dir().join(format!("corral-optoken-{}-{name}", std::process::id()));
    std::fs::write(&token_file, TOKEN).unwrap();
    Env {
        admin,
        kubeconfig,
        ns,
        token_file,
    }
}

fn manager(env: &Env, ip: &str, port: u16, args: &[&str]) -> Corral {
    let c = corral()
        .at(ip, port)
        .args(&["--admin-token-file", env.token_file.to_str().unwrap()])
        .args(args)
        .start();
    c.wait_for("the manager to serve", WAIT, |d| d.ready >= 1);
    c
}

/// One manager at `ip` (one worker, at most six; its admin port the
/// kernel's choice) and its Ready pod `name`.
async fn one_pod(env: &Env, ip: &str, name: &str) -> (Corral, u16) {
    let m = manager(env, ip, 0, &["-w", "1", "--max-workers", "6"]);
    k::ready_pod(&env.admin, &env.ns, name, web(), ip).await;
    let port = m.admin.port();
    (m, port)
}

async fn autoscaler(env: &Env, name: &str, spec: serde_json::Value) -> Api<WorkerAutoscaler> {
    let api: Api<WorkerAutoscaler> = Api::namespaced(env.admin.clone(), &env.ns);
    let wa: WorkerAutoscaler = serde_json::from_value(json!({
        "apiVersion": "corral.dev/v1alpha1",
        "kind": "WorkerAutoscaler",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap();
    api.create(&PostParams::default(), &wa).await.unwrap();
    api
}

/// Polls until `cond` holds on the manager's document.
async fn until_workers(c: &Corral, what: &str, cond: impl Fn(&WorkersDoc) -> bool) -> WorkersDoc {
    eventually_async(what, WAIT, || async {
        match c.try_workers() {
            Ok(doc) if cond(&doc) => Ok(doc),
            other => Err(other),
        }
    })
    .await
}

async fn until_status(
    api: &Api<WorkerAutoscaler>,
    name: &str,
    what: &str,
    cond: impl Fn(&WorkerAutoscaler) -> bool,
) -> WorkerAutoscaler {
    eventually_async(what, WAIT, || async {
        let wa = api.get(name).await.unwrap();
        if cond(&wa) { Ok(wa) } else { Err(wa.status) }
    })
    .await
}

fn condition(wa: &WorkerAutoscaler, type_: &str) -> Option<(String, String, String)> {
    wa.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// An autoscaler spec for the `app: web` pods on `port`, with the test
/// token, a one-second poll and `min..=max` workers, plus `fields`.
fn spec(port: u16, (min, max): (u32, u32), fields: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({
        "selector": {"matchLabels": {"app": "web"}},
        "adminPort": port,
        "tokenSecretRef": {"name": "web-corral", "key": "token"},
        "pollIntervalSeconds": 1,
        "minWorkers": min,
        "maxWorkers": max,
    });
    for (k, v) in fields.as_object().unwrap() {
        spec[k] = v.clone();
    }
    spec
}

/// The `metrics` field of one metric of `kind` at `target`.
fn metric(kind: &str, target: f64) -> serde_json::Value {
    json!({"metrics": [{"type": kind, "target": target}]})
}

/// 1..=6 workers on `metrics`, scaled down as soon as they ask.
fn concurrency_spec(port: u16, metrics: serde_json::Value) -> serde_json::Value {
    let down_at_once = json!({
        "stabilizationWindowSeconds": 0,
        "policies": [{"type": "Percent", "value": 100, "periodSeconds": 1}]
    });
    spec(
        port,
        (1, 6),
        json!({"metrics": metrics, "behavior": {"scaleDown": down_at_once}}),
    )
}

fn web() -> serde_json::Value {
    json!({"app": "web"})
}

/// Reconcile passes so far, whatever their result.
fn reconciles(text: &str) -> f64 {
    ["ok", "error"]
        .iter()
        .map(|result| {
            counter(
                text,
                "corral_operator_reconciliations_total",
                "result",
                result,
            )
        })
        .sum()
}

/// A labelled counter of the operator's, 0 before its first increment.
fn counter(text: &str, name: &str, label: &str, value: &str) -> f64 {
    metrics::value(text, name, &[(label, value)]).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_load_scales_pods_up_and_back_down() {
    let env = setup("cpu").await;
    // One admin port for both pods, as in a Deployment: the kernel picks it
    // for the first.
    let a = manager(&env, "127.0.0.2", 0, &["-w", "1", "--max-workers", "4"]);
    let port = a.admin.port();
    let b = manager(&env, "127.0.0.3", port, &["-w", "1", "--max-workers", "4"]);
    k::ready_pod(&env.admin, &env.ns, "web-a", web(), "127.0.0.2").await;
    k::ready_pod(&env.admin, &env.ns, "web-b", web(), "127.0.0.3").await;
    let api = autoscaler(
        &env,
        "web",
        spec(port, (1, 3), json!({"metrics": [{"type": "CPU", "target": 0.3}],
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": 0, "policies": [{"type": "Workers", "value": 2, "periodSeconds": 1}]},
                "scaleDown": {"stabilizationWindowSeconds": 8, "policies": [{"type": "Percent", "value": 100, "periodSeconds": 1}]}
            }})),
    )
    .await;
    let op = Operator::start(&env.kubeconfig, &env.ns, "op-cpu", "lease-cpu", &[]);
    let load_a = Load::start(a.http, "/cpu/300", 2, Duration::from_secs(120));
    let load_b = Load::start(b.http, "/cpu/300", 2, Duration::from_secs(120));
    until_workers(&a, "pod a to scale up", |d| d.desired >= 2).await;
    until_workers(&b, "pod b to scale up", |d| d.desired >= 2).await;
    let wa = until_status(&api, "web", "status of both pods", |wa| {
        wa.status
            .as_ref()
            .is_some_and(|s| s.pods == 2 && s.workers >= 4)
    })
    .await;
    assert_eq!(
        condition(&wa, "ScalingActive").unwrap().0,
        "True",
        "{:#?}",
        wa.status
    );
    assert_eq!(condition(&wa, "InvalidSpec").unwrap().0, "False");
    assert!(wa.status.as_ref().unwrap().utilisation.is_some());
    let events: Api<Event> = Api::namespaced(env.admin.clone(), &env.ns);
    let scaled_up = events.list(&ListParams::default()).await.unwrap();
    assert!(
        scaled_up
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("ScaledUp")),
        "{:#?}",
        scaled_up.items
    );
    let report_a = load_a.stop();
    let report_b = load_b.stop();
    assert_eq!(
        report_a.failed + report_b.failed,
        0,
        "{report_a:?} {report_b:?}"
    );
    until_workers(&a, "pod a to scale down", |d| d.desired == 1).await;
    until_workers(&b, "pod b to scale down", |d| d.desired == 1).await;
    let (_, text) = get(op.metrics, "/metrics").unwrap();
    for direction in ["up", "down"] {
        assert!(
            counter(
                &text,
                "corral_operator_scale_events_total",
                "direction",
                direction
            ) >= 2.0,
            "{direction}: {text}"
        );
    }
    assert!(reconciles(&text) >= 1.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_listen_queue_scales_up() {
    let env = setup("queue").await;
    let (m, port) = one_pod(&env, "127.0.0.4", "web-q").await;
    let worker = Pid::from_raw(m.workers().unwrap().workers[0].pid);
    kill(worker, Signal::SIGSTOP).unwrap();
    let mut clients = queued_requests(m.http, 3);
    let _api = autoscaler(&env, "web", spec(port, (1, 4), metric("QueueLength", 0.0))).await;
    let _op = Operator::start(&env.kubeconfig, &env.ns, "op-queue", "lease-queue", &[]);
    let doc = until_workers(&m, "a scale-up from the queue", |d| d.desired >= 2).await;
    assert!(doc.desired <= 4);
    // The new workers take the queued connections.
    assert_answered(&mut clients);
    kill(worker, Signal::SIGCONT).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_query_drives_scaling() {
    let env = setup("prom").await;
    let (m, port) = one_pod(&env, "127.0.0.5", "web-p").await;
    let prom = Prometheus::start(&[(m.admin, &[("pod", "web-p")])]);
    // Ten times the pod's own count against a target of 5: it doubles
    // until maxWorkers holds it.
    let api = autoscaler(
        &env,
        "web",
        spec(
            port,
            (1, 3),
            json!({"metrics": [{"type": "Prometheus", "prometheus": {
                "address": format!("http://{}", prom.addr),
                "query": "max(corral_workers_desired{pod=\"{{pod}}\"}) * 10",
                "target": 5
            }}]}),
        ),
    )
    .await;
    let _op = Operator::start(&env.kubeconfig, &env.ns, "op-prom", "lease-prom", &[]);
    until_workers(&m, "the Prometheus-driven scale-up", |d| d.desired == 3).await;
    until_status(&api, "web", "maxWorkers to show as the limit", |wa| {
        wa.status.as_ref().is_some_and(|s| {
            s.pod_status
                .iter()
                .any(|p| p.limited_by.as_deref() == Some("maxWorkers"))
        })
    })
    .await;
}

/// The `message` of pod `name` in the autoscaler's status.
fn pod_message(wa: &WorkerAutoscaler, name: &str) -> String {
    wa.status
        .as_ref()
        .and_then(|s| s.pod_status.iter().find(|p| p.name == name))
        .and_then(|p| p.message.clone())
        .unwrap_or_default()
}

/// The namespace's Events of `reason`.
async fn events_of(env: &Env, reason: &str) -> Vec<Event> {
    let events: Api<Event> = Api::namespaced(env.admin.clone(), &env.ns);
    let list = events.list(&ListParams::default()).await.unwrap();
    list.items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_without_concurrency_is_named_and_not_scaled_on_it() {
    let env = setup("concurrency").await;
    // Shared-socket mode: /workers has no concurrency. Three workers over
    // minWorkers 1, and scale-down neither stabilized nor rate-limited: a
    // missing value read as 0 would shrink the pod on the first pass.
    let m = manager(&env, "127.0.0.13", 0, &["-w", "3", "--max-workers", "6"]);
    let port = m.admin.port();
    assert_eq!(m.workers().unwrap().concurrency, None);
    k::ready_pod(&env.admin, &env.ns, "web-s", web(), "127.0.0.13").await;
    let fields = |metrics: serde_json::Value| concurrency_spec(port, metrics);
    let concurrency = json!({"type": "Concurrency", "target": 2});
    let api = autoscaler(&env, "web", fields(json!([concurrency]))).await;
    let op = Operator::start(
        &env.kubeconfig,
        &env.ns,
        "op-concurrency",
        "lease-concurrency",
        &[],
    );
    let wa = until_status(&api, "web", "the pod named in its status", |wa| {
        pod_message(wa, "web-s").contains("no concurrency reported")
    })
    .await;
    assert!(
        pod_message(&wa, "web-s").contains("--proxy"),
        "{:#?}",
        wa.status
    );
    let unreported = eventually_async("the ConcurrencyUnreported Event", WAIT, || async {
        match events_of(&env, "ConcurrencyUnreported").await {
            found if found.is_empty() => Err(()),
            found => Ok(found),
        }
    })
    .await;
    assert_eq!(unreported.len(), 1, "{unreported:#?}");
    let event = &unreported[0];
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(
        event.related.as_ref().and_then(|r| r.name.as_deref()),
        Some("web-s"),
        "{event:#?}"
    );
    assert!(
        event.note.as_deref().unwrap_or("").contains("pod web-s"),
        "{event:#?}"
    );

    // Passes go on: the pod keeps its count (no PUT at all), and the
    // Event is not repeated (a repeat would make it a series).
    let passes = || reconciles(&get(op.metrics, "/metrics").unwrap().1);
    let before = passes();
    eventually("three more passes", WAIT, || match passes() {
        n if n >= before + 3.0 => Ok(()),
        n => Err(n),
    });
    let doc = m.workers().unwrap();
    assert_eq!((doc.desired, doc.requested), (3, None));
    let unreported = events_of(&env, "ConcurrencyUnreported").await;
    assert_eq!(unreported.len(), 1, "{unreported:#?}");
    assert_eq!(unreported[0].series, None, "{unreported:#?}");

    // A metric the pod does report still decides beside it: an empty
    // listen queue at target 0 asks for minWorkers.
    let metrics = json!([concurrency, {"type": "QueueLength", "target": 0}]);
    let patch = json!({"spec": {"metrics": metrics}});
    api.patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    until_workers(&m, "the scale-down on the queue", |d| {
        d.desired == 1 && d.requested == Some(1)
    })
    .await;
    let wa = until_status(&api, "web", "the scale-down in the status", |wa| {
        wa.status
            .as_ref()
            .is_some_and(|s| s.pod_status.iter().any(|p| p.desired == Some(1)))
    })
    .await;
    assert!(
        pod_message(&wa, "web-s").contains("no concurrency reported"),
        "{:#?}",
        wa.status
    );
    assert_eq!(
        condition(&wa, "ScalingLimited").unwrap().1,
        "Limited",
        "{:#?}",
        wa.status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_mode_pod_scales_on_concurrency() {
    let env = setup("proxy").await;
    let m = manager(
        &env,
        "127.0.0.14",
        0,
        &["--proxy", "-w", "1", "--max-workers", "6"],
    );
    let port = m.admin.port();
    k::ready_pod(&env.admin, &env.ns, "web-x", web(), "127.0.0.14").await;
    // Six clients, each always waiting on a 300-ms request: about six in
    // flight, against a target of 2 per worker: three workers. The waits
    // cost no CPU, so a CPU metric would not move.
    let load = Load::start(m.http, "/delay/300", 6, Duration::from_secs(120));
    until_workers(&m, "concurrency under load", |d| {
        d.concurrency.is_some_and(|c| c > 3.0)
    })
    .await;
    let concurrency = json!([{"type": "Concurrency", "target": 2}]);
    let api = autoscaler(&env, "web", concurrency_spec(port, concurrency)).await;
    let _op = Operator::start(&env.kubeconfig, &env.ns, "op-proxy", "lease-proxy", &[]);
    until_workers(&m, "the scale-up on concurrency", |d| d.desired >= 3).await;
    let wa = until_status(&api, "web", "the scale-up in the status", |wa| {
        wa.status.as_ref().is_some_and(|s| s.workers >= 3)
    })
    .await;
    let status = wa.status.as_ref().unwrap();
    assert!(
        status.utilisation.as_deref().unwrap_or("").ends_with("/2"),
        "{status:#?}"
    );
    assert_eq!(pod_message(&wa, "web-x"), "", "{status:#?}");
    assert!(events_of(&env, "ConcurrencyUnreported").await.is_empty());
    let report = load.stop();
    assert_eq!(report.failed, 0, "{report:?}");
    // Idle, the pod goes back to minWorkers.
    until_workers(&m, "the scale-down once idle", |d| d.desired == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_get_a_condition_and_touch_no_pod() {
    let env = setup("invalid").await;
    let (m, port) = one_pod(&env, "127.0.0.6", "web-i").await;
    let api = autoscaler(&env, "backwards", spec(port, (5, 2), json!({}))).await;
    autoscaler(
        &env,
        "unknown-metric",
        spec(port, (3, 4), metric("Memory", 1.0)),
    )
    .await;
    let mut op = Operator::start(&env.kubeconfig, &env.ns, "op-invalid", "lease-invalid", &[]);
    for (name, words) in [
        ("backwards", "above maxWorkers"),
        ("unknown-metric", "unknown type `Memory`"),
    ] {
        let wa = until_status(&api, name, "InvalidSpec", |wa| {
            condition(wa, "InvalidSpec").is_some_and(|c| c.0 == "True")
        })
        .await;
        let (_, reason, message) = condition(&wa, "InvalidSpec").unwrap();
        assert_eq!(reason, "InvalidSpec");
        assert!(message.contains(words), "{message}");
    }
    // Both passes are over once counted: a valid autoscaler would have set
    // 3 workers in its pass; nothing touched the pod.
    eventually_async("both passes counted", WAIT, || async {
        match reconciles(&get(op.metrics, "/metrics").unwrap().1) {
            n if n >= 2.0 => Ok(()),
            n => Err(n),
        }
    })
    .await;
    let doc = m.workers().unwrap();
    assert_eq!((doc.desired, doc.requested), (1, None));
    // ... while the operator kept working: a spec change is still seen.
    assert!(op.is_running(), "{}", op.log());
    set_min(&api, "backwards", 6).await;
    let generation = api.get("backwards").await.unwrap().metadata.generation;
    until_status(&api, "backwards", "the new generation observed", |wa| {
        wa.status.as_ref().and_then(|s| s.observed_generation) == generation
    })
    .await;
    assert_eq!(m.workers().unwrap().desired, 1);
    // The schema itself refuses what it can express.
    let refused: Result<WorkerAutoscaler, _> = serde_json::from_value(json!({
        "apiVersion": "corral.dev/v1alpha1", "kind": "WorkerAutoscaler",
        "metadata": {"name": "zero"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "minWorkers": 0, "maxWorkers": 2}
    }));
    let err = api
        .create(&PostParams::default(), &refused.unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("minWorkers"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_pods_and_wrong_tokens_are_reported_not_hammered() {
    let env = setup("broken").await;
    let (m, port) = one_pod(&env, "127.0.0.7", "web-ok").await;
    k::ready_pod(&env.admin, &env.ns, "web-gone", web(), "127.0.0.8").await;
    k::token_secret(&env.admin, &env.ns, "wrong", "not-the-token-at-all-000").await;
    let api = autoscaler(
        &env,
        "web",
        json!({
            "selector": {"matchLabels": {"app": "web"}},
            "adminPort": port,
            "tokenSecretRef": {"name": "wrong", "key": "token"},
            "minWorkers": 2,
            "maxWorkers": 4,
            // Passes every second.
            "pollIntervalSeconds": 1
        }),
    )
    .await;
    let op = Operator::start(&env.kubeconfig, &env.ns, "op-broken", "lease-broken", &[]);
    let wa = until_status(&api, "web", "the token to be reported", |wa| {
        condition(wa, "ScalingActive").is_some_and(|c| c.1 == "Unauthorized")
    })
    .await;
    let status = wa.status.unwrap();
    let gone = status
        .pod_status
        .iter()
        .find(|p| p.name == "web-gone")
        .unwrap();
    assert!(
        gone.message
            .as_deref()
            .unwrap_or("")
            .contains("unreachable"),
        "{gone:?}"
    );
    let ok = status
        .pod_status
        .iter()
        .find(|p| p.name == "web-ok")
        .unwrap();
    assert_eq!(ok.current, Some(1));
    // Refused, reported, and retried at the poll interval, not in a loop
    // (of successful passes or of failing ones): six more passes take at
    // least two seconds (a pass a second, and the odd one a status write
    // or an event starts).
    let count = || reconciles(&get(op.metrics, "/metrics").unwrap().1);
    let (before, since) = (count(), std::time::Instant::now());
    eventually_async("six more passes", WAIT, || async {
        match count() {
            n if n >= before + 6.0 => Ok(()),
            n => Err(n),
        }
    })
    .await;
    assert!(
        since.elapsed() >= Duration::from_secs(2),
        "six passes in {:?} at a 1-s poll interval",
        since.elapsed()
    );
    assert_eq!(m.workers().unwrap().desired, 1);
    let events: Api<Event> = Api::namespaced(env.admin.clone(), &env.ns);
    let list = events.list(&ListParams::default()).await.unwrap();
    assert!(
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("Unauthorized")),
        "{:#?}",
        list.items
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_autoscaler_returns_pods_to_their_default() {
    let env = setup("delete").await;
    let (m, port) = one_pod(&env, "127.0.0.9", "web-d").await;
    let api = autoscaler(&env, "web", spec(port, (3, 4), json!({}))).await;
    let _op = Operator::start(&env.kubeconfig, &env.ns, "op-delete", "lease-delete", &[]);
    until_workers(&m, "minWorkers to apply", |d| {
        d.desired == 3 && d.requested == Some(3)
    })
    .await;
    api.delete("web", &DeleteParams::default()).await.unwrap();
    until_workers(&m, "the configured default", |d| {
        d.desired == 1 && d.requested.is_none()
    })
    .await;
    eventually_async("the finalizer to be removed", WAIT, || async {
        match api.get_opt("web").await.unwrap() {
            None => Ok(()),
            Some(wa) => Err(wa.metadata.finalizers),
        }
    })
    .await;
}

async fn set_min(api: &Api<WorkerAutoscaler>, name: &str, min: u32) {
    let patch = json!({"spec": {"minWorkers": min}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_only_the_leader_acts_and_a_kill_hands_over() {
    let env = setup("leader").await;
    let (m, port) = one_pod(&env, "127.0.0.10", "web-l").await;
    let lease_args = [
        "--lease-duration-seconds",
        "4",
        "--lease-grace-seconds",
        "1",
    ];
    let mut ops = [
        Operator::start(
            &env.kubeconfig,
            &env.ns,
            "op-a",
            "lease-leader",
            &lease_args,
        ),
        Operator::start(
            &env.kubeconfig,
            &env.ns,
            "op-b",
            "lease-leader",
            &lease_args,
        ),
    ];
    let api = autoscaler(&env, "web", spec(port, (2, 6), json!({}))).await;
    until_workers(&m, "the leader's change", |d| d.desired == 2).await;
    let roles: Vec<String> = ops
        .iter()
        .map(|o| get(o.metrics, "/readyz").unwrap().1)
        .collect();
    let leaders = roles.iter().filter(|r| r.contains("leader")).count();
    assert_eq!(leaders, 1, "{roles:?}");
    let leader = roles.iter().position(|r| r.contains("leader")).unwrap();
    let other = 1 - leader;
    assert!(
        !ops[other]
            .log()
            .contains("leading: starting the controller"),
        "{}",
        ops[other].log()
    );
    ops[leader].kill();
    set_min(&api, "web", 3).await;
    until_workers(&m, "the new leader's change", |d| d.desired == 3).await;
    assert!(
        get(ops[other].metrics, "/readyz")
            .unwrap()
            .1
            .contains("leader")
    );
    assert!(ops[other].is_running());
}

/// A server of the test's own (to stop and start), the manifests applied,
/// one pod at `ip` and an autoscaler asking it for 2 workers.
async fn own_cluster(name: &str, ip: &str) -> (Cluster, Env, Corral) {
    let cluster = Cluster::start();
    let admin = cluster.admin().await;
    k::install(&admin).await;
    let env = prepare(admin, name, |user, token| cluster.kubeconfig(user, token)).await;
    let (m, port) = one_pod(&env, ip, &format!("web-{name}")).await;
    autoscaler(&env, "web", spec(port, (2, 6), json!({}))).await;
    (cluster, env, m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_recovers_from_an_api_server_restart() {
    let (mut cluster, env, m) = own_cluster("restart", "127.0.0.11").await;
    let mut op = Operator::start(&env.kubeconfig, &env.ns, "op-restart", "lease-restart", &[]);
    until_workers(&m, "the first change", |d| d.desired == 2).await;
    cluster.restart_apiserver(Duration::from_secs(3));
    let api: Api<WorkerAutoscaler> = Api::namespaced(cluster.admin().await, &env.ns);
    set_min(&api, "web", 3).await;
    until_workers(&m, "a change after the restart", |d| d.desired == 3).await;
    assert!(op.is_running(), "{}", op.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_started_before_its_api_server_waits_and_then_reconciles() {
    let (mut cluster, env, m) = own_cluster("late", "127.0.0.12").await;
    // Without its Role the Lease is forbidden, as it is for a moment on an
    // API server that has just started (its RBAC cache still empty).
    let roles: Api<Role> = Api::namespaced(env.admin.clone(), "corral-system");
    roles
        .delete("corral-leader-election", &DeleteParams::default())
        .await
        .unwrap();
    cluster.stop_apiserver();
    let mut op = Operator::start(&env.kubeconfig, &env.ns, "op-late", "lease-late", &[]);
    // Retrying with a log line per attempt, alive but not ready meanwhile.
    eventually("two failed attempts in the log", WAIT, || {
        let log = op.log();
        match log.matches("cannot reach the API server").count() {
            n if n >= 2 => Ok(()),
            _ => Err(Text(log)),
        }
    });
    assert!(op.is_running(), "{}", op.log());
    assert_eq!(get(op.metrics, "/livez").unwrap().0, 200);
    let (code, body) = get(op.metrics, "/readyz").unwrap();
    assert_eq!(
        (code, body.trim()),
        (503, "not connected to the API server or its Lease")
    );
    assert_eq!(m.workers().unwrap().desired, 1, "nothing changed yet");

    cluster.start_apiserver();
    eventually("a forbidden Lease retried", WAIT, || {
        let log = op.log();
        match log.contains("cannot take part in leader election") {
            true => Ok(()),
            false => Err(Text(log)),
        }
    });
    assert!(op.is_running(), "{}", op.log());
    assert_eq!(get(op.metrics, "/readyz").unwrap().0, 503);
    assert_eq!(m.workers().unwrap().desired, 1, "nothing changed yet");
    k::install(&cluster.admin().await).await;
    until_workers(&m, "the change once allowed", |d| d.desired == 2).await;
    let (code, body) = get(op.metrics, "/readyz").unwrap();
    assert_eq!((code, body.trim()), (200, "ready (leader)"));
    assert!(op.is_running(), "{}", op.log());
}

/// `kubectl apply --dry-run=server` of `input` against the server of `kubeconfig`.
fn kubectl_dry_run(kubeconfig: &std::path::Path, input: &[u8]) -> (bool, String) {
    run_with_stdin(
        std::process::Command::new(k8s_tool("kubectl"))
            .args(["apply", "--dry-run=server", "-f", "-"])
            .env("KUBECONFIG", kubeconfig),
        input,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_render_and_the_manifests_are_accepted_by_the_api_server() {
    let _env = setup("dryrun").await;
    let shared = k::shared();
    let kubeconfig = shared.kubeconfig("admin-dryrun", &shared.admin_token);
    // Every optional object the server can check (the monitors need the
    // Prometheus Operator's CRDs: tests/chart.rs checks them).
    let render = render_chart(&[
        "--kube-version",
        "1.20.0",
        "--set",
        "podDisruptionBudget.enabled=true,dashboard.enabled=true",
    ]);
    let (ok, text) = kubectl_dry_run(&kubeconfig, render.as_bytes());
    assert!(ok, "{text}");
    for kind in ["deployment.apps", "poddisruptionbudget.policy", "configmap"] {
        assert!(
            text.contains(&format!("{kind}/corral")),
            "no {kind}: {text}"
        );
    }
    let mut files = vec![
        root().join("manifests/crd.yaml"),
        root().join("manifests/operator.yaml"),
    ];
    for entry in std::fs::read_dir(root().join("manifests/examples/django")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") && !path.ends_with("podmonitor.yaml") {
            files.push(path);
        }
    }
    assert_eq!(files.len(), 6, "{files:?}");
    for file in files {
        let (ok, text) = kubectl_dry_run(&kubeconfig, &std::fs::read(&file).unwrap());
        assert!(ok, "{}: {text}", file.display());
    }
}

/// The chart's `metrics.tls` setup: the operator serves its probes and
/// metrics over HTTPS from a certificate's files, serves a rotated one
/// without a restart (a Secret volume update), and refuses TLS flags that
/// do not make a certificate before it starts anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_serves_its_metrics_over_tls_and_takes_a_rotated_certificate() {
    use support::tls::{LOCAL, Pki, Usage, curl};
    let env = setup("tls").await;
    let pki = Pki::new();
    pki.issue("one", 1, Usage::Server(LOCAL));
    pki.issue("two", 2, Usage::Server(LOCAL));
    pki.install("one");
    let server_args = pki.server_args();
    let args: Vec<&str> = server_args.iter().map(String::as_str).collect();
    let mut op = Operator::start(&env.kubeconfig, &env.ns, "op-tls", "lease-tls", &args);
    let port = op.metrics.port();
    let url = |path: &str| format!("https://localhost:{port}{path}");
    let ca = pki.path("ca.pem").display().to_string();
    let resolve = format!("localhost:{port}:127.0.0.1");
    let checked = ["--cacert", ca.as_str(), "--resolve", resolve.as_str()];
    eventually("the operator ready over HTTPS", WAIT, || {
        match curl(&url("/readyz"), &checked) {
            (code, _, body) if code == "200" => Ok(body),
            other => Err(other),
        }
    });
    let (code, _, body) = curl(&url("/metrics"), &checked);
    assert_eq!(code, "200", "{body}");
    assert!(
        body.contains("corral_operator_reconciliations_total"),
        "{body}"
    );
    assert!(
        !matches!(get(op.metrics, "/livez"), Ok((200, _))),
        "plain HTTP answered on the TLS port"
    );

    assert_eq!(pki.served_serial(op.metrics), "serial=01");
    pki.install("two");
    eventually("the rotated certificate served", WAIT, || {
        match pki.served_serial(op.metrics) {
            s if s == "serial=02" => Ok(()),
            s => Err(s),
        }
    });
    assert_eq!(curl(&url("/livez"), &checked).0, "200");
    assert!(op.is_running(), "{}", op.log());

    let missing = pki.path("missing.pem").display().to_string();
    for (flags, names) in [
        (vec!["--certfile", ca.as_str()], "keyfile"),
        (
            vec!["--certfile", missing.as_str(), "--keyfile", ca.as_str()],
            "missing.pem",
        ),
        (vec!["--ca-certs", ca.as_str()], "ca-certs"),
    ] {
        let out = std::process::Command::new(BIN)
            .args(["operator", "--metrics-bind", "127.0.0.1:0"])
            .args(&flags)
            .env("KUBECONFIG", &env.kubeconfig)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(names),
            "{flags:?}: {stderr}"
        );
    }
}

/// The Deployment `web` (app: web) with `replicas`: no controller-manager
/// runs here, so only its scale changes, and the test's Pods stand in.
async fn deployment(env: &Env, replicas: i32) -> Api<k8s_openapi::api::apps::v1::Deployment> {
    let api = Api::namespaced(env.admin.clone(), &env.ns);
    let d = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": web()},
            "template": {
                "metadata": {"labels": web()},
                "spec": {"containers": [{"name": "app", "image": "corral:test"}]},
            },
        },
    }))
    .unwrap();
    api.create(&PostParams::default(), &d).await.unwrap();
    api
}

async fn until_replicas(
    api: &Api<k8s_openapi::api::apps::v1::Deployment>,
    what: &str,
    cond: impl Fn(i32) -> bool,
) -> i32 {
    eventually_async(what, WAIT, || async {
        let replicas = api
            .get_scale("web")
            .await
            .unwrap()
            .spec
            .unwrap()
            .replicas
            .unwrap();
        if cond(replicas) {
            Ok(replicas)
        } else {
            Err(replicas)
        }
    })
    .await
}

async fn events_with(env: &Env, reason: &str) -> Vec<Event> {
    let events: Api<Event> = Api::namespaced(env.admin.clone(), &env.ns);
    let all = events.list(&ListParams::default()).await.unwrap();
    all.items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

/// Issue 24: with scaleTargetRef the pod is filled to its ceiling
/// (maxWorkers 2) before the Deployment's replicas rise through its scale
/// subresource, with the operator's real RBAC; the load gone, replicas
/// fall back; an HPA on the same Deployment then keeps the replicas, named
/// in a condition and an Event, while workers still scale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_fill_the_pod_before_replicas_rise_and_an_hpa_is_never_fought() {
    let env = setup("replicas").await;
    let m = manager(&env, "127.0.0.15", 0, &["-w", "1", "--max-workers", "2"]);
    let port = m.admin.port();
    k::ready_pod(&env.admin, &env.ns, "web-r", web(), "127.0.0.15").await;
    let deploy = deployment(&env, 1).await;
    let fast = json!({
        "scaleUp": {"stabilizationWindowSeconds": 0, "policies": [{"type": "Workers", "value": 4, "periodSeconds": 1}]},
        "scaleDown": {"stabilizationWindowSeconds": 2, "policies": [{"type": "Percent", "value": 100, "periodSeconds": 1}]}
    });
    let api = autoscaler(
        &env,
        "web",
        spec(
            port,
            (1, 2),
            json!({
                "metrics": [{"type": "CPU", "target": 0.2}],
                "behavior": fast,
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 1,
                "maxReplicas": 3,
                "replicaBehavior": {
                    "scaleUp": {"policies": [{"type": "Pods", "value": 1, "periodSeconds": 1}]},
                    "scaleDown": {"stabilizationWindowSeconds": 3, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 1}]}
                },
            }),
        ),
    )
    .await;
    let _op = Operator::start(
        &env.kubeconfig,
        &env.ns,
        "op-replicas",
        "lease-replicas",
        &[],
    );
    let wa = until_status(&api, "web", "the replica level to report", |wa| {
        wa.status.as_ref().is_some_and(|s| s.replicas == Some(1))
    })
    .await;
    assert_eq!(
        condition(&wa, "ScalingReplicas").map(|c| (c.0, c.1)),
        Some(("True".into(), "Scaling".into())),
        "{:#?}",
        wa.status
    );

    let load = Load::start(m.http, "/cpu/300", 3, Duration::from_secs(120));
    until_replicas(&deploy, "the Deployment to get a second replica", |r| {
        r >= 2
    })
    .await;
    // Workers first: by the time replicas rose, the pod was at its ceiling.
    assert_eq!(m.workers().unwrap().desired, 2);
    // The second replica never appears (no controller-manager): held there.
    let wa = until_status(&api, "web", "podsStarting", |wa| {
        wa.status
            .as_ref()
            .is_some_and(|s| s.replicas_limited_by.as_deref() == Some("podsStarting"))
    })
    .await;
    assert_eq!(wa.status.as_ref().unwrap().desired_replicas, Some(2));
    assert!(!events_with(&env, "ScaledReplicasUp").await.is_empty());
    // The second replica's pod comes up with its configured one worker and
    // no load yet: it is brought at once to its share, here its ceiling.
    let joined = manager(&env, "127.0.0.16", port, &["-w", "1", "--max-workers", "2"]);
    k::ready_pod(&env.admin, &env.ns, "web-r2", web(), "127.0.0.16").await;
    until_workers(&joined, "the new pod brought to its share", |d| {
        d.desired == 2
    })
    .await;
    let report = load.stop();
    assert_eq!(report.failed, 0, "{report:?}");
    // The load gone: the demand fits in one pod again.
    until_replicas(&deploy, "the Deployment back to one replica", |r| r == 1).await;
    until_workers(&m, "the pod back to one worker", |d| d.desired == 1).await;

    let hpas: Api<k8s_openapi::api::autoscaling::v1::HorizontalPodAutoscaler> =
        Api::namespaced(env.admin.clone(), &env.ns);
    let hpa = serde_json::from_value(json!({
        "metadata": {"name": "web-hpa"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "minReplicas": 1,
            "maxReplicas": 5,
        },
    }))
    .unwrap();
    hpas.create(&PostParams::default(), &hpa).await.unwrap();
    let wa = until_status(&api, "web", "the HPA to be named", |wa| {
        condition(wa, "ScalingReplicas").is_some_and(|c| c.1 == "HPAControlsReplicas")
    })
    .await;
    let (status, _, message) = condition(&wa, "ScalingReplicas").unwrap();
    assert_eq!(status, "False");
    assert!(
        message.contains("HorizontalPodAutoscaler web-hpa"),
        "{message}"
    );
    assert!(!events_with(&env, "HPAControlsReplicas").await.is_empty());
    let load = Load::start(m.http, "/cpu/300", 3, Duration::from_secs(120));
    until_workers(&m, "workers to scale up beside the HPA", |d| d.desired == 2).await;
    // Full pod, more asked: the replicas are the HPA's all the same.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(until_replicas(&deploy, "replicas", |_| true).await, 1);
    let report = load.stop();
    assert_eq!(report.failed, 0, "{report:?}");
}
