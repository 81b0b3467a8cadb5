//! End to end on a real single-node cluster (.ci/kube-node.sh: kubelet,
//! containerd, runc, the CNI bridge and kube-proxy beside the control plane,
//! in a network namespace of their own): the images, corral as PID 1 under
//! the kubelet's probes, the chart installed with helm, the Django example
//! rolled out under load, the operator scaling it, and Prometheus
//! discovering it all. The tests take turns (one node, two cores).
//! `CORRAL_SKIP_NODE=1` skips them, saying so.

#[path = "support/node.rs"]
mod node;
mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use node::{CORRAL_IMAGE, Node, cmdline, netns_get, node, ns_pid, proc_status};
use serde_json::{Value, json};
use support::{eventually_every, heavy, root};

const WAIT: Duration = Duration::from_secs(120);
const EVERY: Duration = Duration::from_millis(500);

// --- the images ---------------------------------------------------------------

/// `tar -xOf ARCHIVE MEMBER`.
fn tar_member(archive: &Path, member: &str) -> Vec<u8> {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(archive)
        .arg(member)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tar {archive:?} {member}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
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
        let out = Command::new("sh")
            .arg("-c")
            .arg("tar -xOf \"$1\" \"./blobs/sha256/$2\" | tar -tzf - 2>/dev/null; true")
            .arg("sh")
            .arg(archive)
            .arg(digest)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
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
    let image_env: Vec<&str> = config["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
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
fn the_images_agree_with_their_dockerfiles() {
    if node::node_tests_skipped() {
        return;
    }
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
                "args": ["run", "--bind=0.0.0.0:8000", "--admin-bind=0.0.0.0:9000", "--shutdown-delay=8s"],
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

fn workers(node: &Node, pod: &Value) -> corral::contract::WorkersDoc {
    let addr = std::net::SocketAddr::new(pod_ip(pod), 9000);
    let (status, body) = netns_get(node, addr, "/workers").unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[test]
fn corral_runs_as_pid_1_in_a_pod_and_answers_the_kubelets_probes() {
    let Some(node) = node() else { return };
    let _turn = heavy();
    let _report = node.on_failure();
    let ns = "e2e-pid1";
    node.namespace(ns);
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
    let pid = node.container_pid(&pod, "corral");
    assert_eq!(ns_pid(pid), Some(1));
    assert_eq!(proc_status(pid, "Uid").as_deref(), Some("65532"));
    let argv = cmdline(pid);
    assert_eq!(
        argv[..2],
        ["corral".to_string(), "run".to_string()],
        "{argv:?}"
    );

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

    // Through the Service's NodePort on the node's 127.0.0.1.
    let (status, body) = netns_get(node, node.local(30081), "/").unwrap();
    assert_eq!(status, 200, "{body}");
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
    let started = std::time::Instant::now();
    node.kubectl_ok(&["delete", "pod", "corral", "-n", ns, "--wait=false"]);
    eventually_every(
        "Ready to turn False while terminating",
        Duration::from_secs(8),
        Duration::from_millis(200),
        || {
            let pod = node.get_json(&["pod", "corral", "-n", ns]);
            match condition(&pod, "Ready").as_deref() {
                Some("False") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    );
    let (status, _) = netns_get(node, std::net::SocketAddr::new(pod_ip(&pod), 8000), "/").unwrap();
    assert_eq!(status, 200, "still serving during the shutdown delay");
    eventually_every("the pod to be gone", Duration::from_secs(30), EVERY, || {
        let (ok, text) = node.kubectl(&["get", "pod", "corral", "-n", ns]);
        if ok { Err(text) } else { Ok(()) }
    });
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(25),
        "corral took {took:?} to stop (grace period 30s)"
    );
    node.kubectl_ok(&["delete", "namespace", ns, "--wait=false"]);
}
