#!/usr/bin/env bash
# Static checks: shell scripts, and the shipped deployment files: docker compose, Prometheus config and rules,
# Grafana dashboard wiring, and the systemd unit.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_packages docker-compose:docker-compose promtool:prometheus python3:python3 systemd-analyze:systemd \
  shellcheck:shellcheck

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

echo "==> prometheus/"
promtool check config prometheus/prometheus.yml
promtool check rules prometheus/rules.yml

echo "==> grafana dashboards (static)"
python3 loadtest/check_dashboard.py

echo "==> deploy/proxy.service"
BIN=${BIN:-$PWD/target/debug}
[ -x "$BIN/proxy" ] || cargo build -p proxy
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# verify wants the ExecStart binary to exist: point it at the one just built.
sed "s|/usr/local/bin/proxy|$BIN/proxy|g" deploy/proxy.service >"$tmp/proxy.service"
out=$(systemd-analyze verify "$tmp/proxy.service" 2>&1) || { echo "$out" >&2; exit 1; }
# Warnings about the host's own units are not ours; anything naming our unit is.
if echo "$out" | grep -q "proxy.service"; then echo "$out" >&2; exit 1; fi
echo "systemd unit verified"
