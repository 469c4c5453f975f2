#!/usr/bin/env bash
# Static checks: shell scripts, and the shipped deployment files: docker compose, Prometheus config and rules,
# Grafana dashboard wiring, and the systemd unit.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_packages docker-compose:docker-compose promtool:prometheus python3:python3 systemd-analyze:systemd \
  shellcheck:shellcheck
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

echo "==> shell scripts (bash -n, shellcheck)"
for f in scripts/*.sh loadtest/*.sh .ci/run; do bash -n "$f"; done
shellcheck -x -S warning scripts/*.sh loadtest/*.sh

echo "==> docker-compose.yml"
docker-compose -f docker-compose.yml config -q
services=$(docker-compose -f docker-compose.yml config --services | sort | tr '\n' ' ')
for s in proxy backend1 backend2 backend3 prometheus grafana; do
  case " $services " in *" $s "*) ;; *) echo "service $s missing (have: $services)" >&2; exit 1 ;; esac
done
echo "services: $services"

echo "==> docker-compose.yml: safe defaults (ports on 127.0.0.1, Grafana without a shipped password)"
# As a user gets it: none of the variables that open it up set.
env -u COMPOSE_BIND -u GRAFANA_ADMIN_PASSWORD docker-compose -f docker-compose.yml config >"$tmp/compose.yml"
python3 - "$tmp/compose.yml" <<'EOF'
import sys, yaml

config = yaml.safe_load(open(sys.argv[1]))
bad, ports = [], []
for name, svc in sorted(config["services"].items()):
    for p in svc.get("ports", []):
        if isinstance(p, dict):  # Compose v2's long form
            host_ip, shown = p.get("host_ip", ""), f'{p.get("host_ip", "")}:{p.get("published")}:{p.get("target")}'
        else:  # v1: [IP:]PUBLISHED:TARGET[/PROTO]
            parts = str(p).split("/")[0].rsplit(":", 2)
            host_ip, shown = (parts[0] if len(parts) == 3 else ""), str(p)
        ports.append(f"{name} {shown}")
        if host_ip != "127.0.0.1":
            bad.append(f"{name}: {shown} is published on {host_ip or 'every interface'}, not 127.0.0.1")
env = config["services"].get("grafana", {}).get("environment", {})
want = {"GF_AUTH_ANONYMOUS_ORG_ROLE": "Viewer", "GF_USERS_ALLOW_SIGN_UP": "false"}
for key, value in want.items():
    if str(env.get(key)) != value:
        bad.append(f"grafana: {key} is {env.get(key)!r}, expected {value!r}")
if env.get("GF_SECURITY_ADMIN_PASSWORD"):
    bad.append("grafana: GF_SECURITY_ADMIN_PASSWORD has a shipped default; it must come from GRAFANA_ADMIN_PASSWORD only")
if not ports:
    bad.append("no published ports found in `docker-compose config` (format changed?)")
for line in ports:
    print("published:", line)
for line in bad:
    print("FAIL", line, file=sys.stderr)
sys.exit(1 if bad else 0)
EOF

echo "==> prometheus/"
promtool check config prometheus/prometheus.yml
promtool check rules prometheus/rules.yml

echo "==> grafana dashboards (static)"
python3 loadtest/check_dashboard.py

echo "==> deploy/proxy.service"
BIN=${BIN:-$PWD/target/debug}
[ -x "$BIN/proxy" ] || cargo build -p proxy
# verify wants the ExecStart binary to exist: point it at the one just built.
sed "s|/usr/local/bin/proxy|$BIN/proxy|g" deploy/proxy.service >"$tmp/proxy.service"
out=$(systemd-analyze verify "$tmp/proxy.service" 2>&1) || { echo "$out" >&2; exit 1; }
# Warnings about the host's own units are not ours; anything naming our unit is.
if echo "$out" | grep -q "proxy.service"; then echo "$out" >&2; exit 1; fi
echo "systemd unit verified"
