//! A real single-node Kubernetes cluster for the end-to-end tests:
//! `.ci/kube-node.sh run DIR` (kubelet, containerd, kube-proxy and the
//! control plane, all in a network namespace of their own), started once per
//! test binary and stopped by the script itself when this process goes
//! away (its stdin, a pipe from here, closes). The images are built by
//! `.ci/node-images.sh` from the binary these tests were built with and
//! imported into the node's containerd.
//!
//! Everything that talks to a pod runs inside the node's network namespace
//! (a thread that `setns`es into it); NodePorts are reached as real clients
//! reach them, from another host: the client namespace the script makes,
//! linked to the node's by a veth, asking the node's address. The host has
//! no route to the node's addresses, and must not, so that nothing leaves
//! the machine. The API server is reached on the host's 127.0.0.1 through
//! the script's bridge.
//!
//! The tests are `#[ignore]`d for a plain `cargo test`: `.ci/test` runs
//! them with `--ignored` unless `CORRAL_SKIP_NODE=1`.

#![allow(dead_code, reason = "tests use different parts")]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use corral::http::client::url;
use serde_json::Value;

use crate::support::{
    BIN, Load, fresh_connections, heavy, k8s_tool, output_text, root, run_with_stdin, stdout_of,
    unique,
};

/// The node, brought up once per test binary.
pub fn node() -> &'static Node {
    // A node that failed to come up fails every test with its reason, once
    // brought up (not again per test).
    static NODE: OnceLock<Result<Node, String>> = OnceLock::new();
    let node = NODE.get_or_init(|| {
        std::panic::catch_unwind(Node::start).map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        })
    });
    match node {
        Ok(node) => node,
        Err(e) => panic!("the node is not up: {e}"),
    }
}

/// The node and a test's turn on it (the tests take turns: see [`heavy`]).
/// Hold the [`Turn`] to the test's end: if the test panics, it prints
/// [`Node::report`].
pub fn node_turn() -> (&'static Node, Turn) {
    let node = node();
    (
        node,
        Turn {
            node,
            _heavy: heavy(),
        },
    )
}

/// Where the node and its images live, and how to reach them.
pub struct Node {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub netns: String,
    /// The client host's network namespace: see [`Node::node_port`].
    pub client_netns: String,
    /// The node's address, where clients reach its NodePorts.
    pub ip: std::net::IpAddr,
    pub cgroup: String,
    pub kube_port: u16,
    pub admin_token: String,
    pub images: Images,
    /// The script's stdin: the node lives as long as this end is open.
    _control: Mutex<(Child, ChildStdin)>,
}

/// The OCI archives imported into the node (its pause image aside, which
/// the script builds and imports itself).
#[derive(Clone, Debug)]
pub struct Images {
    pub corral: PathBuf,
    pub mysite: PathBuf,
}

/// Image names as the manifests give them.
pub const CORRAL_IMAGE: &str = "corral:0.1.0";
pub const MYSITE_IMAGE: &str = "mysite:0.1.0";

/// The parts of the node, as the script names their logs and pids.
const PARTS: &[(&str, &str)] = &[
    ("etcd", "ETCD_PID"),
    ("kube-apiserver", "APISERVER_PID"),
    ("kube-controller-manager", "KCM_PID"),
    ("kube-scheduler", "SCHEDULER_PID"),
    ("containerd", "CONTAINERD_PID"),
    ("kubelet", "KUBELET_PID"),
    ("kube-proxy", "PROXY_PID"),
    ("socat-netns", "SOCAT_NETNS_PID"),
    ("socat-host", "SOCAT_HOST_PID"),
];

impl Node {
    fn start() -> Node {
        let dir = std::env::temp_dir().join(unique("corral-node"));
        std::fs::create_dir_all(&dir).unwrap();
        let up_log = dir.with_extension("up.log");
        let mut cmd = kube_node("run", &dir);
        cmd.env("KUBECTL", k8s_tool("kubectl"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&up_log).unwrap());
        if let Some(bin) = std::env::var_os("CORRAL_KUBE_NODE_BIN") {
            cmd.env("KUBE_NODE_BIN", bin);
        }
        let mut child = cmd.spawn().expect("bash .ci/kube-node.sh run");
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let kubeconfig = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(path) = line.strip_prefix("ready ") {
                        break PathBuf::from(path);
                    }
                }
                _ => panic!(
                    "the node did not come up ({}):\n{}",
                    up_log.display(),
                    std::fs::read_to_string(&up_log).unwrap_or_default()
                ),
            }
        };
        let up = std::fs::read_to_string(&up_log).unwrap_or_default();
        if let Some(line) = up.lines().find(|l| l.starts_with("kube-node: up in")) {
            report(line.trim_start_matches("kube-node: "));
        }
        let env = read_env(&dir.join("env"));
        let node = Node {
            kubeconfig,
            netns: env["NODE_NETNS"].clone(),
            client_netns: env["CLIENT_NETNS"].clone(),
            ip: env["NODE_IP"].parse().unwrap(),
            cgroup: env["NODE_CGROUP"].clone(),
            kube_port: env["KUBE_PORT"].parse().unwrap(),
            admin_token: env["KUBE_TOKEN"].clone(),
            images: images().clone(),
            _control: Mutex::new((child, stdin)),
            dir,
        };
        let images = node.images.clone();
        for (repo, archive) in [
            ("docker.io/library/corral", &images.corral),
            ("docker.io/library/mysite", &images.mysite),
        ] {
            let (ok, text) = output_text(kube_node("import", &node.dir).arg(repo).arg(archive));
            assert!(ok, "import {repo}: {text}");
        }
        node
    }

    pub fn env(&self) -> BTreeMap<String, String> {
        read_env(&self.dir.join("env"))
    }

    /// What requests to `service` of `ns` meet, for a load through its
    /// NodePort that fails: the pods (IP, Ready), the EndpointSlices
    /// kube-proxy reads, kube-proxy's iptables rules for the Service, each
    /// pod asked directly on its address (past kube-proxy) and what listens
    /// in it, and the controllers' and kube-proxy's log lines about it. It
    /// tells a Service kube-proxy routes nowhere from a pod that refuses.
    pub fn service_report(&self, ns: &str, service: &str) -> String {
        // It runs while a test is failing: nothing here may panic and hide
        // that failure.
        let (_, slices) = self.kubectl(&["get", "endpointslices", "-n", ns, "-o", "yaml"]);
        let key = format!("{ns}/{service}");
        let (_, rules) =
            output_text(Command::new("ip").args(["netns", "exec", &self.netns, "iptables-save"]));
        let rules: Vec<&str> = rules.lines().filter(|l| l.contains(&key)).collect();
        let (_, list) = self.kubectl(&["get", "pods", "-n", ns, "-o", "json"]);
        let list: Value = serde_json::from_str(&list).unwrap_or_default();
        let mut pods = String::new();
        for pod in list["items"].as_array().into_iter().flatten() {
            let name = pod["metadata"]["name"].as_str().unwrap_or("?");
            let ready = pod["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready")
                .map_or(Value::Null, |c| c["status"].clone());
            let Some(ip) = pod["status"]["podIP"]
                .as_str()
                .and_then(|ip| ip.parse().ok())
            else {
                pods += &format!("{name}: no IP, Ready {ready}\n");
                continue;
            };
            pods += &format!("{name}: {ip}, Ready {ready}\n");
            for (port, path) in [(8000, "/"), (9000, "/readyz")] {
                let answer = netns_get(self, SocketAddr::new(ip, port), path)
                    .map(|(code, body)| format!("{code} {}", &body[..body.len().min(120)]))
                    .unwrap_or_else(|e| format!("error: {e}"));
                pods += &format!("  asked directly, {ip}:{port}{path}: {answer}\n");
            }
            for container in pod["status"]["containerStatuses"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| !c["state"]["running"].is_null())
            {
                let name = container["name"].as_str().unwrap_or("?");
                let listening = match self.try_container_pid(pod, name) {
                    Ok(pid) => {
                        output_text(
                            Command::new("nsenter")
                                .arg(format!("--net=/proc/{pid}/ns/net"))
                                .args(["ss", "-ltn"]),
                        )
                        .1
                    }
                    Err(e) => format!("({e})\n"),
                };
                pods += &format!("  listening in {name}:\n{listening}");
            }
        }
        let mentions = |part: &str| {
            let log =
                std::fs::read_to_string(self.dir.join(format!("{part}.log"))).unwrap_or_default();
            let lines: Vec<&str> = log.lines().filter(|l| l.contains(&key)).collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        };
        let (_, node_ports) = self.kubectl(&[
            "get",
            "service",
            service,
            "-n",
            ns,
            "-o",
            "jsonpath={.spec.ports[*].nodePort}",
        ]);
        let paths: String = node_ports
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .map(|port| self.node_port_path(port))
            .collect();
        format!(
            "=== pods, each asked past kube-proxy ===\n{pods}\n=== endpointslices ===\n{slices}\n\
             === iptables rules for {key} ===\n{}\n\
             {paths}\
             === kube-controller-manager on {key} ===\n{}\n\
             === kube-proxy on {key} ===\n{}\n",
            rules.join("\n"),
            mentions("kube-controller-manager"),
            mentions("kube-proxy"),
        )
    }

    /// The way from the client host to NodePort `port`, as the kernel has
    /// it: who listens on the port (kube-proxy holds it open), the nat and
    /// filter rules a packet meets with their packet counters, conntrack's
    /// entries for the port, rules in the legacy tables (a second backend
    /// would be traversed too), the sysctls, a request from a new process
    /// and from a new thread on the client host, and kube-proxy's own counts
    /// of its syncs.
    fn node_port_path(&self, port: u16) -> String {
        const SCRIPT: &str = r#"p=$1
echo "--- listening on :$p"; ss -ltnp "sport = :$p"
echo "--- nat rules on the way, with [packets:bytes]"
iptables-save -c -t nat | grep -E -- "-A (PREROUTING|POSTROUTING|KUBE-POSTROUTING|KUBE-NODEPORTS) |-j KUBE-NODEPORTS|--dport $p "
echo "--- filter rules that refuse or match :$p"
iptables-save -c -t filter | grep -E -- "REJECT|--dport $p "
echo "--- conntrack, destination port $p"; conntrack -L -p tcp --dport "$p" 2>&1 | tail -n 6
echo "--- rules in the legacy tables: $(iptables-legacy-save 2>/dev/null | grep -c -- '^-A')"
sysctl net.ipv4.ip_forward net.ipv4.conf.client0.rp_filter
echo "--- kube-proxy's syncs"
curl -sS -m 3 http://127.0.0.1:10249/metrics 2>&1 | grep -E '^kubeproxy_(sync_proxy_rules_(last_timestamp_seconds|endpoint_changes_total|service_changes_total|iptables_restore_failures_total)|network_programming_duration_seconds_count) '
echo "now $(date +%s.%N)"
"#;
        let (_, text) = output_text(
            Command::new("ip")
                .args(["netns", "exec", &self.netns, "sh", "-c", SCRIPT, "sh"])
                .arg(port.to_string()),
        );
        let url = format!("http://{}/", self.node_port(port));
        let (_, process) = output_text(
            Command::new("ip")
                .args(["netns", "exec", &self.client_netns])
                .args([
                    "curl",
                    "-sS",
                    "-m",
                    "3",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                ])
                .arg(&url),
        );
        let thread = match self.node_port_get(port, "/") {
            Ok((code, _)) => code.to_string(),
            Err(e) => e.to_string(),
        };
        format!(
            "=== the way to NodePort {port} ===\n{text}--- from the client host, a request from a new process: {process}\n\
             --- and from a new thread: {thread}\n"
        )
    }

    /// Each part's state and its last log lines: what a failing test shows.
    pub fn report(&self) -> String {
        let env = self.env();
        let mut out = String::new();
        for (name, key) in PARTS {
            let pid: i32 = env.get(*key).and_then(|p| p.parse().ok()).unwrap_or(0);
            let alive = pid > 0 && Path::new(&format!("/proc/{pid}")).exists();
            out += &format!(
                "--- {name} (pid {pid}, {}) ---\n{}\n",
                if alive { "running" } else { "NOT RUNNING" },
                tail(&self.dir.join(format!("{name}.log")), 12)
            );
        }
        out
    }

    /// What a failed rollout in `ns` shows: its pods, its events, and
    /// [`Node::report`].
    pub fn namespace_report(&self, ns: &str) -> String {
        let (_, pods) = self.kubectl(&["get", "pods", "-n", ns, "-o", "wide"]);
        let (_, events) = self.kubectl(&["get", "events", "-n", ns]);
        format!("{pods}\n{events}\n{}", self.report())
    }

    /// `kube-node.sh check`: in the node's network namespace and in every
    /// pod's, no route that could lead off the machine. Panics if there is.
    pub fn check_network(&self) -> String {
        let out = kube_node("check", &self.dir).output().unwrap();
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "the network check failed:\n{text}");
        text
    }

    /// `kubectl` as the cluster's admin, arguments to add.
    fn kubectl_command(&self) -> Command {
        let mut cmd = Command::new(k8s_tool("kubectl"));
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        cmd
    }

    /// `kubectl ARGS` as the cluster's admin: success, stdout then stderr.
    pub fn kubectl(&self, args: &[&str]) -> (bool, String) {
        output_text(self.kubectl_command().args(args))
    }

    /// `kubectl ARGS`, which must succeed; its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let (ok, text) = self.kubectl(args);
        assert!(ok, "kubectl {args:?}: {text}");
        text
    }

    /// `kubectl get ARGS -o json`, parsed.
    pub fn get_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        serde_json::from_slice(&stdout_of(self.kubectl_command().args(&all))).unwrap()
    }

    /// `kubectl apply -f -` of `yaml` (JSON documents will do) in `ns`.
    pub fn apply(&self, ns: &str, yaml: &str) {
        let (ok, text) = run_with_stdin(
            self.kubectl_command().args(["apply", "-n", ns, "-f", "-"]),
            yaml.as_bytes(),
        );
        assert!(ok, "kubectl apply: {text}\n{yaml}");
    }

    /// `helm ARGS` against the node, from the repository root.
    pub fn helm(&self, args: &[&str]) -> (bool, String) {
        output_text(
            Command::new(k8s_tool("helm"))
                .args(args)
                .env("KUBECONFIG", &self.kubeconfig)
                .env("HELM_CACHE_HOME", self.dir.join("helm/cache"))
                .env("HELM_CONFIG_HOME", self.dir.join("helm/config"))
                .env("HELM_DATA_HOME", self.dir.join("helm/data"))
                .current_dir(root()),
        )
    }

    /// A fresh namespace (deleted first if an earlier run left it), deleted
    /// again when the guard goes, so a failing test's pods do not run on
    /// into the tests after it.
    pub fn namespace(&'static self, name: &str) -> Namespace {
        let _ = self.kubectl(&["delete", "namespace", name, "--wait=true", "--timeout=120s"]);
        self.kubectl_ok(&["create", "namespace", name]);
        // Pods need the namespace's default ServiceAccount (and its token).
        crate::support::eventually_every(
            "the namespace's default ServiceAccount token",
            Duration::from_secs(60),
            Duration::from_millis(250),
            || {
                let sa = self.get_json(&["serviceaccount", "default", "-n", name]);
                match sa["secrets"].as_array().is_some_and(|s| !s.is_empty()) {
                    true => Ok(()),
                    false => Err(sa),
                }
            },
        );
        Namespace {
            node: self,
            name: name.to_string(),
        }
    }

    /// The pods of `ns` matching `selector`, as JSON objects.
    pub fn pods(&self, ns: &str, selector: &str) -> Vec<Value> {
        let list = self.get_json(&["pods", "-n", ns, "-l", selector]);
        list["items"].as_array().unwrap().clone()
    }

    /// Waits until `deployment` has rolled out completely.
    pub fn rollout(&self, ns: &str, deployment: &str, limit: Duration) {
        let timeout = format!("--timeout={}s", limit.as_secs());
        let (ok, text) = self.kubectl(&[
            "rollout",
            "status",
            "-n",
            ns,
            &format!("deployment/{deployment}"),
            &timeout,
        ]);
        if !ok {
            panic!(
                "rollout of {deployment}: {text}\n{}",
                self.namespace_report(ns)
            );
        }
    }

    /// The host pid of `container` of `pod` (a Pod's JSON): the process of
    /// its cgroup that is PID 1 in the container's own PID namespace.
    pub fn container_pid(&self, pod: &Value, container: &str) -> i32 {
        self.try_container_pid(pod, container)
            .unwrap_or_else(|e| panic!("{e} (container {container} of {pod})"))
    }

    /// [`Node::container_pid`], or why there is none.
    fn try_container_pid(&self, pod: &Value, container: &str) -> Result<i32, String> {
        let id = pod["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == container)
            .and_then(|c| c["containerID"].as_str())
            .and_then(|id| id.strip_prefix("containerd://"))
            .ok_or("no containerID")?
            .to_string();
        let base = PathBuf::from(format!("/sys/fs/cgroup/pids/{}/kubepods", self.cgroup));
        let dir = find_dir(&base, &id).ok_or_else(|| format!("no cgroup {id} under {base:?}"))?;
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).map_err(|e| e.to_string())?;
        procs
            .lines()
            .filter_map(|p| p.parse::<i32>().ok())
            .find(|pid| ns_pid(*pid) == Some(1))
            .ok_or_else(|| format!("no PID 1 among {procs:?} of container {id}"))
    }

    /// NodePort `port` at the node's address, as a client on another host
    /// reaches it: from the client namespace only (see
    /// [`Node::node_port_get`] and [`Node::node_port_load`]).
    pub fn node_port(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip, port)
    }

    /// One GET of `path` through NodePort `port`, on a fresh connection
    /// from the client host: status and body.
    pub fn node_port_get(&self, port: u16, path: &str) -> std::io::Result<(u16, String)> {
        let (addr, path) = (self.node_port(port), path.to_string());
        in_netns(&self.client_netns_path(), move || raw_get(addr, &path))
    }

    /// Waits until NodePort `port` (of `service` in `ns`) answers 200 from
    /// the client host: kube-proxy has the Service's first endpoint in its
    /// rules. Until then the port is refused by design, so a load that must
    /// not fail starts after this.
    pub fn until_node_port_serves(&self, ns: &str, service: &str, port: u16) {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            match self.node_port_get(port, "/") {
                Ok((200, _)) => return,
                other if std::time::Instant::now() > deadline => panic!(
                    "NodePort {port} never answered: {other:?}\n{}",
                    self.service_report(ns, service)
                ),
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Closed-loop load through NodePort `port` from the client host
    /// (support's [`Load`]: `conns` threads, GETs on fresh connections,
    /// until stopped or `limit` passes; anything but a complete 200 is a
    /// failure).
    pub fn node_port_load(&self, port: u16, path: &str, conns: usize, limit: Duration) -> Load {
        let (netns, addr, path) = (
            self.client_netns_path(),
            self.node_port(port),
            path.to_string(),
        );
        Load::with_clients(conns, limit, move || {
            enter_netns(&netns);
            fresh_connections(addr, &path)
        })
    }

    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.netns))
    }

    fn client_netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.client_netns))
    }

    /// The text of the container log of `container` in `pod` (kubelet's file).
    pub fn container_log(&self, pod: &Value, container: &str) -> String {
        let (_, text) = self.kubectl(&[
            "logs",
            "-n",
            pod["metadata"]["namespace"].as_str().unwrap(),
            pod["metadata"]["name"].as_str().unwrap(),
            "-c",
            container,
        ]);
        text
    }
}

/// A namespace of the node, deleted (without waiting) on drop.
pub struct Namespace {
    node: &'static Node,
    name: String,
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = self
            .node
            .kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}

/// A test's turn on the node; prints the node's state (still in the turn)
/// when the test that holds it panics.
pub struct Turn {
    node: &'static Node,
    _heavy: MutexGuard<'static, ()>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("=== node parts ===\n{}", self.node.report());
        }
    }
}

/// A line for the closing report of the node tests: printed, and appended
/// to $CORRAL_NODE_REPORT when set (.ci/test shows that file at the end).
pub fn report(line: &str) {
    eprintln!("node report: {line}");
    if let Some(path) = std::env::var_os("CORRAL_NODE_REPORT")
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// What `kube-node.sh up` did with a part replaced: see [`up_with_failing`].
/// Dropped, it runs `down` on its directory, so an `up` that wrongly
/// succeeded leaves no node running behind a failing test (`down` does
/// nothing where `up` already stopped everything).
pub struct FailedUp {
    pub ok: bool,
    pub stderr: String,
    pub dir: PathBuf,
}

impl Drop for FailedUp {
    fn drop(&mut self) {
        let _ = kube_node("down", &self.dir).output();
    }
}

/// `kube-node.sh up` with `part` (kubelet or containerd) replaced by a
/// program that says `message` and exits 1 at once. The other parts are
/// the real ones; kubelet is swapped in a copy of the binaries' directory,
/// containerd (Debian's, found on PATH) by a directory put first on PATH.
pub fn up_with_failing(part: &str, message: &str) -> FailedUp {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let dir = std::env::temp_dir().join(unique(&format!("corral-node-no-{part}")));
    let fakes = dir.with_extension("fakes");
    std::fs::create_dir_all(&fakes).unwrap();
    let fake = fakes.join(part);
    std::fs::write(&fake, format!("#!/bin/sh\necho '{message}' >&2\nexit 1\n")).unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = kube_node("up", &dir);
    cmd.env("KUBECTL", k8s_tool("kubectl"))
        .env("KUBE_NODE_TIMEOUT", "60");
    let bin = PathBuf::from(
        std::env::var_os("CORRAL_KUBE_NODE_BIN").expect("CORRAL_KUBE_NODE_BIN (set by .ci/test)"),
    );
    if part == "containerd" {
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{}:{path}", fakes.display()))
            .env("KUBE_NODE_BIN", &bin);
    } else {
        for entry in std::fs::read_dir(&bin).unwrap() {
            let entry = entry.unwrap();
            if entry.file_name() != part {
                symlink(entry.path(), fakes.join(entry.file_name())).unwrap();
            }
        }
        cmd.env("KUBE_NODE_BIN", &fakes);
    }
    let out = cmd.output().expect("bash .ci/kube-node.sh up");
    FailedUp {
        ok: out.status.success(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        dir,
    }
}

/// `bash .ci/kube-node.sh SUBCOMMAND DIR`, arguments to add.
fn kube_node(subcommand: &str, dir: &Path) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(root().join(".ci/kube-node.sh"))
        .arg(subcommand)
        .arg(dir);
    cmd
}

fn read_env(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("({e})"));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn find_dir(base: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(base).ok()?.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        if entry.file_name() == name {
            return Some(path);
        }
        if let Some(found) = find_dir(&path, name) {
            return Some(found);
        }
    }
    None
}

/// The pid of `pid` in its own (innermost) PID namespace: NSpid's last field.
pub fn ns_pid(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|p| p.parse().ok())
}

/// A field of /proc/PID/status ("Uid", "Gid"...): its first value.
pub fn proc_status(pid: i32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_string)
}

pub fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// The images, built once per test binary from [`BIN`].
pub fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| build_images(&std::env::temp_dir().join(unique("corral-images"))))
}

fn build_images(out: &Path) -> Images {
    let build = |kind: &str| -> PathBuf {
        let built = stdout_of(
            Command::new("bash")
                .arg(root().join(".ci/node-images.sh"))
                .arg(kind)
                .arg(out)
                .arg(BIN),
        );
        PathBuf::from(String::from_utf8_lossy(&built).trim())
    };
    Images {
        corral: build("corral"),
        mysite: build("mysite"),
    }
}

/// Runs `f` on a thread inside the network namespace at `netns` (the
/// sockets it makes belong to that namespace), and returns its result.
pub fn in_netns<T: Send + 'static>(netns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let netns = netns.to_path_buf();
    std::thread::spawn(move || {
        enter_netns(&netns);
        f()
    })
    .join()
    .unwrap()
}

fn enter_netns(netns: &Path) {
    let file = std::fs::File::open(netns).unwrap_or_else(|e| panic!("{netns:?}: {e}"));
    // SAFETY: setns on this thread only, with a valid descriptor.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "setns {netns:?}: {}",
        std::io::Error::last_os_error()
    );
}

/// One GET on a fresh connection from inside the node's namespace (a pod's
/// address): status and body.
pub fn netns_get(node: &Node, addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let path = path.to_string();
    in_netns(&node.netns_path(), move || raw_get(addr, &path))
}

/// A GET written by hand with `Connection: close`: the status and body.
fn raw_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())?;
    read_answer(&mut s)
}

fn read_answer(s: &mut TcpStream) -> std::io::Result<(u16, String)> {
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {text:?}")))?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.contains("chunked"));
    Ok((
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_string()
        },
    ))
}

/// A chunked body's data.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out += &after[..n];
        rest = after[n..].strip_prefix("\r\n").unwrap_or(&after[n..]);
    }
    out
}

/// A Prometheus-compatible scraper inside the node's namespace (it scrapes
/// pod addresses and asks the API server for them), with `config` (a
/// Prometheus scrape configuration); killed with its group on drop.
///
/// Debian's VictoriaMetrics (`victoria-metrics`, single node), not Debian's
/// Prometheus: bookworm's prometheus 2.42 is built without the kubernetes
/// service discovery (its source package drops discovery/kubernetes, and
/// the binary rejects `kubernetes_sd_configs` as an unknown field).
/// VictoriaMetrics reads the same scrape configuration (kubernetes_sd_configs,
/// relabel_configs, tls_config, authorization) and answers the same
/// /api/v1/query and /api/v1/targets.
pub struct NodePrometheus {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
    netns: PathBuf,
}

impl NodePrometheus {
    pub fn start(node: &Node, config: &str) -> NodePrometheus {
        use std::os::unix::process::CommandExt;
        let dir = node.dir.join(unique("scraper"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("scrape.yml"), config).unwrap();
        let addr: SocketAddr = "127.0.0.1:8428".parse().unwrap();
        let log = std::fs::File::create(dir.join("scraper.log")).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", node.netns_path().display()))
            .arg("victoria-metrics")
            .arg(format!(
                "-promscrape.config={}",
                dir.join("scrape.yml").display()
            ))
            .arg("-promscrape.config.strictParse")
            .arg(format!("-storageDataPath={}", dir.join("data").display()))
            .arg(format!("-httpListenAddr={addr}"))
            // Answer with the newest samples (the default hides the last 30 s).
            .arg("-search.latencyOffset=0s")
            .arg("-retentionPeriod=1d")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("victoria-metrics (Debian package) is installed by .ci/test");
        let p = NodePrometheus {
            child,
            addr,
            dir,
            netns: node.netns_path(),
        };
        crate::support::eventually_every(
            "the scraper to be ready",
            Duration::from_secs(90),
            Duration::from_millis(250),
            || match p.get("/health") {
                Ok((200, _)) => Ok(()),
                other => Err(format!("{other:?}\n{}", p.log())),
            },
        );
        p
    }

    fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let (addr, path) = (self.addr, path.to_string());
        in_netns(&self.netns, move || raw_get(addr, &path))
    }

    pub fn log(&self) -> String {
        tail(&self.dir.join("scraper.log"), 20)
    }

    /// An API answer's `data` (GET PATH?query), or the error text.
    pub fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        // The project's URL builder encodes the query; the request is raw.
        let uri = url(&self.addr.to_string(), path, params).map_err(|e| e.to_string())?;
        let (status, body) = self
            .get(uri.path_and_query().map_or(path, |pq| pq.as_str()))
            .map_err(|e| e.to_string())?;
        let answer: Value =
            serde_json::from_str(&body).map_err(|e| format!("{status} {body}: {e}"))?;
        match (status, answer["status"].as_str()) {
            (200, Some("success")) => Ok(answer["data"].clone()),
            _ => Err(format!("{status} {body}")),
        }
    }

    /// An instant query's result vector.
    pub fn query(&self, promql: &str) -> Vec<Value> {
        self.api("/api/v1/query", &[("query", promql)])
            .map(|d| d["result"].as_array().cloned().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{promql}: {e}"))
    }
}

impl Drop for NodePrometheus {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, killpg};
        use nix::unistd::Pid;
        if std::thread::panicking() {
            eprintln!("--- scraper log ---\n{}", self.log());
        }
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}
