"""The cluster of figures 6 and 7: .ci/kube-up.sh's throwaway API server, used as admin, `corral operator`
as its ServiceAccount, and Pods made Running and Ready at a loopback address (there is no kubelet)."""

import argparse
import contextlib
import http.client
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import types

from procs import ROOT, Procs, RunFailed, Stopped, log, stop_on_signals, template, wait_until, write_private
from sampling import request

KUBE_UP = os.path.join(ROOT, ".ci", "kube-up.sh")
KUBE = json.loads(template("kube.json"))

def kube_object(kind, **values):
    """templates/kube.json's `kind`, each "$name" in it replaced by values[name]."""
    def fill(x):
        if isinstance(x, dict):
            return {k: fill(v) for k, v in x.items()}
        if isinstance(x, list):
            return [fill(v) for v in x]
        return values[x[1:]] if isinstance(x, str) and x.startswith("$") else x
    return fill(KUBE[kind])

class Kube:
    """The API server of .ci/kube-up.sh in workdir/kube, started at once in a thread (it takes seconds: the caller
    goes on meanwhile)."""

    def __init__(self, workdir):
        self.dir = os.path.join(workdir, "kube")
        self.kubeconfig = self.kubectl_bin = self.error = None
        # Set when _up() returns. Not Thread.join: before Python 3.13 a join interrupted by a signal's exception
        # leaves the thread marked as stopped, and a second join returns at once.
        self.done = threading.Event()
        self.local = threading.local()
        threading.Thread(target=self._up, daemon=True).start()

    def _up(self):
        try:
            tools = subprocess.run(["bash", os.path.join(ROOT, ".ci", "k8s-tools.sh")], capture_output=True,
                                   text=True, check=True, timeout=600).stdout.strip().splitlines()[-1]
            self.kubectl_bin = os.path.join(tools, "kubectl")
            # The apiserver .ci/test built: kube-up.sh would otherwise ask
            # kube-apiserver.sh, which builds one if its cache has none.
            env = dict(os.environ)
            if env.get("CORRAL_KUBE_APISERVER"):
                env.setdefault("KUBE_APISERVER", env["CORRAL_KUBE_APISERVER"])
            r = subprocess.run(["bash", KUBE_UP, self.dir], capture_output=True, text=True, timeout=900, env=env)
            if r.returncode != 0:
                raise RunFailed(f"kube-up.sh failed:\n{r.stderr[-2000:]}")
            self.kubeconfig = r.stdout.strip().splitlines()[-1]
            with open(os.path.join(self.dir, "env")) as f:
                state = dict(line.strip().split("=", 1) for line in f if "=" in line)
            self.server, self.token = f"127.0.0.1:{state['KUBE_PORT']}", state["KUBE_TOKEN"]
        except Exception as e:  # noqa: BLE001 - the run reports it
            self.error = e
        finally:
            self.done.set()

    def wait_up(self):
        self.done.wait(900)
        if self.error is not None or self.kubeconfig is None:
            raise RunFailed(f"API server: {self.error or 'did not come up'}")

    def stop(self):
        """Once the start is over (it gives up after KUBE_UP_TIMEOUT), the daemons it detached."""
        self.done.wait(200)
        if os.path.isdir(self.dir):
            subprocess.run(["bash", KUBE_UP, "--stop", self.dir], capture_output=True, timeout=120)

    def kubectl(self, *args, stdin=None, check=True, timeout=30):
        r = subprocess.run([self.kubectl_bin, *args], input=stdin, capture_output=True, text=True,
                           env=dict(os.environ, KUBECONFIG=self.kubeconfig), timeout=timeout)
        if check and r.returncode != 0:
            raise RunFailed(f"kubectl {' '.join(args)}: {r.stderr.strip()}")
        return r

    def create(self, obj):
        return self.kubectl("create", "-f", "-", stdin=json.dumps(obj))

    def get_json(self, *args):
        r = self.kubectl("get", *args, "-o", "json", check=False)
        return json.loads(r.stdout) if r.returncode == 0 else None

    def api(self, method, path, body, content_type="application/json"):
        """One request as admin, a keep-alive connection per thread (figure 7 creates its pods from several)."""
        if getattr(self.local, "conn", None) is None:
            tls = ssl.create_default_context()
            tls.check_hostname = False
            tls.verify_mode = ssl.CERT_NONE  # a throwaway self-signed server on loopback
            self.local.conn = http.client.HTTPSConnection(self.server, timeout=30, context=tls)
        conn = self.local.conn
        try:
            conn.request(method, path, body=json.dumps(body), headers={
                "Authorization": f"Bearer {self.token}", "Content-Type": content_type})
            r = conn.getresponse()
            answer = r.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            self.local.conn = None
            raise
        if r.status >= 300:
            raise RunFailed(f"{method} {path}: {r.status} {answer[:300]!r}")

    def ready_pod(self, name, namespace, labels, ip):
        base = f"/api/v1/namespaces/{namespace}/pods"
        self.api("POST", base, kube_object("pod", name=name, namespace=namespace, labels=labels))
        self.api("PATCH", f"{base}/{name}/status", kube_object("pod status", ip=ip), "application/merge-patch+json")

    def status(self, name, namespace):
        return (self.get_json("workerautoscaler", name, "-n", namespace) or {}).get("status")

    def autoscaler(self, name, namespace, spec, pods, limit, every):
        """A WorkerAutoscaler, once the operator has made a pass over its `pods` pods (InvalidSpec: at once)."""
        self.create(kube_object("autoscaler", name=name, namespace=namespace, spec=spec))

        def active():
            st = self.status(name, namespace) or {}
            conds = {c["type"]: c for c in st.get("conditions", [])}
            if conds.get("InvalidSpec", {}).get("status") == "True":
                metric = spec["metrics"][0]["type"]
                raise RunFailed(f"the operator rejects metric type {metric}: InvalidSpec: "
                                f"{conds['InvalidSpec'].get('message')}")
            return st.get("pods") == pods and conds.get("ScalingActive", {}).get("status") == "True"
        try:
            wait_until(f"the operator's first pass over the {pods} pod(s) of {name}", limit, active, every)
        except RunFailed as e:
            if "rejects" in str(e):
                raise
            raise RunFailed(f"{e}; autoscaler status: {json.dumps(self.status(name, namespace))}") from None

    def namespace(self, name, secret, token):
        """The namespace and the admin token Secret the autoscalers name."""
        self.create(kube_object("namespace", name=name, secret=secret, token=token))

def start_operator(c, corral, namespace, metrics_port):
    """The CRD and RBAC applied as shipped, then `corral operator` as their ServiceAccount (nothing runs its
    Deployment), in cluster c; its process, once it leads."""
    kube = c.kube
    applied = json.loads(kube.kubectl("apply", "-f", os.path.join(ROOT, "manifests", "crd.yaml"), "-f",
                                      os.path.join(ROOT, "manifests", "operator.yaml"), "-o", "json").stdout)
    sa = next((i["metadata"] for i in applied.get("items", [applied]) if i.get("kind") == "ServiceAccount"), None)
    if sa is None:
        raise RunFailed("manifests/operator.yaml has no ServiceAccount")
    sa_name, sa_ns = sa["name"], sa.get("namespace", "default")
    # The CRD's kind is served a moment after it is created; the operator's watch would back off if started before.
    wait_until("the WorkerAutoscaler kind to be served", 30, lambda: kube.kubectl(
        "get", "workerautoscalers", "-n", namespace, check=False).returncode == 0, every=0.2)
    # The API server looks the ServiceAccount up in a cache that lags its creation by a moment.
    token = wait_until("a token for the operator's ServiceAccount", 30, lambda: kube.kubectl(
        "create", "token", sa_name, "-n", sa_ns, "--duration=2h", check=False).stdout.strip(), every=0.2)
    kubeconfig = write_private(os.path.join(c.workdir, "operator.kubeconfig"),
                               template("operator.kubeconfig", server=kube.server, user=sa_name, token=token))
    operator = c.procs.start([corral, "operator", "--metrics-bind", f"127.0.0.1:{metrics_port}",
                              "--namespace", namespace, "--lease-namespace", sa_ns, "--lease-name", "corral-bench",
                              "--identity", "bench-operator"], os.path.join(c.workdir, "operator.log"),
                             env=dict(os.environ, KUBECONFIG=kubeconfig, CORRAL_LOG_LEVEL="info"))

    def leading():
        status, body = request("127.0.0.1", metrics_port, "GET", "/readyz", timeout=2)
        return status == 200 and b"leader" in body
    wait_until("the operator to lead", 30, leading, proc=operator)
    return operator

@contextlib.contextmanager
def cluster(name, figure, keep):
    """A figure's work directory, children, API server and admin token (the pods' and the Secret's), all stopped
    on the way out; the directory (its logs) is kept with `keep` or when the run did not set .ok."""
    workdir, token = tempfile.mkdtemp(prefix=f"corral-{name}-"), f"bench-{name}-token-{os.urandom(12).hex()}"
    run = types.SimpleNamespace(workdir=workdir, token=token, token_file=write_private(
        os.path.join(workdir, "admin-token"), token), procs=Procs(), kube=Kube(workdir), ok=False)
    try:
        yield run
    finally:
        run.procs.stop_all()
        run.kube.stop()
        if run.ok and not keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"{figure}: logs kept in {workdir}")

def main(name, doc, run, configure):
    """A figure's command line; run(args) returns the exit status, a failed run prints why and returns 1."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--corral", default=os.path.join(ROOT, "target", "release", "corral"))
    ap.add_argument("--keep", action="store_true", help="keep the logs and cluster state directory")
    configure(ap)
    args = ap.parse_args()
    args.corral = os.path.abspath(args.corral)
    stop_on_signals()
    try:
        if not os.access(args.corral, os.X_OK):
            raise RunFailed(f"{args.corral} is not an executable: cargo build --release first")
        return run(args)
    except (RunFailed, Stopped) as e:
        print(f"{name}: run failed: {e}", file=sys.stderr)
        return 1
