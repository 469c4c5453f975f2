#!/usr/bin/env bash
# Evaluates every Grafana panel query against a real Prometheus that scrapes two real proxy
# replicas (as in the compose demo: rate_limit.store = "redis", one redis-server started here on
# a free loopback port with persistence off) while traffic flows, alternating between them: 200s
# and 429s from many loopback clients, a backend SIGKILLed mid-run, a config reload, and Redis
# frozen (SIGSTOP) for 3 s and resumed, so the store's latency and error series are real. Also
# loads prometheus/rules.yml into that Prometheus and checks every rule evaluates. Exits non-zero
# when any query errors or returns nothing, or when the store's counts did not come out as such
# traffic makes them (checks answered by Redis on both replicas, errors while it was frozen,
# both back to "up" on /ready afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_packages prometheus:prometheus promtool:prometheus curl:curl python3:python3 \
  redis-server:redis-server redis-cli:redis-tools
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

# Backends on port 0: each prints the port the OS gave it, so no port is picked and released.
backend_port() {
  sed -n 's/^mock-backend .* listening on 127\.0\.0\.1:\([0-9][0-9]*\)$/\1/p' "$1" | head -n 1
}
ports=()
for n in 1 2 3; do
  # Created here, not by the child's redirect: the first read below may come before the child ran.
  : >"$work/backend$n.out"
  "$BIN/mock-backend" --listen 127.0.0.1:0 --name "backend$n" >"$work/backend$n.out" 2>&1 &
  pids+=($!)
  port=
  for ((i = 0; i < 300; i++)); do
    port=$(backend_port "$work/backend$n.out")
    [ -n "$port" ] && break
    kill -0 "${pids[-1]}" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$port" ] || { echo "backend$n did not start: $(cat "$work/backend$n.out")" >&2; exit 1; }
  ports+=("$port")
done
backend2_pid=${pids[1]}

# started_or_taken OUT PID URL: 0 when URL answers 200; 1 when the process exited or printed
# that its port is taken (a port picked by free_port can be taken before it is bound); 2 when
# neither happened within 30 s.
started_or_taken() {
  local out=$1 pid=$2 url=$3 i
  for ((i = 0; i < 300; i++)); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)" = 200 ] && return 0
    if ! kill -0 "$pid" 2>/dev/null || grep -qiE 'is in use|address in use|already in use' "$out"; then
      return 1
    fi
    sleep 0.1
  done
  return 2
}

# Redis: persistence off, its files (none are written) in the work directory; tried again on a
# new port (three attempts) when the one picked was taken in between.
mkdir -p "$work/redis"
redis_pid=
for attempt in 1 2 3; do
  redis_port=$(free_port)
  redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no --dir "$work/redis" \
    --daemonize no >"$work/redis.out" 2>&1 &
  redis_pid=$!
  pids+=("$redis_pid")
  for ((i = 0; i < 100; i++)); do
    redis_ping 127.0.0.1 "$redis_port" && break
    kill -0 "$redis_pid" 2>/dev/null || break
    sleep 0.1
  done
  redis_ping 127.0.0.1 "$redis_port" && break
  kill -9 "$redis_pid" 2>/dev/null || true
  echo "redis-server did not start (attempt $attempt): $(tail -n 3 "$work/redis.out")" >&2
  redis_pid=
done
[ -n "$redis_pid" ] || { echo "redis-server did not start" >&2; exit 1; }

# The proxies and Prometheus listen on ports picked in advance: tried again on new ports (three
# attempts) when one was taken in between. Two replicas, one config but for their addresses.
proxy_ports=() admin_ports=() proxy_pids=()
for n in 1 2; do
  started=0
  for attempt in 1 2 3; do
    proxy_port=$(free_port); admin_port=$(free_port)
    cat >"$work/proxy$n.toml" <<TOML
[server]
listen = "127.0.0.1:$proxy_port"
grace_period_seconds = 1
graceful_shutdown_timeout_seconds = 1
upgrade_sock = "$work/upgrade$n.sock"
pid_file = "$work/proxy$n.pid"
[upstream]
backends = ["127.0.0.1:${ports[0]}", "127.0.0.1:${ports[1]}", "127.0.0.1:${ports[2]}"]
[upstream.health_check]
interval_ms = 500
[rate_limit]
requests = 10
store = "redis"
[rate_limit.redis]
url = "redis://127.0.0.1:$redis_port/0"
on_error = "local"
[admin]
listen = "127.0.0.1:$admin_port"
[log]
level = "warn"
access_log = false
TOML
    "$BIN/proxy" -c "$work/proxy$n.toml" >"$work/proxy$n.out" 2>&1 &
    proxy_pid=$!
    pids+=("$proxy_pid")
    rc=0; started_or_taken "$work/proxy$n.out" "$proxy_pid" "http://127.0.0.1:$admin_port/ready" || rc=$?
    [ "$rc" = 0 ] && { started=1; break; }
    kill -9 "$proxy_pid" 2>/dev/null || true
    [ "$rc" = 2 ] && break
    echo "proxy$n did not start (attempt $attempt): $(tail -n 3 "$work/proxy$n.out")" >&2
  done
  [ "$started" = 1 ] || { echo "proxy$n did not become ready: $(tail -n 5 "$work/proxy$n.out")" >&2; exit 1; }
  # Connected to Redis before any traffic (else the first checks fall back to on_error).
  poll 10000 0.1 store_state_is "http://127.0.0.1:$admin_port" up ||
    { echo "proxy$n: /ready does not report the redis store up: $(curl -s --max-time 2 "http://127.0.0.1:$admin_port/ready")" >&2; exit 1; }
  proxy_ports+=("$proxy_port") admin_ports+=("$admin_port") proxy_pids+=("$proxy_pid")
done

started=0
for attempt in 1 2 3; do
  prom_port=$(free_port)
  cat >"$work/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $PWD/prometheus/rules.yml
scrape_configs:
  - job_name: gateway
    static_configs:
      - targets: ["127.0.0.1:${admin_ports[0]}", "127.0.0.1:${admin_ports[1]}"]
YML
  promtool check config "$work/prometheus.yml" >/dev/null
  rm -rf "$work/data"
  prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
    --web.listen-address="127.0.0.1:$prom_port" >"$work/prometheus.out" 2>&1 &
  prom_pid=$!
  pids+=("$prom_pid")
  rc=0; started_or_taken "$work/prometheus.out" "$prom_pid" "http://127.0.0.1:$prom_port/-/ready" || rc=$?
  [ "$rc" = 0 ] && { started=1; break; }
  kill -9 "$prom_pid" 2>/dev/null || true
  [ "$rc" = 2 ] && break
  echo "prometheus did not start (attempt $attempt): $(tail -n 3 "$work/prometheus.out")" >&2
done
[ "$started" = 1 ] || { echo "prometheus did not become ready: $(tail -n 5 "$work/prometheus.out")" >&2; exit 1; }

echo "==> traffic for 20 s, alternating between the replicas (many clients, 429s, backend2 killed at 8 s, reload at 10 s, Redis frozen 12..15 s)"
python3 - "${proxy_ports[0]}" "${proxy_ports[1]}" "$backend2_pid" "${proxy_pids[0]}" "$redis_pid" <<'PY'
import os, signal, socket, sys, time
ports = (int(sys.argv[1]), int(sys.argv[2]))
victim, proxy, redis = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
start = time.monotonic(); sent = 0; codes = {}
killed = reloaded = frozen = resumed = False
try:
    while time.monotonic() - start < 20 and sent < 20000:
        elapsed = time.monotonic() - start
        if elapsed > 8 and not killed:
            os.kill(victim, signal.SIGKILL); killed = True
        if elapsed > 10 and not reloaded:
            os.kill(proxy, signal.SIGHUP); reloaded = True
        # A hung Redis: checks time out (timeout_ms), the replicas fall back to on_error
        # ("local") and probe it every 250 ms until it answers again.
        if elapsed > 12 and not frozen:
            os.kill(redis, signal.SIGSTOP); frozen = True
        if elapsed > 15 and not resumed:
            os.kill(redis, signal.SIGCONT); resumed = True
        src = "127.0.3.%d" % (1 + (sent // 15) % 250)   # 15 requests per client: 10 x 200, 5 x 429
        s = socket.create_connection(("127.0.0.1", ports[sent % 2]), timeout=5, source_address=(src, 0))
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
finally:
    if frozen and not resumed:
        os.kill(redis, signal.SIGCONT)
print("sent", sent, "by status", codes)
bad = {c: n for c, n in codes.items() if c not in ("200", "429")}
sys.exit(1 if bad or "429" not in codes or "200" not in codes else 0)
PY

echo "==> the shared store on each replica"
# A few more requests (a client of their own) probe Redis, now answering again, so both are
# back to "up"; then each replica's counts: checks answered, and errors from the frozen spell.
store_ok=1
for n in 0 1; do
  admin=http://127.0.0.1:${admin_ports[n]}
  for ((i = 0; i < 40; i++)); do
    store_state_is "$admin" up && break
    curl -s -o /dev/null --max-time 2 --interface 127.0.4.1 "http://127.0.0.1:${proxy_ports[n]}/dash" || true
    sleep 0.3
  done
  metrics=$(curl -fsS --max-time 5 "$admin/metrics")
  checks=$(awk '$1 == "gateway_rate_limit_store_seconds_count" { print $2 }' <<<"$metrics")
  errors=$(awk '$1 == "gateway_rate_limit_store_errors_total" { print $2 }' <<<"$metrics")
  state=$(store_state "$admin")
  echo "proxy$((n + 1)): store state ${state:-?}, checks ${checks:-none}, errors ${errors:-none}"
  [ "${checks:-0}" -gt 0 ] && [ "${errors:-0}" -gt 0 ] && [ "$state" = up ] || store_ok=0
done
[ "$store_ok" = 1 ] || { echo "the store's counts are not what the traffic makes them (checks and errors > 0, state up)" >&2; exit 1; }

echo "==> waiting for Prometheus to scrape the final counts"
# The traffic has ended: poll until Prometheus holds what the proxy counts (bounded), rather
# than sleeping for a few scrape intervals.
python3 - "$prom_port" "${admin_ports[@]}" <<'PY'
import json, sys, time, urllib.parse, urllib.request
prom, admins = sys.argv[1], sys.argv[2:]
def proxy_total():
    total = 0.0
    for admin in admins:
        text = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % admin, timeout=5).read().decode()
        total += sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
                     if l.startswith("gateway_requests_total{"))
    return total
def prom_total():
    q = urllib.parse.urlencode({"query": "sum(gateway_requests_total)"})
    body = json.load(urllib.request.urlopen("http://127.0.0.1:%s/api/v1/query?%s" % (prom, q), timeout=5))
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else -1.0
want = proxy_total()
deadline = time.monotonic() + 60
while True:
    got = prom_total()
    if got >= want:
        print("Prometheus has %d of %d requests (both replicas)" % (got, want))
        break
    if time.monotonic() > deadline:
        print("Prometheus has %d of %d requests after 60 s" % (got, want))
        sys.exit(1)
    time.sleep(0.2)
PY
echo "==> dashboard queries against Prometheus"
python3 loadtest/check_dashboard.py --prometheus "http://127.0.0.1:$prom_port"

echo "==> recording and alerting rules"
python3 - "$prom_port" <<'PY'
import json, sys, time, urllib.request
# A rule is "unknown" until its first evaluation: poll (bounded) until none is.
deadline = time.monotonic() + 60
while True:
    rules = json.load(urllib.request.urlopen("http://127.0.0.1:%s/api/v1/rules" % sys.argv[1], timeout=5))
    all_rules = [r for g in rules["data"]["groups"] for r in g["rules"]]
    pending = [r["name"] for r in all_rules if r.get("health") == "unknown"]
    if not pending or time.monotonic() > deadline:
        break
    time.sleep(0.2)
bad = [(r["name"], r.get("health"), r.get("lastError")) for r in all_rules if r.get("health") != "ok"]
print("rules evaluated:", len(all_rules), "unhealthy:", bad)
sys.exit(1 if bad or not all_rules else 0)
PY
