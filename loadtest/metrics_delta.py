#!/usr/bin/env python3
"""What changed between two scrapes of the gateway's admin /metrics (stdlib only).

  metrics_delta.py BEFORE AFTER [LABEL ...]

BEFORE and AFTER are files holding the Prometheus text of `GET /metrics`; an empty BEFORE
means "from zero". Prints one line of integers, separated by spaces:

  total 2xx 429 5xx other retries rate_limited none unlisted COUNT(LABEL)...

- total, 2xx, 429, 5xx, other: requests counted by gateway_requests_total{route,backend,method,status},
  summed over method and backend and split by status (other = anything else, e.g. 499 or 404);
- retries: gateway_upstream_retries_total summed over backend;
- rate_limited: gateway_rate_limited_total;
- none: requests no backend answered (backend="none": 429, 502, 503);
- unlisted: requests answered by a backend not named on the command line;
- then, for each LABEL given (a backend address as the proxy labels it, e.g. 127.0.0.1:9001),
  the requests that backend answered.

run_ab.sh reads this line with `read -r -a`; it exits 2 with a message on unreadable input.
"""

import re
import sys
from collections import defaultdict

SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(path):
    """Samples as {(name, frozenset(labels)): value}."""
    samples = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip() or line.startswith("#"):
                continue
            m = SAMPLE.match(line)
            if not m:
                continue
            name, labels, value = m.groups()
            try:
                number = float(value)
            except ValueError:
                continue
            key = (name, frozenset(LABEL.findall(labels or "")))
            samples[key] = number
    return samples


def delta(before, after):
    """after - before per sample (a sample missing before counts from zero)."""
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def main(argv):
    if len(argv) < 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    before_path, after_path, wanted = argv[1], argv[2], argv[3:]
    try:
        before = parse(before_path) if before_path else {}
        after = parse(after_path)
    except OSError as e:
        print(f"metrics_delta.py: {e}", file=sys.stderr)
        return 2
    d = delta(before, after)

    by_status = defaultdict(int)
    by_backend = defaultdict(int)
    retries = 0
    rate_limited = 0
    for (name, labels), value in d.items():
        n = int(round(value))
        labels = dict(labels)
        if name == "gateway_requests_total":
            by_status[labels.get("status", "")] += n
            by_backend[labels.get("backend", "")] += n
        elif name == "gateway_upstream_retries_total":
            retries += n
        elif name == "gateway_rate_limited_total":
            rate_limited += n

    total = sum(by_status.values())
    ok = sum(n for s, n in by_status.items() if s.startswith("2"))
    limited = by_status.get("429", 0)
    server = sum(n for s, n in by_status.items() if s.startswith("5"))
    other = total - ok - limited - server
    none = by_backend.get("none", 0)
    unlisted = sum(n for b, n in by_backend.items() if b != "none" and b not in wanted)
    fields = [total, ok, limited, server, other, retries, rate_limited, none, unlisted]
    fields += [by_backend.get(label, 0) for label in wanted]
    print(" ".join(str(x) for x in fields))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
