#!/usr/bin/env bash
# What routing costs: the gateway without [[routes]] (today's single pool), with one catch-all
# route, and with 50 routes where the request takes the one tried last; bare Pingora beside them.
# Interleaved rounds (A B C D A B C D ...) of `wrk -t1 -c50`, one worker each, two nginx
# backends; ratios are medians of per-round ratios, with their spread (min-max over rounds).
#
#   loadtest/bench_routes.sh [--rounds N] [--duration S] [--no-build] [--out FILE]
#
# Defaults: 7 rounds of 10 s (about 5 minutes). Every system is sent GET /r49/x.
# Result: a markdown table on stdout and in FILE [loadtest/results/bench_routes.md].
# Instructions per request (deterministic, for the same systems): loadtest/profile_callgrind.sh
# ours ours+1route ours+50routes bare.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/lib.sh
source "$HERE/../scripts/lib.sh"
bench_init

ROUNDS=${ROUNDS:-7}
DURATION=${DURATION:-10}
CONNECTIONS=50
WARMUP=2
PATH_HIT=/r49/x
OUT_FILE="$ROOT/loadtest/results/bench_routes.md"
bench_rounds_args "$@"
bench_rounds_setup gateway-bench-routes

start_bench_backends 1
start_ours ours "$(free_port)" "$(free_port)" 1 true false
EXTRA_TOML=$(routes_toml 1) start_ours ours+1route "$(free_port)" "$(free_port)" 1 true false
READY_PATH=/r49/x EXTRA_TOML=$(routes_toml 50) start_ours ours+50routes "$(free_port)" "$(free_port)" 1 true false
start_bare bare "$(free_port)" 1
SYSTEMS=(ours ours+1route ours+50routes bare)
for sys in "${SYSTEMS[@]}"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://${SYS_ADDR[$sys]}$PATH_HIT")
  [[ "$code" == 200 ]] || log_die "$sys answered $code for $PATH_HIT"
done
# The 50-route gateway has no catch-all: the hit really is the last route (checked on its
# metrics after the runs).
code=$(curl -s "http://${SYS_ADDR[ours+50routes]}/x" -o /dev/null -w '%{http_code}')
[[ "$code" == 404 ]] || log_die "ours+50routes should have no catch-all (got $code for /x)"

rps() { awk '/^Requests\/sec:/ {print $2}' "$1"; }
for sys in "${SYSTEMS[@]}"; do
  wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "http://${SYS_ADDR[$sys]}$PATH_HIT" >/dev/null 2>&1
done
declare -A RPS
for ((r = 1; r <= ROUNDS; r++)); do
  for sys in "${SYSTEMS[@]}"; do
    log "round $r/$ROUNDS $sys"
    f="$WORK_DIR/${sys}_$r.txt"
    wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "http://${SYS_ADDR[$sys]}$PATH_HIT" >"$f" 2>&1 ||
      log "wrk against $sys exited non-zero"
    RPS[$sys,$r]=$(rps "$f")
  done
done
last_route=$(curl -s "http://${SYS_ADMIN[ours+50routes]}/metrics" | awk '/^gateway_requests_total\{.*route="r49"/ {s += $2} END {print s + 0}')
((last_route > 0)) || log_die "no request of ours+50routes was counted on route r49"

# ratio A B: "median (min-max)" of A/B over the rounds.
ratio() {
  local a=$1 b=$2 r
  for ((r = 1; r <= ROUNDS; r++)); do
    echo "${RPS[$a,$r]} ${RPS[$b,$r]}"
  done | python3 -c '
import statistics, sys
v = [float(a) / float(b) for a, b in (l.split() for l in sys.stdin) if float(b) > 0]
print(f"{statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f})")'
}
median_rps() {
  local sys=$1 r
  for ((r = 1; r <= ROUNDS; r++)); do echo "${RPS[$sys,$r]}"; done |
    python3 -c 'import statistics, sys; print(f"{statistics.median(float(l) for l in sys.stdin):.0f}")'
}

mkdir -p "$(dirname "$OUT_FILE")"
{
  echo "# Routing cost ($(date -u +%F), $(nproc) CPUs, $ROUNDS rounds x ${DURATION}s, wrk -t1 -c$CONNECTIONS, GET $PATH_HIT)"
  echo
  echo "| system | median req/s |"
  echo "| --- | --- |"
  for sys in "${SYSTEMS[@]}"; do echo "| $sys | $(median_rps "$sys") |"; done
  echo
  echo "| ratio (median of per-round ratios, min-max) | value |"
  echo "| --- | --- |"
  echo "| ours+1route / ours | $(ratio ours+1route ours) |"
  echo "| ours+50routes / ours | $(ratio ours+50routes ours) |"
  echo "| ours / bare | $(ratio ours bare) |"
  echo "| ours+1route / bare | $(ratio ours+1route bare) |"
  echo "| ours+50routes / bare | $(ratio ours+50routes bare) |"
} | tee "$OUT_FILE"
