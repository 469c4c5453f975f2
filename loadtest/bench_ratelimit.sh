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
#    divided by the EVALSHA calls of INFO commandstats), the whole box's busy CPU. Ratios
#    redis/local are medians of per-round ratios with their min-max; target req/s >= 0.80.
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
