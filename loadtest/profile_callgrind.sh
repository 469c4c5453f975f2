#!/usr/bin/env bash
# Instructions per request under callgrind (counts instructions, not time: repeatable on a busy
# machine). Release builds, each system a separate process under callgrind with 1 worker thread,
# one nginx backend pair, wrk -t1 -c10: 3 s warm-up, then the counters are zeroed, 10 s counted,
# dumped. Every system is sent GET $WRK_PATH [/r49/x] (what the 50 routes' last one takes).
#
#   loadtest/profile_callgrind.sh [SYSTEM ...]     (default: ours ours+log bare)
#   loadtest/profile_callgrind.sh table [--rounds N]   (or --table: the cost table below; N
#                                                   interleaved rounds, default 3: ~8 min)
#   --rounds N with systems named: N rounds each, the median run's files kept (default 1)
#
# The cost table, one capability added per line (`table`; each line a SYSTEM of its own):
#   bare        bare Pingora round robin (proxy/examples/bare_proxy.rs)
#   base        ours with one catch-all [[routes]] entry, rate_limit.enabled = false,
#               [upstream.outlier] consecutive_failures = 0, access log off; metrics, health
#               checks and the contract's headers stay (they cannot be turned off), as do the
#               one request and one response header of start_ours' [headers]
#   +ratelimit  base + the local rate limiter (limit 1e9, never reached)
#   +50routes   +ratelimit with 50 routes, the request taking the one tried last
#   +redis      +ratelimit with rate_limit.store = "redis": a redis-server this script starts on
#               a free 127.0.0.1 port (no persistence), timeout_ms = 1000 so callgrind's
#               slowdown makes no check time out; valid only with 0 store errors
#   +log        +ratelimit with the JSON access log on (stdout and log.file)
#   +outlier    +ratelimit with outlier detection at its default (consecutive_failures = 5):
#               the default feature set, i.e. `ours` with one catch-all route
#   +tls        +outlier served over TLS (a [tls] listener, scripts/dev_certs.sh's ECDSA
#               certificate, as bench.sh --tls), keep-alive; wrk to https://localhost:PORT
# then `ours` again as a check (same features as +outlier, with the implicit default route), and
# `bare+hdr` as a reference: bare Pingora adding the same headers the same way (`X-Forwarded-For`
# by our function, 13 more with fixed values; `bare_proxy --contract-headers`), so
# `+outlier / bare+hdr` is our logic beyond the headers.
# It writes loadtest/results/callgrind.md: the table, the machine, and where the default
# feature set's extra instructions go (callgrind_annotate of +outlier, our proxy:: functions).
#
# Older systems, kept: ours (production features, access log off, no [[routes]]), ours+log,
# ours-norl (limiter off), ours+case (headers.preserve_case = true), ours+1route (one catch-all
# [[routes]]), ours+50routes (50 routes, the request takes the one tried last); and bare+tls
# (bare Pingora with its own rustls listener, the same certificate as +tls: what TLS costs a
# Pingora proxy without our terminator), and bare+hdr (the table's reference line, below).
#
# Output: one line per system on stdout; callgrind files loadtest/results/callgrind/SYSTEM.out
# (whole run) and SYSTEM.out.1 (the counted window) for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "needs valgrind: apt-get install -y valgrind" >&2; exit 2; }
source scripts/lib.sh

TABLE_SYSTEMS=(bare base +ratelimit +50routes +redis +log +outlier +tls)
KNOWN_SYSTEMS=" ${TABLE_SYSTEMS[*]} ours ours+log ours-norl ours+case ours+1route ours+50routes bare+tls bare+hdr "
# What each line of the table adds, and the line it is built on.
declare -A ADDS=(
  [bare]="bare Pingora round robin (\`proxy/examples/bare_proxy.rs\`)"
  [base]="ours: one catch-all route, metrics, health checks, the contract's headers; no rate limiting, no outlier detection, no access log"
  [+ratelimit]="local rate limiting (limit never reached) and its headers"
  [+50routes]="50 routes, the request takes the one tried last"
  [+redis]="rate limiting in Redis (\`store = \"redis\"\`, one EVALSHA per request)"
  [+log]="JSON access log (stdout and \`log.file\`)"
  [+outlier]="outlier detection at its default (\`consecutive_failures = 5\`): the default feature set"
  [+tls]="TLS (rustls, ECDSA P-256, keep-alive, HTTP/1.1)"
  [ours]="check: \`ours\` (default features, no [[routes]]: the implicit default route)"
  [bare+hdr]="reference: bare Pingora adding the default set's headers (X-Forwarded-For built as ours builds it, the other 13 with fixed values; our header-map path; \`bare_proxy --contract-headers\`)"
)
declare -A BUILDS_ON=([base]=bare [+ratelimit]=base [+50routes]=+ratelimit [+redis]=+ratelimit
  [+log]=+ratelimit [+outlier]=+ratelimit [+tls]=+outlier [ours]=+outlier [bare+hdr]=bare)

table=0
rounds=
systems=()
while (($# > 0)); do
  case $1 in
    table | --table) table=1 ;;
    --rounds)
      [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || { echo "--rounds takes a positive integer" >&2; exit 2; }
      rounds=$2
      shift
      ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      [[ $KNOWN_SYSTEMS == *" $1 "* ]] || { echo "unknown system $1 (known:$KNOWN_SYSTEMS)" >&2; exit 2; }
      systems+=("$1")
      ;;
  esac
  shift
done
if ((table)); then
  ((${#systems[@]} == 0)) || { echo "table takes no system names" >&2; exit 2; }
  systems=("${TABLE_SYSTEMS[@]}" ours bare+hdr)
fi
[ ${#systems[@]} -gt 0 ] || systems=(ours ours+log bare)
rounds=${rounds:-$((table ? 3 : 1))}
WRK_PATH=${WRK_PATH:-/r49/x}

bench_init
install_cleanup
log_need wrk "apt-get install -y wrk"
log_need nginx "apt-get install -y nginx"
log_need callgrind_control "apt-get install -y valgrind"
if [[ " ${systems[*]} " == *" +redis "* ]]; then
  log_need redis-server "apt-get install -y redis-server"
  log_need redis-cli "apt-get install -y redis-tools"
fi
if [[ " ${systems[*]} " == *" +tls "* || " ${systems[*]} " == *" bare+tls "* ]]; then
  log_need openssl "apt-get install -y openssl"
fi

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
cargo build --release -q -p proxy --bin proxy --example bare_proxy
out_dir=loadtest/results/callgrind; mkdir -p "$out_dir"
make_work_dir gateway-bench; chmod 755 "$WORK_DIR"
# Under callgrind, except the config check (`proxy -t`), which needs no profile.
wrapper="$WORK_DIR/vgwrap"
cat >"$wrapper" <<'EOF'
#!/bin/sh
[ "$1" = "-t" ] && exec "$REAL_BIN" "$@"
exec valgrind --tool=callgrind --callgrind-out-file="$CG_OUT" "$REAL_BIN" "$@"
EOF
chmod +x "$wrapper"
start_bench_backends 1
real_proxy=$PROXY_BIN; real_bare=$BARE_BIN

ROUTE1=$(routes_toml 1)
NO_OUTLIER=$'[upstream.outlier]\nconsecutive_failures = 0'
CERTS=

# make_certs: scripts/dev_certs.sh's CA and certificates in CERTS, made once per run.
make_certs() {
  [[ -n $CERTS ]] && return
  CERTS="$WORK_DIR/certs"
  timeout 60 "$ROOT/scripts/dev_certs.sh" "$CERTS" >"$WORK_DIR/dev_certs.log" 2>&1 ||
    log_die "scripts/dev_certs.sh failed: $(tail -n 3 "$WORK_DIR/dev_certs.log")"
}

# start_system SYS: starts SYS (PROXY_BIN and BARE_BIN are the callgrind wrapper); sets URL.
start_system() {
  local sys=$1 port admin tls_port i body
  read -r port admin tls_port <<<"$(free_ports 3)"
  case $sys in
    ours) start_ours "$sys" "$port" "$admin" 1 true false ;;
    ours+log) start_ours "$sys" "$port" "$admin" 1 true true ;;
    ours-norl) start_ours "$sys" "$port" "$admin" 1 false false ;;
    ours+case) PRESERVE_CASE=true start_ours "$sys" "$port" "$admin" 1 true false ;;
    ours+1route) EXTRA_TOML=$ROUTE1 start_ours "$sys" "$port" "$admin" 1 true false ;;
    ours+50routes) READY_PATH=/r49/x EXTRA_TOML=$(routes_toml 50) start_ours "$sys" "$port" "$admin" 1 true false ;;
    bare) REAL_BIN=$real_bare start_bare "$sys" "$port" 1 ;;
    base) EXTRA_TOML="$ROUTE1"$'\n'"$NO_OUTLIER" start_ours "$sys" "$port" "$admin" 1 false false ;;
    +ratelimit) EXTRA_TOML="$ROUTE1"$'\n'"$NO_OUTLIER" start_ours "$sys" "$port" "$admin" 1 true false ;;
    +50routes)
      READY_PATH=/r49/x EXTRA_TOML="$(routes_toml 50)"$'\n'"$NO_OUTLIER" \
        start_ours "$sys" "$port" "$admin" 1 true false
      ;;
    +redis)
      if [[ -z ${SYS_PID[redis]:-} ]]; then
        start_redis redis "$(free_port)"
        log "redis-server $(redis-server --version | awk '{print $3}' | sed 's/^v=//') on ${SYS_ADDR[redis]} (pid ${SYS_PID[redis]}, no persistence)"
      fi
      # `store` must be a key of [rate_limit], which start_ours writes from its RATE_LIMIT
      # argument (as start_ours_redis does); /ready below shows that it landed there.
      EXTRA_TOML="$ROUTE1
$NO_OUTLIER
[rate_limit.redis]
url = \"redis://${SYS_ADDR[redis]}/0\"
timeout_ms = 1000
on_error = \"local\"
key_prefix = \"gateway:rl:\"" start_ours "$sys" "$port" "$admin" 1 $'true\nstore = "redis"' false
      for ((i = 0; i < 200; i++)); do
        body=$(curl -fsS --max-time 2 "http://${SYS_ADMIN[$sys]}/ready" 2>/dev/null || true)
        [[ $body =~ \"rate_limit_store\":\{[^}]*\"state\":\"up\" && $body =~ \"store\":\"redis\" ]] && break
        ((i < 199)) || log_die "$sys: /ready does not report the redis store up (last: ${body:-no answer})"
        sleep 0.1
      done
      ;;
    +log) EXTRA_TOML="$ROUTE1"$'\n'"$NO_OUTLIER" start_ours "$sys" "$port" "$admin" 1 true true ;;
    +outlier) EXTRA_TOML=$ROUTE1 start_ours "$sys" "$port" "$admin" 1 true false ;;
    +tls)
      make_certs
      READY_PATH=$WRK_PATH EXTRA_TOML=$ROUTE1 start_ours_tls "$sys" "$port" "$admin" "$tls_port" 1 "$CERTS" true
      URL="https://${SYS_TLS_ADDR[$sys]}$WRK_PATH"
      return
      ;;
    bare+hdr)
      mkdir -p "$WORK_DIR/$sys"
      # shellcheck disable=SC2086
      REAL_BIN=$real_bare spawn "$WORK_DIR/$sys/stdout.log" "$BARE_BIN" --listen "127.0.0.1:$port" \
        --threads 1 --contract-headers $BACKENDS_ARGS
      SYS_PID[$sys]=$SPAWNED_PID
      SYS_ADDR[$sys]="127.0.0.1:$port"
      wait_serving "http://127.0.0.1:$port/" "$SPAWNED_PID" "$WORK_DIR/$sys/stdout.log"
      ;;
    bare+tls)
      make_certs
      REAL_BIN=$real_bare start_bare_tls "$sys" "$port" "$tls_port" 1 "$CERTS"
      URL="https://${SYS_TLS_ADDR[$sys]}$WRK_PATH"
      return
      ;;
  esac
  URL="http://${SYS_ADDR[$sys]}$WRK_PATH"
}

# redis_evalsha_calls: EVALSHA calls the redis-server has answered so far.
redis_evalsha_calls() {
  redis_cli redis INFO commandstats | sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\).*/\1/p' | grep . || echo 0
}

# wrk_check FILE: "" when wrk saw only 2xx answers and no socket error, else what it saw.
wrk_check() {
  awk '/Non-2xx or 3xx responses/ {printf "non-2xx %s; ", $NF}
       /Socket errors/ {printf "socket errors: %s; ", $0}' "$1"
}

# profile SYS ROUND: one run of SYS under callgrind (start, warm-up, zero, counted window, dump,
# stop); its files are CG_OUT (the whole run) and CG_OUT.1 (the counted window). Sets
# RUN_REQ, RUN_IR, RUN_BAD (what makes the run invalid, empty if nothing) and RUN_NOTE for
# SYS/ROUND.
declare -A RUN_REQ=() RUN_IR=() RUN_BAD=() RUN_NOTE=() RUN_CG=()
profile() {
  local sys=$1 r=$2 pid requests total bad note="" errors evalsha evalsha0=0
  if ((rounds == 1)); then
    CG_OUT="$PWD/$out_dir/$sys.out"
  else
    CG_OUT="$WORK_DIR/cg/$sys.round$r.out"
  fi
  export CG_OUT
  rm -f "$CG_OUT" "$CG_OUT".*
  export REAL_BIN=$real_proxy
  PROXY_BIN=$wrapper; BARE_BIN=$wrapper
  log "$sys (round $r/$rounds): starting under callgrind"
  start_system "$sys"
  PROXY_BIN=$real_proxy; BARE_BIN=$real_bare
  pid=${SYS_PID[$sys]}
  wrk -t1 -c10 -d3s --timeout 10s "$URL" >"$WORK_DIR/$sys.warmup.txt"
  [[ $sys != +redis ]] || evalsha0=$(redis_evalsha_calls)
  timeout 60 callgrind_control -z "$pid" >/dev/null 2>&1 || log_die "$sys: callgrind_control -z failed"
  wrk -t1 -c10 -d10s --timeout 10s "$URL" >"$WORK_DIR/$sys.wrk.txt"
  timeout 120 callgrind_control -d "$pid" >/dev/null 2>&1 || log_die "$sys: callgrind_control -d failed"
  # The first dump (after zeroing) holds exactly the counted window; it is complete once its
  # last line (totals:) is written.
  poll 60000 0.2 grep -q '^totals:' "$CG_OUT.1" || log_die "$sys: no complete dump in $CG_OUT.1"
  requests=$(awk '/requests in/ {print $1}' "$WORK_DIR/$sys.wrk.txt")
  [[ $requests =~ ^[0-9]+$ && $requests -gt 0 ]] || log_die "$sys: wrk counted no requests: $(cat "$WORK_DIR/$sys.wrk.txt")"
  bad=$(wrk_check "$WORK_DIR/$sys.wrk.txt")
  if [[ $sys == +redis ]]; then
    # Over the whole run (warm-up included); the line is valid only with none.
    errors=$(ours_metric_sum "${SYS_ADMIN[$sys]}" '^gateway_rate_limit_store_errors_total')
    evalsha=$(($(redis_evalsha_calls) - evalsha0))
    note="store errors $errors, $(printf '%.3f' "$(echo "$evalsha / $requests" | bc -l)") EVALSHA per request"
    ((errors == 0)) || bad+="store errors $errors; "
  fi
  stop_pid "$pid"
  total=$(awk '/^summary:/ {print $2}' "$CG_OUT.1")
  RUN_REQ[$sys/$r]=$requests RUN_IR[$sys/$r]=$total RUN_BAD[$sys/$r]=$bad RUN_NOTE[$sys/$r]=$note
  RUN_CG[$sys/$r]=$CG_OUT
  printf '%-14s %s%8s requests  %8.1fk instructions/request  %s%s\n' "$sys" \
    "$( ((rounds == 1)) || printf 'round %d/%d ' "$r" "$rounds")" "$requests" \
    "$(echo "$total / $requests / 1000" | bc -l)" "$note" "${bad:+  NOT VALID: $bad}"
}

mkdir -p "$WORK_DIR/cg"
# Rounds interleaved (every system once per round), so a slow spell of the machine does not
# fall on one system's runs only.
for ((r = 1; r <= rounds; r++)); do
  for sys in "${systems[@]}"; do
    profile "$sys" "$r"
  done
done

# Per system: the run with the median instructions/request (the lower middle one for an even
# count) stands for it; with several rounds its files are copied to the results directory.
declare -A REQS=() IR=() RANGE=() CHECK=()
for sys in "${systems[@]}"; do
  mapfile -t order < <(for ((r = 1; r <= rounds; r++)); do
    echo "$(echo "${RUN_IR[$sys/$r]} / ${RUN_REQ[$sys/$r]}" | bc -l) $r"
  done | sort -g)
  med=${order[$(((rounds - 1) / 2))]##* }
  lo=${order[0]%% *} hi=${order[$((rounds - 1))]%% *}
  REQS[$sys]=${RUN_REQ[$sys/$med]} IR[$sys]=${RUN_IR[$sys/$med]}
  RANGE[$sys]=$(printf '%.1f–%.1fk' "$(echo "$lo / 1000" | bc -l)" "$(echo "$hi / 1000" | bc -l)")
  bad="" note=${RUN_NOTE[$sys/$med]}
  for ((r = 1; r <= rounds; r++)); do
    [[ -z ${RUN_BAD[$sys/$r]} ]] || bad+="round $r: ${RUN_BAD[$sys/$r]}"
  done
  if [[ -n $bad ]]; then CHECK[$sys]="NOT VALID: ${bad%; }"; else CHECK[$sys]=${note:-all 2xx}; fi
  if ((rounds > 1)); then
    rm -f "$out_dir/$sys.out" "$out_dir/$sys.out".*
    cp "${RUN_CG[$sys/$med]}" "$out_dir/$sys.out"
    cp "${RUN_CG[$sys/$med]}.1" "$out_dir/$sys.out.1"
    printf '%-14s median of %d rounds: %8.1fk instructions/request (rounds %s)  %s\n' "$sys" "$rounds" \
      "$(echo "${IR[$sys]} / ${REQS[$sys]} / 1000" | bc -l)" "${RANGE[$sys]}" "${CHECK[$sys]}"
  fi
done

((table)) || exit 0

# ---- loadtest/results/callgrind.md --------------------------------------------------------------
md=loadtest/results/callgrind.md
per_req() { echo "${IR[$1]} / ${REQS[$1]}" | bc -l; }
kfmt() { printf '%.1fk' "$(echo "$1 / 1000" | bc -l)"; }
signed_k() { printf '%+.1fk' "$(echo "$1 / 1000" | bc -l)"; }
commit=$(git rev-parse --short HEAD)
dirty=$(git status --porcelain -- proxy Cargo.toml Cargo.lock 2>/dev/null | head -c1)
# The largest spread between one system's rounds, relative to its median.
spread=$(for sys in "${systems[@]}"; do
  for ((r = 1; r <= rounds; r++)); do echo "$sys $(echo "${RUN_IR[$sys/$r]} / ${RUN_REQ[$sys/$r]}" | bc -l)"; done
done | awk '{ if (!($1 in lo) || $2 < lo[$1]) lo[$1] = $2; if ($2 > hi[$1]) hi[$1] = $2 }
  END { for (s in lo) { d = (hi[s] - lo[s]) / lo[s] * 100; if (d > m) m = d }; printf "%.1f", m }')
{
  echo "# Instructions per request under callgrind, one capability at a time"
  echo
  echo "Written by \`loadtest/profile_callgrind.sh table\` on $(date -u '+%Y-%m-%d %H:%M UTC') at commit"
  echo "\`$commit\`$([[ -n $dirty ]] && echo " (the binaries were built from a working tree with uncommitted changes under proxy/)"). Machine: $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1),"
  echo "Linux $(uname -r), load average $LOAD_BEFORE before the run and $(cut -d' ' -f1-3 /proc/loadavg) after (other jobs"
  echo "were running); $(valgrind --version), $(rustc --version 2>/dev/null | awk '{print $1, $2}'), $(wrk --version 2>&1 | awk 'NR==1 {print $1, $2}')."
  echo
  echo "Method: each line is its own release-build process (1 worker thread) under"
  echo "\`valgrind --tool=callgrind\`, in front of the same two nginx backends (\`return 200\`). \`wrk -t1 -c10\`"
  echo "sends \`GET $WRK_PATH\` for a 3 s warm-up; then the counters are zeroed, 10 s are counted (a new wrk"
  echo "run: opening its 10 connections is counted, for \`+tls\` 10 full handshakes) and dumped."
  echo "Instructions/request is the dump's total (every thread of the process: health checks, timers"
  echo "and background tasks included) over the requests wrk completed, the median of $rounds interleaved"
  echo "rounds (its run's request count shown). Callgrind counts instructions, not time, so a busy"
  echo "machine barely moves the numbers, but not exactly: how many requests one wake-up serves and"
  echo "how many requests share the window's fixed work change with the machine's load, so a system's"
  echo "rounds differ by up to $spread% here (ranges below); differences smaller than about 0.5k are"
  echo "not resolved by the totals (the function costs below are). Kernel time (syscalls, TCP,"
  echo "writes to the log file) is not counted."
  echo
  echo "| system | adds | requests counted | instructions/request | rounds | / bare | Δ previous line | Δ to what it builds on | check |"
  echo "|---|---|---:|---:|---|---:|---:|---|---|"
  prev=
  for sys in "${systems[@]}"; do
    x=$(per_req "$sys")
    ratio=$(printf '%.3f' "$(echo "$x / $(per_req bare)" | bc -l)")
    dprev="–"; [[ -n $prev && $sys != ours && $sys != bare+hdr ]] && dprev=$(signed_k "$(echo "$x - $(per_req "$prev")" | bc -l)")
    dbase="–"; [[ -n ${BUILDS_ON[$sys]:-} ]] && dbase="$(signed_k "$(echo "$x - $(per_req "${BUILDS_ON[$sys]}")" | bc -l)") over \`${BUILDS_ON[$sys]}\`"
    # shellcheck disable=SC2016 # the backticks are markdown
    printf '| `%s` | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$sys" "${ADDS[$sys]}" "${REQS[$sys]}" \
      "$(kfmt "$x")" "${RANGE[$sys]}" "$ratio" "$dprev" "$dbase" "${CHECK[$sys]}"
    [[ $sys == ours || $sys == bare+hdr ]] || prev=$sys
  done
  echo
  echo "\`+50routes\`, \`+redis\`, \`+log\` and \`+outlier\` are each \`+ratelimit\` plus one thing (so \"Δ to"
  echo "what it builds on\" is the cost of that thing); \`+tls\` is \`+outlier\` plus TLS; \`ours\` is"
  echo "\`+outlier\` without the explicit catch-all route (the same features)."
  echo
  hdr=$(per_req bare+hdr)
  echo "\`bare+hdr\` is a reference, not a capability: bare Pingora adding the same five request and nine"
  echo "response headers as \`+outlier\` sends (\`X-Forwarded-For\` built by our function, the others with"
  echo "fixed values; all through our \`header_case\` path). What the"
  echo "headers alone cost a Pingora proxy: $(signed_k "$(echo "$hdr - $(per_req bare)" | bc -l)") per request,"
  echo "$(printf '%.3f' "$(echo "$hdr / $(per_req bare)" | bc -l)") × bare. The default feature set against it, \`+outlier\` / \`bare+hdr\` ="
  echo "**$(printf '%.3f' "$(echo "$(per_req +outlier) / $hdr" | bc -l)")**. Both pay the headers alike; beyond them the gateway adds its own logic"
  echo "(routing, the limiter's check, metrics, request ids, health and outlier state, its connection handling)"
  echo "but does not pay two of Pingora's defaults that \`bare\` and \`bare+hdr\` keep: Pingora's upstream request"
  echo "policy, whose hop-by-hop stripping the gateway does itself at a fraction of the cost, and Pingora's idle"
  echo "compression module (the rows for both below). So this ratio is below what the gateway's own logic costs."
  echo
  args=()
  for sys in "${systems[@]}"; do args+=("$sys|$out_dir/$sys.out.1|${REQS[$sys]}|${IR[$sys]}"); done
  python3 - "${args[@]}" <<'PYEOF'
import re, subprocess, sys

def same_name(name):
    """Generic instances named alike in both binaries: HttpProxy<proxy::gateway::Gateway> and
    HttpProxy<bare_proxy::Bare> both become HttpProxy<SV>."""
    return name.replace("<proxy::gateway::Gateway>", "<SV>").replace("<bare_proxy::Bare>", "<SV>")

def annotate(path):
    """{function: inclusive Ir} from callgrind_annotate --inclusive=yes."""
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", path],
                         capture_output=True, text=True, check=True).stdout
    costs = {}
    for line in out.splitlines():
        m = re.match(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)$", line)
        if not m:
            continue
        name = re.sub(r"\s+\[[^\]]*\]$", "", m.group(2))          # object file
        name = re.sub(r"^(\?\?\?|[^ :<]+):", "", name, count=1)    # source file
        name = same_name(name)
        costs[name] = costs.get(name, 0) + int(m.group(1).replace(",", ""))
    return costs

def self_costs(path):
    """{function: self Ir} read from the callgrind file itself (callgrind_annotate 3.19's
    --inclusive=no gives the threads' outer frames, active when the counters were zeroed, the
    whole cost): every cost line under fn=, except the one after each calls= (a call's
    inclusive cost)."""
    names, costs, fn, skip = {}, {}, None, False
    def name_of(spec):
        m = re.match(r"\((\d+)\)(?: (.*))?$", spec)
        if not m:
            return spec
        if m.group(2) is not None:
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), spec)
    with open(path) as f:
        for line in f:
            c0 = line[:1]
            if c0.isdigit() or c0 in "+-*":
                if skip:
                    skip = False
                elif fn is not None:
                    parts = line.split()
                    if len(parts) >= 2:
                        costs[fn] = costs.get(fn, 0) + int(parts[-1])
            elif line.startswith("fn="):
                fn = same_name(name_of(line[3:].rstrip("\n")))
            elif line.startswith("cfn="):
                name_of(line[4:].rstrip("\n"))
            elif line.startswith("calls="):
                skip = True
    return costs

def total(path):
    with open(path) as f:
        for line in f:
            if line.startswith("summary:"):
                return int(line.split()[1])

# Arguments: SYSTEM|CALLGRIND_FILE|REQUESTS|INSTRUCTIONS, one per line of the table.
runs = {}
for arg in sys.argv[1:]:
    name, path, n, ir = arg.split("|")
    runs[name] = (path, int(n), int(ir))
ours_path, ours_n, _ = runs["+outlier"]
bare_path, bare_n, _ = runs["bare"]
c, b = annotate(ours_path), annotate(bare_path)
ours_pr, bare_pr = total(ours_path) / ours_n, total(bare_path) / bare_n
extra = ours_pr - bare_pr

def cost(pattern, costs=c, n=ours_n):
    """Largest inclusive cost per request among the functions matching pattern (the outermost
    one when nested copies such as {{closure}} match too); None when none does."""
    rx = re.compile(pattern)
    vals = [v for name, v in costs.items() if rx.search(name)]
    return max(vals) / n if vals else None

def fmt(x):
    return "–" if x is None else f"{x:,.0f}"

print("## Where ours's extra instructions go (`+outlier`, the default feature set)")
print()
print(f"`+outlier` costs {ours_pr:,.0f} instructions per request, bare Pingora {bare_pr:,.0f}: "
      f"{extra:,.0f} more. From `callgrind_annotate` of `loadtest/results/callgrind/+outlier.out.1` "
      "and `bare.out.1`, per request counted; inclusive costs (a function with everything it calls). "
      "The `ProxyHttp` hooks, which Pingora calls one after the other, so their differences add up; "
      "bare implements only `upstream_peer` (Pingora's `LoadBalancer<RoundRobin>`) and "
      "`upstream_request_filter` (`X-Forwarded-For`, through Pingora's case-keeping `insert_header`):")
print()
hooks = [
    ("`request_filter` (request id, client address, route lookup, rate limiter, the headers to the backend: `add_upstream_headers`)", "request_filter"),
    ("`upstream_peer` (round robin over the group's up backends, the peer)", "upstream_peer"),
    ("`connected_to_upstream` (connection metrics)", "connected_to_upstream"),
    ("`upstream_request_filter` (ours: the hop-by-hop fields, `hop_by_hop::strip`, and a timestamp; bare: `X-Forwarded-For`)", "upstream_request_filter"),
    ("`upstream_response_filter` (upstream time, outlier detection's outcome)", "upstream_response_filter"),
    ("`response_filter` (the headers to the client, rate-limit headers included)", "response_filter"),
    ("`logging` (metrics, outlier bookkeeping; the access log when on)", "logging"),
    ("`new_ctx` (the request context)", "new_ctx"),
    ("`on_connection_reuse`", "on_connection_reuse"),
]
print("| item | ours | bare | Δ |")
print("|---|---:|---:|---:|")
delta_sum = 0
for label, hook in hooks:
    v = cost(rf"^<proxy::gateway::Gateway as pingora_proxy::proxy_trait::ProxyHttp>::{hook}\b")
    vb = cost(rf"^<bare_proxy::Bare as pingora_proxy::proxy_trait::ProxyHttp>::{hook}\b", b, bare_n)
    if (v or 0) < 1 and (vb or 0) < 1:
        continue
    d = (v or 0) - (vb or 0)
    delta_sum += d
    print(f"| {label} | {fmt(v)} | {fmt(vb)} | {d:+,.0f} |")
# Our connection wrapper (DownstreamApp::process_new) around Pingora's process_new_http, against
# Pingora's own wrapper (<T as ServerApp>::process_new) in bare.
app = cost(r"^<proxy::gateway::downstream::DownstreamApp as pingora_core::apps::ServerApp>::process_new")
app_b = cost(r"^<T as pingora_core::apps::ServerApp>::process_new", b, bare_n)
inner = cost(r"^<pingora_proxy::HttpProxy<SV,C> as pingora_core::apps::HttpServerApp>::process_new_http")
inner_b = cost(r"^<pingora_proxy::HttpProxy<SV,C> as pingora_core::apps::HttpServerApp>::process_new_http", b, bare_n)
if None not in (app, app_b, inner, inner_b):
    w, wb = app - inner, app_b - inner_b
    delta_sum += w - wb
    print(f"| connection wrapper outside Pingora's `process_new_http` (ours: `DownstreamApp`, header deadline, connection caps) | {fmt(w)} | {fmt(wb)} | {w - wb:+,.0f} |")
print(f"| **sum of the above** | | | **{delta_sum:+,.0f}** |")
print(f"| rest: Pingora's own work, more or less than in bare (less: Pingora's upstream request policy and compression module, which ours does not run, see below; more: larger futures and context copied, more headers hashed and written, more timers, see the leaf view under Reference), health checks, admin listener | | | {extra - delta_sum:+,.0f} |")
print(f"| **total** | **{ours_pr:,.0f}** | **{bare_pr:,.0f}** | **{extra:+,.0f}** |")
print()
print("Inside them (nested: these overlap each other and the hooks above; do not add them up). "
      "Library functions are counted wherever they are called, Pingora's calls included, so "
      "bare's column is there for comparison:")
print()
inside = [
    ("`proxy_headers::add_upstream_headers` (X-Forwarded-*, X-Request-Id, Via, configured header)", r"^proxy::gateway::proxy_headers::add_upstream_headers$"),
    ("`proxy_headers::add_downstream_headers` (response headers: X-Request-Id, Via, configured header, ...)", r"^proxy::gateway::proxy_headers::add_downstream_headers$"),
    ("`proxy_headers::add_rate_limit_headers` (legacy `RateLimit-Limit`, `-Remaining`, `-Reset` and the IETF draft's `RateLimit`, `RateLimit-Policy`)", r"^proxy::gateway::proxy_headers::add_rate_limit_headers$"),
    ("  `limits::quota::Quota::ietf_value` (formatting the draft's `RateLimit` value)", r"^proxy::limits::quota::Quota::ietf_value$"),
    ("`header_case::edit_request` (all header edits to the backend)", r"^proxy::gateway::header_case::edit_request$"),
    ("`header_case::edit_response` (all header edits to the client)", r"^proxy::gateway::header_case::edit_response$"),
    ("`header_case::Editor<H>::insert` (every header insert of ours)", r"^proxy::gateway::header_case::Editor<H>::insert$"),
    ("`header_case::reserve` (one reservation per map)", r"^proxy::gateway::header_case::reserve$"),
    ("`http::HeaderMap::try_insert2` (hashing, probing, storing; ours and Pingora's inserts)", r"^http::header::map::HeaderMap<T>::try_insert2$"),
    ("`proxy_headers::request_id` (the request id)", r"^proxy::gateway::proxy_headers::request_id$"),
    ("`limits::sliding_window::RateLimiter::check_at` (rate limiter check)", r"^proxy::limits::sliding_window::RateLimiter::check_at$"),
    ("`routing::Router::find` (route lookup)", r"^proxy::routing::Router::find$"),
    ("Pingora's upstream request policy, `proxy_common::sanitize_h1_upstream_request` (13 removals and a `Connection` parse per request; ours sets the policy to `preserve`, which returns at once)", r"^pingora_proxy::proxy_common::sanitize_h1_upstream_request$"),
    ("Pingora's idle compression module: building its context, `HttpModules::build_ctx` (its filter calls come on top; ours adds no module)", r"^pingora_core::modules::http::HttpModules::build_ctx$"),
    ("`upstream::group::Group::pick` (round robin, down set)", r"^proxy::upstream::group::Group::pick$"),
    ("`observe::metrics::RouteMetrics::with_series` (per-route metrics)", r"^proxy::observe::metrics::RouteMetrics::with_series$"),
    ("`observe::metrics::RequestCounters::inc` (`gateway_requests_total`)", r"^proxy::observe::metrics::RequestCounters::inc$"),
    ("`prometheus::Histogram::observe` (duration histograms)", r"^prometheus::histogram::Histogram::observe$"),
    ("`upstream::group::GroupCore::record_outcome` (outlier detection's bookkeeping)", r"^proxy::upstream::group::GroupCore::record_outcome$"),
    ("`gateway::downstream::ConnectionTimer::poll_deadline` (header deadline, one timer per connection)", r"^proxy::gateway::downstream::ConnectionTimer::poll_deadline$"),
    ("Pingora's timeouts (`FastOrTokioTimeout::timeout`: ours sets `read_timeout_ms` on upstream reads)", r"^<pingora_timeout::fast_timeout::FastOrTokioTimeout as pingora_timeout::ToTimeout>::timeout$"),
]
print("| item | ours | bare |")
print("|---|---:|---:|")
for label, pat in inside:
    v, vb = cost(pat), cost(pat, b, bare_n)
    if v is None and vb is None:
        continue
    print(f"| {label} | {fmt(v)} | {fmt(vb)} |")
print()
# Each capability's own code, read from its line's profile (inclusive costs of the functions
# that do its work), against the line's measured difference.
profiles = {}
def prof(name):
    if name not in profiles:
        profiles[name] = annotate(runs[name][0])
    return profiles[name]
def fcost(name, pattern):
    return cost(pattern, prof(name), runs[name][1]) or 0
def per_request(name):
    return runs[name][2] / runs[name][1]
# Each capability hook by hook: the same split as above, line against the line it builds on.
builds_on = {"base": "bare", "+ratelimit": "base", "+50routes": "+ratelimit", "+redis": "+ratelimit",
             "+log": "+ratelimit", "+outlier": "+ratelimit", "+tls": "+outlier", "ours": "+outlier"}
def hook_costs(name):
    p, n = prof(name), runs[name][1]
    who = r"^<bare_proxy::Bare" if name == "bare" else r"^<proxy::gateway::Gateway"
    h = {hook: cost(rf"{who} as pingora_proxy::proxy_trait::ProxyHttp>::{hook}\b", p, n) or 0
         for _, hook in hooks}
    outer = r"^<T as pingora_core::apps::ServerApp>::process_new" if name == "bare" else \
        r"^<proxy::gateway::downstream::DownstreamApp as pingora_core::apps::ServerApp>::process_new"
    inner_cost = cost(r"^<pingora_proxy::HttpProxy<SV,C> as pingora_core::apps::HttpServerApp>::process_new_http", p, n) or 0
    h["wrapper"] = (cost(outer, p, n) or 0) - inner_cost
    return h
cols = [("`request_filter`", ["request_filter"]), ("`upstream_peer`", ["upstream_peer"]),
        ("`upstream_response_filter`", ["upstream_response_filter"]), ("`response_filter`", ["response_filter"]),
        ("`logging`", ["logging"]),
        ("other hooks", ["connected_to_upstream", "upstream_request_filter", "new_ctx", "on_connection_reuse"]),
        ("connection wrapper", ["wrapper"])]
print("## Each line hook by hook")
print()
print("The same split for every line against the line it builds on (instructions per request; "
      "\"rest\" is everything outside these: Pingora's own work, background tasks and threads such "
      "as Redis' connection task or the access log's writer, the TLS streams, and the noise of "
      "the totals):")
print()
print("| line | over | " + " | ".join(label for label, _ in cols) + " | rest | measured Δ |")
print("|---|---|" + "---:|" * (len(cols) + 2))
for line, base in builds_on.items():
    if line not in runs or base not in runs:
        continue
    hl, hb = hook_costs(line), hook_costs(base)
    ds = [sum(hl[k] - hb[k] for k in keys) for _, keys in cols]
    measured = per_request(line) - per_request(base)
    print(f"| `{line}` | `{base}` | " + " | ".join(f"{d:+,.0f}" for d in ds) +
          f" | {measured - sum(ds):+,.0f} | {measured:+,.0f} |")
print()
PH = r"^proxy::gateway::proxy_headers::"
capabilities = [
    ("+ratelimit", "+ratelimit", "base", [
        ("`add_rate_limit_headers` (five headers, legacy and IETF draft)", "+ratelimit", PH + r"add_rate_limit_headers$", 1),
        ("`RateLimiter::check_at` (the sliding window check)", "+ratelimit", r"^proxy::limits::sliding_window::RateLimiter::check_at$", 1)]),
    ("+50routes", "+50routes", "+ratelimit", [
        ("`Router::find` with 50 routes", "+50routes", r"^proxy::routing::Router::find$", 1),
        ("`Router::find` with one catch-all route", "+ratelimit", r"^proxy::routing::Router::find$", -1)]),
    ("+redis", "+redis", "+ratelimit", [
        ("the check's command (`redis::cmd::Cmd::query_async`: EVALSHA built, queued, answer awaited and decoded)", "+redis", r"^redis::cmd::Cmd::query_async::\{\{closure\}\}$", 1),
        ("`SharedStore::key` (the client's key)", "+redis", r"^proxy::limits::shared_store::SharedStore::key$", 1),
        ("the connection's pipeline task (`futures_util::Forward` into `PipelineSink`: writing commands, reading and parsing replies)", "+redis", r"^<futures_util::stream::stream::forward::Forward<St,Si,Item> as core::future::future::Future>::poll$", 1),
        ("the local `RateLimiter::check_at` it replaces", "+ratelimit", r"^proxy::limits::sliding_window::RateLimiter::check_at$", -1)]),
    ("+log", "+log", "+ratelimit", [
        ("`AccessLog::write` (the JSON line, from `logging`)", "+log", r"^proxy::observe::access_log::AccessLog::write$", 1),
        ("`Batch::flush` (the writer thread: batches to stdout and the file)", "+log", r"^proxy::observe::access_log::Batch::flush$", 1)]),
    ("+outlier", "+outlier", "+ratelimit", [
        ("`GroupCore::record_outcome` with ejection on", "+outlier", r"^proxy::upstream::group::GroupCore::record_outcome$", 1),
        ("`GroupCore::record_outcome` with `consecutive_failures = 0`", "+ratelimit", r"^proxy::upstream::group::GroupCore::record_outcome$", -1)]),
    ("+tls", "+tls", "+outlier", [
        ("handshakes (`TlsStream::accept`; 10 in the window)", "+tls", r"^pingora_core::protocols::tls::rustls::stream::TlsStream<T>::accept::\{\{closure\}\}$", 1),
        ("reads through TLS (`TlsStream as AsyncRead>::poll_read`: decryption, socket reads)", "+tls", r"^<pingora_core::protocols::tls::rustls::stream::TlsStream<T> as tokio::io::async_read::AsyncRead>::poll_read$", 1),
        ("writes through TLS (`TlsStream as AsyncWrite>::poll_write`: encryption, socket writes)", "+tls", r"^<pingora_core::protocols::tls::rustls::stream::TlsStream<T> as tokio::io::async_write::AsyncWrite>::poll_write$", 1)]),
]
print("## Each capability's own code")
print()
print("What the functions doing each capability's work cost (inclusive, per request, from that "
      "line's profile; a minus sign: the same function in the line it builds on, whose work this "
      "one replaces), next to the line's measured difference, which also holds the noise of the "
      "totals and the knock-on costs (allocation, more bytes to copy and write):")
print()
print("| line | functions | instructions / request | sum | measured Δ |")
print("|---|---|---:|---:|---:|")
for line, _, base, items in capabilities:
    if line not in runs or base not in runs:
        continue
    vals = [(label, sign * fcost(where, pat)) for label, where, pat, sign in items]
    total_own = sum(v for _, v in vals)
    measured = per_request(line) - per_request(base)
    for i, (label, v) in enumerate(vals):
        last = i == len(vals) - 1
        print(f"| {'`' + line + '`' if i == 0 else ''} | {label} | {v:+,.0f} | "
              f"{f'{total_own:+,.0f}' if last else ''} | {f'{measured:+,.0f} over `{base}`' if last else ''} |")
print()
print("## Reference")
print()
# Leaf view: self (exclusive) cost, same function in both binaries.
cs, bs = self_costs(ours_path), self_costs(bare_path)
rows = []
for name in set(cs) | set(bs):
    d = cs.get(name, 0) / ours_n - bs.get(name, 0) / bare_n
    rows.append((d, name))
rows.sort(reverse=True)
print("Leaf view: the 20 functions whose own instructions (self cost, callees excluded) grew most "
      "from bare to ours, per request (`<SV>` stands for either proxy's `ProxyHttp` type; the two "
      "binaries inline differently, so a function at 0 in one can be inlined into its caller there):")
print()
print("| function | ours | bare | Δ |")
print("|---|---:|---:|---:|")
for d, name in rows[:20]:
    print(f"| `{name.replace('|', '∣')}` | {cs.get(name, 0) / ours_n:,.0f} | {bs.get(name, 0) / bare_n:,.0f} | {d:+,.0f} |")
print()
print("The 25 most costly of our own functions (`proxy::` symbols; inclusive, nested; names as "
      "callgrind_annotate prints them):")
print()
print("| function | instructions / request |")
print("|---|---:|")
top = sorted(((v, n) for n, v in c.items() if re.match(r"^<?proxy::", n)), reverse=True)[:25]
for v, n in top:
    print(f"| `{n.replace('|', '∣')}` | {fmt(v / ours_n)} |")
print()
PYEOF
} >"$md"
log "wrote $md"
