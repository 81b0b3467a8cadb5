"""The measurements of figures 1-5, 8 and 9, one stack instance at a time. A step that fails records an
error string instead of a number, so one broken stack does not hide the others' results."""

import json
import os
import signal
import tempfile
import threading
import time
from collections import Counter

import load
from procs import RunFailed, attempt, failure, template, wait_until
from sampling import cpu_or_none, cpu_seconds, status_kib

def startup_sample(inst, app, limit=60.0):
    path = "/" if app == "hello" and not inst.stack.builtin else "/healthz"
    spawned, accepting, first = load.startup(inst.addr, path, inst.t0, inst.pid, limit=limit, alive=inst.alive)
    if first is None or spawned is None:
        raise RunFailed(f"no 200 on {path} within {limit}s (first worker spawned: {spawned}, port "
                        f"accepting: {accepting}); log: {inst.log_tail()}")
    return {"spawned_s": spawned, "accepting_s": accepting, "first_200_s": first, "manager_share": spawned / first}

def startup_run(stack, app="django"):
    with stack.start(app) as inst:
        return startup_sample(inst, app)

def cpu_of(pids):
    """CPU seconds of these processes together (one that is gone counts 0)."""
    return sum(cpu_or_none(pid) or 0.0 for pid in pids)

def served(inst):
    """Requests answered so far by the stack's own count: corral_http_requests_total in proxy mode, else None."""
    if not inst.stack.proxy:
        return None
    try:
        total = [v for k, v in inst.metrics().items() if k.split("{")[0] == "corral_http_requests_total"]
    except OSError:
        return None
    return sum(total) if total else None

def measure_throughput(inst, app, cfg, out):
    out["startup"] = startup_sample(inst, app)
    inst.wait_workers(inst.stack.workers, limit=30)
    if app in ("django", "builtin"):
        time.sleep(cfg.settle)
        c0, t0 = cpu_seconds(inst.pid), time.monotonic()
        time.sleep(cfg.idle)
        cpu = (cpu_seconds(inst.pid) - c0) / (time.monotonic() - t0)
        out["idle"] = {"manager_rss_kib": status_kib(inst.pid), "manager_idle_cpu_percent": round(cpu * 100, 3),
                       "workers_rss_kib": sum(status_kib(p) for p in inst.workers())}
        front = inst.front_pids()
        if front:
            out["idle"]["front_rss_kib"] = sum(status_kib(p) for p in front)
    if cfg.warmup:
        load.wrk(inst.addr, "/", cfg.connections, cfg.wrk_threads, cfg.warmup)
    peak, stop = [status_kib(inst.pid)], threading.Event()

    def sample_rss():
        while not stop.wait(0.25):
            peak.append(status_kib(inst.pid))
    sampler, = load.start_threads(sample_rss, 1)
    front = inst.front_pids()
    n0, c0, f0 = served(inst), cpu_seconds(inst.pid), cpu_of(front)
    workers = inst.workers()
    w0 = [cpu_seconds(p) for p in workers]
    try:
        out["wrk"] = load.wrk(inst.addr, "/", cfg.connections, cfg.wrk_threads, cfg.duration)
    finally:
        stop.set()
        sampler.join()
    manager_cpu = cpu_seconds(inst.pid) - c0
    front_used = cpu_of(front) - f0 if front else None
    w1 = [cpu_seconds(p) for p in workers]
    n1 = served(inst)
    # Requests served: the stack's own count where it keeps one (corral --proxy), else wrk's.
    counted = n0 is not None and n1 is not None
    requests = n1 - n0 if counted else out["wrk"]["requests"]
    per_request = lambda cpu: round(cpu / requests * 1e6, 2) if cpu is not None and requests else None
    out["under_load"] = {
        "manager_cpu_percent": round(manager_cpu / cfg.duration * 100, 2),
        "manager_peak_rss_kib": max(peak),
        # How evenly the connections spread: each worker's CPU during the run.
        "workers_cpu_s": [round(b - a, 2) for a, b in zip(w0, w1)],
        # The manager process alone, not its workers: for --proxy, the proxy's own cost.
        "manager_cpu_s": round(manager_cpu, 3),
        "requests": requests,
        "requests_counted_by": "corral_http_requests_total" if counted else "wrk",
        "manager_cpu_us_per_request": per_request(manager_cpu),
        **({"front_cpu_s": round(front_used, 3), "front_cpu_us_per_request": per_request(front_used)} if front
           else {})}
    if not inst.alive():
        raise RunFailed(f"exited during the run: {inst.log_tail()}")
    if app == "django" and cfg.mixed_duration:
        with tempfile.NamedTemporaryFile("w", prefix="corral-bench-mixed-", suffix=".lua") as f:
            # Every mixed_every-th request to /cpu/N: deterministic, every stack gets the same mix.
            f.write(template("mixed.lua", path="/", every=cfg.mixed_every, other=f"/cpu/{cfg.mixed_cpu_ms}"))
            f.flush()
            mixed = load.wrk(inst.addr, "/", cfg.connections, cfg.wrk_threads, cfg.mixed_duration, script=f.name)
        if not inst.alive():
            raise RunFailed(f"exited during the mixed run: {inst.log_tail()}")
        out["mixed"] = mixed

def lifecycle_run(stack, cfg, throughput=None):
    """Figures 4 and 5 on one Django instance. With `throughput` (a dict), figures 1-3 first on the same
    instance into it (the smoke run saves a start that way)."""
    n, res, app = stack.workers, {}, "builtin" if stack.builtin else "django"
    with stack.start(app) as inst:
        try:
            if throughput is None:
                res["startup"] = startup_sample(inst, app)
            else:
                try:
                    measure_throughput(inst, app, cfg, throughput)
                except Exception as e:  # noqa: BLE001
                    throughput["error"] = failure(e)
                    raise
            inst.wait_workers(n, limit=30)
            time.sleep(cfg.settle)
            ups, api_ready, down = [], [], Counter()

            def scale_down():
                inst.set_workers(n)
                inst.wait_workers(n, limit=60)

            def scale_cycle():
                for _ in range(cfg.reps):
                    ups.append(scale_up(inst, n, api_ready))
                    inst.wait_workers(n + 1, limit=30)
                    time.sleep(cfg.settle)
                    down.update(under_load(inst, cfg, scale_down))
                out = {"seconds": ups} if any(u is not None for u in ups) else {"n/a": stack.untimed}
                return dict(out, api_ready_seconds=api_ready) if api_ready else out

            if stack.no_scaling:
                res["scale_up"] = res["scale_down"] = {"n/a": stack.no_scaling}
            else:
                res["scale_up"] = attempt(scale_cycle)
                res["scale_down"] = {"counts": dict(down)} if down else {
                    "error": res["scale_up"].get("error", "not run")}
            if inst.desired != n:  # a failed scale cycle left it elsewhere
                inst.set_workers(n)
            inst.wait_workers(n, limit=30)
            res["hup"] = attempt(lambda: {"counts": under_load(inst, cfg, lambda: rolling_restarts(inst, n, cfg))})
            res["sigkill"] = {"n/a": stack.no_kill} if stack.no_kill else attempt(
                lambda: {"counts": under_load(inst, cfg, lambda: kill_workers(inst, n, cfg))})
            res["term"] = attempt(term_with_slow_requests, inst, cfg)
        except Exception as e:  # noqa: BLE001
            res.setdefault("error", failure(e))
    return res

def scale_up(inst, n, api_ready):
    """Seconds from the request for worker n+1 to a new pid answering /pid (why the old workers are paused, or
    not, and the UNTIMED stacks not timed: results.md, figure 4); their worker is still added, for the
    scale-down that follows."""
    old = inst.workers()
    if inst.stack.untimed:
        inst.set_workers(n + 1)
        return None
    pause = [] if inst.stack.proxy else old
    for pid in pause:
        os.kill(pid, signal.SIGSTOP)
    try:
        # Unpaused old workers answer at once: poll every 10 ms, not flat out,
        # so the polls do not take the CPU the new worker boots on.
        watch = load.NewPidWatch(inst.addr, old, clients=2, limit=60, interval=0.01 if inst.stack.proxy else 0.0)
        t = time.monotonic()
        inst.set_workers(n + 1)
        if inst.stack.is_corral:
            # corral's own view, for reference: /workers says ready == n+1.
            try:
                wait_until("ready", 30, lambda: json.loads(inst.admin_request("GET", "/workers")[1]).get(
                    "ready", 0) >= n + 1, every=0.01)
                api_ready.append(time.monotonic() - t)
            except RunFailed:
                pass
        when = watch.wait()
    finally:
        for pid in pause:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    if when is None:
        raise RunFailed(f"no new worker answered /pid within 60s; log: {inst.log_tail()}")
    return when - t

def rolling_restarts(inst, n, cfg):
    for _ in range(cfg.hups):
        old = inst.workers()
        inst.signal(signal.SIGHUP)
        inst.wait_workers(n, gone=old, limit=90)
        time.sleep(cfg.tail)

def kill_workers(inst, n, cfg):
    for _ in range(cfg.reps):
        victim = inst.workers()[0]
        os.kill(victim, signal.SIGKILL)
        inst.wait_workers(n, gone=[victim], limit=60)
        time.sleep(cfg.tail)

def under_load(inst, cfg, action):
    lp = load.ClosedLoop(inst.addr, "/", cfg.clients, limit=300)
    try:
        lp.wait_flowing()
        time.sleep(cfg.tail)
        action()
        time.sleep(cfg.tail)
    finally:
        counts = lp.stop()
    if not inst.alive():
        raise RunFailed(f"manager exited: {inst.log_tail()}")
    return counts

def term_with_slow_requests(inst, cfg):
    """TERM to the manager with slow requests in flight; all must complete."""
    n_slow, results, lock, exited = 4 * inst.stack.workers, Counter(), threading.Lock(), {}

    def one():
        r = load.outcome(load.get(inst.addr, f"/delay/{cfg.slow_ms}", timeout=cfg.slow_ms / 1000 + 45))
        with lock:
            results[r] += 1

    def watch_exit():
        exited["code"] = inst.wait_exit(cfg.slow_ms / 1000 + 60)
        exited["s"] = time.monotonic() - t
    threads = load.start_threads(one, n_slow)
    time.sleep(cfg.in_flight_wait)  # accepted and being served
    t = time.monotonic()
    inst.signal(signal.SIGTERM)
    waiter = threading.Thread(target=watch_exit, daemon=True)
    waiter.start()
    for th in threads:
        th.join(timeout=cfg.slow_ms / 1000 + 50)
    waiter.join()
    return {"counts": dict(results), "requests": n_slow, "slow_ms": cfg.slow_ms,
            "exit_s": exited["s"] if exited.get("code") is not None else None, "exit_code": exited.get("code")}

def wait_tls_ready(inst, cafile, limit=60.0):
    """Seconds from spawn to the first 200 on /healthz over TLS, the certificate checked."""
    ctx, last = load.tls_context(cafile, ["http/1.1"]), None
    while time.monotonic() < inst.t0 + limit and inst.alive():
        status, _, why = load.get(inst.addr, "/healthz", timeout=2, tls=ctx)
        if status == 200:
            return time.monotonic() - inst.t0
        last = why or f"status {status}"
        time.sleep(0.02)
    raise RunFailed(f"no 200 on /healthz over TLS within {limit}s (last: {last}); log: {inst.log_tail()}")

def tls_run(stack, cfg, certs, out, h2=True, handshake=True):
    """Figures 8 and 9 on one TLS instance of a front, into out; a part that failed is {'error': ...}."""
    try:
        with stack.start("django", tls=certs) as inst:
            out["ready_s"] = wait_tls_ready(inst, certs.ca)
            inst.wait_workers(stack.workers, limit=30)
            time.sleep(cfg.settle)
            out["negotiated"] = load.tls_probe(inst.addr, certs.ca)
            if out["negotiated"]["alpn"] != "h2":
                raise RunFailed(f"ALPN chose {out['negotiated']['alpn']!r}, not h2, when offered h2 and http/1.1")
            if h2:
                out["h2"] = attempt(h2_measure, inst, cfg)
            if handshake:
                out["handshake"] = attempt(handshake_measure, inst, cfg)
            if not inst.alive():
                raise RunFailed(f"exited during the TLS runs: {inst.log_tail()}")
    except Exception as e:  # noqa: BLE001 - recorded and reported, never hidden
        out["error"] = failure(e)
    return out

def with_tls_cpu(inst, run, count, per_key):
    """run()'s result with the CPU of the processes terminating TLS (corral's manager, whose thread the --proxy
    front is; nginx's master and workers) over it, and per res[count] in microseconds under per_key."""
    pids = inst.front_pids() if inst.stack.fronted else [inst.pid]
    c0 = cpu_of(pids)
    res = run()
    cpu = cpu_of(pids) - c0
    res["front_cpu_s"] = round(cpu, 3)
    res[per_key] = round(cpu / res[count] * 1e6, 2) if res[count] else None
    return res

def h2_measure(inst, cfg):
    url = f"https://{inst.addr[0]}:{inst.addr[1]}/"
    h2load = lambda seconds: load.h2load(url, cfg.h2_clients, cfg.h2_streams, cfg.h2_threads, seconds)
    if cfg.h2_warmup:
        h2load(cfg.h2_warmup)
    return with_tls_cpu(inst, lambda: h2load(cfg.h2_duration), "requests", "front_cpu_us_per_request")

def handshake_measure(inst, cfg):
    res = with_tls_cpu(inst, lambda: load.s_time(inst.addr, cfg.handshake_clients, cfg.handshake_duration),
                       "handshakes", "front_cpu_us_per_handshake")
    if not res["handshakes"]:
        raise RunFailed(f"no handshake completed: {'; '.join(res['errors']) or 'no error printed'}")
    return res
