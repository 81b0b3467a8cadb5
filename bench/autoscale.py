#!/usr/bin/env python3
"""Autoscaling quality: `corral operator` sizing a real `corral run` pod
through a load step (issue 6, figure 6), twice in one cluster: on CPU with
CPU-bound requests (the CPU run), then on Concurrency with I/O-bound
requests behind `corral run --proxy` (the Concurrency run, issue 11).

    python3 bench/autoscale.py [--out-dir docs/benchmarks] [--smoke] [--corral PATH]

Writes OUT/autoscale.json (the CPU run at the top level, the Concurrency
run under "concurrency"), OUT/autoscale.png and
OUT/autoscale-concurrency.png (matplotlib, imported only for the charts)
and prints both tables and their key figures side by side. Exits 1 when
the CPU run fails (cluster, manager or operator not coming up; nothing is
written), 3 when only the Concurrency run failed (the JSON is written, with
the error under "concurrency"); a missed target is reported, not an error.
If the corral binary has no proxy mode (`corral run --help` lists no
--proxy) the Concurrency run is skipped and says so: "not available:
<reason>" is printed and stored.

Method
------
* Cluster: a real etcd + kube-apiserver v1.20 (`.ci/kube-up.sh`), the CRD
  and the operator's least-privilege RBAC from `manifests/`, and
  `corral operator` running as a real process with a token of its
  ServiceAccount (not as admin), as the integration tests do. There is no
  kubelet: the script creates one Pod object and sets its status (Running,
  Ready, podIP 127.x.y.z) through the status subresource; at that loopback
  address a real `corral run` manager (built-in worker) serves HTTP on :8000
  and its admin API on :9000.
* Capacity. The machine has 2 cores, shared by the workers, the load
  generator, the operator, the API server and etcd, so the pod's capacity is
  defined as C = 1.2 cores of worker CPU (0.8 core left for everything
  else). The autoscaler targets 0.3 core per worker (`type: CPU`), so C is
  what 4 workers serve at the target; maxWorkers is 8 so that the autoscaler
  is free to overshoot (a cap equal to the ideal count would hide it).
* Load: open-loop (fixed arrival rate, independent of how fast the pod
  answers), each request a new connection (`Connection: close`), as many
  independent clients would: with a keep-alive pool, connections stay on the
  workers that accepted them and new workers get no traffic. Each request
  is GET /cpu/10, which keeps the worker's single thread busy for 10 ms, so
  r requests/s offer r x 0.01 cores. Phases: 20 % of C (24 req/s, ideal 1
  worker at 0.24 core), then a step to 90 % of C (108 req/s = 1.08 cores,
  ideal ceil(1.08 / 0.3) = 4 workers at 0.27 core, inside the operator's
  10 % tolerance band), held, then back to 20 %. One worker can use at most
  one core, so right after the step the pod is overloaded (1.08 offered,
  1.0 served) until a second worker is up. /cpu burns wall time, so under
  CPU contention a request burns a little less CPU than its 10 ms.
* Autoscaler spec (`spec` in the JSON): what a user who wants fast reaction
  would write: pollIntervalSeconds 1; scale-up as the operator's default
  (no stabilization, at most +4 workers or +100 % per 15 s); scale-down
  stabilization 30 s (the default 120 s would not fit a 5-minute
  benchmark), at most -50 % per 15 s.
* Sampling: GET /workers on the manager every 100 ms (desired, ready,
  running, the manager's `cpu_utilisation` = mean CPU per non-draining
  worker over its last ~2 s, which is what the operator acts on), plus each
  worker's CPU read directly from /proc/<pid>/stat (a 1 s figure, to show
  the lag of the manager's window), machine-wide CPU from /proc/stat, and
  the operator's /metrics every second (scale events, reconciliations).
  Afterwards the ScaledUp/ScaledDown Events are read from the API server.
* Figures (all relative to the load step or drop):
  - scale-up decision: the first time the manager's desired count rises
    after the step (sampled every 100 ms, so up to 0.1 s late); the
    operator's Event time is shown beside it. It includes the manager's
    CPU window (it needs the ~2 s mean to cross 1.1 x target) and up to one
    poll interval. Target printed in the issue: <= 2 s.
  - time to target utilisation: the first time after the step from which
    the manager's per-worker CPU stays at or below target x 1.1 for 10 s
    (or until the drop), and the same from the 1 s /proc figure.
  - overshoot: peak desired during high load minus the ideal count
    ceil(offered cores / target).
  - direction reversals: changes of direction of the desired count inside
    a phase whose load does not change (baseline, high, low); changes during
    the baseline are counted too. Ideally all are 0.
  - scale-down: time from the drop to the first decrease and to the ideal
    low count (bounded below by the 30 s stabilization window).

The Concurrency run (same cluster and operator, its own pod and autoscaler;
the CPU run's autoscaler is deleted first):
* Pod: `corral run --proxy --worker-concurrency 10 -- uvicorn --fd {fd}
  mysite.asgi:application` (tests/django_app, the bench venv's Uvicorn),
  1 to 8 workers as above. corral accepts and hands each request to the
  worker with the fewest in flight, at most 10 per worker (the rest wait
  in corral's queue).
* Load: the same open-loop generator on GET /delay/50, Django's async view
  that awaits 50 ms: a request holds a slot for 50 ms and almost no CPU, so
  r requests/s keep r x 0.05 requests in flight (Little's law) while the
  CPU stays low; a CPU metric would not see this load.
* Capacity: 8 requests in flight, what 4 workers hold at the target of 2
  (`{type: Concurrency, target: 2}`, the pod's `concurrency` in /workers:
  mean in flight per ready worker over corral's ~3 s window). Phases 20 %
  of it (32 req/s, 1.6 in flight, ideal 1 worker) and 80 % (128 req/s, 6.4
  in flight, ideal ceil(6.4 / 2) = 4). 80 %, not the CPU run's 90 %:
  a request is in flight a few ms over its 50 ms (Django, Uvicorn, the
  proxy), and 90 % (7.2) would put the ideal on the edge of 4 and 5.
* Its target (issue 11): the desired count reaches the ideal during high
  load. The same figures as the CPU run, with the signal in requests in
  flight, the per-worker `in_flight` of /workers as the 1 s figure, and
  the CPU per worker beside it (what a CPU metric would have seen).

Contention: /cpu/{ms} burns wall-clock time, so when other processes compete
for the 2 cores a request burns less CPU than 10 ms, the pod uses less than
the offered cores and the autoscaler (rightly, by what it measures) settles
below the ideal count. The JSON and the table show the machine's CPU busy
fraction and the count the measured pod CPU calls for; compare runs only on
a quiet machine.

--smoke is the same code path in <= 45 s on a quiet machine (the API
server's start is a quarter of it): per run 2 s baseline, 7 s high, 3 s
low, and a 1 s scale-down window, so it may or may not see a scale-down.

Needs a release build, etcd (Debian's etcd-server) and the cached
kube-apiserver (.ci/kube-apiserver.sh builds it), kubectl (.ci/k8s-tools.sh).
Traffic stays on 127.0.0.0/8.
"""

import argparse
import asyncio
import dataclasses
import datetime
import http.client
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from stacks import APPS, DJANGO_DIR, app_env, cpu_seconds, free_port, proxy_unsupported

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NS = "corral-bench"
TOKEN = "bench-admin-token-" + "".join(random.choice("0123456789abcdef") for _ in range(24))
HTTP_PORT = 8000
ADMIN_PORT = 9000

# The benchmark's definition of capacity and load (see the docstring).
CAPACITY_CORES = 1.2
CPU_TARGET = 0.3
MIN_WORKERS = 1
MAX_WORKERS = 8
REQUEST_MS = 10
LOW_FRACTION = 0.2
HIGH_FRACTION = 0.9
TOLERANCE = 0.1  # the operator's tolerance band (src/operator/decide.rs)
TARGET_DECISION_S = 2.0
# The Concurrency run: I/O-bound requests (Django's async /delay/50 behind
# corral --proxy), at most WORKER_CONCURRENCY in flight per worker.
DELAY_MS = 50
CONCURRENCY_TARGET = 2.0
CAPACITY_IN_FLIGHT = 8.0  # 4 workers at the target
WORKER_CONCURRENCY = 10


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One autoscaling run: what the pod serves, the metric, the load."""
    key: str  # names the pod and the autoscaler
    metric: str  # the WorkerAutoscaler metric type
    target: float
    cost: float  # per request, in the metric's unit x seconds (cores x s, or s in flight)
    capacity: float  # the pod's capacity in the metric's unit: ideal workers x target at 100 %
    path: str
    signal: str  # the /workers field the operator reads
    unit: str
    what: str  # the signal, in words
    high_fraction: float = HIGH_FRACTION

    @property
    def low_rps(self):
        return LOW_FRACTION * self.capacity / self.cost

    @property
    def high_rps(self):
        return self.high_fraction * self.capacity / self.cost


CPU_RUN = Scenario("web", "CPU", CPU_TARGET, REQUEST_MS / 1000, CAPACITY_CORES, f"/cpu/{REQUEST_MS}",
                   "cpu_utilisation", "cores", "CPU per worker")
# 80 %, not 90 %: a request is in flight a few ms longer than its 50 ms
# (Django, Uvicorn, the proxy), so the offered 6.4 in flight leaves the
# ideal count at ceil(6.4 x overhead / 2) = 4 for up to 25 % overhead.
CONCURRENCY_RUN = Scenario("web-conc", "Concurrency", CONCURRENCY_TARGET, DELAY_MS / 1000, CAPACITY_IN_FLIGHT,
                           f"/delay/{DELAY_MS}", "concurrency", "requests", "requests in flight per worker",
                           high_fraction=0.8)

FULL = {"baseline": 30.0, "high": 90.0, "low": 90.0, "down_window": 30}
SMOKE = {"baseline": 2.0, "high": 7.0, "low": 3.0, "down_window": 1}

SAMPLE_EVERY = 0.1
SETTLE_HOLD = 10.0  # how long utilisation must stay at or under the band to count as reached
TIMELINE_EVERY = 0.5
MAX_INFLIGHT = 4000
REQUEST_TIMEOUT = 10.0


_START = time.monotonic()


def log(msg):
    print(f"autoscale: {time.monotonic() - _START:5.1f}s {msg}", file=sys.stderr, flush=True)


# The exit code when the CPU run succeeded (autoscale.json written) but the
# Concurrency run failed; bench/run.py reads the JSON and reports it.
EXIT_CONCURRENCY_FAILED = 3


class RunFailed(Exception):
    pass


class Stopped(BaseException):
    """A signal asked us to stop; not an Exception, so no retry loop eats it."""


def raise_on_termination():
    """Makes TERM and HUP (a caller's timeout) raise Stopped, so the
    `finally` blocks still stop the cluster and every child."""
    def terminate(signum, _frame):
        raise Stopped(f"stopped by signal {signum}")
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)


# --------------------------------------------------------------------------
# processes


class Procs:
    """Children started in their own session, ended by process group."""

    def __init__(self):
        self.children = []

    def start(self, argv, logfile, env=None, cwd=None):
        f = open(logfile, "wb")
        p = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        f.close()
        self.children.append(p)
        return p

    def stop(self, p, sig=signal.SIGTERM, wait=5.0):
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(wait)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(5)
        else:
            # the leader is gone; its group may not be
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def stop_all(self):
        for p in reversed(self.children):
            try:
                self.stop(p)
            except Exception as e:  # keep stopping the others
                log(f"stopping pid {p.pid}: {e}")


class Kube:
    """The throwaway API server of .ci/kube-up.sh and kubectl against it."""

    def __init__(self, workdir):
        self.dir = os.path.join(workdir, "kube")
        self.kubeconfig = None
        self.kubectl_bin = None
        self.started = False
        self.error = None
        # Set when up() returns. Not Thread.join: before Python 3.13 a join
        # interrupted by a signal's exception leaves the thread marked as
        # stopped, and a second join returns at once.
        self.done = threading.Event()

    def up(self):
        try:
            tools = subprocess.run(
                ["bash", os.path.join(ROOT, ".ci", "k8s-tools.sh")],
                capture_output=True, text=True, check=True, timeout=600,
            ).stdout.strip().splitlines()[-1]
            self.kubectl_bin = os.path.join(tools, "kubectl")
            self.started = True
            r = subprocess.run(
                ["bash", os.path.join(ROOT, ".ci", "kube-up.sh"), self.dir],
                capture_output=True, text=True, timeout=900,
            )
            if r.returncode != 0:
                raise RunFailed(f"kube-up.sh failed:\n{r.stderr[-2000:]}")
            self.kubeconfig = r.stdout.strip().splitlines()[-1]
        except Exception as e:
            self.error = e
        finally:
            self.done.set()

    def stop(self):
        if self.started and os.path.isdir(self.dir):
            subprocess.run(
                ["bash", os.path.join(ROOT, ".ci", "kube-up.sh"), "--stop", self.dir],
                capture_output=True, timeout=120,
            )

    def env(self):
        e = dict(os.environ)
        e["KUBECONFIG"] = self.kubeconfig
        return e

    def kubectl(self, *args, stdin=None, check=True, timeout=30):
        r = subprocess.run(
            [self.kubectl_bin, *args],
            input=stdin, capture_output=True, text=True, env=self.env(), timeout=timeout,
        )
        if check and r.returncode != 0:
            raise RunFailed(f"kubectl {' '.join(args)}: {r.stderr.strip()}")
        return r

    def create(self, obj):
        return self.kubectl("create", "-f", "-", stdin=json.dumps(obj))

    def get_json(self, *args):
        r = self.kubectl("get", *args, "-o", "json", check=False)
        if r.returncode != 0:
            return None
        return json.loads(r.stdout)

    def _env_file(self):
        with open(os.path.join(self.dir, "env")) as f:
            return dict(line.strip().split("=", 1) for line in f if "=" in line)

    def server_url(self):
        return f"https://127.0.0.1:{self._env_file()['KUBE_PORT']}"

    def admin_token(self):
        """The bearer token of kube-up.sh's admin user (system:masters)."""
        return self._env_file()["KUBE_TOKEN"]


# --------------------------------------------------------------------------
# small HTTP helpers (loopback only)


def http_get(host, port, path, timeout=2.0):
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def wait_until(what, limit, fn, every=0.1):
    """Polls fn until it returns a true value; fn raises RunFailed to give
    up at once (a process it waits on exited), anything else is retried."""
    deadline = time.monotonic() + limit
    last = None
    while time.monotonic() < deadline:
        try:
            v = fn()
            if v:
                return v
        except RunFailed:
            raise
        except Exception as e:  # keep polling until the deadline
            last = e
        time.sleep(every)
    raise RunFailed(f"timed out after {limit:.0f}s waiting for {what}" + (f" ({last})" if last else ""))


def pick_address():
    """A loopback address whose :8000 and :9000 are free (pod IPs are
    distinct, so the fixed ports of a pod are fine)."""
    for _ in range(50):
        ip = f"127.{random.randint(100, 250)}.{random.randint(0, 250)}.{random.randint(2, 250)}"
        socks = []
        try:
            for port in (HTTP_PORT, ADMIN_PORT):
                s = socket.socket()
                socks.append(s)
                s.bind((ip, port))
            return ip
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RunFailed("no free loopback address for the pod")


def proc_cpu_seconds(pid):
    """stacks.cpu_seconds, or None once the process is gone."""
    try:
        return cpu_seconds(pid)
    except (OSError, IndexError, ValueError):
        return None


def machine_cpu():
    """(busy, total) jiffies from /proc/stat."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    vals = [int(x) for x in parts]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    total = sum(vals[:8])
    return total - idle, total


def parse_metric(text, name):
    for line in text.splitlines():
        if line.startswith(name):
            try:
                return float(line[len(name):].strip().split()[0])
            except (ValueError, IndexError):
                return None
    return None


# --------------------------------------------------------------------------
# sampling


class Sampler(threading.Thread):
    def __init__(self, ip, operator_metrics, t0, signal="cpu_utilisation"):
        super().__init__(daemon=True)
        self.ip = ip
        self.signal = signal
        self.operator_metrics = operator_metrics
        self.t0 = t0
        self.samples = []
        self.operator = []
        self.errors = 0
        self.halt = threading.Event()

    def run(self):
        conn = None
        next_at = time.monotonic()
        next_op = next_at
        while not self.halt.is_set():
            now = time.monotonic()
            if now < next_at:
                time.sleep(next_at - now)
            next_at += SAMPLE_EVERY
            if next_at < time.monotonic():
                next_at = time.monotonic() + SAMPLE_EVERY
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.ip, ADMIN_PORT, timeout=2)
                conn.request("GET", "/workers")
                r = conn.getresponse()
                body = r.read()
                t = time.monotonic() - self.t0
                doc = json.loads(body)
            except Exception:
                self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                continue
            workers = []
            for w in doc.get("workers", []):
                workers.append((w["pid"], w["state"], proc_cpu_seconds(w["pid"]), w.get("in_flight")))
            busy, total = machine_cpu()
            queue = max((l.get("queue_length") or 0 for l in doc.get("listeners", [])), default=0)
            self.samples.append({
                "t": t,
                "desired": doc["desired"],
                "running": doc["running"],
                "ready": doc["ready"],
                "util_window": doc.get(self.signal),
                "cpu_window": doc["cpu_utilisation"],
                "queued": doc.get("queued"),
                "workers": workers,
                "queue": queue,
                "busy": busy,
                "total": total,
            })
            if time.monotonic() >= next_op:
                next_op += 1.0
                try:
                    status, text = http_get("127.0.0.1", self.operator_metrics, "/metrics")
                    text = text.decode()
                    self.operator.append({
                        "t": time.monotonic() - self.t0,
                        "up": parse_metric(text, 'corral_operator_scale_events_total{direction="up"}') or 0.0,
                        "down": parse_metric(text, 'corral_operator_scale_events_total{direction="down"}') or 0.0,
                        "ok": parse_metric(text, 'corral_operator_reconciliations_total{result="ok"}') or 0.0,
                        "error": parse_metric(text, 'corral_operator_reconciliations_total{result="error"}') or 0.0,
                    })
                except Exception:
                    pass
        if conn is not None:
            conn.close()


# --------------------------------------------------------------------------
# open-loop load


class Load(threading.Thread):
    """Requests at fixed times, each on a new connection, whatever the
    answers do. Runs at the low rate from its start; `phases()` fixes when
    the step up, the drop and the end come (seconds since t0)."""

    def __init__(self, host, port, path, low_rps, high_rps, t0):
        super().__init__(daemon=True)
        self.host, self.port, self.path = host, port, path
        self.low_rps, self.high_rps = low_rps, high_rps
        self.t0 = t0
        self.t_up = self.t_down = self.t_end = float("inf")
        self.abort = threading.Event()
        self.results = []  # (t_sched, latency_s or None, status or error name)
        self.dropped = 0
        self.error = None
        self.request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                        "Connection: close\r\n\r\n").encode()

    def phases(self, t_up, t_down, t_end):
        self.t_end, self.t_down, self.t_up = t_end, t_down, t_up

    def rate(self, t):
        return self.high_rps if self.t_up <= t < self.t_down else self.low_rps

    async def one(self, t_sched):
        start = time.monotonic()
        writer = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), REQUEST_TIMEOUT)
            writer.write(self.request)
            remaining = REQUEST_TIMEOUT - (time.monotonic() - start)
            data = await asyncio.wait_for(reader.read(), max(remaining, 0.001))
            status = int(data[9:12]) if data.startswith(b"HTTP/1.") else "bad response"
            self.results.append((t_sched, time.monotonic() - start, status))
        except asyncio.TimeoutError:
            self.results.append((t_sched, None, "timeout"))
        except (OSError, ValueError) as e:
            self.results.append((t_sched, None, type(e).__name__))
        finally:
            if writer is not None:
                writer.close()

    async def generate(self):
        tasks = set()
        at = 0.0
        while at < self.t_end and not self.abort.is_set():
            delay = self.t0 + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(min(delay, 0.5))
                continue  # re-read the phases, which may have been set meanwhile
            if len(tasks) >= MAX_INFLIGHT:
                self.dropped += 1
            else:
                task = asyncio.create_task(self.one(at))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            nxt = at + 1.0 / self.rate(at)
            for boundary in (self.t_up, self.t_down, self.t_end):
                if at < boundary < nxt:
                    nxt = boundary  # the step lands exactly on its time
            at = nxt
        if tasks:
            await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT + 2)

    def run(self):
        try:
            asyncio.run(self.generate())
        except Exception as e:
            self.error = e


# --------------------------------------------------------------------------
# the run


def autoscaler_spec(phases, sc=CPU_RUN):
    return {
        "selector": {"matchLabels": {"app": sc.key}},
        "adminPort": ADMIN_PORT,
        "tokenSecretRef": {"name": "web-corral", "key": "token"},
        "minWorkers": MIN_WORKERS,
        "maxWorkers": MAX_WORKERS,
        "metrics": [{"type": sc.metric, "target": sc.target}],
        "behavior": {
            "scaleUp": {
                "stabilizationWindowSeconds": 0,
                "selectPolicy": "Max",
                "policies": [
                    {"type": "Workers", "value": 4, "periodSeconds": 15},
                    {"type": "Percent", "value": 100, "periodSeconds": 15},
                ],
            },
            "scaleDown": {
                "stabilizationWindowSeconds": phases["down_window"],
                "selectPolicy": "Max",
                "policies": [{"type": "Percent", "value": 50, "periodSeconds": 15}],
            },
        },
        "pollIntervalSeconds": 1,
    }


def install_operator(kube):
    """Applies the CRD and the operator's RBAC as shipped; returns the
    operator's ServiceAccount (name, namespace), read from what was applied.
    Nothing runs the Deployment in it: there is no kubelet or
    controller-manager."""
    applied = json.loads(kube.kubectl(
        "apply", "-f", os.path.join(ROOT, "manifests", "crd.yaml"),
        "-f", os.path.join(ROOT, "manifests", "operator.yaml"), "-o", "json").stdout)
    items = applied.get("items", [applied])
    sa = next((i["metadata"] for i in items if i.get("kind") == "ServiceAccount"), None)
    if sa is None:
        raise RunFailed("manifests/operator.yaml has no ServiceAccount")
    return sa["name"], sa.get("namespace", "default")


def operator_kubeconfig(kube, workdir, sa):
    """A kubeconfig holding a token of the ServiceAccount `sa` (name, namespace)."""
    sa_name, sa_ns = sa
    # The API server looks the ServiceAccount up in a cache that lags its
    # creation by a moment.
    op_token = wait_until("a token for the operator's ServiceAccount", 30, lambda: kube.kubectl(
        "create", "token", sa_name, "-n", sa_ns, "--duration=2h",
        check=False).stdout.strip(), every=0.2)
    path = os.path.join(workdir, "operator.kubeconfig")
    with open(path, "w") as f:
        f.write(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: bench\n  cluster:\n"
            f"    server: {kube.server_url()}\n    insecure-skip-tls-verify: true\n"
            f"users:\n- name: {sa_name}\n  user:\n    token: {op_token}\n"
            f"contexts:\n- name: bench\n  context:\n    cluster: bench\n    user: {sa_name}\n"
            "current-context: bench\n")
    os.chmod(path, 0o600)
    return path


def start_operator(procs, corral, kube, workdir, sa, namespace, metrics_port):
    """`corral operator` as the ServiceAccount `sa`, watching `namespace`;
    returns its process once it leads. Its log is workdir/operator.log."""
    # The CRD's kind is served a moment after it is created; the operator's
    # watch would back off if started before.
    wait_until("the WorkerAutoscaler kind to be served", 30, lambda: kube.kubectl(
        "get", "workerautoscalers", "-n", namespace, check=False).returncode == 0, every=0.2)
    env = dict(os.environ, KUBECONFIG=operator_kubeconfig(kube, workdir, sa), CORRAL_LOG_LEVEL="info")
    operator = procs.start(
        [corral, "operator", "--metrics-bind", f"127.0.0.1:{metrics_port}", "--namespace", namespace,
         "--lease-namespace", sa[1], "--lease-name", "corral-bench",
         "--identity", "bench-operator"],
        os.path.join(workdir, "operator.log"), env=env,
    )

    def leading():
        if operator.poll() is not None:
            raise RunFailed(f"corral operator exited {operator.returncode}")
        status, body = http_get("127.0.0.1", metrics_port, "/readyz")
        return status == 200 and b"leader" in body
    wait_until("the operator to lead", 30, leading)
    return operator


def manager_argv(corral, sc, ip, token_file):
    """The pod's `corral run`: the built-in worker for the CPU run; for the
    Concurrency run, proxy mode before Uvicorn + Django (the venv's)."""
    argv = [corral, "run", "-w", str(MIN_WORKERS), "--min-workers", str(MIN_WORKERS),
            "--max-workers", str(MAX_WORKERS), "-b", f"{ip}:{HTTP_PORT}",
            "--admin-bind", f"{ip}:{ADMIN_PORT}", "--admin-token-file", token_file]
    if sc.metric != "Concurrency":
        return argv, None
    uvicorn = os.path.join(os.path.dirname(sys.executable), "uvicorn")
    if not os.access(uvicorn, os.X_OK):
        raise RunFailed(f"no uvicorn beside {sys.executable}: run this with the bench venv "
                        "(bench/run.py sets it up)")
    return argv[:2] + ["--proxy", "--worker-concurrency", str(WORKER_CONCURRENCY)] + argv[2:] + [
        "--", uvicorn, "--fd", "{fd}", "--no-access-log", APPS["django"]], app_env(os.path.dirname(uvicorn))


class Pod:
    """One pod of a run: its manager at a loopback address, the low load
    already flowing and /workers sampled, from start() on."""

    def __init__(self, procs, corral, workdir, sc, op_port):
        self.sc = sc
        self.ip = pick_address()
        token_file = os.path.join(workdir, "admin-token")
        with open(token_file, "w") as f:
            f.write(TOKEN)
        argv, env = manager_argv(corral, sc, self.ip, token_file)
        self.manager = procs.start(argv, os.path.join(workdir, f"manager-{sc.key}.log"), env=env,
                                   cwd=DJANGO_DIR if env else None)
        self.procs = procs

        def manager_ready():
            if self.manager.poll() is not None:
                raise RunFailed(f"corral run exited {self.manager.returncode} (log: {workdir}/manager-{sc.key}.log)")
            status, body = http_get(self.ip, ADMIN_PORT, "/workers")
            return status == 200 and json.loads(body)["ready"] >= 1
        wait_until(f"the {sc.metric} run's manager to serve", 60, manager_ready, every=0.05)
        log(f"{sc.metric} run: manager ready at {self.ip}")
        # The low load runs from now on, so the manager's window is steady
        # at the baseline by the time the measured part starts.
        self.t0 = time.monotonic()
        self.wall0 = time.time()
        self.self_cpu0 = time.process_time()
        self.sampler = Sampler(self.ip, op_port, self.t0, sc.signal)
        self.load = Load(self.ip, HTTP_PORT, sc.path, sc.low_rps, sc.high_rps, self.t0)
        self.load.start()
        self.sampler.start()

    def halt(self):
        self.load.abort.set()
        self.load.join(REQUEST_TIMEOUT + 5)
        self.sampler.halt.set()
        self.sampler.join(5)

    def stop(self):
        self.halt()
        self.procs.stop(self.manager)


def measure(kube, pod, phases, operator, args):
    """Creates the Pod object and its autoscaler, runs the measured phases
    on the pod's load and returns the analysis."""
    sc = pod.sc
    name = sc.key
    kube.create({"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": f"{name}-0", "namespace": NS, "labels": {"app": name}},
                 "spec": {"containers": [{"name": "app", "image": "corral:bench"}]}})
    kube.kubectl("patch", "pod", f"{name}-0", "-n", NS, "--subresource=status", "--type=merge", "-p",
                 json.dumps({"status": {
                     "phase": "Running", "podIP": pod.ip, "podIPs": [{"ip": pod.ip}],
                     "conditions": [{"type": "Ready", "status": "True"}]}}))
    spec = autoscaler_spec(phases, sc)
    kube.create({"apiVersion": "corral.dev/v1alpha1", "kind": "WorkerAutoscaler",
                 "metadata": {"name": name, "namespace": NS}, "spec": spec})

    def measured():
        wa = kube.get_json("workerautoscaler", name, "-n", NS) or {}
        st = wa.get("status") or {}
        conds = {c["type"]: c for c in st.get("conditions", [])}
        invalid = conds.get("InvalidSpec", {})
        if invalid.get("status") == "True":
            raise RunFailed(f"the operator rejects metric type {sc.metric}: InvalidSpec: {invalid.get('message')}")
        return st.get("pods") == 1 and conds.get("ScalingActive", {}).get("status") == "True"
    try:
        wait_until(f"the operator's first pass over the {sc.metric} run's pod", 30, measured, every=0.2)
    except RunFailed as e:
        if "rejects" in str(e):
            raise
        wa = kube.get_json("workerautoscaler", name, "-n", NS) or {}
        raise RunFailed(f"{e}; autoscaler status: {json.dumps(wa.get('status'))}")
    log(f"{sc.metric} run: autoscaler active; the measured part starts")

    # The measured part: baseline, step up, hold, drop, hold.
    load, sampler, t0 = pod.load, pod.sampler, pod.t0
    t_base = time.monotonic() - t0
    t_up = t_base + phases["baseline"]
    t_down = t_up + phases["high"]
    t_end = t_down + phases["low"]
    load.phases(t_up, t_down, t_end)
    load.join(t_end - t_base + REQUEST_TIMEOUT + 30)
    sampler.halt.set()
    sampler.join(10)
    if load.is_alive() or load.error is not None:
        raise RunFailed(f"the load generator failed: {load.error or 'did not finish'}")
    gen_cpu = time.process_time() - pod.self_cpu0
    elapsed = time.monotonic() - t0
    if pod.manager.poll() is not None:
        raise RunFailed(f"corral run exited {pod.manager.returncode} during the run")
    if operator.poll() is not None:
        raise RunFailed(f"corral operator exited {operator.returncode} during the run")
    if len(sampler.samples) < 10:
        raise RunFailed(f"only {len(sampler.samples)} samples of /workers")

    events = []
    evs = kube.get_json("events.v1.events.k8s.io", "-n", NS) or {"items": []}
    for e in evs.get("items", []):
        when = e.get("eventTime") or (e.get("series") or {}).get("lastObservedTime")
        if not when or e.get("reason") not in ("ScaledUp", "ScaledDown"):
            continue
        if (e.get("regarding") or {}).get("name", name) != name:
            continue  # the other run's autoscaler
        events.append({"t": parse_time(when) - pod.wall0, "reason": e["reason"],
                       "note": e.get("note"),
                       "count": (e.get("series") or {}).get("count", 1)})
    events.sort(key=lambda e: e["t"])
    wa = kube.get_json("workerautoscaler", name, "-n", NS) or {}

    # Report times from the start of the measured baseline.
    samples = [dict(x, t=x["t"] - t_base) for x in sampler.samples if x["t"] >= t_base - 1.5]
    operator_samples = [dict(x, t=x["t"] - t_base) for x in sampler.operator if x["t"] >= t_base]
    events = [dict(e, t=e["t"] - t_base) for e in events]
    load.results = [(r[0] - t_base,) + tuple(r[1:]) for r in load.results if r[0] >= t_base]
    result = analyse(
        phases=phases, spec=spec, samples=samples, operator=operator_samples,
        load=load, events=events, t_up=t_up - t_base, t_down=t_down - t_base,
        t_end=t_end - t_base,
        low_rps=sc.low_rps, high_rps=sc.high_rps, gen_cpu=gen_cpu, elapsed=elapsed, sc=sc,
    )
    result["smoke"] = bool(args.smoke)
    result["sampler_errors"] = sampler.errors
    result["autoscaler_status"] = wa.get("status")
    result["method"]["warmup_s"] = round(t_base, 2)
    return result


def run(args):
    phases = SMOKE if args.smoke else FULL
    corral = os.path.abspath(args.corral)
    if not os.access(corral, os.X_OK):
        raise RunFailed(f"{corral} is not an executable: cargo build --release first")
    workdir = tempfile.mkdtemp(prefix="corral-autoscale-")
    procs = Procs()
    kube = Kube(workdir)
    wall_start = time.monotonic()
    loadavg_before = os.getloadavg()
    ok = False
    pods = []
    # The API server takes ~6 s to come up: start the CPU run's pod meanwhile.
    kube_thread = threading.Thread(target=kube.up, daemon=True)
    try:
        kube_thread.start()
        op_port = free_port()
        pods.append(Pod(procs, corral, workdir, CPU_RUN, op_port))

        kube.done.wait(900)
        if kube.error is not None:
            raise RunFailed(f"API server: {kube.error}")
        if kube.kubeconfig is None:
            raise RunFailed("API server did not come up")
        log("API server ready")

        sa = install_operator(kube)
        # The namespace and the admin token Secret the autoscalers name; each
        # run then adds its Pod, whose status says Running and Ready at its
        # manager, and its autoscaler.
        kube.create({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "web-corral", "namespace": NS},
             "stringData": {"token": TOKEN}},
        ]})
        operator = start_operator(procs, corral, kube, workdir, sa, NS, op_port)
        log("operator leading")

        result = measure(kube, pods[0], phases, operator, args)
        pods[0].stop()
        # The CPU run's autoscaler goes, so the operator does not poll a
        # stopped pod through the second run.
        kube.kubectl("delete", "workerautoscaler", CPU_RUN.key, "-n", NS, check=False)

        why = proxy_unsupported(corral)
        if why:
            log(f"Concurrency run: not available: {why}")
            print(f"autoscale: Concurrency run: not available: {why}", flush=True)
            result["concurrency"] = {"not_available": why}
        else:
            try:
                pods.append(Pod(procs, corral, workdir, CONCURRENCY_RUN, op_port))
                result["concurrency"] = measure(kube, pods[-1], phases, operator, args)
            except RunFailed as e:
                log(f"Concurrency run failed: {e}")
                result["concurrency"] = {"error": str(e)}
        result["environment"] = environment(corral, kube, loadavg_before)
        result["wall_s"] = round(time.monotonic() - wall_start, 1)
        ok = "error" not in result["concurrency"]  # else the logs are kept
        return result
    finally:
        for pod in pods:
            pod.halt()
        procs.stop_all()
        # kube-up.sh detaches the daemons: let a start under way finish
        # (it gives up by itself after KUBE_UP_TIMEOUT), then stop them.
        if kube_thread.is_alive():
            kube.done.wait(200)
        kube.stop()
        if ok and not args.keep:
            subprocess.run(["rm", "-rf", workdir])
        else:
            log(f"logs kept in {workdir}")


def parse_time(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def environment(corral, kube, loadavg_before):
    def out(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
        except Exception:
            return None
    version = None
    try:
        version = json.loads(kube.kubectl("version", "-o", "json", check=False).stdout)[
            "serverVersion"]["gitVersion"]
    except Exception:
        pass
    return {
        "corral": out([corral, "--version"]),
        "commit": out(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]),
        "kube_apiserver": version,
        "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in loadavg_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
    }


# --------------------------------------------------------------------------
# analysis


def percentile(values, q):
    if not values:
        return None
    v = sorted(values)
    i = min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))
    return v[i]


def rnd(x, n=2):
    return None if x is None else round(x, n)


def analyse(*, phases, spec, samples, operator, load, events, t_up, t_down, t_end,
            low_rps, high_rps, gen_cpu, elapsed, sc=CPU_RUN):
    target = sc.target
    band_hi = target * (1 + TOLERANCE)
    cost = sc.cost
    is_cpu = sc.metric == "CPU"
    ideal_high = min(MAX_WORKERS, max(MIN_WORKERS, math.ceil(high_rps * cost / target - 1e-9)))
    ideal_low = min(MAX_WORKERS, max(MIN_WORKERS, math.ceil(low_rps * cost / target - 1e-9)))

    def offered(t):
        return high_rps if t_up <= t < t_down else (low_rps if 0 <= t < t_end else 0.0)

    # Per-sample 1 s CPU per worker from /proc, machine busy fraction; for
    # Concurrency, the requests in flight per worker right now (the
    # per-worker in_flight of /workers), averaged over the last second.
    for s in samples:
        active = [w for w in s["workers"] if w[1] != "draining"]
        flights = [w[3] for w in active if w[3] is not None]
        s["in_flight"] = sum(w[3] or 0 for w in s["workers"])
        s["in_flight_now"] = sum(flights) / len(active) if flights and active else None
    for i, s in enumerate(samples):
        j = i
        while j > 0 and s["t"] - samples[j - 1]["t"] <= 1.0 + 1e-6:
            j -= 1
        prev = samples[j] if j < i else None
        s["cpu_1s"] = None
        s["machine_busy"] = None
        if prev is not None and s["t"] - prev["t"] >= 0.5:
            dt = s["t"] - prev["t"]
            before = {w[0]: w[2] for w in prev["workers"] if w[2] is not None}
            cores = 0.0
            for w in s["workers"]:
                if w[2] is None:
                    continue
                cores += w[2] - before.get(w[0], 0.0)  # a new worker: all its CPU
            active = sum(1 for w in s["workers"] if w[1] != "draining") or 1
            s["pod_cores_1s"] = cores / dt
            s["cpu_1s"] = cores / dt / active
            if s["total"] > prev["total"]:
                s["machine_busy"] = (s["busy"] - prev["busy"]) / (s["total"] - prev["total"])
        if is_cpu:
            s["util_1s"] = s["cpu_1s"]
        else:
            now = [x["in_flight_now"] for x in samples[j:i + 1] if x["in_flight_now"] is not None]
            s["util_1s"] = sum(now) / len(now) if now else None

    # Desired-count changes.
    changes = []
    for a, b in zip(samples, samples[1:]):
        if b["desired"] != a["desired"]:
            changes.append({"t": round(b["t"], 2), "from": a["desired"], "to": b["desired"]})

    def first(pred, after, before=float("inf")):
        for s in samples:
            if after <= s["t"] < before and pred(s):
                return s["t"]
        return None

    def since(t, ref):
        return None if t is None else t - ref

    desired_at_up = max([s["desired"] for s in samples if s["t"] < t_up] or [MIN_WORKERS])
    up_change = next((c for c in changes if t_up <= c["t"] < t_down and c["to"] > c["from"]), None)
    scale_up_decision = since(up_change["t"], t_up) if up_change else None
    up_event = next((e for e in events if e["reason"] == "ScaledUp" and e["t"] >= t_up - 0.5), None)
    signal_over = first(lambda s: s["util_window"] is not None and s["util_window"] > band_hi, t_up, t_down)

    high = [s for s in samples if t_up <= s["t"] < t_down]
    peak = max((s["desired"] for s in high), default=None)
    settled = high[-1]["desired"] if high else None
    reach_desired = first(lambda s: s["desired"] >= ideal_high, t_up, t_down)
    reach_ready = first(lambda s: s["ready"] >= ideal_high, t_up, t_down)
    reach_settled = (first(lambda s: s["desired"] == settled, t_up, t_down)
                     if settled and settled != desired_at_up else None)

    def settle_time(key, hold=SETTLE_HOLD):
        """First t after the step from which samples[key] stays <= band_hi
        for `hold` seconds (or until the drop, if that comes sooner)."""
        pts = [(s["t"], s[key]) for s in high if s.get(key) is not None]
        for i, (t, v) in enumerate(pts):
            if v > band_hi:
                continue
            end = min(t + hold, t_down)
            if all(w <= band_hi for u, w in pts[i:] if u < end):
                return since(t, t_up)
        return None

    to_target_window = settle_time("util_window")
    to_target_1s = settle_time("util_1s")

    def reversals(lo, hi):
        dirs = [1 if c["to"] > c["from"] else -1 for c in changes if lo <= c["t"] < hi]
        return sum(1 for a, b in zip(dirs, dirs[1:]) if a != b), len(dirs)

    rev_high, moves_high = reversals(t_up, t_down)
    rev_low, moves_low = reversals(t_down, t_end + 5)
    _, moves_base = reversals(0, t_up)
    down_change = next((c for c in changes if c["t"] >= t_down and c["to"] < c["from"]), None)
    scale_down_first = since(down_change["t"], t_down) if down_change else None
    reach_low = first(lambda s: s["desired"] <= ideal_low, t_down)
    reach_low_ready = first(lambda s: s["ready"] <= ideal_low and s["running"] <= ideal_low, t_down)
    # samples after t_end are not taken; a scale-down after the run is unseen.

    # Requests.
    def req_stats(lo, hi):
        rs = [r for r in load.results if lo <= r[0] < hi]
        okl = [r[1] for r in rs if r[2] == 200]
        return {
            "sent": len(rs),
            "ok": len(okl),
            "failed": len(rs) - len(okl),
            "p50_ms": rnd(percentile(okl, 0.5) * 1000 if okl else None, 1),
            "p99_ms": rnd(percentile(okl, 0.99) * 1000 if okl else None, 1),
            "max_ms": rnd(max(okl) * 1000 if okl else None, 1),
        }
    req = {
        "baseline": req_stats(0, t_up),
        "high": req_stats(t_up, t_down),
        "low": req_stats(t_down, t_end),
        "dropped_over_inflight_cap": load.dropped,
    }
    errors = {}
    for r in load.results:
        if r[2] != 200:
            errors[str(r[2])] = errors.get(str(r[2]), 0) + 1
    req["errors"] = errors

    def mean_of(key, lo, hi):
        v = [s[key] for s in samples if lo <= s["t"] < hi and s.get(key) is not None]
        return sum(v) / len(v) if v else None

    ops = [o for o in operator]
    passes_per_s = None
    if len(ops) >= 2 and ops[-1]["t"] > ops[0]["t"]:
        passes_per_s = (ops[-1]["ok"] + ops[-1]["error"] - ops[0]["ok"] - ops[0]["error"]) / (
            ops[-1]["t"] - ops[0]["t"])

    # Timeline for the chart and the JSON.
    per_s = {}
    for t_s, lat, st in load.results:
        if st == 200:
            per_s.setdefault(int(t_s + lat), []).append(lat)
    full = []  # every sample, for the chart; the JSON keeps one per TIMELINE_EVERY
    timeline = []
    next_t = 0.0
    for s in samples:
        if s["t"] < 0:
            continue
        sec = int(s["t"])
        point = {
            "t": round(s["t"], 2),
            "desired": s["desired"],
            "ready": s["ready"],
            "running": s["running"],
            "cpu_per_worker_window": rnd(s["cpu_window"], 3),
            "cpu_per_worker_1s": rnd(s.get("cpu_1s"), 3),
            "pod_cores_1s": rnd(s.get("pod_cores_1s"), 3),
            "machine_busy": rnd(s.get("machine_busy"), 3),
            "listen_queue": s["queue"],
            "offered_rps": offered(s["t"]),
            "served_rps": len(per_s.get(sec - 1, [])) if sec >= 1 else None,
        }
        if not is_cpu:  # the signal the operator reads, and corral's queue
            point.update({"signal_window": rnd(s["util_window"], 3), "signal_1s": rnd(s.get("util_1s"), 3),
                          "in_flight": s["in_flight"], "queued": s.get("queued")})
        full.append(point)
        if s["t"] + 1e-9 >= next_t:
            next_t = s["t"] + TIMELINE_EVERY - 0.02
            timeline.append(full[-1])
    latency = []
    for sec in sorted(per_s):
        lats = per_s[sec]
        latency.append({"t": sec, "served": len(lats),
                        "p50_ms": round(percentile(lats, 0.5) * 1000, 1),
                        "p99_ms": round(percentile(lats, 0.99) * 1000, 1)})

    last30 = (max(t_up, t_down - 30), t_down)
    pod_cores_high = mean_of("pod_cores_1s", *last30)
    in_flight_high = mean_of("in_flight", *last30)
    cpu_high = mean_of("cpu_window", *last30)
    target_met = scale_up_decision is not None and scale_up_decision <= TARGET_DECISION_S
    clamp = lambda x: None if x is None else min(MAX_WORKERS, max(MIN_WORKERS, math.ceil(x - 1e-9)))
    sig = "CPU window" if is_cpu else "concurrency window"
    offered_what = "offered cores" if is_cpu else "offered requests in flight"
    rows = [
        {"metric": "scale-up decision after the step (desired rises at the manager)",
         "value": rnd(scale_up_decision), "unit": "s",
         "target": f"<= {TARGET_DECISION_S:g} s", "met": target_met},
        {"metric": "  same, from the operator's ScaledUp Event time",
         "value": rnd(since(up_event["t"], t_up) if up_event else None), "unit": "s"},
        {"metric": f"  of which: manager's {sig} crosses target x 1.1",
         "value": rnd(since(signal_over, t_up)), "unit": "s"},
        {"metric": "first scale-up step", "value":
         f"{up_change['from']} -> {up_change['to']}" if up_change else None, "unit": "workers"},
        {"metric": f"time to the ideal count ({ideal_high}) desired", "value": rnd(since(reach_desired, t_up)),
         "unit": "s"},
        {"metric": f"time to the ideal count ({ideal_high}) ready", "value": rnd(since(reach_ready, t_up)),
         "unit": "s"},
        {"metric": "time to the settled count (desired at the drop)", "value": rnd(since(reach_settled, t_up)),
         "unit": "s", "note": f"{settled} workers"},
        {"metric": f"time to target utilisation (manager's {sig} <= target x 1.1 for {SETTLE_HOLD:g} s)",
         "value": rnd(to_target_window), "unit": "s"},
        {"metric": f"time to target utilisation ({'1 s CPU from /proc' if is_cpu else '1 s of per-worker in_flight'}"
                   f" <= target x 1.1 for {SETTLE_HOLD:g} s)",
         "value": rnd(to_target_1s), "unit": "s"},
        {"metric": f"ideal workers at high load, ceil({offered_what} / target)", "value": ideal_high,
         "unit": "workers"},
        {"metric": "  same, from the pod CPU measured at high load, last 30 s",
         "value": clamp(None if pod_cores_high is None else pod_cores_high / target),
         "unit": "workers", "note": f"pod CPU {rnd(pod_cores_high, 3)} cores"} if is_cpu else
        {"metric": "  same, from the requests in flight measured at high load, last 30 s",
         "value": clamp(None if in_flight_high is None else in_flight_high / target),
         "unit": "workers", "note": f"{rnd(in_flight_high, 2)} in flight"},
        {"metric": "peak desired at high load", "value": peak, "unit": "workers"},
        {"metric": "settled desired at high load (at the drop)", "value": settled, "unit": "workers"},
        {"metric": "overshoot (peak - ideal)", "value": None if peak is None else max(0, peak - ideal_high),
         "unit": "workers"},
        {"metric": f"{sc.what} at high load, last 30 s (manager's window)",
         "value": rnd(mean_of("util_window", *last30), 3), "unit": sc.unit},
        *([] if is_cpu else [
            {"metric": "CPU per worker at high load, last 30 s (manager's window)", "value": rnd(cpu_high, 3),
             "unit": "cores", "note": "what a CPU metric would see: I/O-bound requests"},
            {"metric": "requests queued in corral at high load, most at once",
             "value": max((s.get("queued") or 0 for s in high), default=None), "unit": "requests",
             "note": f"--worker-concurrency {WORKER_CONCURRENCY}"},
        ]),
        {"metric": "desired-count changes during the baseline", "value": moves_base, "unit": "changes"},
        {"metric": "direction reversals during high load", "value": rev_high, "unit": "reversals",
         "note": f"{moves_high} changes"},
        {"metric": "direction reversals during low load after the drop", "value": rev_low, "unit": "reversals",
         "note": f"{moves_low} changes"},
        {"metric": "scale-down decision after the drop", "value": rnd(scale_down_first), "unit": "s",
         "note": f"stabilization window {phases['down_window']} s"},
        {"metric": f"time to ideal low count ({ideal_low}) after the drop",
         "value": rnd(since(reach_low, t_down)), "unit": "s"},
        {"metric": f"time to ideal low count ({ideal_low}) after the drop, others drained",
         "value": rnd(since(reach_low_ready, t_down)), "unit": "s"},
        {"metric": "requests failed / sent", "value":
         f"{sum(r['failed'] for r in (req['baseline'], req['high'], req['low']))} / "
         f"{sum(r['sent'] for r in (req['baseline'], req['high'], req['low']))}", "unit": "requests"},
        {"metric": "p99 latency at high load", "value": req["high"]["p99_ms"], "unit": "ms"},
        {"metric": "p99 latency at baseline", "value": req["baseline"]["p99_ms"], "unit": "ms"},
        {"metric": f"operator passes per second (pollIntervalSeconds {spec['pollIntervalSeconds']})",
         "value": rnd(passes_per_s),
         "unit": "1/s"},
        {"metric": "machine CPU busy at high load (2 cores = 1.0)",
         "value": rnd(mean_of("machine_busy", t_up, t_down), 3), "unit": "fraction"},
        {"metric": "load generator CPU", "value": rnd(gen_cpu / elapsed, 3), "unit": "cores"},
    ]
    if not is_cpu:
        # This run's target (issue 11): the ideal count is reached.
        rows[0] = {k: v for k, v in rows[0].items() if k not in ("target", "met")}
        for r in rows:
            if r["metric"].startswith("time to the ideal count") and r["metric"].endswith("desired"):
                r.update(target="reached at high load", met=reach_desired is not None)
        target_met = reach_desired is not None
    return {
        "scale_up_decision_s": rnd(scale_up_decision, 3),
        "target": f"scale-up decision <= {TARGET_DECISION_S:g} s" if is_cpu else
                  f"the ideal count ({ideal_high}) reached at high load",
        "target_s": TARGET_DECISION_S if is_cpu else None,
        "target_met": target_met,
        "rows": rows,
        "spec": spec,
        "reached_ideal": reach_desired is not None,
        "summary": {
            "metric": sc.metric,
            "scale_up_decision_s": rnd(scale_up_decision, 3),
            "ideal_high": ideal_high,
            "reach_ideal_desired_s": rnd(since(reach_desired, t_up)),
            "reach_ideal_ready_s": rnd(since(reach_ready, t_up)),
            "peak_desired": peak,
            "settled_desired": settled,
            "failed": sum(r["failed"] for r in (req["baseline"], req["high"], req["low"])),
            "sent": sum(r["sent"] for r in (req["baseline"], req["high"], req["low"])),
            "p99_high_ms": req["high"]["p99_ms"],
            "scale_down_decision_s": rnd(scale_down_first),
        },
        "method": {
            "metric": sc.metric,
            "target": sc.target,
            "signal": sc.signal,
            "signal_unit": sc.unit,
            "capacity": sc.capacity,
            **({"capacity_cores": CAPACITY_CORES, "cpu_target": CPU_TARGET} if is_cpu else
               {"capacity_in_flight": CAPACITY_IN_FLIGHT, "worker_concurrency": WORKER_CONCURRENCY,
                "stack": "corral run --proxy -- uvicorn --fd {fd} mysite.asgi:application"}),
            "tolerance": TOLERANCE,
            "request": f"GET {sc.path}, new connection each, open loop",
            "low_rps": low_rps,
            "high_rps": high_rps,
            "low_fraction": LOW_FRACTION,
            "high_fraction": sc.high_fraction,
            "phases_s": {"baseline": phases["baseline"], "high": phases["high"], "low": phases["low"]},
            "step_up_at_s": t_up,
            "step_down_at_s": t_down,
            "end_s": t_end,
            "ideal_high": ideal_high,
            "ideal_low": ideal_low,
            "desired_before_step": desired_at_up,
            "sample_every_s": SAMPLE_EVERY,
        },
        "changes": changes,
        "events": [dict(e, t=round(e["t"], 3)) for e in events],
        "requests": req,
        "operator_metrics": ops[-1] if ops else None,
        "latency_per_s": latency,
        "timeline": timeline,
        "_chart_timeline": full,
    }


# --------------------------------------------------------------------------
# output


def dump_json(result):
    """Indented, with one line per sample of the long series; the
    Concurrency run's result nested the same way under "concurrency"."""
    series = ("changes", "events", "timeline", "latency_per_s")
    head = json.dumps({k: v for k, v in result.items()
                       if k not in series and k != "concurrency" and not k.startswith("_")}, indent=1)
    parts = [head[:-2]]
    for k in series:
        if k not in result:
            continue
        lines = ",\n".join("  " + json.dumps(x, separators=(",", ":")) for x in result.get(k, []))
        parts.append(f',\n "{k}": [\n{lines}\n ]' if lines else f',\n "{k}": []')
    if "concurrency" in result:
        parts.append(',\n "concurrency": ' + dump_json(result["concurrency"]).rstrip())
    return "".join(parts) + "\n}\n"


def print_run(result, title):
    rows = result["rows"]
    width = max(len(r["metric"]) for r in rows)
    print(f"\n{title}")
    print(f"{'metric':<{width}}  value")
    print(f"{'-' * width}  {'-' * 16}")
    for r in rows:
        v = "n/a" if r["value"] is None else r["value"]
        extra = ""
        if "target" in r:
            extra = f"   target {r['target']}: {'met' if r['met'] else 'MISSED'}"
        if r.get("note"):
            extra += f"   ({r['note']})"
        print(f"{r['metric']:<{width}}  {v} {r['unit']}{extra}")


SUMMARY_ROWS = [
    ("scale_up_decision_s", "scale-up decision after the step", "s"),
    ("ideal_high", "ideal workers at high load", "workers"),
    ("reach_ideal_desired_s", "time to the ideal count desired", "s"),
    ("reach_ideal_ready_s", "time to the ideal count ready", "s"),
    ("peak_desired", "peak desired at high load", "workers"),
    ("settled_desired", "settled desired at the drop", "workers"),
    ("p99_high_ms", "p99 latency at high load", "ms"),
    ("scale_down_decision_s", "scale-down decision after the drop", "s"),
]


def side_by_side(result):
    """The CPU and the Concurrency run's key figures, as rows of cells."""
    conc = result.get("concurrency", {})
    cs = conc.get("summary")
    # The reason is printed once, above the table.
    other = "not available" if "not_available" in conc else "FAILED TO RUN" if "error" in conc else "-"
    out = []
    for key, label, unit in SUMMARY_ROWS:
        out.append((f"{label} ({unit})", result["summary"].get(key), cs.get(key) if cs else other))
    out.append(("requests failed / sent", f"{result['summary']['failed']} / {result['summary']['sent']}",
                f"{cs['failed']} / {cs['sent']}" if cs else other))
    return out


def print_table(result):
    print_run(result, f"Autoscaling quality, CPU run ({'smoke' if result['smoke'] else 'full'} run, "
                      f"{result['wall_s']} s wall in all)")
    conc = result.get("concurrency", {})
    if "rows" in conc:
        print_run(conc, "Autoscaling quality, Concurrency run (corral --proxy, I/O-bound requests)")
    elif "not_available" in conc:
        print(f"\nConcurrency run: not available: {conc['not_available']}")
    elif "error" in conc:
        print(f"\nConcurrency run: FAILED TO RUN: {conc['error']}")
    print("\nSide by side                            CPU run        Concurrency run")
    for label, a, b in side_by_side(result):
        print(f"{label:<40}{'n/a' if a is None else a!s:<15}{'n/a' if b is None else b}")
    sys.stdout.flush()


def chart(result, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RunFailed(
            "matplotlib is not installed: run this with the bench venv (bench/requirements.txt)")
    m = result["method"]
    is_cpu = m.get("metric", "CPU") == "CPU"
    target = m.get("target", m.get("cpu_target"))
    tl = result.get("_chart_timeline") or result["timeline"]
    t = [s["t"] for s in tl]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 8.5), sharex=True,
                                        gridspec_kw={"height_ratios": [3, 3, 2]})
    for ax in (ax1, ax2, ax3):
        ax.axvspan(m["step_up_at_s"], m["step_down_at_s"], color="tab:orange", alpha=0.08)
        ax.axvline(m["step_up_at_s"], color="tab:orange", lw=1, ls="--")
        ax.axvline(m["step_down_at_s"], color="tab:orange", lw=1, ls="--")
        ax.grid(alpha=0.3)
    ax1.step(t, [s["desired"] for s in tl], where="post", label="desired (operator)", lw=2)
    ax1.step(t, [s["ready"] for s in tl], where="post", label="ready workers", lw=1.5, ls="-.")
    edges = [0.0, m["step_up_at_s"], m["step_down_at_s"], m["end_s"]]
    ax1.step(edges, [m["ideal_low"], m["ideal_high"], m["ideal_low"], m["ideal_low"]], where="post",
             color="grey", ls=":", label="ideal ceil(offered / target)")
    ax1.set_ylabel("workers")
    ax1.set_ylim(0, MAX_WORKERS + 0.5)
    d = result["scale_up_decision_s"]
    if is_cpu:
        what = (f"CPU target {target} core/worker, load step {m['low_fraction']:.0%} -> {m['high_fraction']:.0%} "
                f"of {m['capacity_cores']} cores")
    else:
        what = (f"Concurrency target {target:g} in flight per worker (--proxy, --worker-concurrency "
                f"{m['worker_concurrency']}),\n{m['request'].split(',')[0]}, load step {m['low_fraction']:.0%} -> "
                f"{m['high_fraction']:.0%} of {m['capacity_in_flight']:g} in flight")
    ax1.set_title(f"corral operator, {what}; scale-up decision {'n/a' if d is None else f'{d:.2f} s'}",
                  fontsize=10)
    ax1.legend(loc="upper right", fontsize=8)
    if is_cpu:
        ax2.plot(t, [s["cpu_per_worker_window"] for s in tl], label="CPU per worker, manager's ~2 s window")
        ax2.plot(t, [s["cpu_per_worker_1s"] for s in tl], lw=0.8, alpha=0.7, label="CPU per worker, 1 s (/proc)")
        ax2.set_ylabel("cores per worker")
        ax2.set_ylim(0, 1.1)
    else:
        window = [s.get("signal_window") for s in tl]
        one_s = [s.get("signal_1s") for s in tl]
        ax2.plot(t, window, label="in flight per worker, manager's window (concurrency)")
        ax2.plot(t, one_s, lw=0.8, alpha=0.7, label="in flight per worker, 1 s (in_flight)")
        ax2.plot(t, [s["cpu_per_worker_window"] for s in tl], lw=0.8, color="tab:grey",
                 label="CPU per worker (cores), manager's window")
        ax2.set_ylabel("requests in flight per worker")
        ax2.set_ylim(0, max([target * 2.5] + [w * 1.1 for w in window + one_s if w is not None]))
    ax2.axhline(target, color="black", lw=1, label="target")
    ax2.axhspan(target * (1 - m["tolerance"]), target * (1 + m["tolerance"]),
                color="green", alpha=0.12, label="tolerance band")
    ax2.legend(loc="upper right", fontsize=8)
    ax3.step(edges, [m["low_rps"], m["high_rps"], m["low_rps"], m["low_rps"]], where="post",
             label="offered req/s")
    lat = [x for x in result["latency_per_s"] if x["t"] + 1 <= m["end_s"] + REQUEST_TIMEOUT]
    ax3.plot([x["t"] + 0.5 for x in lat], [x["served"] for x in lat], lw=0.8, label="served req/s")
    ax3.set_ylabel("requests/s")
    ax3.set_xlabel("seconds since the measured baseline started (shaded: high load)")
    ax3.set_xlim(-0.5, m["end_s"] + 0.5)
    ax3b = ax3.twinx()
    ax3b.plot([x["t"] + 0.5 for x in lat], [x["p99_ms"] for x in lat], color="tab:red", lw=0.8, label="p99 latency")
    ax3b.set_ylabel("p99 ms")
    ax3b.set_yscale("log")
    h1, l1 = ax3.get_legend_handles_labels()
    h2, l2 = ax3b.get_legend_handles_labels()
    ax3.legend(h1 + h2, l1 + l2, loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "docs", "benchmarks"))
    ap.add_argument("--smoke", action="store_true", help="a tiny step per run in <= 45 s, every code path")
    ap.add_argument("--corral", default=os.path.join(ROOT, "target", "release", "corral"))
    ap.add_argument("--keep", action="store_true", help="keep the logs and cluster state directory")
    args = ap.parse_args()
    # Fail early, before a minute of benchmark, if the chart cannot be drawn.
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("autoscale: matplotlib is not installed: run this with the bench venv "
              "(pip install -r bench/requirements.txt)", file=sys.stderr)
        return 2
    raise_on_termination()
    try:
        result = run(args)
        os.makedirs(args.out_dir, exist_ok=True)
        with open(os.path.join(args.out_dir, "autoscale.json"), "w") as f:
            f.write(dump_json(result))
        chart(result, os.path.join(args.out_dir, "autoscale.png"))
        conc_png = os.path.join(args.out_dir, "autoscale-concurrency.png")
        if "rows" in result["concurrency"]:
            chart(result["concurrency"], conc_png)
        elif os.path.exists(conc_png):
            os.remove(conc_png)  # not an old run's chart beside this run's JSON
    except (RunFailed, Stopped) as e:
        print(f"autoscale: run failed: {e}", file=sys.stderr)
        return 1
    print_table(result)
    wrote = ["autoscale.json", "autoscale.png"] + (["autoscale-concurrency.png"] if "rows" in result["concurrency"] else [])
    print(f"\nwrote {', '.join(os.path.join(args.out_dir, w) for w in wrote)}")
    if "error" in result["concurrency"]:
        # The CPU run's results are written; the exit code still says a run failed.
        print(f"autoscale: the Concurrency run failed: {result['concurrency']['error']}", file=sys.stderr)
        return EXIT_CONCURRENCY_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
