"""two_level.py's results: the JSON (one line per sample of the long series), the tables (printed and in
results.md) and the chart (results.png)."""

import json
import os

from report import fmt, table

SERIES = ("per_second", "samples")


def dump(result):
    """Indented, with each step run's long series one element per line."""
    def step_run(r):
        head = json.dumps({k: v for k, v in r.items() if k not in SERIES}, indent=1)
        parts = [head[:-2]]
        for k in SERIES:
            lines = ",\n".join("   " + json.dumps(x, separators=(",", ":")) for x in r.get(k, []))
            parts.append(f',\n  "{k}": [\n{lines}\n  ]')
        return "".join(parts) + "\n }"
    head = json.dumps({k: v for k, v in result.items() if k != "step"}, indent=1)
    if "step" not in result:
        return head + "\n"
    steps = ",\n".join(f'  "{k}": [\n' + ",\n".join("  " + step_run(r).replace("\n", "\n  ") for r in runs) + "\n  ]"
                        for k, runs in result["step"].items())
    return head[:-2] + ',\n "step": {\n' + steps + "\n }\n}\n"


def rounds(result):
    """result with each step side a list of runs, each with its size and rate (the first run of 2026-12-07 wrote
    one run per side, the large step)."""
    if "step" in result:
        result["step"] = {k: v if isinstance(v, list) else [v] for k, v in result["step"].items()}
        for runs in result["step"].values():
            for r in runs:
                r.setdefault("size", "large")
                r.setdefault("high_rps", result["config"].get("high_rps"))
    return result


def sizes(result):
    """[(size, high_rps, {side: [runs of that size]})...] in the order run."""
    out = []
    for runs in result["step"].values():
        for r in runs:
            if r["size"] not in [s for s, _, _ in out]:
                out.append((r["size"], r["high_rps"], {k: [x for x in v if x["size"] == r["size"]]
                                                       for k, v in result["step"].items()}))
    return out


def pair(a, b, spec=".0f"):
    return f"{fmt(a, spec)} / {fmt(b, spec)}"


def static_rows(st):
    c, u = st["corral"], st["uvicorn"]
    rate = None
    rows = []

    def row(what, f):
        rows.append([what, f(c), f(u)])
    row("wrk, 16 keep-alive connections: req/s", lambda v: fmt(v["rps"]))
    row("wrk: p50 / p99 ms", lambda v: pair(v["p50_ms"], v["p99_ms"], ".1f"))
    row("wrk: errors", lambda v: v["wrk_errors"])
    row("wrk: pods' CPU, cores (ms per request)", lambda v: f"{fmt(v['cpu_cores'], '.2f')} "
                                                          f"({fmt(v['cpu_ms_per_request'], '.2f')})")
    for v in (c, u):
        rate = rate or v["fixed"][0].get("served_rps")
    row("open loop, fixed rate, new connection per request: p50 / p99 ms (worst round)",
        lambda v: pair(v["fixed_p50_ms"], v["fixed_p99_ms"], ".1f"))
    row("open loop: failed", lambda v: v["fixed_failed"])
    row("memory, pods' cgroups, idle: working set (RSS) MiB",
        lambda v: f"{fmt(v['idle']['working_set_mib'])} ({fmt(v['idle']['rss_mib'])})")
    row("memory after the loads: working set (RSS) MiB",
        lambda v: f"{fmt(v['loaded']['working_set_mib'])} ({fmt(v['loaded']['rss_mib'])})")
    row("Python processes", lambda v: v["loaded"]["processes"])
    return table(["static, same total requests and limits", c["label"], u["label"]], "lrr", rows)


def step_rows(sp, title):
    """A row per figure, a column per side; each cell the rounds' values in run order, joined by " ; "."""
    keys = list(sp)
    rows = []

    def row(what, f):
        rows.append([what, *(" ; ".join(str(f(r)) for r in sp[k]) for k in keys)])

    def secs(x):
        return "never" if x is None else f"{x:.0f} s"
    row("capacity meets the load, after the step", lambda v: secs(v["capacity_met_s"]))
    row("workers added (any pod), after the step", lambda v: secs(v["first_worker_added_s"]))
    row("replicas raised, after the step", lambda v: secs(v["replicas_raised_s"]))
    row("a second pod Ready, after the step", lambda v: secs(v["second_pod_ready_s"]))
    row("failed requests in the step (of sent)", lambda v: f"{v['step']['failed']} of {v['step']['sent']}")
    row("p50 / p99 ms of the step (answered)", lambda v: pair(v["step"]["p50_ms"], v["step"]["p99_ms"], ".0f"))
    row("p99 ms of the step's first 30 s (answered)", lambda v: fmt(v["step_first_30s"]["p99_ms"], ".0f"))
    row("worst second's p99 ms (a failure as 100 s)", lambda v: fmt(v.get("worst_second_p99_ms"), ".0f"))
    row("p99 ms from capacity met to the end", lambda v: fmt((v.get("after_met") or {}).get("p99_ms"), ".0f"))
    row("p99 ms of the baseline", lambda v: fmt(v["baseline"]["p99_ms"], ".0f"))
    row("pods' CPU over the step: core x s (mean cores)",
        lambda v: f"{fmt(v['used_step'].get('pod_cpu_s'))} ({fmt(v['used_step'].get('pod_cpu_cores'), '.2f')})")
    row("pods' memory over the step: GiB x s (mean / peak MiB)",
        lambda v: f"{fmt(v['used_step'].get('memory_gib_s'), '.1f')} "
                  f"({fmt(v['used_step'].get('memory_mean_mib'))} / {fmt(v['used_step'].get('memory_peak_mib'))})")
    row("pods / workers running, mean over the step",
        lambda v: pair(v["used_step"].get("pods_mean"), v["used_step"].get("workers_mean"), ".2f"))
    row("at the end: replicas, workers per pod",
        lambda v: f"{v['final']['replicas']}, {v['final']['pod_workers']}")
    row("machine busy over the step, cores of 2 (outside the node: load generator, sampler)",
        lambda v: f"{fmt(v['used_step'].get('machine_busy_cores'), '.2f')} "
                  f"({fmt(v['used_step'].get('outside_node_cores'), '.2f')})")
    return table([title, *(sp[k][0]["label"] for k in keys)],
                 "l" + "r" * len(keys), rows)


def tables(result):
    rounds(result)
    cfg = result["config"]
    env = result["environment"]
    built = env.get("built_from") or (f"the tree at {env['commit']}" + (", src/ modified" if env["src_dirty"] else ""))
    out = [f"two-level benchmark{' (SMOKE RUN: numbers meaningless)' if result['smoke'] else ''}, "
           f"{env['date']}, {env['corral']} built from {built}"
           + ("; no cargo build ran meanwhile (--hold-cargo-lock)" if env.get("held_cargo_lock") else "")
           + (f"; replicaBehavior.scaleUp.stabilizationWindowSeconds {result['method']['replica_up_window_s']}"
              if result["method"].get("replica_up_window_s") is not None else ""), ""]
    if "static" in result:
        out += static_rows(result["static"])
        out += ["", f"(wrk {cfg['wrk_s']} s x {cfg['rounds']} rounds each, alternating; open loop "
                f"{cfg['fixed_rps']} req/s for {cfg['fixed_s']} s)", ""]
    for size, rate, sp in sizes(result) if "step" in result else []:
        out += step_rows(sp, f"load step, {size}: {cfg['low_rps']} -> {rate} req/s")
        out += ["", f"(open loop, new connection per request: {cfg['low_rps']} req/s for {cfg['base_s']} s, then "
                f"{rate} req/s for {cfg['high_s']} s)", ""]
    return out


def write(result, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write("# Two levels against one worker per pod: results\n\n"
                "Method and discussion: [README.md](README.md). Chart: [results.png](results.png).\n\n```\n"
                + "\n".join(tables(result)[:1]) + "\n```\n\n" + "\n".join(tables(result)[2:]) + "\n")
    chart(result, os.path.join(out_dir, "results.png"))


def chart(result, path):
    rounds(result)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = sizes(result) if "step" in result else []
    st = result.get("static")
    top = 1 if st else 0  # the static row, when measured
    fig, ax = plt.subplots(top + len(steps), 2, figsize=(15, 5 * (top + len(steps))), squeeze=False)
    fig.suptitle("corral: several workers per pod against one worker per pod, single-node cluster (2 cores)"
                 + (" SMOKE RUN" if result["smoke"] else ""))
    colors = {"corral": "#2a7ab0", "uvicorn": "#c9a227", "two_level": "#2a7ab0", "pods_only": "#b5533c"}
    if st:
        keys = list(st)
        labels = [st[k]["label"].replace(", ", "\n") for k in keys]
        a = ax[0][0]
        bars = a.bar(labels, [st[k]["rps"] for k in keys], color=[colors[k] for k in keys])
        for b, k in zip(bars, keys):
            a.annotate(f"{st[k]['rps']:.0f} req/s\np50 {st[k]['p50_ms']:.0f} ms, p99 {st[k]['p99_ms']:.0f} ms",
                       (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=9)
        a.set_title("static: mixed load (90 % /, 10 % /cpu/20), wrk 16 keep-alive connections", fontsize=10)
        a.set_ylabel("requests/s")
        a.set_ylim(0, max(st[k]["rps"] for k in keys) * 1.3)
        a = ax[0][1]
        x = range(len(keys))
        a.bar([i - 0.2 for i in x], [st[k]["idle"]["working_set_mib"] for k in keys], 0.4, label="idle",
              color=[colors[k] for k in keys], alpha=0.5)
        a.bar([i + 0.2 for i in x], [st[k]["loaded"]["working_set_mib"] for k in keys], 0.4,
              label="after the loads", color=[colors[k] for k in keys])
        a.set_xticks(list(x), labels)
        a.set_ylabel("MiB, sum of the pods' cgroups' working set")
        a.set_title("static: memory (light: idle, dark: after the loads)", fontsize=10)
    for row, (size, rate, sp) in enumerate(steps, start=top):
        base = result["config"]["base_s"]
        a, b = ax[row][0], ax[row][1]
        a2 = a.twinx()
        for k, v, lw in ((k, r, 1.2 if i == 0 else 0.6) for k, runs in sp.items() for i, r in enumerate(runs)):
            ps = v["per_second"]
            t = [s["t"] - base + 0.5 for s in ps]
            a.plot(t, [s["ok"] for s in ps], color=colors[k], lw=lw,
                   label=None if lw < 1 else f"{v['label']}: answered 200/s")
            a2.plot(t, [min(s["p99_ms"] or 0, 1e5) if s["p99_ms"] is not None else None for s in ps],
                    color=colors[k], lw=0.7, ls=":", label=None if lw < 1 else f"{v['label']}: p99")
            if v["capacity_met_s"] is not None:
                a.axvline(v["capacity_met_s"], color=colors[k], ls="--", lw=lw)
            sm = v["samples"]
            ts = [s["t"] - base for s in sm]
            b.step(ts, [sum(p["workers"] or 0 for p in s["pods"]) for s in sm], where="post", color=colors[k],
                   label=None if lw < 1 else f"{v['label']}: worker processes")
            b.step(ts, [sum(p["ready"] for p in s["pods"]) for s in sm], where="post", color=colors[k], ls="--",
                   label=None if lw < 1 else f"{v['label']}: Ready pods")
            b.step(ts, [s["replicas"] for s in sm], where="post", color=colors[k], ls=":", lw=0.8,
                   label=None if lw < 1 else f"{v['label']}: spec.replicas")
        cfg = result["config"]
        a.step([-base, 0, cfg["high_s"]], [cfg["low_rps"], rate, rate], where="post",
               color="grey", lw=1, label="offered req/s")
        a.set_xlabel("seconds from the step, the first 60 of 120 (dashed: capacity meets the load)")
        a.set_ylabel("requests/s answered 200 (by the second they were sent)")
        a2.set_yscale("log")
        a2.set_ylabel("p99 ms (dotted; failures as 100 s)")
        h1, l1 = a.get_legend_handles_labels()
        h2, l2 = a2.get_legend_handles_labels()
        a.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower right")
        a.set_title(f"load step, {size}: {cfg['low_rps']} -> {rate} req/s, open loop, a new connection per request",
                    fontsize=10)
        b.set_xlabel("seconds from the step")
        b.set_ylabel("count")
        b.legend(fontsize=7, loc="upper left")
        b.set_title(f"load step, {size}: workers (the pods' cgroups' processes), Ready pods, replicas", fontsize=10)
        for x in (a, b):
            x.set_xlim(-10, 60)
            x.axvline(0, color="grey", lw=0.8)
            x.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
