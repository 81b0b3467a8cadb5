"""From raw measurements to the summary, the markdown table and the chart.

`summarize()` reduces the raw results (rounds, samples, repetitions) to one
number per stack and figure, with its ratio to the reference stack
(Gunicorn + UvicornWorker) and each target judged met or MISSED: corral's
shared-socket targets (issue 1) and proxy mode's (issue 11: throughput
against nginx -> gunicorn and gunicorn direct, the proxy's CPU per request,
the mixed load's p99, 0 failed in figure 5) and HTTP/2 + TLS at the front
(issue 13: h2load throughput over TLS and the TLS handshake rate of
corral --proxy, each against nginx). A target whose stack did not run is
"not measured", with the reason.
`markdown()` renders that as the table printed and written to results.md;
`chart()` draws results.png.
"""

import statistics

REF = "gunicorn"
CORRAL = "corral"
PROXY = "proxy"
NGINX = "nginx"
PROXY_CPU_US = 25.0  # the proxy's own CPU per request, at most
PROXY_VS_NGINX = 1.0  # Django throughput with --proxy, at least, x nginx -> gunicorn
PROXY_VS_REF = 0.95  # ... and x gunicorn direct
H2_VS_NGINX = 1.0  # figure 8: HTTP/2 over TLS throughput, corral --proxy x nginx, at least
HANDSHAKE_VS_NGINX = 1.0  # figure 9: TLS handshakes per second, corral --proxy x nginx, at least
# Figure 7's per-pass table (operator_scale.json's passes).
PASS_COLUMNS = ["kind", "cpu_s", "wall_s", "gets", "puts", "rss_mib", "open_fds", "api_connections"]
SCENARIOS = [
    ("hup", "rolling restart (HUP) x{hups}"),
    ("scale_down", "scale down {n1} -> {n} x{reps}"),
    ("sigkill", "SIGKILL of one worker x{reps}"),
    ("term", "TERM, {slow} slow requests in flight"),
]


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def ratio(a, b):
    return a / b if a is not None and b else None


def busiest(cpu):
    """The busiest worker's share of all workers' CPU (1/N = even)."""
    return max(cpu) / sum(cpu) if cpu and sum(cpu) > 0 else None


def failures(counts):
    return sum(v for k, v in counts.items() if k != "ok")


def wrk_summary(runs):
    """Mean req/s, p50 and p99 of wrk results, and their errors summed."""
    return {
        "rps": mean(w["rps"] for w in runs),
        "p50_ms": mean(w["p50_ms"] for w in runs),
        "p99_ms": mean(w["p99_ms"] for w in runs),
        "errors": sum(w["errors"] + w["non_2xx"] for w in runs),
    }


def summarize(raw, stacks, cfg):
    """One row per stack per figure, errors collected, targets judged."""
    errors = []
    s = {"stacks": {}, "errors": errors, "unavailable": raw.get("unavailable", {})}
    for st in stacks:
        row = {"label": st.label}
        tp = raw["throughput"].get(st.key, {})
        row["fig1"] = {}
        idle, under, starts, mixed = [], [], [], []
        for app, rounds in tp.items():
            ok = [r for r in rounds if "wrk" in r]
            for r in rounds:
                if "error" in r:
                    errors.append(f"figure 1 {st.label} {app}: {r['error']}")
            if ok:
                row["fig1"][app] = dict(
                    wrk_summary([r["wrk"] for r in ok]),
                    busiest_worker_share=mean(busiest(r.get("under_load", {}).get("workers_cpu_s")) for r in ok),
                    rounds=len(ok))
            for r in rounds:
                if "mixed" in r:
                    mixed.append(r["mixed"])
                if "idle" in r:
                    idle.append(r["idle"])
                if "under_load" in r and app in ("django", "builtin") and "manager_cpu_percent" in r["under_load"]:
                    under.append(r["under_load"])
                if "startup" in r and app in ("django", "builtin"):
                    starts.append(r["startup"])
        if mixed:
            row["fig1b"] = dict(wrk_summary(mixed), rounds=len(mixed))
        if idle:
            row["fig2"] = {
                "manager_rss_kib": median(i["manager_rss_kib"] for i in idle),
                "manager_idle_cpu_percent": median(i["manager_idle_cpu_percent"] for i in idle),
                "workers_rss_kib": median(i["workers_rss_kib"] for i in idle),
                "manager_cpu_under_load_percent": median(u["manager_cpu_percent"] for u in under),
                "manager_peak_rss_under_load_kib": max((u["manager_peak_rss_kib"] for u in under), default=None),
                # The manager process's own CPU over the requests served in the
                # Django wrk run: for --proxy the proxy's cost per request.
                "manager_cpu_us_per_request": median(u.get("manager_cpu_us_per_request") for u in under),
                "front_rss_kib": median(i.get("front_rss_kib") for i in idle),
                "front_cpu_us_per_request": median(u.get("front_cpu_us_per_request") for u in under),
            }
        else:
            errors.append(f"figure 2 {st.label}: no idle measurement")
        lc = raw["lifecycle"].get(st.key, {})
        if "startup" in lc:
            starts.append(lc["startup"])
        for extra in raw["startup_extra"].get(st.key, []):
            if "error" in extra:
                errors.append(f"figure 3 {st.label}: {extra['error']}")
            else:
                starts.append(extra)
        if starts:
            row["fig3"] = {
                "first_200_s": median(x["first_200_s"] for x in starts),
                "spawned_s": median(x["spawned_s"] for x in starts),
                "accepting_s": median(x["accepting_s"] for x in starts),
                "manager_share": median(x["manager_share"] for x in starts),
                "samples": len(starts),
            }
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
                row["fig5"][key] = {"failed": failures(sc["counts"]), "total": sum(sc["counts"].values()),
                                    "kinds": {k: v for k, v in sc["counts"].items() if k != "ok"}}
                if key == "term":
                    row["fig5"][key]["exit_s"] = sc.get("exit_s")
            elif lc:
                errors.append(f"figure 5 {st.label} {key}: {sc.get('error', 'not run')}")
        s["stacks"][st.key] = row
    summarize_tls(s, raw.get("tls", {}), errors)
    judge(s)
    return s


def summarize_tls(s, tls, errors):
    """Figures 8 and 9 into the fronts' rows: row['fig8'] (h2load) and
    row['fig9'] (s_time), the mean over rounds; s['tls_unavailable']."""
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
                if part is None:
                    continue
                if "error" in part:
                    errors.append(f"{name} {row['label']}: {part['error']}")
                else:
                    into.append((part, r.get("negotiated", {})))
        if h2:
            row["fig8"] = {
                "rps": mean(p["rps"] for p, _ in h2),
                "p50_ms": mean(p["p50_ms"] for p, _ in h2),
                "p99_ms": mean(p["p99_ms"] for p, _ in h2),
                "requests": sum(p["requests"] for p, _ in h2),
                "errors": sum((p["failed"] or 0) + (p["errored"] or 0) + (p["timeout"] or 0) + (p["non_2xx"] or 0)
                              for p, _ in h2),
                "front_cpu_us_per_request": median(p.get("front_cpu_us_per_request") for p, _ in h2),
                "tls": sorted({f"{p['tls_protocol']} {p['cipher']} {p['server_temp_key']}" for p, _ in h2}),
                "alpn": sorted({p["application_protocol"] for p, _ in h2}),
                "rounds": len(h2),
            }
        if hs:
            row["fig9"] = {
                "handshakes_per_s": mean(p["handshakes_per_s"] for p, _ in hs),
                "handshakes": sum(p["handshakes"] for p, _ in hs),
                "errors": sum(len(p["errors"]) for p, _ in hs),
                "reused": sum(p["reused"] for p, _ in hs),
                "front_cpu_us_per_handshake": median(p.get("front_cpu_us_per_handshake") for p, _ in hs),
                "tls": sorted({f"{n.get('version')} {n.get('cipher')}" for _, n in hs}),
                "rounds": len(hs),
            }


def judge(s):
    """Ratios to the reference and the issue's targets."""
    ref, cor = s["stacks"].get(REF, {}), s["stacks"].get(CORRAL, {})
    targets = []
    for app in ("hello", "django"):
        r = ratio(cor.get("fig1", {}).get(app, {}).get("rps"), ref.get("fig1", {}).get(app, {}).get("rps"))
        targets.append({"figure": 1, "what": f"corral + uvicorn throughput >= 1.0x gunicorn ({app})",
                        "value": r, "unit": "x", "met": None if r is None else r >= 1.0})
    r = ratio(cor.get("fig2", {}).get("manager_rss_kib"), ref.get("fig2", {}).get("manager_rss_kib"))
    targets.append({"figure": 2, "what": "corral manager RSS <= 1/4 of the gunicorn master",
                    "value": r, "unit": "x", "met": None if r is None else r <= 0.25})
    for key, _ in SCENARIOS:
        g = ref.get("fig5", {}).get(key)
        c = cor.get("fig5", {}).get(key)
        if g is None or c is None:
            met = None
        elif g["failed"] == 0:
            met = "n/a"  # the target applies where gunicorn drops requests
        else:
            met = c["failed"] == 0
        targets.append({"figure": 5, "what": f"zero failed where gunicorn drops any: {key}",
                        "value": None if c is None else c["failed"], "unit": "failed", "met": met})
    judge_proxy(s, targets)
    judge_tls(s, targets)
    s["targets"] = targets


def judge_tls(s, targets):
    """Issue 13's targets: corral --proxy >= 1.0x nginx on figures 8 and 9."""
    rows, gone = s["stacks"], s.get("tls_unavailable", {})
    for figure, fig, field, what, want in (
        (8, "h2", "rps", f"corral --proxy HTTP/2 (h2 over TLS) Django throughput >= {H2_VS_NGINX:.2f}x "
                         "nginx (HTTP/2, TLS) -> gunicorn", H2_VS_NGINX),
        (9, "handshake", "handshakes_per_s", f"corral --proxy TLS handshakes per second >= {HANDSHAKE_VS_NGINX:.2f}x "
                                             "nginx", HANDSHAKE_VS_NGINX),
    ):
        key = f"fig{figure}"
        r = ratio(rows.get(PROXY, {}).get(key, {}).get(field), rows.get(NGINX, {}).get(key, {}).get(field))
        t = {"figure": figure, "what": what, "value": r, "unit": "x", "met": None if r is None else r >= want}
        if r is None:
            why = [f"{u['label']}: not available: {u['reason']}" for k, u in gone.get(fig, {}).items()]
            t["why"] = "; ".join(why) or "not measured in this run (see FAILED TO RUN)"
        targets.append(t)


def judge_proxy(s, targets):
    """Proxy mode's targets (issue 11), each with why when not measured."""
    rows = s["stacks"]
    pro, ref, ngx = rows.get(PROXY, {}), rows.get(REF, {}), rows.get(NGINX, {})
    gone = s.get("unavailable", {})

    def why(*keys):
        """Why a target over these stacks has no value: a stack not run."""
        out = [f"{gone[k]['label']} not available: {gone[k]['reason']}" for k in keys if k in gone]
        return "; ".join(out) or None

    def add(figure, what, value, unit, met, keys):
        t = {"figure": figure, "what": what, "value": value, "unit": unit, "met": met}
        if met is None:
            t["why"] = why(*keys) or "not measured in this run"
        targets.append(t)

    rps = lambda row: row.get("fig1", {}).get("django", {}).get("rps")
    r = ratio(rps(pro), rps(ngx))
    add(1, f"corral --proxy Django throughput >= {PROXY_VS_NGINX:.2f}x nginx -> gunicorn", r, "x",
        None if r is None else r >= PROXY_VS_NGINX, (PROXY, NGINX))
    r = ratio(rps(pro), rps(ref))
    add(1, f"corral --proxy Django throughput >= {PROXY_VS_REF:.2f}x gunicorn direct", r, "x",
        None if r is None else r >= PROXY_VS_REF, (PROXY, REF))
    us = pro.get("fig2", {}).get("manager_cpu_us_per_request")
    add(2, f"corral --proxy: the proxy's own CPU per request <= {PROXY_CPU_US:g} us", us, "us",
        None if us is None else us <= PROXY_CPU_US, (PROXY,))
    r = ratio(pro.get("fig1b", {}).get("p99_ms"), ref.get("fig1b", {}).get("p99_ms"))
    add("1b", "corral --proxy p99 of the mixed Django load <= gunicorn direct's", r, "x",
        None if r is None else r <= 1.0, (PROXY, REF))
    for key, _ in SCENARIOS:
        c = pro.get("fig5", {}).get(key)
        add(5, f"corral --proxy zero failed: {key}", None if c is None else c["failed"], "failed",
            None if c is None else c["failed"] == 0, (PROXY,))


def target(s, figure, what):
    return next(t for t in s["targets"] if t["figure"] == figure and t["what"] == what)


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


def fmt(x, spec=".0f", none="-"):
    return none if x is None else format(x, spec)


def xr(x):
    return "-" if x is None else f"{x:.2f}x"


def markdown(s, raw, cfg, machine, stacks):
    ref = s["stacks"].get(REF, {})
    L = []
    add = L.append
    add(f"# corral benchmark\n")
    add(f"{machine['date']}, {machine['cpu_model']} x {machine['cpus']} CPUs, Linux {machine['kernel']}, "
        f"Python {machine['python']}; {cfg.workers} workers in every stack; wall time {fmt(raw.get('wall_s'), '.0f')} s"
        f"{' (SMOKE RUN: tiny durations, numbers meaningless)' if cfg.smoke else ''}.\n")
    add("Versions: " + "; ".join(f"{st.label}: {machine['versions'].get(st.key, '?')}" for st in stacks) + ".\n")
    add("Ratios are to the reference, gunicorn + UvicornWorker. The load generator runs on the same "
        f"{machine['cpus']} CPUs as the servers, identically for every stack. nginx (Debian) -> gunicorn runs "
        f"nginx in the foreground from a generated config ({cfg.nginx_workers} worker process, 127.0.0.1 only, "
        "pooled keep-alive HTTP/1.1 to gunicorn's Unix socket); its \"manager\" below is the gunicorn master, "
        "and nginx's own processes are shown as the front.\n")
    for st in s.get("unavailable", {}).values():
        add(f"**{st['label']}: not available: {st['reason']}.** Its figures and targets are not measured.\n")
    targets = {(t["figure"], t["what"]): t for t in s["targets"]}

    add(f"## Figure 1: throughput and latency\n")
    add(f"wrk -t{cfg.wrk_threads} -c{cfg.connections} --latency, keep-alive, GET /, {cfg.duration} s per run after "
        f"{cfg.warmup} s warm-up, mean of {max(cfg.rounds, 1)} round(s) (stacks in alternating order), each on a fresh start. "
        "The built-in worker serves its own app (the floor: no Python), shown under hello. "
        "\"Busiest worker\" is that worker's share of the workers' CPU during the run "
        f"({100 / cfg.workers:.0f} % = connections spread evenly).\n")
    add("| stack | app | req/s | vs gunicorn | p50 ms | p99 ms | errors | busiest worker |")
    add("|---|---|---:|---:|---:|---:|---:|---:|")
    for app in ("hello", "django"):
        for key, row in s["stacks"].items():
            f1 = row.get("fig1", {}).get("builtin" if key == "builtin" and app == "hello" else app)
            if f1 is None:
                continue
            r = ratio(f1["rps"], ref.get("fig1", {}).get(app, {}).get("rps"))
            add(f"| {row['label']} | {app} | {fmt(f1['rps'])} | {xr(r)} | {fmt(f1['p50_ms'], '.2f')} | "
                f"{fmt(f1['p99_ms'], '.2f')} | {f1['errors']} | "
                f"{fmt(None if f1['busiest_worker_share'] is None else f1['busiest_worker_share'] * 100)} % |")
    for t in s["targets"]:
        if t["figure"] == 1:
            add(f"\nTarget: {t['what']}: {xr(t['value'])}, **{tverdict(t)}**")
    add("")

    add("## Figure 1b: mixed Django load\n")
    add(f"wrk -t{cfg.wrk_threads} -c{cfg.connections} as above, on the same instance right after the Django run, "
        f"{cfg.mixed_duration} s: every {cfg.mixed_every}th request on each connection is GET /cpu/{cfg.mixed_cpu_ms} "
        f"(a view that holds its worker's CPU for {cfg.mixed_cpu_ms} ms), the rest GET /. With the shared socket "
        "and nginx each keep-alive connection stays on the worker that accepted it, so a fast request can wait "
        "behind a slow one on a busy worker while the other is idle; corral --proxy sends each request to the "
        "worker with the fewest in flight.\n")
    add("| stack | req/s | p50 ms | p99 ms | p99 vs gunicorn | errors |")
    add("|---|---:|---:|---:|---:|---:|")
    for key, row in s["stacks"].items():
        m = row.get("fig1b")
        if m is None:
            continue
        r = ratio(m["p99_ms"], ref.get("fig1b", {}).get("p99_ms"))
        add(f"| {row['label']} | {fmt(m['rps'])} | {fmt(m['p50_ms'], '.2f')} | {fmt(m['p99_ms'], '.2f')} | {xr(r)} | "
            f"{m['errors']} |")
    for t in s["targets"]:
        if t["figure"] == "1b":
            add(f"\nTarget: {t['what']}: {xr(t['value'])}, **{tverdict(t)}**")
    add("")

    add("## Figure 2: manager footprint\n")
    add(f"The supervising process alone (gunicorn master, uvicorn's supervisor, corral), Django app: "
        f"resident memory after start-up, CPU over {cfg.idle} s idle, CPU and peak memory during the Django "
        "wrk run. Workers' memory for context. \"CPU per request\" is the manager process's own user + system "
        "CPU (/proc/<pid>/stat, not its workers) during the Django wrk run over the requests served in it "
        "(corral --proxy: its corral_http_requests_total; the others: wrk's count): for corral --proxy, "
        "which is in the request path, the proxy's own cost; for the others, which are not, their "
        "supervision's. The front column is nginx's processes (master and workers) for nginx -> gunicorn.\n")
    add("| stack | manager RSS MiB | vs gunicorn | idle CPU % | CPU under load % | peak RSS under load MiB | "
        "workers RSS MiB | manager CPU per request us | front RSS MiB | front CPU per request us |")
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key, row in s["stacks"].items():
        f2 = row.get("fig2")
        if not f2:
            continue
        r = ratio(f2["manager_rss_kib"], ref.get("fig2", {}).get("manager_rss_kib"))
        mib = lambda k: None if f2.get(k) is None else f2[k] / 1024
        add(f"| {row['label']} | {fmt(mib('manager_rss_kib'), '.1f')} | {xr(r)} | "
            f"{fmt(f2['manager_idle_cpu_percent'], '.2f')} | {fmt(f2['manager_cpu_under_load_percent'], '.2f')} | "
            f"{fmt(mib('manager_peak_rss_under_load_kib'), '.1f')} | {fmt(mib('workers_rss_kib'), '.1f')} | "
            f"{fmt(f2.get('manager_cpu_us_per_request'), '.1f')} | {fmt(mib('front_rss_kib'), '.1f')} | "
            f"{fmt(f2.get('front_cpu_us_per_request'), '.1f')} |")
    t = targets[(2, "corral manager RSS <= 1/4 of the gunicorn master")]
    add(f"\nTarget: {t['what']}: {xr(t['value'])}, **{verdict(t['met'])}**\n")
    t = targets[(2, f"corral --proxy: the proxy's own CPU per request <= {PROXY_CPU_US:g} us")]
    add(f"Target: {t['what']}: {tvalue(t)}, **{tverdict(t)}**\n")

    add("## Figure 3: start to first 200\n")
    add("From spawning the manager to the first 200 on /healthz (Django), median of the samples. The "
        "manager's own start-up ends when it spawns its first worker (seen in /proc): its share of the "
        "whole is that over the time to the first 200. \"Port accepting\" is the first TCP connect that "
        "succeeds; corral and gunicorn listen before starting workers, uvicorn --workers only binds in "
        "the supervisor and its workers call listen().\n")
    add("| stack | first 200 ms | vs gunicorn | first worker spawned ms | manager share | port accepting ms | samples |")
    add("|---|---:|---:|---:|---:|---:|---:|")
    for key, row in s["stacks"].items():
        f3 = row.get("fig3")
        if not f3:
            continue
        r = ratio(f3["first_200_s"], ref.get("fig3", {}).get("first_200_s"))
        add(f"| {row['label']} | {fmt(f3['first_200_s'] * 1000)} | {xr(r)} | {fmt(f3['spawned_s'] * 1000, '.1f')} | "
            f"{f3['manager_share'] * 100:.1f} % | {fmt(None if f3['accepting_s'] is None else f3['accepting_s'] * 1000, '.1f')} | "
            f"{f3['samples']} |")
    add("")

    add("## Figure 4: scale up, request to the new worker serving\n")
    add(f"From PUT /workers (corral) or TTIN (gunicorn, uvicorn) asking for worker {cfg.workers + 1} to the "
        "first answer from a new pid on GET /pid (2 clients polling, fresh connections), Django, no other "
        f"load; median of {cfg.reps}. The old workers are paused (SIGSTOP) until that answer, so only the new "
        "worker can take the polls: on an idle server the kernel hands almost every connection to an "
        "already awake worker. For corral, when GET /workers first says ready (Uvicorn does not "
        "notify readiness, so in shared-socket mode corral counts it ready after --boot-grace, 1 s). "
        "corral --proxy has exact readiness (a worker is ready when it answers on its own socket) and "
        "nothing is paused: corral sends each poll to the worker with the fewest in flight, ties rotating, "
        "so a new worker gets one within a few polls (each client polls every 10 ms) of being ready. "
        "nginx -> gunicorn is not timed: the same gunicorn master and TTIN as gunicorn direct, and nginx's "
        "pooled connections to the paused workers would hold the polls.\n")
    add("| stack | how | seconds | vs gunicorn | corral says ready s |")
    add("|---|---|---:|---:|---:|")
    for key, row in s["stacks"].items():
        f4 = row.get("fig4")
        if not f4:
            continue
        how = {"corral": "PUT /workers (boot grace)", "builtin": "PUT /workers (READY=1)",
               "proxy": "PUT /workers (exact readiness)"}.get(key, "TTIN")
        if "n/a" in f4:
            add(f"| {row['label']} | {how} | n/a | - | - |")
            continue
        r = ratio(f4["seconds"], ref.get("fig4", {}).get("seconds"))
        add(f"| {row['label']} | {how} | {fmt(f4['seconds'], '.3f')} | {xr(r)} | {fmt(f4['api_ready_seconds'], '.3f')} |")
    for st in s.get("unavailable", {}).values():
        add(f"| {st['label']} | - | not available | - | - |")
    add("")

    add("## Figure 5: failed requests\n")
    add(f"{cfg.clients} clients in a closed loop, each request on a fresh connection (Connection: close), "
        "GET / on Django, from before the event until it has settled plus "
        f"{cfg.tail} s. A fresh connection per request is the fair measure: with keep-alive, a client "
        "reusing a connection the server just closed sees an error that clients retry, which says nothing "
        "about the server. Every failure counts, by kind below (refused, reset unanswered, ...). "
        f"TERM: {4 * cfg.workers} requests to /delay/{cfg.slow_ms} in flight when the manager gets TERM "
        "(no other load); each must complete. SIGKILL necessarily loses what the killed worker had "
        "accepted, in every stack. Cells: failed / requests.\n")
    names = [row["label"] for row in s["stacks"].values()]
    add("| scenario | " + " | ".join(names) + " | target: corral 0 where gunicorn > 0 | target: corral --proxy 0 |")
    add("|---|" + "---:|" * len(names) + "---|---|")
    fill = {"hups": cfg.hups, "reps": cfg.reps, "n": cfg.workers, "n1": cfg.workers + 1, "slow": 4 * cfg.workers}
    for key, label in SCENARIOS:
        cells = []
        for row in s["stacks"].values():
            c = row.get("fig5", {}).get(key)
            cells.append("-" if c is None else f"{c['failed']} / {c['total']}")
        t = targets[(5, f"zero failed where gunicorn drops any: {key}")]
        tp = targets[(5, f"corral --proxy zero failed: {key}")]
        add(f"| {label.format(**fill)} | " + " | ".join(cells) + f" | **{verdict(t['met'])}** | **{tverdict(tp, short=True)}** |")
    kinds = []
    for key, label in SCENARIOS:
        for row in s["stacks"].values():
            c = row.get("fig5", {}).get(key)
            if c and c["kinds"]:
                kinds.append(f"- {label.format(**fill)}, {row['label']}: " +
                             ", ".join(f"{k}: {v}" for k, v in sorted(c["kinds"].items())))
    if kinds:
        add("\nFailures by kind:\n")
        L.extend(kinds)
    exits = [f"{row['label']} {row['fig5']['term']['exit_s']:.1f} s" for row in s["stacks"].values()
             if row.get("fig5", {}).get("term", {}).get("exit_s") is not None]
    if exits:
        add("\nTERM to manager exit: " + ", ".join(exits) + ".")
    add("")

    add("## Figure 6: autoscaling with the operator\n")
    a = raw.get("autoscale", {})
    if "error" in a:
        add(f"not run: {a['error']}\n")
    else:
        d = a.get("scale_up_decision_s")
        add("Two runs of one pod under an open-loop load step (bench/autoscale.py, autoscale.json, "
            "autoscale.png and autoscale-concurrency.png): `type: CPU` on CPU-bound requests to the built-in "
            "worker, and `type: Concurrency` on I/O-bound requests (Django's async /delay/50) behind corral "
            "--proxy with --worker-concurrency set.\n")
        add(f"CPU run: scale-up decision {fmt(d, '.2f')} s after the load step; target <= 2 s: "
            f"**{verdict(a.get('target_met'))}**.\n")
        c = a.get("concurrency", {})
        if "not_available" in c:
            add(f"Concurrency run: **not available: {c['not_available']}**.\n")
        elif "error" in c:
            add(f"Concurrency run: **FAILED TO RUN: {c['error']}**.\n")
        elif c:
            add(f"Concurrency run: {c.get('target')}: **{verdict(c.get('target_met'))}**.\n")
        if "summary" in a:
            add("| figure | CPU run | Concurrency run |")
            add("|---|---:|---:|")
            for label, x, y in autoscale_side_by_side(a):
                add(f"| {label} | {fmt_cell(x)} | {fmt_cell(y)} |")
            add("")
        add("CPU run:\n")
        L.extend(rows_table(a.get("rows")))
        add("")
        if "rows" in c:
            add("Concurrency run:\n")
            L.extend(rows_table(c.get("rows")))
            add("")

    add("## Figure 7: the operator at scale\n")
    o = raw.get("operator_scale", {})
    if "error" in o:
        add(f"not run: {o['error']}\n")
    else:
        cpu_ok = o["cpu_per_pass_max_s"] <= o["targets"]["cpu_per_pass_s"]
        rss_ok = o["peak_rss_mib"] <= o["targets"]["peak_rss_mib"]
        add(f"`corral operator` reconciling one WorkerAutoscaler over {o['pods']} pods (a real API server; the "
            f"pods' admin API served by one fake process speaking the real contract), {o['measured_passes']} "
            f"measured passes every {o['poll_interval_s']} s, scaling (every pod PUT) and steady (every pod read) "
            f"alternating. CPU per pass: median {fmt(o['cpu_per_pass_median_s'], '.2f')} s, max "
            f"{fmt(o['cpu_per_pass_max_s'], '.2f')} s; target <= {o['targets']['cpu_per_pass_s']:g} s: "
            f"**{verdict(cpu_ok)}**. Peak RSS {fmt(o['peak_rss_mib'], '.1f')} MiB; target <= "
            f"{o['targets']['peak_rss_mib']:g} MiB: **{verdict(rss_ok)}** (bench/operator_scale.py, "
            "operator_scale.json, method in docs/benchmarks/operator-scale.md).\n")
        L.extend(rows_table(o.get("rows")))
        add("")
        L.extend(rows_table([{k: p[k] for k in PASS_COLUMNS} for p in o.get("passes", [])]))
        add("")

    L.extend(tls_sections(s, raw, cfg, machine))

    add("## Targets\n")
    add("| figure | target | value | verdict |")
    add("|---|---|---:|---|")
    for t in s["targets"]:
        add(f"| {t['figure']} | {t['what']} | {tvalue(t)} | **{tverdict(t)}** |")
    add("")

    if s["errors"]:
        add("## FAILED TO RUN\n")
        L.extend(f"- {e}" for e in s["errors"])
        add("")
    return "\n".join(L) + "\n"


def autoscale_side_by_side(a):
    """The CPU and the Concurrency run's key figures (bench/autoscale.py's
    own table, so that both print the same)."""
    import autoscale
    return autoscale.side_by_side(a)


def fmt_cell(v):
    return "n/a" if v is None else str(v)


def rows_table(rows):
    """autoscale.json's rows: a list of dicts (or of lists, header first)."""
    if not rows or not isinstance(rows, list):
        return []
    if all(isinstance(r, dict) for r in rows):
        cols = list(dict.fromkeys(k for r in rows for k in r))
        body = [[r.get(c, "") for c in cols] for r in rows]
    elif all(isinstance(r, (list, tuple)) for r in rows):
        cols, body = rows[0], rows[1:]
    else:
        return [f"- {r}" for r in rows]
    out = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    cell = lambda v: "" if v is None else {True: "met", False: "MISSED"}.get(v, v) if isinstance(v, bool) else str(v)
    out += ["| " + " | ".join(cell(v) for v in r) + " |" for r in body]
    return out


def chart(s, path, cfg):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
            a.annotate(missing if v is None else fmt_.format(v), (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                       ha="center", va="bottom", fontsize=8)

    # 1: throughput, grouped by app.
    a = ax[0][0]
    width = 0.8 / len(keys)
    for i, k in enumerate(keys):
        vals = []
        for app in ("hello", "django"):
            f = rows[k].get("fig1", {}).get("builtin" if k == "builtin" and app == "hello" else app)
            vals.append(f["rps"] if f else 0)
        a.bar([x + i * width for x in range(2)], vals, width, label=rows[k]["label"], color=colors[i])
    a.set_xticks([x + width * (len(keys) - 1) / 2 for x in range(2)], ["hello ASGI", "Django"])
    a.set_title(f"1. throughput (wrk -c{cfg.connections}, keep-alive; log scale)", fontsize=10)
    a.set_ylabel("requests/s")
    a.set_yscale("log")
    for rect in a.patches:
        if rect.get_height() > 0:
            a.annotate(f"{rect.get_height():.0f}", (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                       ha="center", va="bottom", fontsize=7)
    a.legend(fontsize=7)

    a = ax[0][1]
    for i, k in enumerate(keys):
        vals = []
        for app in ("hello", "django"):
            f = rows[k].get("fig1", {}).get("builtin" if k == "builtin" and app == "hello" else app)
            vals.append(f["p99_ms"] if f and f["p99_ms"] else 0)
        m = rows[k].get("fig1b")
        vals.append(m["p99_ms"] if m and m["p99_ms"] else 0)
        a.bar([x + i * width for x in range(3)], vals, width, label=rows[k]["label"], color=colors[i])
    a.set_xticks([x + width * (len(keys) - 1) / 2 for x in range(3)],
                 ["hello ASGI", "Django", f"Django mixed\n({100 // cfg.mixed_every} % /cpu/{cfg.mixed_cpu_ms})"])
    a.set_title("1, 1b. p99 latency", fontsize=10)
    a.set_ylabel("ms")

    bars(ax[0][2], [rows[k].get("fig2", {}).get("manager_rss_kib", 0) / 1024 for k in keys],
         "2. manager process RSS (idle)", "MiB", "{:.1f}")
    a = ax[1][0]
    first = [rows[k].get("fig3", {}).get("first_200_s") for k in keys]
    own = [rows[k].get("fig3", {}).get("spawned_s") for k in keys]
    bars(a, first, "3. start to first 200 (Django); dark: manager's own start", "s", "{:.2f}")
    a.bar(range(len(keys)), [v or 0 for v in own], color="black", alpha=0.5, width=0.5)
    bars(ax[1][1], [rows[k].get("fig4", {}).get("seconds") for k in keys],
         "4. scale up: request to new worker serving", "s", "{:.2f}")

    a = ax[1][2]
    for i, k in enumerate(keys):
        vals = [rows[k].get("fig5", {}).get(sc, {}).get("failed", 0) for sc, _ in SCENARIOS]
        a.bar([x + i * width for x in range(len(SCENARIOS))], vals, width, label=rows[k]["label"], color=colors[i])
    a.set_xticks([x + width * (len(keys) - 1) / 2 for x in range(len(SCENARIOS))],
                 [f"HUP x{cfg.hups}", f"scale down\nx{cfg.reps}", f"SIGKILL\nx{cfg.reps}", "TERM,\nslow in flight"],
                 fontsize=8)
    for rect in a.patches:
        a.annotate(f"{rect.get_height():.0f}", (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                   ha="center", va="bottom", fontsize=7)
    a.set_title("5. failed requests (fresh connection per request)", fontsize=10)
    a.set_ylabel("requests")

    # 8, 9: the two TLS fronts.
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


def tls_sections(s, raw, cfg, machine=None):
    """Figures 8 and 9 of results.md, each with its target."""
    L = []
    add = L.append
    rows = s["stacks"]
    gone = s.get("tls_unavailable", {})
    cert = s.get("tls_certificate")
    targets = {t["figure"]: t for t in s["targets"] if t["figure"] in (8, 9)}
    common = ("corral --proxy (`-b https://127.0.0.1:PORT --certfile F --keyfile K`) and nginx (`listen ... ssl "
              "http2`, `ssl_protocols TLSv1.2 TLSv1.3`, 1 worker process) -> gunicorn + UvicornWorker, Django, "
              f"{cfg.workers} workers, a fresh instance per round, {cfg.tls_rounds} round(s) in alternating order; "
              "both serve the same " + (f"{cert['key']} certificate ({cert['chain']})" if cert else "certificate")
              + " made with openssl for this run. The front's CPU is corral's manager process (the front is a "
              "thread of it) and nginx's master and worker, from /proc (10-ms ticks).")
    common += (f" Clients: {machine.get('h2load', '?')} and {machine.get('openssl', '?')}, on 127.0.0.1."
               if machine else "")
    verdict_line = lambda t: f"\nTarget: {t['what']}: {xr(t['value'])}, **{tverdict(t)}**\n"

    def front_table(fig, part, columns, cells):
        """The table of `columns` (name, markdown alignment), one row per
        front: `cells(f)` after the label, f being the row's summary of
        `part`, where measured; else "not available" (with the reason) or
        "not measured"."""
        add("| " + " | ".join(name for name, _ in columns) + " |")
        add("|" + "|".join(align for _, align in columns) + "|")
        pad = " |" * (len(columns) - 2)
        for key in (PROXY, NGINX):
            row = rows.get(key, {})
            f = row.get(part)
            if key in gone.get(fig, {}):
                u = gone[fig][key]
                add(f"| {u['label']} | not available: {u['reason']} |{pad}")
            elif f is None:
                add(f"| {row.get('label', key)} | not measured (see FAILED TO RUN) |{pad}")
            else:
                add(f"| {row['label']} | {cells(f)} |")

    add("## Figure 8: HTTP/2 over TLS, throughput\n")
    warm = f"after a {cfg.h2_warmup}-s h2load warm-up" if cfg.h2_warmup else "no warm-up"
    add(f"{common} h2load -c{cfg.h2_clients} -m{cfg.h2_streams} -t{cfg.h2_threads} -D {cfg.h2_duration} "
        f"(h2 by ALPN; {cfg.h2_clients * cfg.h2_streams} streams in flight), GET /, {warm}; p50/p99 from "
        "h2load's per-request log. Errors: failed, errored, timed out and non-2xx.\n")
    ngx8 = rows.get(NGINX, {}).get("fig8", {})
    front_table("h2", "fig8", [("stack", "---"), ("req/s", "---:"), ("vs nginx", "---:"), ("p50 ms", "---:"),
                               ("p99 ms", "---:"), ("errors", "---:"), ("front CPU per request us", "---:"),
                               ("TLS (h2load)", "---"), ("ALPN", "---")], lambda f8: (
        f"{fmt(f8['rps'])} | {xr(ratio(f8['rps'], ngx8.get('rps')))} | "
        f"{fmt(f8['p50_ms'], '.2f')} | {fmt(f8['p99_ms'], '.2f')} | {f8['errors']} | "
        f"{fmt(f8['front_cpu_us_per_request'], '.1f')} | {', '.join(f8['tls'])} | {', '.join(f8['alpn'])}"))
    if 8 in targets:
        add(verdict_line(targets[8]))

    add("## Figure 9: TLS handshakes per second\n")
    add(f"The fronts, instances and certificate of figure 8. {cfg.handshake_clients} `openssl s_time -connect 127.0.0.1:PORT -new` at once for about "
        f"{cfg.handshake_duration} s: each a loop of connect, full handshake (no session resumption), close, "
        "no request, so the front's TLS is measured and not Django; the rate is the sum over the processes of "
        "their handshakes over their own wall time. The client runs on the same cores and costs about as "
        "much per handshake as the server, so the front's CPU per handshake is shown beside. "
        "\"Reused\" counts resumed sessions (must be 0).\n")
    ngx9 = rows.get(NGINX, {}).get("fig9", {})
    front_table("handshake", "fig9", [("stack", "---"), ("handshakes/s", "---:"), ("vs nginx", "---:"),
                                      ("front CPU per handshake us", "---:"), ("handshakes", "---:"),
                                      ("reused", "---:"), ("errors", "---:"), ("TLS", "---")], lambda f9: (
        f"{fmt(f9['handshakes_per_s'])} | {xr(ratio(f9['handshakes_per_s'], ngx9.get('handshakes_per_s')))} | "
        f"{fmt(f9['front_cpu_us_per_handshake'], '.1f')} | {f9['handshakes']} | {f9['reused']} | "
        f"{f9['errors']} | {', '.join(f9['tls'])}"))
    if 9 in targets:
        add(verdict_line(targets[9]))
    if "figures_8_9_s" in raw:
        add(f"Figures 8 and 9 took {raw['figures_8_9_s']:.0f} s.\n")
    return L
