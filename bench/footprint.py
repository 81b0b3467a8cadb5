#!/usr/bin/env python3
"""Manager footprint and start-up, corral against the stacks it replaces.

For each stack, on the same Django project and worker count: start it,
time from spawn to the first 200 on /healthz, then read the resident memory
of the supervising process alone (not its workers) and its CPU use over an
idle window. Prints a table and writes JSON.

    bench/footprint.py [--workers 2] [--idle 5] [--out docs/benchmarks/footprint.json]

Needs a release build (cargo build --release) and the test venv
(bash .ci/python-env.sh). Traffic goes to 127.0.0.1 only.
"""

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DJANGO = os.path.join(ROOT, "tests", "django_app")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def wait_200(url, limit=60.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return True
        except Exception:
            time.sleep(0.005)
    return False


def stacks(venv, workers, corral):
    py = lambda name: os.path.join(venv, "bin", name)
    return {
        "gunicorn + UvicornWorker": lambda port, admin: [
            py("gunicorn"), "-k", "uvicorn_worker.UvicornWorker", "-w", str(workers),
            "-b", f"127.0.0.1:{port}", "--no-control-socket", "mysite.asgi:application"],
        "uvicorn --workers": lambda port, admin: [
            py("uvicorn"), "--workers", str(workers), "--host", "127.0.0.1", "--port", str(port),
            "--no-access-log", "mysite.asgi:application"],
        "corral + uvicorn --fd": lambda port, admin: [
            corral, "run", "-w", str(workers), "-b", f"127.0.0.1:{port}", "--admin-bind", f"127.0.0.1:{admin}",
            "--", py("uvicorn"), "--fd", "{fd}", "--no-access-log", "mysite.asgi:application"],
        "corral (built-in worker)": lambda port, admin: [
            corral, "run", "-w", str(workers), "-b", f"127.0.0.1:{port}", "--admin-bind", f"127.0.0.1:{admin}"],
    }


def measure(name, argv, port, idle):
    env = dict(os.environ, PYTHONPATH=DJANGO)
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=DJANGO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        if not wait_200(f"http://127.0.0.1:{port}/healthz"):
            return {"stack": name, "error": "no 200 within 60s"}
        first_200 = time.monotonic() - t0
        time.sleep(1.0)
        before = cpu_ticks(proc.pid)
        time.sleep(idle)
        idle_cpu = (cpu_ticks(proc.pid) - before) / os.sysconf("SC_CLK_TCK") / idle
        return {
            "stack": name,
            "first_200_ms": round(first_200 * 1000, 1),
            "manager_rss_kib": rss_kib(proc.pid),
            "manager_idle_cpu_percent": round(idle_cpu * 100, 3),
        }
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--idle", type=float, default=5.0)
    ap.add_argument("--venv", default=os.environ.get("CORRAL_TEST_VENV", os.path.expanduser("~/.cache/corral/venv")))
    ap.add_argument("--corral", default=os.path.join(ROOT, "target", "release", "corral"))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks", "footprint.json"))
    args = ap.parse_args()
    for path in (args.corral, os.path.join(args.venv, "bin", "gunicorn")):
        if not os.path.exists(path):
            sys.exit(f"missing {path}: cargo build --release; bash .ci/python-env.sh")
    rows = []
    for name, make in stacks(args.venv, args.workers, args.corral).items():
        port, admin = free_port(), free_port()
        rows.append(measure(name, make(port, admin), port, args.idle))
    ref = next(r for r in rows if r["stack"].startswith("gunicorn"))
    print(f"{'stack':28} {'first 200':>10} {'manager RSS':>12} {'vs gunicorn':>11} {'idle CPU':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['stack']:28} {r['error']}")
            continue
        ratio = r["manager_rss_kib"] / ref["manager_rss_kib"]
        print(f"{r['stack']:28} {r['first_200_ms']:>8.0f}ms {r['manager_rss_kib'] / 1024:>10.1f}MiB"
              f" {ratio:>10.2f}x {r['manager_idle_cpu_percent']:>8.2f}%")
    corral = next(r for r in rows if r["stack"] == "corral + uvicorn --fd")
    target = corral["manager_rss_kib"] <= ref["manager_rss_kib"] / 4
    print(f"target: corral manager RSS <= 1/4 of the Gunicorn master: {'met' if target else 'MISSED'}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({
            "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
            "workers": args.workers,
            "rows": rows,
            "rss_target_met": target,
        }, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
