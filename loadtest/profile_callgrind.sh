#!/usr/bin/env bash
# Instructions per request under callgrind (counts instructions, not time: repeatable on a busy
# machine). Release builds, 1 thread each, one nginx backend, wrk -c10: 3 s warm-up, then 10 s
# counted. Systems: ours (production features, access log off), ours+log, ours-norl (limiter
# off), ours+case (headers.preserve_case = true), ours+1route (one catch-all [[routes]]),
# ours+50routes (50 routes, the request takes the one tried last), bare (bare Pingora round
# robin). Every system is sent GET $WRK_PATH [/r49/x] (what the 50 routes' last one takes).
#
#   loadtest/profile_callgrind.sh [SYSTEM ...]     (default: ours ours+log bare)
#   Output: one line per system; callgrind files under loadtest/results/callgrind/ for
#   callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "needs valgrind: apt-get install -y valgrind" >&2; exit 2; }
source scripts/lib.sh
bench_init
install_cleanup
systems=("$@"); [ ${#systems[@]} -gt 0 ] || systems=(ours ours+log bare)
WRK_PATH=${WRK_PATH:-/r49/x}

cargo build --release -q -p proxy --bin proxy --example bare_proxy
out_dir=loadtest/results/callgrind; mkdir -p "$out_dir"
make_work_dir gateway-bench; chmod 755 "$WORK_DIR"
wrapper="$WORK_DIR/vgwrap"
printf '#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file="$CG_OUT" "$REAL_BIN" "$@"\n' >"$wrapper"
chmod +x "$wrapper"
start_bench_backends 1
real_proxy=$PROXY_BIN; real_bare=$BARE_BIN
for sys in "${systems[@]}"; do
  export CG_OUT="$PWD/$out_dir/$sys.out"
  rm -f "$CG_OUT" "$CG_OUT".*
  export REAL_BIN=$real_proxy
  PROXY_BIN=$wrapper; BARE_BIN=$wrapper
  case $sys in
    ours) start_ours ours "$(free_port)" "$(free_port)" 1 true false ;;
    ours+log) start_ours ours+log "$(free_port)" "$(free_port)" 1 true true ;;
    ours-norl) start_ours ours-norl "$(free_port)" "$(free_port)" 1 false false ;;
    ours+case) PRESERVE_CASE=true start_ours ours+case "$(free_port)" "$(free_port)" 1 true false ;;
    ours+1route) EXTRA_TOML=$(routes_toml 1) start_ours ours+1route "$(free_port)" "$(free_port)" 1 true false ;;
    ours+50routes) READY_PATH=/r49/x EXTRA_TOML=$(routes_toml 50) start_ours ours+50routes "$(free_port)" "$(free_port)" 1 true false ;;
    bare) REAL_BIN=$real_bare; start_bare bare "$(free_port)" 1 ;;
    *) echo "unknown system $sys" >&2; exit 2 ;;
  esac
  PROXY_BIN=$real_proxy; BARE_BIN=$real_bare
  wrk -t1 -c10 -d3s "http://${SYS_ADDR[$sys]}$WRK_PATH" >/dev/null
  callgrind_control -z "${SYS_PID[$sys]}" >/dev/null 2>&1
  requests=$(wrk -t1 -c10 -d10s "http://${SYS_ADDR[$sys]}$WRK_PATH" | awk '/requests in/ {print $1}')
  callgrind_control -d "${SYS_PID[$sys]}" >/dev/null 2>&1
  stop_pid "${SYS_PID[$sys]}"
  # The first dump (after zeroing) holds exactly the counted window.
  total=$(awk '/^summary:/ {print $2}' "$CG_OUT.1")
  printf '%-10s %10s requests  %8.1fk instructions/request\n' "$sys" "$requests" "$(echo "$total / $requests / 1000" | bc -l)"
done
