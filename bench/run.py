#!/usr/bin/env python3
"""corral's benchmark: corral against the stacks it replaces, in one run.

Usage, stacks, figures and the kit's modules: bench/README.md.
"""

import argparse
import atexit
import concurrent.futures
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import asdict, dataclass, field

import charts
import figures
import operator_scale
import procs
import report
from procs import BENCH, ROOT, announce, attempt, failure, log, output
from stacks import CERTIFICATE, STACKS, all_stacks, make_certs, nginx_binary, stop_all, tool

@dataclass
class Config:
    """What a run measures, and for how long (smoke_config(): tiny)."""
    smoke: bool = False
    workers: int = 2
    stacks: list = field(default_factory=lambda: list(STACKS))
    apps: list = field(default_factory=lambda: ["hello", "django"])
    connections: int = 32  # wrk: fixed keep-alive connections
    wrk_threads: int = 1  # one core at most for the load generator
    duration: int = 10  # s per wrk run
    warmup: int = 2  # s of wrk before each measured run
    rounds: int = 2  # throughput rounds, stack order alternating
    idle: float = 5.0  # s of idle manager CPU
    settle: float = 1.0  # s after start-up before measuring
    start_samples: int = 3  # start-to-first-200 samples per stack
    reps: int = 5  # scale-up / scale-down / SIGKILL repetitions
    hups: int = 3  # rolling restarts
    clients: int = 8  # closed-loop clients for figure 5
    tail: float = 1.5  # s of load before and after each event
    slow_ms: int = 3000  # the in-flight requests at TERM
    in_flight_wait: float = 0.5  # s between sending them and TERM
    mixed_duration: int = 10  # s of the mixed Django load (figure 1b), after each Django run
    mixed_every: int = 10  # every 10th request of it ...
    mixed_cpu_ms: int = 20  # ... is GET /cpu/20, the rest GET /
    # One nginx worker: corral's --proxy front is one thread (a current-thread tokio runtime), so one event loop
    # is like for like; it proxies far more than 2 Django workers answer, with one keep-alive pool, as corral.
    nginx_workers: int = 1
    autoscale_timeout: int = 900
    shared_instance: bool = False  # figures 1-3 on the figure 4-5 instance (smoke)
    tls_rounds: int = 2  # figures 8 and 9: a fresh instance of each TLS front per round, order alternating
    # h2load -c8 -m4: 32 streams in flight, as figure 1's 32 connections, over 8 HTTP/2 connections.
    h2_clients: int = 8
    h2_streams: int = 4
    h2_threads: int = 1
    h2_duration: int = 10  # s per measured h2load run
    h2_warmup: int = 2  # s of h2load before it
    # openssl s_time processes at once: two keep one server thread busy without a queue of clients on 2 cores.
    handshake_clients: int = 2
    handshake_duration: int = 10  # s of handshakes

def smoke_config(workers):
    return Config(smoke=True, workers=workers, stacks=[k for k in STACKS if k != "uvicorn"],
                  apps=["django"], duration=1, warmup=0, rounds=0, shared_instance=True, idle=0.3, settle=0.1,
                  start_samples=1, reps=1, hups=1, clients=4, tail=0.2, slow_ms=300, in_flight_wait=0.15,
                  mixed_duration=1, autoscale_timeout=180, tls_rounds=1, h2_duration=1, h2_warmup=0,
                  handshake_duration=1)

def ensure_env():
    """Venv and wrk; re-exec inside the venv (where matplotlib is)."""
    if os.environ.get("CORRAL_BENCH_IN_VENV") != "1":
        cache = os.environ.get("CORRAL_BENCH_VENV", os.path.expanduser("~/.cache/corral/bench-venv"))
        venv = subprocess.run(["bash", os.path.join(ROOT, ".ci", "python-env.sh"), "bench/requirements.txt"],
                              check=True, stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, CORRAL_VENV=cache)).stdout.strip().splitlines()[-1]
        missing = [pkg for pkg, there in (("wrk", os.path.exists("/usr/bin/wrk")), ("nginx", nginx_binary()),
                                          ("nghttp2-client", tool("h2load")), ("openssl", tool("openssl")))
                   if not there]
        if missing:
            log(f"installing {' '.join(missing)} (apt-get)")
            sudo = [] if os.geteuid() == 0 else ["sudo"]
            apt_env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            install = sudo + ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
            if subprocess.run(install, check=False, stdout=sys.stderr, env=apt_env).returncode != 0:
                subprocess.run(sudo + ["apt-get", "update", "-q"], check=False, stdout=sys.stderr)
                subprocess.run(install, check=False, stdout=sys.stderr, env=apt_env)
            # Without wrk nothing can be measured; without the others, their figures are "not available".
            if not os.path.exists("/usr/bin/wrk"):
                sys.exit("wrk is missing and apt-get could not install it")
        py = os.path.join(venv, "bin", "python")
        env = dict(os.environ, CORRAL_BENCH_IN_VENV="1", CORRAL_BENCH_VENV_DIR=venv)
        os.execve(py, [py, os.path.abspath(__file__), *sys.argv[1:]], env)
    return os.environ["CORRAL_BENCH_VENV_DIR"]

def machine_info(stacks):
    first_line = lambda name, *args: ((output([tool(name), *args]) or "?").splitlines()[0] if tool(name)
                                      else "not found")
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_model": cpu, "cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
        "wrk": output(["/usr/bin/wrk", "--version"]).split("Copyright")[0].strip(),
        "h2load": first_line("h2load", "--version"), "openssl": first_line("openssl", "version"),
        "git": output(["git", "-C", ROOT, "describe", "--always", "--dirty"]),
        "versions": {st.key: st.version() for st in stacks}}

TLS_FRONTS = ("proxy", "nginx")  # figures 8 and 9: corral --proxy against nginx
TLS_FIGS = {"h2": "figure 8 (HTTP/2 over TLS)", "handshake": "figure 9 (TLS handshakes)"}

def tls_figures(cfg, stacks, unavailable):
    """Figures 8 and 9, each TLS front on a fresh instance per round, with a throwaway certificate. What cannot
    run is in 'unavailable' (per figure, per front: {label, reason}), printed as "not available"."""
    out = {"unavailable": {fig: {} for fig in TLS_FIGS}, "runs": {}}
    gone = out["unavailable"]

    def mark(figs, keys, reason):
        """Figures `figs` of fronts `keys` not available, the first reason kept."""
        for fig in figs:
            for key in keys:
                gone[fig].setdefault(key, {"label": STACKS[key], "reason": reason})
    fronts, running = [], {st.key: st for st in stacks}
    for key in TLS_FRONTS:
        st = running.get(key)
        why = st.tls_unavailable() if st else unavailable.get(key, {}).get("reason", "not among this run's stacks")
        if why:
            mark(TLS_FIGS, [key], why)
        else:
            fronts.append(st)
    for fig, name, pkg in (("h2", "h2load", "nghttp2-client"), ("handshake", "openssl", "openssl")):
        if tool(name) is None:
            mark([fig], TLS_FRONTS, f"{name} not found (apt-get install {pkg}; .ci/test installs it)")
    wanted = lambda key: any(key not in gone[fig] for fig in TLS_FIGS)
    with tempfile.TemporaryDirectory(prefix="corral-bench-tls-", ignore_cleanup_errors=True) as tmp:
        certs = None
        if any(wanted(k) for k in TLS_FRONTS):
            try:
                certs = make_certs(tmp)
                out["certificate"] = CERTIFICATE
            except Exception as e:  # noqa: BLE001 - no certificate, nothing over TLS
                mark(TLS_FIGS, TLS_FRONTS, f"no test certificate: {e}")
        for fig, title in TLS_FIGS.items():
            for key, u in gone[fig].items():
                announce(f"{title}: {u['label']}: not available: {u['reason']}")
        runnable = [st for st in fronts if wanted(st.key)]
        for rnd in range(cfg.tls_rounds if certs else 0):
            for st in runnable if rnd % 2 == 0 else runnable[::-1]:
                log(f"figures 8-9 round {rnd + 1}/{cfg.tls_rounds}: {st.label}, TLS")
                r = figures.tls_run(st, cfg, certs, {}, h2=st.key not in gone["h2"],
                                    handshake=st.key not in gone["handshake"])
                out["runs"].setdefault(st.key, []).append(r)
                if "error" in r:
                    log(f"  failed: {r['error']}")
                h2, hs = r.get("h2", {}), r.get("handshake", {})
                if "rps" in h2:
                    log(f"  h2: {h2['rps']:.0f} req/s, p99 {h2['p99_ms']} ms, {h2['tls_protocol']} {h2['cipher']}, "
                        f"front {h2['front_cpu_us_per_request']} us CPU/request")
                if "handshakes_per_s" in hs:
                    log(f"  TLS handshakes: {hs['handshakes_per_s']:.0f}/s, front "
                        f"{hs['front_cpu_us_per_handshake']} us CPU/handshake")
                for k in TLS_FIGS:
                    if "error" in r.get(k, {}):
                        log(f"  {k} failed: {r[k]['error']}")
    return out

def start_autoscale(args, cfg):
    """bench/autoscale.py as a child; a function that waits for it and returns its autoscale.json, or an error."""
    script, out = os.path.join(BENCH, "autoscale.py"), os.path.join(args.out_dir, "autoscale.json")
    if os.path.exists(out):
        os.remove(out)
    argv = [sys.executable, script, "--out-dir", args.out_dir, "--corral", args.corral] + ["--smoke"] * cfg.smoke
    log("figure 6: " + " ".join(argv))
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=sys.stderr, stderr=sys.stderr, start_new_session=True)
    # Should this run die first, the child still stops its cluster and pod.
    atexit.register(lambda: proc.poll() is None and proc.terminate())
    t0 = time.monotonic()

    def finish():
        try:
            proc.wait(timeout=max(1, cfg.autoscale_timeout - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            procs.stop(proc, wait=30)  # on TERM it stops its cluster and pod
            return {"error": f"bench/autoscale.py took more than {cfg.autoscale_timeout}s"}
        took = time.monotonic() - t0
        if proc.returncode not in (0, 3):  # 3: the CPU run's JSON is written, the Concurrency run failed
            return {"error": f"bench/autoscale.py exited {proc.returncode} after {took:.0f}s"}
        try:
            with open(out) as f:
                return dict(json.load(f), wall_s=round(took, 1))
        except (OSError, ValueError) as e:
            return {"error": f"no readable {out}: {e}"}
    return finish

def start_operator_scale(args, cfg):
    log("figure 7: bench/operator_scale.py" + (" --smoke" if cfg.smoke else ""))
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="operator-scale")
    return pool.submit(operator_scale.run, args.corral, args.out_dir, smoke=cfg.smoke)

def select_stacks(cfg, venv, corral):
    """This run's stacks that the machine can run, and the others' reasons."""
    stacks, unavailable = [], {}
    for st in all_stacks(venv, corral, cfg.workers, cfg.nginx_workers):
        if st.key not in cfg.stacks:
            continue
        why = st.unavailable()
        if why:
            unavailable[st.key] = {"label": st.label, "reason": why}
            announce(f"{st.label}: not available: {why}")
        else:
            stacks.append(st)
    return stacks, unavailable

def figures_1_5(cfg, stacks, raw):
    """Rounds of every stack on every app (figures 1-3, the order reversed each round), one Django instance
    per stack for figures 4 and 5, then more start-up samples, up to cfg.start_samples per stack."""
    for rnd in range(cfg.rounds):
        for st in stacks if rnd % 2 == 0 else stacks[::-1]:
            for app in (["builtin"] if st.builtin else cfg.apps):
                log(f"figure 1-3 round {rnd + 1}/{cfg.rounds}: {st.label}, {app}")
                out = {}
                try:
                    with st.start(app) as inst:
                        figures.measure_throughput(inst, app, cfg, out)
                except Exception as e:  # noqa: BLE001 - reported as failed to run
                    out["error"] = failure(e)
                    log(f"  failed: {out['error']}")
                raw["throughput"].setdefault(st.key, {}).setdefault(app, []).append(out)
                if "wrk" in out:
                    per = out.get("under_load", {}).get("manager_cpu_us_per_request")
                    log(f"  {out['wrk']['rps']:.0f} req/s, p99 {out['wrk']['p99_ms']} ms, manager {per} us CPU/request")
                if "mixed" in out:
                    log(f"  mixed: {out['mixed']['rps']:.0f} req/s, p99 {out['mixed']['p99_ms']} ms")
    for st in stacks:
        log(f"figures 4-5: {st.label}")
        tp = None
        if cfg.shared_instance:
            tp = {}
            raw["throughput"].setdefault(st.key, {}).setdefault("builtin" if st.builtin else "django", []).append(tp)
        raw["lifecycle"][st.key] = lc = figures.lifecycle_run(st, cfg, tp)
        log("  " + json.dumps({k: v.get("counts", v.get("seconds", v.get("error", v.get("n/a"))))
                               for k, v in lc.items() if isinstance(v, dict) and k != "startup"}))
    have = cfg.rounds + 1  # the figure 4-5 instance's start is one too
    for _ in range(max(0, cfg.start_samples - have)):
        for st in stacks:
            sample = attempt(figures.startup_run, st, "builtin" if st.builtin else "django")
            raw["startup_extra"].setdefault(st.key, []).append(sample)

def write_results(args, cfg, raw, stacks, wall0):
    """results.md, .json and .png written and the table printed; returns what failed to run."""
    machine = machine_info(stacks)
    summary = report.summarize(raw, stacks, cfg)
    errors = summary["errors"]
    if "error" in raw["autoscale"] and not args.skip_autoscale:
        errors.append(f"figure 6: {raw['autoscale']['error']}")
    if "error" in raw["autoscale"].get("concurrency", {}):
        errors.append(f"figure 6, Concurrency run: {raw['autoscale']['concurrency']['error']}")
    if "error" in raw["operator_scale"] and not args.skip_operator_scale:
        errors.append(f"figure 7: {raw['operator_scale']['error']}")
    raw["wall_s"] = round(time.monotonic() - wall0, 1)
    md = report.markdown(summary, raw, cfg, machine, stacks)
    path = lambda name: os.path.join(args.out_dir, name)
    with open(path("results.md"), "w") as f:
        f.write(md)
    with open(path("results.json"), "w") as f:
        json.dump({"machine": machine, "config": asdict(cfg), "summary": summary, "raw": raw}, f, indent=1,
                  default=str)
    try:
        charts.results(summary, path("results.png"), cfg)
    except Exception as e:  # noqa: BLE001 - reported as failed to run
        errors.append(f"chart: {failure(e)}")
    print(md)
    for name in ("results.md", "results.json", "results.png"):
        print(f"wrote {path(name)}")
    print(f"wall time: {raw['wall_s']:.0f} s (figures 1-5: {raw['figures_1_5_s']:.0f} s, "
          f"figures 8-9: {raw['figures_8_9_s']:.0f} s)")
    return errors

def report_only(out_dir):
    """results.md again from out_dir's results.json, nothing run (after a change to report.py)."""
    with open(os.path.join(out_dir, "results.json")) as f:
        doc = json.load(f)
    stacks = [types.SimpleNamespace(key=key, label=row["label"]) for key, row in doc["summary"]["stacks"].items()]
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(report.markdown(doc["summary"], doc["raw"], Config(**doc["config"]), doc["machine"], stacks))

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="every code path once, tiny durations (~1 min)")
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "docs", "benchmarks"))
    ap.add_argument("--corral", default=os.path.join(ROOT, "target", "release", "corral"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-autoscale", action="store_true", help="figure 6 reported as not run")
    ap.add_argument("--skip-operator-scale", action="store_true", help="figure 7 reported as not run")
    ap.add_argument("--report-only", metavar="DIR", help="only re-render DIR/results.md from DIR/results.json")
    args = ap.parse_args()
    if args.report_only:
        return report_only(args.report_only)
    args.corral, args.out_dir = os.path.abspath(args.corral), os.path.abspath(args.out_dir)
    if not os.access(args.corral, os.X_OK):
        sys.exit(f"{args.corral} missing: cargo build --release")
    venv = ensure_env()
    # A TERM or HUP (a caller's timeout) unwinds through the `finally`s, stopping whatever still runs.
    procs.stop_on_signals()
    atexit.register(stop_all)

    cfg = smoke_config(args.workers) if args.smoke else Config(workers=args.workers)
    stacks, unavailable = select_stacks(cfg, venv, args.corral)
    os.makedirs(args.out_dir, exist_ok=True)
    wall0 = time.monotonic()
    raw = {"throughput": {}, "lifecycle": {}, "startup_extra": {}, "unavailable": unavailable}
    # The smoke run only proves the code paths, so figures 6 and 7 (mostly the API server's start) run beside
    # figures 1-5 to stay near a minute; the full run keeps every figure alone on the machine.
    autoscale = start_autoscale(args, cfg) if cfg.smoke and not args.skip_autoscale else None
    scale = start_operator_scale(args, cfg) if cfg.smoke and not args.skip_operator_scale else None

    figures_1_5(cfg, stacks, raw)
    raw["figures_1_5_s"] = round(time.monotonic() - wall0, 1)
    log(f"figures 1-5 took {raw['figures_1_5_s']:.0f}s")

    t8 = time.monotonic()
    raw["tls"] = tls_figures(cfg, stacks, unavailable)
    raw["figures_8_9_s"] = round(time.monotonic() - t8, 1)
    log(f"figures 8-9 took {raw['figures_8_9_s']:.0f}s")

    raw["autoscale"] = {"error": "skipped (--skip-autoscale)"} if args.skip_autoscale else (
        autoscale or start_autoscale(args, cfg))()
    raw["operator_scale"] = {"error": "skipped (--skip-operator-scale)"} if args.skip_operator_scale else attempt(
        (scale or start_operator_scale(args, cfg)).result)
    errors = write_results(args, cfg, raw, stacks, wall0)
    if errors:
        print(f"{len(errors)} measurement(s) FAILED TO RUN", file=sys.stderr)
        sys.exit(1)

if __name__ == "__main__":
    try:
        main()
    except procs.Stopped as e:
        sys.exit(str(e))
