#!/usr/bin/env python3
"""Autoscaling quality (issues 6 and 11, figure 6): `corral operator` sizing a real `corral run` pod through an
open-loop load step, twice in one cluster: on CPU with CPU-bound requests (the CPU run), then on Concurrency with
I/O-bound requests behind `corral run --proxy` (the Concurrency run). Method: docs/benchmarks/autoscale.md.

Usage, output and exit codes: bench/README.md.
"""

import datetime
import importlib.util
import json
import os
import random
import socket
import sys
import time

import charts
import cluster
import report
from autoscale_analysis import (CONCURRENCY_RUN, CPU_RUN, FULL, MAX_WORKERS, MIN_WORKERS, SAMPLE_EVERY, SMOKE,
                                WORKER_CONCURRENCY, analyse)
from load import OpenLoop
from procs import ROOT, RunFailed, announce, check_running, log, output, stop, wait_until
from sampling import WorkersSampler, request
from stacks import APPS, DJANGO_DIR, app_env, free_port, proxy_unsupported

NS = "corral-bench"
SECRET = "web-corral"
HTTP_PORT = 8000
ADMIN_PORT = 9000
# The CPU run's autoscale.json is written, the Concurrency run failed: bench/run.py reads the JSON.
EXIT_CONCURRENCY_FAILED = 3

def pick_address():
    """A loopback address whose :8000 and :9000 are free (pod IPs are distinct: fixed ports are fine)."""
    for _ in range(50):
        ip = f"127.{random.randint(100, 250)}.{random.randint(0, 250)}.{random.randint(2, 250)}"
        try:
            with socket.socket() as http, socket.socket() as admin:
                http.bind((ip, HTTP_PORT))
                admin.bind((ip, ADMIN_PORT))
            return ip
        except OSError:
            continue
    raise RunFailed("no free loopback address for the pod")

def manager_argv(corral, sc, ip, token_file):
    """The built-in worker for the CPU run; for the Concurrency run, proxy mode before the venv's Uvicorn."""
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
    """One pod of a run: its manager at a loopback address, the low load and the sampler running from start."""

    def __init__(self, c, corral, sc, op_port):
        self.sc, self.ip = sc, pick_address()
        argv, env = manager_argv(corral, sc, self.ip, c.token_file)
        self.manager = c.procs.start(argv, os.path.join(c.workdir, f"manager-{sc.key}.log"), env=env,
                                     cwd=DJANGO_DIR if env else None)
        wait_until(f"the {sc.metric} run's manager to serve", 60, lambda: json.loads(request(
            self.ip, ADMIN_PORT, "GET", "/workers", timeout=2)[1])["ready"] >= 1, every=0.05, proc=self.manager)
        log(f"figure 6, {sc.metric} run: manager ready at {self.ip}")
        # The low load runs from now on, so the manager's window is steady
        # at the baseline by the time the measured part starts.
        self.t0, self.wall0, self.self_cpu0 = time.monotonic(), time.time(), time.process_time()
        self.sampler = WorkersSampler(self.ip, ADMIN_PORT, op_port, self.t0, sc.signal, SAMPLE_EVERY)
        self.load = OpenLoop(self.ip, HTTP_PORT, sc.path, sc.low_rps, sc.high_rps, self.t0)
        self.load.start()
        self.sampler.start()

    def halt(self):
        self.load.abort.set()
        self.load.join(OpenLoop.TIMEOUT + 5)
        self.sampler.halt.set()
        self.sampler.join(5)

def autoscaler_spec(phases, sc):
    return cluster.kube_object("figure 6 spec", app=sc.key, admin_port=ADMIN_PORT, secret=SECRET,
                               min_workers=MIN_WORKERS, max_workers=MAX_WORKERS, metric=sc.metric,
                               target=sc.target, down_window=phases["down_window"])

def measure(kube, pod, phases, operator, args):
    """The pod's Pod object and autoscaler, then the measured phases; the analysis."""
    sc, name = pod.sc, pod.sc.key
    kube.ready_pod(f"{name}-0", NS, {"app": name}, pod.ip)
    spec = autoscaler_spec(phases, sc)
    kube.autoscaler(name, NS, spec, pods=1, limit=30, every=0.2)
    log(f"figure 6, {sc.metric} run: autoscaler active; the measured part starts")

    load, sampler, t0 = pod.load, pod.sampler, pod.t0
    t_base = time.monotonic() - t0
    t_up = t_base + phases["baseline"]
    t_down = t_up + phases["high"]
    t_end = t_down + phases["low"]
    load.phases(t_up, t_down, t_end)
    load.join(t_end - t_base + OpenLoop.TIMEOUT + 30)
    sampler.halt.set()
    sampler.join(10)
    if load.is_alive() or load.error is not None:
        raise RunFailed(f"the load generator failed: {load.error or 'did not finish'}")
    gen_cpu, elapsed = time.process_time() - pod.self_cpu0, time.monotonic() - t0
    check_running(pod.manager)
    check_running(operator)
    if len(sampler.samples) < 10:
        raise RunFailed(f"only {len(sampler.samples)} samples of /workers")

    # The operator's ScaledUp/ScaledDown Events of this run's autoscaler;
    # times from the start of the measured baseline, as everything below.
    events = []
    for e in (kube.get_json("events.v1.events.k8s.io", "-n", NS) or {"items": []}).get("items", []):
        when = e.get("eventTime") or (e.get("series") or {}).get("lastObservedTime")
        if when and e.get("reason") in ("ScaledUp", "ScaledDown") and (e.get("regarding") or {}).get(
                "name", name) == name:  # not the other run's autoscaler
            t = datetime.datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp() - pod.wall0 - t_base
            events.append({"t": t, "reason": e["reason"], "note": e.get("note"),
                           "count": (e.get("series") or {}).get("count", 1)})
    events.sort(key=lambda e: e["t"])
    status = kube.status(name, NS)
    samples = [dict(x, t=x["t"] - t_base) for x in sampler.samples if x["t"] >= t_base - 1.5]
    operator_samples = [dict(x, t=x["t"] - t_base) for x in sampler.operator if x["t"] >= t_base]
    load.results = [(r[0] - t_base,) + tuple(r[1:]) for r in load.results if r[0] >= t_base]
    result = analyse(phases=phases, spec=spec, samples=samples, operator=operator_samples, load=load, events=events,
                     t_up=t_up - t_base, t_down=t_down - t_base, t_end=t_end - t_base, gen_cpu=gen_cpu,
                     elapsed=elapsed, sc=sc)
    result.update(smoke=bool(args.smoke), sampler_errors=sampler.errors, autoscaler_status=status)
    result["method"]["warmup_s"] = round(t_base, 2)
    return result

def run(args):
    phases = SMOKE if args.smoke else FULL
    corral = args.corral
    wall_start, loadavg_before = time.monotonic(), os.getloadavg()
    pods = []
    with cluster.cluster("autoscale", "figure 6", args.keep) as c:
        try:
            # The API server takes ~6 s to come up: start the CPU run's pod meanwhile.
            op_port = free_port()
            pods.append(Pod(c, corral, CPU_RUN, op_port))
            c.kube.wait_up()
            log("figure 6: API server ready")
            c.kube.namespace(NS, SECRET, c.token)
            operator = cluster.start_operator(c, corral, NS, op_port)
            log("figure 6: operator leading")
            result = measure(c.kube, pods[0], phases, operator, args)
            pods[0].halt()
            stop(pods[0].manager)
            # The CPU run's autoscaler goes, so the operator does not poll a stopped pod through the second run.
            c.kube.kubectl("delete", "workerautoscaler", CPU_RUN.key, "-n", NS, check=False)
            why = proxy_unsupported(corral)
            if why:
                announce(f"figure 6, Concurrency run: not available: {why}")
                result["concurrency"] = {"not_available": why}
            else:
                try:
                    pods.append(Pod(c, corral, CONCURRENCY_RUN, op_port))
                    result["concurrency"] = measure(c.kube, pods[-1], phases, operator, args)
                except RunFailed as e:
                    log(f"figure 6, Concurrency run failed: {e}")
                    result["concurrency"] = {"error": str(e)}
            result["environment"] = environment(corral, c.kube, loadavg_before)
            result["wall_s"] = round(time.monotonic() - wall_start, 1)
            c.ok = "error" not in result["concurrency"]  # else the logs are kept
            return result
        finally:
            for pod in pods:
                pod.halt()

def environment(corral, kube, loadavg_before):
    try:
        version = json.loads(kube.kubectl("version", "-o", "json", check=False).stdout)["serverVersion"]["gitVersion"]
    except (ValueError, KeyError):
        version = None
    commit = output(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    return {"corral": output([corral, "--version"]), "commit": commit, "kube_apiserver": version,
            "cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in loadavg_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()], "python": sys.version.split()[0]}

def dump_json(result):
    """Indented, one line per sample of the long series, the Concurrency run nested the same way."""
    series = ("changes", "events", "timeline", "latency_per_s")
    head = json.dumps({k: v for k, v in result.items()
                       if k not in series and k != "concurrency" and not k.startswith("_")}, indent=1)
    parts = [head[:-2]]
    for k in (k for k in series if k in result):
        lines = ",\n".join("  " + json.dumps(x, separators=(",", ":")) for x in result[k])
        parts.append(f',\n "{k}": [\n{lines}\n ]' if lines else f',\n "{k}": []')
    if "concurrency" in result:
        parts.append(',\n "concurrency": ' + dump_json(result["concurrency"]).rstrip())
    return "".join(parts) + "\n}\n"

def main(args):
    # Fail early, before a minute of benchmark, if the chart cannot be drawn.
    if importlib.util.find_spec("matplotlib") is None:
        print("autoscale: matplotlib is not installed: run this with the bench venv "
              "(pip install -r bench/requirements.txt)", file=sys.stderr)
        return 2
    result = run(args)
    conc = result["concurrency"]
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "autoscale.json"), "w") as f:
        f.write(dump_json(result))
    wrote = ["autoscale.json", "autoscale.png"] + (["autoscale-concurrency.png"] if "rows" in conc else [])
    charts.autoscale(result, os.path.join(args.out_dir, "autoscale.png"), MAX_WORKERS, OpenLoop.TIMEOUT)
    conc_png = os.path.join(args.out_dir, "autoscale-concurrency.png")
    if "rows" in conc:
        charts.autoscale(conc, conc_png, MAX_WORKERS, OpenLoop.TIMEOUT)
    elif os.path.exists(conc_png):
        os.remove(conc_png)  # not an old run's chart beside this run's JSON
    print(f"autoscale: {'smoke' if result['smoke'] else 'full'} run, {result['wall_s']} s wall in all\n")
    print("\n".join(report.fig6(result)), flush=True)
    print(f"\nwrote {', '.join(os.path.join(args.out_dir, w) for w in wrote)}")
    if "error" in conc:
        # The CPU run's results are written; the exit code still says a run failed.
        print(f"autoscale: the Concurrency run failed: {conc['error']}", file=sys.stderr)
        return EXIT_CONCURRENCY_FAILED
    return 0

def options(ap):
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "docs", "benchmarks"))
    ap.add_argument("--smoke", action="store_true", help="a tiny step per run in <= 45 s, every code path")

if __name__ == "__main__":
    sys.exit(cluster.main("autoscale", __doc__, main, options))
