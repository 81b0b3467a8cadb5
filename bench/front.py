#!/usr/bin/env python3
"""Figure 10: the front alone. corral --proxy and nginx before the same backend (corral's built-in workers, so
the app costs little), each front pinned to CPU 0 and everything else (workers, wrk) to CPU 1: the front's CPU per
request and its requests per second on one core, 3 rounds in alternating order. Then corral's front on 1 and 2
threads with nothing pinned, and what N cores would give, computed from the per-core figure (labelled computed).
Then each front's CPU per request at a paced load, as Django's rates are (each request wakes the front on its own),
corral on 1 thread and on 2. Then the instructions each front executes per request, counted by valgrind's
callgrind (HTTP/1.1, and h2 for corral): counts that repeat run to run, where times do not. Last, each front's
resident memory per idle keep-alive connection, 5,000 of them each after one request.

    python3 bench/front.py [--corral target/release/corral] [--rounds 3] [--seconds 8] [--out-dir DIR] [--smoke]

Prints the table and writes OUT/front.json. Method: docs/benchmarks/front.md."""

import argparse
import glob
import json
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402
import procs  # noqa: E402
from sampling import children, stat_fields, status_kib  # noqa: E402
from stacks import free_port, nginx_binary, nginx_conf  # noqa: E402

FRONT_CPU, REST_CPU = "0", "1"
# The paced load: 8 connections, 100 requests per second each.
PACED_CLIENTS, PACED_RPS = 8, 100
CALLGRIND = ["valgrind", "--tool=callgrind"]

def user_system(pids):
    """User and system CPU seconds of `pids`, summed."""
    fields = [stat_fields(p) for p in pids]
    tick = os.sysconf("SC_CLK_TCK")
    return sum(int(f[11]) for f in fields) / tick, sum(int(f[12]) for f in fields) / tick

def pin(pid, cpu):
    for task in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(task), {int(cpu)})

def answering(port):
    return load.get(("127.0.0.1", port), "/")[0] == 200

# HTTP/2 by prior knowledge (RFC 9113 3.3), by hand: the preface, an empty SETTINGS, and GET / on stream 1 that
# ends it (HPACK: :method GET, :scheme http, :path / from the static table, :authority "x" as a literal).
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
H2_GET = b"\x00\x00\x06\x01\x05\x00\x00\x00\x01" + b"\x82\x86\x84\x01\x01x"
H2_SETTINGS_ACK = b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"

def h2_get(s):
    """One h2c GET / on the new connection `s`, its server's SETTINGS acknowledged: True once stream 1 has ended
    with a 200 (HPACK's indexed :status 200)."""
    s.sendall(H2_PREFACE + H2_GET)
    buf, ok = b"", False
    def fill(n):
        nonlocal buf
        while len(buf) < n:
            chunk = s.recv(65536)
            if not chunk:
                return False
            buf += chunk
        return True
    while fill(9):
        length, kind, flags = int.from_bytes(buf[:3], "big"), buf[3], buf[4]
        stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
        if not fill(9 + length):
            return False
        payload, buf = buf[9:9 + length], buf[9 + length:]
        if kind == 0x4 and not flags & 0x1:
            s.sendall(H2_SETTINGS_ACK)
        elif kind == 0x7:  # GOAWAY
            return False
        elif stream == 1 and kind == 0x1:
            ok = payload[:1] == b"\x88"
        if stream == 1 and kind in (0x0, 0x1) and flags & 0x1:
            return ok
    return False

def h2_answering(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            return h2_get(s)
    except OSError:
        return False

def nginx_front(run, workers, port, wrap=(), h2c=False):
    """nginx (1 worker process) before `corral run -w N` on a Unix socket: pids whose CPU is the front's. Under
    `wrap` (callgrind), nginx is one process: its master does the worker's job. With `h2c`, it serves HTTP/2 by
    prior knowledge only."""
    sock = os.path.join(run.dir, "backend.sock")
    backend = run.procs.start(["taskset", "-c", REST_CPU, run.corral, "run", "-w", str(workers), "-b",
                               f"unix:{sock}", "--socket-mode", "666", "--admin-bind", f"127.0.0.1:{free_port()}"],
                              os.path.join(run.dir, "backend.log"))
    procs.wait_until("the backend's socket", 30, lambda: os.path.exists(sock), proc=backend)
    prefix = os.path.join(run.dir, "nginx")
    os.makedirs(prefix, exist_ok=True)
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(nginx_conf(prefix, port, sock, 1, h2c=h2c))
    single = " master_process off;" if wrap else ""
    nginx = run.procs.start(["taskset", "-c", FRONT_CPU, *wrap, nginx_binary(), "-p", prefix, "-c", conf, "-g",
                             f"daemon off;{single}"], os.path.join(run.dir, "nginx.log"))
    procs.wait_until("nginx answering", 30, lambda: (h2_answering if h2c else answering)(port), proc=nginx)
    return [nginx.pid] + children(nginx.pid)

def corral_front(run, workers, port, threads, pinned=True, wrap=()):
    """corral run --proxy with the built-in workers: the manager's pid (the front is its threads)."""
    manager = run.procs.start([*wrap, run.corral, "run", "--proxy", "-w", str(workers), "--front-threads", str(threads),
                               "-b", f"127.0.0.1:{port}", "--admin-bind", f"127.0.0.1:{free_port()}"],
                              os.path.join(run.dir, f"corral-{threads}.log"))
    procs.wait_until("corral answering", 30, lambda: answering(port) and len(children(manager.pid)) == workers,
                     proc=manager)
    if pinned:
        pin(manager.pid, FRONT_CPU)
        for worker in children(manager.pid):
            pin(worker, REST_CPU)
    return [manager.pid]

def measure(port, pids, seconds, connections=64, threads=1, wrk_cpu=REST_CPU):
    """wrk for `seconds` after a second's warm-up: req/s and the front's CPU microseconds per request."""
    load.wrk(("127.0.0.1", port), "/", connections, threads, 1, cpus=wrk_cpu)
    (user0, sys0) = user_system(pids)
    res = load.wrk(("127.0.0.1", port), "/", connections, threads, seconds, cpus=wrk_cpu)
    (user1, sys1) = user_system(pids)
    n = res["requests"]
    return {"rps": res["rps"], "requests": n, "errors": res["errors"] + res["non_2xx"],
            "us_per_request": (user1 - user0 + sys1 - sys0) / n * 1e6,
            "user_us_per_request": (user1 - user0) / n * 1e6, "system_us_per_request": (sys1 - sys0) / n * 1e6}

def paced(port, pids, seconds):
    """h2load at a steady PACED_CLIENTS x PACED_RPS requests per second for `seconds`, after a second's warm-up:
    where wrk's saturating load lets a front batch many requests per wakeup, here each request wakes it alone, as
    at an app's rates (Django's: hundreds to a few thousand per second). The front's CPU microseconds per request."""
    send = ["taskset", "-c", REST_CPU, load.H2LOAD, "--h1", "-c", str(PACED_CLIENTS), "--rps", str(PACED_RPS),
            f"http://127.0.0.1:{port}/"]
    subprocess.run(send + ["-D", "1"], capture_output=True, check=True, timeout=60)
    (user0, sys0) = user_system(pids)
    out = subprocess.run(send + ["-D", str(seconds)], capture_output=True, text=True, timeout=seconds + 60).stdout
    (user1, sys1) = user_system(pids)
    counts = re.search(r"(\d+) succeeded, (\d+) failed, (\d+) errored", out)
    if not counts or not int(counts[1]):
        raise procs.RunFailed(f"h2load gave no result: {out[-300:]}")
    n = int(counts[1])
    return {"requests": n, "errors": int(counts[2]) + int(counts[3]),
            "us_per_request": (user1 - user0 + sys1 - sys0) / n * 1e6,
            "user_us_per_request": (user1 - user0) / n * 1e6, "system_us_per_request": (sys1 - sys0) / n * 1e6}

def instructions(run, start, requests, h2=False):
    """Instructions per request of the front started by `start(run, port, wrap)` under callgrind: counters zeroed
    after a warm-up, then `requests` sent one at a time on one connection by h2load, then dumped. Every
    thread of the front's process counts (for corral, the supervision loop and admin API too)."""
    port = free_port()
    out = os.path.join(run.dir, "callgrind")
    try:
        pid = start(run, port, [*CALLGRIND, f"--callgrind-out-file={out}.%p"])[0]
        send = [load.H2LOAD, "-c", "1", "-m", "1", *([] if h2 else ["--h1"]), f"http://127.0.0.1:{port}/"]
        subprocess.run(send + ["-n", "200"], capture_output=True, check=True, timeout=120)
        subprocess.run(["callgrind_control", "--zero", str(pid)], capture_output=True, check=True, timeout=60)
        sent = subprocess.run(send + ["-n", str(requests)], capture_output=True, text=True, timeout=300).stdout
        subprocess.run(["callgrind_control", "--dump", str(pid)], capture_output=True, check=True, timeout=60)
        if f"{requests} succeeded" not in sent:
            raise procs.RunFailed(f"h2load under callgrind: {sent.strip()[-300:]}")
        dump = max(glob.glob(f"{out}.{pid}.*"), key=lambda f: int(f.rsplit(".", 1)[1]))
        with open(dump) as f:
            total = next(int(line.split()[1]) for line in f if line.startswith("totals:"))
        return total / requests
    finally:
        run.procs.stop_all()
        run.procs.clear()

def idle_memory(run, start, connections, h2=False):
    """KB of the front's resident memory per idle keep-alive connection: `connections` clients each send one
    request (with `h2`, over HTTP/2 by prior knowledge), read its answer and stay connected; the front's RSS
    (all its processes) before and after."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    port = free_port()
    held = []
    try:
        pids = start(run, port)
        before = sum(status_kib(p) for p in pids)
        for i in range(0, connections, 200):
            batch = [socket.create_connection(("127.0.0.1", port)) for _ in range(min(200, connections - i))]
            for s in batch:
                s.settimeout(10)
                if h2:
                    if not h2_get(s):
                        raise procs.RunFailed("an idle h2 connection's one request was not answered 200")
                    continue
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            for s in batch:
                if not h2 and not s.recv(4096).startswith(b"HTTP/1.1 200"):
                    raise procs.RunFailed("an idle connection's one request was not answered 200")
            held += batch
        time.sleep(1)
        return (sum(status_kib(p) for p in pids) - before) * 1024 / connections / 1000
    finally:
        for s in held:
            s.close()
        run.procs.stop_all()
        run.procs.clear()

class Run:
    def __init__(self, corral):
        self.corral, self.dir, self.procs = corral, tempfile.mkdtemp(prefix="corral-bench-front-"), procs.Procs()
        os.chmod(self.dir, 0o711)  # nginx's unprivileged worker reaches the backend's socket

    def one(self, start, seconds, how=measure, **measure_args):
        port = free_port()
        try:
            return how(port, start(self, port), seconds, **measure_args)
        finally:
            self.procs.stop_all()
            self.procs.clear()

def run(corral, rounds, seconds, workers=2):
    r = Run(corral)
    fronts = {"nginx": lambda run, port: nginx_front(run, workers, port),
              "corral": lambda run, port: corral_front(run, workers, port, 1)}
    per_core = {k: [] for k in fronts}
    for i in range(rounds):
        for name in (list(fronts) if i % 2 == 0 else list(reversed(fronts))):
            procs.log(f"figure 10: {name}, round {i + 1}/{rounds}")
            per_core[name].append(r.one(fronts[name], seconds))
    scaling = {}
    for threads in (1, 2):
        procs.log(f"figure 10: corral on {threads} front thread(s), unpinned")
        scaling[threads] = r.one(lambda run, port: corral_front(run, workers, port, threads, pinned=False),
                                 seconds, connections=128, threads=2, wrk_cpu=None)
    paced_fronts = {**fronts, "corral_2_threads": lambda run, port: corral_front(run, workers, port, 2, pinned=False)}
    at_pace = {k: [] for k in paced_fronts}
    for i in range(rounds):
        for name in (list(paced_fronts) if i % 2 == 0 else list(reversed(paced_fronts))):
            procs.log(f"figure 10: {name} at a paced load, round {i + 1}/{rounds}")
            at_pace[name].append(r.one(paced_fronts[name], seconds, how=paced))
    n = 200 if rounds == 1 else 2000
    procs.log(f"figure 10: instructions per request under callgrind, {n} requests")
    counted = {"nginx": instructions(r, lambda run, port, wrap: nginx_front(run, workers, port, wrap), n),
               "corral": instructions(r, lambda run, port, wrap: corral_front(run, workers, port, 1, False, wrap), n),
               "corral_h2": instructions(r, lambda run, port, wrap: corral_front(run, workers, port, 1, False, wrap),
                                         n, h2=True)}
    idle = 200 if rounds == 1 else 5000
    procs.log(f"figure 10: memory per idle keep-alive connection, {idle} connections")
    memory = {"nginx": idle_memory(r, lambda run, port: nginx_front(run, workers, port), idle),
              "corral": idle_memory(r, lambda run, port: corral_front(run, workers, port, 1, False), idle),
              "nginx_h2": idle_memory(r, lambda run, port: nginx_front(run, workers, port, h2c=True), idle, h2=True),
              "corral_h2": idle_memory(r, lambda run, port: corral_front(run, workers, port, 1, False), idle,
                                       h2=True)}
    return {"workers": workers, "seconds": seconds, "rounds": rounds, "per_core": per_core, "scaling": scaling,
            "paced": at_pace, "instructions_per_request": counted, "idle_connections": idle,
            "kb_per_idle_connection": memory}

def medians(runs_by_front, measures=("us_per_request", "user_us_per_request", "system_us_per_request")):
    return {k: {m: statistics.median(x[m] for x in runs) for m in measures} for k, runs in runs_by_front.items()}

def summary(res):
    med = medians(res["per_core"], ("rps", "us_per_request", "user_us_per_request", "system_us_per_request"))
    per_core_rps = 1e6 / med["corral"]["us_per_request"]
    pace = medians(res["paced"])
    return {"median": med, "cpu_vs_nginx": med["corral"]["us_per_request"] / med["nginx"]["us_per_request"],
            "paced": pace,
            "paced_vs_nginx": {k: v["us_per_request"] / pace["nginx"]["us_per_request"] for k, v in pace.items()},
            "two_threads_vs_one": res["scaling"][2]["rps"] / res["scaling"][1]["rps"],
            "computed_capacity": {n: n * per_core_rps for n in (1, 2, 4, 8)},
            "errors": sum(x["errors"] for runs in [*res["per_core"].values(), *res["paced"].values()] for x in runs)
            + sum(x["errors"] for x in res["scaling"].values())}

def markdown(res, s):
    out = ["| front | req/s on one core | front CPU per request, us | of which user / kernel | rounds (us) |",
           "|---|---|---|---|---|"]
    for k, m in s["median"].items():
        rounds = ", ".join(f"{x['us_per_request']:.2f}" for x in res["per_core"][k])
        out.append(f"| {k} | {m['rps']:.0f} | {m['us_per_request']:.2f} | {m['user_us_per_request']:.2f} / "
                   f"{m['system_us_per_request']:.2f} | {rounds} |")
    out += ["", f"Medians of {res['rounds']} rounds. corral's front CPU per request: {s['cpu_vs_nginx']:.2f}x nginx's.",
            "",
            "| corral --front-threads | req/s (wrk -t2 -c128, nothing pinned) |", "|---|---|"]
    out += [f"| {t} | {x['rps']:.0f} |" for t, x in res["scaling"].items()]
    out += ["", f"2 threads: {s['two_threads_vs_one']:.2f}x one (wrk and the workers share the same 2 cores).", "",
            "Computed, not measured: N cores given to the front alone at the per-core rate: "
            + ", ".join(f"{n}: {v:.0f} req/s" for n, v in s["computed_capacity"].items()) + ".",
            "", f"| front, paced ({PACED_CLIENTS} x {PACED_RPS} req/s) | CPU per request, us | of which user / kernel "
            "| vs nginx | rounds (us) |", "|---|---|---|---|---|"]
    for k, m in s["paced"].items():
        rounds = ", ".join(f"{x['us_per_request']:.1f}" for x in res["paced"][k])
        out.append(f"| {k.replace('_', ' ')} | {m['us_per_request']:.1f} | {m['user_us_per_request']:.1f} / "
                   f"{m['system_us_per_request']:.1f} | {s['paced_vs_nginx'][k]:.2f}x | {rounds} |")
    out += ["", "| front | instructions per request (callgrind) |", "|---|---|"]
    out += [f"| {k.replace('_', ' ')} | {v:.0f} |" for k, v in res["instructions_per_request"].items()]
    out += ["", f"| front | KB per idle keep-alive connection ({res['idle_connections']} held) |", "|---|---|"]
    out += [f"| {k} | {v:.1f} |" for k, v in res["kb_per_idle_connection"].items()]
    out += ["", f"Errors (wrk socket errors and non-2xx, h2load failures): {s['errors']}."]
    return "\n".join(out)

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corral", default=os.path.join(procs.ROOT, "target/release/corral"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--out-dir", default=os.path.join(procs.ROOT, "docs/benchmarks"))
    ap.add_argument("--smoke", action="store_true", help="1 round of 1 s")
    args = ap.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("figure 10 needs 2 CPUs: the front on one, the rest on the other")
    procs.stop_on_signals()
    res = run(args.corral, 1 if args.smoke else args.rounds, 1 if args.smoke else args.seconds)
    res["machine"] = {"cpus": os.cpu_count(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                      "nginx": procs.output([nginx_binary(), "-v"], stderr=-2),
                      "corral": procs.output([args.corral, "--version"])}
    res["summary"] = s = summary(res)
    print(markdown(res, s))
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "front.json"), "w") as f:
        json.dump(res, f, indent=1)
    return 1 if s["errors"] else 0

if __name__ == "__main__":
    sys.exit(main())
