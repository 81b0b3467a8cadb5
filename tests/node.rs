//! End to end on a real single-node cluster (.ci/kube-node.sh: kubelet,
//! containerd, runc, the CNI bridge and kube-proxy beside the control plane,
//! in a network namespace of their own): the images, corral as PID 1 under
//! the kubelet's probes, the chart installed with helm, the Django example
//! rolled out under load, the operator scaling it, and Prometheus
//! discovering it all. The tests take turns (one node, two cores).
//!
//! They need root and the node's parts, so a plain `cargo test` reports
//! them ignored; `.ci/test` runs them (`cargo test --test node --
//! --ignored`) unless `CORRAL_SKIP_NODE=1`, and says when it skips them.

#[path = "support/node.rs"]
mod node;
mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use corral::contract::WorkersDoc;
use node::{CORRAL_IMAGE, Node, cmdline, netns_get, node_turn, ns_pid, proc_status};
use serde_json::{Value, json};
use support::tls::{Pki, Usage, curl};
use support::{Text, eventually_every, heavy, root, strings};

const WAIT: Duration = Duration::from_secs(120);
const EVERY: Duration = Duration::from_millis(500);

// --- the images ---------------------------------------------------------------

/// `tar -xOf ARCHIVE MEMBER`.
fn tar_member(archive: &Path, member: &str) -> Vec<u8> {
    support::stdout_of(Command::new("tar").arg("-xOf").arg(archive).arg(member))
}

fn blob(archive: &Path, digest: &str) -> Vec<u8> {
    tar_member(
        archive,
        &format!("./blobs/sha256/{}", digest.trim_start_matches("sha256:")),
    )
}

/// The image configuration and the paths in its layers.
fn image(archive: &Path) -> (Value, Vec<String>) {
    let index: Value = serde_json::from_slice(&tar_member(archive, "./index.json")).unwrap();
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "one image per archive: {index}");
    let manifest: Value =
        serde_json::from_slice(&blob(archive, manifests[0]["digest"].as_str().unwrap())).unwrap();
    let config: Value = serde_json::from_slice(&blob(
        archive,
        manifest["config"]["digest"].as_str().unwrap(),
    ))
    .unwrap();
    let mut paths = Vec::new();
    for layer in manifest["layers"].as_array().unwrap() {
        let digest = layer["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:");
        // A pipe of two tars: the layer never passes through this process.
        // umoci's `insert` layers end without tar's two zero blocks, which Go's
        // archive/tar (containerd) accepts and GNU tar reports ("Unexpected EOF
        // in archive") after listing every entry: its status is not the test.
        let out = support::stdout_of(
            Command::new("sh")
                .arg("-c")
                .arg("tar -xOf \"$1\" \"./blobs/sha256/$2\" | tar -tzf - 2>/dev/null; true")
                .arg("sh")
                .arg(archive)
                .arg(digest),
        );
        let text = String::from_utf8_lossy(&out);
        paths.extend(text.lines().map(|l| l.trim_start_matches("./").to_string()));
    }
    (config["config"].clone(), paths)
}

/// (instruction, arguments) or (variable, value) pairs.
type Pairs = Vec<(String, String)>;

/// The final stage of a Dockerfile: instruction -> arguments, continuation
/// lines joined, ENV as its pairs.
fn dockerfile(path: &str) -> (Pairs, Pairs) {
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    let joined = text.replace("\\\n", " ");
    let mut stage: Vec<(String, String)> = Vec::new();
    for line in joined.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (op, rest) = line.split_once(' ').unwrap_or((line, ""));
        let op = op.to_uppercase();
        if op == "FROM" {
            stage.clear();
        }
        stage.push((op, rest.trim().to_string()));
    }
    let mut env = Vec::new();
    for (_, pairs) in stage.iter().filter(|(op, _)| op == "ENV") {
        for pair in pairs.split_whitespace() {
            let (k, v) = pair.split_once('=').unwrap();
            env.push((k.to_string(), v.trim_matches('"').to_string()));
        }
    }
    (stage, env)
}

fn instruction(stage: &[(String, String)], op: &str) -> Option<String> {
    stage
        .iter()
        .rev()
        .find(|(o, _)| o == op)
        .map(|(_, a)| a.clone())
}

/// What the image must agree on with its Dockerfile: user, entrypoint,
/// command, working directory, ports, environment.
fn agrees(archive: &Path, dockerfile_path: &str) -> Vec<String> {
    let (config, paths) = image(archive);
    let (stage, env) = dockerfile(dockerfile_path);
    let json_array = |op: &str| -> Value {
        serde_json::from_str(
            &instruction(&stage, op).unwrap_or_else(|| panic!("{dockerfile_path}: no {op}")),
        )
        .unwrap()
    };
    assert_eq!(
        config["User"].as_str(),
        instruction(&stage, "USER").as_deref(),
        "{dockerfile_path}: USER"
    );
    assert_eq!(
        config["Entrypoint"],
        json_array("ENTRYPOINT"),
        "{dockerfile_path}: ENTRYPOINT"
    );
    assert_eq!(config["Cmd"], json_array("CMD"), "{dockerfile_path}: CMD");
    if let Some(dir) = instruction(&stage, "WORKDIR") {
        assert_eq!(
            config["WorkingDir"].as_str(),
            Some(dir.as_str()),
            "{dockerfile_path}: WORKDIR"
        );
    }
    let mut exposed: Vec<String> = instruction(&stage, "EXPOSE")
        .unwrap()
        .split_whitespace()
        .map(|p| {
            if p.contains('/') {
                p.to_string()
            } else {
                format!("{p}/tcp")
            }
        })
        .collect();
    exposed.sort();
    let mut ports: Vec<String> = config["ExposedPorts"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    ports.sort();
    assert_eq!(ports, exposed, "{dockerfile_path}: EXPOSE");
    let image_env: Vec<&str> = strings(&config["Env"]);
    for (k, v) in &env {
        assert!(
            image_env.contains(&format!("{k}={v}").as_str()),
            "{dockerfile_path}: ENV {k}={v} not in {image_env:?}"
        );
    }
    // Not root, by number, as the manifests' runAsNonRoot needs.
    let uid = config["User"].as_str().unwrap().split(':').next().unwrap();
    assert!(uid.parse::<u32>().is_ok_and(|u| u != 0), "user {uid}");
    assert!(
        paths.iter().any(|p| p == "usr/local/bin/corral"),
        "no /usr/local/bin/corral"
    );
    paths
}

#[test]
#[ignore = "needs root and the node: .ci/test runs it with --ignored"]
fn the_images_agree_with_their_dockerfiles() {
    let _turn = heavy();
    let images = node::images();
    let corral = agrees(&images.corral, "Dockerfile");
    assert!(
        corral
            .iter()
            .any(|p| p == "etc/ssl/certs/ca-certificates.crt"),
        "no CA bundle"
    );
    let mysite = agrees(&images.mysite, "manifests/examples/django/Dockerfile");
    // The Dockerfile's pip pins, installed; the Django project at /app.
    let (stage, _) = dockerfile("manifests/examples/django/Dockerfile");
    let pip = stage
        .iter()
        .find(|(op, a)| op == "RUN" && a.starts_with("pip install"))
        .map(|(_, a)| a.clone())
        .unwrap();
    for pin in pip.split_whitespace().skip(2) {
        let pin = pin.trim_matches('"');
        let (name, version) = pin.split_once("==").unwrap();
        let name = name
            .split('[')
            .next()
            .unwrap()
            .to_lowercase()
            .replace('-', "_");
        let dist = format!("{name}-{version}.dist-info/");
        assert!(
            mysite
                .iter()
                .any(|p| p.contains("/dist-packages/") && p.to_lowercase().ends_with(&dist)),
            "{pin} not installed in the mysite image"
        );
    }
    for path in [
        "usr/local/bin/uvicorn",
        "usr/bin/python3",
        "app/manage.py",
        "app/mysite/asgi.py",
    ] {
        assert!(
            mysite.iter().any(|p| p == path),
            "no /{path} in the mysite image"
        );
    }
}

// --- a part that fails ------------------------------------------------------------

/// A part of the node that cannot start fails `up` with that part's log
/// tail and leaves nothing behind (no network namespace, no cgroup, no
/// process): the run fails, naming it, instead of skipping anything.
#[test]
#[ignore = "needs root and the node: .ci/test runs it with --ignored"]
fn a_part_that_fails_stops_the_node_with_its_log_tail() {
    let _turn = heavy();
    for part in ["kubelet", "containerd"] {
        let message = format!("{part}: refusing to start, a stand-in for this test");
        let up = node::up_with_failing(part, &message);
        let (stderr, dir) = (&up.stderr, &up.dir);
        assert!(!up.ok, "up succeeded without a real {part}:\n{stderr}");
        let tail = format!("--- last lines of {}/{part}.log ---", dir.display());
        let at = stderr
            .find(&tail)
            .unwrap_or_else(|| panic!("no {part} log tail in up's output:\n{stderr}"));
        assert!(
            stderr[at..].contains(&message) && stderr.contains(&format!("error: {part} exited")),
            "{stderr}"
        );
        // The node's namespace and its client's, both deleted.
        let deleted: Vec<String> = stderr
            .lines()
            .filter_map(|l| l.split("deleting network namespace ").nth(1))
            .map(|ns| ns.trim().to_string())
            .collect();
        assert_eq!(deleted.len(), 2, "{deleted:?} in:\n{stderr}");
        let (_, namespaces) = support::output_text(Command::new("ip").args(["netns", "list"]));
        for ns in &deleted {
            assert!(!namespaces.contains(ns), "{ns} left behind:\n{namespaces}");
        }
        let id = &deleted[0];
        assert!(id.starts_with("corral-node-"), "{deleted:?}");
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap() {
            let cgroup = hierarchy.unwrap().path().join(id);
            assert!(!cgroup.exists(), "{} left behind", cgroup.display());
        }
        assert!(!dir.join("env").exists(), "the node's env file left behind");
    }
}

// --- corral as PID 1 ------------------------------------------------------------

/// A pod of the corral image running the built-in worker, its probes on the
/// admin port, with a CPU limit of 1 and a memory limit, and a NodePort.
fn pid1_manifest(node_port: u16) -> String {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "corral", "labels": {"app": "corral-pid1"}},
        "spec": {
            "terminationGracePeriodSeconds": 30,
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "corral",
                "image": CORRAL_IMAGE,
                "imagePullPolicy": "IfNotPresent",
                "args": ["run", "--bind=0.0.0.0:8000", "--admin-bind=0.0.0.0:9000", "--shutdown-delay=12s"],
                "ports": [{"name": "http", "containerPort": 8000}, {"name": "admin", "containerPort": 9000}],
                "livenessProbe": {"httpGet": {"path": "/livez", "port": "admin"}, "periodSeconds": 2},
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": "admin"}, "periodSeconds": 1, "failureThreshold": 1},
                "resources": {"limits": {"cpu": "1", "memory": "128Mi"}},
                "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
        },
    });
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "corral"},
        "spec": {"type": "NodePort", "selector": {"app": "corral-pid1"},
                 "ports": [{"port": 80, "targetPort": "http", "nodePort": node_port}]},
    });
    format!("{pod}\n---\n{service}")
}

/// A load through a NodePort that starts while the Service has no endpoint
/// yet (kube-proxy refuses every connection then) is served as soon as the
/// pod is Ready: the refused connections leave nothing behind that keeps
/// later ones from the DNAT (docs/node.md, "NodePort refusals").
#[test]
#[ignore = "needs root and the node: .ci/test runs it with --ignored"]
fn a_load_refused_before_its_pod_is_ready_is_served_once_it_is() {
    let (node, _turn) = node_turn();
    let ns = "e2e-early";
    let _ns = node.namespace(ns);
    let manifest = pid1_manifest(30084);
    let (pod, service) = manifest.split_once("\n---\n").unwrap();
    node.apply(ns, service);
    let load = node.node_port_load(30084, "/", 4, Duration::from_secs(240));
    // Refused, and from another host not always at once: the node's ICMP
    // answers to one client are rate-limited, so some tries time out.
    eventually_every("the load refused", WAIT, EVERY, || {
        match load.failed_so_far() {
            n if n >= 50 => Ok(()),
            n => Err(n),
        }
    });
    node.apply(ns, pod);
    load.wait_progress_or(500, WAIT, || node.service_report(ns, "corral"));
    let report = load.stop();
    node::report(&format!(
        "a load through a NodePort from before its pod was ready: {} refused, then {} answered",
        report.failures(),
        report.ok
    ));
}

fn condition(pod: &Value, type_: &str) -> Option<String> {
    pod["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .and_then(|c| c["status"].as_str())
        .map(str::to_string)
}

fn restarts(pod: &Value) -> u64 {
    pod["status"]["containerStatuses"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| c["restartCount"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

fn pod_ip(pod: &Value) -> std::net::IpAddr {
    pod["status"]["podIP"].as_str().unwrap().parse().unwrap()
}

fn workers(node: &Node, pod: &Value) -> WorkersDoc {
    let addr = std::net::SocketAddr::new(pod_ip(pod), 9000);
    let (status, body) = netns_get(node, addr, "/workers").unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Checks that `container` of `pod` runs `corral run` as PID 1 of its PID
/// namespace, as the image's user (65532); its command line.
fn corral_pid_1(node: &Node, pod: &Value, container: &str) -> Vec<String> {
    let pid = node.container_pid(pod, container);
    assert_eq!(ns_pid(pid), Some(1));
    assert_eq!(proc_status(pid, "Uid").as_deref(), Some("65532"));
    let argv = cmdline(pid);
    assert_eq!(
        argv[..2],
        ["corral".to_string(), "run".to_string()],
        "{argv:?}"
    );
    argv
}

/// Waits until the pod's /workers document satisfies `cond`; returns it.
fn wait_workers(
    node: &Node,
    pod: &Value,
    what: &str,
    cond: impl Fn(&WorkersDoc) -> bool,
) -> WorkersDoc {
    eventually_every(what, WAIT, EVERY, || {
        let doc = workers(node, pod);
        if cond(&doc) {
            Ok(doc)
        } else {
            Err(Text(format!("{doc:?}")))
        }
    })
}

#[test]
#[ignore = "needs root and the node: .ci/test runs it with --ignored"]
fn corral_runs_as_pid_1_in_a_pod_and_answers_the_kubelets_probes() {
    let (node, _turn) = node_turn();
    let ns = "e2e-pid1";
    let _ns = node.namespace(ns);
    node.apply(ns, &pid1_manifest(30081));
    let pod = eventually_every("the pod to be Ready", WAIT, EVERY, || {
        let pod = node.get_json(&["pod", "corral", "-n", ns]);
        match condition(&pod, "Ready").as_deref() {
            Some("True") => Ok(pod),
            _ => Err(pod["status"].clone()),
        }
    });

    // PID 1 of its container, as the image's user, running the image's
    // entrypoint with the pod's arguments.
    corral_pid_1(node, &pod, "corral");

    // The kubelet's limits reached it: a CPU limit of 1 and no
    // WEB_CONCURRENCY give one worker; the memory limit is the cgroup's.
    let doc = workers(node, &pod);
    assert_eq!(
        (doc.configured, doc.desired, doc.ready),
        (1, 1, 1),
        "{doc:?}"
    );
    assert_eq!(doc.limits.memory_limit_bytes, Some(128 << 20), "{doc:?}");
    assert_eq!(
        doc.limits.memory_limit_source.as_deref(),
        Some("cgroup"),
        "{doc:?}"
    );

    // Through the Service's NodePort at the node's address, from the client host.
    // (once kube-proxy has the pod's endpoint in its rules)
    let body = eventually_every("an answer on the NodePort", WAIT, EVERY, || {
        match node.node_port_get(30081, "/") {
            Ok((200, body)) => Ok(body),
            other => Err(format!("{other:?}")),
        }
    });
    assert!(body.contains("corral built-in worker"), "{body}");

    // The probes keep passing: no restart after several liveness periods.
    std::thread::sleep(Duration::from_secs(6));
    let pod = node.get_json(&["pod", "corral", "-n", ns]);
    assert_eq!(restarts(&pod), 0, "{}", pod["status"]);
    assert_eq!(condition(&pod, "Ready").as_deref(), Some("True"));

    // On delete the kubelet sends TERM to PID 1: /readyz turns 503 at once,
    // which the readiness probe sees (Ready goes False) while corral still
    // serves for its --shutdown-delay, then it exits by itself, well within
    // the grace period.
    let pid = node.container_pid(&pod, "corral");
    let started = std::time::Instant::now();
    node.kubectl_ok(&["delete", "pod", "corral", "-n", ns, "--wait=false"]);
    // TERM has arrived once /readyz says 503.
    let admin = std::net::SocketAddr::new(pod_ip(&pod), 9000);
    eventually_every(
        "/readyz to answer 503 after TERM",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || match netns_get(node, admin, "/readyz") {
            Ok((503, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let app = std::net::SocketAddr::new(pod_ip(&pod), 8000);
    let (status, _) = netns_get(node, app, "/").unwrap();
    assert_eq!(status, 200, "still serving during the shutdown delay");
    eventually_every(
        "Ready to turn False while terminating",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            let pod = node.get_json(&["pod", "corral", "-n", ns]);
            match condition(&pod, "Ready").as_deref() {
                Some("False") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    );
    // corral's own exit (its process gone), not the pod object's removal:
    // that waits for the kubelet to reclaim the pod's volumes and sandbox,
    // which took from 1 to 33 s more on this shared machine.
    eventually_every(
        "corral to exit",
        Duration::from_secs(30),
        EVERY,
        || match proc_status(pid, "State").as_deref() {
            None | Some("Z") => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(25),
        "corral took {took:?} to stop (grace period 30s)"
    );
    eventually_every("the pod to be gone", WAIT, EVERY, || {
        let (ok, text) = node.kubectl(&["get", "pod", "corral", "-n", ns]);
        if ok { Err(text) } else { Ok(()) }
    });
    node::report(&format!(
        "PID 1 pod deleted: corral exited after {:.1}s (--shutdown-delay=12s), the pod was gone after {:.1}s",
        took.as_secs_f64(),
        started.elapsed().as_secs_f64()
    ));
}

// --- the chart, and the Django example --------------------------------------------

/// The DNS name the operators' metrics certificate is for (the chart's
/// metrics Service), which scrapers check it against.
const METRICS_NAME: &str = "corral-metrics.corral-system.svc";

/// The CA that signed the operators' metrics certificate.
fn metrics_ca(node: &Node) -> std::path::PathBuf {
    node.dir.join("metrics-ca.pem")
}

/// The chart installed once with helm, as its README says (release `corral`
/// in corral-system, the image from the node's containerd), with its TLS
/// setup: the metrics served from a kubernetes.io/tls Secret. Two operator
/// replicas, Ready (the kubelet's probes over HTTPS).
fn operator(node: &'static Node) {
    static INSTALLED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    INSTALLED.get_or_init(|| {
        let pki = Pki::new();
        pki.issue(
            "metrics",
            1,
            Usage::Server(&[&format!("DNS:{METRICS_NAME}")]),
        );
        std::fs::copy(pki.path("ca.pem"), metrics_ca(node)).unwrap();
        node.kubectl_ok(&["create", "namespace", "corral-system"]);
        let file =
            |key: &str, name: &str| format!("--from-file={key}={}", pki.path(name).display());
        node.kubectl_ok(&[
            "create",
            "secret",
            "generic",
            "corral-metrics-tls",
            "--type=kubernetes.io/tls",
            &file("tls.crt", "metrics.pem"),
            &file("tls.key", "metrics.key"),
            &file("ca.crt", "ca.pem"),
            "-n",
            "corral-system",
        ]);
        let (ok, text) = node.helm(&[
            "install",
            "corral",
            "charts/corral",
            "--namespace",
            "corral-system",
            "--set",
            "metrics.tls.enabled=true,metrics.tls.secretName=corral-metrics-tls",
            "--wait",
            "--timeout",
            "180s",
        ]);
        if !ok {
            panic!(
                "helm install: {text}\n{}",
                node.namespace_report("corral-system")
            );
        }
        node.rollout("corral-system", "corral", WAIT);
    });
}

fn operator_pods(node: &Node) -> Vec<Value> {
    node.pods("corral-system", "app.kubernetes.io/name=corral-operator")
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect()
}

fn name(obj: &Value) -> String {
    obj["metadata"]["name"].as_str().unwrap().to_string()
}

/// The Lease's holder: `<pod name>-1` (the operator's identity is its
/// hostname, the pod's name, and its pid, 1).
fn lease_holder(node: &Node) -> Option<String> {
    let (ok, text) = node.kubectl(&[
        "get",
        "lease",
        "corral-operator",
        "-n",
        "corral-system",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    (ok && !text.is_empty()).then(|| text.trim().trim_end_matches("-1").to_string())
}

/// The Django example's documents (manifests/examples/django), by kind,
/// with one change: the app asks a quarter of a core instead of one, since
/// this node's two cores also hold the control plane, the operators and a
/// rollout's surge pod (the scheduler would leave that one Pending).
fn example() -> Vec<Value> {
    let mut docs = Vec::new();
    for file in [
        "secret.yaml",
        "deployment.yaml",
        "service.yaml",
        "workerautoscaler.yaml",
    ] {
        let text =
            std::fs::read_to_string(root().join("manifests/examples/django").join(file)).unwrap();
        let parsed: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
        docs.extend(parsed.into_iter().filter(Value::is_object));
    }
    app_container(&mut docs)["resources"]["requests"]["cpu"] = "250m".into();
    docs
}

fn kind<'a>(docs: &'a mut [Value], kind: &str) -> &'a mut Value {
    docs.iter_mut().find(|d| d["kind"] == kind).unwrap()
}

fn yaml(docs: &[&Value]) -> String {
    docs.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// The app container of the example's Deployment.
fn app_container(docs: &mut [Value]) -> &mut Value {
    &mut kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
}

/// The example's Service as a NodePort on `port`.
fn node_port(docs: &mut [Value], port: u16) {
    let svc = kind(docs, "Service");
    svc["spec"]["type"] = "NodePort".into();
    svc["spec"]["ports"][0]["nodePort"] = port.into();
}

fn ready_pods(node: &Node, ns: &str, selector: &str, n: usize) -> Vec<Value> {
    eventually_every(
        &format!("{n} Ready pods {selector} in {ns}"),
        WAIT,
        EVERY,
        || {
            let pods: Vec<Value> = node
                .pods(ns, selector)
                .into_iter()
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .collect();
            let ready = pods
                .iter()
                .filter(|p| condition(p, "Ready").as_deref() == Some("True"))
                .count();
            match ready == n && pods.len() == n {
                true => Ok(pods),
                false => Err(pods
                    .iter()
                    .map(|p| (name(p), p["status"]["phase"].clone()))
                    .collect::<Vec<_>>()),
            }
        },
    )
}

/// The example as one pod (a CPU limit of 1, 1Gi) behind NodePort `port`,
/// its autoscaler polling every 2 s between 1 and `max_workers` workers.
fn one_pod_autoscaled(port: u16, max_workers: u32) -> Vec<Value> {
    let mut docs = example();
    node_port(&mut docs, port);
    kind(&mut docs, "Deployment")["spec"]["replicas"] = 1.into();
    app_container(&mut docs)["resources"]["limits"] = json!({"cpu": "1", "memory": "1Gi"});
    let wa = kind(&mut docs, "WorkerAutoscaler");
    wa["spec"]["minWorkers"] = 1.into();
    wa["spec"]["maxWorkers"] = max_workers.into();
    wa["spec"]["pollIntervalSeconds"] = 2.into();
    docs
}

fn autoscaler(node: &Node, ns: &str, name: &str) -> Value {
    node.get_json(&["workerautoscaler", name, "-n", ns])
}

#[test]
#[ignore = "needs root and the node: .ci/test runs it with --ignored"]
fn helm_installs_two_operators_and_the_lease_moves_when_the_leader_goes() {
    let (node, _turn) = node_turn();
    operator(node);
    let pods = operator_pods(node);
    assert_eq!(pods.len(), 2, "{pods:?}");
    for pod in &pods {
        assert_eq!(
            condition(pod, "Ready").as_deref(),
            Some("True"),
            "{}",
            pod["status"]
        );
        // In-cluster: the kubelet mounted the ServiceAccount's token.
        let mounts = pod["spec"]["containers"][0]["volumeMounts"].to_string();
        assert!(
            mounts.contains("/var/run/secrets/kubernetes.io/serviceaccount"),
            "{mounts}"
        );
        assert_eq!(ns_pid(node.container_pid(pod, "operator")), Some(1));
        // The chart's TLS setup: the kubelet probed over HTTPS, and the
        // metrics are served with the Secret's certificate.
        let probe = &pod["spec"]["containers"][0]["readinessProbe"]["httpGet"];
        assert_eq!(probe["scheme"], "HTTPS", "{probe}");
        let ip = pod_ip(pod);
        let ca = metrics_ca(node).display().to_string();
        let resolve = format!("{METRICS_NAME}:8080:{ip}");
        let url = format!("https://{METRICS_NAME}:8080/metrics");
        let (code, _, body) = node::in_netns(&node.netns_path(), move || {
            curl(
                &url,
                &["--cacert", ca.as_str(), "--resolve", resolve.as_str()],
            )
        });
        assert!(
            code == "200" && body.contains("corral_operator_"),
            "{code}: {body}"
        );
    }
    let names: Vec<String> = pods.iter().map(name).collect();
    let leader =
        eventually_every(
            "a lease holder among the pods",
            WAIT,
            EVERY,
            || match lease_holder(node) {
                Some(h) if names.contains(&h) => Ok(h),
                other => Err(other),
            },
        );
    let standby = names.iter().find(|n| **n != leader).unwrap().clone();

    // Something for the leader to reconcile: a pod of the corral image with
    // its admin token, and an autoscaler asking two workers of it.
    let ns = "e2e-lease";
    let _ns = node.namespace(ns);
    let token = "e2e-lease-token-0123456789abcdef";
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "web-corral"},
                        "stringData": {"token": token}});
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "securityContext": {"runAsNonRoot": true},
            "containers": [{
                "name": "web", "image": CORRAL_IMAGE,
                "args": ["run", "--bind=0.0.0.0:8000", "--admin-bind=0.0.0.0:9000", "-w", "1",
                         "--max-workers=4", "--admin-token-file=/etc/corral/token"],
                "ports": [{"name": "admin", "containerPort": 9000}],
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": "admin"}, "periodSeconds": 1},
                "volumeMounts": [{"name": "token", "mountPath": "/etc/corral", "readOnly": true}],
            }],
            "volumes": [{"name": "token", "secret": {"secretName": "web-corral"}}],
        },
    });
    let wa = |min: u32| {
        json!({
            "apiVersion": "corral.dev/v1alpha1", "kind": "WorkerAutoscaler",
            "metadata": {"name": "web"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "adminPort": 9000,
                     "tokenSecretRef": {"name": "web-corral", "key": "token"},
                     "minWorkers": min, "maxWorkers": 4, "pollIntervalSeconds": 1,
                     "metrics": [{"type": "QueueLength", "target": 0}]},
        })
    };
    node.apply(ns, &yaml(&[&secret, &pod, &wa(2)]));
    let web = ready_pods(node, ns, "app=web", 1).remove(0);
    wait_workers(node, &web, "the leader to give the pod two workers", |d| {
        d.desired == 2 && d.ready == 2
    });

    // The leader's pod goes: it releases the lease on TERM and another
    // replica takes it, the standby or the Deployment's replacement,
    // whichever asks first, and reconciles from then on.
    let started = std::time::Instant::now();
    node.kubectl_ok(&[
        "delete",
        "pod",
        &leader,
        "-n",
        "corral-system",
        "--wait=false",
    ]);
    let survivor = eventually_every(
        "another replica to hold the lease",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || match lease_holder(node) {
            Some(h) if h != leader => Ok(h),
            other => Err(other),
        },
    );
    let handover = started.elapsed();
    node::report(&format!(
        "lease handover after the leader's pod was deleted: {:.1}s, to the {}",
        handover.as_secs_f64(),
        if survivor == standby {
            "standby"
        } else {
            "replacement pod"
        }
    ));
    node.apply(ns, &yaml(&[&wa(3)]));
    wait_workers(
        node,
        &web,
        "the survivor to give the pod three workers",
        |d| d.desired == 3 && d.ready == 3,
    );
    let status = autoscaler(node, ns, "web")["status"].clone();
    assert!(status.to_string().contains("\"web\""), "{status}");
    // The Deployment replaces the deleted pod; both Ready again.
    node.rollout("corral-system", "corral", WAIT);
    let survivor_pod = operator_pods(node)
        .into_iter()
        .find(|p| name(p) == survivor)
        .unwrap();
    let log = node.container_log(&survivor_pod, "operator");
    assert!(log.contains("leading"), "{log}");
    assert!(
        !log.contains("Forbidden"),
        "the chart's RBAC lacks a permission:\n{log}"
    );
}

#[test]
#[ignore = "needs root and the node: .ci/test runs it with --ignored"]
fn the_django_example_runs_with_the_limits_the_kubelet_set() {
    let (node, _turn) = node_turn();
    operator(node);
    let ns = "e2e-django";
    let _ns = node.namespace(ns);
    let mut docs = example();
    // A CPU limit of 1 and no WEB_CONCURRENCY: one worker by default; a
    // memory limit the guard sizes workers against.
    let c = app_container(&mut docs);
    assert!(c["env"].is_null(), "the example sets no WEB_CONCURRENCY");
    c["resources"]["limits"] = json!({"cpu": "1", "memory": "256Mi"});
    let wa = kind(&mut docs, "WorkerAutoscaler");
    wa["spec"]["minWorkers"] = 8.into();
    wa["spec"]["maxWorkers"] = 12.into();
    wa["spec"]["pollIntervalSeconds"] = 2.into();
    let (app, wa): (Vec<&Value>, Vec<&Value>) =
        docs.iter().partition(|d| d["kind"] != "WorkerAutoscaler");
    node.apply(ns, &yaml(&app));
    node.rollout(ns, "mysite", WAIT);
    let pods = ready_pods(node, ns, "app=mysite", 2);
    for pod in &pods {
        let argv = corral_pid_1(node, pod, "app");
        assert!(argv.iter().any(|a| a == "uvicorn"), "{argv:?}");
        let doc = workers(node, pod);
        assert_eq!((doc.configured, doc.desired), (1, 1), "{doc:?}");
        assert_eq!(doc.limits.memory_limit_bytes, Some(256 << 20), "{doc:?}");
        let (status, body) =
            netns_get(node, std::net::SocketAddr::new(pod_ip(pod), 8000), "/").unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("hello from django"), "{body}");
    }

    // With pods up, the network check covers their namespaces too.
    let check = node.check_network();
    assert!(check.contains("no route off the machine"), "{check}");

    // The autoscaler asks eight workers of each pod; the memory guard holds
    // each at what 256Mi fits, and the status says so.
    node.apply(ns, &yaml(&wa));
    let status = eventually_every("limitedBy memoryGuard for both pods", WAIT, EVERY, || {
        let status = autoscaler(node, ns, "mysite")["status"].clone();
        let limited = status["podStatus"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter(|p| p["limitedBy"] == "memoryGuard")
                    .count()
            })
            .unwrap_or(0);
        if limited == 2 {
            Ok(status)
        } else {
            Err(status)
        }
    });
    for pod in &pods {
        let doc = workers(node, pod);
        let cap = doc.limits.memory_cap.expect("a memory cap");
        assert!(cap < 8 && doc.desired <= cap, "{doc:?}\n{status}");
        assert!(doc.desired >= 1, "{doc:?}");
    }
    // Held there for a while: no OOM kill, no restart.
    std::thread::sleep(Duration::from_secs(10));
    for pod in node.pods(ns, "app=mysite") {
        assert_eq!(restarts(&pod), 0, "{}", pod["status"]);
        let last = pod["status"]["containerStatuses"][0]["lastState"].to_string();
        assert!(!last.contains("OOMKilled"), "{last}");
    }
    let summary: Vec<String> = pods
        .iter()
        .map(|p| {
            let d = workers(node, p);
            format!(
                "{} workers (memory cap {:?})",
                d.desired, d.limits.memory_cap
            )
        })
        .collect();
    node::report(&format!(
        "django example, CPU limit 1 and 256Mi, autoscaler min 8: {}",
        summary.join(", ")
    ));
}

/// Load through the NodePort during `kubectl rollout restart`, until the
/// rollout is complete: (answered, failed, some errors).
fn restart_under_load(node: &Node, ns: &str, port: u16) -> support::Report {
    node.until_node_port_serves(ns, "mysite", port);
    let load = node.node_port_load(port, "/", 4, Duration::from_secs(240));
    let why = || node.service_report(ns, "mysite");
    load.wait_progress_or(50, WAIT, why);
    node.kubectl_ok(&["rollout", "restart", "-n", ns, "deployment/mysite"]);
    // `rollout status` waits for the restart's new generation to be observed.
    node.rollout(ns, "mysite", Duration::from_secs(180));
    // The old pods are gone from the endpoints by now; let their shutdown
    // finish under the load too.
    eventually_every("the old pods to be gone", WAIT, EVERY, || {
        let pods = node.pods(ns, "app=mysite");
        if pods.len() == 2 {
            Ok(())
        } else {
            Err(pods.len())
        }
    });
    load.wait_progress_or(50, WAIT, why);
    load.stop()
}

#[test]
#[ignore = "needs root and the node: .ci/test runs it with --ignored"]
fn a_rollout_restart_under_load_through_the_node_port_fails_no_request() {
    let (node, _turn) = node_turn();
    let ns = "e2e-rollout";
    let _ns = node.namespace(ns);
    assert!(
        app_container(&mut example())["lifecycle"].is_null(),
        "the example has no preStop hook: corral's --shutdown-delay does its job"
    );
    // The example's Deployment (its --shutdown-delay, or `delay`) rolled
    // out, then restarted under load; the count reported.
    let run = |delay: Option<&str>, limit: Duration| {
        let mut docs = example();
        node_port(&mut docs, 30082);
        let args = app_container(&mut docs)["args"].as_array_mut().unwrap();
        let arg = args
            .iter_mut()
            .find(|a| {
                a.as_str()
                    .is_some_and(|s| s.starts_with("--shutdown-delay="))
            })
            .expect("the example sets --shutdown-delay");
        if let Some(delay) = delay {
            *arg = format!("--shutdown-delay={delay}").into();
        }
        let arg = arg.as_str().unwrap().to_string();
        let app: Vec<&Value> = docs
            .iter()
            .filter(|d| d["kind"] != "WorkerAutoscaler")
            .collect();
        node.apply(ns, &yaml(&app));
        node.rollout(ns, "mysite", limit);
        ready_pods(node, ns, "app=mysite", 2);
        let report = restart_under_load(node, ns, 30082);
        node::report(&format!(
            "rollout restart under load, {arg}: {} failed of {} ({:?})",
            report.failures(),
            report.ok + report.failures(),
            report.errors
        ));
        report
    };
    let with_delay = run(None, WAIT);
    // The same without the delay: what it saves.
    run(Some("0s"), Duration::from_secs(180));
    assert_eq!(with_delay.failures(), 0, "{with_delay:?}");
    assert!(with_delay.ok >= 100, "{with_delay:?}");
}

#[test]
#[ignore = "needs root and the node: .ci/test runs it with --ignored"]
fn a_cpu_load_step_through_the_node_port_makes_the_operator_add_workers() {
    let (node, _turn) = node_turn();
    operator(node);
    let ns = "e2e-cpu";
    let _ns = node.namespace(ns);
    let mut docs = one_pod_autoscaled(30083, 4);
    let wa = kind(&mut docs, "WorkerAutoscaler");
    wa["spec"]["metrics"] = json!([{"type": "CPU", "target": 0.4}]);
    wa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] = 600.into();
    let all: Vec<&Value> = docs.iter().collect();
    node.apply(ns, &yaml(&all));
    node.rollout(ns, "mysite", WAIT);
    let pod = ready_pods(node, ns, "app=mysite", 1).remove(0);
    eventually_every(
        "the autoscaler to be Ready on the idle pod",
        WAIT,
        EVERY,
        || {
            let status = autoscaler(node, ns, "mysite")["status"].clone();
            let ready = status["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            if ready { Ok(()) } else { Err(status) }
        },
    );
    assert_eq!(workers(node, &pod).desired, 1);
    // The report a failing load would carry has its parts: the pod asked
    // past kube-proxy answers, and its listeners are seen.
    let seen = node.service_report(ns, "mysite");
    assert!(
        seen.contains(":8000/: 200") && seen.contains("0.0.0.0:8000"),
        "{seen}"
    );

    node.until_node_port_serves(ns, "mysite", 30083);
    let load = node.node_port_load(30083, "/cpu/50", 3, Duration::from_secs(180));
    load.wait_progress_or(10, WAIT, || node.service_report(ns, "mysite"));
    let started = std::time::Instant::now();
    let doc = wait_workers(node, &pod, "the operator to add workers", |d| {
        d.desired >= 2
    });
    node::report(&format!(
        "CPU load step through the NodePort: {} workers {:.1}s after the load flowed",
        doc.desired,
        started.elapsed().as_secs_f64()
    ));
    let report = load.stop();
    no_failures(node, ns, "the CPU load step", &report);

    // Deleting the autoscaler hands the pod back to its default (one worker).
    node.kubectl_ok(&[
        "delete",
        "workerautoscaler",
        "mysite",
        "-n",
        ns,
        "--wait=true",
        "--timeout=60s",
    ]);
    wait_workers(node, &pod, "the default count", |d| {
        d.desired == 1 && d.requested.is_none()
    });
}

#[test]
#[ignore = "needs root and the node: .ci/test runs it with --ignored"]
fn kubernetes_sd_discovers_and_scrapes_the_pods_and_the_operator() {
    let (node, _turn) = node_turn();
    operator(node);
    let ns = "e2e-prom";
    let _ns = node.namespace(ns);
    let mut docs = example();
    kind(&mut docs, "Deployment")["spec"]["replicas"] = 1.into();
    let wa = kind(&mut docs, "WorkerAutoscaler");
    // Above the pod's default (its node's two CPUs): one scale event.
    wa["spec"]["minWorkers"] = 3.into();
    wa["spec"]["pollIntervalSeconds"] = 2.into();
    let all: Vec<&Value> = docs.iter().collect();
    node.apply(ns, &yaml(&all));
    node.rollout(ns, "mysite", WAIT);
    let pod = ready_pods(node, ns, "app=mysite", 1).remove(0);
    wait_workers(node, &pod, "the operator to scale the pod", |d| {
        d.desired == 3
    });

    // Prometheus reads pods from the API server as its own ServiceAccount
    // (list and watch pods, nothing else).
    let rbac = json!({
    "apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "prometheus", "namespace": ns}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "e2e-prometheus"},
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "e2e-prometheus"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "e2e-prometheus"},
         "subjects": [{"kind": "ServiceAccount", "name": "prometheus", "namespace": ns}]},
    ]});
    node.apply(ns, &rbac.to_string());
    let secret = eventually_every("the prometheus ServiceAccount's token", WAIT, EVERY, || {
        let sa = node.get_json(&["serviceaccount", "prometheus", "-n", ns]);
        sa["secrets"][0]["name"]
            .as_str()
            .map(str::to_string)
            .ok_or(sa)
    });
    let token = node.kubectl_ok(&[
        "get",
        "secret",
        &secret,
        "-n",
        ns,
        "-o",
        "jsonpath={.data.token}",
    ]);
    let (ok, token) =
        support::run_with_stdin(Command::new("base64").arg("-d"), token.trim().as_bytes());
    assert!(ok, "{token}");
    let token_file = node.dir.join("prometheus.token");
    std::fs::write(&token_file, token.trim()).unwrap();
    // One job per kind of target: pods of NAMESPACE whose container port
    // is named PORT, scraped with SCRAPE (the operators' over HTTPS).
    let job = |name: &str, namespace: &str, port_name: &str, scrape: &str| {
        format!(
            "- job_name: {name}\n{scrape}\
             \x20 kubernetes_sd_configs:\n\
             \x20 - role: pod\n\
             \x20   api_server: https://127.0.0.1:{port}\n\
             \x20   namespaces: {{names: [{namespace}]}}\n\
             \x20   tls_config: {{ca_file: {ca}}}\n\
             \x20   authorization: {{credentials_file: {token}}}\n\
             \x20 relabel_configs:\n\
             \x20 - {{source_labels: [__meta_kubernetes_pod_container_port_name], regex: {port_name}, action: keep}}\n\
             \x20 - {{source_labels: [__meta_kubernetes_pod_phase], regex: Running, action: keep}}\n\
             \x20 - {{source_labels: [__meta_kubernetes_namespace], target_label: namespace}}\n\
             \x20 - {{source_labels: [__meta_kubernetes_pod_name], target_label: pod}}\n",
            port = node.kube_port,
            ca = node.dir.join("pki/ca.crt").display(),
            token = token_file.display(),
        )
    };
    let operators_tls = format!(
        "\x20 scheme: https\n\
         \x20 tls_config: {{ca_file: {}, server_name: {METRICS_NAME}}}\n",
        metrics_ca(node).display()
    );
    let config = format!(
        "global: {{scrape_interval: 1s}}\nscrape_configs:\n{}{}",
        job("corral", ns, "admin", ""),
        job(
            "corral-operator",
            "corral-system",
            "metrics",
            &operators_tls
        ),
    );
    let prometheus = node::NodePrometheus::start(node, &config);
    let operators = operator_pods(node).len();
    eventually_every(
        "every discovered target up",
        WAIT,
        Duration::from_secs(1),
        || {
            let data = prometheus.api("/api/v1/targets", &[("state", "active")])?;
            let targets = data["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let up = |namespace: &str| {
                targets
                    .iter()
                    .filter(|t| t["labels"]["namespace"] == namespace && t["health"] == "up")
                    .count()
            };
            match (up(ns), up("corral-system")) {
                (1, n) if n == operators => Ok(()),
                seen => Err(format!("{seen:?}: {targets:?}")),
            }
        },
    );

    // Every query of the chart's dashboard (variables All) has data.
    let queries = support::dashboard_queries();
    assert!(queries.len() >= 10, "{queries:?}");
    eventually_every(
        "every dashboard query to have data",
        Duration::from_secs(60),
        Duration::from_secs(2),
        || {
            let empty: Vec<&String> = queries
                .iter()
                .filter(|q| {
                    !prometheus
                        .query(q)
                        .iter()
                        .any(|r| r["value"][1].as_str().is_some_and(|v| v != "NaN"))
                })
                .collect();
            if empty.is_empty() {
                Ok(())
            } else {
                Err(format!("{empty:#?}"))
            }
        },
    );
    node.kubectl_ok(&["delete", "clusterrolebinding,clusterrole", "e2e-prometheus"]);
}

/// The Deployment's `spec.replicas`: what the operator (or anyone) asked.
fn replicas(node: &Node, ns: &str) -> u64 {
    node.get_json(&["deployment", "mysite", "-n", ns])["spec"]["replicas"]
        .as_u64()
        .unwrap()
}

/// The sum of the workers the Ready pods' managers drive towards.
fn fleet_workers(node: &Node, ns: &str) -> Vec<u32> {
    node.pods(ns, "app=mysite")
        .iter()
        .filter(|p| condition(p, "Ready").as_deref() == Some("True"))
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| workers(node, p).desired)
        .collect()
}

/// Panics with what the load's failures were, and what the cluster and
/// each app pod's log (its last lines) saw.
fn no_failures(node: &Node, ns: &str, what: &str, report: &support::Report) {
    if report.failures() == 0 {
        return;
    }
    let (_, events) = node.kubectl(&["get", "events", "-n", ns]);
    let logs: Vec<String> = node
        .pods(ns, "app=mysite")
        .iter()
        .map(|pod| {
            let log = node.container_log(pod, "app");
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!(
                "--- {} app log (last lines) ---\n{}",
                name(pod),
                tail.join("\n")
            )
        })
        .collect();
    panic!(
        "{what}: {} of {} requests failed through the NodePort: {:?}\n{}\n--- events ---\n{events}\n{}",
        report.failures(),
        report.ok + report.failures(),
        report.errors,
        node.service_report(ns, "mysite"),
        logs.join("\n")
    );
}

#[test]
#[ignore = "needs root and the node: .ci/test runs it with --ignored"]
fn two_levels_fill_workers_then_add_replicas_and_leave_an_hpa_s_replicas_alone() {
    let (node, _turn) = node_turn();
    operator(node);
    let ns = "e2e-replicas";
    let _ns = node.namespace(ns);
    // Two workers a pod at most; requests in flight per worker as the signal
    // (the example runs --proxy), one per worker the target: four clients
    // ask for four workers, two pods' worth.
    let mut docs = one_pod_autoscaled(30084, 2);
    let wa = kind(&mut docs, "WorkerAutoscaler");
    wa["spec"]["metrics"] = json!([{"type": "Concurrency", "target": 1}]);
    wa["spec"]["behavior"]["scaleDown"] = json!({
        "stabilizationWindowSeconds": 10,
        "policies": [{"type": "Percent", "value": 100, "periodSeconds": 2}],
    });
    wa["spec"]["scaleTargetRef"] =
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "mysite"});
    wa["spec"]["minReplicas"] = 1.into();
    wa["spec"]["maxReplicas"] = 2.into();
    wa["spec"]["replicaBehavior"] = json!({
        "scaleDown": {
            "stabilizationWindowSeconds": 40,
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 10}],
        },
    });
    let all: Vec<&Value> = docs.iter().collect();
    node.apply(ns, &yaml(&all));
    node.rollout(ns, "mysite", WAIT);
    let first = ready_pods(node, ns, "app=mysite", 1).remove(0);
    eventually_every(
        "the replica level to size the Deployment",
        WAIT,
        EVERY,
        || {
            let status = autoscaler(node, ns, "mysite")["status"].clone();
            let sizing = status["conditions"].as_array().is_some_and(|cs| {
                cs.iter().any(|c| {
                    c["type"] == "ScalingReplicas"
                        && c["status"] == "True"
                        && c["reason"] == "Scaling"
                })
            });
            if sizing && status["replicas"] == 1 {
                Ok(())
            } else {
                Err(status)
            }
        },
    );
    node.until_node_port_serves(ns, "mysite", 30084);

    // The step: workers rise first, within seconds; then a second pod,
    // brought to its share.
    let load = node.node_port_load(30084, "/cpu/20", 4, Duration::from_secs(300));
    load.wait_progress_or(10, WAIT, || node.service_report(ns, "mysite"));
    let step = std::time::Instant::now();
    let mut filled = None;
    // Replicas read before workers: a second replica seen while the pod
    // was not yet full would be the replica level getting ahead.
    let raised = eventually_every("the pod filled, then a second replica", WAIT, EVERY, || {
        let r = replicas(node, ns);
        let w = workers(node, &first).desired;
        if w == 2 {
            filled.get_or_insert(step.elapsed());
        }
        assert!(
            r == 1 || w == 2,
            "{r} replicas while the pod had {w} workers"
        );
        if r == 2 {
            Ok(step.elapsed())
        } else {
            Err(format!("{r} replicas, {w} workers"))
        }
    });
    let filled = filled.unwrap();
    let pods = ready_pods(node, ns, "app=mysite", 2);
    let second = pods.iter().find(|p| name(p) != name(&first)).unwrap();
    wait_workers(node, second, "the second pod at its share", |d| {
        d.desired == 2
    });
    let served = step.elapsed();
    let (_, columns) = node.kubectl(&["get", "wa", "mysite", "-n", ns]);
    assert!(columns.contains("REPLICAS"), "{columns}");
    let report = load.stop();
    no_failures(node, ns, "the load step", &report);
    node::report(&format!(
        "two levels: pod full {:.1}s, second replica asked {:.1}s, serving at its share {:.1}s after the step; {} requests, 0 failed",
        filled.as_secs_f64(),
        raised.as_secs_f64(),
        served.as_secs_f64(),
        report.ok
    ));

    // The load drops to one client: workers fall within their 10 s
    // window, then, after the replicas' 40 s, the Deployment loses a pod,
    // without failing a request of the load still flowing.
    let load = node.node_port_load(30084, "/cpu/20", 1, Duration::from_secs(300));
    let drop = std::time::Instant::now();
    let shrunk = eventually_every("both pods down to one worker", WAIT, EVERY, || {
        let fleet = fleet_workers(node, ns);
        match (replicas(node, ns), fleet.iter().all(|w| *w == 1)) {
            (2, true) => Ok(drop.elapsed()),
            (r, _) => Err(format!("{r} replicas, workers {fleet:?}")),
        }
    });
    eventually_every(
        "the Deployment back to one replica",
        WAIT,
        EVERY,
        || match replicas(node, ns) {
            1 => Ok(()),
            r => Err(r),
        },
    );
    let fell = drop.elapsed();
    ready_pods(node, ns, "app=mysite", 1);
    let report = load.stop();
    no_failures(node, ns, "the scale-down", &report);
    node::report(&format!(
        "two levels down: workers {:.1}s, replicas {:.1}s after the drop; {} requests, 0 failed",
        shrunk.as_secs_f64(),
        fell.as_secs_f64(),
        report.ok
    ));

    // An HPA on the same Deployment: the condition names it and the
    // replicas are left to it, while workers still follow the load.
    let hpa = json!({
        "apiVersion": "autoscaling/v1",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "mysite-hpa"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mysite"},
            "minReplicas": 1,
            "maxReplicas": 3,
            "targetCPUUtilizationPercentage": 80,
        },
    });
    node.apply(ns, &hpa.to_string());
    eventually_every("the HPA to be named", WAIT, EVERY, || {
        let status = autoscaler(node, ns, "mysite")["status"].clone();
        let named = status["conditions"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| {
                c["type"] == "ScalingReplicas"
                    && c["status"] == "False"
                    && c["reason"] == "HPAControlsReplicas"
                    && c["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("mysite-hpa"))
            })
        });
        if named { Ok(()) } else { Err(status) }
    });
    let (_, events) = node.kubectl(&["get", "events", "-n", ns]);
    assert!(events.contains("HPAControlsReplicas"), "{events}");
    let pod = ready_pods(node, ns, "app=mysite", 1).remove(0);
    let load = node.node_port_load(30084, "/cpu/20", 4, Duration::from_secs(300));
    wait_workers(node, &pod, "workers to rise beside the HPA", |d| {
        d.desired == 2
    });
    // Full, and more asked: several passes later the replicas are the HPA's.
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(replicas(node, ns), 1);
    let report = load.stop();
    no_failures(node, ns, "the load beside the HPA", &report);
}
