#!/usr/bin/env python3
"""The operator at scale: CPU and memory of `corral operator` reconciling
one WorkerAutoscaler over 1,000 pods (issue 10, figure 7).

    python3 bench/operator_scale.py --corral target/release/corral [--pods 1000] [--smoke] [--out-dir DIR]

bench/run.py calls `run()`; alone, this prints the table and writes
OUT/operator_scale.json. Standard library only. Exits non-zero when the
run itself fails; a missed target is reported, not an error.

Method
------
* Cluster: the real etcd + kube-apiserver of bench/autoscale.py (its
  `Kube`), the CRD and the operator's least-privilege RBAC from
  `manifests/`, and `corral operator` as a real process with a token of its
  ServiceAccount, watching one namespace.
* Pods: N Pod objects (Running, Ready, podIP 127.1.x.y, set through the
  status subresource), created concurrently over HTTPS with the API
  server's admin token before the operator starts.
* Managers: one Python process (this file, `--serve-fake`) listens on the
  N loopback addresses, one port, and answers the admin API's contract:
  `GET /workers` the full WorkersDoc of `src/contract.rs`, `PUT /workers`
  with the bearer token the updated document, or 422 with the ErrorDoc
  beyond its limits. Each run first checks the fake against a real
  `corral run`: the key paths of both WorkersDocs and both 422 ErrorDocs
  must be equal, or the run fails. Each fake pod's `cpu_utilisation` is
  a load in cores (set by the benchmark for all pods at once) divided by
  its worker count, so a pod that got the workers it needs reports the
  target.
* Autoscaler: one WorkerAutoscaler selecting every pod, CPU target 0.5
  core per worker, 1-8 workers, scaling policies that never hold a change
  back, pollIntervalSeconds 5 (1 in --smoke).
* Passes: after a warm-up (the first pass over the pods and the next),
  measured passes alternate between a scaling pass (the load has just
  doubled or halved: every pod is PUT, 2 -> 4 or 4 -> 2 workers, with its
  ScaledUp or ScaledDown Event and a status write of N podStatus entries)
  and a steady one (every pod read, none changed). The end of a pass is
  when `corral_operator_reconciliations_total` rises (polled every 50 ms
  on the operator's /metrics from shortly before the pass is due); its
  start is sampled 0.5 s (0.2 s in --smoke) before it is due, i.e. before
  `pollIntervalSeconds` after the previous end: the fake server's request
  counts confirm that no request of the pass came before that sample.
  CPU per pass is the operator's utime + stime (/proc/PID/stat) between
  the two samples, so it includes the ~0.5 s of idle before the pass and
  the /metrics polling; wall time per pass is the operator's own
  `corral_operator_reconcile_duration_seconds`. Peak RSS is VmHWM from
  /proc/PID/status at the end: start-up, the watch caches of N pods and
  every pass.
* Targets (issue 10): <= 1 s CPU per pass (judged on the largest measured
  pass) and <= 64 MiB peak RSS.

The fake server, the API server and etcd share the machine with the
operator; they cost wall time, not operator CPU. --smoke: 50 pods and one
measured (scaling) pass, every code path in about 15 s. Traffic stays on
127.0.0.0/8.
"""

import argparse
import asyncio
import concurrent.futures
import http.client
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from autoscale import (Kube, Procs, RunFailed, Stopped, http_get, install_operator, parse_metric,
                       proc_cpu_seconds, raise_on_termination, start_operator, wait_until)
from stacks import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NS = "corral-scale"
LABELS = {"app": "scale"}
SECRET = "scale-corral"
TOKEN = "bench-scale-token-" + os.urandom(12).hex()

FULL = {"pods": 1000, "passes": 6, "poll": 5}
SMOKE = {"pods": 50, "passes": 1, "poll": 1}
CPU_TARGET = 0.5  # cores per worker
BASE_WORKERS = 2
MIN_WORKERS, MAX_WORKERS = 1, 8
TARGET_CPU_S = 1.0
TARGET_RSS_MIB = 64.0
METRICS_EVERY = 0.05
CREATE_THREADS = 8
MIB = 1 << 20
BYPASSED = "Server cert bypassed"

_START = time.monotonic()


def log(msg):
    print(f"operator_scale: {time.monotonic() - _START:5.1f}s {msg}", file=sys.stderr, flush=True)


def pod_ips(n):
    """127.1.0.1, 127.1.0.2, ...: n loopback addresses, one per pod."""
    return [f"127.1.{i // 256}.{i % 256}" for i in range(1, n + 1)]


# --------------------------------------------------------------------------
# the fake admin API (one process, every pod's address)


class FakePod:
    """One pod's manager, as its admin API shows it."""

    def __init__(self, ip, port, t0):
        self.ip, self.port, self.t0 = ip, port, t0
        self.desired = BASE_WORKERS
        self.requested = None
        self.last_limited = None

    def exit_doc(self):
        return {"code": 0, "signal": None, "reason": "drained", "at": self.t0 - 10.0}

    def worker(self, slot, util):
        return {"id": slot, "pid": 100000 + slot, "state": "ready", "generation": 1,
                "started_at": self.t0, "restarts": 0, "cpu_seconds": 12.5, "cpu_utilisation": util,
                "rss_bytes": 50 * MIB, "status": "serving",
                "last_exit": self.exit_doc() if slot == 1 else None}

    def doc(self, load):
        util = load / self.desired
        return {
            "version": 1, "desired": self.desired, "configured": BASE_WORKERS, "requested": self.requested,
            "running": self.desired, "ready": self.desired, "shutting_down": False, "generation": 1,
            "limits": {"min": MIN_WORKERS, "max": MAX_WORKERS, "memory_cap": 20,
                       "memory_limit_bytes": 1024 * MIB, "memory_limit_source": "cgroup",
                       "per_worker_memory_bytes": 50 * MIB},
            "last_limited": self.last_limited,
            "cpu_utilisation": util,
            "workers": [self.worker(slot, util) for slot in range(1, self.desired + 1)],
            "recent_exits": [dict(id=1, pid=99999, generation=1, **self.exit_doc())],
            "listeners": [{"address": f"{self.ip}:8000", "queue_length": 0, "queue_max_window": 0,
                           "backlog": 2048}],
            "cgroup": {"cpu_quota_cores": 4.0, "memory_limit_bytes": 1024 * MIB,
                       "memory_usage_bytes": self.desired * 50 * MIB},
        }

    def scale(self, body, load):
        """PUT /workers with a parsed body: (status, answer)."""
        if not isinstance(body, dict) or set(body) != {"desired"}:
            return 422, {"error": "expected {\"desired\": <whole number or null>}"}
        n = body["desired"]
        if n is None:
            self.desired, self.requested = BASE_WORKERS, None
            return 200, self.doc(load)
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            return 422, {"error": "expected {\"desired\": <whole number or null>}"}
        for by, limit, refused in (("min_workers", MIN_WORKERS, n < MIN_WORKERS),
                                   ("max_workers", MAX_WORKERS, n > MAX_WORKERS)):
            if refused:
                self.last_limited = {"requested": n, "applied": self.desired, "by": by, "at": time.time()}
                name = "".join(w.capitalize() for w in by.split("_"))
                return 422, {"error": f"{n} workers refused by {name}: the limit is {limit}",
                             "limited_by": by, "limit": limit}
        self.desired, self.requested = n, n
        return 200, self.doc(load)


class FakeAdmin:
    """Every fake pod behind one asyncio loop, plus a control API on
    127.0.0.1 (GET /stats: requests served; PUT /load: cores per pod)."""

    def __init__(self, ips, port, token):
        t0 = time.time()
        self.pods = {ip: FakePod(ip, port, t0) for ip in ips}
        self.port, self.token = port, token
        self.load = BASE_WORKERS * CPU_TARGET
        self.stats = {"gets": 0, "puts": 0, "put_status": {}}

    def admin(self, ip, method, path, headers, body):
        pod = self.pods[ip]
        if path.rstrip("/") != "/workers":
            return 404, {"error": f"no route {path}"}
        if method == "GET":
            self.stats["gets"] += 1
            return 200, pod.doc(self.load)
        if method != "PUT":
            return 405, {"error": f"{method} is not allowed on /workers"}
        self.stats["puts"] += 1
        if headers.get("authorization") != f"Bearer {self.token}":
            status, answer = 401, {"error": "missing or wrong bearer token"}
        else:
            try:
                status, answer = pod.scale(json.loads(body or b"null"), self.load)
            except ValueError as e:
                status, answer = 400, {"error": f"body is not JSON: {e}"}
        codes = self.stats["put_status"]
        codes[str(status)] = codes.get(str(status), 0) + 1
        return status, answer

    def control(self, method, path, body):
        if method == "GET" and path == "/stats":
            return 200, self.stats
        if method == "PUT" and path == "/load":
            self.load = float(json.loads(body)["cores"])
            return 200, {"cores": self.load}
        return 404, {"error": f"no route {method} {path}"}

    async def handle(self, reader, writer):
        try:
            method, path, headers, body = await read_request(reader)
            ip = writer.get_extra_info("sockname")[0]
            if ip in self.pods:
                status, answer = self.admin(ip, method, path, headers, body)
            else:
                status, answer = self.control(method, path, body)
            writer.write(response(status, answer))
            await writer.drain()
        except (OSError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def serve(self, control_port):
        servers = [await asyncio.start_server(self.handle, ip, self.port, backlog=1024) for ip in self.pods]
        servers.append(await asyncio.start_server(self.handle, "127.0.0.1", control_port))
        print(f"serving {len(self.pods)} pods on :{self.port}, control on 127.0.0.1:{control_port}", flush=True)
        await asyncio.Event().wait()


async def read_request(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return method, target, headers, body


REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
           405: "Method Not Allowed", 422: "Unprocessable Entity"}


def response(status, answer):
    body = json.dumps(answer).encode()
    head = (f"HTTP/1.1 {status} {REASONS[status]}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode() + body


def serve_fake(args):
    with open(args.token_file) as f:
        token = f.read().strip()
    fake = FakeAdmin(pod_ips(args.pods), args.port, token)
    asyncio.run(fake.serve(args.control_port))


class FakeClient:
    """The benchmark's side of the fake server's control API."""

    def __init__(self, control_port):
        self.port = control_port

    def request(self, method, path, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body))
            r = conn.getresponse()
            return json.loads(r.read())
        finally:
            conn.close()

    def stats(self):
        return self.request("GET", "/stats")

    def set_load(self, cores):
        self.request("PUT", "/load", {"cores": cores})


def start_fake(procs, workdir, pods, port, token_file):
    control = free_port()
    proc = procs.start([sys.executable, os.path.abspath(__file__), "--serve-fake", "--pods", str(pods),
                        "--port", str(port), "--control-port", str(control), "--token-file", token_file],
                       os.path.join(workdir, "fake.log"))
    client = FakeClient(control)

    def up():
        if proc.poll() is not None:
            raise RunFailed(f"the fake admin server exited {proc.returncode}: see {workdir}/fake.log")
        return client.stats()
    wait_until("the fake admin server", 60, up, every=0.1)
    return client


# --------------------------------------------------------------------------
# the contract check: the fake against a real `corral run`


def key_paths(doc, prefix=""):
    """Every key path of a JSON value; list items merge under `[]`."""
    paths = set()
    if isinstance(doc, dict):
        for k, v in doc.items():
            paths.add(prefix + k)
            paths |= key_paths(v, prefix + k + ".")
    elif isinstance(doc, list):
        for v in doc:
            paths |= key_paths(v, prefix.rstrip(".") + "[].")
    return paths


def admin_call(ip, port, method, body=None, token=None):
    conn = http.client.HTTPConnection(ip, port, timeout=5)
    try:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        conn.request(method, "/workers", body=None if body is None else json.dumps(body), headers=headers)
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def full_documents(ip, port, token, settle):
    """(WorkersDoc, 422 ErrorDoc) with every optional part filled: a
    scale-down and back up (a recent exit, a reused slot's last_exit),
    then a request over --max-workers (last_limited, the 422)."""
    for n in (1, 2):
        status, _ = admin_call(ip, port, "PUT", {"desired": n}, token)
        if status != 200:
            raise RunFailed(f"PUT {n} to {ip}:{port} answered {status}")
        settle(n)
    status, error = admin_call(ip, port, "PUT", {"desired": MAX_WORKERS + 1}, token)
    if status != 422:
        raise RunFailed(f"PUT {MAX_WORKERS + 1} to {ip}:{port} answered {status}, not 422")
    return admin_call(ip, port, "GET")[1], error


def real_documents(procs, corral, workdir, token_file):
    ip, port = "127.0.0.1", free_port()
    manager = procs.start([corral, "run", "-w", str(BASE_WORKERS), "--max-workers", str(MAX_WORKERS),
                           "-b", f"127.0.0.1:{free_port()}", "--admin-bind", f"{ip}:{port}",
                           "--admin-token-file", token_file], os.path.join(workdir, "manager.log"))

    def settled(n):
        def check():
            if manager.poll() is not None:
                raise RunFailed(f"corral run exited {manager.returncode}")
            doc = admin_call(ip, port, "GET")[1]
            return doc["running"] == n and doc["ready"] == n
        wait_until(f"the real manager at {n} workers", 30, check, every=0.05)
    settled(BASE_WORKERS)
    try:
        return full_documents(ip, port, TOKEN, settled)
    finally:
        procs.stop(manager)


def check_contract(real, fake):
    """Fails the run unless both managers' documents have the same key paths."""
    for what, a, b in (("WorkersDoc", real[0], fake[0]), ("422 ErrorDoc", real[1], fake[1])):
        only_real, only_fake = key_paths(a) - key_paths(b), key_paths(b) - key_paths(a)
        if only_real or only_fake:
            raise RunFailed(f"the fake's {what} differs from corral run's: only in the real one "
                            f"{sorted(only_real)}, only in the fake {sorted(only_fake)}")
    return len(key_paths(real[0]))


# --------------------------------------------------------------------------
# the cluster's objects


class ApiServer:
    """HTTPS to the API server as its admin, one keep-alive connection per thread."""

    def __init__(self, kube):
        self.host_port = kube.server_url().removeprefix("https://")
        self.token = kube.admin_token()
        self.local = threading.local()
        self.tls = ssl.create_default_context()
        self.tls.check_hostname = False
        self.tls.verify_mode = ssl.CERT_NONE  # a throwaway self-signed server on loopback

    def request(self, method, path, body, content_type="application/json"):
        if getattr(self.local, "conn", None) is None:
            self.local.conn = http.client.HTTPSConnection(self.host_port, timeout=30, context=self.tls)
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


def create_ready_pod(api, name, ip):
    """A Pod, then its status Running and Ready at ip (there is no kubelet)."""
    base = f"/api/v1/namespaces/{NS}/pods"
    api.request("POST", base, {"apiVersion": "v1", "kind": "Pod",
                               "metadata": {"name": name, "namespace": NS, "labels": LABELS},
                               "spec": {"containers": [{"name": "app", "image": "corral:bench"}]}})
    api.request("PATCH", f"{base}/{name}/status", {"status": {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True"}]}}, "application/merge-patch+json")


def create_pods(kube, ips):
    api = ApiServer(kube)
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(CREATE_THREADS) as pool:
        for f in [pool.submit(create_ready_pod, api, f"scale-{i}", ip) for i, ip in enumerate(ips)]:
            f.result()
    return time.monotonic() - t0


def autoscaler_spec(port, poll):
    never_hold = [{"type": "Workers", "value": MAX_WORKERS, "periodSeconds": 1}]
    return {
        "selector": {"matchLabels": LABELS},
        "adminPort": port,
        "tokenSecretRef": {"name": SECRET, "key": "token"},
        "minWorkers": MIN_WORKERS,
        "maxWorkers": MAX_WORKERS,
        "metrics": [{"type": "CPU", "target": CPU_TARGET}],
        "behavior": {"scaleUp": {"stabilizationWindowSeconds": 0, "policies": never_hold},
                     "scaleDown": {"stabilizationWindowSeconds": 0, "policies": never_hold}},
        "pollIntervalSeconds": poll,
    }


# --------------------------------------------------------------------------
# measuring the operator


class OperatorProbe:
    """The operator process seen from outside: /proc and its /metrics."""

    def __init__(self, proc, metrics_port, log_path):
        self.proc, self.port, self.log_path = proc, metrics_port, log_path

    def metrics(self):
        if self.proc.poll() is not None:
            raise RunFailed(f"corral operator exited {self.proc.returncode}")
        _, body = http_get("127.0.0.1", self.port, "/metrics")
        text = body.decode()
        value = lambda name: parse_metric(text, name) or 0.0
        return {"passes": value('corral_operator_reconciliations_total{result="ok"}')
                + value('corral_operator_reconciliations_total{result="error"}'),
                "errors": value('corral_operator_reconciliations_total{result="error"}'),
                "duration_sum": value("corral_operator_reconcile_duration_seconds_sum"),
                "duration_count": value("corral_operator_reconcile_duration_seconds_count")}

    def cpu(self):
        return proc_cpu_seconds(self.proc.pid)

    def status_kib(self, field):
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

    def open_fds(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def tls_handshakes(self):
        """Connections it opened to the API server so far: with the bench's
        insecure-skip-tls-verify kubeconfig, kube logs one line per handshake."""
        with open(self.log_path, errors="replace") as f:
            return sum(1 for line in f if BYPASSED in line)

    def next_pass(self, after, limit):
        """Polls /metrics until the pass count exceeds `after["passes"]`."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            m = self.metrics()
            if m["passes"] > after["passes"]:
                return m
            time.sleep(METRICS_EVERY)
        raise RunFailed(f"no reconcile pass ended within {limit:.0f}s")


def warm_up(kube, probe, pods, poll):
    """Waits for the first pass over every pod, then for the end of the next
    one, so the measured passes start from a known pass end."""
    def first_pass():
        wa = kube.get_json("workerautoscaler", "scale", "-n", NS) or {}
        st = wa.get("status") or {}
        active = any(c["type"] == "ScalingActive" and c["status"] == "True" for c in st.get("conditions", []))
        return st.get("pods") == pods and active
    wait_until(f"the operator's first pass over {pods} pods", 120 + pods / 10, first_pass, every=0.5)
    return probe.next_pass(probe.metrics(), poll + 60)


def measure_pass(probe, fake, kind, load, prev, poll):
    """One pass: sets the load, samples CPU just before the pass is due and
    at its end. `prev` is the previous pass's end (metrics, stats, time)."""
    fake.set_load(load)
    due = prev["t"] + poll
    time.sleep(max(0.0, due - min(0.5, poll * 0.2) - time.monotonic()))
    cpu0, before, tls0 = probe.cpu(), fake.stats(), probe.tls_handshakes()
    m = probe.next_pass(prev["metrics"], poll + 60)
    cpu1, t1, after = probe.cpu(), time.monotonic(), fake.stats()
    tls = probe.tls_handshakes() - tls0
    count = m["duration_count"] - prev["metrics"]["duration_count"]
    codes = {k: v - prev["stats"]["put_status"].get(k, 0) for k, v in after["put_status"].items()}
    return {
        "kind": kind,
        "cpu_s": round(cpu1 - cpu0, 3),
        "wall_s": round((m["duration_sum"] - prev["metrics"]["duration_sum"]) / count, 3) if count else None,
        "passes_counted": int(m["passes"] - prev["metrics"]["passes"]),
        "gets": after["gets"] - before["gets"],
        "puts": after["puts"] - before["puts"],
        "put_status": {k: v for k, v in codes.items() if v},
        "api_connections": tls,
        "requests_before_sample": before["gets"] + before["puts"] - prev["stats"]["gets"] - prev["stats"]["puts"],
        "rss_mib": round(probe.status_kib("VmRSS") / 1024, 1),
        "open_fds": probe.open_fds(),
        "_end": {"metrics": m, "stats": after, "t": t1},
    }


def measure(kube, probe, fake, cfg):
    """The warm-up, then cfg["passes"] passes alternating scaling and steady."""
    end = {"metrics": warm_up(kube, probe, cfg["pods"], cfg["poll"]), "t": time.monotonic(),
           "stats": fake.stats()}
    log(f"warm-up done; measuring {cfg['passes']} pass(es)")
    passes, load = [], BASE_WORKERS * CPU_TARGET
    for k in range(cfg["passes"]):
        kind = "scaling" if k % 2 == 0 else "steady"
        if kind == "scaling":
            load = 2 * BASE_WORKERS * CPU_TARGET if k % 4 == 0 else BASE_WORKERS * CPU_TARGET
        p = measure_pass(probe, fake, kind, load, end, cfg["poll"])
        end = p.pop("_end")
        passes.append(p)
        log(f"pass {k + 1} ({kind}): {p['cpu_s']:.3f} s CPU, {p['wall_s']} s wall, "
            f"{p['gets']} GETs, {p['puts']} PUTs, RSS {p['rss_mib']} MiB")
    return passes


def operator_log(path, limit=5):
    """WARN and ERROR lines of the operator's log (the TLS bypass notes of
    the bench's kubeconfig aside): counts and the first few."""
    counts, examples = {"WARN": 0, "ERROR": 0}, []
    with open(path, errors="replace") as f:
        for line in f:
            if BYPASSED in line:
                continue
            level = next((lv for lv in counts if f" {lv} " in line or f'"{lv}"' in line), None)
            if level:
                counts[level] += 1
                if len(examples) < limit:
                    examples.append(line.strip()[:300])
    return {"warnings": counts["WARN"], "errors": counts["ERROR"], "examples": examples}


# --------------------------------------------------------------------------
# the run


def summarize(passes, hwm_kib, cfg, extra):
    cpu = [p["cpu_s"] for p in passes]
    by_kind = lambda kind, key: [p[key] for p in passes if p["kind"] == kind and p[key] is not None]
    med = lambda xs: round(statistics.median(xs), 3) if xs else None
    peak = round(hwm_kib / 1024, 1)
    cpu_max = max(cpu)
    rows = [
        {"metric": "CPU per pass, median", "value": med(cpu), "unit": "s"},
        {"metric": "CPU per pass, max", "value": cpu_max, "unit": "s",
         "target": f"<= {TARGET_CPU_S:g} s", "met": cpu_max <= TARGET_CPU_S},
        {"metric": "  scaling passes (every pod PUT), median", "value": med(by_kind("scaling", "cpu_s")), "unit": "s"},
        {"metric": "  steady passes (every pod read), median", "value": med(by_kind("steady", "cpu_s")), "unit": "s"},
        {"metric": "wall time per pass, scaling, median", "value": med(by_kind("scaling", "wall_s")), "unit": "s"},
        {"metric": "wall time per pass, steady, median", "value": med(by_kind("steady", "wall_s")), "unit": "s"},
        {"metric": "peak RSS (VmHWM)", "value": peak, "unit": "MiB",
         "target": f"<= {TARGET_RSS_MIB:g} MiB", "met": peak <= TARGET_RSS_MIB},
        {"metric": "RSS after the last pass", "value": passes[-1]["rss_mib"], "unit": "MiB"},
        {"metric": "open descriptors after a pass, max", "value": max(p["open_fds"] for p in passes), "unit": "fds"},
        {"metric": "API server connections opened in a pass, max",
         "value": max(p["api_connections"] for p in passes), "unit": "connections",
         "note": "TLS handshakes; kept open afterwards"},
        {"metric": "failed reconcile passes", "value": int(extra["metrics"]["errors"]), "unit": "passes"},
        {"metric": "operator log warnings / errors",
         "value": f"{extra['log']['warnings']} / {extra['log']['errors']}", "unit": "lines"},
    ]
    return {
        "pods": cfg["pods"], "measured_passes": len(passes), "poll_interval_s": cfg["poll"],
        "cpu_per_pass_median_s": med(cpu), "cpu_per_pass_max_s": cpu_max, "peak_rss_mib": peak,
        "targets": {"cpu_per_pass_s": TARGET_CPU_S, "peak_rss_mib": TARGET_RSS_MIB},
        "target_met": cpu_max <= TARGET_CPU_S and peak <= TARGET_RSS_MIB,
        "rows": rows, "passes": passes,
    }


def check_passes(passes, pods):
    """Each measured pass must be one whole pass that read every pod."""
    for i, p in enumerate(passes, 1):
        if p["gets"] != pods or p["passes_counted"] != 1 or p["requests_before_sample"]:
            raise RunFailed(f"measured pass {i} is not one clean pass: {json.dumps(p)}")
        if p["kind"] == "scaling" and p["put_status"] != {"200": pods}:
            raise RunFailed(f"scaling pass {i} did not change every pod: {p['put_status']}")


def setup(procs, kube, corral, workdir, cfg):
    """Everything up to a leading operator: returns (fake client, probe, port)."""
    token_file = os.path.join(workdir, "admin-token")
    with open(token_file, "w") as f:
        f.write(TOKEN)
    port = free_port()
    fake = start_fake(procs, workdir, cfg["pods"], port, token_file)
    keys = check_contract(real_documents(procs, corral, workdir, token_file),
                          full_documents(pod_ips(1)[0], port, TOKEN, lambda n: None))
    log(f"fake admin API on {cfg['pods']} addresses, :{port}; contract check passed ({keys} key paths)")
    kube.done.wait(900)
    if kube.error is not None or kube.kubeconfig is None:
        raise RunFailed(f"API server: {kube.error or 'did not come up'}")
    sa = install_operator(kube)
    kube.create({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET, "namespace": NS},
         "stringData": {"token": TOKEN}}]})
    took = create_pods(kube, pod_ips(cfg["pods"]))
    log(f"{cfg['pods']} pods Running and Ready in {took:.1f}s")
    metrics_port = free_port()
    operator = start_operator(procs, corral, kube, workdir, sa, NS, metrics_port)
    return fake, OperatorProbe(operator, metrics_port, os.path.join(workdir, "operator.log")), port


def run(corral, out_dir=None, smoke=False, pods=None, keep=False):
    """The whole figure; returns its result (and writes OUT/operator_scale.json)."""
    cfg = dict(SMOKE if smoke else FULL)
    cfg["pods"] = pods or cfg["pods"]
    corral = os.path.abspath(corral)
    if not os.access(corral, os.X_OK):
        raise RunFailed(f"{corral} is not an executable")
    if os.environ.get("CORRAL_KUBE_APISERVER"):
        os.environ.setdefault("KUBE_APISERVER", os.environ["CORRAL_KUBE_APISERVER"])
    workdir = tempfile.mkdtemp(prefix="corral-operator-scale-")
    procs, kube = Procs(), Kube(workdir)
    kube_thread = threading.Thread(target=kube.up, daemon=True)
    t0, ok = time.monotonic(), False
    try:
        kube_thread.start()
        fake, probe, port = setup(procs, kube, corral, workdir, cfg)
        spec = autoscaler_spec(port, cfg["poll"])
        kube.create({"apiVersion": "corral.dev/v1alpha1", "kind": "WorkerAutoscaler",
                     "metadata": {"name": "scale", "namespace": NS}, "spec": spec})
        passes = measure(kube, probe, fake, cfg)
        check_passes(passes, cfg["pods"])
        extra = {"metrics": probe.metrics(), "log": operator_log(os.path.join(workdir, "operator.log"))}
        result = summarize(passes, probe.status_kib("VmHWM"), cfg, extra)
        result.update(smoke=smoke, operator_log=extra["log"], spec=spec,
                      corral=subprocess.run([corral, "--version"], capture_output=True, text=True).stdout.strip(),
                      binary=corral, wall_s=round(time.monotonic() - t0, 1))
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
            with open(os.path.join(out_dir, "operator_scale.json"), "w") as f:
                json.dump(result, f, indent=1)
        ok = True
        return result
    finally:
        procs.stop_all()
        if kube_thread.is_alive():
            kube.done.wait(200)
        kube.stop()
        if ok and not keep:
            subprocess.run(["rm", "-rf", workdir])
        else:
            log(f"logs kept in {workdir}")


def print_table(result):
    rows = result["rows"]
    width = max(len(r["metric"]) for r in rows)
    print(f"\nThe operator at {result['pods']} pods ({'smoke' if result['smoke'] else 'full'} run, "
          f"{result['measured_passes']} measured passes, {result['wall_s']} s wall, {result['binary']})")
    for r in rows:
        verdict = f"   target {r['target']}: {'met' if r['met'] else 'MISSED'}" if "target" in r else ""
        print(f"{r['metric']:<{width}}  {'n/a' if r['value'] is None else r['value']} {r['unit']}{verdict}")
    print("\npass  kind     CPU s  wall s  GETs  PUTs  RSS MiB  API conns")
    for i, p in enumerate(result["passes"], 1):
        print(f"{i:>4}  {p['kind']:<7} {p['cpu_s']:>6.3f} {p['wall_s'] or 0:>7.3f} {p['gets']:>5} {p['puts']:>5} "
              f"{p['rss_mib']:>8} {p['api_connections']:>10}")
    for line in result["operator_log"]["examples"]:
        print(f"operator log: {line}")
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corral", default=os.path.join(ROOT, "target", "release", "corral"))
    ap.add_argument("--pods", type=int, help=f"pods to create (default {FULL['pods']}, {SMOKE['pods']} with --smoke)")
    ap.add_argument("--smoke", action="store_true", help="50 pods, one measured pass: every code path")
    ap.add_argument("--out-dir", help="write operator_scale.json here")
    ap.add_argument("--keep", action="store_true", help="keep the logs and cluster state directory")
    ap.add_argument("--serve-fake", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--control-port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--token-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_fake:
        return serve_fake(args)
    if args.pods is not None and not 1 <= args.pods <= 65000:
        ap.error("--pods must be 1..65000")
    raise_on_termination()
    try:
        result = run(args.corral, args.out_dir, args.smoke, args.pods, args.keep)
    except (RunFailed, Stopped) as e:
        print(f"operator_scale: run failed: {e}", file=sys.stderr)
        return 1
    print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
