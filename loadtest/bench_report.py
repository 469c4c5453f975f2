#!/usr/bin/env python3
"""Turns the raw output of loadtest/bench.sh into tables and a chart.

  python3 loadtest/bench_report.py --raw RAW_DIR --out loadtest/results

Reads RAW_DIR/{meta.json, main.tsv, sweep.tsv, clients.tsv, conns.tsv} and the wrk / client
outputs they name (and, when present, after.json, timing.tsv and the /proc/stat snapshots
stat_main_start, stat_main_end, stat_end); writes OUT/bench.md (also printed), bench.json,
bench.csv (main table), latency_sweep.csv and latency_sweep.png (when there is sweep data).

Main part: main.tsv has one row per wrk run (slot); a system's slots of one round are pooled
(req/s = requests / seconds, CPU = ticks / requests, p50/p99 = mean of the slots'). Every ratio
is computed per round, then summarised by the median of the per-round ratios, their min-max and
a distribution-free 95% confidence interval of the median: the order statistics x(k), x(n+1-k)
of the n per-round ratios with the largest k for which 2 P(Binomial(n, 1/2) <= k-1) <= 0.05
(the binomial / sign-test interval; its exact coverage is reported, and is below 95% when
n < 6: then the interval is min-max). A ratio resolves a 5% difference when the interval's
half-width is <= 2.5% of the median (and the coverage is >= 95%).
"""

import argparse
import csv
import json
import re
import statistics
import sys
from math import comb
from pathlib import Path

OURS = "ours"
RATIOS = [  # (label, numerator system, denominator system)
    ("ours / bare", "ours", "bare"),
    ("ours / nginx", "ours", "nginx"),
    ("ours / haproxy", "ours", "haproxy"),
    ("ours+log / ours (access log)", "ours+log", "ours"),
    ("ours / ours-norl (rate limiter)", "ours", "ours-norl"),
    ("ours+case / ours (header case kept)", "ours+case", "ours"),
    ("bare / nginx", "bare", "nginx"),
]
METRICS = [("rps", "req/s"), ("cpu_s_per_100k", "CPU / req"), ("p50_ms", "p50"), ("p99_ms", "p99")]
LEVEL = 0.95
RESOLVE = 0.025  # CI half-width (fraction of the median) that resolves a 5% difference
TARGETS = [  # (ratio label, metric, ">=" or "<=", bound): verdicts from the CI
    ("ours / bare", "rps", ">=", 0.90),
    ("ours / bare", "p99_ms", "<=", 1.10),
]

UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def to_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * UNITS[m.group(2)] if m else None


def parse_wrk(path):
    """requests, seconds, rps, p50/p90/p99 ms, non-2xx and socket errors from wrk --latency."""
    text = Path(path).read_text(errors="replace")
    out = {"requests": 0, "seconds": None, "rps": 0.0, "p50_ms": None, "p90_ms": None,
           "p99_ms": None, "non2xx": 0, "socket_errors": 0}
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", text)
    if m:
        out["requests"] = int(m.group(1))
        out["seconds"] = to_ms(m.group(2) + m.group(3)) / 1000
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        out["rps"] = float(m.group(1))
    for pct in ("50", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", text, re.M)
        if m:
            out[f"p{pct}_ms"] = to_ms(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        out["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["socket_errors"] = sum(int(x) for x in m.groups())
    return out


def read_tsv(path):
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f, delimiter="\t"))


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def median_ci(values, level=LEVEL):
    """Distribution-free CI of the median: (low, high, coverage) from the order statistics.

    x(k) .. x(n+1-k) (1-based, sorted) covers the population median with probability
    1 - 2 P(Bin(n, 1/2) <= k-1); k is the largest with that >= level, or 1 when none is (n < 6
    for 95%: then min-max with its lower coverage).
    """
    v = sorted(x for x in values if x is not None)
    n = len(v)
    if not n:
        return None, None, None
    tail = (1 - level) / 2
    cdf = 0.0  # P(Bin(n, 1/2) <= k-1)
    k, cov_k = 1, 1 - 2 * comb(n, 0) / 2 ** n
    for kk in range(1, (n + 1) // 2 + 1):
        cdf_kk = cdf + comb(n, kk - 1) / 2 ** n
        if cdf_kk > tail:
            break
        k, cov_k, cdf = kk, 1 - 2 * cdf_kk, cdf_kk
    return v[k - 1], v[n - k], max(cov_k, 0.0)


def ratio_stats(per_round):
    """Median, spread and the median's CI of per-round ratios, and whether 5% is resolved."""
    v = [x for x in per_round if x is not None]
    if not v:
        return {"n": 0, "median": None, "ci_low": None, "ci_high": None, "ci_coverage": None,
                "min": None, "max": None, "ci_half_width_pct": None, "resolves_5pct": None,
                "per_round": []}
    med = statistics.median(v)
    lo, hi, cov = median_ci(v)
    hw = (hi - lo) / 2 / med if med else None
    return {"n": len(v), "median": med, "ci_low": lo, "ci_high": hi, "ci_coverage": cov,
            "min": min(v), "max": max(v), "ci_half_width_pct": None if hw is None else hw * 100,
            "resolves_5pct": bool(hw is not None and hw <= RESOLVE and cov >= LEVEL),
            "per_round": [None if x is None else round(x, 4) for x in per_round]}


def verdict(st, op, bound):
    """yes / no / undecided: is the ratio's median op bound, judged by its CI?"""
    if not st or st["median"] is None or st["ci_coverage"] < LEVEL:
        return "undecided"
    lo, hi = st["ci_low"], st["ci_high"]
    if op == ">=":
        return "yes" if lo >= bound else "no" if hi < bound else "undecided"
    return "yes" if hi <= bound else "no" if lo > bound else "undecided"


def cpu_per_100k(ticks, requests, clk_tck):
    if not requests:
        return None
    return ticks / clk_tck / requests * 100_000


def fmt(v, digits=2):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}"


def md_table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" if i else "---" for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main_section(raw, meta):
    clk = meta["clk_tck"]
    slots = {}  # system -> round -> list of per-slot dicts
    for row in read_tsv(raw / "main.tsv"):
        w = parse_wrk(row["file"])
        w["ticks"] = int(row["ticks"])
        w["hwm_kb"] = int(row["hwm_kb"])
        w["rss_kb"] = int(row["rss_kb"])
        slots.setdefault(row["system"], {}).setdefault(int(row["round"]), []).append(w)
    rounds = {}  # system -> list of per-round dicts (its slots pooled)
    for system, by_round in slots.items():
        for rnd, ws in sorted(by_round.items()):
            req = sum(w["requests"] for w in ws)
            secs = [w["seconds"] for w in ws]
            rps = req / sum(secs) if all(secs) else statistics.mean(w["rps"] for w in ws)
            p50 = [w["p50_ms"] for w in ws if w["p50_ms"] is not None]
            p99 = [w["p99_ms"] for w in ws if w["p99_ms"] is not None]
            rounds.setdefault(system, []).append({
                "round": rnd, "slots": len(ws), "requests": req, "rps": rps,
                "p50_ms": statistics.mean(p50) if p50 else None,
                "p99_ms": statistics.mean(p99) if p99 else None,
                "cpu_s_per_100k": cpu_per_100k(sum(w["ticks"] for w in ws), req, clk),
                "hwm_kb": max(w["hwm_kb"] for w in ws), "rss_kb": ws[-1]["rss_kb"],
                "errors": sum(w["non2xx"] + w["socket_errors"] for w in ws)})
    summary = {}
    for system, rs in rounds.items():
        summary[system] = {
            "rounds_measured": len(rs),
            "slots": sum(r["slots"] for r in rs),
            "rps": median([r["rps"] for r in rs]),
            "p50_ms": median([r["p50_ms"] for r in rs]),
            "p99_ms": median([r["p99_ms"] for r in rs]),
            "cpu_s_per_100k": median([r["cpu_s_per_100k"] for r in rs]),
            "peak_rss_mb": max(r["hwm_kb"] for r in rs) / 1024,
            "requests": sum(r["requests"] for r in rs),
            "errors": sum(r["errors"] for r in rs),
            "rounds": rs,
        }
    ratios = []
    for label, a, b in RATIOS:
        if a not in rounds or b not in rounds:
            continue
        by_round_b = {r["round"]: r for r in rounds[b]}
        per = {k: [] for k, _ in METRICS}
        paired = []
        for ra in rounds[a]:
            rb = by_round_b.get(ra["round"])
            if not rb:
                continue
            paired.append(ra["round"])
            for k in per:
                per[k].append(ra[k] / rb[k] if ra[k] and rb[k] else None)
        stats = {k: ratio_stats(v) for k, v in per.items()}
        ratios.append({"label": label, "numerator": a, "denominator": b, "rounds": paired,
                       **{k: stats[k]["median"] for k in per},
                       "stats": stats,
                       "rps_per_round": [round(x, 3) for x in per["rps"] if x is not None]})
    return summary, ratios


def cpu_stat(path):
    """(total, idle+iowait, steal) jiffies from a saved /proc/stat cpu line, or None."""
    try:
        f = [int(x) for x in path.read_text().split()[1:9]]
    except (OSError, ValueError):
        return None
    return sum(f), f[3] + f[4], f[7]


def cpu_usage(raw, start, end):
    """Steal and busy (not idle, not stolen) shares of all CPUs between two snapshots."""
    a, b = cpu_stat(raw / start), cpu_stat(raw / end)
    if not a or not b or b[0] <= a[0]:
        return None
    total = b[0] - a[0]
    steal = b[2] - a[2]
    return {"steal_pct": steal / total * 100,
            "busy_pct": (total - (b[1] - a[1]) - steal) / total * 100}


def ratios_md(ratios):
    """The ratio part of bench.md: target verdicts, the ratio table, per-round req/s ratios.

    Takes main_section's ratios (or bench.json's "ratios"); returns (lines, verdicts)."""
    def r3(x):
        return "–" if x is None else f"{x:.3f}"

    md = []
    by_label = {r["label"]: r for r in ratios}
    verdicts = []
    for label, metric, op, bound in TARGETS:
        if label in by_label:
            st = by_label[label]["stats"][metric]
            name = dict(METRICS)[metric]
            sym = {">=": "≥", "<=": "≤"}[op]
            verdicts.append({"ratio": label, "metric": metric, "op": op, "bound": bound,
                             "verdict": verdict(st, op, bound), "median": st["median"],
                             "ci_low": st["ci_low"], "ci_high": st["ci_high"]})
            md.append(f"**{label} {name} meets {sym} {bound:.2f}: {verdicts[-1]['verdict']}** "
                      f"(median {r3(st['median'])}, 95% CI {r3(st['ci_low'])}–{r3(st['ci_high'])}, "
                      f"{st['n']} rounds; yes = the whole interval {sym} {bound:.2f}, no = the whole "
                      "interval on the other side, undecided = the interval contains it).")
            md.append("")
    md.append(
        "Ratios: the median of the per-round ratios (req/s > 1 is better for the numerator, CPU and "
        "latency < 1 are better), a distribution-free 95% confidence interval of that median (order "
        "statistics of the per-round ratios, binomial method: x(k)..x(n+1-k) with the largest k whose "
        "coverage 1 − 2·P(Bin(n, ½) ≤ k−1) is ≥ 95%; no bootstrap), its half-width in % of the median, "
        "and the spread (min–max). **Resolves 5%**: the half-width is ≤ 2.5% (a 5% difference "
        "between the systems would not fit inside the interval).")
    md.append("")
    rows = []
    for r in ratios:
        for i, (k, name) in enumerate(METRICS):
            st = r["stats"][k]
            if st["median"] is None:
                rows.append([r["label"] if i == 0 else "", name, 0, "–", "–", "–", "–", "–"])
                continue
            cov = "" if st["ci_coverage"] >= LEVEL else f" ({st['ci_coverage'] * 100:.0f}% only)"
            rows.append([r["label"] if i == 0 else "", name, st["n"], f"**{st['median']:.3f}**",
                         f"{st['ci_low']:.3f}–{st['ci_high']:.3f}{cov}",
                         f"±{st['ci_half_width_pct']:.2f}%", f"{st['min']:.3f}–{st['max']:.3f}",
                         "yes" if st["resolves_5pct"] else
                         "no" if st["ci_coverage"] >= LEVEL else "no (< 6 rounds)"])
    md.append(md_table(["ratio", "metric", "rounds", "median", "95% CI of the median", "CI half-width",
                        "min–max", "resolves 5%"], rows))
    md += ["", "Per-round req/s ratios (in round order):", ""]
    md.append(md_table(["ratio", "req/s per round"],
                       [[r["label"], " ".join(f"{x:.2f}" for x in r["rps_per_round"])] for r in ratios]))
    return md, verdicts


def sweep_section(raw, meta):
    clk = meta["clk_tck"]
    points = []
    for row in read_tsv(raw / "sweep.tsv"):
        w = parse_wrk(row["file"])
        points.append({"system": row["system"], "connections": int(row["connections"]),
                       "rps": w["rps"], "p50_ms": w["p50_ms"], "p90_ms": w["p90_ms"],
                       "p99_ms": w["p99_ms"], "errors": w["non2xx"] + w["socket_errors"],
                       "cpu_s_per_100k": cpu_per_100k(int(row["ticks"]), w["requests"], clk)})
    return points


def clients_section(raw, meta):
    clk = meta["clk_tck"]
    runs = {}
    for row in read_tsv(raw / "clients.tsv"):
        try:
            res = json.loads(Path(row["file"]).read_text())
        except (OSError, ValueError):
            res = {"requests": 0, "statuses": {}, "errors": {"no output": 1}, "rps": None,
                   "latency_ms": {}}
        res["round"] = int(row["round"])
        res["cpu_s_per_100k"] = cpu_per_100k(int(row["ticks"]), res["requests"], clk)
        res["hwm_kb"] = int(row["hwm_kb"])
        runs.setdefault(row["system"], []).append(res)
    summary = {}
    for system, rs in runs.items():
        statuses = {}
        for r in rs:
            for k, v in r["statuses"].items():
                statuses[k] = statuses.get(k, 0) + v
        summary[system] = {
            "rps": median([r["rps"] for r in rs]),
            "p50_ms": median([r["latency_ms"].get("p50") for r in rs]),
            "p99_ms": median([r["latency_ms"].get("p99") for r in rs]),
            "cpu_s_per_100k": median([r["cpu_s_per_100k"] for r in rs]),
            "peak_rss_mb": max(r["hwm_kb"] for r in rs) / 1024,
            "requests": sum(r["requests"] for r in rs),
            "statuses": statuses,
            "errors": sum(sum(r["errors"].values()) for r in rs),
            "timed_out": any(r.get("timed_out") for r in rs),
            "runs": rs,
        }
    return summary


def conns_section(raw):
    out = {}
    for row in read_tsv(raw / "conns.tsv"):
        new = int(row["new"])
        requests = int(row["requests"])
        metric = int(row["metric_new"]) if row["metric_new"] else None
        per = (lambda n: n / requests * 10_000 if requests > 0 and n is not None else None)
        out.setdefault(row["system"], {})[row["phase"]] = {
            "requests_at_backends": requests, "new_at_backends": new, "new_per_10k": per(new),
            "metric_new": metric, "metric_new_per_10k": per(metric),
        }
    return out


def chart(points, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = []
    for p in points:
        if p["system"] not in systems:
            systems.append(p["system"])
    fig, (ax_lat, ax_rps) = plt.subplots(1, 2, figsize=(12, 4.8))
    for i, s in enumerate(systems):
        pts = sorted((p for p in points if p["system"] == s), key=lambda p: p["connections"])
        xs = [p["connections"] for p in pts]
        color = "0.55" if s == "direct" else f"C{i}"
        ax_lat.plot(xs, [p["p99_ms"] for p in pts], "o-", color=color, label=f"{s} p99")
        ax_lat.plot(xs, [p["p50_ms"] for p in pts], "s--", color=color, alpha=0.6,
                    label=f"{s} p50")
        ax_rps.plot(xs, [p["rps"] for p in pts], "o-", color=color, label=s)
    for ax in (ax_lat, ax_rps):
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 16, 64, 256])
        ax.set_xticklabels(["1", "16", "64", "256"])
        ax.set_xlabel("concurrent connections (wrk -c)")
        ax.grid(True, which="both", alpha=0.3)
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("latency (ms, log scale)")
    ax_lat.set_title("Latency vs load: p99 (solid), p50 (dashed); direct = no proxy")
    ax_lat.legend(fontsize=7, ncol=2)
    ax_rps.set_ylabel("requests/s")
    ax_rps.set_title("Throughput vs load")
    ax_rps.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--raw", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    meta = json.loads((args.raw / "meta.json").read_text())
    args.out.mkdir(parents=True, exist_ok=True)

    summary, ratios = main_section(args.raw, meta)
    sweep = sweep_section(args.raw, meta)
    clients = clients_section(args.raw, meta)
    conns = conns_section(args.raw)

    after = {}
    if (args.raw / "after.json").exists():
        after = json.loads((args.raw / "after.json").read_text())
    meta.update(after)
    timing = read_tsv(args.raw / "timing.tsv")
    usage_main = cpu_usage(args.raw, "stat_main_start", "stat_main_end")
    usage_all = cpu_usage(args.raw, "stat_main_start", "stat_end")
    meta["cpu_usage_main"], meta["cpu_usage_after_setup"] = usage_main, usage_all
    meta["timing_s"] = {t["part"]: float(t["seconds"]) for t in timing}

    md = ["# Gateway benchmark", ""]
    v = meta["versions"]
    machine = (f"**Machine:** {meta['cpu_model']}"
               + (f" ({meta['cpu_id']})" if meta.get("cpu_id") else "")
               + f", {meta['cpus']} CPUs (`nproc`)"
               + (f", {meta['hypervisor']} guest" if meta.get("hypervisor") not in (None, "", "none") else "")
               + (f", {meta['mem_total_gib']} GiB RAM" if meta.get("mem_total_gib") else "")
               + f", kernel {meta.get('kernel') or meta['host']} ({meta['host'].split()[-1]})"
               + f" · load average (1/5/15 min) before {meta['load_before']}"
               + (f", after {meta['load_after']}" if meta.get("load_after") else ""))
    if usage_main:
        machine += (f" · during the main part: CPUs {usage_main['busy_pct']:.0f}% busy, "
                    f"{usage_main['steal_pct']:.1f}% stolen by the hypervisor")
    md.append(machine)
    md.append("")
    md.append(f"{meta['date']} · git {meta['git']} · nginx {v['nginx']}, HAProxy {v['haproxy']}, "
              f"wrk {v['wrk']}, rustc {v['rustc']}")
    if meta.get("elapsed_s") is not None:
        parts = " · ".join(f"{t['part']} {float(t['seconds']):.0f} s" for t in timing)
        md += ["", f"Wall time of the run: {meta['elapsed_s'] / 60:.1f} min ({parts})."]
    md.append("")
    secondaries = meta.get("secondaries")
    if secondaries:
        design = (
            f"{meta['rounds']} rounds of 5 back-to-back `wrk` slots of {meta['duration_s']} s: `ours bare S "
            "bare ours` or `bare ours S ours bare` (in turn): ours and bare twice per round, symmetric "
            "about its middle (a drift within the round cancels out of their ratio), and in the middle "
            "one secondary system S, the secondaries in turn ("
            + ", ".join(f"`{x}`" for x in secondaries)
            + f"): each is measured in one round out of {len(secondaries)}. Per round a system's slots "
            "are pooled; per system the median over its rounds.")
    else:
        design = f"{meta['rounds']} interleaved rounds of {meta['duration_s']} s; medians over rounds."
    md.append(
        f"Each proxy: {meta['workers']} worker(s)/thread(s), round robin over 2 nginx backends "
        f"(`return 200 \"ok\"`, {meta['backend_workers']} worker(s) each), upstream keepalive, "
        f"X-Forwarded-For. wrk -t{meta['wrk_threads']} -c{meta['connections']}. " + design + " "
        "CPU = utime+stime of the proxy's processes per 100k requests; peak RSS = VmHWM "
        "(summed over nginx's master and workers). `direct` = wrk straight to backend 1.")
    md.append("")
    order = ["ours", "ours+log", "ours-norl", "ours+case", "bare", "nginx", "haproxy", "direct"]
    rows, csv_rows = [], []
    for s in order + sorted(set(summary) - set(order)):
        if s not in summary:
            continue
        v = summary[s]
        rows.append([f"`{s}`", v["rounds_measured"], fmt(v["rps"], 0), fmt(v["p50_ms"], 3),
                     fmt(v["p99_ms"], 3), fmt(v["cpu_s_per_100k"], 2), fmt(v["peak_rss_mb"], 1),
                     fmt(v["errors"])])
        csv_rows.append({"system": s, "rounds": v["rounds_measured"],
                         "rps_median": round(v["rps"] or 0, 1),
                         "p50_ms": round(v["p50_ms"], 3) if v["p50_ms"] else None,
                         "p99_ms": round(v["p99_ms"], 3) if v["p99_ms"] else None,
                         "cpu_s_per_100k": round(v["cpu_s_per_100k"] or 0, 4),
                         "peak_rss_mb": round(v["peak_rss_mb"], 2), "requests": v["requests"],
                         "errors": v["errors"]})
    md.append(md_table(["system", "rounds", "req/s", "p50 ms", "p99 ms", "CPU s / 100k req",
                        "peak RSS MB", "errors"], rows))
    md.append("")

    lines, meta["verdicts"] = ratios_md(ratios)
    md += lines

    if sweep:
        md += ["", f"## Latency vs load ({meta['sweep_duration_s']} s per point)", "",
               "Each cell: req/s · p50 ms · p99 ms. Chart: `latency_sweep.png`.", ""]
        conns_list = sorted({p["connections"] for p in sweep})
        systems = []
        for p in sweep:
            if p["system"] not in systems:
                systems.append(p["system"])
        rows = []
        for s in systems:
            row = [f"`{s}`"]
            for c in conns_list:
                p = next((p for p in sweep if p["system"] == s and p["connections"] == c), None)
                row.append(f"{fmt(p['rps'], 0)} · {fmt(p['p50_ms'], 3)} · {fmt(p['p99_ms'], 3)}"
                           if p else "–")
            rows.append(row)
        md.append(md_table(["system"] + [f"c={c}" for c in conns_list], rows))
        try:
            chart(sweep, args.out / "latency_sweep.png")
        except ImportError:
            print("matplotlib missing: pip install matplotlib (chart skipped)", file=sys.stderr)
        with (args.out / "latency_sweep.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(sweep[0].keys()))
            w.writeheader()
            w.writerows(sweep)

    if clients:
        md += ["", f"## {meta['clients']:,} distinct client addresses",
               "",
               f"loadtest/many_clients.py: {meta['clients']:,} clients from distinct 127.x.y.z "
               f"addresses (new addresses every run), one connection each, "
               f"{meta['client_requests']} requests per connection, 100 clients at a time; "
               f"{meta['client_rounds']} interleaved rounds, medians. The Python client is the "
               "bottleneck, so compare CPU per request, not req/s.", ""]
        rows = []
        for s in ["ours", "ours-norl", "bare"]:
            if s not in clients:
                continue
            v = clients[s]
            st = ", ".join(f"{k}: {n:,}" for k, n in sorted(v["statuses"].items()))
            rows.append([f"`{s}`", fmt(v["rps"], 0), fmt(v["p50_ms"], 3), fmt(v["p99_ms"], 3),
                         fmt(v["cpu_s_per_100k"], 2), fmt(v["peak_rss_mb"], 1), st,
                         fmt(v["errors"])])
        md.append(md_table(["system", "req/s", "p50 ms", "p99 ms", "CPU s / 100k req",
                            "peak RSS MB", "statuses", "errors"], rows))
        if "ours" in clients and "ours-norl" in clients:
            a, b = clients["ours"], clients["ours-norl"]
            if a["cpu_s_per_100k"] and b["cpu_s_per_100k"]:
                md += ["", f"Rate limiter with {meta['clients']:,} new clients per run: CPU per "
                       f"request ×{a['cpu_s_per_100k'] / b['cpu_s_per_100k']:.3f} (on/off)."]

    if conns:
        md += ["", f"## New upstream connections per 10,000 requests ({meta['conn_workers']} workers)",
               "",
               f"One wrk -c{meta['connections']} run of {meta['conn_warm_s']} + "
               f"{meta['conn_duration_s']} s per proxy, started fresh. Connections accepted and "
               "requests served counted at the backends (nginx stub_status). `cold`: the whole "
               "run, pool filling included; `steady`: the window after the first "
               f"{meta['conn_warm_s']} s. For ours also "
               "`gateway_upstream_connections_total{reused=\"false\"}` over the same spans.", ""]
        rows = []
        for s in ["ours", "bare", "nginx", "haproxy"]:
            if s not in conns:
                continue
            c, st = conns[s].get("cold", {}), conns[s].get("steady", {})
            rows.append([f"`{s}`", fmt(c.get("new_at_backends")), fmt(c.get("requests_at_backends")),
                         fmt(c.get("new_per_10k"), 2), fmt(st.get("new_at_backends")),
                         fmt(st.get("requests_at_backends")), fmt(st.get("new_per_10k"), 2),
                         fmt(c.get("metric_new")) + " / " + fmt(st.get("metric_new"))
                         if s == "ours" else "–"])
        md.append(md_table(["system", "cold: new", "cold: requests", "cold: per 10k",
                            "steady: new", "steady: requests", "steady: per 10k",
                            "ours metric cold / steady"], rows))

    text = "\n".join(md) + "\n"
    (args.out / "bench.md").write_text(text)
    print(text)
    with (args.out / "bench.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(csv_rows[0].keys()) if csv_rows else ["system"])
        w.writeheader()
        w.writerows(csv_rows)

    def strip(d):
        return {k: v for k, v in d.items() if k not in ("file",)}

    (args.out / "bench.json").write_text(json.dumps({
        "meta": meta, "main": summary, "ratios": ratios, "sweep": sweep,
        "clients": {k: {kk: vv for kk, vv in v.items()} for k, v in clients.items()},
        "new_connections": conns,
    }, indent=1, default=strip) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
