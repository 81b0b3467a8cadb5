"""Load and probes, all to 127.0.0.1.

- `wrk()`: throughput and latency from wrk (keep-alive, fixed connections,
  bounded duration), its output parsed; `mixed_script()` makes the Lua
  script of a mixed load (every n-th request to another path).
- `get()`: one HTTP/1.1 request on a fresh connection, with every way it
  can fail classified (refused, reset before any response byte, closed
  unanswered, timeout, partial answer, non-200 status).
- `ClosedLoop`: several clients, each sending one request per fresh
  connection until stopped; counts successes and failures by kind. A fresh
  connection per request is the fair measure for restarts: with keep-alive,
  a client that reuses a connection the server has just closed sees an
  error that HTTP clients retry, which says nothing about the server.
- `startup()`: from spawn to the listener accepting TCP (the manager's own
  start: every stack binds before it starts workers) and to the first 200.
- `NewPidWatch`: the moment a worker not seen before answers GET /pid.
"""

import os
import re
import socket
import subprocess
import threading
import time
from collections import Counter

WRK = "/usr/bin/wrk"


def get(addr, path, timeout=5.0):
    """(status, body, None) or (None, None, failure kind)."""
    s = socket.socket()
    s.settimeout(timeout)
    got = b""
    try:
        try:
            s.connect(addr)
        except ConnectionRefusedError:
            return None, None, "refused"
        except socket.timeout:
            return None, None, "connect timeout"
        except OSError as e:
            return None, None, f"connect error {e.errno}"
        try:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
                if complete(got):
                    break
        except socket.timeout:
            return None, None, "timeout" if not got else "timeout, partial answer"
        except (ConnectionResetError, BrokenPipeError):
            return None, None, "reset, unanswered" if not got else "reset, partial answer"
        except OSError as e:
            return None, None, f"error {e.errno}"
        if not got:
            return None, None, "closed, unanswered"
        if not complete(got):
            return None, None, "closed, partial answer"
        head, _, body = got.partition(b"\r\n\r\n")
        try:
            status = int(head.split(b" ", 2)[1])
        except (IndexError, ValueError):
            return None, None, "malformed answer"
        if re.search(rb"(?im)^transfer-encoding:\s*chunked", head):
            body = dechunk(body)
        return status, body, None
    finally:
        s.close()


def complete(data):
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    if m:
        return len(body) >= int(m.group(1))
    if re.search(rb"(?im)^transfer-encoding:\s*chunked", head):
        return body.endswith(b"0\r\n\r\n")
    return False  # until the server closes


def dechunk(body):
    out = b""
    while body:
        size, _, rest = body.partition(b"\r\n")
        n = int(size.split(b";")[0] or b"0", 16)
        if n == 0:
            break
        out += rest[:n]
        body = rest[n + 2:]
    return out


def outcome(result):
    status, _, failure = result
    if failure:
        return failure
    return "ok" if status == 200 else f"status {status}"


class ClosedLoop:
    """`clients` threads, each a request per fresh connection, until stop()."""

    def __init__(self, addr, path, clients, limit):
        self.addr, self.path = addr, path
        self.counts = Counter()
        self.lock = threading.Lock()
        self.halt = threading.Event()
        self.deadline = time.monotonic() + limit
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def _run(self):
        local = Counter()
        last = time.monotonic()
        while not self.halt.is_set() and time.monotonic() < self.deadline:
            local[outcome(get(self.addr, self.path))] += 1
            if time.monotonic() - last > 0.1:
                with self.lock:
                    self.counts.update(local)
                local.clear()
                last = time.monotonic()
        with self.lock:
            self.counts.update(local)

    def ok(self):
        with self.lock:
            return self.counts["ok"]

    def wait_flowing(self, n=20, limit=10.0):
        start, deadline = self.ok(), time.monotonic() + limit
        while self.ok() < start + n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"load to {self.path} made no progress: {dict(self.counts)}")
            time.sleep(0.02)

    def stop(self):
        self.halt.set()
        for t in self.threads:
            t.join(timeout=15)
        return dict(self.counts)


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


def startup(addr, path, t0, pid, limit=60.0, alive=lambda: True):
    """Seconds from t0 to the manager's first child (its own start-up done),
    to the port accepting TCP, and to the first 200 on path."""
    deadline = t0 + limit
    spawned = []

    def watch_children():
        while time.monotonic() < deadline and alive():
            if has_child(pid):
                spawned.append(time.monotonic() - t0)
                return
            time.sleep(0.001)

    watcher = threading.Thread(target=watch_children, daemon=True)
    watcher.start()
    accepting = first = None
    while time.monotonic() < deadline and alive():
        try:
            with socket.create_connection(addr, timeout=1):
                accepting = time.monotonic() - t0
                break
        except OSError:
            time.sleep(0.002)
    # One request at a time, waiting in the listen queue for the first worker
    # to accept it, so the 200 is timed to the moment a worker serves.
    while accepting is not None and time.monotonic() < deadline and alive():
        status, _, _ = get(addr, path, timeout=max(0.1, deadline - time.monotonic()))
        if status == 200:
            first = time.monotonic() - t0
            break
        time.sleep(0.005)
    watcher.join(timeout=max(0.0, deadline - time.monotonic()))
    return (spawned[0] if spawned else None), accepting, first


class NewPidWatch:
    """Polls GET /pid from several clients, each waiting `interval` s after
    an answer; records when an unseen pid answers."""

    def __init__(self, addr, known, clients=4, limit=60.0, interval=0.0):
        self.addr, self.known = addr, set(known)
        self.interval = interval
        self.found = threading.Event()
        self.when, self.pid = None, None
        self.deadline = time.monotonic() + limit
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def _run(self):
        while not self.found.is_set() and time.monotonic() < self.deadline:
            status, body, _ = get(self.addr, "/pid", timeout=5)
            now = time.monotonic()
            if status != 200:
                time.sleep(0.002)
                continue
            try:
                pid = int(body.strip())
            except ValueError:
                continue
            if pid not in self.known:
                with self.lock:
                    if self.when is None:
                        self.when, self.pid = now, pid
                self.found.set()
            elif self.interval:
                time.sleep(self.interval)

    def wait(self):
        self.found.wait(max(0.0, self.deadline - time.monotonic()))
        for t in self.threads:
            t.join(timeout=6)
        return self.when


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * UNITS[m.group(2)] if m else None


def mixed_script(path, every, other):
    """wrk Lua: every `every`-th request (per wrk thread) goes to `other`,
    the rest to `path`; deterministic, so every stack gets the same mix."""
    return f"""local n, plain, odd = 0, nil, nil
request = function()
    if plain == nil then
        plain, odd = wrk.format(nil, "{path}"), wrk.format(nil, "{other}")
    end
    n = n + 1
    if n % {every} == 0 then return odd end
    return plain
end
"""


def wrk(addr, path, connections, threads, seconds, script=None):
    """Runs wrk (with a Lua script file, if given), returns requests/s,
    p50/p90/p99 ms, errors, requests."""
    url = f"http://{addr[0]}:{addr[1]}{path}"
    argv = [WRK, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "--latency"]
    argv += (["-s", script] if script else []) + [url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30).stdout
    res = {"rps": None, "p50_ms": None, "p90_ms": None, "p99_ms": None,
           "errors": 0, "non_2xx": 0, "requests": None}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        res["rps"] = float(m.group(1))
    for pct, key in (("50", "p50_ms"), ("90", "p90_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.M)
        if m:
            res[key] = ms(m.group(1))
    m = re.search(r"(\d+) requests in", out)
    if m:
        res["requests"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        res["errors"] = sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        res["non_2xx"] = int(m.group(1))
    if res["rps"] is None:
        raise RuntimeError(f"wrk gave no result: {out[-500:]}")
    return res
