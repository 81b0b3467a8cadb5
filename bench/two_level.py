"""Several workers per pod against one worker per pod, on the real single-node cluster (.ci/kube-node.sh), in one
run (issue 24 item 6; method and results: docs/benchmarks/two-level/README.md):

1. static, same total CPU and memory requests and limits: one pod of `corral run --proxy -w 4` (Django under
   Uvicorn) against four pods of one plain `uvicorn` each, each behind a NodePort Service: wrk's throughput and
   latency (keep-alive, mixed load), p50/p99 of an open-loop mixed load at a fixed rate (a new connection per
   request), the pods' CPU and memory from their cgroups;
2. a load step (open loop, a new connection per request) against a Deployment sized by `corral operator`: two
   levels (maxWorkers 2 per pod, then replicas) against pods only (the same operator with maxWorkers 1): time
   until capacity meets the load, failed requests, p99, CPU and memory integrated over the step.

    python3 bench/two_level.py [--corral /tmp/two-level-corral] [--out-dir docs/benchmarks/two-level] [--smoke]

Needs root (the node) and ~15 minutes (--smoke: every code path in ~6). Holds /tmp/corral-node.lock while the
node is up and always takes it down. The load runs in the node's client namespace (`corral-client-<id>`) against
the node's address, as a client on another host would. `two_level.py load ...` is the open-loop generator the
run starts there (nsenter), one process per load.
"""

import argparse
import fcntl
import json
import math
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import wrk_result  # noqa: E402
from procs import ROOT, RunFailed, Stopped, kill_group, log, output, stop_on_signals, template  # noqa: E402
from sampling import percentile  # noqa: E402

NODE_LOCK = "/tmp/corral-node.lock"
CARGO_LOCK = "/tmp/corral-cargo.lock"
NODE_IP = "10.87.0.1"
NS_STATIC, NS_STEP = "bench-static", "bench-step"
PORT_CORRAL, PORT_UVICORN, PORT_STEP = 30091, 30092, 30093
FAST, SLOW, SLOW_EVERY = "/", "/cpu/20", 10  # 90 % fast, 10 % slow (a 20 ms CPU-bound sync view)
TIMEOUT = 10.0  # per request of the open-loop load

# Static: the same total CPU and memory, requests and limits, on both sides.
STATIC = {
    "corral": {"label": "corral --proxy -w 4, 1 pod", "pods": 1, "cpu_request": "400m", "cpu_limit": "1600m",
               "mem_request": "256Mi", "mem_limit": "1Gi"},
    "uvicorn": {"label": "uvicorn, 4 pods x 1", "pods": 4, "cpu_request": "100m", "cpu_limit": "400m",
                "mem_request": "64Mi", "mem_limit": "256Mi"},
}
# The step: at their largest both fleets hold 6 workers, 1.5 CPU cores and 1.5 GiB of limits (requests a fifth of
# the CPU limit, a quarter of the memory limit); small pods, so that the step crosses pod boundaries at a rate the
# node's two cores (shared with the control plane and the load generator) can serve.
STEP = {
    "two_level": {"label": "two levels (2 workers/pod, then pods)", "max_workers": 2, "max_replicas": 3,
                  "cpu_request": "100m", "cpu_limit": "500m", "mem_request": "128Mi", "mem_limit": "512Mi"},
    "pods_only": {"label": "pods only (1 worker/pod)", "max_workers": 1, "max_replicas": 6,
                  "cpu_request": "50m", "cpu_limit": "250m", "mem_request": "64Mi", "mem_limit": "256Mi"},
}
# CPU per worker (so each pod's ceiling is its CPU limit over 0.25: 2 and 1 workers) and requests in flight per
# worker, which sees the load a CPU-capped pod cannot (docs/crd.md, "Two levels").
CPU_TARGET, CONCURRENCY_TARGET = 0.25, 2.0
REPLICA_UP_WINDOW = [None]  # --replica-up-window: replicaBehavior.scaleUp.stabilizationWindowSeconds (default 0)
# "Capacity meets the load": the first second from which, for HOLD_S seconds running, the requests sent in each
# second were >= MEET_FRACTION answered 200 and their p99 (failures counted as infinitely slow) <= MEET_P99_MS.
MEET_FRACTION, MEET_P99_MS, HOLD_S = 0.95, 250.0, 5

FULL = {"wrk_s": 20, "warm_s": 5, "rounds": 2, "fixed_s": 20, "base_s": 30, "high_s": 120,
        "low_rps": 40, "steps": {"small": 150, "large": 300}, "fixed_rps": 200}
SMOKE = {"wrk_s": 3, "warm_s": 1, "rounds": 1, "fixed_s": 3, "base_s": 5, "high_s": 40,
         "low_rps": 20, "steps": {"large": 150}, "fixed_rps": 40}
# The steps' sizes: "small" (~0.4-0.6 core of this load) is about what one two-level pod (2 workers, 500m) holds
# and two or three one-worker pods; "large" (~0.75-1 core) needs more pods on both sides.


# --- the node ------------------------------------------------------------------------------------------------

def tool(name):
    return os.path.join(os.environ["CORRAL_K8S_TOOLS"], name) if os.environ.get("CORRAL_K8S_TOOLS") else name


class Node:
    """The node of .ci/kube-node.sh (up in __init__; node_down() always), its API (the admin token, Python's HTTP
    client: no kubectl process per sample), the client namespace and the pods' cgroups."""

    def __init__(self, dir_):
        self.dir = dir_
        env = dict(os.environ, KUBECTL=tool("kubectl"))
        if os.environ.get("CORRAL_KUBE_NODE_BIN"):
            env["KUBE_NODE_BIN"] = os.environ["CORRAL_KUBE_NODE_BIN"]
        self.script_env = env
        t = time.monotonic()
        up = subprocess.run(["bash", os.path.join(ROOT, ".ci", "kube-node.sh"), "up", dir_], env=env,
                            stdout=subprocess.PIPE, stderr=open(os.path.join(dir_ + ".up.log"), "w"), text=True,
                            start_new_session=True)
        if up.returncode != 0:
            raise RunFailed(f"kube-node.sh up failed ({dir_}.up.log)")
        self.up_s = round(time.monotonic() - t, 1)
        self.kubeconfig = up.stdout.strip().splitlines()[-1]
        self.env = dict(line.split("=", 1) for line in open(os.path.join(dir_, "env")).read().split("\n")
                        if "=" in line)
        self.base = f"https://127.0.0.1:{self.env['KUBE_PORT']}"
        self.tls = ssl.create_default_context(cafile=os.path.join(dir_, "pki", "ca.crt"))
        self.token = self.env["KUBE_TOKEN"]
        self.cgroup = self.env["NODE_CGROUP"].strip("/")
        self.client = ["nsenter", f"--net=/run/netns/{self.env['CLIENT_NETNS']}"]
        self.cg_dirs = {}

    def kubectl(self, *args, stdin=None, check=True):
        r = subprocess.run([tool("kubectl"), "--kubeconfig", self.kubeconfig, *args], input=stdin,
                           capture_output=True, text=True, timeout=300)
        if check and r.returncode != 0:
            raise RunFailed(f"kubectl {' '.join(args)}: {r.stderr.strip()[-800:]}")
        return r.stdout

    def apply(self, ns, objects):
        self.kubectl("apply", "-n", ns, "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                      "items": objects}))

    def get(self, path):
        req = urllib.request.Request(self.base + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, context=self.tls, timeout=5) as r:
            return json.load(r)

    def helm(self, *args):
        h = os.path.join(self.dir, "helm")
        env = dict(os.environ, KUBECONFIG=self.kubeconfig, HELM_CACHE_HOME=h + "/cache",
                   HELM_CONFIG_HOME=h + "/config", HELM_DATA_HOME=h + "/data")
        r = subprocess.run([tool("helm"), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=400)
        if r.returncode != 0:
            raise RunFailed(f"helm {' '.join(args)}: {r.stderr.strip()[-800:]}")

    def import_image(self, repo, archive):
        subprocess.run(["bash", os.path.join(ROOT, ".ci", "kube-node.sh"), "import", self.dir, repo, archive],
                       env=self.script_env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def namespace(self, ns):
        self.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=180s", "--ignore-not-found")
        self.kubectl("create", "namespace", ns)
        wait("the namespace's default ServiceAccount token", 60,
             lambda: self.get(f"/api/v1/namespaces/{ns}/serviceaccounts/default").get("secrets"))

    def pods(self, ns, selector):
        items = self.get(f"/api/v1/namespaces/{ns}/pods?labelSelector={selector}")["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    def rollout(self, ns, deployment, limit=240):
        self.kubectl("rollout", "status", "-n", ns, f"deployment/{deployment}", f"--timeout={limit}s")

    def serves(self, port, path="/"):
        """Whether NodePort `port` answers `path` with 200 from the client host (a new process there)."""
        r = subprocess.run(self.client + ["curl", "-s", "-o", "/dev/null", "-m", "3", "-w", "%{http_code}",
                                          f"http://{NODE_IP}:{port}{path}"], capture_output=True, text=True)
        return r.stdout.strip() == "200"

    # the pods' cgroups (cgroup v1 here: kubelet's cgroupfs driver under NODE_CGROUP/kubepods)
    def pod_cgroup(self, controller, uid):
        key = (controller, uid)
        if key not in self.cg_dirs:
            base = f"/sys/fs/cgroup/{controller}/{self.cgroup}/kubepods"
            for d, subdirs, _ in os.walk(base):
                if os.path.basename(d) == f"pod{uid}":
                    self.cg_dirs[key] = d
                    break
                if os.path.basename(d).startswith("pod"):
                    subdirs.clear()
        return self.cg_dirs.get(key)

    def pod_usage(self, uid):
        """(CPU seconds, working set bytes, RSS bytes, processes that are neither corral nor pause) or None."""
        try:
            cpu_dir, mem_dir, pids_dir = (self.pod_cgroup(c, uid) for c in ("cpuacct", "memory", "pids"))
            if not (cpu_dir and mem_dir and pids_dir):
                return None
            cpu = int(open(os.path.join(cpu_dir, "cpuacct.usage")).read()) / 1e9
            usage = int(open(os.path.join(mem_dir, "memory.usage_in_bytes")).read())
            stat = dict(line.split() for line in open(os.path.join(mem_dir, "memory.stat")))
            ws = max(0, usage - int(stat.get("total_inactive_file", 0)))
            procs = 0
            for d, _, files in os.walk(pids_dir):
                if "cgroup.procs" in files and d != pids_dir:
                    for pid in open(os.path.join(d, "cgroup.procs")).read().split():
                        try:
                            comm = open(f"/proc/{pid}/comm").read().strip()
                        except OSError:
                            continue
                        procs += comm not in ("corral", "pause")
            return cpu, ws, int(stat.get("total_rss", 0)), procs
        except (OSError, ValueError):
            return None

    def node_cpu(self):
        """CPU seconds of the whole node (control plane, kubelet, containerd, pods)."""
        try:
            return int(open(f"/sys/fs/cgroup/cpuacct/{self.cgroup}/cpuacct.usage").read()) / 1e9
        except OSError:
            return None


def node_down(dir_):
    """kube-node.sh down: ends whatever the records in dir_/env name, also after a failed or interrupted up."""
    subprocess.run(["bash", os.path.join(ROOT, ".ci", "kube-node.sh"), "down", dir_], env=dict(os.environ),
                   stdout=subprocess.DEVNULL, stderr=open(dir_ + ".down.log", "w"), check=False)


def wait(what, limit, fn, every=0.5):
    deadline = time.monotonic() + limit
    last = None
    while time.monotonic() < deadline:
        try:
            v = fn()
            if v:
                return v
        except (OSError, ValueError, KeyError, RunFailed) as e:
            last = e
        time.sleep(every)
    raise RunFailed(f"timed out after {limit:.0f}s waiting for {what}" + (f" ({last})" if last else ""))


def host_cpu():
    """(busy, total) jiffies of the machine."""
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(f) - f[3] - f[4], sum(f)


# --- the objects ---------------------------------------------------------------------------------------------

SECURITY = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"}}


def deployment(name, replicas, container, token=False):
    volumes = [{"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}]
    mounts = [{"name": "tmp", "mountPath": "/tmp"}]
    if token:
        volumes.append({"name": "corral-token", "secret": {"secretName": "mysite-corral",
                                                          "items": [{"key": "token", "path": "token"}]}})
        mounts.append({"name": "corral-token", "mountPath": "/etc/corral", "readOnly": True})
    container = {"name": "app", "image": "mysite:0.1.0", "imagePullPolicy": "IfNotPresent",
                 "securityContext": SECURITY, "volumeMounts": mounts, **container}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"terminationGracePeriodSeconds": 35, "securityContext": POD_SECURITY,
                                           "containers": [container], "volumes": volumes}}}}


def service(name, node_port):
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"type": "NodePort", "selector": {"app": name},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8000, "nodePort": node_port}]}}


def resources(cpu_request, cpu_limit, mem_request, mem_limit):
    return {"requests": {"cpu": cpu_request, "memory": mem_request}, "limits": {"cpu": cpu_limit, "memory": mem_limit}}


def corral_args(*extra):
    return ["--proxy", "--bind=0.0.0.0:8000", "--admin-bind=0.0.0.0:9000", *extra, "--shutdown-delay=5s",
            "--graceful-timeout=25s", "--log-format=json", "--", "uvicorn", "--fd", "{fd}", "--no-access-log",
            "mysite.asgi:application"]


def corral_probes():
    return {"ports": [{"name": "http", "containerPort": 8000}, {"name": "admin", "containerPort": 9000}],
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": "admin"}, "periodSeconds": 1,
                               "failureThreshold": 1},
            "livenessProbe": {"httpGet": {"path": "/livez", "port": "admin"}, "periodSeconds": 10}}


def static_objects():
    c, u = STATIC["corral"], STATIC["uvicorn"]
    corral = deployment("corral4", 1, {
        "args": corral_args("--workers=4", "--min-workers=4", "--max-workers=4"), **corral_probes(),
        "resources": resources(c["cpu_request"], c["cpu_limit"], c["mem_request"], c["mem_limit"])})
    uvicorn = deployment("uvicorn1", 4, {
        "command": ["uvicorn"], "args": ["--host", "0.0.0.0", "--port", "8000", "--no-access-log",
                                         "mysite.asgi:application"],
        "ports": [{"name": "http", "containerPort": 8000}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1,
                           "failureThreshold": 1},
        "resources": resources(u["cpu_request"], u["cpu_limit"], u["mem_request"], u["mem_limit"])})
    return [corral, service("corral4", PORT_CORRAL), uvicorn, service("uvicorn1", PORT_UVICORN)]


def step_objects(v):
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "mysite-corral"}, "type": "Opaque",
              "stringData": {"token": "two-level-bench-" + os.urandom(12).hex()}}
    app = deployment("mysite", 1, {
        "args": corral_args("--admin-token-file=/etc/corral/token", "--workers=1", "--min-workers=1",
                            "--max-workers=8"), **corral_probes(),
        "resources": resources(v["cpu_request"], v["cpu_limit"], v["mem_request"], v["mem_limit"])}, token=True)
    wa = {"apiVersion": "corral.dev/v1alpha1", "kind": "WorkerAutoscaler", "metadata": {"name": "mysite"},
          "spec": {"selector": {"matchLabels": {"app": "mysite"}}, "adminPort": 9000,
                   "tokenSecretRef": {"name": "mysite-corral", "key": "token"},
                   "minWorkers": 1, "maxWorkers": v["max_workers"],
                   "metrics": [{"type": "CPU", "target": CPU_TARGET},
                               {"type": "Concurrency", "target": CONCURRENCY_TARGET}],
                   # scale-up as the defaults; no scale-down within the run
                   "behavior": {"scaleDown": {"stabilizationWindowSeconds": 600}},
                   "replicaBehavior": {"scaleDown": {"stabilizationWindowSeconds": 600},
                                       **({"scaleUp": {"stabilizationWindowSeconds": REPLICA_UP_WINDOW[0]}}
                                          if REPLICA_UP_WINDOW[0] is not None else {})},
                   "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mysite"},
                   "minReplicas": 1, "maxReplicas": v["max_replicas"], "pollIntervalSeconds": 1}}
    return [secret, app, service("mysite", PORT_STEP), wa]


# --- the loads -----------------------------------------------------------------------------------------------

def wrk(node, port, connections, seconds):
    """wrk from the client host, keep-alive, the mixed load (figure 1b's script)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(template("mixed.lua", path=FAST, other=SLOW, every=SLOW_EVERY))
    try:
        out = subprocess.run(node.client + ["/usr/bin/wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout",
                                            "5s", "--latency", "-s", f.name, f"http://{NODE_IP}:{port}/"],
                             capture_output=True, text=True, timeout=seconds + 30).stdout
    finally:
        os.unlink(f.name)
    return wrk_result(out, (50, 99))


def open_loop(node, port, t0, phases, out_path):
    """The generator (`two_level.py load`) in the client namespace: `phases` [(seconds, req/s)...] from the
    monotonic time t0 (the clock is the machine's, shared by both processes)."""
    argv = node.client + [sys.executable, os.path.abspath(__file__), "load", "--host", NODE_IP, "--port", str(port),
                          "--t0", repr(t0), "--phases", json.dumps(phases), "--out", out_path]
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)


def finish(proc, out_path, limit):
    """The generator's results; stopped (its group) if it overruns or the run is stopped meanwhile."""
    try:
        proc.wait(limit)
    except subprocess.TimeoutExpired:
        raise RunFailed("the load generator overran its time")
    finally:
        if proc.poll() is None:
            kill_group(proc.pid)
            proc.wait()
    if proc.returncode != 0:
        raise RunFailed(f"the load generator exited {proc.returncode}")
    with open(out_path) as f:
        return json.load(f)


def generator(args):
    """`load`: requests at fixed times, each on a new connection (Connection: close), whatever the answers do;
    every SLOW_EVERY-th is the slow one. Writes [[t_sched, latency_s or null, status or failure, slow]...]."""
    import asyncio
    phases = json.loads(args.phases)
    fast, slow = (f"GET {p} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode() for p in (FAST, SLOW))
    results = []

    async def one(t_sched, is_slow):
        start, writer = time.monotonic(), None
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(args.host, args.port), TIMEOUT)
            writer.write(slow if is_slow else fast)
            data = await asyncio.wait_for(reader.read(), max(TIMEOUT - (time.monotonic() - start), 0.001))
            status = int(data[9:12]) if data.startswith(b"HTTP/1.") else "bad response"
            results.append((round(t_sched, 4), round(time.monotonic() - start, 5), status, is_slow))
        except asyncio.TimeoutError:
            results.append((round(t_sched, 4), None, "timeout", is_slow))
        except (OSError, ValueError) as e:
            results.append((round(t_sched, 4), None, type(e).__name__, is_slow))
        finally:
            if writer is not None:
                writer.close()

    async def main():
        tasks, at, n, begin = set(), 0.0, 0, 0.0
        for seconds, rps in phases:
            end = begin + seconds
            while at < end:
                delay = args.t0 + at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                n += 1
                task = asyncio.create_task(one(at, n % SLOW_EVERY == 0))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                at += 1.0 / rps
            at, begin = max(at, end), end
        if tasks:
            await asyncio.wait(tasks, timeout=TIMEOUT + 2)

    asyncio.run(main())
    with open(args.out, "w") as f:
        json.dump(sorted(results), f, separators=(",", ":"))
    return 0


FAILED_MS = 100_000.0  # a failed request in a second's p99


def per_second(results, until):
    """For each second s of scheduled time: sent, answered 200, p99 ms (failures as FAILED_MS)."""
    bins = [[] for _ in range(int(math.ceil(until)))]
    for t, lat, status, _ in results:
        if 0 <= t < until:
            bins[int(t)].append(lat * 1000 if lat is not None and status == 200 else math.inf)
    return [{"t": i, "sent": len(b), "ok": sum(x != math.inf for x in b),
             "p99_ms": rnd(min(percentile(b, 0.99), FAILED_MS)) if b else None} for i, b in enumerate(bins)]


def summary(results, lo, hi):
    sel = [r for r in results if lo <= r[0] < hi]
    lats = [r[1] * 1000 for r in sel if r[1] is not None and r[2] == 200]
    failed = [r for r in sel if r[1] is None or r[2] != 200]
    kinds = {}
    for r in failed:
        kinds[str(r[2])] = kinds.get(str(r[2]), 0) + 1
    slow = [r[1] * 1000 for r in sel if r[3] and r[1] is not None and r[2] == 200]
    return {"sent": len(sel), "failed": len(failed), "failures": kinds,
            "p50_ms": rnd(percentile(lats, 0.5)), "p99_ms": rnd(percentile(lats, 0.99)),
            "p99_all_ms": rnd(percentile([*lats, *[math.inf] * len(failed)], 0.99)) if sel else None,
            "p99_slow_ms": rnd(percentile(slow, 0.99)), "served_rps": rnd(len(lats) / (hi - lo)) if hi > lo else None}


def rnd(x, n=1):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else round(x, n)


# --- 1. static ---------------------------------------------------------------------------------------------------

def static_memory(node, selector):
    pods = node.pods(NS_STATIC, f"app={selector}")
    use = [node.pod_usage(p["metadata"]["uid"]) for p in pods]
    if any(u is None for u in use):
        raise RunFailed(f"no cgroup for a pod of {selector}")
    return {"working_set_mib": rnd(sum(u[1] for u in use) / 2**20), "rss_mib": rnd(sum(u[2] for u in use) / 2**20),
            "processes": sum(u[3] for u in use)}


def pods_cpu(node, selector, ns=NS_STATIC):
    total = 0.0
    for p in node.pods(ns, f"app={selector}"):
        u = node.pod_usage(p["metadata"]["uid"])
        total += u[0] if u else 0.0
    return total


def measure_static(node, cfg):
    log("static: one pod of corral -w 4 against four pods of uvicorn")
    node.namespace(NS_STATIC)
    node.apply(NS_STATIC, static_objects())
    for name, port in (("corral4", PORT_CORRAL), ("uvicorn1", PORT_UVICORN)):
        node.rollout(NS_STATIC, name)
        wait(f"NodePort {port} to serve", 120, lambda: node.serves(port))
    time.sleep(3)
    out = {k: {"label": v["label"], "idle": static_memory(node, sel), "wrk": [], "fixed": [], "cpu_cores": []}
           for (k, v), sel in zip(STATIC.items(), ("corral4", "uvicorn1"))}
    for rnd_ in range(cfg["rounds"]):
        order = list(STATIC) if rnd_ % 2 == 0 else list(reversed(STATIC))
        for key in order:
            sel, port = ("corral4", PORT_CORRAL) if key == "corral" else ("uvicorn1", PORT_UVICORN)
            wrk(node, port, 16, cfg["warm_s"])
            c0, t0 = pods_cpu(node, sel), time.monotonic()
            w = wrk(node, port, 16, cfg["wrk_s"])
            w["cpu_cores"] = rnd((pods_cpu(node, sel) - c0) / (time.monotonic() - t0), 2)
            w["cpu_ms_per_request"] = rnd(w["cpu_cores"] * 1000 / w["rps"], 2) if w["rps"] else None
            out[key]["wrk"].append(w)
            log(f"static {key} round {rnd_ + 1}: wrk {w['rps']:.0f} req/s p99 {w['p99_ms']} ms, "
                f"{w['cpu_cores']} cores")
            path = os.path.join(node.dir, f"fixed-{key}-{rnd_}.json")
            t0 = time.monotonic() + 1.0
            res = finish(open_loop(node, port, t0, [[cfg["fixed_s"], cfg["fixed_rps"]]], path), path,
                         cfg["fixed_s"] + TIMEOUT + 30)
            out[key]["fixed"].append(summary(res, 0, cfg["fixed_s"]))
        for key, sel in (("corral", "corral4"), ("uvicorn", "uvicorn1")):
            out[key]["loaded"] = static_memory(node, sel)
    for v in out.values():
        v["rps"] = rnd(sum(w["rps"] for w in v["wrk"]) / len(v["wrk"]))
        for k in ("p50_ms", "p99_ms", "cpu_cores", "cpu_ms_per_request"):
            xs = [w[k] for w in v["wrk"] if w[k] is not None]
            v[k] = rnd(sum(xs) / len(xs), 2) if xs else None
        v["wrk_errors"] = sum(w["errors"] + w["non_2xx"] for w in v["wrk"])
        v["fixed_p50_ms"] = rnd(max(f["p50_ms"] or 0 for f in v["fixed"]))
        v["fixed_p99_ms"] = rnd(max(f["p99_ms"] or 0 for f in v["fixed"]))
        v["fixed_failed"] = sum(f["failed"] for f in v["fixed"])
    node.kubectl("delete", "namespace", NS_STATIC, "--wait=true", "--timeout=180s")
    return out


# --- 2. the load step --------------------------------------------------------------------------------------------

class Sampler(threading.Thread):
    """Every second: the Deployment's replicas, its pods (Ready or not) with their cgroups' CPU, memory and
    worker processes, the autoscaler's status."""

    def __init__(self, node, t0):
        super().__init__(daemon=True)
        self.node, self.t0, self.halt, self.samples, self.error = node, t0, threading.Event(), [], None

    def run(self):
        while not self.halt.is_set():
            t = time.monotonic()
            try:
                self.samples.append(self.sample(t))
            except Exception as e:  # noqa: BLE001 - one missed sample; the last error is reported
                self.error = repr(e)
            self.halt.wait(max(0.0, 1.0 - (time.monotonic() - t)))

    def sample(self, t):
        ns = NS_STEP
        dep = self.node.get(f"/apis/apps/v1/namespaces/{ns}/deployments/mysite")
        wa = self.node.get(f"/apis/corral.dev/v1alpha1/namespaces/{ns}/workerautoscalers/mysite")
        pods = []
        for p in self.node.pods(ns, "app=mysite"):
            ready = any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
            u = self.node.pod_usage(p["metadata"]["uid"])
            pods.append({"name": p["metadata"]["name"], "ready": ready,
                         "cpu_s": u and round(u[0], 3), "ws": u and u[1], "workers": u and u[3]})
        st = wa.get("status", {})
        return {"t": round(t - self.t0, 2), "replicas": dep["spec"]["replicas"],
                "ready_replicas": dep["status"].get("readyReplicas", 0), "pods": pods,
                "wa_workers": st.get("workers"), "wa_desired_replicas": st.get("desiredReplicas"),
                "limited_by": st.get("replicasLimitedBy"),
                "pod_status": [(s["name"], s.get("current"), s.get("desired"), s.get("limitedBy"))
                               for s in st.get("podStatus", [])],
                "node_cpu_s": self.node.node_cpu(), "host": host_cpu()}


def capacity_met(seconds, t_up, limit):
    """The first second >= t_up from which HOLD_S seconds running meet the bar (module header), in seconds after
    the step; None if never before `limit`."""
    good = lambda s: s["sent"] and s["ok"] >= MEET_FRACTION * s["sent"] and (s["p99_ms"] or math.inf) <= MEET_P99_MS
    for i in range(int(t_up), int(limit) - HOLD_S + 1):
        if all(good(seconds[j]) for j in range(i, i + HOLD_S)):
            return i - t_up
    return None


def integrate(samples, lo, hi):
    """Over [lo, hi] s: CPU seconds the pods used, their working set in GiB x s (and mean, peak in MiB), the pods
    and workers that ran (time-weighted means), the node's and the machine's CPU."""
    inside = [s for s in samples if lo <= s["t"] <= hi]
    if len(inside) < 2:
        return {}
    first, last = inside[0], inside[-1]
    cpu = {}  # pod -> (first reading, last reading); a pod born inside the span starts from 0
    for s in inside:
        for p in s["pods"]:
            if p["cpu_s"] is not None:
                start = cpu[p["name"]][0] if p["name"] in cpu else (p["cpu_s"] if s is first else 0.0)
                cpu[p["name"]] = (start, p["cpu_s"])
    pod_cpu = sum(b - a for a, b in cpu.values())
    ws_int = pods_int = workers_int = 0.0
    peak = 0
    for a, b in zip(inside, inside[1:]):
        dt = b["t"] - a["t"]
        ws = sum(p["ws"] or 0 for p in a["pods"])
        peak = max(peak, ws)
        ws_int += ws * dt
        pods_int += len(a["pods"]) * dt
        workers_int += sum(p["workers"] or 0 for p in a["pods"]) * dt
    span = last["t"] - first["t"]
    busy = (last["host"][0] - first["host"][0]) / max(1, last["host"][1] - first["host"][1]) * os.cpu_count()
    node = (last["node_cpu_s"] - first["node_cpu_s"]) if last["node_cpu_s"] and first["node_cpu_s"] else None
    return {"span_s": rnd(span), "pod_cpu_s": rnd(pod_cpu), "pod_cpu_cores": rnd(pod_cpu / span, 2),
            "outside_node_cores": rnd(busy - node / span, 2) if node else None,
            "memory_gib_s": rnd(ws_int / 2**30, 1), "memory_mean_mib": rnd(ws_int / span / 2**20),
            "memory_peak_mib": rnd(peak / 2**20), "pods_mean": rnd(pods_int / span, 2),
            "workers_mean": rnd(workers_int / span, 2), "node_cpu_cores": rnd(node / span, 2) if node else None,
            "machine_busy_cores": rnd(busy, 2)}


def first_time(samples, t_up, pred):
    for s in samples:
        if s["t"] >= t_up and pred(s):
            return rnd(s["t"] - t_up)
    return None


def measure_step(node, key, cfg, size, high_rps):
    v = STEP[key]
    log(f"step {size} ({cfg['low_rps']} -> {high_rps} req/s): {v['label']}")
    node.namespace(NS_STEP)
    node.apply(NS_STEP, step_objects(v))
    node.rollout(NS_STEP, "mysite")
    wait("NodePort to serve", 120, lambda: node.serves(PORT_STEP))
    wait("the autoscaler to measure the pod", 60, lambda: node.get(
        f"/apis/corral.dev/v1alpha1/namespaces/{NS_STEP}/workerautoscalers/mysite").get("status", {}).get("workers"))
    base, high = cfg["base_s"], cfg["high_s"]
    t0 = time.monotonic() + 2.0
    sampler = Sampler(node, t0)
    sampler.start()
    path = os.path.join(node.dir, f"step-{size}-{key}.json")
    try:
        res = finish(open_loop(node, PORT_STEP, t0, [[base, cfg["low_rps"]], [high, high_rps]], path), path,
                     base + high + TIMEOUT + 40)
        time.sleep(1.5)
    finally:
        sampler.halt.set()
        sampler.join(5)
    samples = sampler.samples
    end = base + high
    seconds = per_second(res, end)
    met = capacity_met(seconds, base, end)
    workers0 = next((s["wa_workers"] for s in samples if s["t"] >= 0), None)
    out = {"label": v["label"], "size": size, "high_rps": high_rps, "spec": {k: v[k] for k in ("max_workers", "max_replicas", "cpu_limit", "mem_limit")},
           "capacity_met_s": met,
           "baseline": summary(res, 0, base), "step": summary(res, base, end),
           "step_first_30s": summary(res, base, base + 30),
           "after_met": summary(res, base + met, end) if met is not None else None,
           "worst_second_p99_ms": max((s["p99_ms"] or 0 for s in seconds[base:end]), default=None),
           "first_worker_added_s": first_time(samples, base, lambda s: (s["wa_workers"] or 0) > (workers0 or 1)),
           "replicas_raised_s": first_time(samples, base, lambda s: s["replicas"] > 1),
           "second_pod_ready_s": first_time(samples, base, lambda s: sum(p["ready"] for p in s["pods"]) >= 2),
           "final": {"replicas": samples[-1]["replicas"] if samples else None,
                     "workers": samples[-1]["wa_workers"] if samples else None,
                     "pod_workers": [p["workers"] for p in samples[-1]["pods"]] if samples else None},
           "used_step": integrate(samples, base, end), "used_baseline": integrate(samples, 0, base),
           "per_second": seconds, "samples": samples, "sampler_error": sampler.error}
    log(f"step {size} {key}: capacity met {met} s after the step, {out['step']['failed']} failed, "
        f"p99 {out['step']['p99_ms']} ms, final {out['final']}")
    node.kubectl("delete", "namespace", NS_STEP, "--wait=true", "--timeout=180s")
    return out


# --- the run -------------------------------------------------------------------------------------------------------

def images(binary, out):
    built = {}
    for kind in ("corral", "mysite"):
        r = subprocess.run(["bash", os.path.join(ROOT, ".ci", "node-images.sh"), kind, out, binary],
                           stdout=subprocess.PIPE, stderr=open(os.path.join(out, f"{kind}.log"), "w"), text=True)
        if r.returncode != 0:
            raise RunFailed(f"node-images.sh {kind} failed ({out}/{kind}.log)")
        built[kind] = r.stdout.strip().splitlines()[-1]
    return built


def run(args):
    """The whole run in a directory of its own (images, the node's directory and logs, the loads' results),
    removed at the end however the run ends, unless --keep."""
    work = tempfile.mkdtemp(prefix="corral-two-level-")
    try:
        return run_in(args, work)
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run_in(args, work):
    cfg = SMOKE if args.smoke else FULL
    binary = os.path.abspath(args.corral)
    result = {"smoke": args.smoke, "config": cfg, "static_shape": STATIC, "step_shape": STEP,
              "method": {"fast": FAST, "slow": SLOW, "slow_every": SLOW_EVERY, "timeout_s": TIMEOUT,
                         "cpu_target": CPU_TARGET, "concurrency_target": CONCURRENCY_TARGET,
                         "replica_up_window_s": args.replica_up_window,
                         "meet_fraction": MEET_FRACTION, "meet_p99_ms": MEET_P99_MS, "hold_s": HOLD_S},
              "environment": {"corral": output([binary, "--version"]), "commit": output(["git", "-C", ROOT,
                                                                                           "rev-parse", "--short",
                                                                                           "HEAD"]),
                              "src_dirty": bool(output(["git", "-C", ROOT, "status", "--porcelain", "src"])),
                              "cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in os.getloadavg()],
                              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                              "built_from": args.built_from}}
    log(f"images from {binary}")
    built = images(binary, work)
    wall = time.monotonic()
    quiet = open(CARGO_LOCK, "a") if args.hold_cargo_lock else None
    if quiet:
        # before the node's lock, the order the other users of both take them in
        log(f"waiting for {CARGO_LOCK} (--hold-cargo-lock: no build on the machine meanwhile)")
        fcntl.flock(quiet, fcntl.LOCK_EX)
    result["environment"]["held_cargo_lock"] = bool(quiet)
    log(f"waiting for {NODE_LOCK}")
    with open(NODE_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        node_dir = os.path.join(work, "node")
        os.makedirs(node_dir)
        try:
            log("node up")
            node = Node(node_dir)
            result["environment"]["node_up_s"] = node.up_s
            node.import_image("docker.io/library/corral", built["corral"])
            node.import_image("docker.io/library/mysite", built["mysite"])
            log("the operator (helm install, one replica)")
            node.helm("install", "corral", "charts/corral", "--namespace", "corral-system", "--create-namespace",
                      "--set", "replicaCount=1", "--wait", "--timeout", "180s")
            if not args.skip_static:
                result["static"] = measure_static(node, cfg)
            # each side's runs in a list; the order alternates (ABBA), so a drift does not favour one side
            result["step"] = {k: [] for k in STEP}
            for i, (size, high_rps) in enumerate(cfg["steps"].items()):
                for k in list(STEP) if i % 2 == 0 else list(reversed(STEP)):
                    result["step"][k].append(measure_step(node, k, cfg, size, high_rps))
        finally:
            log("node down")
            node_down(node_dir)
    if quiet:
        quiet.close()
    result["environment"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    result["wall_s"] = round(time.monotonic() - wall)
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    lp = sub.add_parser("load", help="the open-loop generator (started by the run, in the client namespace)")
    lp.add_argument("--host", required=True)
    lp.add_argument("--port", type=int, required=True)
    lp.add_argument("--t0", type=float, required=True)
    lp.add_argument("--phases", required=True)
    lp.add_argument("--out", required=True)
    ap.add_argument("--corral", default="/tmp/two-level-corral")
    ap.add_argument("--built-from", default=None,
                    help="what the binary was built from (a commit, a dirty tree), recorded in the results")
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "docs", "benchmarks", "two-level"))
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--hold-cargo-lock", action="store_true",
                    help=f"also hold {CARGO_LOCK} while the node is up, so that no cargo build shares the cores")
    ap.add_argument("--skip-static", action="store_true", help="the load steps only")
    ap.add_argument("--replica-up-window", type=int, default=None, metavar="S",
                    help="replicaBehavior.scaleUp.stabilizationWindowSeconds on both sides (default: the operator's, 0)")
    ap.add_argument("--keep", action="store_true", help="keep the node's directory (logs) in /tmp")
    ap.add_argument("--report-only", action="store_true", help="results.md and the chart again from results.json")
    args = ap.parse_args(argv)
    if args.cmd == "load":
        return generator(args)
    REPLICA_UP_WINDOW[0] = args.replica_up_window
    import two_level_report as report
    if args.report_only:
        with open(os.path.join(args.out_dir, "results.json")) as f:
            result = json.load(f)
    else:
        if os.geteuid() != 0:
            sys.exit("two_level: needs root (the node)")
        stop_on_signals()
        try:
            result = run(args)
        except (RunFailed, Stopped) as e:
            log(f"two_level: {e}")
            return 1
        os.makedirs(args.out_dir, exist_ok=True)
        with open(os.path.join(args.out_dir, "results.json"), "w") as f:
            f.write(report.dump(result))
    report.write(result, args.out_dir)
    print("\n".join(report.tables(result)))
    return 0


if __name__ == "__main__":
    if os.environ.get("CORRAL_BENCH_IN_VENV") != "1" and "load" not in sys.argv[1:2]:
        venv = os.environ.get("CORRAL_BENCH_VENV", os.path.expanduser("~/.cache/corral/bench-venv"))
        py = os.path.join(venv, "bin", "python")
        if os.path.exists(py):
            os.execve(py, [py, os.path.abspath(__file__), *sys.argv[1:]], dict(os.environ, CORRAL_BENCH_IN_VENV="1"))
    sys.exit(main())
