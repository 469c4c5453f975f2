#!/usr/bin/env bash
# Benchmark: the gateway against a bare Pingora proxy, nginx and HAProxy, all configured alike
# (round robin over two backends, upstream keepalive, X-Forwarded-For, same worker count), in
# front of two fixed-response nginx backends. Everything runs on 127.0.0.1 on OS-chosen ports.
#
#   loadtest/bench.sh [--rounds N] [--duration S] [--workers N] [--connections C] [--wrk-threads T]
#                     [--sweep-duration S] [--backend-workers N] [--clients N]
#                     [--skip-sweep] [--skip-clients] [--skip-conns] [--no-build] [--out DIR]
#
# Defaults: 5 rounds of 10 s, 1 worker per proxy, wrk -t1 -c50; a full run takes ~12 minutes.
# For development: loadtest/bench.sh --rounds 1 --duration 3
#
# Systems (each a separate process, all started once, measured one at a time):
#   ours       the gateway: rate limiting on (limit 1e9, never reached), metrics, headers, no access log
#   ours+log   the same with log.access_log = true (log.file in the temp dir, stdout to a file)
#   ours-norl  the same as `ours` with rate_limit.enabled = false (the limiter's cost)
#   ours+case  the same as `ours` with headers.preserve_case = true (what keeping case costs)
#   bare       proxy/examples/bare_proxy.rs: Pingora round robin + keepalive + XFF, nothing else
#   nginx      nginx reverse proxy (keepalive 128 per worker, $proxy_add_x_forwarded_for)
#   haproxy    HAProxy (balance roundrobin, option forwardfor, http-reuse always)
#   direct     wrk straight to backend 1: shows the backend is not the bottleneck
#
# Parts:
#   1. main: interleaved rounds (A B C ... A B C ...) of `wrk -t1 -c50 -d10s --latency`;
#      per system the median req/s, p50/p99 latency, CPU seconds per 100k requests
#      (utime+stime of the proxy's processes from /proc/PID/stat) and peak RSS (VmHWM, summed
#      over a process and its children); ratios ours/bare, ours/nginx, ours/haproxy as
#      medians of per-round ratios.
#   2. sweep: latency against load at 1, 16, 64 and 256 connections; chart latency_sweep.png.
#   3. clients: 10,000 distinct client addresses (127.x.y.z, loadtest/many_clients.py), 5
#      requests each, through ours, ours-norl and bare; new addresses every round.
#   4. conns: new upstream connections per 10,000 requests with 2 workers per proxy, counted
#      at the backends (nginx stub_status) and, for ours, by gateway_upstream_connections_total.
#
# Results: loadtest/results/bench.{md,csv,json} and latency_sweep.png (see bench_report.py).
# Settings may also come from the environment: ROUNDS, DURATION, WORKERS, CONNECTIONS,
# WRK_THREADS, SWEEP_DURATION, BACKEND_WORKERS, CLIENTS, KEEP_TMP=1 (keep configs and raw output).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/lib.sh
source "$HERE/../scripts/lib.sh"
bench_init

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
WORKERS=${WORKERS:-1}
CONNECTIONS=${CONNECTIONS:-50}
WRK_THREADS=${WRK_THREADS:-1}
SWEEP_DURATION=${SWEEP_DURATION:-5}
SWEEP_CONNECTIONS=(1 16 64 256)
BACKEND_WORKERS=${BACKEND_WORKERS:-1}
CLIENTS=${CLIENTS:-10000}
CLIENT_REQUESTS=${CLIENT_REQUESTS:-5}
CLIENT_ROUNDS=${CLIENT_ROUNDS:-3}
CONN_WORKERS=2
CONN_DURATION=${CONN_DURATION:-}
CONN_WARM=${CONN_WARM:-2}
WARMUP=${WARMUP:-2}
OUT="$ROOT/loadtest/results"
BUILD=1
DO_SWEEP=1
DO_CLIENTS=1
DO_CONNS=1

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; }

while (($#)); do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --wrk-threads) WRK_THREADS=$2; shift 2 ;;
    --sweep-duration) SWEEP_DURATION=$2; shift 2 ;;
    --backend-workers) BACKEND_WORKERS=$2; shift 2 ;;
    --clients) CLIENTS=$2; shift 2 ;;
    --skip-sweep) DO_SWEEP=0; shift ;;
    --skip-clients) DO_CLIENTS=0; shift ;;
    --skip-conns) DO_CONNS=0; shift ;;
    --no-build) BUILD=0; shift ;;
    --out) OUT=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; log_die "unknown argument: $1" ;;
  esac
done
CONN_DURATION=${CONN_DURATION:-$DURATION}
for v in ROUNDS DURATION WORKERS CONNECTIONS WRK_THREADS SWEEP_DURATION BACKEND_WORKERS CLIENTS; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || log_die "$v must be a positive integer (got '${!v}')"
done
((ROUNDS <= 100 && DURATION <= 600 && CLIENTS <= 1000000)) || log_die "rounds <= 100, duration <= 600, clients <= 1000000"

log_need wrk "apt-get install -y wrk"
log_need nginx "apt-get install -y nginx-light"
log_need haproxy "apt-get install -y haproxy"
log_need python3 "apt-get install -y python3"
log_need curl "apt-get install -y curl"
((DO_SWEEP)) && need_matplotlib

((BUILD)) && build_release
check_binaries

install_cleanup
make_work_dir gateway-bench
chmod 755 "$WORK_DIR" # nginx workers run as nobody
RAW="$WORK_DIR/raw"
mkdir -p "$RAW" "$OUT"

# run_wrk SYSTEM CONNECTIONS SECONDS OUTFILE: one wrk run; prints the CPU ticks it cost SYSTEM.
run_wrk() {
  local sys=$1 conns=$2 secs=$3 out=$4 pid addr t0 t1 threads
  pid=${SYS_PID[$sys]}
  addr=${SYS_ADDR[$sys]}
  threads=$((WRK_THREADS < conns ? WRK_THREADS : conns))
  t0=$(cpu_ticks "$pid")
  wrk -t"$threads" -c"$conns" -d"${secs}s" --timeout 5s --latency "http://$addr/" >"$out" 2>&1 \
    || log "wrk against $sys exited non-zero (see $out)"
  t1=$(cpu_ticks "$pid")
  echo $((t1 - t0))
}

log "backends: 2 x nginx (worker_processes $BACKEND_WORKERS)"
start_bench_backends "$BACKEND_WORKERS"
SYS_PID[direct]=${BACKEND_PID[backend1]}
SYS_ADDR[direct]="127.0.0.1:${BACKEND_PORTS[0]}"

log "systems: $WORKERS worker(s)/thread(s) each"
start_ours ours "$(free_port)" "$(free_port)" "$WORKERS" true false
start_ours ours+log "$(free_port)" "$(free_port)" "$WORKERS" true true
start_ours ours-norl "$(free_port)" "$(free_port)" "$WORKERS" false false
PRESERVE_CASE=true start_ours ours+case "$(free_port)" "$(free_port)" "$WORKERS" true false
start_bare bare "$(free_port)" "$WORKERS"
start_nginx_proxy nginx "$(free_port)" "$WORKERS"
start_haproxy haproxy "$(free_port)" "$WORKERS"
SYSTEMS=(ours ours+log ours-norl ours+case bare nginx haproxy direct)

# Every proxy must add X-Forwarded-For and reach both backends before anything is measured.
for sys in ours ours+log ours-norl ours+case bare nginx haproxy; do
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://${SYS_ADDR[$sys]}/")
  [[ "$code" == 200 ]] || log_die "$sys answered $code"
done

cat >"$RAW/meta.json" <<EOF
{"date": "$(date -u +%FT%TZ)", "git": "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo -dirty)",
 "host": "$(uname -srm)", "cpus": $(nproc), "cpu_model": "$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)",
 "load_before": "$(cut -d' ' -f1-3 /proc/loadavg)",
 "rounds": $ROUNDS, "duration_s": $DURATION, "workers": $WORKERS, "connections": $CONNECTIONS,
 "wrk_threads": $WRK_THREADS, "backend_workers": $BACKEND_WORKERS, "sweep_duration_s": $SWEEP_DURATION,
 "clients": $CLIENTS, "client_requests": $CLIENT_REQUESTS, "client_rounds": $CLIENT_ROUNDS,
 "conn_workers": $CONN_WORKERS, "conn_duration_s": $CONN_DURATION, "conn_warm_s": $CONN_WARM, "clk_tck": $CLK_TCK,
 "versions": {"nginx": "$(nginx -v 2>&1 | sed 's/.*\///')", "haproxy": "$(haproxy -v | awk 'NR==1 {print $3}')",
              "wrk": "$(wrk -v 2>&1 | awk 'NR==1 {print $2}')", "rustc": "$(rustc --version 2>/dev/null | awk '{print $2}')"}}
EOF

# --- 1. main comparison ----------------------------------------------------------------------
log "warm-up: ${WARMUP}s per system"
for sys in "${SYSTEMS[@]}"; do
  run_wrk "$sys" "$CONNECTIONS" "$WARMUP" "$RAW/warmup_$sys.txt" >/dev/null
done

printf 'system\tround\tfile\tticks\thwm_kb\trss_kb\n' >"$RAW/main.tsv"
for ((r = 1; r <= ROUNDS; r++)); do
  for sys in "${SYSTEMS[@]}"; do
    log "main: round $r/$ROUNDS $sys (wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s)"
    f="$RAW/main_${sys}_$r.txt"
    ticks=$(run_wrk "$sys" "$CONNECTIONS" "$DURATION" "$f")
    printf '%s\t%d\t%s\t%d\t%d\t%d\n' "$sys" "$r" "$f" "$ticks" \
      "$(status_kb "${SYS_PID[$sys]}" VmHWM)" "$(status_kb "${SYS_PID[$sys]}" VmRSS)" >>"$RAW/main.tsv"
  done
done

# --- 2. latency against load -----------------------------------------------------------------
printf 'system\tconnections\tfile\tticks\n' >"$RAW/sweep.tsv"
if ((DO_SWEEP)); then
  for c in "${SWEEP_CONNECTIONS[@]}"; do
    for sys in ours bare nginx haproxy direct; do
      log "sweep: $sys at $c connections (${SWEEP_DURATION}s)"
      f="$RAW/sweep_${sys}_$c.txt"
      ticks=$(run_wrk "$sys" "$c" "$SWEEP_DURATION" "$f")
      printf '%s\t%d\t%s\t%d\n' "$sys" "$c" "$f" "$ticks" >>"$RAW/sweep.tsv"
    done
  done
fi

# --- 3. many distinct clients ----------------------------------------------------------------
printf 'system\tround\tfile\tticks\thwm_kb\trss_kb\n' >"$RAW/clients.tsv"
if ((DO_CLIENTS)); then
  # Each (round, system) gets its own block of addresses, so every limiter sees new clients.
  block=0
  for ((r = 1; r <= CLIENT_ROUNDS; r++)); do
    for sys in ours ours-norl bare; do
      block=$((block + 1))
      first=$(python3 -c "import ipaddress; print(ipaddress.IPv4Address(int(ipaddress.IPv4Address('127.1.0.1')) + $block * ($CLIENTS * 256 // 254 + 256)))")
      log "clients: round $r/$CLIENT_ROUNDS $sys: $CLIENTS clients x $CLIENT_REQUESTS requests from $first on"
      f="$RAW/clients_${sys}_$r.json"
      t0=$(cpu_ticks "${SYS_PID[$sys]}")
      timeout 600 python3 "$HERE/many_clients.py" --target "${SYS_ADDR[$sys]}" --clients "$CLIENTS" \
        --requests-per-client "$CLIENT_REQUESTS" --first "$first" --concurrency 100 --timeout 300 >"$f" \
        || log "many_clients.py against $sys failed"
      t1=$(cpu_ticks "${SYS_PID[$sys]}")
      printf '%s\t%d\t%s\t%d\t%d\t%d\n' "$sys" "$r" "$f" $((t1 - t0)) \
        "$(status_kb "${SYS_PID[$sys]}" VmHWM)" "$(status_kb "${SYS_PID[$sys]}" VmRSS)" >>"$RAW/clients.tsv"
    done
  done
fi

# --- 4. new upstream connections with 2 workers ----------------------------------------------
# Counted at the backends: nginx stub_status `accepts` and `requests` (each read is itself one
# connection and one request per backend, subtracted). `cold` spans a fresh proxy's whole run,
# pool filling included; `steady` is a window inside the same run, after CONN_WARM seconds.
printf 'system\tphase\tfile\tnew\trequests\tmetric_new\n' >"$RAW/conns.tsv"
if ((DO_CONNS)); then
  # Only the proxy being measured may talk to the backends meanwhile: stop the others (and
  # their health checks).
  for sys in ours ours+log ours-norl ours+case bare nginx haproxy; do
    stop_pid "${SYS_PID[$sys]}"
  done
  # backend_counts: "accepts requests" summed over the backends.
  backend_counts() {
    local a=0 q=0 p line
    for p in "${BACKEND_PORTS[@]}"; do
      line=$(curl -s -m 2 "http://127.0.0.1:$p/__status" | awk 'NR == 3 {print $1, $3}')
      a=$((a + ${line% *}))
      q=$((q + ${line#* }))
    done
    echo "$a $q"
  }
  metric_new() {
    if [[ $1 == ours ]]; then
      ours_metric_sum "${SYS_ADMIN[conn-ours]}" '^gateway_upstream_connections_total.*reused="false"'
    else
      echo 0
    fi
  }
  nb=${#BACKEND_PORTS[@]}
  for sys in ours bare nginx haproxy; do
    name="conn-$sys"
    case $sys in
      ours) start_ours "$name" "$(free_port)" "$(free_port)" "$CONN_WORKERS" true false ;;
      bare) start_bare "$name" "$(free_port)" "$CONN_WORKERS" ;;
      nginx) start_nginx_proxy "$name" "$(free_port)" "$CONN_WORKERS" ;;
      haproxy) start_haproxy "$name" "$(free_port)" "$CONN_WORKERS" ;;
    esac
    log "conns: $sys ($CONN_WORKERS workers): wrk -c$CONNECTIONS for ${CONN_WARM}+${CONN_DURATION}s"
    read -r a0 q0 <<<"$(backend_counts)"
    m0=$(metric_new "$sys")
    f="$RAW/conns_$sys.txt"
    spawn "$f" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$((CONN_WARM + CONN_DURATION))s" --timeout 5s \
      --latency "http://${SYS_ADDR[$name]}/"
    wrk_pid=$SPAWNED_PID
    sleep "$CONN_WARM"
    read -r a1 q1 <<<"$(backend_counts)"
    m1=$(metric_new "$sys")
    sleep "$CONN_DURATION"
    read -r a2 q2 <<<"$(backend_counts)"
    m2=$(metric_new "$sys")
    wait "$wrk_pid" || log "wrk against $sys exited non-zero (see $f)"
    read -r a3 q3 <<<"$(backend_counts)"
    m3=$(metric_new "$sys")
    metric_cold=$([[ $sys == ours ]] && echo $((m3 - m0)) || echo "")
    metric_steady=$([[ $sys == ours ]] && echo $((m2 - m1)) || echo "")
    printf '%s\t%s\t%s\t%d\t%d\t%s\n' "$sys" cold "$f" $((a3 - a0 - nb)) $((q3 - q0 - nb)) "$metric_cold" >>"$RAW/conns.tsv"
    printf '%s\t%s\t%s\t%d\t%d\t%s\n' "$sys" steady "$f" $((a2 - a1 - nb)) $((q2 - q1 - nb)) "$metric_steady" >>"$RAW/conns.tsv"
    stop_pid "${SYS_PID[$name]}"
  done
fi

log "report"
python3 "$HERE/bench_report.py" --raw "$RAW" --out "$OUT"
