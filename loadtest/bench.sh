#!/usr/bin/env bash
# Benchmark: the gateway against a bare Pingora proxy, nginx and HAProxy, all configured alike
# (round robin over two backends, upstream keepalive, X-Forwarded-For, same worker count), in
# front of two fixed-response nginx backends. Everything runs on 127.0.0.1 on OS-chosen ports.
#
#   loadtest/bench.sh [--rounds N] [--duration S] [--workers N] [--connections C] [--wrk-threads T]
#                     [--sweep-duration S] [--backend-workers N] [--clients N]
#                     [--skip-sweep] [--skip-clients] [--skip-conns] [--skip-memory] [--no-build] [--out DIR]
#   loadtest/bench.sh --tls [--rounds N] [--duration S] [--workers N] [--connections C]
#                     [--wrk-threads T] [--backend-workers N] [--hs-burst N] [--hs-threads T]
#                     [--hs-rounds N] [--hs-duration S]
#                     [--no-build] [--out DIR]
#
# Defaults: 45 rounds of 5 slots of 2 s in the main part (--rounds; --duration sets the slot), 1
# worker per proxy, wrk -t1 -c50. A full run takes ~12.5 minutes on the 2-core VM (must stay
# under 15); budget per part, as measured (bench.md lists each run's own times):
#   setup ~0.1 min (+ the build, if any: ~0.7 min after a change in proxy/) · 1. main ~8 min
#   (warm-up 8 x 2 s; 45 x 5 slots x 2 s of wrk, ~0.05 s of bookkeeping per slot) · 2. sweep
#   ~1.7 min (20 points x 5 s) · 3. clients ~0.6 min · 4. conns ~0.9 min (4 x 12 s) ·
#   5. memory ~1.5 min.
# --tls defaults to 36 rounds of 2 s slots instead (see below).
# For development: loadtest/bench.sh --rounds 2 --duration 1 --skip-sweep --skip-clients --skip-conns --skip-memory
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
#   1. main: ROUNDS rounds, each of 5 back-to-back slots of `wrk -t1 -c50 -dDURATION --latency`,
#      ordered so that slow drift of the VM cancels out of the ratios (paired, ABBA):
#        ours bare S bare ours    or    bare ours S ours bare
#      ours and bare are measured twice in every round, symmetrically about the round's middle,
#      so a linear drift within the round affects both alike; S, in the middle (so its ratios to
#      ours and bare are symmetric too), is one of the six secondary systems, in turn
#      (ours+log ours-norl ours+case nginx haproxy direct). Which of ours and bare comes first
#      alternates, shifted every cycle of six. So ours and bare get ROUNDS rounds, each secondary
#      ROUNDS/6 (7 or 8 by default, the fewest that still give a 95% interval of the median):
#      the default spends the time on the ratio with a target, ours/bare; the secondaries'
#      ratios are resolved less finely.
#      Per round and system: req/s = requests / seconds over its slots, p50/p99 = mean of its
#      slots' wrk percentiles, CPU seconds per 100k requests (utime+stime of the proxy's
#      processes from /proc/PID/stat over its slots) and peak RSS (VmHWM, summed over a process
#      and its children). Per system the median over rounds. Every ratio (ours/bare,
#      ours/nginx, ...; req/s, CPU/req, p50, p99) is the median of the per-round ratios with
#      their spread (min-max) and a distribution-free 95% confidence interval of that median
#      (order statistics of the per-round ratios, binomial method); a ratio resolves a 5%
#      difference when the interval's half-width is <= 2.5% of the median. ours/bare req/s is
#      checked against 0.90: "yes" when the whole interval is >= 0.90, "no" when it is below,
#      else "undecided".
#      Why 45 x 2 s: pilots of ours and bare alone in the same ABBA order on this VM
#      (2026-11-26, no other benchmark running), per-round req/s ratio ours/bare:
#        24 rounds x 2 s slots   SD 0.061, robust SD (1.4826 MAD) 0.033 = 3.7% of the median
#        48 rounds x 1 s slots   SD 0.069, robust SD 0.048 = 5.2%  (p99 ratio: 25%, vs 9% at 2 s)
#        12 rounds x 4 s slots   SD 0.158, robust SD 0.059 = 6.9%  (a noisier period: single
#                                slots varied by 20%, against 7-11% in the 2 s pilot)
#      The median's 95% interval has a half-width of about 1.96 x 1.2533 x SD / sqrt(n), so
#      <= 2.5% needs n >= (2.46 x SD / 2.5%)^2: 14 rounds at 3.7%, 27 at 5.2%, 47 at 6.9%.
#      The order-statistics interval is wider than that (discrete, >= 95%): a first full run
#      with 36 rounds (6 slots each, two secondaries per round) had robust SD 4.8% (formula:
#      23 rounds) and a half-width of 2.54%. Hence 45 rounds, one secondary per round, in the
#      same time. 1 s slots were noisier per second measured, p99 above all. The p99 ratio
#      (robust SD 9-10%) would need ~90 rounds: it is reported with its interval, but a 5%
#      difference in p99 is not resolved by the default run.
#   2. sweep: latency against load at 1, 16, 64 and 256 connections; chart latency_sweep.png.
#   3. clients: 10,000 distinct client addresses (127.x.y.z, loadtest/many_clients.py), 5
#      requests each, through ours, ours-norl and bare; new addresses every round.
#   4. conns: new upstream connections per 10,000 requests with 2 workers per proxy, counted
#      at the backends (nginx stub_status) and, for ours, by gateway_upstream_connections_total
#      (one wrk run of CONN_WARM + CONN_DURATION seconds, 2 + 10 by default, per proxy).
#   5. memory: RSS per idle keep-alive connection, 10,000 connections held open through ours,
#      bare, nginx and HAProxy (loadtest/bench_memory.sh, run after the parts above with their
#      processes stopped; its own backends and 3 rounds, fresh processes; --rounds and
#      --duration do not apply; MEM_ROUNDS, MEM_CONNECTIONS may come from the environment).
#
# Results: loadtest/results/bench.{md,csv,json} and latency_sweep.{png,csv} (see
# bench_report.py; written after part 5, with each part's wall time and the machine: CPU model,
# nproc, kernel, hypervisor, load and steal time); the memory part's in
# loadtest/results/memory.md (its generated block).
#
# --tls runs only this comparison (none of the parts above): `ours` (as above, plus a [tls]
# listener; its plain listener stays, unused) against nginx terminating TLS (one worker each,
# the same two backends, upstream keepalive, X-Forwarded-For) and, in the keep-alive test, bare
# Pingora with Pingora's own rustls listener (`bare`: what a Pingora proxy reaches over TLS at
# all; bare_proxy --tls-listen, ALPN as Pingora sets it), all with the same certificate
# (scripts/dev_certs.sh in the temp dir: ECDSA P-256), TLS 1.2 and 1.3, ALPN h2 and http/1.1
# offered by both (tls.http2 = true; nginx `listen ... ssl http2`), clients speaking HTTP/1.1
# to https://localhost:PORT/ (SNI sent). Resumption is offered alike (the gateway's rustls: an
# in-memory session cache and two TLS 1.3 tickets per handshake; nginx: ssl_session_tickets on,
# two tickets) and never taken by the handshake client, so every handshake measured is full.
#   keep-alive  ROUNDS rounds (default 36), each of six back-to-back runs of `wrk -t1 -c50
#               -dDURATION --latency` over HTTPS (DURATION default 2 s): every system twice,
#               symmetric about the round's middle (X Y Z Z Y X, rotating every round), as the
#               main part pairs ours and bare; req/s, p50/p99, CPU per 100k requests per round;
#               ratios ours/nginx, bare/nginx and ours/bare as medians of per-round ratios with
#               their 95% interval; target ours/nginx req/s >= 0.85 (verdict by the interval, and
#               the same bound shown for bare/nginx). About 9 minutes at the defaults.
#   then HS_ROUNDS (--hs-rounds, default 5) interleaved rounds (ours nginx ours nginx ...) of:
#   handshakes  new TLS connections per second: bursts of `h2load --h1 -c N -n N -m 1
#               -H 'Connection: close'` (N = --hs-burst, 1000) repeated for --hs-duration
#               seconds (default 10) per system and round.
#               With -n equal to -c every h2load client makes one connection, with a TLS
#               session of its own (nothing to resume), sends one request and is done. (A
#               client that sends several requests on new connections -- h2load -c 50 -n 2000
#               with Connection: close, or wrk with that header -- reconnects with the same
#               OpenSSL object and resumes its session: that would measure resumptions.)
#               Rate = connections answered 2xx / h2load's own running time, summed over the
#               bursts; also the server's CPU and h2load's CPU per connection. A server busy
#               well below 100% means the client or the box set the rate (h2load does as much
#               crypto per handshake as the server or more: it verifies the signature the server
#               makes): then compare CPU per connection.
# Results: loadtest/results/bench_tls.{md,json}. Needs h2load (apt-get install -y
# nghttp2-client) and openssl besides wrk, nginx and curl. HS_BURST, HS_THREADS, HS_ROUNDS and
# HS_DURATION may come from the environment too.
# Settings may also come from the environment: ROUNDS, DURATION, WORKERS, CONNECTIONS,
# WRK_THREADS, SWEEP_DURATION, BACKEND_WORKERS, CLIENTS, CLIENT_ROUNDS, CONN_DURATION, CONN_WARM,
# WARMUP, KEEP_TMP=1 (keep configs and raw output).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/lib.sh
source "$HERE/../scripts/lib.sh"
bench_init

# ROUNDS and DURATION default by mode (main: 45 x 2 s slots; --tls: 36 x 2 s), after the options.
ROUNDS=${ROUNDS:-}
DURATION=${DURATION:-}
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
CONN_DURATION=${CONN_DURATION:-10}
CONN_WARM=${CONN_WARM:-2}
WARMUP=${WARMUP:-2}
HS_BURST=${HS_BURST:-1000}
HS_THREADS=${HS_THREADS:-1}
HS_ROUNDS=${HS_ROUNDS:-5}
HS_DURATION=${HS_DURATION:-10}
OUT="$ROOT/loadtest/results"
BUILD=1
TLS=0
DO_SWEEP=1
DO_CLIENTS=1
DO_CONNS=1
DO_MEMORY=1

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
    --skip-memory) DO_MEMORY=0; shift ;;
    --tls) TLS=1; shift ;;
    --hs-burst) HS_BURST=$2; shift 2 ;;
    --hs-threads) HS_THREADS=$2; shift 2 ;;
    --hs-rounds) HS_ROUNDS=$2; shift 2 ;;
    --hs-duration) HS_DURATION=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --out) OUT=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; log_die "unknown argument: $1" ;;
  esac
done
if ((TLS)); then
  ROUNDS=${ROUNDS:-36}
  DURATION=${DURATION:-2}
else
  ROUNDS=${ROUNDS:-45}
  DURATION=${DURATION:-2}
fi
for v in ROUNDS DURATION WORKERS CONNECTIONS WRK_THREADS SWEEP_DURATION BACKEND_WORKERS CLIENTS CONN_DURATION; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || log_die "$v must be a positive integer (got '${!v}')"
done
((ROUNDS <= 100 && DURATION <= 600 && CLIENTS <= 1000000)) || log_die "rounds <= 100, duration <= 600, clients <= 1000000"
RUN_T0=$(now_ms)

# --- --tls: ours against nginx, both terminating TLS (see the header) ------------------------
# Runs instead of everything below and exits.
if ((TLS)); then
  for v in HS_BURST HS_THREADS HS_ROUNDS HS_DURATION; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || log_die "$v must be a positive integer (got '${!v}')"
  done
  # A burst is accepted from the listen queue (backlog 4096 for both, capped by somaxconn):
  # beyond it SYNs are dropped and retried a second later, which would be timed as handshakes.
  # h2load holds one descriptor per connection of the burst, nginx two.
  somaxconn=$(cat /proc/sys/net/core/somaxconn 2>/dev/null || echo 4096)
  ((HS_BURST <= 4096 && HS_BURST <= somaxconn)) ||
    log_die "--hs-burst must stay within the listen backlog (4096, net.core.somaxconn = $somaxconn)"
  ((HS_THREADS <= HS_BURST)) || log_die "--hs-threads must not exceed --hs-burst"
  ((HS_ROUNDS <= 100 && HS_DURATION <= 600)) || log_die "--hs-rounds <= 100, --hs-duration <= 600"
  nofile=$(ulimit -n)
  [[ $nofile == unlimited ]] || ((2 * HS_BURST + 256 <= nofile)) ||
    log_die "--hs-burst $HS_BURST needs ulimit -n >= $((2 * HS_BURST + 256)) (it is $nofile); lower it or raise the limit"
  log_need wrk "apt-get install -y wrk"
  log_need h2load "apt-get install -y nghttp2-client"
  log_need nginx "apt-get install -y nginx-light"
  log_need openssl "apt-get install -y openssl"
  log_need python3 "apt-get install -y python3"
  log_need curl "apt-get install -y curl"

  ((BUILD)) && build_release
  check_binaries

  install_cleanup
  make_work_dir gateway-bench-tls
  chmod 755 "$WORK_DIR" # nginx workers run as nobody
  RAW="$WORK_DIR/raw"
  CERTS="$WORK_DIR/certs"
  mkdir -p "$RAW" "$OUT"
  "$ROOT/scripts/dev_certs.sh" "$CERTS" >"$WORK_DIR/dev_certs.log" 2>&1 ||
    log_die "scripts/dev_certs.sh failed: $(tail -n 3 "$WORK_DIR/dev_certs.log")"

  log "backends: 2 x nginx (worker_processes $BACKEND_WORKERS)"
  start_bench_backends "$BACKEND_WORKERS"
  log "systems: $WORKERS worker(s)/thread(s) each, TLS on the same certificate"
  read -r port admin tls_port <<<"$(free_ports 3)"
  start_ours_tls ours "$port" "$admin" "$tls_port" "$WORKERS" "$CERTS" true
  start_nginx_tls_proxy nginx "$(free_port)" "$WORKERS" "$CERTS" true
  read -r port tls_port <<<"$(free_ports 2)"
  start_bare_tls bare "$port" "$tls_port" "$WORKERS" "$CERTS"
  TLS_SYSTEMS=(ours bare nginx)
  # The handshake part compares the gateway with nginx only.
  HS_SYSTEMS=(ours nginx)

  # What each system offers and what a client gets: HTTP/2 by ALPN (curl --http2), and, through
  # OpenSSL as wrk uses it, the protocol, cipher, key exchange and the session tickets sent
  # after one handshake (read until the server closes: Connection: close).
  printf 'system\tcheck\tvalue\n' >"$RAW/tls_info.tsv"
  for sys in "${TLS_SYSTEMS[@]}"; do
    url="https://${SYS_TLS_ADDR[$sys]}/"
    h2=$(curl -s -o /dev/null --cacert "$CERTS/ca.pem" --http2 -w '%{http_version}' -m 5 "$url" || true)
    h1=$(curl -s -o /dev/null --cacert "$CERTS/ca.pem" --http1.1 -w '%{http_code} HTTP/%{http_version}' -m 5 "$url" || true)
    [[ $h1 == "200 HTTP/1.1" ]] || log_die "$sys over HTTPS with HTTP/1.1 answered '$h1'"
    s_client=$(printf 'GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' |
      timeout 10 openssl s_client -connect "127.0.0.1:${SYS_TLS_ADDR[$sys]##*:}" -servername localhost \
        -CAfile "$CERTS/ca.pem" -verify_return_error -msg -ign_eof 2>&1 || true)
    grep -q '^HTTP/1.1 200' <<<"$s_client" || log_die "$sys: no 200 through openssl s_client"
    {
      printf '%s\thttp2_offered\t%s\n' "$sys" "$([[ $h2 == 2 ]] && echo yes || echo "no (HTTP/$h2)")"
      printf '%s\topenssl_cipher\t%s\n' "$sys" "$(sed -n 's/^New, \(.*\), Cipher is \(.*\)$/\1 \2/p' <<<"$s_client" | head -n 1)"
      printf '%s\topenssl_key_exchange\t%s\n' "$sys" "$(sed -n 's/^Server Temp Key: \(.*\)$/\1/p' <<<"$s_client" | head -n 1)"
      printf '%s\ttickets_per_handshake\t%s\n' "$sys" "$(grep -c '^<<< .*NewSessionTicket' <<<"$s_client" || true)"
    } >>"$RAW/tls_info.tsv"
  done

  cat >"$RAW/meta.json" <<EOF
{"date": "$(date -u +%FT%TZ)", "git": "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo -dirty)",
 "host": "$(uname -srm)", "cpus": $(nproc), "cpu_model": "$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)",
 "load_before": "$(cut -d' ' -f1-3 /proc/loadavg)",
 "rounds": $ROUNDS, "duration_s": $DURATION, "workers": $WORKERS, "connections": $CONNECTIONS,
 "wrk_threads": $WRK_THREADS, "backend_workers": $BACKEND_WORKERS, "warmup_s": $WARMUP,
 "hs_burst": $HS_BURST, "hs_threads": $HS_THREADS, "hs_rounds": $HS_ROUNDS, "hs_duration_s": $HS_DURATION,
 "clk_tck": $CLK_TCK,
 "versions": {"nginx": "$(nginx -v 2>&1 | sed 's/.*\///')", "wrk": "$(wrk -v 2>&1 | awk 'NR==1 {print $2}')",
              "h2load": "$(h2load --version 2>&1 | awk 'NR==1 {print $2}')", "openssl": "$(openssl version | awk '{print $2}')",
              "rustls": "$(awk '$0 == "name = \"rustls\"" {getline; gsub(/[^0-9.]/, ""); print; exit}' "$ROOT/Cargo.lock")",
              "rustc": "$(rustc --version 2>/dev/null | awk '{print $2}')"}}
EOF

  # tls_keepalive SYSTEM SECONDS OUTFILE: one wrk run over HTTPS; prints the CPU ticks it cost.
  tls_keepalive() {
    local sys=$1 secs=$2 out=$3 pid t0 t1 threads
    pid=${SYS_PID[$sys]}
    threads=$((WRK_THREADS < CONNECTIONS ? WRK_THREADS : CONNECTIONS))
    t0=$(cpu_ticks "$pid")
    wrk -t"$threads" -c"$CONNECTIONS" -d"${secs}s" --timeout 5s --latency "https://${SYS_TLS_ADDR[$sys]}/" \
      >"$out" 2>&1 || log "wrk against $sys exited non-zero (see $out)"
    t1=$(cpu_ticks "$pid")
    echo $((t1 - t0))
  }

  # tls_handshakes SYSTEM SECONDS DIR [BURST]: h2load bursts (one connection, one request per
  # client) until SECONDS have passed, each burst's output in DIR/burst_I.txt; prints the
  # server's CPU ticks, the milliseconds it took and h2load's CPU seconds (`times` of the
  # subshell that ran the bursts).
  tls_handshakes() {
    local sys=$1 secs=$2 dir=$3 burst=${4:-$HS_BURST} pid t0 t1 w0 w1 cpu
    pid=${SYS_PID[$sys]}
    mkdir -p "$dir"
    t0=$(cpu_ticks "$pid")
    w0=$(now_ms)
    cpu=$(
      (
        i=0
        while :; do
          i=$((i + 1))
          h2load --h1 -t"$HS_THREADS" -c"$burst" -n"$burst" -m1 -H 'Connection: close' \
            "https://${SYS_TLS_ADDR[$sys]}/" >"$dir/burst_$i.txt" 2>&1 ||
            log "h2load against $sys exited non-zero (see $dir/burst_$i.txt)"
          (($(now_ms) - w0 < secs * 1000)) || break
        done
        times
      ) | awk -F'[ms ]+' 'NR == 2 { printf "%.3f", $1 * 60 + $2 + $3 * 60 + $4 }'
    )
    w1=$(now_ms)
    t1=$(cpu_ticks "$pid")
    echo "$((t1 - t0)) $((w1 - w0)) ${cpu:-0}"
  }

  log "warm-up: ${WARMUP}s of wrk per system, one h2load burst per system of the handshake part"
  for sys in "${TLS_SYSTEMS[@]}"; do
    tls_keepalive "$sys" "$WARMUP" "$RAW/warmup_$sys.txt" >/dev/null
  done
  for sys in "${HS_SYSTEMS[@]}"; do
    tls_handshakes "$sys" 0 "$RAW/warmup_hs_$sys" $((HS_BURST < 200 ? HS_BURST : 200)) >/dev/null
  done
  hs_failures0=$(ours_metric_sum "${SYS_ADMIN[ours]}" '^gateway_tls_handshake_failures_total')

  # Keep-alive: per round every system twice, symmetric about the round's middle (X Y Z Z Y X),
  # so a linear drift within the round affects all three alike; X, Y, Z rotate every round.
  printf 'system\tround\tslot\tfile\tticks\n' >"$RAW/tls_keepalive.tsv"
  head -n 1 /proc/stat >"$RAW/stat_keepalive_start"
  n=${#TLS_SYSTEMS[@]}
  for ((r = 1; r <= ROUNDS; r++)); do
    order=()
    for ((i = 0; i < n; i++)); do order+=("${TLS_SYSTEMS[$(((r - 1 + i) % n))]}"); done
    for ((i = n - 1; i >= 0; i--)); do order+=("${order[$i]}"); done
    log "keep-alive: round $r/$ROUNDS: ${order[*]} (wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s each, HTTPS)"
    for ((i = 0; i < ${#order[@]}; i++)); do
      sys=${order[$i]}
      f="$RAW/keepalive_${sys}_${r}_$i.txt"
      ticks=$(tls_keepalive "$sys" "$DURATION" "$f")
      printf '%s\t%d\t%d\t%s\t%d\n' "$sys" "$r" "$i" "$f" "$ticks" >>"$RAW/tls_keepalive.tsv"
    done
  done
  head -n 1 /proc/stat >"$RAW/stat_keepalive_end"
  printf 'system\tround\tdir\tticks\twall_ms\tclient_cpu_s\n' >"$RAW/tls_handshakes.tsv"
  for ((r = 1; r <= HS_ROUNDS; r++)); do
    for sys in "${HS_SYSTEMS[@]}"; do
      log "handshakes: round $r/$HS_ROUNDS $sys (h2load --h1 -t$HS_THREADS -c$HS_BURST -n$HS_BURST bursts for ${HS_DURATION}s)"
      d="$RAW/handshakes_${sys}_$r"
      read -r ticks wall cpu <<<"$(tls_handshakes "$sys" "$HS_DURATION" "$d")"
      printf '%s\t%d\t%s\t%d\t%d\t%s\n' "$sys" "$r" "$d" "$ticks" "$wall" "$cpu" >>"$RAW/tls_handshakes.tsv"
    done
  done
  hs_failures1=$(ours_metric_sum "${SYS_ADMIN[ours]}" '^gateway_tls_handshake_failures_total')
  printf '{"load_after": "%s", "ours_tls_handshake_failures": %d}\n' "$(cut -d' ' -f1-3 /proc/loadavg)" \
    $((hs_failures1 - hs_failures0)) >"$RAW/after.json"

  log "report"
  python3 - "$RAW" "$OUT" "$HERE" <<'PY'
import csv, json, re, statistics, sys
from pathlib import Path

raw, out, here = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
sys.path.insert(0, here)
from bench_report import cpu_usage, fmt, md_table, median, parse_wrk, ratio_stats, verdict  # noqa: E402

meta = json.loads((raw / "meta.json").read_text())
meta.update(json.loads((raw / "after.json").read_text()))
clk = meta["clk_tck"]
SYSTEMS = ["ours", "bare", "nginx"]
HS_SYSTEMS = ["ours", "nginx"]
PAIRS = [("ours", "nginx"), ("bare", "nginx"), ("ours", "bare")]
TARGET = 0.85


def rows(name):
    with (raw / name).open() as f:
        return list(csv.DictReader(f, delimiter="\t"))


info = {}
for r in rows("tls_info.tsv"):
    info.setdefault(r["system"], {})[r["check"]] = r["value"]

SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def parse_h2load(path):
    text = path.read_text(errors="replace")
    out = {"seconds": 0.0, "total": 0, "ok_2xx": 0}
    m = re.search(r"finished in ([\d.]+)(us|ms|s),", text)
    if m:
        out["seconds"] = float(m.group(1)) * SECONDS[m.group(2)]
    m = re.search(r"requests: (\d+) total", text)
    if m:
        out["total"] = int(m.group(1))
    m = re.search(r"status codes: (\d+) 2xx", text)
    if m:
        out["ok_2xx"] = int(m.group(1))
    for key, pat in (("tls", r"TLS Protocol: (\S+)"), ("cipher", r"Cipher: (\S+)"),
                     ("key_exchange", r"Server Temp Key: (.+)"), ("alpn", r"Application protocol: (\S+)")):
        m = re.search(pat, text)
        out[key] = m.group(1).strip() if m else None
    return out


def div(a, b):
    return a / b if a is not None and b else None


# Keep-alive: per system and round, its slots pooled (req/s over their time, p50/p99 their mean).
slots = {}
for r in rows("tls_keepalive.tsv"):
    w = parse_wrk(r["file"])
    w["ticks"] = int(r["ticks"])
    slots.setdefault(r["system"], {}).setdefault(int(r["round"]), []).append(w)
ka = {s: [] for s in SYSTEMS}
for s_, by_round in slots.items():
    for rnd, ws in sorted(by_round.items()):
        req = sum(w["requests"] for w in ws)
        secs = [w["seconds"] for w in ws]
        p50 = [w["p50_ms"] for w in ws if w["p50_ms"] is not None]
        p99 = [w["p99_ms"] for w in ws if w["p99_ms"] is not None]
        ka[s_].append({
            "round": rnd, "slots": len(ws), "requests": req,
            "rps": req / sum(secs) if all(secs) else statistics.mean(w["rps"] for w in ws),
            "p50_ms": statistics.mean(p50) if p50 else None, "p99_ms": statistics.mean(p99) if p99 else None,
            "cpu_s_per_100k": div(sum(w["ticks"] for w in ws) / clk * 100_000, req),
            "errors": sum(w["non2xx"] + w["socket_errors"] for w in ws)})
usage = cpu_usage(raw, "stat_keepalive_start", "stat_keepalive_end")
ka_summary = {s: {k: median([x[k] for x in ka[s]]) for k in ("rps", "p50_ms", "p99_ms", "cpu_s_per_100k")}
              | {"errors": sum(x["errors"] for x in ka[s]), "rounds": ka[s]} for s in SYSTEMS}

# Handshakes.
hs = {s: [] for s in HS_SYSTEMS}
for r in rows("tls_handshakes.tsv"):
    bursts = [parse_h2load(p) for p in sorted(Path(r["dir"]).glob("burst_*.txt"))]
    conns = sum(b["ok_2xx"] for b in bursts)
    secs = sum(b["seconds"] for b in bursts)
    wall = int(r["wall_ms"]) / 1000
    cpu = int(r["ticks"]) / clk
    client = float(r["client_cpu_s"])
    first = bursts[0] if bursts else {}
    hs[r["system"]].append({
        "round": int(r["round"]), "bursts": len(bursts), "connections": conns,
        "errors": sum(b["total"] - b["ok_2xx"] for b in bursts), "h2load_seconds": secs, "wall_seconds": wall,
        "per_s": div(conns, secs), "server_us_per_conn": div(cpu * 1e6, conns),
        "client_us_per_conn": div(client * 1e6, conns), "server_busy": div(cpu, secs),
        "client_busy": div(client, wall * meta["hs_threads"]),
        "tls": first.get("tls"), "cipher": first.get("cipher"), "key_exchange": first.get("key_exchange"),
        "alpn": first.get("alpn")})
hs_summary = {s: {k: median([x[k] for x in hs[s]]) for k in
                  ("per_s", "server_us_per_conn", "client_us_per_conn", "server_busy", "client_busy")}
              | {"connections": sum(x["connections"] for x in hs[s]), "errors": sum(x["errors"] for x in hs[s]),
                 "rounds": hs[s]} for s in HS_SYSTEMS}


def per_round_ratio(data, key, rounds, a="ours", b="nginx"):
    by = {s: {x["round"]: x.get(key) for x in data[s]} for s in (a, b)}
    return [div(by[a].get(n), by[b].get(n)) for n in range(1, rounds + 1)]


KA_METRICS = [("rps", "req/s"), ("p99_ms", "p99"), ("cpu_s_per_100k", "CPU / request")]
ka_ratios = {f"{a}/{b}": {k: ratio_stats(per_round_ratio(ka, k, meta["rounds"], a, b)) for k, _ in KA_METRICS}
             for a, b in PAIRS}
ratios = {
    "keepalive": ka_ratios,
    "handshakes_per_s": ratio_stats(per_round_ratio(hs, "per_s", meta["hs_rounds"])),
    "handshake_server_cpu_per_conn": ratio_stats(per_round_ratio(hs, "server_us_per_conn", meta["hs_rounds"])),
}
ka_ratio = ka_ratios["ours/nginx"]["rps"]["median"]
target_met = None if ka_ratio is None else ka_ratio >= TARGET
verdicts = {pair: verdict(ka_ratios[pair]["rps"], ">=", TARGET) for pair in ("ours/nginx", "bare/nginx")}


def rfmt(r, digits=3):
    if r["median"] is None:
        return "–", "–", "–"
    return (f"{r['median']:.{digits}f} ({r['min']:.{digits}f}–{r['max']:.{digits}f})",
            f"{r['ci_low']:.{digits}f}–{r['ci_high']:.{digits}f} ({r['ci_coverage'] * 100:.0f}%)",
            " ".join(f"{x:.2f}" if x is not None else "–" for x in r["per_round"]))


def pct(x):
    return "–" if x is None else f"{x * 100:.0f}%"


v = meta["versions"]
md = ["# Gateway benchmark: TLS termination", "",
      f"{meta['date']} · git {meta['git']} · {meta['host']} · {meta['cpus']} CPUs ({meta['cpu_model']}) · "
      f"load before {meta['load_before']}, after {meta['load_after']} · nginx {v['nginx']}, wrk {v['wrk']}, "
      f"h2load {v['h2load']}, OpenSSL {v['openssl']} (clients, nginx), rustls {v['rustls']} (ours), rustc {v['rustc']}", "",
      f"Each proxy: {meta['workers']} worker(s)/thread(s), round robin over 2 nginx backends (`return 200 \"ok\"`, "
      f"{meta['backend_workers']} worker(s) each), upstream keepalive, X-Forwarded-For. `ours` is the gateway as in "
      "bench.md (rate limiting on, never reached; metrics; headers) with a `[tls]` listener; `bare` is bare Pingora "
      "(proxy/examples/bare_proxy.rs: round robin, keep-alive, X-Forwarded-For) with Pingora's own rustls listener, "
      "what a Pingora proxy reaches over TLS without the gateway; `nginx` terminates TLS "
      "with `ssl_session_cache none; ssl_session_tickets on;`. Same certificate for all (scripts/dev_certs.sh: ECDSA "
      "P-256), TLS 1.2–1.3; the clients speak HTTP/1.1 to https://localhost:PORT/ (SNI sent). Ratios are medians of "
      "per-round ratios (min–max) with a distribution-free confidence interval of the median (order statistics of "
      "the per-round ratios, binomial method; its coverage in brackets: 95% or more from 6 rounds on, below 6 "
      "rounds min–max).", "",
      md_table(["system", "HTTP/2 offered (ALPN)", "OpenSSL client gets", "key exchange", "session tickets sent per handshake"],
               [[f"`{s}`", info[s].get("http2_offered", "–"), info[s].get("openssl_cipher", "–"),
                 info[s].get("openssl_key_exchange", "–"), info[s].get("tickets_per_handshake", "–")] for s in SYSTEMS]),
      "",
      "## Keep-alive throughput over TLS", "",
      f"`wrk -t{meta['wrk_threads']} -c{meta['connections']} -d{meta['duration_s']}s --latency https://localhost:PORT/` "
      "(HTTP/1.1, connections kept open: handshakes only at each run's start). "
      f"{meta['rounds']} rounds, each of six back-to-back runs, every system twice and symmetric about the "
      "round's middle (X Y Z Z Y X, the order rotating every round), so a linear drift of the VM within a round "
      "affects all three alike. Per round and system: req/s over its two runs, p50/p99 their mean, CPU = "
      "utime+stime of the proxy's processes per 100k requests; per system the median over rounds"
      + ("" if not usage else f"; CPU stolen by the hypervisor during the rounds {usage['steal_pct']:.1f}%, "
         f"the CPUs {usage['busy_pct']:.0f}% busy") + ".", "",
      md_table(["system", "req/s", "p50 ms", "p99 ms", "CPU s / 100k req", "errors"],
               [[f"`{s}`", fmt(ka_summary[s]["rps"], 0), fmt(ka_summary[s]["p50_ms"], 3), fmt(ka_summary[s]["p99_ms"], 3),
                 fmt(ka_summary[s]["cpu_s_per_100k"]), ka_summary[s]["errors"]] for s in SYSTEMS]),
      "",
      md_table(["ratio", "metric", "median (min–max)", "CI of the median (coverage)", "per round"],
               [[f"{pair.replace('/', ' / ')}", label, *rfmt(ka_ratios[pair][k])]
                for pair in ka_ratios for k, label in KA_METRICS]),
      "",
      f"**Target ours ≥ {TARGET} × nginx req/s: "
      + ("–" if target_met is None else ("met" if target_met else "not met")) + f"** by the median ratio "
      f"({fmt(ka_ratio, 3)}); by its confidence interval ({rfmt(ka_ratios['ours/nginx']['rps'])[1]}): "
      f"{verdicts['ours/nginx']}. The same bound for bare Pingora (bare / nginx, "
      f"{fmt(ka_ratios['bare/nginx']['rps']['median'], 3)}, CI {rfmt(ka_ratios['bare/nginx']['rps'])[1]}): "
      f"{verdicts['bare/nginx']}; the gateway against bare Pingora over TLS: "
      f"{fmt(ka_ratios['ours/bare']['rps']['median'], 3)} (CI {rfmt(ka_ratios['ours/bare']['rps'])[1]}).",
      "",
      "## New TLS connections per second (full handshakes)", "",
      f"Bursts of `h2load --h1 -t{meta['hs_threads']} -c{meta['hs_burst']} -n{meta['hs_burst']} -m1 "
      f"-H 'Connection: close' https://localhost:PORT/` repeated for {meta['hs_duration_s']} s per system and round, "
      f"{meta['hs_rounds']} interleaved rounds (ours, nginx, ...): every h2load client opens "
      "one connection with a TLS session of its own (nothing to resume: a full handshake), sends one request and "
      "is done. Rate = connections answered 2xx / h2load's running time summed over the bursts. CPU per connection: "
      "the server's (utime+stime) and h2load's; busy = CPU / time (server: over h2load's running time; h2load: over "
      "the round, per thread).", "",
      md_table(["system", "connections/s", "server CPU µs / conn", "h2load CPU µs / conn", "server busy",
                "h2load busy", "connections", "errors", "h2load saw"],
               [[f"`{s}`", fmt(hs_summary[s]["per_s"], 0), fmt(hs_summary[s]["server_us_per_conn"], 0),
                 fmt(hs_summary[s]["client_us_per_conn"], 0), pct(hs_summary[s]["server_busy"]),
                 pct(hs_summary[s]["client_busy"]), f"{hs_summary[s]['connections']:,}", hs_summary[s]["errors"],
                 " ".join(str(x) for x in ((hs[s][0]["tls"], hs[s][0]["cipher"], hs[s][0]["alpn"]) if hs[s] else ()) if x)]
                for s in HS_SYSTEMS]),
      "",
      md_table(["ratio ours / nginx", "median (min–max)", "CI of the median (coverage)", "per round"],
               [["connections/s", *rfmt(ratios["handshakes_per_s"])],
                ["server CPU / connection", *rfmt(ratios["handshake_server_cpu_per_conn"])]]),
      "",
      "No target: reported as measured. A server busy well below 100% means the rate was set by the client or by "
      "the box (h2load does as much crypto per handshake as the server or more, and shares the CPUs with it); server "
      "CPU per connection is the comparable figure then.",
      f"TLS handshakes the gateway counted as failed during the rounds (gateway_tls_handshake_failures_total): "
      f"{meta['ours_tls_handshake_failures']}; {2 * meta['rounds']} of them expected, as each wrk run (two per "
      "round against `ours`) first opens and closes one bare TCP connection to test the address.",
      ]
text = "\n".join(md) + "\n"
(out / "bench_tls.md").write_text(text)
print(text)
(out / "bench_tls.json").write_text(json.dumps({
    "meta": meta, "offered": info, "target_keepalive_ratio": TARGET, "target_met": target_met,
    "verdicts": verdicts, "keepalive_cpu_usage": usage,
    "keepalive": ka_summary, "handshakes": hs_summary, "ratios": ratios}, indent=1) + "\n")
PY
  exit 0
fi

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

# The main part's order (see the header): per round ours and bare twice, symmetric about the
# middle, and one secondary system in the middle, the secondaries in turn.
SECONDARIES=(ours+log ours-norl ours+case nginx haproxy direct)

# The machine, as bench.md states it: CPU model (with family/model/stepping: the VM's model
# name is only "AMD EPYC"), nproc, kernel, hypervisor, memory.
cpu_id=$(lscpu 2>/dev/null | awk -F': *' '/^CPU family/ {f = $2} /^Model:/ {m = $2} /^Stepping/ {s = $2}
  END {if (f != "") printf "family %s model %s stepping %s", f, m, s}')
hypervisor=$(lscpu 2>/dev/null | awk -F': *' '/^Hypervisor vendor/ {print $2}')
cat >"$RAW/meta.json" <<EOF
{"date": "$(date -u +%FT%TZ)", "git": "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo -dirty)",
 "host": "$(uname -srm)", "kernel": "$(uname -r)", "cpus": $(nproc), "cpu_model": "$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)",
 "cpu_id": "$cpu_id", "hypervisor": "${hypervisor:-none}", "mem_total_gib": $(awk '/^MemTotal/ {printf "%.1f", $2 / 1048576}' /proc/meminfo),
 "load_before": "$(cut -d' ' -f1-3 /proc/loadavg)",
 "rounds": $ROUNDS, "duration_s": $DURATION, "workers": $WORKERS, "connections": $CONNECTIONS,
 "secondaries": [$(printf '"%s", ' "${SECONDARIES[@]}" | sed 's/, $//')], "warmup_s": $WARMUP,
 "wrk_threads": $WRK_THREADS, "backend_workers": $BACKEND_WORKERS, "sweep_duration_s": $SWEEP_DURATION,
 "clients": $CLIENTS, "client_requests": $CLIENT_REQUESTS, "client_rounds": $CLIENT_ROUNDS,
 "conn_workers": $CONN_WORKERS, "conn_duration_s": $CONN_DURATION, "conn_warm_s": $CONN_WARM, "clk_tck": $CLK_TCK,
 "versions": {"nginx": "$(nginx -v 2>&1 | sed 's/.*\///')", "haproxy": "$(haproxy -v | awk 'NR==1 {print $3}')",
              "wrk": "$(wrk -v 2>&1 | awk 'NR==1 {print $2}')", "rustc": "$(rustc --version 2>/dev/null | awk '{print $2}')"}}
EOF

# --- 1. main comparison ----------------------------------------------------------------------
# part_done NAME START_MS: appends the part's wall time to timing.tsv.
printf 'part\tseconds\n' >"$RAW/timing.tsv"
part_done() { printf '%s\t%s\n' "$1" "$(secs $(($(now_ms) - $2)))" >>"$RAW/timing.tsv"; }
part_done setup "$RUN_T0"
t_part=$(now_ms)
log "warm-up: ${WARMUP}s per system"
for sys in "${SYSTEMS[@]}"; do
  run_wrk "$sys" "$CONNECTIONS" "$WARMUP" "$RAW/warmup_$sys.txt" >/dev/null
done

# /proc/stat's cpu line before and after: the report states the steal time and how busy the
# CPUs were.
head -n 1 /proc/stat >"$RAW/stat_main_start"
printf 'system\tround\tslot\tfile\tticks\thwm_kb\trss_kb\n' >"$RAW/main.tsv"
for ((r = 1; r <= ROUNDS; r++)); do
  nsec=${#SECONDARIES[@]}
  sec=${SECONDARIES[$(((r - 1) % nsec))]}
  # ours first or bare first in turn, shifted by one every cycle of the secondaries (so that
  # each secondary has ours and bare as neighbours in turn, with an even number of them too).
  if ((((r - 1) + (r - 1) / nsec) % 2 == 0)); then
    order=(ours bare "$sec" bare ours)
  else
    order=(bare ours "$sec" ours bare)
  fi
  log "main: round $r/$ROUNDS: ${order[*]} (wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s each)"
  for ((i = 0; i < ${#order[@]}; i++)); do
    sys=${order[$i]}
    f="$RAW/main_${sys}_${r}_$i.txt"
    ticks=$(run_wrk "$sys" "$CONNECTIONS" "$DURATION" "$f")
    printf '%s\t%d\t%d\t%s\t%d\t%d\t%d\n' "$sys" "$r" "$i" "$f" "$ticks" \
      "$(status_kb "${SYS_PID[$sys]}" VmHWM)" "$(status_kb "${SYS_PID[$sys]}" VmRSS)" >>"$RAW/main.tsv"
  done
done
head -n 1 /proc/stat >"$RAW/stat_main_end"
part_done main "$t_part"

# --- 2. latency against load -----------------------------------------------------------------
printf 'system\tconnections\tfile\tticks\n' >"$RAW/sweep.tsv"
t_part=$(now_ms)
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
((DO_SWEEP)) && part_done sweep "$t_part"
printf 'system\tround\tfile\tticks\thwm_kb\trss_kb\n' >"$RAW/clients.tsv"
t_part=$(now_ms)
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
((DO_CLIENTS)) && part_done clients "$t_part"
printf 'system\tphase\tfile\tnew\trequests\tmetric_new\n' >"$RAW/conns.tsv"
t_part=$(now_ms)
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

((DO_CONNS)) && part_done conns "$t_part"

# --- 5. memory per idle connection ---------------------------------------------------------
mem_ok=1
if ((DO_MEMORY)); then
  t_part=$(now_ms)
  # Nothing of the parts above may hold memory or ports meanwhile: stop every process of theirs.
  for pid in ${PIDS[@]+"${PIDS[@]}"}; do
    stop_pid "$pid"
  done
  log "memory: loadtest/bench_memory.sh"
  "$HERE/bench_memory.sh" --no-build --out "$OUT" || {
    mem_ok=0
    log "memory part failed"
  }
  part_done memory "$t_part"
fi

log "report"
head -n 1 /proc/stat >"$RAW/stat_end"
printf '{"load_after": "%s", "elapsed_s": %s}\n' "$(cut -d' ' -f1-3 /proc/loadavg)" \
  "$(secs $(($(now_ms) - RUN_T0)))" >"$RAW/after.json"
python3 "$HERE/bench_report.py" --raw "$RAW" --out "$OUT"
((mem_ok)) || log_die "memory part failed"
