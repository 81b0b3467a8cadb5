"""Figure 6's definition (the two runs: capacity, load step, metric, target) and its analysis: a run's
samples, Events and load results as its rows, summary, method and series."""

import dataclasses
import math
from collections import Counter

from report import figure_rows
from sampling import percentile

# The benchmark's definition of capacity and load (docs/benchmarks/autoscale.md).
CAPACITY_CORES = 1.2
CPU_TARGET = 0.3
MIN_WORKERS = 1
MAX_WORKERS = 8
REQUEST_MS = 10
LOW_FRACTION = 0.2
HIGH_FRACTION = 0.9
TOLERANCE = 0.1  # the operator's tolerance band (src/operator/decide.rs)
TARGET_DECISION_S = 2.0
# The Concurrency run: I/O-bound requests (Django's async /delay/50 behind
# corral --proxy), at most WORKER_CONCURRENCY in flight per worker.
DELAY_MS = 50
CONCURRENCY_TARGET = 2.0
CAPACITY_IN_FLIGHT = 8.0  # 4 workers at the target
WORKER_CONCURRENCY = 10

FULL = {"baseline": 30.0, "high": 90.0, "low": 90.0, "down_window": 30}
SMOKE = {"baseline": 2.0, "high": 7.0, "low": 3.0, "down_window": 1}

SAMPLE_EVERY = 0.1
SETTLE_HOLD = 10.0  # how long utilisation must stay at or under the band to count as reached
TIMELINE_EVERY = 0.5

@dataclasses.dataclass(frozen=True)
class Scenario:
    """One autoscaling run: what the pod serves, the metric, the load."""
    key: str  # names the pod and the autoscaler
    metric: str  # the WorkerAutoscaler metric type
    target: float
    cost: float  # per request, in the metric's unit x seconds (cores x s, or s in flight)
    capacity: float  # the pod's capacity in the metric's unit: ideal workers x target at 100 %
    path: str
    signal: str  # the /workers field the operator reads
    unit: str
    what: str  # the signal, in words
    high_fraction: float = HIGH_FRACTION

    @property
    def low_rps(self):
        return LOW_FRACTION * self.capacity / self.cost

    @property
    def high_rps(self):
        return self.high_fraction * self.capacity / self.cost

CPU_RUN = Scenario("web", "CPU", CPU_TARGET, REQUEST_MS / 1000, CAPACITY_CORES, f"/cpu/{REQUEST_MS}",
                   "cpu_utilisation", "cores", "CPU per worker")
# 80 %, not 90 %: a request is in flight a few ms longer than its 50 ms (Django, Uvicorn, the proxy), so the
# offered 6.4 in flight leaves the ideal count at ceil(6.4 x overhead / 2) = 4 for up to 25 % overhead.
CONCURRENCY_RUN = Scenario("web-conc", "Concurrency", CONCURRENCY_TARGET, DELAY_MS / 1000, CAPACITY_IN_FLIGHT,
                           f"/delay/{DELAY_MS}", "concurrency", "requests", "requests in flight per worker",
                           high_fraction=0.8)

def rnd(x, n=2):
    return None if x is None else round(x, n)

def workers_for(x):
    """The worker count that carries x at the target, within the limits."""
    return None if x is None else min(MAX_WORKERS, max(MIN_WORKERS, math.ceil(x - 1e-9)))

def per_second(samples, is_cpu):
    """Adds to each sample its figures over the last second: CPU per worker and pod CPU (/proc), the machine's
    busy fraction, and for Concurrency the per-worker in_flight of /workers."""
    for s in samples:
        active = [w for w in s["workers"] if w[1] != "draining"]
        flights = [w[3] for w in active if w[3] is not None]
        s["in_flight"] = sum(w[3] or 0 for w in s["workers"])
        s["in_flight_now"] = sum(flights) / len(active) if flights and active else None
    for i, s in enumerate(samples):
        j = i
        while j > 0 and s["t"] - samples[j - 1]["t"] <= 1.0 + 1e-6:
            j -= 1
        prev = samples[j] if j < i else None
        s["cpu_1s"] = s["machine_busy"] = None
        if prev is not None and s["t"] - prev["t"] >= 0.5:
            dt = s["t"] - prev["t"]
            before = {w[0]: w[2] for w in prev["workers"] if w[2] is not None}
            # A new worker: all its CPU.
            cores = sum(w[2] - before.get(w[0], 0.0) for w in s["workers"] if w[2] is not None)
            s["pod_cores_1s"] = cores / dt
            s["cpu_1s"] = cores / dt / (sum(1 for w in s["workers"] if w[1] != "draining") or 1)
            if s["total"] > prev["total"]:
                s["machine_busy"] = (s["busy"] - prev["busy"]) / (s["total"] - prev["total"])
        if is_cpu:
            s["util_1s"] = s["cpu_1s"]
        else:
            now = [x["in_flight_now"] for x in samples[j:i + 1] if x["in_flight_now"] is not None]
            s["util_1s"] = sum(now) / len(now) if now else None

def request_stats(results, dropped, t_up, t_down, t_end):
    """Sent, failed and latency of the load's requests per phase, and the failures by kind."""
    def phase(lo, hi):
        rs = [r for r in results if lo <= r[0] < hi]
        ok = [r[1] for r in rs if r[2] == 200]
        ms = lambda x: rnd(x * 1000 if ok else None, 1)
        return {"sent": len(rs), "ok": len(ok), "failed": len(rs) - len(ok), "p50_ms": ms(ok and percentile(ok, 0.5)),
                "p99_ms": ms(ok and percentile(ok, 0.99)), "max_ms": ms(ok and max(ok))}
    errors = dict(Counter(str(r[2]) for r in results if r[2] != 200))
    return {"baseline": phase(0, t_up), "high": phase(t_up, t_down), "low": phase(t_down, t_end),
            "dropped_over_inflight_cap": dropped, "errors": errors}

def series(samples, results, offered, is_cpu):
    """The timeline (every sample for the chart, one per TIMELINE_EVERY for the JSON) and latency per second."""
    per_s = {}
    for t_s, lat, st in results:
        if st == 200:
            per_s.setdefault(int(t_s + lat), []).append(lat)
    full, timeline, next_t = [], [], 0.0
    for s in (s for s in samples if s["t"] >= 0):
        sec = int(s["t"])
        full.append({
            "t": round(s["t"], 2), "desired": s["desired"], "ready": s["ready"], "running": s["running"],
            "cpu_per_worker_window": rnd(s["cpu_window"], 3), "cpu_per_worker_1s": rnd(s.get("cpu_1s"), 3),
            "pod_cores_1s": rnd(s.get("pod_cores_1s"), 3), "machine_busy": rnd(s.get("machine_busy"), 3),
            "listen_queue": s["queue"], "offered_rps": offered(s["t"]),
            "served_rps": len(per_s.get(sec - 1, [])) if sec >= 1 else None,
            # For Concurrency, the signal the operator reads, and corral's queue.
            **({} if is_cpu else {"signal_window": rnd(s["util_window"], 3), "signal_1s": rnd(s.get("util_1s"), 3),
                                  "in_flight": s["in_flight"], "queued": s.get("queued")})})
        if s["t"] + 1e-9 >= next_t:
            next_t = s["t"] + TIMELINE_EVERY - 0.02
            timeline.append(full[-1])
    latency = [{"t": sec, "served": len(per_s[sec]), "p50_ms": round(percentile(per_s[sec], 0.5) * 1000, 1),
                "p99_ms": round(percentile(per_s[sec], 0.99) * 1000, 1)} for sec in sorted(per_s)]
    return full, timeline, latency

def analyse(*, phases, spec, samples, operator, load, events, t_up, t_down, t_end, gen_cpu, elapsed, sc):
    low_rps, high_rps, target, is_cpu = sc.low_rps, sc.high_rps, sc.target, sc.metric == "CPU"
    band_hi = target * (1 + TOLERANCE)
    ideal_high, ideal_low = workers_for(high_rps * sc.cost / target), workers_for(low_rps * sc.cost / target)
    offered = lambda t: high_rps if t_up <= t < t_down else (low_rps if 0 <= t < t_end else 0.0)
    per_second(samples, is_cpu)
    changes = [{"t": round(b["t"], 2), "from": a["desired"], "to": b["desired"]}
               for a, b in zip(samples, samples[1:]) if b["desired"] != a["desired"]]
    first = lambda pred, after, before=float("inf"): next(
        (s["t"] for s in samples if after <= s["t"] < before and pred(s)), None)
    since = lambda t, ref: None if t is None else t - ref
    desired_at_up = max([s["desired"] for s in samples if s["t"] < t_up] or [MIN_WORKERS])
    up_change = next((c for c in changes if t_up <= c["t"] < t_down and c["to"] > c["from"]), None)
    scale_up_decision = since(up_change["t"], t_up) if up_change else None
    up_event = next((e for e in events if e["reason"] == "ScaledUp" and e["t"] >= t_up - 0.5), None)
    signal_over = first(lambda s: s["util_window"] is not None and s["util_window"] > band_hi, t_up, t_down)
    high = [s for s in samples if t_up <= s["t"] < t_down]
    peak = max((s["desired"] for s in high), default=None)
    settled = high[-1]["desired"] if high else None
    reach_desired = first(lambda s: s["desired"] >= ideal_high, t_up, t_down)
    reach_ready = first(lambda s: s["ready"] >= ideal_high, t_up, t_down)
    reach_settled = (first(lambda s: s["desired"] == settled, t_up, t_down)
                     if settled and settled != desired_at_up else None)

    def settle_time(key, hold=SETTLE_HOLD):
        """First t after the step from which samples[key] stays <= band_hi for `hold` s (or until the drop)."""
        pts = [(s["t"], s[key]) for s in high if s.get(key) is not None]
        for i, (t, v) in enumerate(pts):
            if v <= band_hi and all(w <= band_hi for u, w in pts[i:] if u < min(t + hold, t_down)):
                return since(t, t_up)
        return None

    def reversals(lo, hi):
        dirs = [1 if c["to"] > c["from"] else -1 for c in changes if lo <= c["t"] < hi]
        return sum(1 for a, b in zip(dirs, dirs[1:]) if a != b), len(dirs)

    def mean_of(key, lo, hi):
        v = [s[key] for s in samples if lo <= s["t"] < hi and s.get(key) is not None]
        return sum(v) / len(v) if v else None
    rev_high, moves_high = reversals(t_up, t_down)
    rev_low, moves_low = reversals(t_down, t_end + 5)
    moves_base = reversals(0, t_up)[1]
    down_change = next((c for c in changes if c["t"] >= t_down and c["to"] < c["from"]), None)
    scale_down_first = since(down_change["t"], t_down) if down_change else None
    reach_low = first(lambda s: s["desired"] <= ideal_low, t_down)
    reach_low_ready = first(lambda s: s["ready"] <= ideal_low and s["running"] <= ideal_low, t_down)
    # Samples after t_end are not taken; a scale-down after the run is unseen.
    req = request_stats(load.results, load.dropped, t_up, t_down, t_end)
    phases_req = (req["baseline"], req["high"], req["low"])
    failed, sent = sum(r["failed"] for r in phases_req), sum(r["sent"] for r in phases_req)
    ops, passes_per_s = operator, None
    if len(ops) >= 2 and ops[-1]["t"] > ops[0]["t"]:
        a, b = ops[0], ops[-1]
        passes_per_s = (b["ok"] + b["error"] - a["ok"] - a["error"]) / (b["t"] - a["t"])
    full, timeline, latency = series(samples, load.results, offered, is_cpu)
    last30 = (max(t_up, t_down - 30), t_down)
    pod_cores_high, in_flight_high = mean_of("pod_cores_1s", *last30), mean_of("in_flight", *last30)
    # The CPU run's target is the decision's delay, the Concurrency run's (issue 11) the ideal count reached.
    target_met = (scale_up_decision is not None and scale_up_decision <= TARGET_DECISION_S if is_cpu
                  else reach_desired is not None)
    measured_high = pod_cores_high if is_cpu else in_flight_high
    values = dict(
        metric=sc.metric, sig="CPU window" if is_cpu else "concurrency window", hold=SETTLE_HOLD,
        one_s="1 s CPU from /proc" if is_cpu else "1 s of per-worker in_flight", what=sc.what, unit=sc.unit,
        offered="offered cores" if is_cpu else "offered requests in flight", ideal_high=ideal_high,
        ideal_low=ideal_low, up_target={"target": f"<= {TARGET_DECISION_S:g} s", "met": target_met} if is_cpu else {},
        ideal_target={} if is_cpu else {"target": "reached at high load", "met": target_met},
        scale_up_decision=rnd(scale_up_decision), up_event=rnd(since(up_event["t"], t_up) if up_event else None),
        signal_over=rnd(since(signal_over, t_up)),
        first_step=f"{up_change['from']} -> {up_change['to']}" if up_change else None,
        reach_desired=rnd(since(reach_desired, t_up)), reach_ready=rnd(since(reach_ready, t_up)),
        reach_settled=rnd(since(reach_settled, t_up)), settled=settled, peak=peak,
        settle_window=rnd(settle_time("util_window")), settle_1s=rnd(settle_time("util_1s")),
        ideal_measured=workers_for(None if measured_high is None else measured_high / target),
        pod_cores=rnd(pod_cores_high, 3), in_flight=rnd(in_flight_high, 2),
        overshoot=None if peak is None else max(0, peak - ideal_high),
        util_high=rnd(mean_of("util_window", *last30), 3), cpu_high=rnd(mean_of("cpu_window", *last30), 3),
        queued_max=max((s.get("queued") or 0 for s in high), default=None), worker_concurrency=WORKER_CONCURRENCY,
        moves_base=moves_base, rev_high=rev_high, moves_high=moves_high, rev_low=rev_low, moves_low=moves_low,
        scale_down=rnd(scale_down_first), down_window=phases["down_window"], reach_low=rnd(since(reach_low, t_down)),
        reach_low_ready=rnd(since(reach_low_ready, t_down)), failed_sent=f"{failed} / {sent}",
        p99_high=req["high"]["p99_ms"], p99_base=req["baseline"]["p99_ms"], poll=spec["pollIntervalSeconds"],
        passes_per_s=rnd(passes_per_s), machine_busy=rnd(mean_of("machine_busy", t_up, t_down), 3),
        gen_cpu=rnd(gen_cpu / elapsed, 3))
    return {
        "scale_up_decision_s": rnd(scale_up_decision, 3),
        "target": f"scale-up decision <= {TARGET_DECISION_S:g} s" if is_cpu else
                  f"the ideal count ({ideal_high}) reached at high load",
        "target_s": TARGET_DECISION_S if is_cpu else None,
        "target_met": target_met, "rows": figure_rows("figure 6", values), "spec": spec,
        "reached_ideal": reach_desired is not None,
        "summary": {
            "metric": sc.metric, "scale_up_decision_s": rnd(scale_up_decision, 3), "ideal_high": ideal_high,
            "reach_ideal_desired_s": values["reach_desired"], "reach_ideal_ready_s": values["reach_ready"],
            "peak_desired": peak, "settled_desired": settled, "failed": failed, "sent": sent,
            "p99_high_ms": req["high"]["p99_ms"], "scale_down_decision_s": values["scale_down"]},
        "method": {
            "metric": sc.metric, "target": sc.target, "signal": sc.signal, "signal_unit": sc.unit,
            "capacity": sc.capacity,
            **({"capacity_cores": CAPACITY_CORES, "cpu_target": CPU_TARGET} if is_cpu else
               {"capacity_in_flight": CAPACITY_IN_FLIGHT, "worker_concurrency": WORKER_CONCURRENCY,
                "stack": "corral run --proxy -- uvicorn --fd {fd} mysite.asgi:application"}),
            "tolerance": TOLERANCE, "request": f"GET {sc.path}, new connection each, open loop",
            "low_rps": low_rps, "high_rps": high_rps, "low_fraction": LOW_FRACTION, "high_fraction": sc.high_fraction,
            "phases_s": {k: phases[k] for k in ("baseline", "high", "low")},
            "step_up_at_s": t_up, "step_down_at_s": t_down, "end_s": t_end, "ideal_high": ideal_high,
            "ideal_low": ideal_low, "desired_before_step": desired_at_up, "sample_every_s": SAMPLE_EVERY},
        "changes": changes, "events": [dict(e, t=round(e["t"], 3)) for e in events], "requests": req,
        "operator_metrics": ops[-1] if ops else None, "latency_per_s": latency, "timeline": timeline,
        "_chart_timeline": full}
