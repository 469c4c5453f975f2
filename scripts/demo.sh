#!/usr/bin/env bash
# Local demo without Docker: three mock backends on 127.0.0.1:9001-9003 and the proxy with
# config/proxy.toml (listening on 127.0.0.1:8080, admin on 127.0.0.1:9091). Ctrl-C stops all.
#
#   ./scripts/demo.sh            (PROFILE=release for an optimized build)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

PROFILE=${PROFILE:-debug}
ensure_packages cmake:cmake cc:gcc curl:curl python3:python3
command -v cargo >/dev/null || { echo "cargo not found: install Rust >= 1.85 (https://rustup.rs)" >&2; exit 1; }

if [ "$PROFILE" = release ]; then cargo build --release --workspace; else cargo build --workspace; fi
bin=target/$PROFILE

for port in 8080 9091 9001 9002 9003; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    echo "port $port on 127.0.0.1 is in use; stop what uses it (a previous demo?) and retry" >&2
    exit 1
  fi
done

pids=()
cleanup() {
  trap - EXIT INT TERM
  echo; echo "==> stopping"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

mkdir -p logs
for n in 1 2 3; do
  "$bin/mock-backend" --listen "127.0.0.1:900$n" --name "backend$n" >"logs/backend$n.log" 2>&1 &
  pids+=($!)
done
"$bin/proxy" -c config/proxy.toml &
pids+=($!)

wait_http http://127.0.0.1:9091/ready 200 30

cat <<'TXT'

==> gateway ready: proxy http://127.0.0.1:8080, admin http://127.0.0.1:9091

Try:
  curl -i http://127.0.0.1:8080/hello                 # X-Upstream names the backend; run it 3 times
  curl -s http://127.0.0.1:8080/hello | python3 -m json.tool   # headers the backend saw
  curl -i -H 'X-Request-Id: my-id' http://127.0.0.1:8080/x    # request id kept end to end
  for i in $(seq 1 105); do curl -s -o /dev/null -w '%{http_code} ' http://127.0.0.1:8080/; done; echo   # 429s after 100
  curl -s http://127.0.0.1:9091/metrics | grep ^gateway_   # Prometheus metrics
  curl -s http://127.0.0.1:9091/ready                      # readiness
  kill -HUP $(pgrep -f 'proxy -c config/proxy.toml')       # reload config/proxy.toml
  loadtest/run_ab.sh all                                   # scenarios (own instances)

Logs: stdout here, and logs/proxy.log. Ctrl-C stops everything.
TXT
wait
