#!/usr/bin/env bash
# Rate limiter benchmark: memory per tracked client, "nobody under budget is ever limited", and
# the shared store (Redis) against the local one.
#
#   loadtest/bench_ratelimit.sh [--populations "1000 10000 100000"] [--requests-per-client 2]
#                               [--budget N] [--max-clients N] [--workers N]
#                               [--rounds N] [--duration S] [--connections C] [--pipe-rounds N]
#                               [--skip-memory] [--skip-store] [--quick] [--no-build] [--out DIR]
#
# Part "memory" (results: loadtest/results/ratelimit.{md,json}):
# Two gateways run side by side in front of two nginx backends, identical except that one has
# rate_limit.enabled = true (rate_limit.requests = budget, window 3600 s, so no budget refills
# during the run) and the other false (the control: what connections and requests cost without
# the limiter). Distinct clients are distinct 127.x.y.z source addresses (many_clients.py).
#
# 1. Populations: the clients grow in disjoint steps to 1,000, 10,000 and 100,000; each new
#    client sends --requests-per-client requests on one connection. VmRSS of both proxies is read
#    before and after each step; the limiter's memory is (rl on growth) - (rl off growth).
# 2. Second pass: all 100,000 clients send --requests-per-client requests again. With
#    2 x requests-per-client < budget every response must be 200 (and
#    gateway_rate_limited_total must stay 0): no client under its budget was limited.
# 3. Control: one fresh client sends budget + 1 requests; exactly the last must be 429, which
#    shows the limiter was really on.
#
# Part "store" (results: loadtest/results/ratelimit_store.{md,json}):
# A redis-server of its own (127.0.0.1, a free port, persistence off; never the one on 6379) on
# the same box, and three gateways with --workers worker(s), started once, measured one at a
# time: `local` (store = "local"), `redis` (store = "redis", timeout_ms 20, on_error "local")
# and `norl` (limiter off: what any limiter costs). The limit is 1e9 per 60 s, never reached,
# so every request is one check that is admitted; wrk is one client address, so one key.
#
# 4. Control: a fourth gateway on the redis store with the budget above (window 3600 s): one
#    client sends budget + 1 requests; exactly the last must be 429 and its key must be in Redis.
# 5. Main: interleaved rounds (local redis norl local redis norl ...) of
#    `wrk -t1 -c<connections> --latency`; per round req/s, p50/p99, the proxy's CPU per request,
#    Redis' CPU per check (utime+stime of redis-server from /proc/PID/stat over the round,
#    divided by the EVALSHA calls of INFO commandstats), the whole box's busy CPU, wrk's CPU,
#    and inside the gateway the CPU and context switches of the thread that runs the store's
#    connection. Ratios redis/local are medians of per-round ratios with their min-max; target
#    req/s >= 0.80. Every redis request must have been counted in Redis (no store error, no check
#    skipped while the store counted as down: on_error = "local" would have answered those).
# 6. Pipelining: interleaved rounds of local and redis at wrk -c1 (one check in flight, nothing
#    to pipeline) against the main rounds at -c<connections> (many checks in flight on the one
#    multiplexed connection): checks per read() syscall of redis-server (/proc/PID/io syscr),
#    Redis CPU per check, and the connections the redis gateway holds (CLIENT LIST).
#
# --quick: populations "1000 10000", 2 rounds of 3 s, 1 pipelining round (development only).
# Defaults take about 6 minutes on 2 cores. Exits 1 when a check fails (not for a missed target).
# Settings may also come from the environment: POPULATIONS, REQUESTS_PER_CLIENT, BUDGET,
# MAX_CLIENTS, WORKERS, CONCURRENCY, ROUNDS, DURATION, CONNECTIONS, PIPE_ROUNDS, WARMUP,
# KEEP_TMP=1.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/lib.sh
source "$HERE/../scripts/lib.sh"
bench_init

POPULATIONS=${POPULATIONS:-"1000 10000 100000"}
REQUESTS_PER_CLIENT=${REQUESTS_PER_CLIENT:-2}
BUDGET=${BUDGET:-}
MAX_CLIENTS=${MAX_CLIENTS:-100000}
WORKERS=${WORKERS:-1}
CONCURRENCY=${CONCURRENCY:-100}
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-50}
PIPE_ROUNDS=${PIPE_ROUNDS:-3}
WARMUP=${WARMUP:-2}
OUT="$ROOT/loadtest/results"
BUILD=1
DO_MEMORY=1
DO_STORE=1

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; }

while (($#)); do
  case "$1" in
    --populations) POPULATIONS=$2; shift 2 ;;
    --requests-per-client) REQUESTS_PER_CLIENT=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    --max-clients) MAX_CLIENTS=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --pipe-rounds) PIPE_ROUNDS=$2; shift 2 ;;
    --skip-memory) DO_MEMORY=0; shift ;;
    --skip-store) DO_STORE=0; shift ;;
    --quick) POPULATIONS="1000 10000" ROUNDS=2 DURATION=3 PIPE_ROUNDS=1; shift ;;
    --no-build) BUILD=0; shift ;;
    --out) OUT=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; log_die "unknown argument: $1" ;;
  esac
done
BUDGET=${BUDGET:-$((2 * REQUESTS_PER_CLIENT + 1))}
for v in REQUESTS_PER_CLIENT BUDGET MAX_CLIENTS WORKERS CONCURRENCY ROUNDS DURATION CONNECTIONS PIPE_ROUNDS; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || log_die "$v must be a positive integer (got '${!v}')"
done
[[ "$WARMUP" =~ ^[0-9]+$ ]] || log_die "WARMUP must be a non-negative integer (got '$WARMUP')"
((ROUNDS <= 100 && PIPE_ROUNDS <= 100 && DURATION <= 600)) || log_die "rounds <= 100, duration <= 600"
((DO_MEMORY || DO_STORE)) || log_die "--skip-memory and --skip-store leave nothing to run"
((2 * REQUESTS_PER_CLIENT < BUDGET)) || log_die "2 x requests-per-client must stay under the budget"
prev=0
for n in $POPULATIONS; do
  if ! [[ "$n" =~ ^[1-9][0-9]*$ ]] || ((n <= prev || n > 1000000)); then
    log_die "populations must be increasing positive integers up to 1000000"
  fi
  prev=$n
done
LAST=$prev

log_need nginx "apt-get install -y nginx-light"
log_need python3 "apt-get install -y python3"
log_need curl "apt-get install -y curl"
if ((DO_STORE)); then
  log_need wrk "apt-get install -y wrk"
  log_need redis-server "apt-get install -y redis-server"
  log_need redis-cli "apt-get install -y redis-tools"
fi
((BUILD)) && build_release
check_binaries

install_cleanup
make_work_dir gateway-bench
chmod 755 "$WORK_DIR"
RAW="$WORK_DIR/raw"
mkdir -p "$RAW" "$OUT"

start_bench_backends 1
MEMORY_OK=1
STORE_OK=1

# --- memory and correctness (parts 1-3) -------------------------------------------------------
if ((DO_MEMORY)); then
  # The window is 3600 s, so no client's budget refills while the benchmark runs.
  start_ours rl-on "$(free_port)" "$(free_port)" "$WORKERS" true false "$BUDGET" "$MAX_CLIENTS" 3600
  start_ours rl-off "$(free_port)" "$(free_port)" "$WORKERS" false false "$BUDGET" "$MAX_CLIENTS" 3600

  # clients SYS OFFSET COUNT REQUESTS OUTFILE: COUNT clients from address OFFSET on.
  clients() {
    timeout 900 python3 "$HERE/many_clients.py" --target "${SYS_ADDR[$1]}" --first 127.1.0.1 \
      --offset "$2" --clients "$3" --requests-per-client "$4" --concurrency "$CONCURRENCY" \
      --timeout 600 >"$5" || log_die "many_clients.py against $1 failed"
  }

  printf 'phase\tsystem\tclients_total\tnew_clients\tfile\trss_before_kb\trss_after_kb\thwm_after_kb\ttracked\n' >"$RAW/steps.tsv"
  # tracked SYS: the gauge gateway_rate_limit_clients (empty when the build does not export it).
  tracked() {
    curl -s -m 2 "http://${SYS_ADMIN[$1]}/metrics" | awk '$1 == "gateway_rate_limit_clients" {print $2}'
  }
  record() { # phase sys total new file before
    printf '%s\t%s\t%d\t%d\t%s\t%d\t%d\t%d\t%s\n' "$1" "$2" "$3" "$4" "$5" "$6" \
      "$(status_kb "${SYS_PID[$2]}" VmRSS)" "$(status_kb "${SYS_PID[$2]}" VmHWM)" "$(tracked "$2")" >>"$RAW/steps.tsv"
  }

  # Baseline: one request each, so both have a warm connection pool before anything is read.
  for sys in rl-on rl-off; do
    curl -s -o /dev/null "http://${SYS_ADDR[$sys]}/"
    record start "$sys" 0 0 - "$(status_kb "${SYS_PID[$sys]}" VmRSS)"
  done

  prev=0
  for n in $POPULATIONS; do
    for sys in rl-on rl-off; do
      log "population $n: $sys: clients $prev..$((n - 1)), $REQUESTS_PER_CLIENT requests each"
      before=$(status_kb "${SYS_PID[$sys]}" VmRSS)
      f="$RAW/pop_${sys}_$n.json"
      clients "$sys" "$prev" $((n - prev)) "$REQUESTS_PER_CLIENT" "$f"
      record population "$sys" "$n" $((n - prev)) "$f" "$before"
    done
    prev=$n
  done

  for sys in rl-on rl-off; do
    log "second pass: $sys: all $LAST clients again, $REQUESTS_PER_CLIENT requests each"
    before=$(status_kb "${SYS_PID[$sys]}" VmRSS)
    f="$RAW/second_${sys}.json"
    clients "$sys" 0 "$LAST" "$REQUESTS_PER_CLIENT" "$f"
    record second-pass "$sys" "$LAST" 0 "$f" "$before"
  done
  limited_before_control=$(ours_metric_sum "${SYS_ADMIN[rl-on]}" '^gateway_rate_limited_total')

  log "control: one new client sends $((BUDGET + 1)) requests to rl-on"
  clients rl-on $((LAST + 1000)) 1 $((BUDGET + 1)) "$RAW/control.json"

  cat >"$RAW/meta.json" <<EOF
{"date": "$(date -u +%FT%TZ)", "git": "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo -dirty)",
 "host": "$(uname -srm)", "cpus": $(nproc), "budget": $BUDGET, "window_seconds": 3600,
 "requests_per_client": $REQUESTS_PER_CLIENT, "max_clients": $MAX_CLIENTS, "workers": $WORKERS,
 "concurrency": $CONCURRENCY, "limited_before_control": $limited_before_control}
EOF

  python3 - "$RAW" "$OUT" <<'PY' || MEMORY_OK=0
import csv, json, sys
from pathlib import Path

raw, out = Path(sys.argv[1]), Path(sys.argv[2])
meta = json.loads((raw / "meta.json").read_text())
rows = list(csv.DictReader((raw / "steps.tsv").open(), delimiter="\t"))
for r in rows:
    r["result"] = json.loads(Path(r["file"]).read_text()) if r["file"] != "-" else None
control = json.loads((raw / "control.json").read_text())

def kb(r, k):
    return int(r[k])

start = {r["system"]: kb(r, "rss_after_kb") for r in rows if r["phase"] == "start"}
md = ["# Rate limiter: memory and correctness", ""]
md.append(f"{meta['date']} · git {meta['git']} · {meta['host']} · {meta['cpus']} CPUs. "
          f"Two gateways ({meta['workers']} thread(s)): `rl-on` (rate_limit.requests = "
          f"{meta['budget']}, window {meta['window_seconds']} s, max_clients = "
          f"{meta['max_clients']:,}) and the control `rl-off` (limiter disabled), same traffic. "
          f"Each new client (its own 127.x.y.z address) sends {meta['requests_per_client']} "
          "requests on one connection. RSS = VmRSS.")
md.append("")
md.append(f"At start (one request each): rl-on {start['rl-on']/1024:.1f} MB, rl-off "
          f"{start['rl-off']/1024:.1f} MB (the limiter's shards grow as clients arrive).")
md.append("")
md.append("| distinct clients | rl-on RSS MB | rl-off RSS MB | rl-on growth MB | rl-off growth MB | "
          "limiter MB (on − off growth) | bytes / client | gateway_rate_limit_clients | "
          "statuses rl-on | errors |")
md.append("|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
summary = []
ok = True
for r_on in (r for r in rows if r["phase"] == "population" and r["system"] == "rl-on"):
    n = int(r_on["clients_total"])
    r_off = next(r for r in rows if r["phase"] == "population" and r["system"] == "rl-off"
                 and int(r["clients_total"]) == n)
    g_on = kb(r_on, "rss_after_kb") - start["rl-on"]
    g_off = kb(r_off, "rss_after_kb") - start["rl-off"]
    lim = g_on - g_off
    st = r_on["result"]["statuses"]
    errs = sum(r_on["result"]["errors"].values()) + sum(r_off["result"]["errors"].values())
    non200 = sum(v for k, v in st.items() if k != "200")
    ok &= non200 == 0 and errs == 0 and not r_on["result"]["timed_out"]
    summary.append({"clients": n, "rl_on_rss_kb": kb(r_on, "rss_after_kb"),
                    "rl_off_rss_kb": kb(r_off, "rss_after_kb"), "rl_on_growth_kb": g_on,
                    "rl_off_growth_kb": g_off, "limiter_kb": lim,
                    "bytes_per_client": lim * 1024 / n,
                    "tracked": int(float(r_on["tracked"])) if r_on["tracked"] else None,
                    "statuses_rl_on": st, "errors": errs})
    md.append(f"| {n:,} | {kb(r_on, 'rss_after_kb')/1024:.1f} | {kb(r_off, 'rss_after_kb')/1024:.1f} | "
              f"{g_on/1024:.1f} | {g_off/1024:.1f} | {lim/1024:.1f} | {lim*1024/n:,.0f} | "
              + (f"{int(float(r_on['tracked'])):,}" if r_on["tracked"] else "–") + " | "
              + ", ".join(f"{k}: {v:,}" for k, v in sorted(st.items())) + f" | {errs} |")

second = next(r for r in rows if r["phase"] == "second-pass" and r["system"] == "rl-on")
st2 = second["result"]["statuses"]
non200_2 = sum(v for k, v in st2.items() if k != "200")
errs2 = sum(second["result"]["errors"].values())
total_per_client = 2 * meta["requests_per_client"]
ok_second = non200_2 == 0 and errs2 == 0 and meta["limited_before_control"] == 0 \
    and not second["result"]["timed_out"]
ctrl_st = control["statuses"]
ok_control = ctrl_st.get("429", 0) == 1 and ctrl_st.get("200", 0) == meta["budget"]
md += ["", f"**Nobody under budget limited:** second pass, all {int(second['clients_total']):,} "
       f"clients again ({total_per_client} requests each in all, budget {meta['budget']}): "
       + ", ".join(f"{k}: {v:,}" for k, v in sorted(st2.items()))
       + f"; client errors {errs2}; gateway_rate_limited_total = {meta['limited_before_control']}"
       + (" — PASS" if ok_second else " — FAIL"),
       "",
       f"**Limiter active (control):** one new client sending {meta['budget'] + 1} requests got "
       + ", ".join(f"{k}: {v}" for k, v in sorted(ctrl_st.items()))
       + (" — PASS" if ok_control else " — FAIL (expected exactly one 429)")]
if meta["max_clients"] < int(second["clients_total"]) * 64 // 63:
    md += ["", f"Note: max_clients = {meta['max_clients']:,} is split over 64 LRU shards of "
           f"{meta['max_clients'] // 64:,}; with {int(second['clients_total']):,} clients some "
           "shards overflow and evict their longest-idle client. An evicted client starts again "
           "with a full budget, so eviction can only admit more, never limit someone under "
           "budget."]
text = "\n".join(md) + "\n"
(out / "ratelimit.md").write_text(text)
(out / "ratelimit.json").write_text(json.dumps({
    "meta": meta, "populations": summary,
    "second_pass": {"clients": int(second["clients_total"]), "statuses": st2, "errors": errs2,
                    "rss_after_kb": kb(second, "rss_after_kb"), "pass": ok_second},
    "control": {"statuses": ctrl_st, "pass": ok_control},
}, indent=1) + "\n")
print(text)
sys.exit(0 if ok and ok_second and ok_control else 1)
PY
  # The store part measures one gateway at a time: these two must not run meanwhile.
  stop_pid "${SYS_PID[rl-on]}"
  stop_pid "${SYS_PID[rl-off]}"
fi

# --- the shared store: redis against local (parts 4-6) ----------------------------------------
if ((DO_STORE)); then
  SRAW="$RAW/store"
  mkdir -p "$SRAW"
  start_redis redis-server "$(free_port)"
  REDIS_URL="redis://${SYS_ADDR[redis-server]}/0"
  log "redis-server $(redis-server --version | awk '{print $3}' | sed 's/^v=//') on ${SYS_ADDR[redis-server]} (pid ${SYS_PID[redis-server]}, no persistence)"

  # 4. Control: the redis store really counts and limits (a budget it reaches, its key in Redis).
  start_ours_redis redis-ctl "$(free_port)" "$(free_port)" "$WORKERS" "$REDIS_URL" "$BUDGET" 1000 3600
  log "control: one client sends $((BUDGET + 1)) requests to redis-ctl (budget $BUDGET, redis store)"
  timeout 120 python3 "$HERE/many_clients.py" --target "${SYS_ADDR[redis-ctl]}" --first 127.3.0.1 \
    --clients 1 --requests-per-client $((BUDGET + 1)) --concurrency 1 --timeout 60 \
    >"$SRAW/control.json" || log_die "many_clients.py against redis-ctl failed"
  redis_cli redis-server --scan --pattern 'gateway:rl:*' >"$SRAW/control_keys.txt"
  ctl_errors=$(ours_metric_sum "${SYS_ADMIN[redis-ctl]}" '^gateway_rate_limit_store_errors_total')
  stop_pid "${SYS_PID[redis-ctl]}"
  redis_cli redis-server FLUSHALL >/dev/null

  # The measured gateways: the limit (1e9 per 60 s) is never reached, so each request is one
  # check, admitted.
  start_ours local "$(free_port)" "$(free_port)" "$WORKERS" true false
  start_ours_redis redis "$(free_port)" "$(free_port)" "$WORKERS" "$REDIS_URL"
  start_ours norl "$(free_port)" "$(free_port)" "$WORKERS" false false
  STORE_SYSTEMS=(local redis norl)
  for sys in "${STORE_SYSTEMS[@]}"; do
    code=$(http_code "http://${SYS_ADDR[$sys]}/")
    [[ "$code" == 200 ]] || log_die "$sys answered $code"
  done

  # ctx_switches PID: voluntary + involuntary context switches summed over PID's threads.
  ctx_switches() {
    cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^(non)?voluntary_ctxt_switches:/ { s += $2 } END { print s + 0 }'
  }

  # store_thread PID: "TICKS CTX_SWITCHES" of the gateway's thread that runs the store's
  # connection (the background service "rate-limit store connection", thread "BG rate-limit s").
  store_thread() {
    local t ticks=0 cs=0
    for t in /proc/"$1"/task/*; do
      [[ $(cat "$t/comm" 2>/dev/null) == "BG rate-limit"* ]] || continue
      ticks=$((ticks + $(sed 's/^.*) //' "$t/stat" 2>/dev/null | awk '{ print $12 + $13 }')))
      cs=$((cs + $(awk '/^(non)?voluntary_ctxt_switches:/ { s += $2 } END { print s + 0 }' "$t/status" 2>/dev/null)))
    done
    echo "$ticks $cs"
  }

  # counters SYS: the counters a round is measured by, as name=value words on one line:
  # CPU ticks of the gateway (and of its store connection thread), redis-server and the
  # backends; context switches of the gateway's threads (and that thread's) and of
  # redis-server; the whole box's busy and total jiffies (/proc/stat); redis-server's read and
  # write syscalls (/proc/PID/io); from Redis' INFO: script calls (EVALSHA, and EVAL after a
  # NOSCRIPT) with their usec, bytes received, commands; from the gateway's /metrics:
  # requests, limited, store checks, their seconds and errors.
  counters() {
    local sys=$1 b=0 p m info user nice system idle iowait irq softirq steal st_ticks st_cs
    read -r st_ticks st_cs <<<"$(store_thread "${SYS_PID[$sys]}")"
    for p in "${BACKEND_PID[@]}"; do
      b=$((b + $(cpu_ticks "$p")))
    done
    m=$(curl -s -m 2 "http://${SYS_ADMIN[$sys]}/metrics" | awk '
      /^gateway_requests_total[{ ]/ { req += $NF }
      /^gateway_rate_limited_total[{ ]/ { lim += $NF }
      $1 == "gateway_rate_limit_store_seconds_count" { n = $2 }
      $1 == "gateway_rate_limit_store_seconds_sum" { s = $2 }
      $1 == "gateway_rate_limit_store_errors_total" { e = $2 }
      END { printf "requests=%d limited=%d store_checks=%d store_seconds=%.9f store_errors=%d", req, lim, n, s, e }')
    info=$(redis_cli redis-server INFO all | awk -F'[:,=]' '
      $1 == "cmdstat_evalsha" || $1 == "cmdstat_eval" { calls += $3; usec += $5 }
      $1 == "total_net_input_bytes" { inb = $2 }
      $1 == "total_commands_processed" { cmds = $2 }
      END { printf "evals=%d eval_usec=%d net_in=%d commands=%d", calls, usec, inb, cmds }')
    read -r _ user nice system idle iowait irq softirq steal _ </proc/stat
    printf 'proxy_ticks=%d store_thread_ticks=%d proxy_ctxsw=%d store_thread_ctxsw=%d redis_ctxsw=%d ' \
      "$(cpu_ticks "${SYS_PID[$sys]}")" "$st_ticks" "$(ctx_switches "${SYS_PID[$sys]}")" "$st_cs" \
      "$(ctx_switches "${SYS_PID[redis-server]}")"
    printf 'redis_ticks=%d backend_ticks=%d box_busy=%d box_total=%d redis_syscr=%d redis_syscw=%d %s %s\n' \
      "$(cpu_ticks "${SYS_PID[redis-server]}")" "$b" \
      $((user + nice + system + irq + softirq + steal)) \
      $((user + nice + system + idle + iowait + irq + softirq + steal)) \
      "$(awk '$1 == "syscr:" {print $2}' "/proc/${SYS_PID[redis-server]}/io")" \
      "$(awk '$1 == "syscw:" {print $2}' "/proc/${SYS_PID[redis-server]}/io")" "$m" "$info"
  }

  # measure PHASE SYS CONNECTIONS ROUND: one wrk run, its counters before and after in rounds.tsv;
  # wrk's own CPU (from `times` in the subshell that ran it) is added to the after counters.
  printf 'phase\tsystem\tconnections\tround\tfile\tbefore\tafter\n' >"$SRAW/rounds.tsv"
  measure() {
    local phase=$1 sys=$2 conns=$3 round=$4 f before after wrk_cpu
    f="$SRAW/${phase}_${sys}_c${conns}_$round.txt"
    log "$phase: round $round $sys (wrk -t1 -c$conns -d${DURATION}s)"
    before=$(counters "$sys")
    wrk_cpu=$(
      (
        wrk -t1 -c"$conns" -d"${DURATION}s" --timeout 5s --latency "http://${SYS_ADDR[$sys]}/" >"$f" 2>&1 ||
          log "wrk against $sys exited non-zero (see $f)"
        times
      ) | awk -F'[ms ]+' 'NR == 2 { printf "%.3f", $1 * 60 + $2 + $3 * 60 + $4 }'
    )
    after="$(counters "$sys") wrk_cpu_s=${wrk_cpu:-0}"
    printf '%s\t%s\t%d\t%d\t%s\t%s\t%s\n' "$phase" "$sys" "$conns" "$round" "$f" "$before" "$after" >>"$SRAW/rounds.tsv"
  }

  cat >"$SRAW/meta.json" <<EOF
{"date": "$(date -u +%FT%TZ)", "git": "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo -dirty)",
 "host": "$(uname -srm)", "cpus": $(nproc), "cpu_model": "$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)",
 "load_before": "$(cut -d' ' -f1-3 /proc/loadavg)", "clk_tck": $CLK_TCK,
 "workers": $WORKERS, "rounds": $ROUNDS, "duration_s": $DURATION, "connections": $CONNECTIONS,
 "pipe_rounds": $PIPE_ROUNDS, "warmup_s": $WARMUP, "budget": $BUDGET, "ctl_store_errors": $ctl_errors,
 "versions": {"redis": "$(redis-server --version | awk '{print $3}' | sed 's/^v=//')",
              "wrk": "$(wrk -v 2>&1 | awk 'NR==1 {print $2}')", "nginx": "$(nginx -v 2>&1 | sed 's/.*\///')"}}
EOF

  if ((WARMUP > 0)); then
    log "warm-up: ${WARMUP}s per system"
    for sys in "${STORE_SYSTEMS[@]}"; do
      wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "http://${SYS_ADDR[$sys]}/" >/dev/null 2>&1 || true
    done
  fi

  # 5. Main: interleaved rounds at -c CONNECTIONS.
  for ((r = 1; r <= ROUNDS; r++)); do
    for sys in "${STORE_SYSTEMS[@]}"; do
      measure main "$sys" "$CONNECTIONS" "$r"
    done
  done
  # The connections Redis sees (this redis-cli's own is the one running CLIENT LIST).
  redis_cli redis-server CLIENT LIST >"$SRAW/client_list.txt"

  # 6. Pipelining: one request (so one check) in flight at a time.
  for ((r = 1; r <= PIPE_ROUNDS; r++)); do
    for sys in local redis; do
      measure pipe "$sys" 1 "$r"
    done
  done
  echo "\"$(cut -d' ' -f1-3 /proc/loadavg)\"" >"$SRAW/load_after.json"

  log "store report"
  python3 - "$SRAW" "$OUT" "$HERE" <<'PY' || STORE_OK=0
import json, statistics, sys
from pathlib import Path

raw, out = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, sys.argv[3])
from bench_report import parse_wrk  # noqa: E402  (the wrk parser bench.sh's report uses)

meta = json.loads((raw / "meta.json").read_text())
meta["load_after"] = json.loads((raw / "load_after.json").read_text())
clk = meta["clk_tck"]


def words(text):
    return {k: float(v) for k, v in (w.split("=", 1) for w in text.split())}


rows = []
for line in (raw / "rounds.tsv").read_text().splitlines()[1:]:
    phase, system, conns, rnd, path, before, after = line.split("\t")
    b, a = words(before), words(after)
    d = {k: a[k] - b.get(k, 0) for k in a}
    w = parse_wrk(path)
    req = int(d["requests"]) or None  # as the gateway counted them over the whole interval
    checks = d["evals"] if system == "redis" else 0
    row = {"phase": phase, "system": system, "connections": int(conns), "round": int(rnd),
           "rps": w["rps"], "p50_ms": w["p50_ms"], "p99_ms": w["p99_ms"], "requests": w["requests"],
           "wrk_errors": w["non2xx"] + w["socket_errors"],
           "proxy_requests": int(d["requests"]), "limited": int(d["limited"]),
           "store_checks": int(d["store_checks"]), "store_errors": int(d["store_errors"]),
           "redis_evals": int(d["evals"]),
           "box_busy": d["box_busy"] / d["box_total"] if d["box_total"] else None}
    us = lambda ticks, n: ticks / clk * 1e6 / n if n else None  # noqa: E731
    row["proxy_us_per_req"] = us(d["proxy_ticks"], req)
    row["store_thread_us_per_req"] = us(d["store_thread_ticks"], req)
    row["proxy_ctxsw_per_req"] = d["proxy_ctxsw"] / req if req else None
    row["store_thread_ctxsw_per_req"] = d["store_thread_ctxsw"] / req if req else None
    row["redis_ctxsw_per_check"] = d["redis_ctxsw"] / checks if checks else None
    row["backend_us_per_req"] = us(d["backend_ticks"], req)
    row["redis_us_per_req"] = us(d["redis_ticks"], req)
    row["box_us_per_req"] = us(d["box_busy"], req)
    row["wrk_us_per_req"] = d["wrk_cpu_s"] * 1e6 / req if req else None
    # The benchmark's own processes (gateway, redis-server, backends, wrk); the rest of the
    # box's busy CPU is the kernel's outside them and whatever else runs on the box.
    own = [row[k] for k in ("proxy_us_per_req", "redis_us_per_req", "backend_us_per_req", "wrk_us_per_req")]
    row["own_us_per_req"] = sum(own) if None not in own else None
    row["foreign_share"] = (1 - row["own_us_per_req"] / row["box_us_per_req"]
                            if row["own_us_per_req"] and row["box_us_per_req"] else None)
    row["redis_us_per_check"] = us(d["redis_ticks"], checks)
    row["redis_exec_us_per_check"] = d["eval_usec"] / checks if checks else None
    row["checks_per_read"] = checks / d["redis_syscr"] if checks and d["redis_syscr"] else None
    row["checks_per_write"] = checks / d["redis_syscw"] if checks and d["redis_syscw"] else None
    row["bytes_in_per_check"] = d["net_in"] / checks if checks else None
    row["store_ms_mean"] = d["store_seconds"] / d["store_checks"] * 1e3 if d["store_checks"] else None
    rows.append(row)


def pick(phase, system, conns):
    return sorted((r for r in rows if (r["phase"], r["system"], r["connections"]) == (phase, system, conns)),
                  key=lambda r: r["round"])


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summary(rs):
    keys = [k for k in rs[0] if k not in ("phase", "system", "connections", "round")]
    s = {k: med([r[k] for r in rs]) for k in keys}
    for k in ("requests", "wrk_errors", "proxy_requests", "limited", "store_checks", "store_errors", "redis_evals"):
        s[k] = sum(r[k] for r in rs)
    s["rounds"] = len(rs)
    return s


def ratio(num, den, key):
    per = [a[key] / b[key] for a, b in zip(num, den) if a[key] and b[key]]
    return {"median": med(per), "min": min(per) if per else None, "max": max(per) if per else None,
            "per_round": per}


def f(v, fmt="{:,.0f}"):
    return "–" if v is None else fmt.format(v)


def per10k(us_per_check):
    """µs per check -> ms per 10,000 checks."""
    return None if us_per_check is None else us_per_check * 10




RATIO_KEYS = ("rps", "p99_ms", "proxy_us_per_req", "own_us_per_req")
c = meta["connections"]
main = {s: pick("main", s, c) for s in ("local", "redis", "norl")}
pipe = {s: pick("pipe", s, 1) for s in ("local", "redis")}
msum = {s: summary(rs) for s, rs in main.items()}
psum = {s: summary(rs) for s, rs in pipe.items()}
ratios = {
    "redis/local": {k: ratio(main["redis"], main["local"], k) for k in RATIO_KEYS},
    "local/norl": {k: ratio(main["local"], main["norl"], k) for k in RATIO_KEYS},
    "redis/local c1": {k: ratio(pipe["redis"], pipe["local"], k) for k in RATIO_KEYS},
}
TARGET = 0.80
rps_ratio = ratios["redis/local"]["rps"]["median"]
met = rps_ratio is not None and rps_ratio >= TARGET

# Checks: the control, and every redis request counted in Redis with no store error (on_error =
# "local" would otherwise have answered some from the local limiter and flattered the numbers).
control = json.loads((raw / "control.json").read_text())
ctl_st = control["statuses"]
ctl_keys = [k for k in (raw / "control_keys.txt").read_text().split() if "{ip:127.3.0.1}" in k]
ok_control = (ctl_st.get("429", 0) == 1 and ctl_st.get("200", 0) == meta["budget"]
              and len(ctl_keys) == 1 and meta["ctl_store_errors"] == 0)
redis_rows = main["redis"] + pipe["redis"]
store_errors = sum(r["store_errors"] for r in redis_rows)
# A check skipped while the store counts as down is neither an error nor a store check: the
# requests Redis did not count are the gateway's requests minus Redis' EVALSHA calls.
not_in_redis = sum(max(0, r["proxy_requests"] - r["redis_evals"]) for r in redis_rows)
uncounted = [r for r in redis_rows if r["redis_evals"] < r["proxy_requests"]]
wrk_errors = sum(r["wrk_errors"] for r in rows)
limited = sum(r["limited"] for r in rows)
ok_store = store_errors == 0 and not uncounted and wrk_errors == 0 and limited == 0

clients = [l for l in (raw / "client_list.txt").read_text().splitlines() if l.strip()]
gateway_conns = [l for l in clients if " cmd=client|list" not in l]

md = ["# Rate limiter: the Redis store against the local one", ""]
md.append(f"{meta['date']} · git {meta['git']} · {meta['host']} · {meta['cpus']} CPUs ({meta['cpu_model']}) · "
          f"load before {meta['load_before']}, after {meta['load_after']} · redis {meta['versions']['redis']}, "
          f"wrk {meta['versions']['wrk']}, nginx {meta['versions']['nginx']}")
md.append("")
md.append(f"Everything on one box: wrk, two nginx backends (1 worker each), the gateways ({meta['workers']} "
          "worker each) and one redis-server (no persistence), all on 127.0.0.1. `local`: rate_limit.store = "
          "\"local\"; `redis`: store = \"redis\" (one EVALSHA per request on one multiplexed connection, "
          "timeout_ms 20, on_error \"local\"); `norl`: limiter off. Limit 1e9 per 60 s, never reached: every "
          f"request is one admitted check. wrk -t1 -c{c}, {meta['rounds']} interleaved rounds of "
          f"{meta['duration_s']} s (local redis norl ...); medians over rounds; ratios are medians of "
          "per-round ratios [min–max].")
md += ["", f"## Throughput and latency (wrk -c{c})", "",
       "| system | req/s | p50 ms | p99 ms | gateway CPU µs/req | Redis CPU ms / 10k checks | mean check ms | "
       "box busy | errors |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
for s in ("local", "redis", "norl"):
    m = msum[s]
    md.append(f"| `{s}` | {f(m['rps'])} | {f(m['p50_ms'], '{:.3f}')} | {f(m['p99_ms'], '{:.3f}')} | "
              f"{f(m['proxy_us_per_req'], '{:.1f}')} | {f(per10k(m['redis_us_per_check']))} | "
              f"{f(m['store_ms_mean'], '{:.3f}')} | {f(m['box_busy'] and m['box_busy'] * 100, '{:.0f}%')} | "
              f"{m['wrk_errors'] + m['store_errors']} |")


def rline(label, r):
    return (f"| {label} | " + " | ".join(
        f"{f(r[k]['median'], '{:.3f}')} [{f(r[k]['min'], '{:.2f}')}–{f(r[k]['max'], '{:.2f}')}]"
        for k in RATIO_KEYS) + " |")


md += ["", "| ratio | req/s | p99 | gateway CPU / req | benchmark's CPU / req |", "|---|---:|---:|---:|---:|",
       rline(f"redis / local (c{c})", ratios["redis/local"]),
       rline("redis / local (c1)", ratios["redis/local c1"]),
       rline(f"local / norl (c{c}, the local limiter's cost)", ratios["local/norl"]), ""]
md.append(f"**Target redis/local req/s ≥ {TARGET:.2f} at c{c}: "
          + (f"met ({rps_ratio:.3f})**" if met else f"NOT met ({f(rps_ratio, '{:.3f}')})**")
          + " · per round: " + " ".join(f"{v:.2f}" for v in ratios["redis/local"]["rps"]["per_round"]))

# Where the CPU goes: per request, on the whole box (the "profile" of the difference).
md += ["", f"## Where the CPU goes (c{c}, µs of CPU per request, medians)", "",
       "| system | gateway | redis-server | backends | wrk | benchmark | rest of the box | whole box | box busy |",
       "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
for s in ("local", "redis", "norl"):
    m = msum[s]
    parts = [m["proxy_us_per_req"], m["redis_us_per_req"], m["backend_us_per_req"], m["wrk_us_per_req"],
             m["own_us_per_req"]]
    rest = m["box_us_per_req"] - m["own_us_per_req"] if m["own_us_per_req"] and m["box_us_per_req"] else None
    md.append(f"| `{s}` | " + " | ".join(f(v, '{:.1f}') for v in parts) + f" | {f(rest, '{:.1f}')} | "
              f"{f(m['box_us_per_req'], '{:.1f}')} | {f(m['box_busy'] and m['box_busy'] * 100, '{:.0f}%')} |")
lo, re_ = msum["local"], msum["redis"]


def worker_us(m):
    """The gateway's CPU per request outside the store connection's thread."""
    if m["proxy_us_per_req"] is None:
        return None
    return m["proxy_us_per_req"] - (m["store_thread_us_per_req"] or 0)


worker_bound = own_bound = None
if worker_us(lo) and worker_us(re_) and lo["own_us_per_req"] and re_["own_us_per_req"]:
    worker_bound = worker_us(lo) / worker_us(re_)
    own_bound = lo["own_us_per_req"] / re_["own_us_per_req"]
    md += ["", f"Per request the redis store costs {re_['proxy_us_per_req'] - lo['proxy_us_per_req']:+.1f} µs "
           f"in the gateway ({worker_us(re_) - worker_us(lo):+.1f} µs on the worker thread, "
           f"{re_['store_thread_us_per_req'] or 0:.1f} µs on the store connection's thread, see below) and "
           f"{re_['redis_us_per_req'] - lo['redis_us_per_req']:+.1f} µs in redis-server; the benchmark's "
           f"processes together {re_['own_us_per_req'] - lo['own_us_per_req']:+.1f} µs. Two bounds that other "
           "load on the box does not move: where the gateway's one worker thread is the bottleneck (the "
           "other processes on CPUs of their own), redis/local = its CPU per request, local/redis = "
           f"**{worker_bound:.2f}**; where the box's {meta['cpus']} CPUs are, all busy with this benchmark "
           f"alone, redis/local = the benchmark's CPU per request, local/redis = **{own_bound:.2f}**. "
           f"Measured: {f(rps_ratio, '{:.2f}')}."]
md += ["", "Inside the gateway (c" + str(c) + ", per request, medians): its CPU split between the worker "
       "thread(s) and the thread of the background service that runs the store's connection (thread "
       "`BG rate-limit s`), and context switches of all its threads (/proc/PID/task/*/status).", "",
       "| system | gateway CPU µs | of which the store connection thread | context switches | "
       "of which the store connection thread |", "|---|---:|---:|---:|---:|"]
for s in ("local", "redis", "norl"):
    m = msum[s]
    md.append(f"| `{s}` | {f(m['proxy_us_per_req'], '{:.1f}')} | {f(m['store_thread_us_per_req'], '{:.1f}')} | "
              f"{f(m['proxy_ctxsw_per_req'], '{:.2f}')} | {f(m['store_thread_ctxsw_per_req'], '{:.2f}')} |")
# Rounds in which other processes took more than a tenth of the box's busy CPU (as the gateways
# run one after another, such load hits the systems unevenly).
def others(r, lr):
    return max(lr["foreign_share"] or 0, r["foreign_share"] or 0)


pairs = [(r, lr) for r, lr in zip(main["redis"], main["local"]) if lr["rps"]]
quiet = [r["rps"] / lr["rps"] for r, lr in pairs if others(r, lr) <= 0.10]
shared_rounds = len(pairs) - len(quiet)
if shared_rounds:
    md += ["", f"**The box was shared in {shared_rounds} of {len(pairs)} rounds:** in those, more than 10% of "
           "its busy CPU went to processes outside the benchmark (load average before "
           f"{meta['load_before']}, after {meta['load_after']}); such load takes CPU from the systems "
           "unevenly, so the req/s ratio carries its noise, and the CPU-per-request bounds above are the "
           "better estimate for a dedicated box."
           + (f" The {len(quiet)} quiet round(s) alone: redis/local {med(quiet):.2f} "
              f"[{min(quiet):.2f}–{max(quiet):.2f}]." if quiet else "")]
md += ["", "Per round (c" + str(c) + "): " + "; ".join(
    f"{r['round']}: local {lr['rps']:,.0f} / redis {r['rps']:,.0f} req/s = {r['rps'] / lr['rps']:.2f}, "
    f"others {others(r, lr) * 100:.0f}%" for r, lr in pairs)]

md += ["", "## Pipelining (redis store: wrk -c1 against -c" + str(c) + ")", "",
       "| wrk connections | req/s | p50 ms | p99 ms | checks in flight | checks per Redis read() | "
       "bytes in per check | Redis CPU ms / 10k checks | Redis exec ms / 10k checks | Redis context switches "
       "per check | gateway CPU µs/req | gateway context switches per req | mean check ms |",
       "|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
for label, m, flight in (("1", psum["redis"], "1"), (str(c), msum["redis"], f"up to {c}")):
    md.append(f"| {label} | {f(m['rps'])} | {f(m['p50_ms'], '{:.3f}')} | {f(m['p99_ms'], '{:.3f}')} | {flight} | "
              f"{f(m['checks_per_read'], '{:.2f}')} | {f(m['bytes_in_per_check'], '{:.0f}')} | "
              f"{f(per10k(m['redis_us_per_check']))} | {f(per10k(m['redis_exec_us_per_check']))} | "
              f"{f(m['redis_ctxsw_per_check'], '{:.2f}')} | {f(m['proxy_us_per_req'], '{:.1f}')} | "
              f"{f(m['proxy_ctxsw_per_req'], '{:.2f}')} | {f(m['store_ms_mean'], '{:.3f}')} |")
md += ["", f"At c1, local: {f(psum['local']['rps'])} req/s, p99 {f(psum['local']['p99_ms'], '{:.3f}')} ms; "
       f"redis/local {f(ratios['redis/local c1']['rps']['median'], '{:.3f}')}. "
       f"Connections the `redis` gateway holds to Redis (CLIENT LIST, besides redis-cli's own): "
       f"{len(gateway_conns)}."]

md += ["", "## What the numbers mean", "",
       "- *Redis CPU ms / 10k checks*: utime+stime of redis-server (/proc/PID/stat) over a round, per "
       "10,000 EVALSHA calls Redis counted in it (INFO commandstats). *Redis exec*: the script's own run "
       "time as Redis measures it (commandstats usec); the rest of Redis' CPU is reading, parsing and "
       "answering the connection (and its idle timers, which weigh more at c1's lower rate).",
       "- *gateway CPU µs/req* and the CPU table: utime+stime over the round per request the gateway "
       "counted (gateway_requests_total); wrk's from `times` in the shell that ran it.",
       "- *Checks per Redis read()*: EVALSHA calls over redis-server's read syscalls (/proc/PID/io syscr). "
       "At c1 a check is sent only after the previous answer, so each read() carries one (≈1, a little "
       "less for idle wake-ups and INFO). At higher concurrency the gateway's one multiplexed connection "
       "carries every check in flight, so Redis reads several per syscall: that is the pipelining, and "
       "it is what lowers Redis' CPU per check.",
       "- *Context switches*: each time a thread sleeps (nothing to do) or is preempted. The store's "
       "connection runs on its own thread (the background service's runtime), not on the worker: a check "
       "hands its command over to that thread and the answer comes back across threads, so each batch "
       "of checks can cost a wake-up on both sides; Redis' context switches per check fall as its reads "
       "carry more checks each.",
       "- *mean check ms*: gateway_rate_limit_store_seconds sum/count, the wait of one check as the "
       "gateway sees it (queueing on the connection included).",
       "- *box busy*: the share of all CPUs busy over the round (/proc/stat), whoever used them; "
       "*rest of the box* is busy CPU not used by the gateway, redis-server, the backends or wrk: "
       "softirq work the kernel does outside those processes, and anything else running on the box "
       "(its share per request grows when fewer requests are served in the same time).",
       "- The local store never leaves the process; the redis store adds, per request, an EVALSHA "
       "encode/send/receive/decode in the gateway, a task wake-up, and Redis' own work. On a box whose CPUs "
       "are all busy that CPU comes straight out of throughput."]

md += ["", "## Checks", "",
       f"- Control (budget {meta['budget']}, redis store): one client sending {meta['budget'] + 1} requests got "
       + ", ".join(f"{k}: {v}" for k, v in sorted(ctl_st.items()))
       + f"; its key in Redis: {ctl_keys[0] if ctl_keys else 'missing'}; store errors "
       f"{meta['ctl_store_errors']}" + (" — PASS" if ok_control else " — FAIL"),
       f"- Every redis-store request checked in Redis: store errors {store_errors}, rounds with fewer "
       f"EVALSHA calls than requests {len(uncounted)} ({not_in_redis:,} requests decided by on_error), "
       f"wrk errors {wrk_errors}, limited {limited}"
       + (" — PASS" if ok_store else " — FAIL")]
text = "\n".join(md) + "\n"
(out / "ratelimit_store.md").write_text(text)
(out / "ratelimit_store.json").write_text(json.dumps({
    "meta": meta, "target": TARGET, "target_met": met, "main": msum, "pipe": psum, "ratios": ratios,
    "rounds": rows, "redis_connections": len(gateway_conns),
    "bounds": {"worker_cpu": worker_bound, "benchmark_cpu": own_bound}, "requests_not_in_redis": not_in_redis,
    "quiet_rounds_rps_ratio": quiet, "shared_rounds": shared_rounds,
    "control": {"statuses": ctl_st, "keys": len(ctl_keys), "pass": ok_control},
    "store_checks_pass": ok_store}, indent=1) + "\n")
print(text)
sys.exit(0 if ok_control and ok_store else 1)
PY
fi

((MEMORY_OK && STORE_OK)) || exit 1
