//! A real Kubernetes API server for the operator's tests: etcd and
//! kube-apiserver (v1.20, built from Debian's source by
//! .ci/kube-apiserver.sh) on 127.0.0.1, plus helpers to apply manifests,
//! mint ServiceAccount tokens and run `corral operator` as a real process.
//! There is no kubelet: tests create Pod objects and set their status to
//! point at real corral managers on 127.0.0.x.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::{Discovery, Scope};
use kube::{Client, Config, ResourceExt};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::{
    BIN, Text, await_logged_addr, eventually_async_every, eventually_every, free_port, unique,
};

/// Where the test command put the binaries.
fn apiserver_binary() -> PathBuf {
    let path = std::env::var_os("CORRAL_KUBE_APISERVER")
        .map(PathBuf::from)
        .expect("CORRAL_KUBE_APISERVER is not set: run the tests with .ci/test, which builds kube-apiserver");
    assert!(path.exists(), "{} does not exist", path.display());
    path
}

fn etcd_binary() -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join("etcd");
        if p.exists() {
            return p;
        }
    }
    panic!("etcd not found: .ci/test installs Debian's etcd-server");
}

/// A child that dies with the thread that started it (PR_SET_PDEATHSIG),
/// so no server outlives a test run.
fn spawn_tied(cmd: &mut Command, log: &Path) -> Child {
    let file = std::fs::File::create(log).unwrap();
    // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            Ok(())
        });
    }
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"))
}

pub struct Cluster {
    pub url: String,
    pub admin_token: String,
    pub dir: PathBuf,
    port: u16,
    etcd_port: u16,
    etcd: Child,
    api: Child,
}

impl Cluster {
    pub fn start() -> Cluster {
        let dir = std::env::temp_dir().join(unique("corral-kube"));
        std::fs::create_dir_all(dir.join("certs")).unwrap();
        let ok = Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(dir.join("sa.key"))
            .arg("2048")
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
            && Command::new("openssl")
                .args(["rsa", "-pubout", "-in"])
                .arg(dir.join("sa.key"))
                .arg("-out")
                .arg(dir.join("sa.pub"))
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success();
        assert!(ok, "openssl failed");
        let admin_token = unique("admin");
        std::fs::write(
            dir.join("token.csv"),
            format!("{admin_token},admin,admin,\"system:masters\"\n"),
        )
        .unwrap();
        let etcd_port = free_port();
        let peer_port = free_port();
        let etcd = spawn_tied(
            Command::new(etcd_binary())
                .arg("--name=corral")
                .arg(format!("--data-dir={}", dir.join("etcd").display()))
                .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"))
                .arg(format!(
                    "--advertise-client-urls=http://127.0.0.1:{etcd_port}"
                ))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
                ))
                .arg(format!(
                    "--initial-cluster=corral=http://127.0.0.1:{peer_port}"
                )),
            &dir.join("etcd.log"),
        );
        let port = free_port();
        let mut cluster = Cluster {
            url: format!("https://127.0.0.1:{port}"),
            admin_token,
            port,
            etcd_port,
            api: Command::new("true").spawn().unwrap(),
            etcd,
            dir,
        };
        cluster.api = cluster.spawn_apiserver();
        cluster.wait_ready();
        cluster
    }

    fn spawn_apiserver(&self) -> Child {
        let d = &self.dir;
        spawn_tied(
            Command::new(apiserver_binary())
                .arg("--bind-address=127.0.0.1")
                .arg(format!("--secure-port={}", self.port))
                .arg("--insecure-port=0")
                .arg(format!("--cert-dir={}", d.join("certs").display()))
                .arg(format!(
                    "--etcd-servers=http://127.0.0.1:{}",
                    self.etcd_port
                ))
                .arg(format!(
                    "--token-auth-file={}",
                    d.join("token.csv").display()
                ))
                .arg("--authorization-mode=RBAC")
                .arg(format!(
                    "--service-account-key-file={}",
                    d.join("sa.pub").display()
                ))
                .arg(format!(
                    "--service-account-signing-key-file={}",
                    d.join("sa.key").display()
                ))
                .arg("--service-account-issuer=https://kubernetes.default.svc")
                .arg("--service-cluster-ip-range=10.96.0.0/16")
                .arg("--disable-admission-plugins=ServiceAccount")
                .arg("--profiling=false"),
            &d.join("kube-apiserver.log"),
        )
    }

    fn wait_ready(&mut self) {
        // A curl per check: every 200 ms, not to slow the server's start.
        eventually_every(
            "kube-apiserver to be ready",
            Duration::from_secs(120),
            Duration::from_millis(200),
            || {
                let ok = Command::new("curl")
                    .args(["-ksf", "--max-time", "2", "-o", "/dev/null", "-H"])
                    .arg(format!("Authorization: Bearer {}", self.admin_token))
                    .arg(format!("{}/readyz", self.url))
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    return Ok(());
                }
                if let Some(status) = self.api.try_wait().unwrap() {
                    panic!("kube-apiserver exited ({status}):\n{}", self.log());
                }
                Err(Text(self.log()))
            },
        );
    }

    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("kube-apiserver.log")).unwrap_or_default();
        text.lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops the API server (etcd keeps the data) and starts it again on
    /// the same port.
    pub fn restart_apiserver(&mut self, down_for: Duration) {
        self.stop_apiserver();
        std::thread::sleep(down_for);
        self.start_apiserver();
    }

    /// Kills the API server; etcd keeps the data for [`Self::start_apiserver`].
    pub fn stop_apiserver(&mut self) {
        let _ = killpg(Pid::from_raw(self.api.id() as i32), Signal::SIGKILL);
        let _ = self.api.wait();
    }

    /// Starts the API server again on the same port and waits until it is ready.
    pub fn start_apiserver(&mut self) {
        self.api = self.spawn_apiserver();
        self.wait_ready();
    }

    pub async fn admin(&self) -> Client {
        client(&self.url, &self.admin_token)
    }

    pub fn kubeconfig(&self, name: &str, token: &str) -> PathBuf {
        write_kubeconfig(&self.dir, &self.url, name, token)
    }
}

/// A kubeconfig file for `token`, as a pod's ServiceAccount would have.
pub fn write_kubeconfig(dir: &Path, url: &str, name: &str, token: &str) -> PathBuf {
    let path = dir.join(format!("{name}.kubeconfig"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {url}\n    insecure-skip-tls-verify: true\n\
             users:\n- name: {name}\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: {name}\n\
             current-context: test\n"
        ),
    )
    .unwrap();
    path
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in [&mut self.api, &mut self.etcd] {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What tests sharing one server need to reach it.
#[derive(Clone)]
pub struct Shared {
    pub url: String,
    pub admin_token: String,
    pub dir: PathBuf,
}

impl Shared {
    pub fn kubeconfig(&self, name: &str, token: &str) -> PathBuf {
        write_kubeconfig(&self.dir, &self.url, name, token)
    }
}

/// One server for the whole test binary, started by a thread that lives
/// as long as the process, so the servers die with the process.
pub fn shared() -> Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let cluster = Cluster::start();
                tx.send(Shared {
                    url: cluster.url.clone(),
                    admin_token: cluster.admin_token.clone(),
                    dir: cluster.dir.clone(),
                })
                .unwrap();
                loop {
                    std::thread::park();
                }
            });
            rx.recv().expect("the API server did not start")
        })
        .clone()
}

pub fn client(url: &str, token: &str) -> Client {
    let mut config = Config::new(url.parse().unwrap());
    config.accept_invalid_certs = true;
    config.auth_info.token = Some(token.to_string().into());
    config.read_timeout = Some(Duration::from_secs(30));
    Client::try_from(config).unwrap()
}

/// Server-side applies every document of a multi-document YAML text.
pub async fn apply_yaml(client: &Client, yaml: &str) {
    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(yaml).unwrap();
    for doc in docs.into_iter().filter(|d| d.is_object()) {
        let obj: DynamicObject = serde_json::from_value(doc).unwrap();
        let gvk = obj
            .types
            .as_ref()
            .map(|t| kube::api::GroupVersionKind::try_from(t).unwrap())
            .unwrap();
        let (resource, caps) = discovery
            .resolve_gvk(&gvk)
            .unwrap_or_else(|| panic!("unknown kind {gvk:?}"));
        let api: Api<DynamicObject> = match (caps.scope, obj.namespace()) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), &ns, &resource),
            (Scope::Namespaced, None) => Api::default_namespaced_with(client.clone(), &resource),
            (Scope::Cluster, _) => Api::all_with(client.clone(), &resource),
        };
        api.patch(
            &obj.name_any(),
            &PatchParams::apply("corral-tests").force(),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {} {}: {e}", gvk.kind, obj.name_any()));
    }
}

/// Installs the CRD and the operator's RBAC from manifests/, once per server.
pub async fn install(client: &Client) {
    let root = super::root();
    apply_yaml(
        client,
        &std::fs::read_to_string(root.join("manifests/crd.yaml")).unwrap(),
    )
    .await;
    // The CRD needs a moment before its kind is served (a discovery is
    // a round of requests: every 200 ms).
    eventually_async_every(
        "the CRD to be served",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            // While the group registers, one of discovery's calls can 404:
            // that is "not served yet", not a failure.
            let discovery = Discovery::new(client.clone())
                .run()
                .await
                .map_err(|e| vec![e.to_string()])?;
            let groups: Vec<String> = discovery.groups().map(|g| g.name().to_string()).collect();
            match groups.iter().any(|g| g == "corral.dev") {
                true => Ok(()),
                false => Err(groups),
            }
        },
    )
    .await;
    apply_yaml(
        client,
        &std::fs::read_to_string(root.join("manifests/operator.yaml")).unwrap(),
    )
    .await;
}

/// A token for the operator's ServiceAccount, bound by the manifests' RBAC
/// and nothing else.
pub async fn operator_token(client: &Client) -> String {
    service_account_token(client, "corral-system", "corral").await
}

/// A token for ServiceAccount `ns/name`, as the kubelet would mount it.
pub async fn service_account_token(client: &Client, ns: &str, name: &str) -> String {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Some(vec!["https://kubernetes.default.svc".into()]),
            expiration_seconds: Some(3600),
            ..Default::default()
        }
        .into(),
        ..Default::default()
    };
    let answer: TokenRequest = sas
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap();
    answer
        .status
        .and_then(|s| s.token)
        .expect("a token in the answer")
}

pub async fn namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    let _ = api.create(&PostParams::default(), &ns).await;
}

pub async fn token_secret(client: &Client, ns: &str, name: &str, token: &str) {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "stringData": {"token": token},
    }))
    .unwrap();
    api.patch(
        name,
        &PatchParams::apply("corral-tests").force(),
        &Patch::Apply(&secret),
    )
    .await
    .unwrap();
}

/// A Pod object whose status says Running and Ready at `ip`.
pub async fn ready_pod(client: &Client, ns: &str, name: &str, labels: serde_json::Value, ip: &str) {
    let template = serde_json::json!({
        "metadata": {"labels": labels},
        "spec": {"containers": [{"name": "app", "image": "corral:test"}]},
    });
    ready_pod_from(client, ns, name, &template, ip).await;
}

/// The Pod a Deployment's `template` would give, Running and Ready at `ip`
/// (there is no kubelet to do it).
pub async fn ready_pod_from(
    client: &Client,
    ns: &str,
    name: &str,
    template: &serde_json::Value,
    ip: &str,
) {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut pod = template.clone();
    pod["metadata"]["name"] = name.into();
    let pod: Pod = serde_json::from_value(pod).unwrap();
    api.create(&PostParams::default(), &pod).await.unwrap();
    let status = serde_json::json!({"status": {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True"}],
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// `corral operator` as a real process, killed with its group on drop.
pub struct Operator {
    child: Child,
    pub metrics: std::net::SocketAddr,
    log: PathBuf,
}

impl Operator {
    pub fn start(
        kubeconfig: &Path,
        namespace: &str,
        identity: &str,
        lease: &str,
        extra: &[&str],
    ) -> Operator {
        let mut args: Vec<String> = [
            "operator",
            "--metrics-bind",
            "127.0.0.1:0",
            "--namespace",
            namespace,
            "--lease-namespace",
            "corral-system",
            "--lease-name",
            lease,
            "--identity",
            identity,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let env = vec![("CORRAL_LOG_LEVEL".into(), "info,corral=debug".into())];
        Operator::spawn(kubeconfig, identity, &args, &env)
    }

    /// `corral ARGS` with exactly `env` besides KUBECONFIG; `metrics` is
    /// the address it logs serving its metrics on (ARGS say where, port 0
    /// for any).
    pub fn spawn(
        kubeconfig: &Path,
        identity: &str,
        args: &[String],
        env: &[(String, String)],
    ) -> Operator {
        let log = kubeconfig.with_extension(format!("{identity}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("KUBECONFIG", kubeconfig)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .process_group(0)
            .spawn()
            .unwrap();
        let mut op = Operator {
            child,
            metrics: "0.0.0.0:0".parse().unwrap(),
            log,
        };
        op.metrics = await_logged_addr(
            "the operator",
            &op.log,
            &mut op.child,
            "serving /livez, /readyz and /metrics",
            "addr",
            |_| true,
        );
        op
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        super::show_log_on_panic("operator", &self.log, || self.log());
        self.kill();
    }
}
