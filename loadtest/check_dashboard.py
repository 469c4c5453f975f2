#!/usr/bin/env python3
"""Check the Grafana dashboards in grafana/dashboards/ (stdlib only).

Static checks (always):
  - every dashboard parses as JSON and has a uid and a title;
  - every panel, including panels nested in rows, references the datasource by uid
    (gateway-prometheus), on the panel and on each of its targets;
  - every target has a non-empty expr and a refId unique within its panel; panel ids are unique.

Live checks (with --prometheus URL):
  - every target's expr is evaluated with GET /api/v1/query; a query that errors or returns
    an empty result fails the check. Grafana variables ($__rate_interval, ...) are replaced by 1m.

Prints one line per panel and exits 0 when everything passed, 1 otherwise.

  python3 loadtest/check_dashboard.py
  python3 loadtest/check_dashboard.py --prometheus http://127.0.0.1:9090
  python3 loadtest/check_dashboard.py --prometheus http://127.0.0.1:9090 --allow-empty "Config reloads"
"""

import argparse
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

DATASOURCE_UID = "gateway-prometheus"
DATASOURCE_TYPE = "prometheus"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_GLOB = "grafana/dashboards/*.json"

# Panel types that hold no queries.
NO_QUERY_TYPES = {"row", "text", "news", "dashlist", "alertlist", "annolist"}

# $__rate_interval, ${__interval}, $__range, ... -> 1m; $__interval_ms etc. -> 60000.
GRAFANA_VAR_MS = re.compile(r"\$\{?__\w+_ms\}?")
GRAFANA_VAR = re.compile(r"\$\{?__\w+\}?")


def iter_panels(panels):
    """Yield every panel, descending into rows (collapsed rows keep theirs in `panels`)."""
    for panel in panels or []:
        yield panel
        if panel.get("type") == "row":
            yield from iter_panels(panel.get("panels"))


def datasource_problem(ds, where):
    """Return a message when `ds` is not a reference to the gateway datasource by uid."""
    if not isinstance(ds, dict):
        return f"{where}: datasource must be {{\"type\": \"{DATASOURCE_TYPE}\", \"uid\": \"{DATASOURCE_UID}\"}}, got {ds!r}"
    if ds.get("uid") != DATASOURCE_UID:
        return f"{where}: datasource uid is {ds.get('uid')!r}, expected {DATASOURCE_UID!r}"
    if ds.get("type") not in (None, DATASOURCE_TYPE):
        return f"{where}: datasource type is {ds.get('type')!r}, expected {DATASOURCE_TYPE!r}"
    return None


def panel_label(dash_name, panel):
    return f"{dash_name} / [{panel.get('type', '?')}] {panel.get('title') or '(untitled)'} (id {panel.get('id')})"


def static_check(dash_name, dash):
    """Return (dashboard-level problems, [(panel, targets, panel problems)]) for one dashboard.

    Panels without queries (rows, text) are skipped; everything else must use the gateway
    datasource by uid, on the panel and on every target.
    """
    dash_problems = []
    checked = []
    if not dash.get("uid"):
        dash_problems.append(f"{dash_name}: dashboard has no uid")
    if not dash.get("title"):
        dash_problems.append(f"{dash_name}: dashboard has no title")
    seen_ids = {}
    for panel in iter_panels(dash.get("panels")):
        label = panel_label(dash_name, panel)
        pid = panel.get("id")
        if pid is not None:
            if pid in seen_ids:
                dash_problems.append(f"{label}: panel id {pid} also used by {seen_ids[pid]!r}")
            seen_ids[pid] = panel.get("title")
        targets = panel.get("targets") or []
        if panel.get("type") in NO_QUERY_TYPES and not targets:
            continue
        problems = []
        msg = datasource_problem(panel.get("datasource"), "panel")
        if msg:
            problems.append(msg)
        if not targets:
            problems.append("no targets")
        refids = set()
        for i, target in enumerate(targets):
            where = f"target {target.get('refId') or f'#{i}'}"
            if target.get("refId") in refids:
                problems.append(f"{where}: duplicate refId")
            refids.add(target.get("refId"))
            msg = datasource_problem(target.get("datasource"), where)
            if msg:
                problems.append(msg)
            if not (target.get("expr") or "").strip():
                problems.append(f"{where}: empty expr")
        checked.append((panel, targets, problems))
    return dash_problems, checked


def to_promql(expr):
    """Replace Grafana's built-in variables so Prometheus can evaluate the expression."""
    return GRAFANA_VAR.sub("1m", GRAFANA_VAR_MS.sub("60000", expr))


def query(prometheus, expr, timeout):
    """Evaluate `expr` now; return (number of series, None) or (None, error message)."""
    url = prometheus.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as err:
        try:
            body = json.load(err)
        except (ValueError, OSError):
            return None, f"HTTP {err.code}"
    except (urllib.error.URLError, OSError, ValueError) as err:
        return None, f"request failed: {err}"
    if body.get("status") != "success":
        return None, f"{body.get('errorType', 'error')}: {body.get('error', body)}"
    data = body.get("data") or {}
    result = data.get("result")
    if data.get("resultType") == "scalar":
        return 1, None
    return len(result or []), None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dashboards", nargs="*", type=Path,
                        help=f"dashboard JSON files (default: {DEFAULT_GLOB} in the repo)")
    parser.add_argument("--prometheus", metavar="URL",
                        help="evaluate every query against this Prometheus, e.g. http://127.0.0.1:9090")
    parser.add_argument("--allow-empty", metavar="TITLE", action="append", default=[],
                        help="panel title (substring) whose queries may return no series; repeatable")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per query (default 10)")
    args = parser.parse_args()

    files = args.dashboards or sorted(REPO_ROOT.glob(DEFAULT_GLOB))
    if not files:
        print(f"FAIL no dashboards found ({DEFAULT_GLOB})")
        return 1

    if args.prometheus:
        _, err = query(args.prometheus, "vector(1)", args.timeout)
        if err:
            print(f"FAIL cannot query Prometheus at {args.prometheus}: {err}")
            return 1

    failures = 0
    panels_seen = 0
    for path in files:
        name = path.name
        try:
            dash = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            print(f"FAIL {path}: {err}")
            failures += 1
            continue
        dash_problems, checked = static_check(name, dash)
        for msg in dash_problems:
            failures += 1
            print(f"FAIL {msg}")
        for panel, targets, problems in checked:
            panels_seen += 1
            label = panel_label(name, panel)
            lines = list(problems)
            series = []
            notes = []
            title = (panel.get("title") or "").lower()
            empty_ok = any(s.lower() in title for s in args.allow_empty)
            if args.prometheus and not problems:
                for target in targets:
                    expr = to_promql(target["expr"])
                    ref = target.get("refId", "?")
                    count, err = query(args.prometheus, expr, args.timeout)
                    if err:
                        lines.append(f"target {ref}: query failed: {err}\n       expr: {expr}")
                    elif count == 0 and not empty_ok:
                        lines.append(f"target {ref}: empty result (no such series yet; labelled "
                                     f"counters appear once a label set is first used)\n       expr: {expr}")
                    else:
                        series.append(count)
                        if count == 0:
                            notes.append(f"{ref} empty (allowed)")
            if lines:
                failures += 1
                print(f"FAIL {label}")
                for line in lines:
                    print(f"     {line}")
            else:
                detail = f"{len(targets)} quer{'y' if len(targets) == 1 else 'ies'}"
                if args.prometheus:
                    detail += ", series " + "/".join(str(n) for n in series)
                if notes:
                    detail += "; " + ", ".join(notes)
                print(f"ok   {label}: {detail}")

    mode = f"live against {args.prometheus}" if args.prometheus else "static"
    verdict = "FAILED" if failures else "passed"
    print(f"{verdict}: {len(files)} dashboard(s), {panels_seen} panel(s) checked ({mode}), {failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
