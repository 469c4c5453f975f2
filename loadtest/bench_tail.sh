#!/usr/bin/env bash
# The tail at high concurrency: latency percentiles at 256 kept-alive connections (one worker
# each, two nginx backends), for the gateway with its default features (`ours`), the gateway with
# as little as it allows (`ours-min`: no rate limiting, no outlier detection; metrics, health
# checks and the contract's headers stay), and bare Pingora. Interleaved rounds
# (ours ours-min bare ours ...) of `wrk -t1 -c256 --latency`; every ratio is the median of
# per-round ratios with its spread (min-max).
#
#   loadtest/bench_tail.sh [--rounds N] [--duration S] [--connections C] [--no-build] [--out FILE]
#
# Defaults: 7 rounds of 10 s at 256 connections (about 4 minutes).
# Result: a markdown table on stdout and in FILE [loadtest/results/bench_tail.md].
#
# How to read it. A closed loop of C connections against a saturated single worker has a mean
# latency of C / throughput (Little's law), so a proxy that needs more CPU per request has a
# proportionally higher latency at every percentile: "queueing from extra CPU alone" shows as
# p50, p90 and p99 ratios all close to bare's req/s over ours's (the `CPU-only` column). A p99
# ratio well above that, or a p99/p50 spread wider than bare's, means something of ours batches
# or blocks (timers, flushes, locks, background tasks).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/lib.sh
source "$HERE/../scripts/lib.sh"
bench_init

ROUNDS=${ROUNDS:-7}
DURATION=${DURATION:-10}
CONNECTIONS=256
WARMUP=2
OUT_FILE="$ROOT/loadtest/results/bench_tail.md"
CONNECTIONS_MAX=5000 bench_rounds_args "$@"
bench_rounds_setup gateway-bench-tail

start_bench_backends 1
start_ours ours "$(free_port)" "$(free_port)" 1 true false
EXTRA_TOML=$'[upstream.outlier]\nconsecutive_failures = 0' \
  start_ours ours-min "$(free_port)" "$(free_port)" 1 false false
start_bare bare "$(free_port)" 1
SYSTEMS=(ours ours-min bare)
for sys in "${SYSTEMS[@]}"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://${SYS_ADDR[$sys]}/")
  [[ "$code" == 200 ]] || log_die "$sys answered $code"
  wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "http://${SYS_ADDR[$sys]}/" >/dev/null 2>&1
done

# wrk's latency in ms: "50%  1.23ms" (us, ms or s).
pct() {
  awk -v p="$2%" '$1 == p {
    v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v)
    if (u == "us") v /= 1000; else if (u == "s") v *= 1000
    print v; exit }' "$1"
}
declare -A VAL
for ((r = 1; r <= ROUNDS; r++)); do
  for sys in "${SYSTEMS[@]}"; do
    log "round $r/$ROUNDS $sys (wrk -t1 -c$CONNECTIONS -d${DURATION}s)"
    f="$WORK_DIR/${sys}_$r.txt"
    wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --timeout 5s --latency "http://${SYS_ADDR[$sys]}/" >"$f" 2>&1 ||
      log "wrk against $sys exited non-zero"
    VAL[$sys,rps,$r]=$(awk '/^Requests\/sec:/ {print $2}' "$f")
    for p in 50 90 99; do VAL[$sys,p$p,$r]=$(pct "$f" "$p"); done
    errors=$(awk '/Non-2xx|Socket errors/' "$f")
    [[ -z $errors ]] || log_die "$sys: $errors (see $f)"
  done
done

# stat A B KEY [inverse]: "median (min-max)" over rounds of A's KEY / B's KEY (or B's / A's).
stat() {
  local a=$1 b=$2 key=$3 inv=${4:-} r
  for ((r = 1; r <= ROUNDS; r++)); do
    if [[ -n $inv ]]; then echo "${VAL[$b,$key,$r]} ${VAL[$a,$key,$r]}"; else echo "${VAL[$a,$key,$r]} ${VAL[$b,$key,$r]}"; fi
  done | python3 -c '
import statistics, sys
v = [float(a) / float(b) for a, b in (l.split() for l in sys.stdin) if float(b) > 0]
print(f"{statistics.median(v):.3f} ({min(v):.2f}-{max(v):.2f})")'
}
median() {
  local sys=$1 key=$2 r
  for ((r = 1; r <= ROUNDS; r++)); do echo "${VAL[$sys,$key,$r]}"; done |
    python3 -c 'import statistics, sys; print(f"{statistics.median(float(l) for l in sys.stdin):.2f}")'
}
spread() { # p99 / p50 of one system, median over rounds
  local sys=$1 r
  for ((r = 1; r <= ROUNDS; r++)); do echo "${VAL[$sys,p99,$r]} ${VAL[$sys,p50,$r]}"; done |
    python3 -c '
import statistics, sys
print(f"{statistics.median(float(a) / float(b) for a, b in (l.split() for l in sys.stdin)):.2f}")'
}

mkdir -p "$(dirname "$OUT_FILE")"
{
  echo "# The tail at $CONNECTIONS connections"
  echo
  echo "$(date -u +%FT%TZ) · git $(git -C "$ROOT" rev-parse --short HEAD) · $(nproc) CPUs · $ROUNDS interleaved rounds x ${DURATION}s, wrk -t1 -c$CONNECTIONS, one worker per proxy, two nginx backends"
  echo
  echo "| system | req/s | p50 ms | p90 ms | p99 ms | p99/p50 |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: |"
  for sys in "${SYSTEMS[@]}"; do
    echo "| $sys | $(median "$sys" rps) | $(median "$sys" p50) | $(median "$sys" p90) | $(median "$sys" p99) | $(spread "$sys") |"
  done
  echo
  echo "Ratios to bare Pingora, medians of per-round ratios (min-max). \`CPU-only\` is bare's req/s over the system's: the latency ratio queueing alone would give."
  echo
  echo "| system / bare | CPU-only | p50 | p90 | p99 |"
  echo "| --- | ---: | ---: | ---: | ---: |"
  for sys in ours ours-min; do
    echo "| $sys | $(stat "$sys" bare rps inverse) | $(stat "$sys" bare p50) | $(stat "$sys" bare p90) | $(stat "$sys" bare p99) |"
  done
} | tee "$OUT_FILE"
