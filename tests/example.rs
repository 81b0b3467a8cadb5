//! What a user installs, end to end on a fresh kube-apiserver: the
//! operator from manifests/operator.yaml (the chart's default render) run
//! with its Deployment's own arguments, environment and ServiceAccount
//! token, and the Django example of manifests/examples/django created for
//! real, its pod served by a real `corral run` with the example's own
//! arguments in front of Uvicorn and Django.

mod support;

use std::time::Duration;

use corral::operator::crd::WorkerAutoscaler;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};
use support::cluster::{self as k, Cluster, Operator};
use support::prometheus::Prometheus;
use support::*;

const WAIT: Duration = Duration::from_secs(90);
const POD_IP: &str = "127.0.0.21";
const APP_POD: &str = "mysite-6f7d9-abcde";
const OPERATOR_POD: &str = "corral-5d9c7b-x2x4q";

fn docs(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    docs.into_iter().filter(Value::is_object).collect()
}

fn the(docs: &[Value], kind: &str) -> Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind}");
    found[0].clone()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// The container's environment as the kubelet would set it, for the pod
/// `pod` in `namespace`.
fn container_env(container: &Value, pod: &str, namespace: &str) -> Vec<(String, String)> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap().to_string();
            let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.name") => pod.to_string(),
                Some("metadata.namespace") => namespace.to_string(),
                Some(other) => panic!("unhandled fieldRef {other}"),
                None => e["value"].as_str().unwrap().to_string(),
            };
            (name, value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_as_deployed_reconciles_the_django_example() {
    let cluster = Cluster::start();
    let admin = cluster.admin().await;
    k::install(&admin).await;

    // The operator, as its Deployment would run it.
    let operator_docs = docs("manifests/operator.yaml");
    let deployment = the(&operator_docs, "Deployment");
    let namespace = deployment["metadata"]["namespace"].as_str().unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let sa = pod["serviceAccountName"].as_str().unwrap();
    let token = k::service_account_token(&admin, namespace, sa).await;
    let kubeconfig = cluster.kubeconfig("operator-example", &token);
    // Only the metrics address moves (to a port of the kernel's choosing,
    // read from the operator's log), so parallel tests cannot collide on 8080.
    let args: Vec<String> = strings(&container["args"])
        .into_iter()
        .map(|a| match a.strip_prefix("--metrics-bind=") {
            Some(_) => "--metrics-bind=127.0.0.1:0".to_string(),
            None => a,
        })
        .collect();
    let env = container_env(container, OPERATOR_POD, namespace);
    let operator = Operator::spawn(&kubeconfig, "deployed", &args, &env);
    let metrics = operator.metrics;

    // The example, created for real (its PodMonitor needs the Prometheus
    // Operator's CRDs, which this server lacks: tests/chart.rs checks it).
    let mut example = Vec::new();
    for file in [
        "secret.yaml",
        "deployment.yaml",
        "service.yaml",
        "workerautoscaler.yaml",
    ] {
        example.extend(docs(&format!("manifests/examples/django/{file}")));
    }
    let yaml = example
        .iter()
        .map(|d| serde_json::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("\n---\n");
    k::apply_yaml(&admin, &yaml).await;

    // Its pod: the Deployment's template at a loopback address, served by
    // corral with the container's own arguments; only the addresses (the
    // pod IP) and the token file's path (a Secret volume) are local.
    let app = the(&example, "Deployment");
    let template = &app["spec"]["template"];
    let app_container = &template["spec"]["containers"][0];
    let token_value = the(&example, "Secret")["stringData"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let token_file = std::env::temp_dir().join(format!("corral-example-{}", std::process::id()));
    std::fs::write(&token_file, &token_value).unwrap();
    let all = strings(&app_container["args"]);
    let split = all.iter().position(|a| a == "--").unwrap();
    let mut flags = Vec::new();
    for a in &all[..split] {
        if a.starts_with("--bind=") || a.starts_with("--admin-bind=") {
            continue;
        }
        match a.strip_prefix("--admin-token-file=") {
            Some(_) => flags.push(format!("--admin-token-file={}", token_file.display())),
            None => flags.push(a.clone()),
        }
    }
    let admin_port = app_container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "admin")
        .unwrap()["containerPort"]
        .as_u64()
        .unwrap() as u16;
    let path = path_with_venv();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let manager = corral()
        .at(POD_IP, admin_port)
        .args(&flags)
        .command(&all[split + 1..])
        .cwd(django_dir())
        .env("PATH", &path)
        .start();
    manager.wait_for("Django to serve", WAIT, |d| d.ready >= 1);
    k::ready_pod_from(&admin, "default", APP_POD, template, POD_IP).await;
    // Prometheus scrapes both as the chart's PodMonitor and ServiceMonitor
    // would, labelling each series with its pod.
    let prometheus = Prometheus::start(&[
        (manager.admin, &[("namespace", "default"), ("pod", APP_POD)]),
        (metrics, &[("namespace", namespace), ("pod", OPERATOR_POD)]),
    ]);

    // The operator reads the pod through the token Secret and reports it.
    let api: Api<WorkerAutoscaler> = Api::namespaced(admin.clone(), "default");
    let wa = the(&example, "WorkerAutoscaler");
    let name = wa["metadata"]["name"].as_str().unwrap().to_string();
    let min = wa["spec"]["minWorkers"].as_u64().unwrap() as u32;
    eventually_async(
        "the autoscaler's status to list the pod and be Ready",
        WAIT,
        || async {
            let wa = api.get(&name).await.map_err(|e| e.to_string())?;
            let Some(status) = wa.status else {
                return Err("no status".to_string());
            };
            let ready = status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let pod = status.pod_status.iter().find(|p| p.name == APP_POD);
            match pod.and_then(|p| p.current) {
                Some(current) if ready && current >= min => Ok(()),
                _ => Err(format!("{status:#?}")),
            }
        },
    )
    .await;
    let doc = manager.wait_for("the minimum", WAIT, |d| d.desired >= min && d.ready >= min);
    assert!(doc.desired >= min, "{doc:?}");

    // A change of the spec reaches the pod's workers (PUT with the token).
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"minWorkers": min + 1}})),
    )
    .await
    .unwrap();
    manager.wait_for("one more Django worker", WAIT, |d| {
        d.desired == min + 1 && d.ready == min + 1
    });
    let (status, body) = get(manager.http, "/").unwrap();
    assert_eq!((status, body.as_str()), (200, "hello from django\n"));

    dashboard_queries_answer(&prometheus).await;
    passes_follow_the_poll_interval(metrics, &wa, manager.http).await;

    // Deleting the autoscaler hands the pod back to its default and lets
    // the finalizer go.
    api.delete(&name, &DeleteParams::default()).await.unwrap();
    eventually_async("the autoscaler to be gone", WAIT, || async {
        match api.get_opt(&name).await.unwrap() {
            None => Ok(()),
            Some(wa) => Err(wa.metadata.finalizers),
        }
    })
    .await;
    manager.wait_for("the default count", WAIT, |d| d.desired != min + 1);
    assert!(
        !operator.log().contains("Forbidden"),
        "the chart's RBAC is missing a permission:\n{}",
        operator.log()
    );
    let _ = std::fs::remove_file(&token_file);
}

/// Every query of the chart's Grafana dashboard (its variables set to All)
/// runs against what the example's manager and the operator exported, and
/// every one has data but the cgroup memory limit: this host sets none.
async fn dashboard_queries_answer(prometheus: &Prometheus) {
    let queries = dashboard_queries();
    assert!(queries.len() >= 10, "{queries:?}");
    // Every query, every second (a round of queries per check), until
    // all have data but the cgroup memory limit's.
    let unset = |e: &String| e.contains("corral_cgroup_memory_limit_bytes");
    eventually_async_every(
        "every dashboard query to have data",
        Duration::from_secs(30),
        Duration::from_secs(1),
        || async {
            let empty: Vec<&String> = queries
                .iter()
                .filter(|expr| {
                    !prometheus
                        .query(expr)
                        .iter()
                        .any(|r| r["value"][1].as_str().is_some_and(|v| v != "NaN"))
                })
                .collect();
            match empty.iter().all(|e| unset(e)) {
                true => Ok(()),
                false => Err(format!("queries without data: {empty:#?}")),
            }
        },
    )
    .await;
}

/// Under load, when the utilisation in the status changes at every pass,
/// the operator still passes once per pollIntervalSeconds: its own status
/// writes do not start more passes.
async fn passes_follow_the_poll_interval(
    metrics: std::net::SocketAddr,
    wa: &Value,
    app: std::net::SocketAddr,
) {
    let passes = || {
        let (_, text) = get(metrics, "/metrics").unwrap();
        metrics::sum(&text, "corral_operator_reconciliations_total")
    };
    let poll = wa["spec"]["pollIntervalSeconds"].as_u64().unwrap();
    let load = Load::start(app, "/cpu/20", 2, Duration::from_secs(14 * poll));
    // The window opens on a pass made under load: the load flows, and the
    // operator has passed (and written a changed utilisation) since.
    load.wait_progress(20, WAIT);
    let at_start = passes();
    let before = eventually_async(
        "a pass under load",
        Duration::from_secs(3 * poll),
        || async {
            match passes() {
                now if now > at_start => Ok(now),
                now => Err(now),
            }
        },
    )
    .await;
    // Three more passes, each a poll interval after the one before, take
    // at least two intervals past the moment the first of them was seen.
    let since = std::time::Instant::now();
    eventually_async(
        "three more passes",
        Duration::from_secs(10 * poll),
        || async {
            match passes() {
                now if now >= before + 3.0 => Ok(()),
                now => Err(now),
            }
        },
    )
    .await;
    load.stop();
    assert!(
        since.elapsed() >= Duration::from_secs(2 * poll),
        "three passes in {:?} at a {poll}s poll interval",
        since.elapsed()
    );
}
