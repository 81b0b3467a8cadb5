"""Load generators and probes, all to 127.0.0.0/8 and bounded in time."""

import asyncio
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections import Counter

from procs import RunFailed
from sampling import has_child, percentile

WRK = "/usr/bin/wrk"
H2LOAD = shutil.which("h2load") or "/usr/bin/h2load"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"

def get(addr, path, timeout=5.0, tls=None):
    """(status, body, None) or (None, None, failure kind); with `tls` (an SSLContext) to server name localhost."""
    s = socket.socket()
    s.settimeout(timeout)
    got = b""
    try:
        try:
            s.connect(addr)
            if tls is not None:
                s = tls.wrap_socket(s, server_hostname="localhost")
        except ConnectionRefusedError:
            return None, None, "refused"
        except socket.timeout:
            return None, None, "connect timeout"
        except ssl.SSLError as e:
            return None, None, f"TLS handshake failed: {e.reason or e}"
        except OSError as e:
            return None, None, f"connect error {e.errno}"
        try:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
            while not complete(got):
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        except socket.timeout:
            return None, None, "timeout" if not got else "timeout, partial answer"
        except (ConnectionResetError, BrokenPipeError):
            return None, None, "reset, unanswered" if not got else "reset, partial answer"
        except ssl.SSLError as e:
            if not complete(got):
                return None, None, f"TLS error {e.reason or e}"
        except OSError as e:
            return None, None, f"error {e.errno}"
        if not complete(got):
            return None, None, "closed, partial answer" if got else "closed, unanswered"
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

def start_threads(target, n):
    threads = [threading.Thread(target=target, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return threads

def outcome(result):
    status, _, failure = result
    if failure:
        return failure
    return "ok" if status == 200 else f"status {status}"

class ClosedLoop:
    """Threads each sending a request per fresh connection until stop(), counted by outcome: the fair measure
    for restarts (a reused keep-alive connection the server just closed fails in a way clients retry)."""

    def __init__(self, addr, path, clients, limit):
        self.addr, self.path, self.counts = addr, path, Counter()
        self.lock, self.halt, self.deadline = threading.Lock(), threading.Event(), time.monotonic() + limit
        self.threads = start_threads(self._run, clients)

    def _run(self):
        local, last = Counter(), time.monotonic()
        while not self.halt.is_set() and time.monotonic() < self.deadline:
            local[outcome(get(self.addr, self.path))] += 1
            if time.monotonic() - last > 0.1:
                with self.lock:
                    self.counts.update(local)
                local.clear()
                last = time.monotonic()
        with self.lock:
            self.counts.update(local)

    def wait_flowing(self, n=20, limit=10.0):
        start, deadline = self.counts["ok"], time.monotonic() + limit
        while self.counts["ok"] < start + n:
            if time.monotonic() > deadline:
                raise RunFailed(f"load to {self.path} made no progress: {dict(self.counts)}")
            time.sleep(0.02)

    def stop(self):
        self.halt.set()
        for t in self.threads:
            t.join(timeout=15)
        return dict(self.counts)

def startup(addr, path, t0, pid, limit=60.0, alive=lambda: True):
    """Seconds from t0 to the manager's first child (its own start-up done), to accepting, to the first 200."""
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
    """When a pid not in `known` first answers GET /pid, polled by `clients` threads."""

    def __init__(self, addr, known, clients=4, limit=60.0, interval=0.0):
        self.addr, self.known, self.interval, self.when = addr, set(known), interval, None
        self.found, self.lock, self.deadline = threading.Event(), threading.Lock(), time.monotonic() + limit
        self.threads = start_threads(self._run, clients)

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
                        self.when = now
                self.found.set()
            elif self.interval:
                time.sleep(self.interval)

    def wait(self):
        self.found.wait(max(0.0, self.deadline - time.monotonic()))
        for t in self.threads:
            t.join(timeout=6)
        return self.when

class OpenLoop(threading.Thread):
    """Requests at fixed times, each on a new connection, whatever the answers do, as many independent clients
    would; the low rate until `phases()` sets the step. `results`: (time scheduled, latency or None, status)."""

    TIMEOUT = 10.0  # per request
    MAX_IN_FLIGHT = 4000  # beyond, a request is counted as dropped, not sent

    def __init__(self, host, port, path, low_rps, high_rps, t0):
        super().__init__(daemon=True)
        self.host, self.port, self.low_rps, self.high_rps, self.t0 = host, port, low_rps, high_rps, t0
        self.t_up = self.t_down = self.t_end = float("inf")
        self.abort, self.results, self.dropped, self.error = threading.Event(), [], 0, None
        self.request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()

    def phases(self, t_up, t_down, t_end):
        self.t_end, self.t_down, self.t_up = t_end, t_down, t_up

    def rate(self, t):
        return self.high_rps if self.t_up <= t < self.t_down else self.low_rps

    async def one(self, t_sched):
        start, writer = time.monotonic(), None
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.TIMEOUT)
            writer.write(self.request)
            remaining = self.TIMEOUT - (time.monotonic() - start)
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
        tasks, at = set(), 0.0
        while at < self.t_end and not self.abort.is_set():
            delay = self.t0 + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(min(delay, 0.5))
                continue  # re-read the phases, which may have been set meanwhile
            if len(tasks) >= self.MAX_IN_FLIGHT:
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
            await asyncio.wait(tasks, timeout=self.TIMEOUT + 2)

    def run(self):
        try:
            asyncio.run(self.generate())
        except Exception as e:  # noqa: BLE001 - the run reports it
            self.error = e

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}
summed = lambda *counts: sum(int(x) for x in counts)

def ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * UNITS[m.group(2)] if m else None

def parse(out, res, fields):
    """res[key] = conv(*groups) for each (key, pattern, conv) found in out; a tuple of keys: conv(group) each."""
    for key, pattern, conv in fields:
        m = re.search(pattern, out, re.M)
        if m and isinstance(key, tuple):
            res.update(zip(key, map(conv, m.groups())))
        elif m:
            res[key] = conv(*m.groups())
    return res

def wrk(addr, path, connections, threads, seconds, script=None, cpus=None):
    argv = (["taskset", "-c", cpus] if cpus else []) + [WRK, f"-t{threads}", f"-c{connections}", f"-d{seconds}s",
                                                      "--timeout", "5s", "--latency"]
    argv += (["-s", script] if script else []) + [f"http://{addr[0]}:{addr[1]}{path}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30).stdout
    return wrk_result(out)

def wrk_result(out, pcts=(50, 90, 99)):
    """What `wrk --latency` printed, as numbers: rate, percentiles, errors."""
    res = parse(out, {"rps": None, **{f"p{pct}_ms": None for pct in pcts}, "errors": 0, "non_2xx": 0,
                      "requests": None}, [
        ("rps", r"Requests/sec:\s+([\d.]+)", float),
        *((f"p{pct}_ms", rf"^\s+{pct}(?:\.000)?%\s+(\S+)", ms) for pct in pcts),
        ("requests", r"(\d+) requests in", int),
        ("errors", r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", summed),
        ("non_2xx", r"Non-2xx or 3xx responses: (\d+)", int)])
    if res["rps"] is None:
        raise RunFailed(f"wrk gave no result: {out[-500:]}")
    return res

def tls_context(cafile, alpn):
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(alpn)
    return ctx

def tls_probe(addr, cafile, timeout=5.0):
    """One checked handshake offering h2 then http/1.1, as h2load and browsers do."""
    ctx = tls_context(cafile, ["h2", "http/1.1"])
    with socket.create_connection(addr, timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            return {"alpn": s.selected_alpn_protocol(), "version": s.version(), "cipher": s.cipher()[0]}

def h2load(url, clients, streams, threads, seconds):
    """h2load's rate, counts and negotiated TLS as it prints them; p50/p90/p99 ms from its --log-file."""
    with tempfile.NamedTemporaryFile("r", prefix="corral-bench-h2load-", suffix=".tsv") as log:
        run = subprocess.run([H2LOAD, "-c", str(clients), "-m", str(streams), "-t", str(threads), "-D", str(seconds),
                              "--log-file", log.name, url], capture_output=True, text=True, timeout=seconds + 60)
        rows = [line.split("\t") for line in log if line.strip()]
    out = run.stdout + run.stderr
    res = parse(out, dict.fromkeys(["rps", "p50_ms", "p90_ms", "p99_ms", "requests", "succeeded", "failed", "errored",
                                    "timeout", "non_2xx", "tls_protocol", "cipher", "server_temp_key",
                                    "application_protocol"]), [
        ("rps", r"finished in [\d.]+\w+, ([\d.]+) req/s", float),
        (("requests", "succeeded", "failed", "errored", "timeout"), r"requests: \d+ total, \d+ started, (\d+) done, "
                                                                    r"(\d+) succeeded, (\d+) failed, (\d+) errored, "
                                                                    r"(\d+) timeout", int),
        ("non_2xx", r"status codes: \d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", summed),
        *((key, rf"^{label}: (.+)$", str.strip) for key, label in (
            ("tls_protocol", "TLS Protocol"), ("cipher", "Cipher"), ("server_temp_key", "Server Temp Key"),
            ("application_protocol", "Application protocol")))])
    # Per request: start (us since the epoch), status, microseconds to the end of the response.
    lat = [int(r[2]) / 1000 for r in rows if len(r) >= 3 and r[2].strip().isdigit()]
    res.update(p50_ms=percentile(lat, 0.5), p90_ms=percentile(lat, 0.9), p99_ms=percentile(lat, 0.99), logged=len(lat))
    if res["rps"] is None or res["requests"] is None:
        raise RunFailed(f"h2load exited {run.returncode} with no result: {out.strip()[-500:]}")
    if res["application_protocol"] != "h2":
        raise RunFailed(f"h2load did not negotiate h2 (application protocol {res['application_protocol']}): "
                        f"{out.strip()[-300:]}")
    return res

def s_time(addr, processes, seconds):
    """Full handshakes per second of `processes` concurrent `openssl s_time -new`. s_time times itself in
    whole seconds (time(NULL)), so each one's own wall time, spawn to exit, is its divisor; a failed
    handshake ends it early without its summary, counted as an error."""
    # s_time loops until time(NULL) passes its start second + -time: from just after a boundary, -time N
    # lasts N + 1 s; -time is at least 1, so 1 s asked starts mid-second (1.5 s).
    opt = max(1, seconds - 1)
    start_at = min(0.5, opt + 1 - seconds) + 0.005
    time.sleep((start_at - time.time() % 1.0) % 1.0)
    argv = [OPENSSL, "s_time", "-connect", f"{addr[0]}:{addr[1]}", "-new", "-time", str(opt)]
    procs = [(time.monotonic(), subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                 stdin=subprocess.DEVNULL, text=True)) for _ in range(processes)]
    rate, total, reused, walls, errors = 0.0, 0, 0, [], []
    for t0, p in procs:
        try:
            out, err = p.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            errors.append("timed out")
        wall = time.monotonic() - t0
        m = re.search(r"^(\d+) connections in [\d.]+s;", out, re.M)
        # One mark per connection: '*' a new session ('t', '3' very old versions), 'r' a reused one.
        marks = "".join(line for line in out.splitlines() if line and set(line) <= set("*rt3"))
        n = int(m.group(1)) if m else len(marks)
        reused += marks.count("r")
        if p.returncode != 0 or not m:
            why = next((line for line in (err or out).strip().splitlines() if line.strip() != "ERROR"),
                       "no output")[:200]
            errors.append(f"s_time exited {p.returncode} after {n} connections: {why}")
        total += n
        walls.append(round(wall, 3))
        rate += n / wall if wall > 0 else 0
    return {"handshakes_per_s": rate, "handshakes": total, "processes": processes, "seconds": seconds,
            "walls_s": walls, "reused": reused, "errors": errors}
