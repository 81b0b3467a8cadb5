"""Figures 1-5, 8 and 9 reduced from the raw measurements (rounds,
samples, repetitions) to one number per stack and figure, and the issues'
targets judged against the reference (gunicorn + UvicornWorker): corral's
shared-socket targets (issue 1), proxy mode's (issue 11) and HTTP/2 + TLS
at the front (issue 13). A target whose stack did not run is "not
measured", with the reason."""

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
SCENARIOS = [
    ("hup", "rolling restart (HUP) x{hups}"),
    ("scale_down", "scale down {n1} -> {n} x{reps}"),
    ("sigkill", "SIGKILL of one worker x{reps}"),
    ("term", "TERM, {slow} slow requests in flight"),
]


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def medians(items, *keys):
    """{key: the median of items' values for it} for each key, in order."""
    return {k: median(i.get(k) for i in items) for k in keys}


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
                **medians(idle, "manager_rss_kib", "manager_idle_cpu_percent", "workers_rss_kib"),
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
