# shellcheck shell=bash disable=SC2034,SC2004
# (SC2034: the variables set here are read by the scripts that source this file; SC2004: the
# arrays indexed with $name are associative.)
# Shared pieces of loadtest/bench.sh and loadtest/bench_ratelimit.sh; sourced, not run.
#
# Everything listens on 127.0.0.1 on ports the OS hands out; every process started here is
# recorded in STARTED_PIDS and stopped by bench_cleanup (installed as the EXIT trap by the
# scripts); config files, logs and raw outputs live in BENCH_TMP, removed at exit unless
# KEEP_TMP=1.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
PROXY_BIN="$TARGET_DIR/release/proxy"
BARE_BIN="$TARGET_DIR/release/examples/bare_proxy"
CLK_TCK="$(getconf CLK_TCK)"
STARTED_PIDS=()
BENCH_TMP=""
# Per process name: PID, address, admin address (ours only).
declare -gA BACKEND_PID=() SYS_PID=() SYS_ADDR=() SYS_ADMIN=()
export CLK_TCK

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# need TOOL "how to install it"
need() {
  command -v "$1" >/dev/null 2>&1 || die "$1 not found; install it with: $2"
}

need_matplotlib() {
  python3 -c 'import matplotlib' 2>/dev/null \
    || die "python3 module matplotlib not found; install it with: pip install matplotlib"
}

bench_cleanup() {
  local rc=$? pid i
  trap - EXIT INT TERM
  for pid in "${STARTED_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  # Bounded wait: 50 x 0.1 s, then SIGKILL whatever is left.
  for ((i = 0; i < 50; i++)); do
    local alive=0
    for pid in "${STARTED_PIDS[@]}"; do
      kill -0 "$pid" 2>/dev/null && alive=1
    done
    ((alive)) || break
    sleep 0.1
  done
  for pid in "${STARTED_PIDS[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ -n "$BENCH_TMP" && -d "$BENCH_TMP" ]]; then
    if [[ "${KEEP_TMP:-0}" == 1 ]]; then
      log "kept $BENCH_TMP"
    else
      rm -rf "$BENCH_TMP"
    fi
  fi
  exit "$rc"
}

bench_tmp() {
  BENCH_TMP="$(mktemp -d "${TMPDIR:-/tmp}/gateway-bench.XXXXXX")"
}

# stop_pid PID: ends one process this script started (TERM, bounded wait, KILL) and forgets it.
stop_pid() {
  local pid=$1 i p kept=()
  for p in "${STARTED_PIDS[@]}"; do
    [[ "$p" == "$pid" ]] || kept+=("$p")
  done
  STARTED_PIDS=("${kept[@]}")
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# A free TCP port on 127.0.0.1 (the OS picks it; tiny race until the server binds it).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_http URL [PID [LOGFILE]]: polls until URL answers 200 (every 0.1 s, at most 20 s); fails
# early when PID has exited, showing the end of LOGFILE.
wait_http() {
  local url=$1 pid=${2:-} logfile=${3:-} i code
  for ((i = 0; i < 200; i++)); do
    code=$(curl -s -o /dev/null -m 1 -w '%{http_code}' "$url" || true)
    [[ "$code" == 200 ]] && return 0
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
      [[ -n "$logfile" ]] && tail -n 5 "$logfile" >&2
      die "process $pid exited before $url answered"
    fi
    sleep 0.1
  done
  die "$url did not answer 200 within 20s"
}

# start_bg LOGFILE CMD...: starts CMD in the background; its PID in STARTED_PID.
start_bg() {
  local logfile=$1
  shift
  "$@" >"$logfile" 2>&1 &
  STARTED_PID=$!
  STARTED_PIDS+=("$STARTED_PID")
}

build_release() {
  need cargo "https://rustup.rs (curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh)"
  log "building release binaries (cargo build --release -p proxy --bin proxy --example bare_proxy)"
  (cd "$ROOT" && cargo build --release -p proxy --bin proxy --example bare_proxy) >&2
}

check_binaries() {
  [[ -x "$PROXY_BIN" ]] || die "$PROXY_BIN missing (run without --no-build)"
  [[ -x "$BARE_BIN" ]] || die "$BARE_BIN missing (run without --no-build)"
}

# --- process accounting ------------------------------------------------------------------

# pids_tree PID: PID and its children (nginx workers); one per line.
pids_tree() {
  local pid=$1
  echo "$pid"
  cat /proc/"$pid"/task/*/children 2>/dev/null | tr ' ' '\n' | sed '/^$/d' || true
}

# cpu_ticks PID: utime+stime of PID and its children, in clock ticks.
cpu_ticks() {
  local total=0 p fields
  for p in $(pids_tree "$1"); do
    # Fields after the ")" that closes comm: state is $1, utime $12, stime $13.
    fields=$(sed 's/^.*) //' /proc/"$p"/stat 2>/dev/null) || continue
    total=$((total + $(awk '{print $12 + $13}' <<<"$fields")))
  done
  echo "$total"
}

# status_kb PID FIELD: a /proc/PID/status field (VmHWM, VmRSS) in kB, summed over the tree.
status_kb() {
  local total=0 p v
  for p in $(pids_tree "$1"); do
    v=$(awk -v f="$2:" '$1 == f {print $2}' /proc/"$p"/status 2>/dev/null || true)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}

# --- servers -------------------------------------------------------------------------------

# nginx_conf_head DIR WORKERS: writes the start of DIR/nginx.conf that the backends and the
# nginx proxy share (everything under DIR), up to and including `http {`; callers append the rest.
nginx_conf_head() {
  local dir=$1 workers=$2
  mkdir -p "$dir/logs" "$dir/tmp"
  cat >"$dir/nginx.conf" <<EOF
worker_processes $workers;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
EOF
}

# run_nginx DIR: nginx in the foreground on DIR/nginx.conf, started in the background.
run_nginx() {
  start_bg "$1/logs/stdout.log" nginx -p "$1" -e "$1/logs/error.log" -c "$1/nginx.conf" -g 'daemon off;'
}

# start_nginx_backend NAME PORT WORKERS: fixed `200 ok` server with stub_status at /__status.
start_nginx_backend() {
  local name=$1 port=$2 workers=$3 dir="$BENCH_TMP/$1"
  nginx_conf_head "$dir" "$workers"
  cat >>"$dir/nginx.conf" <<EOF
    default_type text/plain;
    # Never close a keep-alive connection for its request count (the default is 1000), so
    # every new upstream connection the proxies open is theirs.
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {
        listen 127.0.0.1:$port backlog=4096;
        location = /__status { stub_status; }
        location / { return 200 "ok"; }
    }
}
EOF
  run_nginx "$dir"
  BACKEND_PID[$name]=$STARTED_PID
  wait_http "http://127.0.0.1:$port/" "$STARTED_PID" "$dir/logs/error.log"
}

# backend_accepts PORT: connections the nginx backend has accepted so far.
backend_accepts() {
  curl -s -m 2 "http://127.0.0.1:$1/__status" | awk 'NR == 3 {print $1}'
}

# start_ours NAME PORT ADMIN_PORT THREADS RATE_LIMIT(true|false) ACCESS_LOG(true|false)
#            [REQUESTS [MAX_CLIENTS [WINDOW_SECONDS]]]
# The gateway with production features on: rate limiting (by default with a limit it never
# reaches), metrics, request and response headers, health checks. PRESERVE_CASE=true sets
# headers.preserve_case.
start_ours() {
  local name=$1 port=$2 admin=$3 threads=$4 rl=$5 al=$6 requests=${7:-1000000000} max_clients=${8:-100000}
  local window=${9:-60}
  local dir="$BENCH_TMP/$name" file_line=""
  mkdir -p "$dir"
  if [[ "$al" == true ]]; then
    file_line="file = \"$dir/proxy.log\""
  fi
  cat >"$dir/proxy.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
threads = $threads
grace_period_seconds = 0
graceful_shutdown_timeout_seconds = 1
upgrade_sock = "$dir/upgrade.sock"
pid_file = "$dir/proxy.pid"
# As nginx is configured below (keepalive_requests) and as bare Pingora runs (no limit); one
# load generator on one address, so no per-client connection cap.
keepalive_requests = 100000000
max_connections_per_client = 0

[upstream]
backends = [$BACKENDS_TOML]

[rate_limit]
enabled = $rl
requests = $requests
window_seconds = $window
max_clients = $max_clients

[headers]
request = { "X-Gateway" = "bench" }
response = { "X-Served-By" = "bench" }
preserve_case = ${PRESERVE_CASE:-false}

[admin]
listen = "127.0.0.1:$admin"

[log]
level = "info"
access_log = $al
$file_line
EOF
  "$PROXY_BIN" -t -c "$dir/proxy.toml" >/dev/null || die "$name: config rejected: $dir/proxy.toml"
  # stdout goes to a file too: with the access log on, each line is written to stdout and log.file.
  start_bg "$dir/stdout.log" "$PROXY_BIN" -c "$dir/proxy.toml"
  SYS_PID[$name]=$STARTED_PID
  SYS_ADDR[$name]="127.0.0.1:$port"
  SYS_ADMIN[$name]="127.0.0.1:$admin"
  wait_http "http://127.0.0.1:$admin/ready" "$STARTED_PID" "$dir/stdout.log"
  wait_http "http://127.0.0.1:$port/" "$STARTED_PID" "$dir/stdout.log"
}

# start_bare NAME PORT THREADS
start_bare() {
  local name=$1 port=$2 threads=$3 dir="$BENCH_TMP/$1"
  mkdir -p "$dir"
  # shellcheck disable=SC2086
  start_bg "$dir/stdout.log" "$BARE_BIN" --listen "127.0.0.1:$port" --threads "$threads" $BACKENDS_ARGS
  SYS_PID[$name]=$STARTED_PID
  SYS_ADDR[$name]="127.0.0.1:$port"
  wait_http "http://127.0.0.1:$port/" "$STARTED_PID" "$dir/stdout.log"
}

# start_nginx_proxy NAME PORT WORKERS
start_nginx_proxy() {
  local name=$1 port=$2 workers=$3 dir="$BENCH_TMP/$1" servers="" b
  for b in $BACKENDS_ARGS; do servers+="        server $b;"$'\n'; done
  nginx_conf_head "$dir" "$workers"
  cat >>"$dir/nginx.conf" <<EOF
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    upstream backends {
$servers        keepalive 128;
        keepalive_requests 100000000;
        keepalive_timeout 60s;
    }
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / {
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_connect_timeout 1s;
        }
    }
}
EOF
  run_nginx "$dir"
  SYS_PID[$name]=$STARTED_PID
  SYS_ADDR[$name]="127.0.0.1:$port"
  wait_http "http://127.0.0.1:$port/" "$STARTED_PID" "$dir/logs/error.log"
}

# start_haproxy NAME PORT THREADS
start_haproxy() {
  local name=$1 port=$2 threads=$3 dir="$BENCH_TMP/$1" servers="" b i=0
  mkdir -p "$dir"
  for b in $BACKENDS_ARGS; do
    i=$((i + 1))
    servers+="    server b$i $b"$'\n'
  done
  cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread $threads
    maxconn 8000

defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 300s
    option forwardfor
    # Any idle upstream connection may carry any request (as Pingora's and nginx's pools do).
    http-reuse always

frontend fe
    bind 127.0.0.1:$port
    default_backend be

backend be
    balance roundrobin
$servers
EOF
  haproxy -c -q -f "$dir/haproxy.cfg" || die "$name: haproxy config rejected: $dir/haproxy.cfg"
  start_bg "$dir/stdout.log" haproxy -f "$dir/haproxy.cfg" -db
  SYS_PID[$name]=$STARTED_PID
  SYS_ADDR[$name]="127.0.0.1:$port"
  wait_http "http://127.0.0.1:$port/" "$STARTED_PID" "$dir/stdout.log"
}

# start_backends WORKERS: two nginx backends; sets BACKEND_PORTS, BACKENDS_TOML, BACKENDS_ARGS.
start_backends() {
  local workers=$1 p1 p2
  p1=$(free_port)
  p2=$(free_port)
  [[ "$p1" != "$p2" ]] || p2=$(free_port)
  start_nginx_backend backend1 "$p1" "$workers"
  start_nginx_backend backend2 "$p2" "$workers"
  BACKEND_PORTS=("$p1" "$p2")
  BACKENDS_TOML="\"127.0.0.1:$p1\", \"127.0.0.1:$p2\""
  BACKENDS_ARGS="127.0.0.1:$p1 127.0.0.1:$p2"
}

# ours_metric_sum ADMIN_ADDR REGEX: sum of the samples of the metric lines matching REGEX.
ours_metric_sum() {
  curl -s -m 2 "http://$1/metrics" | awk -v re="$2" '$0 ~ re {s += $NF} END {printf "%d\n", s}'
}
