"""Readings of the processes under test: /proc, the admin API and metrics, /workers through a run (figure
6), and the one percentile every figure uses."""

import http.client
import json
import math
import os
import threading
import time

def stat_fields(pid):
    """/proc/<pid>/stat after the command name: state, ppid, ... (field 3 on)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()

def cpu_seconds(pid):
    """User + system CPU time of one process (not its children)."""
    fields = stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

def cpu_or_none(pid):
    """cpu_seconds, or None once the process is gone."""
    try:
        return cpu_seconds(pid)
    except (OSError, IndexError, ValueError):
        return None

def status_kib(pid, field="VmRSS"):
    """A kB line of /proc/<pid>/status (VmRSS, VmHWM), 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith(field + ":")), 0)
    except OSError:
        return 0

def parent_of(pid):
    try:
        return int(stat_fields(pid)[1])
    except (OSError, IndexError, ValueError):
        return None

def children(ppid):
    """Pids of the live (non-zombie) children of ppid, helpers excluded."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            rest = stat_fields(entry)
            if int(rest[1]) != ppid or rest[0] in "ZX":
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"resource_tracker" in f.read():  # multiprocessing's helper, not a worker
                    continue
            out.append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    return sorted(out)

def has_child(pid):
    """Whether pid has a child yet (any of its threads may have spawned it)."""
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                if f.read().strip():
                    return True
    except OSError:
        pass
    return False

def machine_cpu():
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    total = sum(vals[:8])
    return total - idle, total

def percentile(values, q):
    """The nearest-rank q-quantile (0 < q <= 1) of values: one of them."""
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))]

def request(host, port, method, path, body=None, token=None, timeout=5.0):
    """(status, body bytes) of one request on a fresh connection, `body` as JSON, `token` as a bearer token."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()

def prometheus(text):
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out

class WorkersSampler(threading.Thread):
    """GET /workers every `every` s on one connection, with each worker's CPU and the machine's, and the
    operator's counters every second, until halt."""

    def __init__(self, ip, admin_port, operator_port, t0, signal, every=0.1):
        super().__init__(daemon=True)
        self.ip, self.admin_port, self.operator_port = ip, admin_port, operator_port
        self.t0, self.signal, self.every = t0, signal, every
        self.samples, self.operator = [], []
        self.errors = 0
        self.halt = threading.Event()

    def run(self):
        conn = None
        next_at = next_op = time.monotonic()
        while not self.halt.is_set():
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += self.every
            if next_at < time.monotonic():
                next_at = time.monotonic() + self.every
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.ip, self.admin_port, timeout=2)
                conn.request("GET", "/workers")
                doc = json.loads(conn.getresponse().read())
            except Exception:  # noqa: BLE001 - counted; the next sample reconnects
                self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                continue
            self.samples.append(self.sample(doc, time.monotonic() - self.t0))
            if time.monotonic() >= next_op:
                next_op += 1.0
                self.sample_operator()
        if conn is not None:
            conn.close()

    def sample(self, doc, t):
        busy, total = machine_cpu()
        return {
            "t": t, "desired": doc["desired"], "running": doc["running"], "ready": doc["ready"],
            "util_window": doc.get(self.signal), "cpu_window": doc["cpu_utilisation"], "queued": doc.get("queued"),
            "workers": [(w["pid"], w["state"], cpu_or_none(w["pid"]), w.get("in_flight"))
                        for w in doc.get("workers", [])],
            "queue": max((lst.get("queue_length") or 0 for lst in doc.get("listeners", [])), default=0),
            "busy": busy, "total": total}

    def sample_operator(self):
        try:
            m = operator_metrics(self.operator_port)
        except (OSError, http.client.HTTPException):
            return
        self.operator.append({"t": time.monotonic() - self.t0, **{k: m[k] for k in ("up", "down", "ok", "error")}})

def operator_metrics(port):
    """`corral operator`'s scale events, passes and reconcile durations from its /metrics."""
    m = prometheus(request("127.0.0.1", port, "GET", "/metrics", timeout=2)[1].decode())
    value = lambda name: m.get(f"corral_operator_{name}", 0.0)
    return {"up": value('scale_events_total{direction="up"}'), "down": value('scale_events_total{direction="down"}'),
            "ok": value('reconciliations_total{result="ok"}'), "error": value('reconciliations_total{result="error"}'),
            "duration_sum": value("reconcile_duration_seconds_sum"),
            "duration_count": value("reconcile_duration_seconds_count")}
