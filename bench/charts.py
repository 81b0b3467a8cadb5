"""results.png (a panel per figure, from report.summarize()) and figure 6's autoscale*.png; matplotlib is
imported only when a chart is drawn."""
from report import NGINX, PROXY, SCENARIOS

def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt

def results(s, path, cfg):
    plt = pyplot()
    rows = s["stacks"]
    keys = list(rows)
    labels = [rows[k]["label"].replace(" + ", "\n+ ").replace(" built-in", "\nbuilt-in").replace(" -> ", "\n-> ")
              for k in keys]
    palette = {"gunicorn": "#888888", "uvicorn": "#c9a227", "corral": "#2a7ab0", "proxy": "#7b3fa0",
               "nginx": "#b5533c", "builtin": "#5aa05a"}
    colors = [palette.get(k, "#444444") for k in keys]
    fig, ax = plt.subplots(3, 3, figsize=(16, 13))
    fig.suptitle(f"corral vs the stacks it replaces, {cfg.workers} workers"
                 f"{' (SMOKE RUN: meaningless numbers)' if cfg.smoke else ''}")

    def bars(a, values, title, ylabel, fmt_="{:.0f}", names=labels, hues=colors, missing="-"):
        xs = range(len(values))
        b = a.bar(xs, [v or 0 for v in values], color=hues[: len(values)])
        a.set_xticks(list(xs), names[: len(values)], fontsize=8)
        a.set_title(title, fontsize=10)
        a.set_ylabel(ylabel)
        for rect, v in zip(b, values):
            a.annotate(missing if v is None else fmt_.format(v),
                       (rect.get_x() + rect.get_width() / 2, rect.get_height()), ha="center", va="bottom", fontsize=8)
    width = 0.8 / len(keys)

    def grouped(a, groups, value, title, ylabel, annotate=None, fontsize=None):
        """A bar per stack in each group, value(key, i) for the i-th; those passing annotate() labelled."""
        for i, k in enumerate(keys):
            a.bar([x + i * width for x in range(len(groups))], [value(k, g) or 0 for g in range(len(groups))],
                  width, label=rows[k]["label"], color=colors[i])
        a.set_xticks([x + width * (len(keys) - 1) / 2 for x in range(len(groups))], groups, fontsize=fontsize)
        a.set_title(title, fontsize=10)
        a.set_ylabel(ylabel)
        for rect in a.patches if annotate else ():
            if annotate(rect.get_height()):
                a.annotate(f"{rect.get_height():.0f}", (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                           ha="center", va="bottom", fontsize=7)
    # The built-in worker serves its own app, shown under hello.
    apps = ("hello", "django")
    fig1 = lambda k, app, field: (rows[k].get("fig1", {}).get(
        "builtin" if k == "builtin" and app == "hello" else app) or {}).get(field)
    grouped(ax[0][0], ["hello ASGI", "Django"], lambda k, g: fig1(k, apps[g], "rps"),
            f"1. throughput (wrk -c{cfg.connections}, keep-alive; log scale)", "requests/s",
            annotate=lambda h: h > 0)
    ax[0][0].set_yscale("log")
    ax[0][0].legend(fontsize=7)
    grouped(ax[0][1], ["hello ASGI", "Django", f"Django mixed\n({100 // cfg.mixed_every} % /cpu/{cfg.mixed_cpu_ms})"],
            lambda k, g: fig1(k, apps[g], "p99_ms") if g < 2 else rows[k].get("fig1b", {}).get("p99_ms"),
            "1, 1b. p99 latency", "ms")
    bars(ax[0][2], [rows[k].get("fig2", {}).get("manager_rss_kib", 0) / 1024 for k in keys],
         "2. manager process RSS (idle)", "MiB", "{:.1f}")
    bars(ax[1][0], [rows[k].get("fig3", {}).get("first_200_s") for k in keys],
         "3. start to first 200 (Django); dark: manager's own start", "s", "{:.2f}")
    ax[1][0].bar(range(len(keys)), [rows[k].get("fig3", {}).get("spawned_s") or 0 for k in keys], color="black",
                 alpha=0.5, width=0.5)
    bars(ax[1][1], [rows[k].get("fig4", {}).get("seconds") for k in keys],
         "4. scale up: request to new worker serving", "s", "{:.2f}")
    grouped(ax[1][2],
            [f"HUP x{cfg.hups}", f"scale down\nx{cfg.reps}", f"SIGKILL\nx{cfg.reps}", "TERM,\nslow in flight"],
            lambda k, g: rows[k].get("fig5", {}).get(SCENARIOS[g][0], {}).get("failed", 0),
            "5. failed requests (fresh connection per request)", "requests", annotate=lambda h: True, fontsize=8)

    tls_keys = [k for k in (PROXY, NGINX) if k in rows]
    tls_labels = [labels[keys.index(k)] for k in tls_keys]
    tls_colors = [colors[keys.index(k)] for k in tls_keys]
    for a, fig_key, field, title, ylabel, spec in (
        (ax[2][0], "fig8", "rps", f"8. HTTP/2 over TLS: Django req/s (h2load -c{cfg.h2_clients} -m{cfg.h2_streams})",
         "requests/s", "{:.0f}"),
        (ax[2][1], "fig9", "handshakes_per_s", "9. TLS handshakes/s (openssl s_time -new)", "handshakes/s", "{:.0f}"),
        (ax[2][2], "fig9", "front_cpu_us_per_handshake", "9. front CPU per TLS handshake", "us", "{:.1f}"),
    ):
        bars(a, [rows[k].get(fig_key, {}).get(field) for k in tls_keys], title, ylabel, spec,
             names=tls_labels, hues=tls_colors, missing="not measured")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

def autoscale(result, path, max_workers, request_timeout):
    """One run: workers against the ideal count, the signal against its band, load and p99; shaded: high load."""
    plt = pyplot()
    m = result["method"]
    is_cpu = m.get("metric", "CPU") == "CPU"
    target = m.get("target", m.get("cpu_target"))
    tl = result.get("_chart_timeline") or result["timeline"]
    t = [s["t"] for s in tl]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 8.5), sharex=True,
                                        gridspec_kw={"height_ratios": [3, 3, 2]})
    for ax in (ax1, ax2, ax3):
        ax.axvspan(m["step_up_at_s"], m["step_down_at_s"], color="tab:orange", alpha=0.08)
        ax.axvline(m["step_up_at_s"], color="tab:orange", lw=1, ls="--")
        ax.axvline(m["step_down_at_s"], color="tab:orange", lw=1, ls="--")
        ax.grid(alpha=0.3)
    ax1.step(t, [s["desired"] for s in tl], where="post", label="desired (operator)", lw=2)
    ax1.step(t, [s["ready"] for s in tl], where="post", label="ready workers", lw=1.5, ls="-.")
    edges = [0.0, m["step_up_at_s"], m["step_down_at_s"], m["end_s"]]
    ax1.step(edges, [m["ideal_low"], m["ideal_high"], m["ideal_low"], m["ideal_low"]], where="post",
             color="grey", ls=":", label="ideal ceil(offered / target)")
    ax1.set_ylabel("workers")
    ax1.set_ylim(0, max_workers + 0.5)
    d = result["scale_up_decision_s"]
    if is_cpu:
        what = (f"CPU target {target} core/worker, load step {m['low_fraction']:.0%} -> {m['high_fraction']:.0%} "
                f"of {m['capacity_cores']} cores")
    else:
        what = (f"Concurrency target {target:g} in flight per worker (--proxy, --worker-concurrency "
                f"{m['worker_concurrency']}),\n{m['request'].split(',')[0]}, load step {m['low_fraction']:.0%} -> "
                f"{m['high_fraction']:.0%} of {m['capacity_in_flight']:g} in flight")
    ax1.set_title(f"corral operator, {what}; scale-up decision {'n/a' if d is None else f'{d:.2f} s'}",
                  fontsize=10)
    ax1.legend(loc="upper right", fontsize=8)
    if is_cpu:
        ax2.plot(t, [s["cpu_per_worker_window"] for s in tl], label="CPU per worker, manager's ~2 s window")
        ax2.plot(t, [s["cpu_per_worker_1s"] for s in tl], lw=0.8, alpha=0.7, label="CPU per worker, 1 s (/proc)")
        ax2.set_ylabel("cores per worker")
        ax2.set_ylim(0, 1.1)
    else:
        window = [s.get("signal_window") for s in tl]
        one_s = [s.get("signal_1s") for s in tl]
        ax2.plot(t, window, label="in flight per worker, manager's window (concurrency)")
        ax2.plot(t, one_s, lw=0.8, alpha=0.7, label="in flight per worker, 1 s (in_flight)")
        ax2.plot(t, [s["cpu_per_worker_window"] for s in tl], lw=0.8, color="tab:grey",
                 label="CPU per worker (cores), manager's window")
        ax2.set_ylabel("requests in flight per worker")
        ax2.set_ylim(0, max([target * 2.5] + [w * 1.1 for w in window + one_s if w is not None]))
    ax2.axhline(target, color="black", lw=1, label="target")
    ax2.axhspan(target * (1 - m["tolerance"]), target * (1 + m["tolerance"]),
                color="green", alpha=0.12, label="tolerance band")
    ax2.legend(loc="upper right", fontsize=8)
    ax3.step(edges, [m["low_rps"], m["high_rps"], m["low_rps"], m["low_rps"]], where="post",
             label="offered req/s")
    lat = [x for x in result["latency_per_s"] if x["t"] + 1 <= m["end_s"] + request_timeout]
    ax3.plot([x["t"] + 0.5 for x in lat], [x["served"] for x in lat], lw=0.8, label="served req/s")
    ax3.set_ylabel("requests/s")
    ax3.set_xlabel("seconds since the measured baseline started (shaded: high load)")
    ax3.set_xlim(-0.5, m["end_s"] + 0.5)
    ax3b = ax3.twinx()
    ax3b.plot([x["t"] + 0.5 for x in lat], [x["p99_ms"] for x in lat], color="tab:red", lw=0.8, label="p99 latency")
    ax3b.set_ylabel("p99 ms")
    ax3b.set_yscale("log")
    h1, l1 = ax3.get_legend_handles_labels()
    h2, l2 = ax3b.get_legend_handles_labels()
    ax3.legend(h1 + h2, l1 + l2, loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
