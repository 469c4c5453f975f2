#!/usr/bin/env bash
# The docker-compose demo, end to end, as a user runs it:
#
#   1. a Docker engine: uses the running one; otherwise installs docker.io and docker-compose
#      when missing (as root or with passwordless sudo; else prints the command) and starts
#      dockerd for this run, stopped again (by its PID) at the end;
#   2. base images: scripts/offline_images.sh (pulls them, or builds local stand-ins for those a
#      `docker pull` cannot get; Grafana has none);
#   3. builds the project's Dockerfile (one CLI, one builder, one layer cache);
#   4. `docker compose up -d` (v2 plugin when present, else docker-compose v1) and waits until
#      every container's health check passes (Grafana is left out when its image is missing,
#      and its provisioning and dashboard are then checked statically);
#   5. loadtest/run_ab.sh all --compose: every scenario against the stack (cluster included:
#      the two replicas, proxy and proxy2, sharing their limits through the redis service);
#   6. Prometheus' HTTP API: both targets of job `gateway` (proxy:9091 and proxy2:9091) are up,
#      and each replica's gateway_requests_total moved and its shared-store latency histogram
#      (gateway_rate_limit_store_seconds) counted checks;
#   7. `down -v`, then checks that no container, network or volume of the run is left, pass or
#      fail.
# Exits non-zero with the reason on the first failure. Logs (dockerd, build, compose) are kept in
# a temporary directory when it fails.
#
#   scripts/check_compose.sh
#
# Settings (environment): DOCKER (the docker CLI, see scripts/lib.sh docker_cli),
# CHECK_COMPOSE_PROJECT [gateway-check] (compose project name of the run),
# GATEWAY_HTTP_PORT, GATEWAY_HTTPS_PORT, GATEWAY_ADMIN_PORT, GATEWAY2_HTTP_PORT,
# GATEWAY2_HTTPS_PORT, GATEWAY2_ADMIN_PORT, PROMETHEUS_PORT,
# GRAFANA_PORT [free ports],
# HEALTH_TIMEOUT_SECONDS [180], KEEP_TMP=1 (keep the logs when it passes too).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

T_START=$SECONDS
fail() {
  printf 'check_compose: FAIL: %s\n' "$*" >&2
  exit 1
}

# ---- Docker engine: installed, reachable, or started here -----------------------------------

engine_up() { "$(docker_cli)" info >/dev/null 2>&1; }

if ! engine_up; then
  if [ "$(id -u)" -ne 0 ]; then
    if sudo -n true 2>/dev/null; then
      report "no usable Docker engine for $(id -un): running again as root (sudo)"
      exec sudo -n "$BASH" "$PWD/scripts/check_compose.sh" "$@"
    fi
    fail "no usable Docker engine, and installing or starting one needs root: run  sudo $PWD/scripts/check_compose.sh"
  fi
  ensure_packages dockerd:docker.io
fi
ensure_packages curl:curl python3:python3 ab:apache2-utils timeout:coreutils
compose_cmd || { ensure_packages docker-compose:docker-compose && compose_cmd; } ||
  fail "no docker compose plugin and no docker-compose"

work=$(mktemp -d "${TMPDIR:-/tmp}/check_compose.XXXXXX")
pin_docker_cli "$work/bin"
compose_cmd
PROJECT=${CHECK_COMPOSE_PROJECT:-gateway-check}
export COMPOSE_PROJECT_NAME=$PROJECT
compose() { "${COMPOSE_CMD[@]}" -f docker-compose.yml "$@"; }

DOCKERD_PID=
CONTAINERD_PID=
STACK=0
TIMES=()
lap() { TIMES+=("$1 $((SECONDS - $2))s"); }

# The host firewall as our dockerd found it. dockerd adds its chains (DOCKER, DOCKER-USER,
# DOCKER-ISOLATION-STAGE-1/2) and the jumps to them, and leaves them when it stops; when the host
# had none before, they are removed again after it stopped. It also turns IP forwarding on (and
# the FORWARD policy to DROP) when it was off: put back as found.
FW_BEFORE='' FW_SAVED=0 IP_FORWARD_BEFORE='' FORWARD_POLICY_BEFORE=''
fw_rules() { iptables-save 2>/dev/null | grep -E '^(-A |:[A-Za-z0-9_-]+ - )' | sort || true; }
forward_policy() { iptables -S FORWARD 2>/dev/null | awk '$1 == "-P" { print $3 }'; }
save_firewall() {
  command -v iptables-save >/dev/null 2>&1 || return 0
  FW_BEFORE=$(fw_rules)
  IP_FORWARD_BEFORE=$(cat /proc/sys/net/ipv4/ip_forward 2>/dev/null || true)
  FORWARD_POLICY_BEFORE=$(forward_policy)
  FW_SAVED=1
}
restore_firewall() {
  local table chain rule now
  [ "$FW_SAVED" = 1 ] || return 0
  if ! grep -q DOCKER <<<"$FW_BEFORE"; then
    for table in nat filter; do
      while read -r -a rule; do
        rule[0]=-D
        iptables -t "$table" "${rule[@]}" 2>/dev/null || true
      done < <(iptables -t "$table" -S 2>/dev/null |
        grep -E '^-A (PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING) .*-j DOCKER[A-Z0-9-]*$' || true)
      for chain in DOCKER DOCKER-USER DOCKER-ISOLATION-STAGE-1 DOCKER-ISOLATION-STAGE-2; do
        iptables -t "$table" -F "$chain" 2>/dev/null || true
      done
      for chain in DOCKER DOCKER-USER DOCKER-ISOLATION-STAGE-1 DOCKER-ISOLATION-STAGE-2; do
        iptables -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  fi
  if [ "$IP_FORWARD_BEFORE" = 0 ] && [ "$(cat /proc/sys/net/ipv4/ip_forward)" = 1 ]; then
    echo 0 >/proc/sys/net/ipv4/ip_forward || true
  fi
  if [ -n "$FORWARD_POLICY_BEFORE" ] && [ "$(forward_policy)" != "$FORWARD_POLICY_BEFORE" ]; then
    iptables -P FORWARD "$FORWARD_POLICY_BEFORE" || true
  fi
  now=$(fw_rules)
  if [ "$now" != "$FW_BEFORE" ]; then
    report "warning: the host firewall differs from before dockerd started: $(diff <(echo "$FW_BEFORE") <(echo "$now") | grep '^[<>]' | tr '\n' ' ')"
  else
    report "host firewall as found (dockerd's chains removed)"
  fi
}

# Stops the dockerd this script started (and the containerd it started), by PID.
stop_dockerd() {
  local i pid
  [ -n "$DOCKERD_PID" ] || return 0
  report "stopping the dockerd started for this run (pid $DOCKERD_PID)"
  kill -TERM "$DOCKERD_PID" 2>/dev/null || true
  for ((i = 0; i < 300; i++)); do
    kill -0 "$DOCKERD_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$DOCKERD_PID" 2>/dev/null || true
  wait "$DOCKERD_PID" 2>/dev/null || true
  for pid in $CONTAINERD_PID; do
    for ((i = 0; i < 100; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      [ "$i" = 0 ] && kill -TERM "$pid" 2>/dev/null
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  done
  DOCKERD_PID=
  restore_firewall
}

# leftovers: containers, networks and volumes of this run's compose project.
leftovers() {
  local label=com.docker.compose.project=$PROJECT
  {
    "$DOCKER" ps -aq --filter "label=$label" | sed 's/^/container /'
    "$DOCKER" network ls -q --filter "label=$label" | sed 's/^/network /'
    "$DOCKER" volume ls -q --filter "label=$label" | sed 's/^/volume /'
  } 2>/dev/null
}

teardown() {
  local left kind id
  [ "$STACK" = 1 ] || return 0
  report "tearing down: ${COMPOSE_CMD[*]} down -v"
  compose down -v --remove-orphans --timeout 20 >"$work/down.log" 2>&1 ||
    report "down -v failed: $(tail -n 3 "$work/down.log" | tr '\n' ' ')"
  left=$(leftovers)
  if [ -n "$left" ]; then
    report "left behind after down -v (removing): $(echo "$left" | tr '\n' ' ')"
    while read -r kind id; do
      case $kind in
        container) "$DOCKER" rm -f -v "$id" ;;
        network) "$DOCKER" network rm "$id" ;;
        volume) "$DOCKER" volume rm -f "$id" ;;
      esac >/dev/null 2>&1 || true
    done <<<"$left"
    return 1
  fi
  STACK=0
  report "nothing left behind (no container, network or volume labelled $PROJECT)"
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$STACK" = 1 ] && [ "$rc" != 0 ]; then
    compose ps >"$work/ps.log" 2>&1 || true
    compose logs --no-color --tail 200 >"$work/compose.log" 2>&1 || true
  fi
  if ! teardown; then
    [ "$rc" != 0 ] || printf 'check_compose: FAIL: down -v left containers, networks or volumes behind\n' >&2
    rc=1
  fi
  stop_dockerd
  if [ "$rc" != 0 ] || [ "${KEEP_TMP:-0}" = 1 ]; then
    report "logs kept in $work"
  else
    rm -rf -- "$work"
  fi
  [ ${#TIMES[@]} -eq 0 ] || report "times: $(printf '%s, ' "${TIMES[@]}")total $((SECONDS - T_START))s"
  if [ "$rc" = 0 ]; then report "PASS"; else report "FAIL (exit $rc)"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

t=$SECONDS
if ! engine_up; then
  # Our own engine for this run, without the default docker0 bridge (builds use the host
  # network; compose makes its own bridge network, removed by `down`). Its firewall rules stay
  # on: the stack's embedded DNS forwards names it does not know (a killed service's) to the
  # host's resolver through them; without that NAT such a lookup hangs instead of failing, which
  # no real Docker host does. They are removed again when it stops (restore_firewall).
  # The descriptor limit of Debian's docker.service (LimitNOFILE=1048576), which the
  # containers inherit; a shell's limit is often far lower.
  report "no Docker engine running: starting dockerd for this run"
  save_firewall
  (
    ulimit -n 1048576 2>/dev/null || true
    exec dockerd --bridge=none
  ) >"$work/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for ((i = 0; i < 600; i++)); do
    engine_up && break
    kill -0 "$DOCKERD_PID" 2>/dev/null || fail "dockerd exited at start: $(tail -n 5 "$work/dockerd.log")"
    sleep 0.1
  done
  engine_up || fail "dockerd did not answer within 60 s: $(tail -n 5 "$work/dockerd.log")"
  # The containerd dockerd starts for itself stops with it; its PID, in case it does not.
  CONTAINERD_PID=$(cat /var/run/docker/containerd/containerd.pid 2>/dev/null || true)
  report "dockerd $("$DOCKER" version -f '{{.Server.Version}}') up (pid $DOCKERD_PID) in $((SECONDS - t))s"
fi
report "docker CLI: $DOCKER ($("$DOCKER" version -f '{{.Client.Version}}')); compose: ${COMPOSE_CMD[*]}; project: $PROJECT"
lap engine "$t"

# ---- Images -----------------------------------------------------------------------------------

t=$SECONDS
scripts/offline_images.sh || fail "the base images are not all available (scripts/offline_images.sh)"
lap base-images "$t"

# The image(s) compose builds from ./Dockerfile (pingora-gateway:local).
mapfile -t built < <(compose_images docker-compose.yml | awk '$3 == 1 { print $2 }' | sort -u)
[ ${#built[@]} -gt 0 ] || fail "no service of docker-compose.yml is built from the Dockerfile"
# BuildKit: dockerd's own (Debian's 20.10 CLI) or through buildx; a newer CLI without buildx
# only has the legacy builder. Whichever it is, every build of this script uses the same one.
buildkit=1
client_major=$("$DOCKER" version -f '{{.Client.Version}}' | cut -d. -f1)
if [ "${client_major:-0}" -ge 23 ] 2>/dev/null && ! "$DOCKER" buildx version >/dev/null 2>&1; then
  buildkit=0
fi
build_args=(build --network host -t "${built[0]}")
[ "$buildkit" = 0 ] || build_args+=(--progress=plain)
t=$SECONDS
old_id=$("$DOCKER" image inspect -f '{{.Id}}' "${built[0]}" 2>/dev/null || true)
report "building ${built[0]} from ./Dockerfile ($([ "$buildkit" = 1 ] && echo BuildKit || echo legacy builder)); log: $work/build.log"
if ! DOCKER_BUILDKIT=$buildkit "$DOCKER" "${build_args[@]}" . >"$work/build.log" 2>&1; then
  tail -n 30 "$work/build.log" >&2
  fail "docker build failed (log above)"
fi
for tag in "${built[@]:1}"; do "$DOCKER" tag "${built[0]}" "$tag"; done
new_id=$("$DOCKER" image inspect -f '{{.Id}}' "${built[0]}")
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
  "$DOCKER" image rm "$old_id" >/dev/null 2>&1 || true # the previous build, now untagged
fi
cached=$(grep -c '^#[0-9]* CACHED' "$work/build.log" || true)
deps=$(grep -m1 -E '^#[0-9]+ \[build +[0-9]+/[0-9]+\] RUN mkdir -p proxy/src' "$work/build.log" | cut -d' ' -f1 || true)
deps_state=built
[ -n "$deps" ] && grep -q "^$deps CACHED" "$work/build.log" && deps_state=cached
report "built ${built[0]} in $((SECONDS - t))s${deps:+ (dependency layer $deps_state; $cached steps from the cache)}"
lap build "$t"

# ---- Stack ------------------------------------------------------------------------------------

for v in GATEWAY_HTTP_PORT GATEWAY_HTTPS_PORT GATEWAY_ADMIN_PORT GATEWAY2_HTTP_PORT GATEWAY2_HTTPS_PORT GATEWAY2_ADMIN_PORT PROMETHEUS_PORT GRAFANA_PORT; do
  [ -n "${!v:-}" ] || printf -v "$v" '%s' "$(free_port)"
  export "${v?}"
done
export COMPOSE_PROXY_URL=http://127.0.0.1:$GATEWAY_HTTP_PORT
export COMPOSE_ADMIN_URL=http://127.0.0.1:$GATEWAY_ADMIN_PORT
export COMPOSE_PROXY2_URL=http://127.0.0.1:$GATEWAY2_HTTP_PORT
export COMPOSE_ADMIN2_URL=http://127.0.0.1:$GATEWAY2_ADMIN_PORT
PROM=http://127.0.0.1:$PROMETHEUS_PORT

services=() left_out=()
while read -r svc image build; do
  if [ "$build" = 0 ] && ! "$DOCKER" image inspect "$image" >/dev/null 2>&1; then
    left_out+=("$svc")
    report "$image is not available (it cannot be pulled here and has no stand-in): running the stack WITHOUT $svc"
  else
    services+=("$svc")
  fi
done < <(compose_images docker-compose.yml)
for svc in ${left_out[@]+"${left_out[@]}"}; do
  case $svc in
    grafana) ;;
    *) fail "$svc is required by the check, but its image is missing" ;;
  esac
done

t=$SECONDS
# A run killed half-way may have left this project's containers: start clean.
compose down -v --remove-orphans --timeout 5 >/dev/null 2>&1 || true
STACK=1
report "${COMPOSE_CMD[*]} up -d ${services[*]} (proxy on 127.0.0.1:$GATEWAY_HTTP_PORT, admin :$GATEWAY_ADMIN_PORT; proxy2 on :$GATEWAY2_HTTP_PORT, admin :$GATEWAY2_ADMIN_PORT; Prometheus :$PROMETHEUS_PORT)"
if ! compose up -d --no-build "${services[@]}" >"$work/up.log" 2>&1; then
  tail -n 20 "$work/up.log" >&2
  fail "${COMPOSE_CMD[*]} up -d failed (log above)"
fi

# health SERVICE: "running healthy", "running starting", "exited none 0", ... of its container
# (the exit code last).
health() {
  local cid
  cid=$(compose ps -q "$1" 2>/dev/null | head -n 1)
  [ -n "$cid" ] || { echo "absent none -"; return 0; }
  "$DOCKER" inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.State.ExitCode}}' "$cid" 2>/dev/null ||
    echo "absent none -"
}
deadline=$((SECONDS + ${HEALTH_TIMEOUT_SECONDS:-180}))
pending=("${services[@]}")
while [ ${#pending[@]} -gt 0 ]; do
  still=()
  for svc in "${pending[@]}"; do
    read -r state hc code <<<"$(health "$svc")"
    case "$state $hc" in
      "running healthy" | "running none") ;;
      # A one-shot service (certs) that did its job.
      "exited none") [ "$code" = 0 ] || {
        compose logs --no-color --tail 20 "$svc" >&2 || true
        fail "$svc exited with status $code (logs above)"
      } ;;
      "running starting") still+=("$svc") ;;
      *)
        compose logs --no-color --tail 20 "$svc" >&2 || true
        fail "$svc is $state (health: $hc) instead of healthy (logs above)"
        ;;
    esac
  done
  pending=(${still[@]+"${still[@]}"})
  [ ${#pending[@]} -eq 0 ] && break
  [ "$SECONDS" -lt "$deadline" ] || fail "not healthy within ${HEALTH_TIMEOUT_SECONDS:-180}s: ${pending[*]}"
  sleep 0.5
done
report "every container healthy $((SECONDS - t))s after up: ${services[*]}"
lap up "$t"

if [ ${#left_out[@]} -gt 0 ]; then
  report "grafana left out: checking its provisioning and dashboards statically"
  python3 loadtest/check_dashboard.py >"$work/dashboard.log" 2>&1 || {
    cat "$work/dashboard.log" >&2
    fail "loadtest/check_dashboard.py: the dashboards are broken"
  }
  compose config >"$work/config.yml"
  python3 - "$work/config.yml" <<'EOF' || fail "the Grafana provisioning does not match the stack"
import sys, yaml
from pathlib import Path

config = yaml.safe_load(open(sys.argv[1]))
services = config["services"]
mounts = {}
for v in services["grafana"].get("volumes", []):
    src, dst = (v.split(":")[:2] if isinstance(v, str) else (v["source"], v["target"]))
    mounts[dst] = Path(src)
bad = []
prov = mounts.get("/etc/grafana/provisioning")
if not prov or not prov.is_dir():
    bad.append("grafana/provisioning is not mounted at /etc/grafana/provisioning")
else:
    for f in sorted((prov / "datasources").glob("*.yml")):
        for ds in yaml.safe_load(f.read_text()).get("datasources", []):
            host = ds.get("url", "").split("//")[-1].split(":")[0]
            if ds.get("uid") != "gateway-prometheus":
                bad.append(f"{f.name}: datasource uid {ds.get('uid')!r}, the dashboards use gateway-prometheus")
            if host not in services:
                bad.append(f"{f.name}: datasource url {ds.get('url')} names no service of the stack")
    for f in sorted((prov / "dashboards").glob("*.yml")):
        for p in yaml.safe_load(f.read_text()).get("providers", []):
            path = p.get("options", {}).get("path")
            if path not in mounts or not any(mounts[path].glob("*.json")):
                bad.append(f"{f.name}: provider path {path} is not a mounted directory of dashboards")
for b in bad:
    print("FAIL", b, file=sys.stderr)
print("grafana provisioning: datasource and dashboard provider match the stack" if not bad else "")
sys.exit(1 if bad else 0)
EOF
fi

# ---- Scenarios and Prometheus -------------------------------------------------------------------

# prom_value QUERY: the first value of an instant query ("" when the result is empty).
prom_value() {
  curl -fsS --max-time 5 -G "$PROM/api/v1/query" --data-urlencode "query=$1" 2>/dev/null |
    python3 -c 'import json, sys
r = json.load(sys.stdin)["data"]["result"]
print(r[0]["value"][1] if r else "")'
}
# The replicas Prometheus must scrape (prometheus/prometheus.yml, job "gateway").
GATEWAY_INSTANCES=(proxy:9091 proxy2:9091)
# gateway_targets_up: Prometheus' active targets of job "gateway" are exactly GATEWAY_INSTANCES,
# each with health "up".
gateway_targets_up() {
  curl -fsS --max-time 5 "$PROM/api/v1/targets?state=active" 2>/dev/null |
    python3 -c 'import json, sys
want = set(sys.argv[1:])
t = {x["labels"].get("instance"): x["health"] for x in json.load(sys.stdin)["data"]["activeTargets"]
     if x["labels"].get("job") == "gateway"}
sys.exit(0 if set(t) == want and all(h == "up" for h in t.values()) else 1)' "${GATEWAY_INSTANCES[@]}"
}
# gateway_targets: "instance=health ..." of job "gateway", for the failure message.
gateway_targets() {
  curl -fsS --max-time 5 "$PROM/api/v1/targets?state=active" 2>/dev/null |
    python3 -c 'import json, sys
print(" ".join("%s=%s" % (x["labels"].get("instance"), x["health"]) for x in json.load(sys.stdin)["data"]["activeTargets"]
               if x["labels"].get("job") == "gateway") or "none")' || echo "no answer"
}
# above QUERY: QUERY's value (empty result: 0) is greater than 0.
above() {
  python3 -c 'import sys; sys.exit(0 if float(sys.argv[1] or 0) > 0 else 1)' "$(prom_value "$1" || true)"
}

# HTTPS on both replicas, verified against the CA the certs service made.
compose exec -T proxy cat /certs/ca.pem >"$work/ca.pem" 2>/dev/null ||
  fail "cannot read the demo CA (/certs/ca.pem) in the proxy container"
# https_ok PORT: 200 over HTTP/2 from https://localhost:PORT/, verified with the demo CA.
https_ok() {
  [ "$(curl -s -o /dev/null -w '%{http_code} %{http_version}' --max-time 5 --cacert "$work/ca.pem" \
    "https://localhost:$1/" 2>/dev/null || true)" = "200 2" ]
}
for port in "$GATEWAY_HTTPS_PORT" "$GATEWAY2_HTTPS_PORT"; do
  poll 30000 0.5 https_ok "$port" || fail "HTTPS on 127.0.0.1:$port does not answer 200 over HTTP/2 with the demo CA"
done
report "HTTPS: both replicas answer 200 over HTTP/2 on :$GATEWAY_HTTPS_PORT and :$GATEWAY2_HTTPS_PORT, verified against the demo CA"

before=$(prom_value 'sum(gateway_requests_total)') || fail "Prometheus does not answer at $PROM"
before=${before:-0}
t=$SECONDS
report "loadtest/run_ab.sh all --compose"
rc=0
loadtest/run_ab.sh all --compose 2>&1 | tee "$work/run_ab.log" || rc=$?
lap scenarios "$t"
if [ "$rc" != 0 ]; then
  fail "loadtest/run_ab.sh all --compose failed (exit $rc): $(grep -E 'FAIL|error' "$work/run_ab.log" | tr -s ' ' | paste -sd ';' -)"
fi

t=$SECONDS
# cluster killed proxy2 and started it again: up again within a few scrapes (every 5 s).
for ((i = 0; i < 60; i++)); do
  gateway_targets_up && break
  sleep 0.5
done
gateway_targets_up ||
  fail "Prometheus: the gateway targets are not ${GATEWAY_INSTANCES[*]}, all up (have: $(gateway_targets); $PROM/api/v1/targets)"
window=$((SECONDS - T_START + 60))
moved=
for ((i = 0; i < 30; i++)); do
  moved=$(prom_value "max_over_time(sum(gateway_requests_total)[${window}s:5s])" || true)
  python3 -c 'import sys; sys.exit(0 if float(sys.argv[1] or 0) > float(sys.argv[2]) else 1)' "${moved:-0}" "$before" && break
  sleep 1
done
python3 -c 'import sys; sys.exit(0 if float(sys.argv[1] or 0) > float(sys.argv[2]) else 1)' "${moved:-0}" "$before" ||
  fail "Prometheus: gateway_requests_total did not move (before the scenarios ${before}, highest since ${moved:-none})"
# Each replica on its own: it answered requests, and it counted them in Redis (a killed and
# restarted replica starts its counters from 0 again: the highest value since the start counts).
for inst in "${GATEWAY_INSTANCES[@]}"; do
  for what in gateway_requests_total gateway_rate_limit_store_seconds_count; do
    q="max_over_time(sum(${what}{job=\"gateway\",instance=\"$inst\"})[${window}s:5s])"
    for ((i = 0; i < 30; i++)); do
      above "$q" && break
      sleep 1
    done
    above "$q" || fail "Prometheus: $what of $inst never went above 0 ($q)"
  done
done
report "Prometheus: targets ${GATEWAY_INSTANCES[*]} up, each with requests and shared-store checks; gateway_requests_total went from $before to ${moved} (highest sum scraped)"
lap prometheus "$t"

t=$SECONDS
teardown || fail "down -v left containers, networks or volumes behind"
lap down "$t"
