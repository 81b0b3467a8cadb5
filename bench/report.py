"""Figures 1-5, 8 and 9 reduced to one number per stack and figure (`summarize()`), the issues' targets judged
against gunicorn + UvicornWorker, and results.md rendered with figures 6 and 7 (`markdown()`)."""

import collections
import json
import re
import statistics

from procs import template

REF, CORRAL, PROXY, NGINX = "gunicorn", "corral", "proxy", "nginx"
PROXY_CPU_US = 25.0  # the proxy's own CPU per request, at most
PROXY_VS_NGINX = 1.0  # Django throughput with --proxy, at least, x nginx -> gunicorn
PROXY_VS_REF = 0.95  # ... and x gunicorn direct
H2_VS_NGINX = 1.0  # figure 8: HTTP/2 over TLS throughput, corral --proxy x nginx, at least
HANDSHAKE_VS_NGINX = 1.0  # figure 9: TLS handshakes per second, corral --proxy x nginx, at least
SCENARIOS = [("hup", "rolling restart (HUP) x{hups}"), ("scale_down", "scale down {n1} -> {n} x{reps}"),
             ("sigkill", "SIGKILL of one worker x{reps}"), ("term", "TERM, {slow} slow requests in flight")]
PASS_COLUMNS = ["kind", "cpu_s", "wall_s", "gets", "puts", "rss_mib", "open_fds", "api_connections"]

def load_text(name):
    """templates/<name>'s sections: each paragraph one line (with its "\\n"), each table line as it stands."""
    parts = re.split(r"^<!-- (\S+) -->\n", template(name), flags=re.M)
    return {key: [out for block in body.strip().split("\n\n") for out in (
        block.split("\n") if block.startswith("|") else [" ".join(block.split("\n")) + "\n"])]
        for key, body in zip(parts[1::2], parts[2::2])}

TEXT = load_text("results.md")

def text(name, **values):
    return [p.format(**values) for p in TEXT[name]]

def median(xs, of=statistics.median):
    """of() (the median, mean()'s mean) of the values that are not None."""
    xs = [x for x in xs if x is not None]
    return of(xs) if xs else None

def mean(xs):
    return median(xs, statistics.fmean)

def medians(items, *keys):
    return {k: median(i.get(k) for i in items) for k in keys}

def ratio(a, b):
    return a / b if a is not None and b else None

def wrk_summary(runs):
    return {**{k: mean(w[k] for w in runs) for k in ("rps", "p50_ms", "p99_ms")},
            "errors": sum(w["errors"] + w["non_2xx"] for w in runs)}

def summarize(raw, stacks, cfg):
    errors = []
    s = {"stacks": {}, "errors": errors, "unavailable": raw.get("unavailable", {})}
    for st in stacks:
        row = s["stacks"][st.key] = {"label": st.label, "fig1": {}}
        idle, under, starts, mixed = [], [], [], []
        for app, rounds in raw["throughput"].get(st.key, {}).items():
            errors += [f"figure 1 {st.label} {app}: {r['error']}" for r in rounds if "error" in r]
            ok = [r for r in rounds if "wrk" in r]
            if ok:
                cpu = [r.get("under_load", {}).get("workers_cpu_s") for r in ok]
                # The busiest worker's share of all workers' CPU (1/N = even).
                row["fig1"][app] = dict(wrk_summary([r["wrk"] for r in ok]), busiest_worker_share=mean(
                    max(c) / sum(c) if c and sum(c) > 0 else None for c in cpu), rounds=len(ok))
            main = app in ("django", "builtin")
            mixed += [r["mixed"] for r in rounds if "mixed" in r]
            idle += [r["idle"] for r in rounds if "idle" in r]
            under += [r["under_load"] for r in rounds if main and "manager_cpu_percent" in r.get("under_load", {})]
            starts += [r["startup"] for r in rounds if main and "startup" in r]
        if mixed:
            row["fig1b"] = dict(wrk_summary(mixed), rounds=len(mixed))
        if idle:
            row["fig2"] = {
                **medians(idle, "manager_rss_kib", "manager_idle_cpu_percent", "workers_rss_kib"),
                "manager_cpu_under_load_percent": median(u["manager_cpu_percent"] for u in under),
                "manager_peak_rss_under_load_kib": max((u["manager_peak_rss_kib"] for u in under), default=None),
                # The manager process's own CPU over the requests served in the
                # Django wrk run: for --proxy the proxy's cost per request.
                "manager_cpu_us_per_request": median(u.get("manager_cpu_us_per_request") for u in under),
                "front_rss_kib": median(i.get("front_rss_kib") for i in idle),
                "front_cpu_us_per_request": median(u.get("front_cpu_us_per_request") for u in under)}
        else:
            errors.append(f"figure 2 {st.label}: no idle measurement")
        lc = raw["lifecycle"].get(st.key, {})
        starts += [lc["startup"]] if "startup" in lc else []
        for extra in raw["startup_extra"].get(st.key, []):
            if "error" in extra:
                errors.append(f"figure 3 {st.label}: {extra['error']}")
            else:
                starts.append(extra)
        if starts:
            row["fig3"] = {**medians(starts, "first_200_s", "spawned_s", "accepting_s", "manager_share"),
                           "samples": len(starts)}
        else:
            errors.append(f"figure 3 {st.label}: no start-up sample")
        if "error" in lc:
            errors.append(f"figures 4-5 {st.label}: {lc['error']}")
        up = lc.get("scale_up", {})
        if "seconds" in up:
            row["fig4"] = {"seconds": median(up["seconds"]), "samples": len(up["seconds"]),
                           "api_ready_seconds": median(up.get("api_ready_seconds", []))}
        elif "n/a" in up:
            row["fig4"] = {"seconds": None, "samples": 0, "api_ready_seconds": None, "n/a": up["n/a"]}
        elif lc:
            errors.append(f"figure 4 {st.label}: {up.get('error', 'not run')}")
        row["fig5"] = {}
        for key, _ in SCENARIOS:
            sc = lc.get(key, {})
            if "counts" in sc:
                kinds = {k: v for k, v in sc["counts"].items() if k != "ok"}
                row["fig5"][key] = {"failed": sum(kinds.values()), "total": sum(sc["counts"].values()),
                                    "kinds": kinds, **({"exit_s": sc.get("exit_s")} if key == "term" else {})}
            elif lc and "n/a" not in sc:
                errors.append(f"figure 5 {st.label} {key}: {sc.get('error', 'not run')}")
    summarize_tls(s, raw.get("tls", {}), errors)
    judge(s)
    return s

def summarize_tls(s, tls, errors):
    """Figures 8 (h2load) and 9 (s_time) into the fronts' rows, the mean over rounds."""
    s["tls_unavailable"] = tls.get("unavailable", {"h2": {}, "handshake": {}})
    s["tls_certificate"] = tls.get("certificate")
    for key, runs in tls.get("runs", {}).items():
        row = s["stacks"].get(key)
        if row is None:
            continue
        h2, hs = [], []
        for r in runs:
            if "error" in r:
                errors.append(f"figures 8-9 {row['label']}: {r['error']}")
            for fig, name, into in (("h2", "figure 8", h2), ("handshake", "figure 9", hs)):
                part = r.get(fig)
                if part is not None and "error" in part:
                    errors.append(f"{name} {row['label']}: {part['error']}")
                elif part is not None:
                    into.append((part, r.get("negotiated", {})))
        if h2:
            row["fig8"] = {
                **{k: mean(p[k] for p, _ in h2) for k in ("rps", "p50_ms", "p99_ms")},
                "requests": sum(p["requests"] for p, _ in h2),
                "errors": sum(sum(p[k] or 0 for k in ("failed", "errored", "timeout", "non_2xx")) for p, _ in h2),
                "front_cpu_us_per_request": median(p.get("front_cpu_us_per_request") for p, _ in h2),
                "tls": sorted({f"{p['tls_protocol']} {p['cipher']} {p['server_temp_key']}" for p, _ in h2}),
                "alpn": sorted({p["application_protocol"] for p, _ in h2}), "rounds": len(h2)}
        if hs:
            row["fig9"] = {
                "handshakes_per_s": mean(p["handshakes_per_s"] for p, _ in hs),
                "handshakes": sum(p["handshakes"] for p, _ in hs),
                "errors": sum(len(p["errors"]) for p, _ in hs),
                "reused": sum(p["reused"] for p, _ in hs),
                "front_cpu_us_per_handshake": median(p.get("front_cpu_us_per_handshake") for p, _ in hs),
                "tls": sorted({f"{n.get('version')} {n.get('cipher')}" for _, n in hs}), "rounds": len(hs)}

def judge(s):
    """s['targets']: corral's (issue 1), proxy mode's (11) and the TLS front's (13), with why if not measured."""
    rows, gone, tls_gone = s["stacks"], s.get("unavailable", {}), s.get("tls_unavailable", {})
    ref, cor, pro, ngx = (rows.get(k, {}) for k in (REF, CORRAL, PROXY, NGINX))
    targets = s["targets"] = []

    def add(figure, what, value, unit, met, why=None):
        """met: a verdict, or a test of the value (no value: not measured)."""
        if callable(met):
            met = None if value is None else met(value)
        targets.append({"figure": figure, "what": what, "value": value, "unit": unit, "met": met,
                        **({"why": why} if met is None and why else {})})

    def unmet(*keys):
        """Why a proxy-mode target has no value: a stack not run."""
        return "; ".join(f"{gone[k]['label']} not available: {gone[k]['reason']}" for k in keys if k in gone) \
            or "not measured in this run"
    rps = lambda row, app="django": row.get("fig1", {}).get(app, {}).get("rps")
    for app in ("hello", "django"):
        r = ratio(rps(cor, app), rps(ref, app))
        add(1, f"corral + uvicorn throughput >= 1.0x gunicorn ({app})", r, "x", lambda r: r >= 1.0)
    r = ratio(cor.get("fig2", {}).get("manager_rss_kib"), ref.get("fig2", {}).get("manager_rss_kib"))
    add(2, "corral manager RSS <= 1/4 of the gunicorn master", r, "x", lambda r: r <= 0.25)
    for key, _ in SCENARIOS:
        g, c = ref.get("fig5", {}).get(key), cor.get("fig5", {}).get(key)
        # The target applies where gunicorn drops requests.
        met = None if g is None or c is None else "n/a" if g["failed"] == 0 else c["failed"] == 0
        add(5, f"zero failed where gunicorn drops any: {key}", None if c is None else c["failed"], "failed", met)
    for other, want, name in ((ngx, PROXY_VS_NGINX, "nginx -> gunicorn"), (ref, PROXY_VS_REF, "gunicorn direct")):
        r = ratio(rps(pro), rps(other))
        add(1, f"corral --proxy Django throughput >= {want:.2f}x {name}", r, "x", lambda r: r >= want,
            unmet(PROXY, NGINX if other is ngx else REF))
    us = pro.get("fig2", {}).get("manager_cpu_us_per_request")
    add(2, f"corral --proxy: the proxy's own CPU per request <= {PROXY_CPU_US:g} us", us, "us",
        lambda us: us <= PROXY_CPU_US, unmet(PROXY))
    r = ratio(pro.get("fig1b", {}).get("p99_ms"), ref.get("fig1b", {}).get("p99_ms"))
    add("1b", "corral --proxy p99 of the mixed Django load <= gunicorn direct's", r, "x", lambda r: r <= 1.0,
        unmet(PROXY, REF))
    for key, _ in SCENARIOS:
        failed = pro.get("fig5", {}).get(key, {}).get("failed")
        add(5, f"corral --proxy zero failed: {key}", failed, "failed", lambda f: f == 0, unmet(PROXY))
    for figure, fig, field, what, want in (
        (8, "h2", "rps", f"corral --proxy HTTP/2 (h2 over TLS) Django throughput >= {H2_VS_NGINX:.2f}x "
                         "nginx (HTTP/2, TLS) -> gunicorn", H2_VS_NGINX),
        (9, "handshake", "handshakes_per_s", f"corral --proxy TLS handshakes per second >= {HANDSHAKE_VS_NGINX:.2f}x "
                                             "nginx", HANDSHAKE_VS_NGINX)):
        r = ratio(pro.get(f"fig{figure}", {}).get(field), ngx.get(f"fig{figure}", {}).get(field))
        add(figure, what, r, "x", lambda r: r >= want,
            "; ".join(f"{u['label']}: not available: {u['reason']}" for u in tls_gone.get(fig, {}).values())
            or "not measured in this run (see FAILED TO RUN)")

def verdict(met, why=None):
    if met is None and why:
        return f"not measured ({why})"
    return {True: "met", False: "MISSED", None: "not measured", "n/a": "n/a: gunicorn dropped none"}[met]

def tverdict(t, short=False):
    return verdict(t["met"], ("not available" if short else t["why"]) if t.get("why") else None)

def tvalue(t):
    v, unit = t["value"], t.get("unit")
    if v is None:
        return "-"
    return {"x": f"{v:.2f}x", "us": f"{v:.1f} us"}.get(unit, f"{v} {unit or ''}".strip())

def target_lines(s, figure):
    return [f"\nTarget: {t['what']}: {tvalue(t)}, **{tverdict(t)}**" for t in s["targets"] if t["figure"] == figure]

def measured(s, fig):
    return [(row, row[fig]) for row in s["stacks"].values() if row.get(fig)]

def fmt(x, spec=".0f", none="-"):
    return none if x is None else format(x, spec)

def vs(x, row, *path):
    """x over `row`'s value at path (figure, [app,] field), as "1.23x"."""
    for key in path[:-1]:
        row = row.get(key, {})
    r = ratio(x, row.get(path[-1]))
    return "-" if r is None else f"{r:.2f}x"

def line(cells):
    return "| " + " | ".join(map(str, cells)) + " |"

def table(header, align, rows):
    """A markdown table: each column's alignment ("l" or "r"); a row is a list of cells or a line as it stands."""
    return ([line(header), "|" + "".join("---:|" if a == "r" else "---|" for a in align)]
            + [r if isinstance(r, str) else line(r) for r in rows])

def markdown(s, raw, cfg, machine, stacks):
    L = text("overview", m=machine, cfg=cfg, wall=fmt(raw.get("wall_s"), ".0f"),
             smoke=" (SMOKE RUN: tiny durations, numbers meaningless)" if cfg.smoke else "",
             versions="; ".join(f"{st.label}: {machine['versions'].get(st.key, '?')}" for st in stacks))
    L += [f"**{st['label']}: not available: {st['reason']}.** Its figures and targets are not measured.\n"
          for st in s.get("unavailable", {}).values()]
    for section in (fig1, fig1b, fig2, fig3, fig4, fig5):
        L += section(s, cfg, s["stacks"].get(REF, {}))
    L += fig6(raw.get("autoscale", {})) + fig7(raw.get("operator_scale", {})) + tls_sections(s, raw, cfg, machine)
    L += text("targets") + [line([t["figure"], t["what"], tvalue(t), f"**{tverdict(t)}**"]) for t in s["targets"]]
    L.append("")
    if s["errors"]:
        L += ["## FAILED TO RUN\n"] + [f"- {e}" for e in s["errors"]] + [""]
    return "\n".join(L) + "\n"

def fig1(s, cfg, ref):
    rows = []
    for app in ("hello", "django"):
        for key, row in s["stacks"].items():
            f1 = row.get("fig1", {}).get("builtin" if key == "builtin" and app == "hello" else app)
            if f1 is not None:
                busiest = f1["busiest_worker_share"]
                rows.append(line([row["label"], app, fmt(f1["rps"]), vs(f1["rps"], ref, "fig1", app, "rps"),
                                  fmt(f1["p50_ms"], ".2f"), fmt(f1["p99_ms"], ".2f"), f1["errors"],
                                  f"{fmt(None if busiest is None else busiest * 100)} %"]))
    return [*text("fig1", cfg=cfg, rounds=max(cfg.rounds, 1), even=100 / cfg.workers), *rows, *target_lines(s, 1), ""]

def fig1b(s, cfg, ref):
    return [*text("fig1b", cfg=cfg), *(line([
        row["label"], fmt(m["rps"]), fmt(m["p50_ms"], ".2f"), fmt(m["p99_ms"], ".2f"),
        vs(m["p99_ms"], ref, "fig1b", "p99_ms"), m["errors"]]) for row, m in measured(s, "fig1b")),
        *target_lines(s, "1b"), ""]

def fig2(s, cfg, ref):
    mib = lambda f2, k: fmt(None if f2.get(k) is None else f2[k] / 1024, ".1f")
    return [*text("fig2", cfg=cfg), *(line([
        row["label"], mib(f2, "manager_rss_kib"), vs(f2["manager_rss_kib"], ref, "fig2", "manager_rss_kib"),
        fmt(f2["manager_idle_cpu_percent"], ".2f"), fmt(f2["manager_cpu_under_load_percent"], ".2f"),
        mib(f2, "manager_peak_rss_under_load_kib"), mib(f2, "workers_rss_kib"),
        fmt(f2.get("manager_cpu_us_per_request"), ".1f"), mib(f2, "front_rss_kib"),
        fmt(f2.get("front_cpu_us_per_request"), ".1f")]) for row, f2 in measured(s, "fig2")),
        *target_lines(s, 2), ""]

def fig3(s, cfg, ref):
    return [*text("fig3"), *(line([
        row["label"], fmt(f3["first_200_s"] * 1000), vs(f3["first_200_s"], ref, "fig3", "first_200_s"),
        fmt(f3["spawned_s"] * 1000, ".1f"), f"{f3['manager_share'] * 100:.1f} %",
        fmt(None if f3["accepting_s"] is None else f3["accepting_s"] * 1000, ".1f"), f3["samples"]])
        for row, f3 in measured(s, "fig3")), ""]

def fig4(s, cfg, ref):
    rows = []
    for key, row in s["stacks"].items():
        f4 = row.get("fig4")
        how = {"corral": "PUT /workers (boot grace)", "builtin": "PUT /workers (READY=1)"}.get(
            key, "PUT /workers (exact readiness)" if key.startswith("proxy") else "TTIN")
        if f4 and "n/a" in f4:
            rows.append([row["label"], how, "n/a", "-", "-"])
        elif f4:
            rows.append([row["label"], how, fmt(f4["seconds"], ".3f"), vs(f4["seconds"], ref, "fig4", "seconds"),
                         fmt(f4["api_ready_seconds"], ".3f")])
    rows += [[st["label"], "-", "not available", "-", "-"] for st in s.get("unavailable", {}).values()]
    return [*text("fig4", cfg=cfg, n1=cfg.workers + 1), *map(line, rows), ""]

def fig5(s, cfg, ref):
    stack_rows = s["stacks"].values()
    targets = {t["what"]: t for t in s["targets"] if t["figure"] == 5}
    fill = {"hups": cfg.hups, "reps": cfg.reps, "n": cfg.workers, "n1": cfg.workers + 1, "slow": 4 * cfg.workers}
    rows, kinds = [], []
    for key, label in SCENARIOS:
        cells = [label.format(**fill)]
        for row in stack_rows:
            c = row.get("fig5", {}).get(key)
            cells.append("-" if c is None else f"{c['failed']} / {c['total']}")
            if c and c["kinds"]:
                kinds.append(f"- {label.format(**fill)}, {row['label']}: "
                             + ", ".join(f"{k}: {v}" for k, v in sorted(c["kinds"].items())))
        cells += [f"**{verdict(targets[f'zero failed where gunicorn drops any: {key}']['met'])}**",
                  f"**{tverdict(targets[f'corral --proxy zero failed: {key}'], short=True)}**"]
        rows.append(cells)
    exits = [f"{row['label']} {row['fig5']['term']['exit_s']:.1f} s" for row in stack_rows
             if row.get("fig5", {}).get("term", {}).get("exit_s") is not None]
    return [
        *text("fig5", cfg=cfg, slow=4 * cfg.workers),
        *table(["scenario", *(row["label"] for row in stack_rows), "target: corral 0 where gunicorn > 0",
                "target: corral --proxy 0"], "l" + "r" * len(stack_rows) + "ll", rows),
        *(["\nFailures by kind:\n"] + kinds if kinds else []),
        *(["\nTERM to manager exit: " + ", ".join(exits) + "."] if exits else []), ""]

def fig6(a):
    if "error" in a:
        return [TEXT["fig6"][0], f"not run: {a['error']}\n"]
    c = a.get("concurrency", {})
    if "not_available" in c:
        conc, other = f"Concurrency run: **not available: {c['not_available']}**.\n", "not available"
    elif "error" in c:
        conc, other = f"Concurrency run: **FAILED TO RUN: {c['error']}**.\n", "FAILED TO RUN"
    else:
        conc = f"Concurrency run: {c.get('target')}: **{verdict(c.get('target_met'))}**.\n" if c else None
        other = "-"

    def cells(x):
        """A run's summary as the side-by-side table's cells; `other`, the reason printed above, if it has none."""
        if x is None:
            return collections.defaultdict(lambda: other)
        return collections.defaultdict(lambda: "n/a", {k: v for k, v in x.items() if v is not None},
                                       failed_sent=f"{x['failed']} / {x['sent']}")
    return [
        *text("fig6", decision=fmt(a.get("scale_up_decision_s"), ".2f"), met=verdict(a.get("target_met"))),
        *([conc] if conc else []),
        *(text("fig6-side", cpu=cells(a["summary"]), conc=cells(c.get("summary"))) + [""] if "summary" in a else []),
        "CPU run:\n", *rows_table(a.get("rows")), "",
        *(["Concurrency run:\n", *rows_table(c.get("rows")), ""] if "rows" in c else [])]

def fig7(o):
    if "error" in o:
        return [TEXT["fig7"][0], f"not run: {o['error']}\n"]
    return [
        *text("fig7", o=o, median=fmt(o["cpu_per_pass_median_s"], ".2f"), max=fmt(o["cpu_per_pass_max_s"], ".2f"),
              cpu_met=verdict(o["cpu_per_pass_max_s"] <= o["targets"]["cpu_per_pass_s"]),
              rss=fmt(o["peak_rss_mib"], ".1f"), rss_met=verdict(o["peak_rss_mib"] <= o["targets"]["peak_rss_mib"])),
        *rows_table(o.get("rows")), "",
        *rows_table([{k: p[k] for k in PASS_COLUMNS} for p in o.get("passes", [])]), ""]

ROWS = json.loads(template("rows.json"))

def figure_rows(figure, v):
    """Figure 6's or 7's rows (templates/rows.json), each filled in from the values v."""
    return [{"metric": r["metric"].format(**v), "value": v[r["value"]], "unit": r["unit"].format(**v),
             **v.get(r.get("target"), {}), **({"note": r["note"].format(**v)} if "note" in r else {})}
            for r in ROWS[figure] if r.get("only", v.get("metric")) == v.get("metric")]

def rows_table(rows):
    if not rows:
        return []
    cols = list(dict.fromkeys(k for r in rows for k in r))
    cell = lambda v: "" if v is None else {True: "met", False: "MISSED"}[v] if isinstance(v, bool) else v
    return table(cols, "l" * len(cols), [[cell(r.get(c, "")) for c in cols] for r in rows])

def tls_sections(s, raw, cfg, machine):
    rows, gone, cert = s["stacks"], s.get("tls_unavailable", {}), s.get("tls_certificate")

    def front_table(fig, part, head, cells):
        """A row per front: cells(its summary) where measured, else "not available" (why) or "not measured"."""
        pad = " |" * (head[-2].count("|") - 3)
        for key in (PROXY, NGINX):
            row = rows.get(key, {})
            if key in gone.get(fig, {}):
                head.append(f"| {gone[fig][key]['label']} | not available: {gone[fig][key]['reason']} |{pad}")
            elif row.get(part) is None:
                head.append(f"| {row.get('label', key)} | not measured (see FAILED TO RUN) |{pad}")
            else:
                head.append(line([row["label"], *cells(row[part], rows.get(NGINX, {}).get(part, {}))]))
        return head + [t + "\n" for t in target_lines(s, int(part[3:]))]
    return [
        *front_table("h2", "fig8", text(
            "fig8", cfg=cfg, cert=f"{cert['key']} certificate ({cert['chain']})" if cert else "certificate",
            h2load=machine.get("h2load", "?"), openssl=machine.get("openssl", "?"),
            streams=cfg.h2_clients * cfg.h2_streams,
            warm=f"after a {cfg.h2_warmup}-s h2load warm-up" if cfg.h2_warmup else "no warm-up"), lambda f8, n: [
            fmt(f8["rps"]), vs(f8["rps"], n, "rps"), fmt(f8["p50_ms"], ".2f"), fmt(f8["p99_ms"], ".2f"), f8["errors"],
            fmt(f8["front_cpu_us_per_request"], ".1f"), ", ".join(f8["tls"]), ", ".join(f8["alpn"])]),
        *front_table("handshake", "fig9", text("fig9", cfg=cfg), lambda f9, n: [
            fmt(f9["handshakes_per_s"]), vs(f9["handshakes_per_s"], n, "handshakes_per_s"),
            fmt(f9["front_cpu_us_per_handshake"], ".1f"), f9["handshakes"], f9["reused"], f9["errors"],
            ", ".join(f9["tls"])]),
        *([f"Figures 8 and 9 took {raw['figures_8_9_s']:.0f} s.\n"] if "figures_8_9_s" in raw else [])]
