#!/usr/bin/env bash
# Evaluates every Grafana panel query against a real Prometheus that scrapes the real proxy
# while traffic flows: 200s and 429s from many loopback clients, a backend SIGKILLed mid-run,
# a config reload. Also loads prometheus/rules.yml into that Prometheus and checks every rule
# evaluates. Exits non-zero when any query errors or returns nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_packages prometheus:prometheus promtool:prometheus curl:curl python3:python3
BIN=${BIN:-target/debug}
[ -x "$BIN/proxy" ] && [ -x "$BIN/mock-backend" ] || cargo build --workspace

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

ports=()
for n in 1 2 3; do
  port=$(free_port); ports+=("$port")
  "$BIN/mock-backend" --listen "127.0.0.1:$port" --name "backend$n" >/dev/null 2>&1 &
  pids+=($!)
done
backend2_pid=${pids[1]}
proxy_port=$(free_port); admin_port=$(free_port); prom_port=$(free_port)
cat >"$work/proxy.toml" <<TOML
[server]
listen = "127.0.0.1:$proxy_port"
grace_period_seconds = 1
graceful_shutdown_timeout_seconds = 1
upgrade_sock = "$work/upgrade.sock"
pid_file = "$work/proxy.pid"
[upstream]
backends = ["127.0.0.1:${ports[0]}", "127.0.0.1:${ports[1]}", "127.0.0.1:${ports[2]}"]
[upstream.health_check]
interval_ms = 500
[rate_limit]
requests = 10
[admin]
listen = "127.0.0.1:$admin_port"
[log]
level = "warn"
access_log = false
TOML
"$BIN/proxy" -c "$work/proxy.toml" >"$work/proxy.out" 2>&1 &
proxy_pid=$!
pids+=("$proxy_pid")
wait_http "http://127.0.0.1:$admin_port/ready" 200 30

cat >"$work/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $PWD/prometheus/rules.yml
scrape_configs:
  - job_name: gateway
    static_configs:
      - targets: ["127.0.0.1:$admin_port"]
YML
promtool check config "$work/prometheus.yml" >/dev/null
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
  --web.listen-address="127.0.0.1:$prom_port" >"$work/prometheus.out" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$prom_port/-/ready" 200 60

echo "==> traffic for 20 s (many clients, 429s, backend2 killed at 8 s, reload at 10 s)"
python3 - "$proxy_port" "$backend2_pid" "$proxy_pid" <<'PY'
import os, signal, socket, sys, time
port, victim, proxy = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
start = time.monotonic(); sent = 0; codes = {}; killed = reloaded = False
while time.monotonic() - start < 20 and sent < 20000:
    elapsed = time.monotonic() - start
    if elapsed > 8 and not killed:
        os.kill(victim, signal.SIGKILL); killed = True
    if elapsed > 10 and not reloaded:
        os.kill(proxy, signal.SIGHUP); reloaded = True
    src = "127.0.3.%d" % (1 + (sent // 15) % 250)   # 15 requests per client: 10 x 200, 5 x 429
    s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(src, 0))
    s.sendall(b"GET /dash HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk: break
        data += chunk
    s.close()
    code = data.split(b" ", 2)[1].decode() if data else "none"
    codes[code] = codes.get(code, 0) + 1
    sent += 1
    time.sleep(0.01)
print("sent", sent, "by status", codes)
bad = {c: n for c, n in codes.items() if c not in ("200", "429")}
sys.exit(1 if bad or "429" not in codes or "200" not in codes else 0)
PY

# Let Prometheus take a few more scrapes of the final state.
sleep 3
echo "==> dashboard queries against Prometheus"
python3 loadtest/check_dashboard.py --prometheus "http://127.0.0.1:$prom_port"

echo "==> recording and alerting rules"
python3 - "$prom_port" <<'PY'
import json, sys, urllib.request
rules = json.load(urllib.request.urlopen("http://127.0.0.1:%s/api/v1/rules" % sys.argv[1]))
bad = [(r["name"], r.get("lastError")) for g in rules["data"]["groups"] for r in g["rules"]
       if r.get("health") != "ok"]
count = sum(len(g["rules"]) for g in rules["data"]["groups"])
print("rules evaluated:", count, "unhealthy:", bad)
sys.exit(1 if bad or count == 0 else 0)
PY
