#!/usr/bin/env bash
# Memory per idle keep-alive connection: the gateway against a bare Pingora proxy, nginx and
# HAProxy, each started as loadtest/bench.sh starts it (scripts/lib.sh: start_ours, start_bare,
# start_nginx_proxy, start_haproxy; one worker/thread each, round robin over the same two
# fixed-response nginx backends), with only the limits that decide whether 10,000 idle
# connections fit and stay open raised:
#   ours     server.max_connections (fd hard limit - 192, at most 20000: the gateway refuses to
#            start when its limit, the upstream pool (128) and 64 reserved descriptors exceed
#            the hard limit), keepalive_timeout_seconds = 300 (bench.sh's config already has
#            max_connections_per_client = 0 and keepalive_requests = 1e8)
#   bare     nothing: Pingora switches an HTTP/1.1 connection's idle wait to "no limit" after
#            its first request (respect_keepalive), so idle connections are never closed
#   nginx    worker_connections 20000, worker_rlimit_nofile (the hard limit); keepalive_timeout
#            300s and keepalive_requests 1e8 are bench.sh's already
#   haproxy  maxconn 20000 with `no strict-limits` (HAProxy wants 2 descriptors per connection
#            and refuses to start when the hard limit is below that), timeout client 300s;
#            timeout http-keep-alive 300s is bench.sh's already
#
#   loadtest/bench_memory.sh [--rounds N] [--connections N] [--sources N] [--no-build] [--out DIR]
#
# Defaults: 3 rounds, 10,000 connections from 5 source addresses (2,000 each); ~2 minutes.
# Settings may also come from the environment: MEM_ROUNDS, MEM_CONNECTIONS, MEM_SOURCES,
# MEM_WARMUP (seconds of wrk before measuring, 1), MEM_SYSTEMS (a subset of "ours bare nginx
# haproxy", for experiments; the ratios need ours and the other), KEEP_TMP=1 (keep configs and
# raw output).
#
# Each round measures every system in turn (ours bare nginx haproxy, ours bare ...), each time
# on a freshly started process (an allocator keeps, and hands out again, memory freed by a
# previous round's connections, so a reused process would have no clean baseline):
#   1. start it; warm up with `wrk -t1 -c50 -d1s` (tens of thousands of requests: pools,
#      allocator, caches); RSS "before" = VmRSS summed over the process and its children
#      (nginx's workers), once it has settled.
#   2. loadtest/idle_conns.py opens N connections, each from one of 127.0.B.1 .. 127.0.B.S (a
#      new block B per round and system, so no ephemeral port is reused), sends one GET with
#      keep-alive and reads the response, then holds them all open and idle.
#   3. RSS is polled every 0.5 s until three readings in a row lie within 256 kB (at most 15 s):
#      RSS "idle". The round fails unless at least 99% of the N connections are ESTABLISHED
#      at the proxy's port then (`ss -Htn state established '( sport = :PORT )'`).
#   4. the client closes them all (FIN); once they are gone, RSS "after close" (what the
#      process kept); the process is stopped.
# Bytes per idle connection = (idle - before) / N. Per system the median over the rounds, and
# the ratios ours/nginx, ours/bare, ours/haproxy of the medians (and per round).
#
# Results: the block between the BEGIN/END markers of loadtest/results/memory.md (written
# anew; the rest of the file, the analysis, is kept; a missing file is created with the block).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/lib.sh
source "$HERE/../scripts/lib.sh"
bench_init

ROUNDS=${MEM_ROUNDS:-3}
CONNS=${MEM_CONNECTIONS:-10000}
SOURCES=${MEM_SOURCES:-5}
WARMUP=${MEM_WARMUP:-1}
OUT="$ROOT/loadtest/results"
BUILD=1
read -r -a SYSTEMS <<<"${MEM_SYSTEMS:-ours bare nginx haproxy}"
# Bounds: opening the connections, RSS settling, the connections closing.
OPEN_TIMEOUT=90
SETTLE_MS=15000
CLOSE_MS=15000

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; }

while (($#)); do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    --sources) SOURCES=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --out) OUT=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; log_die "unknown argument: $1" ;;
  esac
done
for v in ROUNDS CONNS SOURCES WARMUP; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || log_die "$v must be a positive integer (got '${!v}')"
done
((ROUNDS <= 20 && SOURCES <= 250)) || log_die "rounds <= 20, sources <= 250"
for sys in "${SYSTEMS[@]}"; do
  [[ $sys =~ ^(ours|bare|nginx|haproxy)$ ]] || log_die "unknown system in MEM_SYSTEMS: $sys"
done
((${#SYSTEMS[@]} > 0)) || log_die "MEM_SYSTEMS is empty"
((ROUNDS * ${#SYSTEMS[@]} <= 254)) || log_die "too many rounds for the source address blocks"
# Ephemeral ports per source address (connect() picks them): keep well inside the range.
read -r port_lo port_hi </proc/sys/net/ipv4/ip_local_port_range
((CONNS <= SOURCES * (port_hi - port_lo) / 2)) ||
  log_die "$CONNS connections from $SOURCES source addresses may run out of ephemeral ports; raise --sources"

log_need wrk "apt-get install -y wrk"
log_need nginx "apt-get install -y nginx-light"
log_need haproxy "apt-get install -y haproxy"
log_need python3 "apt-get install -y python3"
log_need curl "apt-get install -y curl"
log_need ss "apt-get install -y iproute2"

# Descriptors: the client holds CONNS sockets; every server started below inherits this limit
# (bare Pingora, HAProxy and nginx do not raise it themselves past the hard limit).
NOFILE=$(ulimit -Hn)
[[ $NOFILE == unlimited ]] && NOFILE=1048576
((NOFILE >= CONNS + 512)) ||
  log_die "$CONNS connections need ulimit -Hn >= $((CONNS + 512)) (it is $NOFILE)"
ulimit -n "$NOFILE"
# The gateway needs max_connections + its upstream pool (128 per thread) + 64 reserved within
# the hard limit (proxy/src/ops/startup.rs fds_needed).
OURS_MAX_CONNECTIONS=$((NOFILE - 192 < 20000 ? NOFILE - 192 : 20000))
((OURS_MAX_CONNECTIONS >= CONNS)) || log_die "the gateway's max_connections $OURS_MAX_CONNECTIONS < $CONNS"
NGINX_CONNECTIONS=$((NOFILE < 20000 ? NOFILE : 20000))
HAPROXY_MAXCONN=20000

((BUILD)) && build_release
check_binaries

install_cleanup
make_work_dir gateway-bench-memory keep-failed
chmod 755 "$WORK_DIR" # nginx workers run as nobody
RAW="$WORK_DIR/raw"
mkdir -p "$RAW" "$OUT"

log "backends: 2 x nginx (worker_processes 1)"
start_bench_backends 1

# --- the systems ------------------------------------------------------------------------------
# Ports are fixed for the run; each round starts a fresh process (launch) and stops it.
declare -A PORT=()
for sys in "${SYSTEMS[@]}"; do PORT[$sys]=$(free_port); done
OURS_ADMIN=$(free_port)

# nginx and HAProxy: configured by bench.sh's functions (started once, so the configs are
# checked and shown to proxy), then stopped and the connection limits raised in their files.
NGINX_DIR="$WORK_DIR/nginx"
if [[ " ${SYSTEMS[*]} " == *" nginx "* ]]; then
  start_nginx_proxy nginx "${PORT[nginx]}" 1
  stop_pid "${SYS_PID[nginx]}"
  sed -i -e "s/^events { worker_connections [0-9]*; }$/worker_rlimit_nofile $NOFILE;\nevents { worker_connections $NGINX_CONNECTIONS; }/" \
    "$NGINX_DIR/nginx.conf"
  grep -q "^events { worker_connections $NGINX_CONNECTIONS; }$" "$NGINX_DIR/nginx.conf" ||
    log_die "could not set worker_connections in $NGINX_DIR/nginx.conf"
fi

HAPROXY_CFG="$WORK_DIR/haproxy/haproxy.cfg"
if [[ " ${SYSTEMS[*]} " == *" haproxy "* ]]; then
  start_haproxy haproxy "${PORT[haproxy]}" 1
  stop_pid "${SYS_PID[haproxy]}"
  sed -i -e "s/^    maxconn [0-9]*$/    maxconn $HAPROXY_MAXCONN\n    no strict-limits/" \
    -e 's/^    timeout client [0-9a-z]*$/    timeout client 300s/' "$HAPROXY_CFG"
  if ! grep -q "^    maxconn $HAPROXY_MAXCONN$" "$HAPROXY_CFG" || ! grep -q '^    timeout client 300s$' "$HAPROXY_CFG" ||
    ! grep -q '^    timeout http-keep-alive 300s$' "$HAPROXY_CFG"; then
    log_die "could not set maxconn / timeouts in $HAPROXY_CFG"
  fi
  haproxy -c -q -f "$HAPROXY_CFG" || log_die "haproxy config rejected: $HAPROXY_CFG"
fi

# launch SYS: a fresh process of SYS on PORT[SYS]; sets SYS_PID[SYS] and SYS_ADDR[SYS].
launch() {
  local sys=$1
  case $sys in
    # start_ours writes its THREADS argument as `threads = ...` in [server]: the two keys this
    # measurement needs go in as further lines of that value ([server] cannot be reopened
    # from EXTRA_TOML, which lands after the other tables).
    ours)
      start_ours ours "${PORT[ours]}" "$OURS_ADMIN" \
        $'1\nmax_connections = '"$OURS_MAX_CONNECTIONS"$'\nkeepalive_timeout_seconds = 300' true false
      grep -q "^max_connections = $OURS_MAX_CONNECTIONS$" "$WORK_DIR/ours/proxy.toml" ||
        log_die "ours: max_connections missing from $WORK_DIR/ours/proxy.toml"
      ;;
    bare) start_bare bare "${PORT[bare]}" 1 ;;
    nginx)
      run_nginx "$NGINX_DIR"
      SYS_PID[nginx]=$SPAWNED_PID
      SYS_ADDR[nginx]="127.0.0.1:${PORT[nginx]}"
      wait_serving "http://${SYS_ADDR[nginx]}/" "$SPAWNED_PID" "$NGINX_DIR/logs/error.log"
      ;;
    haproxy)
      spawn "$WORK_DIR/haproxy/stdout.log" haproxy -f "$HAPROXY_CFG" -db
      SYS_PID[haproxy]=$SPAWNED_PID
      SYS_ADDR[haproxy]="127.0.0.1:${PORT[haproxy]}"
      wait_serving "http://${SYS_ADDR[haproxy]}/" "$SPAWNED_PID" "$WORK_DIR/haproxy/stdout.log"
      ;;
  esac
}

# established PORT: ESTABLISHED TCP sockets whose local port is PORT (the server's side).
established() {
  ss -Htn state established "( sport = :$1 )" | wc -l
}

# settled_rss PID: VmRSS (kB, over the tree) once three readings 0.5 s apart lie within 256 kB
# (at most SETTLE_MS); prints "KB MS" (MS: how long it took).
settled_rss() {
  local pid=$1 t0 a b c
  t0=$(now_ms)
  a=$(status_kb "$pid" VmRSS)
  sleep 0.5
  b=$(status_kb "$pid" VmRSS)
  while :; do
    sleep 0.5
    c=$(status_kb "$pid" VmRSS)
    local hi=$a lo=$a x
    for x in "$b" "$c"; do
      ((x > hi)) && hi=$x
      ((x < lo)) && lo=$x
    done
    ((hi - lo <= 256)) && break
    (($(now_ms) - t0 >= SETTLE_MS)) && {
      log "RSS of $pid still moving after ${SETTLE_MS} ms ($a $b $c kB); taking the last"
      break
    }
    a=$b
    b=$c
  done
  echo "$c $(($(now_ms) - t0))"
}

# fewer_than PORT N: fewer than N connections ESTABLISHED at PORT (a condition for poll).
fewer_than() { (($(established "$1") < $2)); }

# client_line FILE WORD: the JSON after "WORD " in the client's output (empty when absent).
client_line() { sed -n "s/^$2 //p" "$1" | head -n 1; }

cat >"$RAW/meta.json" <<EOF
{"date": "$(date -u +%FT%TZ)", "git": "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo -dirty)",
 "host": "$(uname -srm)", "kernel": "$(uname -r)", "cpus": $(nproc), "cpu_model": "$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)",
 "mem_total_gib": $(free -g | awk '$1 == "Mem:" {print $2}'), "free_g": "$(free -g | awk '$1 == "Mem:" {printf "total %s, used %s, free %s, buff/cache %s, available %s", $2, $3, $4, $6, $7}')",
 "rounds": $ROUNDS, "connections": $CONNS, "sources": $SOURCES, "warmup_s": $WARMUP, "nofile": $NOFILE,
 "ours_max_connections": $OURS_MAX_CONNECTIONS, "nginx_worker_connections": $NGINX_CONNECTIONS, "haproxy_maxconn": $HAPROXY_MAXCONN,
 "versions": {"nginx": "$(nginx -v 2>&1 | sed 's/.*\///')", "haproxy": "$(haproxy -v | awk 'NR==1 {print $3}')",
              "python": "$(python3 -c 'import platform; print(platform.python_version())')", "rustc": "$(rustc --version 2>/dev/null | awk '{print $2}')",
              "pingora": "$(awk '$0 == "name = \"pingora-core\"" {getline; gsub(/[^0-9.]/, ""); print; exit}' "$ROOT/Cargo.lock")"}}
EOF

# --- the rounds -------------------------------------------------------------------------------
printf 'system\tround\tbefore_kb\tidle_kb\tclosed_kb\testablished\tok\topen_s\tsettle_ms\tclosed_by_peer\n' >"$RAW/memory.tsv"
block=0
for ((r = 1; r <= ROUNDS; r++)); do
  for sys in "${SYSTEMS[@]}"; do
    block=$((block + 1))
    port=${PORT[$sys]}
    launch "$sys"
    pid=${SYS_PID[$sys]}
    wrk -t1 -c50 -d"${WARMUP}s" --timeout 5s "http://${SYS_ADDR[$sys]}/" >"$RAW/warmup_${sys}_$r.txt" 2>&1 ||
      log_die "warm-up wrk against $sys failed (see $RAW/warmup_${sys}_$r.txt)"
    poll 5000 0.1 fewer_than "$port" 1 || log "$sys: warm-up connections still open"
    read -r before _ <<<"$(settled_rss "$pid")"

    sources=$(seq -s, -f "127.0.$block.%g" 1 "$SOURCES")
    log "round $r/$ROUNDS $sys: RSS ${before} kB; opening $CONNS connections from 127.0.$block.1-$SOURCES"
    out="$RAW/client_${sys}_$r.txt"
    spawn "$out" python3 "$HERE/idle_conns.py" --target "${SYS_ADDR[$sys]}" --connections "$CONNS" \
      --sources "$sources" --timeout "$OPEN_TIMEOUT" --hold 300
    client=$SPAWNED_PID
    poll $(((OPEN_TIMEOUT + 10) * 1000)) 0.1 grep -q '^READY ' "$out" ||
      log_die "$sys: the client did not get its connections open (see $out)"
    ready=$(client_line "$out" READY)
    ok=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["ok"])' "$ready")
    open_s=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["elapsed_s"])' "$ready")
    ((ok == CONNS)) || log "$sys: only $ok of $CONNS connections got a 2xx answer: $ready"

    read -r idle settle_ms <<<"$(settled_rss "$pid")"
    est=$(established "$port")
    log "round $r/$ROUNDS $sys: $est established, RSS ${idle} kB (+$(((idle - before) * 1024 / CONNS)) B/conn), settled in ${settle_ms} ms"
    ((est * 100 >= CONNS * 99)) ||
      log_die "$sys: only $est of $CONNS connections are ESTABLISHED at measurement time (need 99%)"

    kill -TERM "$client" 2>/dev/null || true
    wait_exit "$client" 15000
    ((EXIT_RC != 124)) || log_die "$sys: the client did not close its connections within 15 s"
    stop_pid "$client" # only drops it from PIDS: it has exited
    closed=$(client_line "$out" CLOSED)
    by_peer=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1] or "{}").get("closed_by_peer", -1))' "$closed")
    poll "$CLOSE_MS" 0.1 fewer_than "$port" $((CONNS / 100 + 1)) ||
      log "$sys: connections still open ${CLOSE_MS} ms after the client closed them"
    read -r after_close _ <<<"$(settled_rss "$pid")"
    printf '%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%d\t%d\n' "$sys" "$r" "$before" "$idle" "$after_close" "$est" "$ok" \
      "$open_s" "$settle_ms" "$by_peer" >>"$RAW/memory.tsv"
    stop_pid "$pid"
  done
done

# --- the report -------------------------------------------------------------------------------
log "report"
python3 - "$RAW" "$OUT/memory.md" <<'PY'
import csv, json, statistics, sys
from pathlib import Path

raw, md_path = Path(sys.argv[1]), Path(sys.argv[2])
meta = json.loads((raw / "meta.json").read_text())
with (raw / "memory.tsv").open() as f:
    rows = list(csv.DictReader(f, delimiter="\t"))
SYSTEMS = [s for s in ["ours", "bare", "nginx", "haproxy"] if any(r["system"] == s for r in rows)]
N = meta["connections"]
per = {s: [] for s in SYSTEMS}
for r in rows:
    before, idle, closed = int(r["before_kb"]), int(r["idle_kb"]), int(r["closed_kb"])
    per[r["system"]].append({
        "round": int(r["round"]), "before_kb": before, "idle_kb": idle, "closed_kb": closed,
        "bytes_per_conn": (idle - before) * 1024 / N, "established": int(r["established"]),
        "ok": int(r["ok"]), "open_s": float(r["open_s"]), "settle_ms": int(r["settle_ms"]),
        "closed_by_peer": int(r["closed_by_peer"])})
med = {s: {k: statistics.median(x[k] for x in per[s]) for k in ("bytes_per_conn", "before_kb", "idle_kb", "closed_kb")}
       for s in SYSTEMS}


def mib(kb):
    return f"{kb / 1024:.1f}"


def ratio(a, b):
    m = med[a]["bytes_per_conn"] / med[b]["bytes_per_conn"] if med[b]["bytes_per_conn"] else float("nan")
    by_round = {x["round"]: x["bytes_per_conn"] for x in per[b]}
    rounds = [x["bytes_per_conn"] / by_round[x["round"]] for x in per[a] if by_round.get(x["round"])]
    return f"{m:.2f}", " ".join(f"{x:.2f}" for x in rounds)


v = meta["versions"]
lines = [
    "<!-- BEGIN bench_memory.sh: generated by loadtest/bench_memory.sh; everything up to END is rewritten on each run -->",
    "## Measurement", "",
    f"{meta['date']} · git {meta['git']} · kernel {meta['kernel']} · {meta['cpus']} CPUs (`nproc`; {meta['cpu_model']}) · "
    f"RAM (`free -g`, GiB): {meta['free_g']} · nginx {v['nginx']}, HAProxy {v['haproxy']}, Pingora {v['pingora']}, "
    f"rustc {v['rustc']}, Python {v['python']} (client)", "",
    f"Each system as `loadtest/bench.sh` starts it (1 worker/thread, round robin over 2 nginx backends returning "
    f"`200 ok`), on a fresh process per round, warmed up with `wrk -t1 -c50 -d{meta['warmup_s']}s`. Then "
    f"{N:,} connections (from {meta['sources']} source addresses in 127.0.0.0/8) each send one `GET / HTTP/1.1` "
    "(keep-alive), read the response and stay open, idle. RSS = VmRSS summed over the process and its children "
    "(nginx: master + worker), read once it has settled (3 readings 0.5 s apart within 256 kB). "
    "**Bytes per idle connection = (RSS with the connections idle − RSS before) / "
    f"{N:,}**; {meta['rounds']} interleaved round{'s' if meta['rounds'] != 1 else ''} (ours, bare, nginx, haproxy, ours, ...), medians. "
    "Kernel socket memory is not in RSS (it is the same for all four).", "",
    "Limits raised for this test only: ours `max_connections = "
    f"{meta['ours_max_connections']}` (fd hard limit {meta['nofile']} − 128 pool − 64 reserved), "
    "`keepalive_timeout_seconds = 300`; nginx `worker_connections "
    f"{meta['nginx_worker_connections']}`, `worker_rlimit_nofile {meta['nofile']}`; HAProxy `maxconn "
    f"{meta['haproxy_maxconn']}` + `no strict-limits`, `timeout client 300s`; bare Pingora unchanged (after a "
    "request its idle wait has no limit).", "",
    "| system | bytes / idle connection | per round | RSS before (MiB) | RSS with idle conns (MiB) | RSS after close (MiB) | established at measurement (min) |",
    "|---|---:|---|---:|---:|---:|---:|",
]
for s in SYSTEMS:
    lines.append(
        f"| `{s}` | **{med[s]['bytes_per_conn']:,.0f}** | "
        + " ".join(f"{x['bytes_per_conn']:,.0f}" for x in per[s])
        + f" | {mib(med[s]['before_kb'])} | {mib(med[s]['idle_kb'])} | {mib(med[s]['closed_kb'])} | "
        f"{min(x['established'] for x in per[s]):,} / {N:,} |")
lines += ["", "| ratio (bytes / idle connection) | of the medians | per round |", "|---|---:|---|"]
for b in ("nginx", "bare", "haproxy"):
    if "ours" in med and b in med:
        m, rr = ratio("ours", b)
        lines.append(f"| ours / {b} | **{m}** | {rr} |")
if "ours" in med and "nginx" in med:
    target = med["ours"]["bytes_per_conn"] <= 2 * med["nginx"]["bytes_per_conn"]
    lines += ["", f"Target ours ≤ 2 × nginx: **{'met' if target else 'not met'}** "
              f"({med['ours']['bytes_per_conn']:,.0f} vs 2 × {med['nginx']['bytes_per_conn']:,.0f} B)."]
lines += ["", "<!-- END bench_memory.sh -->"]
block = "\n".join(lines)
begin, end = "<!-- BEGIN bench_memory.sh", "<!-- END bench_memory.sh -->"
text = md_path.read_text() if md_path.exists() else "# Memory per idle connection\n\n" + begin + "\n" + end + "\n"
i, j = text.find(begin), text.find(end)
if i < 0 or j < 0:
    text = text.rstrip("\n") + "\n\n" + block + "\n"
else:
    text = text[:i] + block + text[j + len(end):]
md_path.write_text(text)
print(block)
PY
