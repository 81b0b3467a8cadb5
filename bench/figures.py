"""The measurements behind figures 1-5, one stack instance at a time.

- `throughput_run`: start a stack on one app, time its start (figure 3),
  measure the idle manager (figure 2, Django only), warm up, run wrk
  (figure 1) while sampling the manager's CPU and memory, stop.
- `lifecycle_run`: start a stack on Django, time its start (figure 3),
  then under the same instance: scale up timed to the new worker serving
  (figure 4), scale down under load, rolling restarts under load, SIGKILL
  of a worker under load, and last TERM with slow requests in flight
  (figure 5).
- `startup_run`: one more start-to-first-200 sample (figure 3).

Every step that fails records an error string instead of a number, so
one broken stack does not hide the others' results.
"""

import os
import signal
import threading
import time
from collections import Counter

import load
from stacks import cpu_seconds, rss_kib


def health_path(stack, app):
    return "/" if app == "hello" and not stack.builtin else "/healthz"


def startup_sample(inst, path, limit=60.0):
    spawned, accepting, first = load.startup(inst.addr, path, inst.t0, inst.pid, limit=limit, alive=inst.alive)
    if first is None or spawned is None:
        raise RuntimeError(f"no 200 on {path} within {limit}s (first worker spawned: {spawned}, port "
                           f"accepting: {accepting}); log: {inst.log_tail()}")
    return {"spawned_s": spawned, "accepting_s": accepting, "first_200_s": first, "manager_share": spawned / first}


def throughput_run(stack, app, cfg, out):
    """Fills out['startup'], out['idle'], out['wrk'], out['under_load'] on a fresh instance."""
    inst = stack.start(app)
    try:
        measure_throughput(inst, app, cfg, out)
    finally:
        inst.stop()


def measure_throughput(inst, app, cfg, out):
    stack = inst.stack
    out["startup"] = startup_sample(inst, health_path(stack, app))
    inst.wait_workers(stack.workers, limit=30)
    if app in ("django", "builtin"):
        time.sleep(cfg.settle)
        c0, t0 = cpu_seconds(inst.pid), time.monotonic()
        time.sleep(cfg.idle)
        cpu = (cpu_seconds(inst.pid) - c0) / (time.monotonic() - t0)
        out["idle"] = {
            "manager_rss_kib": rss_kib(inst.pid),
            "manager_idle_cpu_percent": round(cpu * 100, 3),
            "workers_rss_kib": sum(rss_kib(p) for p in inst.workers()),
        }
    if cfg.warmup:
        load.wrk(inst.addr, "/", cfg.connections, cfg.wrk_threads, cfg.warmup)
    peak = [rss_kib(inst.pid)]
    stop = threading.Event()

    def sample_rss():
        while not stop.wait(0.25):
            peak.append(rss_kib(inst.pid))

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    c0 = cpu_seconds(inst.pid)
    workers = inst.workers()
    w0 = [cpu_seconds(p) for p in workers]
    try:
        out["wrk"] = load.wrk(inst.addr, "/", cfg.connections, cfg.wrk_threads, cfg.duration)
    finally:
        stop.set()
        sampler.join()
    w1 = [cpu_seconds(p) for p in workers]
    out["under_load"] = {
        "manager_cpu_percent": round((cpu_seconds(inst.pid) - c0) / cfg.duration * 100, 2),
        "manager_peak_rss_kib": max(peak),
        # How evenly the connections spread: each worker's CPU during the run.
        "workers_cpu_s": [round(b - a, 2) for a, b in zip(w0, w1)],
    }
    if not inst.alive():
        raise RuntimeError(f"exited during the run: {inst.log_tail()}")


def startup_run(stack, app="django"):
    inst = stack.start(app)
    try:
        return startup_sample(inst, health_path(stack, app))
    finally:
        inst.stop()


def step(results, name, fn):
    """Runs one measurement; on failure stores {'error': ...} under name."""
    try:
        results[name] = fn()
    except Exception as e:  # noqa: BLE001 - recorded and reported, never hidden
        results[name] = {"error": f"{type(e).__name__}: {e}"}


def lifecycle_run(stack, cfg, throughput=None):
    """Figures 4 and 5 on one Django instance; returns a dict per measurement.

    With `throughput` (a dict), figures 1-3 are measured first on the same
    instance into it (the smoke run saves a start that way).
    """
    n = stack.workers
    res = {}
    app = "builtin" if stack.builtin else "django"
    inst = stack.start(app)
    try:
        if throughput is None:
            res["startup"] = startup_sample(inst, health_path(stack, app))
        else:
            try:
                measure_throughput(inst, app, cfg, throughput)
            except Exception as e:  # noqa: BLE001
                throughput["error"] = f"{type(e).__name__}: {e}"
                raise
        inst.wait_workers(n, limit=30)
        time.sleep(cfg.settle)
        ups, api_ready, down = [], [], Counter()

        def scale_cycle():
            for _ in range(cfg.reps):
                ups.append(scale_up(inst, n, api_ready))
                inst.wait_workers(n + 1, limit=30)
                time.sleep(cfg.settle)
                down.update(under_load(inst, cfg, lambda: scale_down(inst, n)))
            out = {"seconds": ups}
            if api_ready:
                out["api_ready_seconds"] = api_ready
            return out

        step(res, "scale_up", scale_cycle)
        res["scale_down"] = {"counts": dict(down)} if down else {"error": res["scale_up"].get("error", "not run")}
        if inst.desired != n:  # a failed scale cycle left it elsewhere
            inst.set_workers(n)
        inst.wait_workers(n, limit=30)
        step(res, "hup", lambda: {"counts": under_load(inst, cfg, lambda: rolling_restarts(inst, n, cfg))})
        step(res, "sigkill", lambda: {"counts": under_load(inst, cfg, lambda: kill_workers(inst, n, cfg))})
        step(res, "term", lambda: term_with_slow_requests(inst, cfg))
    except Exception as e:  # noqa: BLE001
        res.setdefault("error", f"{type(e).__name__}: {e}")
    finally:
        inst.stop()
    return res


def scale_up(inst, n, api_ready):
    """Seconds from the request for worker n+1 to a new pid answering /pid.

    The old workers are paused (SIGSTOP) from just before the request until
    the answer, so that only the new worker can take the polling requests:
    on an idle server the kernel hands nearly every connection to a worker
    that is already awake, and a new worker could wait long for its first.
    """
    old = inst.workers()
    for pid in old:
        os.kill(pid, signal.SIGSTOP)
    try:
        watch = load.NewPidWatch(inst.addr, old, clients=2, limit=60)
        t = time.monotonic()
        inst.set_workers(n + 1)
        if inst.stack.is_corral:
            # corral's own view, for reference: /workers says ready == n+1.
            deadline = t + 30
            while time.monotonic() < deadline:
                try:
                    _, doc = inst.admin_request("GET", "/workers")
                    if doc.get("ready", 0) >= n + 1:
                        api_ready.append(time.monotonic() - t)
                        break
                except OSError:
                    pass
                time.sleep(0.01)
        when = watch.wait()
    finally:
        for pid in old:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    if when is None:
        raise RuntimeError(f"no new worker answered /pid within 60s; log: {inst.log_tail()}")
    return when - t


def scale_down(inst, n):
    before = inst.workers()
    inst.set_workers(n)
    inst.wait_workers(n, limit=60)
    return {"from": len(before)}


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
    """Failure counts of a closed-loop load around `action`."""
    lp = load.ClosedLoop(inst.addr, "/", cfg.clients, limit=300)
    try:
        lp.wait_flowing()
        time.sleep(cfg.tail)
        action()
        time.sleep(cfg.tail)
    finally:
        counts = lp.stop()
    if not inst.alive():
        raise RuntimeError(f"manager exited: {inst.log_tail()}")
    return counts


def term_with_slow_requests(inst, cfg):
    """TERM to the manager with slow requests in flight; all must complete."""
    n_slow = 4 * inst.stack.workers
    path = f"/delay/{cfg.slow_ms}"
    results = Counter()
    lock = threading.Lock()

    def one():
        r = load.outcome(load.get(inst.addr, path, timeout=cfg.slow_ms / 1000 + 45))
        with lock:
            results[r] += 1

    threads = [threading.Thread(target=one, daemon=True) for _ in range(n_slow)]
    for t in threads:
        t.start()
    time.sleep(cfg.in_flight_wait)  # accepted and being served
    exited = {}

    def watch_exit():
        exited["code"] = inst.wait_exit(cfg.slow_ms / 1000 + 60)
        exited["s"] = time.monotonic() - t

    t = time.monotonic()
    inst.signal(signal.SIGTERM)
    waiter = threading.Thread(target=watch_exit, daemon=True)
    waiter.start()
    for th in threads:
        th.join(timeout=cfg.slow_ms / 1000 + 50)
    waiter.join()
    return {"counts": dict(results), "requests": n_slow, "slow_ms": cfg.slow_ms,
            "exit_s": exited["s"] if exited.get("code") is not None else None, "exit_code": exited.get("code")}
