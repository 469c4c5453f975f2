#!/usr/bin/env bash
# The ceiling of keep-alive throughput over TLS: the gateway (`ours`, its [tls] listener) against
# bare Pingora with Pingora's own rustls listener (`bare`: proxy/examples/bare_proxy.rs
# --tls-listen, nothing but round robin, keep-alive and X-Forwarded-For) and nginx terminating
# TLS (`nginx`), all on the same ECDSA certificate (scripts/dev_certs.sh), one worker each, two
# nginx backends. Interleaved rounds (ours bare nginx ours ...) of `wrk -t1 -c50 --latency` over
# HTTPS (HTTP/1.1, keep-alive); ratios are medians of per-round ratios with their spread.
#
#   loadtest/bench_tls_ceiling.sh [--rounds N] [--duration S] [--no-build] [--out FILE]
#
# Defaults: 5 rounds of 10 s (about 3 minutes). Result: a markdown table on stdout and in FILE
# [loadtest/results/bench_tls_ceiling.md]. What it answers: how close to nginx a Pingora proxy
# gets over TLS at all (bare / nginx), and so what `bench.sh --tls`'s ours / nginx can reach.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/lib.sh
source "$HERE/../scripts/lib.sh"
bench_init

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
CONNECTIONS=50
WARMUP=2
OUT_FILE="$ROOT/loadtest/results/bench_tls_ceiling.md"
bench_rounds_args "$@"
bench_rounds_setup gateway-bench-tls-ceiling openssl "apt-get install -y openssl"
CERTS="$WORK_DIR/certs"
"$ROOT/scripts/dev_certs.sh" "$CERTS" >"$WORK_DIR/dev_certs.log" 2>&1 ||
  log_die "scripts/dev_certs.sh failed: $(tail -n 3 "$WORK_DIR/dev_certs.log")"

start_bench_backends 1
read -r port admin tls_port <<<"$(free_ports 3)"
start_ours_tls ours "$port" "$admin" "$tls_port" 1 "$CERTS" false
read -r bare_port bare_tls <<<"$(free_ports 2)"
mkdir -p "$WORK_DIR/bare"
# shellcheck disable=SC2086
spawn "$WORK_DIR/bare/stdout.log" "$BARE_BIN" --listen "127.0.0.1:$bare_port" --threads 1 \
  --tls-listen "127.0.0.1:$bare_tls" --tls-cert "$CERTS/localhost.pem" --tls-key "$CERTS/localhost.key" \
  $BACKENDS_ARGS
SYS_PID[bare]=$SPAWNED_PID
SYS_TLS_ADDR[bare]="localhost:$bare_tls"
wait_serving_tls "https://localhost:$bare_tls/" "$CERTS/ca.pem" "$SPAWNED_PID" "$WORK_DIR/bare/stdout.log"
start_nginx_tls_proxy nginx "$(free_port)" 1 "$CERTS" false
SYSTEMS=(ours bare nginx)
for sys in "${SYSTEMS[@]}"; do
  wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "https://${SYS_TLS_ADDR[$sys]}/" >/dev/null 2>&1
done

declare -A RPS P99
for ((r = 1; r <= ROUNDS; r++)); do
  for sys in "${SYSTEMS[@]}"; do
    log "round $r/$ROUNDS $sys (wrk -t1 -c$CONNECTIONS -d${DURATION}s, HTTPS keep-alive)"
    f="$WORK_DIR/${sys}_$r.txt"
    wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --timeout 5s --latency "https://${SYS_TLS_ADDR[$sys]}/" >"$f" 2>&1 ||
      log "wrk against $sys exited non-zero"
    errors=$(awk '/Non-2xx|Socket errors/' "$f")
    [[ -z $errors ]] || log_die "$sys: $errors (see $f)"
    RPS[$sys,$r]=$(awk '/^Requests\/sec:/ {print $2}' "$f")
    # shellcheck disable=SC2034 # read through median_of's nameref
    P99[$sys,$r]=$(awk '$1 == "99%" { v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v)
      if (u == "us") v /= 1000; else if (u == "s") v *= 1000; print v; exit }' "$f")
  done
done

# ratio A B: "median (min-max)" of A's req/s / B's over the rounds.
ratio() {
  local a=$1 b=$2 r
  for ((r = 1; r <= ROUNDS; r++)); do echo "${RPS[$a,$r]} ${RPS[$b,$r]}"; done | python3 -c '
import statistics, sys
v = [float(a) / float(b) for a, b in (l.split() for l in sys.stdin) if float(b) > 0]
print(f"{statistics.median(v):.3f} ({min(v):.2f}-{max(v):.2f})")'
}
median_of() {
  local -n values=$1
  local sys=$2 r
  for ((r = 1; r <= ROUNDS; r++)); do echo "${values[$sys,$r]}"; done |
    python3 -c 'import statistics, sys; print(f"{statistics.median(float(l) for l in sys.stdin):.2f}")'
}

mkdir -p "$(dirname "$OUT_FILE")"
{
  echo "# Keep-alive throughput over TLS: the Pingora ceiling"
  echo
  echo "$(date -u +%FT%TZ) · git $(git -C "$ROOT" rev-parse --short HEAD) · $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)) · load before $(cut -d' ' -f1-3 /proc/loadavg) · $ROUNDS interleaved rounds x ${DURATION}s, wrk -t1 -c$CONNECTIONS over HTTPS (HTTP/1.1), one worker each, same ECDSA P-256 certificate"
  echo
  echo "| system | req/s | p99 ms |"
  echo "| --- | ---: | ---: |"
  for sys in "${SYSTEMS[@]}"; do echo "| $sys | $(median_of RPS "$sys") | $(median_of P99 "$sys") |"; done
  echo
  echo "| ratio (req/s, median of per-round ratios, min-max) | value |"
  echo "| --- | --- |"
  echo "| ours / nginx | $(ratio ours nginx) |"
  echo "| bare Pingora / nginx (the ceiling) | $(ratio bare nginx) |"
  echo "| ours / bare Pingora | $(ratio ours bare) |"
} | tee "$OUT_FILE"
