# shellcheck shell=bash disable=SC2034,SC2004
# (SC2034: the globals set here are read by the scripts that source this file; SC2004: the
# arrays indexed with $name are associative.)
#
# The one shell library of scripts/*.sh, loadtest/*.sh and .ci/run; sourced, not run. Each name
# here has one meaning. Sections:
#
#   Messages                    say note report warn die need_tool log log_die log_need
#   Packages                    apt_cmd ensure_packages
#   Docker                      docker_cli pin_docker_cli compose_cmd compose_images
#                               dockerfile_images
#   Time                        now_ms secs
#   Processes and the EXIT trap spawn alive wait_exit stop_pid make_work_dir cleanup_on_exit
#                               install_cleanup
#   Ports and readiness         free_port free_ports poll wait_http wait_serving http_code
#                               tcp_open ready_with
#   The proxy's /metrics        scrape requests_total inflight scrape_settled delta
#   ab, table, checks           ab_field ab_summary table_header table_row pass_line fail_line
#     (loadtest/run_ab.sh)      expect_eq expect_range expect_true verdict
#   Benchmarks                  bench_init need_matplotlib build_release check_binaries
#     (loadtest/bench*.sh,      bench_rounds_args bench_rounds_setup
#     profile_callgrind.sh)     pids_tree cpu_ticks status_kb nginx_conf_head run_nginx
#                               start_nginx_backend start_bench_backends start_ours start_bare
#                               nginx_proxy_conf start_nginx_proxy start_haproxy ours_metric_sum
#                               start_redis redis_cli start_ours_redis
#                               wait_serving_tls start_ours_tls start_nginx_tls_proxy
#   Redis and the proxy's store redis_ping store_state store_state_is
#     (run_ab.sh cluster, check_dashboard_live.sh)
#
# Sourcing it only defines functions and sets the globals below (no process is started).

# The repository root (absolute) and the name of the running script without .sh (run_ab,
# check_compose, ...), which report, warn and die print.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROG=${0##*/}
PROG=${PROG%.sh}

# ---- Messages ---------------------------------------------------------------------------------

# say MSG...: one line on stdout.
say() { printf '%s\n' "$*"; }

# note MSG...: one line on stdout, marked as a side remark ("-- MSG").
note() { printf -- '-- %s\n' "$*"; }

# report MSG...: one line on stdout prefixed with the script's name ("check_compose: MSG").
report() { printf '%s: %s\n' "$PROG" "$*"; }

# warn MSG...: "PROG: warning: MSG" on stderr.
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }

# die MSG...: "PROG: error: MSG" on stderr, then exit 2 (run_ab.sh's status for a usage or setup
# error; 1 is its "an expectation was missed").
die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 2
}

# need_tool NAME HOW_TO_INSTALL: dies (die) with the install command when NAME is not on PATH.
need_tool() {
  command -v "$1" >/dev/null 2>&1 || die "'$1' is required but not installed. Install it with: $2"
}

# log MSG...: a timestamped line on stderr ("[12:34:56] MSG"): the benchmarks' progress, which
# keeps their stdout for results.
log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# log_die MSG...: log "error: MSG", then exit 1.
log_die() {
  log "error: $*"
  exit 1
}

# log_need TOOL HOW_TO_INSTALL: log_die with the install command when TOOL is not on PATH.
log_need() {
  command -v "$1" >/dev/null 2>&1 || log_die "$1 not found; install it with: $2"
}

# ---- Packages ---------------------------------------------------------------------------------

# apt_cmd: prints the command that installs Debian packages, with sudo when not root.
apt_cmd() {
  if [ "$(id -u)" -eq 0 ]; then echo "apt-get"; else echo "sudo apt-get"; fi
}

# ensure_packages "cmd:package" ...: installs the packages whose command is missing, when run
# as root or with passwordless sudo; otherwise stops (exit 1) with the exact command to run.
ensure_packages() {
  local missing=() pair cmd pkg
  for pair in "$@"; do
    cmd=${pair%%:*}
    pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  # Deduplicate (several commands can come from one package).
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  if [ "$(id -u)" -eq 0 ] || sudo -n true 2>/dev/null; then
    echo "==> installing: ${missing[*]}"
    local apt
    apt=$(apt_cmd)
    DEBIAN_FRONTEND=noninteractive $apt update -qq
    DEBIAN_FRONTEND=noninteractive $apt install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "missing tools; install them with:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
}

# ---- Docker (check_compose.sh, offline_images.sh) ---------------------------------------------

# docker_cli: the docker CLI every docker command of these scripts goes through ($DOCKER when
# set; else the system's /usr/bin/docker, Debian's docker.io here; else the first on PATH). One
# CLI means one builder and one layer cache: Debian's 20.10 CLI (BuildKit inside dockerd) and a
# newer CLI elsewhere on PATH (legacy builder without buildx) do not share their caches.
docker_cli() {
  if [ -n "${DOCKER:-}" ]; then
    echo "$DOCKER"
  elif [ -x /usr/bin/docker ]; then
    echo /usr/bin/docker
  else
    command -v docker || true
  fi
}

# pin_docker_cli DIR: puts DIR/docker (a link to docker_cli) first on PATH, so child scripts
# (loadtest/run_ab.sh) and docker-compose use that same CLI; sets and exports DOCKER.
pin_docker_cli() {
  DOCKER=$(docker_cli)
  [ -n "$DOCKER" ] || {
    echo "no docker CLI found" >&2
    return 1
  }
  mkdir -p "$1"
  ln -sf "$DOCKER" "$1/docker"
  PATH="$1:$PATH"
  export DOCKER PATH
}

# COMPOSE_CMD: the Docker Compose command, as an array (set by compose_cmd; run_ab.sh sets its own).
COMPOSE_CMD=()

# compose_cmd: sets COMPOSE_CMD=(docker compose) when the v2 plugin answers, else
# (docker-compose). Returns 1 when neither exists.
compose_cmd() {
  if "$(docker_cli)" compose version >/dev/null 2>&1; then
    COMPOSE_CMD=("$(docker_cli)" compose)
  elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE_CMD=(docker-compose)
  else
    return 1
  fi
}

# compose_images FILE: one line per service of the compose file: "SERVICE IMAGE BUILD", BUILD 1
# when the service is built from a Dockerfile (so its image is never pulled), else 0. Reads the
# normalized `config` output (v1 and v2 print the same layout).
compose_images() {
  "${COMPOSE_CMD[@]}" -f "$1" config | awk '
    /^[^ ]/ { in_services = ($0 == "services:"); next }
    !in_services { next }
    /^  [^ ][^:]*:$/ { svc = substr($0, 3, length($0) - 3); order[++n] = svc; build[svc] = 0; next }
    /^    build:/ { build[svc] = 1; next }
    /^    image: / { image[svc] = $2; next }
    END { for (i = 1; i <= n; i++) print order[i], (image[order[i]] == "" ? "-" : image[order[i]]), build[order[i]] }'
}

# dockerfile_images FILE: the images the FROM lines of a Dockerfile name, with the ARG defaults
# given before the first FROM substituted; stage names (FROM build AS ...) are left out.
dockerfile_images() {
  awk '
    function subst(s,   name) {
      for (name in arg) { gsub("\\$\\{" name "\\}", arg[name], s); gsub("\\$" name, arg[name], s) }
      return s
    }
    toupper($1) == "ARG" && !seen_from { split($2, kv, "="); arg[kv[1]] = kv[2]; next }
    toupper($1) == "FROM" {
      seen_from = 1; img = ""
      for (i = 2; i <= NF; i++) if ($i !~ /^--/) { img = subst($i); break }
      for (i = 2; i < NF; i++) if (toupper($i) == "AS") stage[tolower($(i + 1))] = 1
      if (img != "" && !(tolower(img) in stage) && img != "scratch" && !(img in printed)) { printed[img] = 1; print img }
    }' "$1"
}

# ---- Time -------------------------------------------------------------------------------------

# now_ms: wall clock in milliseconds (bash 5 $EPOCHREALTIME, no subprocess).
now_ms() {
  local t=${EPOCHREALTIME//[.,]/}
  printf '%s\n' $((t / 1000))
}

# secs MS: "1.234" for 1234.
secs() { printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)); }

# ---- Processes and the EXIT trap --------------------------------------------------------------
# Every process a script starts in the background goes through spawn, so that cleanup_on_exit
# (the EXIT trap, set by install_cleanup) can stop it.

PIDS=()
SPAWNED_PID=
# Extra commands the EXIT trap runs first (e.g. restart a killed compose service).
CLEANUP_HOOKS=()
# The run's temporary directory (make_work_dir), and whether the EXIT trap keeps it when the
# script fails.
WORK_DIR=
WORK_DIR_KEEP_FAILED=0

# spawn LOGFILE CMD [ARGS...]: starts CMD in the background with stdout and stderr in LOGFILE;
# its pid lands in SPAWNED_PID and in PIDS. (Call directly, not inside $(...): the process
# must be a child of this shell so that `wait` can collect its exit status.)
spawn() {
  local log=$1
  shift
  "$@" >"$log" 2>&1 &
  SPAWNED_PID=$!
  PIDS+=("$SPAWNED_PID")
}

# alive PID: true while PID runs.
alive() { kill -0 "$1" 2>/dev/null; }

# wait_exit PID TIMEOUT_MS: waits (bounded) for a child to exit; sets EXIT_RC to its exit status,
# or to 124 when it was still running at the deadline (it is left running).
EXIT_RC=0
wait_exit() {
  local pid=$1 deadline=$(($(now_ms) + $2)) i
  for ((i = 0; i < 100000; i++)); do
    alive "$pid" || break
    (($(now_ms) >= deadline)) && {
      EXIT_RC=124
      return 0
    }
    sleep 0.02
  done
  EXIT_RC=0
  wait "$pid" 2>/dev/null || EXIT_RC=$?
}

# stop_pid PID: stops a process this script started: SIGTERM, up to 5 s to exit, then SIGKILL;
# reaps it and drops it from PIDS. Nothing but the reaping when it has already exited.
stop_pid() {
  local pid=$1 p kept=()
  for p in ${PIDS[@]+"${PIDS[@]}"}; do
    [[ $p == "$pid" ]] || kept+=("$p")
  done
  PIDS=(${kept[@]+"${kept[@]}"})
  alive "$pid" || {
    wait "$pid" 2>/dev/null || true
    return 0
  }
  kill -TERM "$pid" 2>/dev/null || true
  wait_exit "$pid" 5000
  if [[ $EXIT_RC == 124 ]]; then
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
}

# make_work_dir NAME [keep-failed]: creates the run's temporary directory
# ($TMPDIR/NAME.XXXXXX) in WORK_DIR. The EXIT trap removes it, unless KEEP_TMP=1 or, with
# keep-failed, the script exits non-zero; either way an empty one is removed.
make_work_dir() {
  WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
  WORK_DIR_KEEP_FAILED=0
  [[ ${2:-} == keep-failed ]] && WORK_DIR_KEEP_FAILED=1
  return 0
}

# cleanup_on_exit: the EXIT trap. Runs CLEANUP_HOOKS, stops every process still in PIDS (SIGTERM
# to all of them, then stop_pid each), removes WORK_DIR (see make_work_dir), and exits with the
# script's status.
cleanup_on_exit() {
  local rc=$? hook pid
  trap - EXIT
  # Only the script's own shell cleans up: a child spawn forked can run the trap when a signal
  # reaches it before it has exec'd its command (stop_pid just after spawn).
  [[ $BASHPID == "$$" ]] || exit "$rc"
  for hook in ${CLEANUP_HOOKS[@]+"${CLEANUP_HOOKS[@]}"}; do
    eval "$hook" || warn "cleanup step failed: $hook"
  done
  for pid in ${PIDS[@]+"${PIDS[@]}"}; do
    alive "$pid" && kill -TERM "$pid" 2>/dev/null
  done
  for pid in ${PIDS[@]+"${PIDS[@]}"}; do
    stop_pid "$pid"
  done
  if [[ -n $WORK_DIR && -d $WORK_DIR ]]; then
    if [[ (${KEEP_TMP:-0} == 1 || ($rc != 0 && $WORK_DIR_KEEP_FAILED == 1)) && -n $(ls -A "$WORK_DIR") ]]; then
      say "logs and configs kept in $WORK_DIR"
    else
      rm -rf -- "$WORK_DIR"
    fi
  fi
  exit "$rc"
}

# install_cleanup: cleanup_on_exit as the EXIT trap; SIGINT and SIGTERM exit (130, 143) through it.
install_cleanup() {
  trap cleanup_on_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# ---- Ports and readiness ----------------------------------------------------------------------

# free_port: a free TCP port on 127.0.0.1 (the OS picks it; tiny race until the server binds it).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# free_ports N: N distinct free TCP ports on 127.0.0.1, space-separated.
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# poll TIMEOUT_MS INTERVAL_S CMD [ARGS...]: runs CMD until it succeeds; 1 when the deadline passes.
poll() {
  local deadline=$(($(now_ms) + $1)) interval=$2 i
  shift 2
  for ((i = 0; i < 100000; i++)); do
    "$@" && return 0
    (($(now_ms) >= deadline)) && return 1
    sleep "$interval"
  done
  return 1
}

# wait_http URL [STATUS] [SECONDS]: polls until URL answers STATUS (default 200, at most
# SECONDS, default 30); returns 1 with a message on stderr when it does not.
wait_http() {
  local url=$1 want=${2:-200} secs=${3:-30} i code
  for ((i = 0; i < secs * 10; i++)); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)
    [ "$code" = "$want" ] && return 0
    sleep 0.1
  done
  echo "timed out waiting for $url to answer $want (last: $code)" >&2
  return 1
}

# wait_serving URL PID [LOGFILE]: polls until URL answers 200 (every 0.1 s, at most 20 s);
# log_die when it does not, or as soon as PID (the server just started) has exited, showing the
# end of LOGFILE.
wait_serving() {
  local url=$1 pid=$2 logfile=${3:-} i code
  for ((i = 0; i < 200; i++)); do
    code=$(curl -s -o /dev/null -m 1 -w '%{http_code}' "$url" || true)
    [[ $code == 200 ]] && return 0
    if ! alive "$pid"; then
      [[ -n $logfile ]] && tail -n 5 "$logfile" >&2
      log_die "process $pid exited before $url answered"
    fi
    sleep 0.1
  done
  log_die "$url did not answer 200 within 20s"
}

# http_code URL [CURL_ARGS...]: the status code ("000" when there was no HTTP answer).
http_code() {
  local url=$1
  shift
  curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" "$url" 2>/dev/null || true
}

# tcp_open HOST PORT: a TCP connection can be made (no request is sent, so it costs no budget).
tcp_open() {
  # shellcheck disable=SC2016 # $0 and $1 are expanded by the inner bash.
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
}

# ready_with ADMIN_URL HEALTHY: /ready answers 200 and reports at least HEALTHY healthy backends.
ready_with() {
  local body n
  body=$(curl -fsS --max-time 2 "$1/ready" 2>/dev/null) || return 1
  n=$(sed -n 's/.*"healthy_backends":[[:space:]]*\([0-9][0-9]*\).*/\1/p' <<<"$body")
  [[ -n $n ]] && ((n >= $2))
}

# ---- The proxy's /metrics ---------------------------------------------------------------------

# scrape ADMIN_URL FILE: saves /metrics in FILE (die when it cannot be read).
scrape() {
  curl -fsS --max-time 5 "$1/metrics" >"$2" 2>/dev/null || die "cannot read $1/metrics"
}

# requests_total FILE_OR_-: sum of gateway_requests_total.
requests_total() {
  awk '/^gateway_requests_total[{ ]/ { s += $NF } END { printf "%d\n", s }' "$1"
}

# inflight ADMIN_URL: gateway_inflight_requests now (empty when the admin does not answer).
inflight() {
  curl -s --max-time 2 "$1/metrics" 2>/dev/null |
    awk '$1 == "gateway_inflight_requests" { printf "%d\n", $2 }'
}

# scrape_settled ADMIN_URL FILE BASE_TOTAL EXPECTED: scrapes until gateway_requests_total has
# grown by EXPECTED over BASE_TOTAL (the proxy counts a request just after answering it), at
# most 3 s; the last scrape stays in FILE either way.
scrape_settled() {
  local admin=$1 file=$2 base=$3 want=$4 i
  for ((i = 0; i < 60; i++)); do
    scrape "$admin" "$file"
    (($(requests_total "$file") - base >= want)) && return 0
    sleep 0.05
  done
  warn "the proxy counted $(($(requests_total "$file") - base)) of $want requests"
}

# delta BEFORE AFTER: sets D_TOTAL D_2XX D_429 D_5XX D_OTHER D_RETRIES D_LIMITED D_NONE
# D_UNLISTED and D_BACKEND[i] (requests answered by BACKEND_LABELS[i]), from two scrapes.
delta() {
  local line
  line=$(python3 "$ROOT/loadtest/metrics_delta.py" "$1" "$2" ${BACKEND_LABELS[@]+"${BACKEND_LABELS[@]}"}) ||
    die "cannot compare metrics $1 and $2"
  local -a col
  read -r -a col <<<"$line"
  D_TOTAL=${col[0]} D_2XX=${col[1]} D_429=${col[2]} D_5XX=${col[3]} D_OTHER=${col[4]}
  D_RETRIES=${col[5]} D_LIMITED=${col[6]} D_NONE=${col[7]} D_UNLISTED=${col[8]}
  D_BACKEND=("${col[@]:9}")
}

# ---- ab, the result table and the checks (loadtest/run_ab.sh) ---------------------------------

# ab_field FILE LABEL: the number after "LABEL:" in ab's report (0 when the line is absent,
# as "Non-2xx responses" is when there were none).
ab_field() {
  awk -v label="$2:" 'index($0, label) == 1 { print $(split(label, words, " ") + 1); found = 1; exit }
        END { if (!found) print 0 }' "$1"
}

# ab_summary FILE: sets AB_COMPLETE AB_FAILED AB_NON2XX AB_RPS from ab's report.
ab_summary() {
  AB_COMPLETE=$(ab_field "$1" "Complete requests")
  AB_FAILED=$(ab_field "$1" "Failed requests")
  AB_NON2XX=$(ab_field "$1" "Non-2xx responses")
  AB_RPS=$(ab_field "$1" "Requests per second")
}

# The table: one row per phase, counts from the proxy's /metrics, failed and rps from the client.
# Backend labels as the proxy reports them, and the names to print for them.
BACKEND_LABELS=()
BACKEND_NAMES=()

# table_header: the column titles, one per backend of BACKEND_NAMES.
table_header() {
  local name
  printf '%-18s %6s %6s %6s %6s %6s %7s %9s' phase sent 2xx 429 5xx other failed rps
  for name in ${BACKEND_NAMES[@]+"${BACKEND_NAMES[@]}"}; do
    printf ' %9s' "$name"
  done
  printf ' %6s\n' none
}

# table_row PHASE SENT FAILED RPS: prints the D_* counts of the last `delta`.
table_row() {
  local n
  printf '%-18s %6s %6s %6s %6s %6s %7s %9s' "$1" "$2" "$D_2XX" "$D_429" "$D_5XX" "$D_OTHER" "$3" "$4"
  for n in ${D_BACKEND[@]+"${D_BACKEND[@]}"}; do
    printf ' %9s' "$n"
  done
  printf ' %6s\n' "$D_NONE"
}

# Checks: each prints one line and fail_line counts the failures in FAILURES; `verdict` turns
# them into the exit status.
FAILURES=0

pass_line() { printf '   ok    %s\n' "$1"; }
fail_line() {
  printf '   FAIL  %s\n' "$1"
  FAILURES=$((FAILURES + 1))
}

# expect_eq WHAT ACTUAL EXPECTED
expect_eq() {
  if [[ $2 == "$3" ]]; then
    pass_line "$1 = $3"
  else
    fail_line "$1: expected $3, got $2"
  fi
}

# expect_range WHAT ACTUAL LOW HIGH (integers, inclusive)
expect_range() {
  if [[ $2 =~ ^-?[0-9]+$ ]] && (($2 >= $3 && $2 <= $4)); then
    if (($3 == $4)); then pass_line "$1 = $2"; else pass_line "$1 = $2 (within $3..$4)"; fi
  else
    fail_line "$1: expected $3..$4, got $2"
  fi
}

# expect_true WHAT CONDITION_RESULT(0/1) [DETAIL]
expect_true() {
  if [[ $2 == 0 ]]; then pass_line "$1"; else fail_line "$1${3:+: $3}"; fi
}

# verdict SCENARIO: PASS/FAIL line; returns 1 when a check failed.
verdict() {
  if ((FAILURES == 0)); then
    say "RESULT $1: PASS"
    return 0
  fi
  say "RESULT $1: FAIL ($FAILURES check(s) failed)"
  return 1
}

# ---- Benchmarks (loadtest/bench.sh, bench_ratelimit.sh, profile_callgrind.sh) -----------------
# Everything listens on 127.0.0.1 on ports the OS hands out; every process is started with spawn
# (stopped by the EXIT trap); config files, logs and raw outputs live in WORK_DIR
# (make_work_dir), removed at exit unless KEEP_TMP=1. Messages go through log and log_die.

# bench_init: the benchmarks' globals: the release binaries (PROXY_BIN, BARE_BIN), CLK_TCK
# (exported), and per process name its PID, address, admin address (ours only) and HTTPS
# address (start_ours_tls, start_nginx_tls_proxy).
bench_init() {
  TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
  PROXY_BIN="$TARGET_DIR/release/proxy"
  BARE_BIN="$TARGET_DIR/release/examples/bare_proxy"
  CLK_TCK="$(getconf CLK_TCK)"
  export CLK_TCK
  declare -gA BACKEND_PID=() SYS_PID=() SYS_ADDR=() SYS_ADMIN=() SYS_TLS_ADDR=()
}

# need_matplotlib: log_die unless python3 can import matplotlib.
need_matplotlib() {
  python3 -c 'import matplotlib' 2>/dev/null ||
    log_die "python3 module matplotlib not found; install it with: pip install matplotlib"
}

# build_release: cargo build --release of the proxy and the bare_proxy example.
build_release() {
  log_need cargo "https://rustup.rs (curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh)"
  log "building release binaries (cargo build --release -p proxy --bin proxy --example bare_proxy)"
  (cd "$ROOT" && cargo build --release -p proxy --bin proxy --example bare_proxy) >&2
}

# check_binaries: log_die unless PROXY_BIN and BARE_BIN exist.
check_binaries() {
  [[ -x "$PROXY_BIN" ]] || log_die "$PROXY_BIN missing (run without --no-build)"
  [[ -x "$BARE_BIN" ]] || log_die "$BARE_BIN missing (run without --no-build)"
}

# The interleaved-rounds wrk benchmarks (bench_routes.sh, bench_tail.sh)
# start with bench_rounds_args "$@", then bench_rounds_setup.

# bench_rounds_args ARGS...: their command line. The caller sets the defaults first: ROUNDS,
# DURATION, CONNECTIONS, OUT_FILE. Options: --rounds N (ROUNDS), --duration S (DURATION),
# --no-build (BUILD=0; BUILD is 1 otherwise), --out FILE (OUT_FILE), -h/--help (the script's
# header comment, up to `set -euo pipefail`, then exit 0); with CONNECTIONS_MAX set (e.g.
# `CONNECTIONS_MAX=5000 bench_rounds_args "$@"`) also --connections C (CONNECTIONS). log_die on
# any other argument, and unless every value is a positive integer with rounds <= 100,
# duration <= 600 and connections <= CONNECTIONS_MAX.
bench_rounds_args() {
  local max=${CONNECTIONS_MAX:-} v vars=(ROUNDS DURATION) limits="rounds <= 100, duration <= 600"
  BUILD=1
  while (($#)); do
    case "$1" in
      --rounds) ROUNDS=$2; shift 2 ;;
      --duration) DURATION=$2; shift 2 ;;
      --connections) [[ -n $max ]] || log_die "unknown argument: $1"; CONNECTIONS=$2; shift 2 ;;
      --no-build) BUILD=0; shift ;;
      --out) OUT_FILE=$2; shift 2 ;;
      -h | --help) sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; exit 0 ;;
      *) log_die "unknown argument: $1" ;;
    esac
  done
  if [[ -n $max ]]; then
    vars+=(CONNECTIONS)
    limits+=", connections <= $max"
  fi
  for v in "${vars[@]}"; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || log_die "$v must be a positive integer (got '${!v}')"
  done
  ((ROUNDS <= 100 && DURATION <= 600)) || log_die "$limits"
  [[ -z $max ]] || ((CONNECTIONS <= max)) || log_die "$limits"
}

# bench_rounds_setup WORK_NAME [TOOL HOW_TO_INSTALL]...: log_need wrk, nginx and each extra
# TOOL; build_release unless BUILD is 0; check_binaries; install_cleanup; make_work_dir
# WORK_NAME, readable by all (nginx workers run as nobody).
bench_rounds_setup() {
  local name=$1
  shift
  log_need wrk "apt-get install -y wrk"
  log_need nginx "apt-get install -y nginx-light"
  while (($# >= 2)); do
    log_need "$1" "$2"
    shift 2
  done
  if ((BUILD)); then build_release; fi
  check_binaries
  install_cleanup
  make_work_dir "$name"
  chmod 755 "$WORK_DIR"
}

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

# run_nginx DIR: nginx in the foreground on DIR/nginx.conf, started in the background (spawn).
run_nginx() {
  spawn "$1/logs/stdout.log" nginx -p "$1" -e "$1/logs/error.log" -c "$1/nginx.conf" -g 'daemon off;'
}

# start_nginx_backend NAME PORT WORKERS: fixed `200 ok` server with stub_status at /__status.
start_nginx_backend() {
  local name=$1 port=$2 workers=$3 dir="$WORK_DIR/$1"
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
  BACKEND_PID[$name]=$SPAWNED_PID
  wait_serving "http://127.0.0.1:$port/" "$SPAWNED_PID" "$dir/logs/error.log"
}

# start_bench_backends WORKERS: the two nginx backends (backend1, backend2) every system is
# measured in front of; sets BACKEND_PORTS, BACKENDS_TOML, BACKENDS_ARGS.
start_bench_backends() {
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

# start_ours NAME PORT ADMIN_PORT THREADS RATE_LIMIT(true|false) ACCESS_LOG(true|false)
#            [REQUESTS [MAX_CLIENTS [WINDOW_SECONDS]]]
# The gateway with production features on: rate limiting (by default with a limit it never
# reaches), metrics, request and response headers, health checks. PRESERVE_CASE=true sets
# headers.preserve_case; EXTRA_TOML is appended to the config (e.g. routes_toml's routes);
# READY_PATH [/] is the path that must answer 200 before it counts as started.
start_ours() {
  local name=$1 port=$2 admin=$3 threads=$4 rl=$5 al=$6 requests=${7:-1000000000} max_clients=${8:-100000}
  local window=${9:-60}
  local dir="$WORK_DIR/$name" file_line=""
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
  if [[ -n ${EXTRA_TOML:-} ]]; then
    printf '\n%s\n' "$EXTRA_TOML" >>"$dir/proxy.toml"
  fi
  "$PROXY_BIN" -t -c "$dir/proxy.toml" >/dev/null || log_die "$name: config rejected: $dir/proxy.toml"
  # stdout goes to a file too: with the access log on, each line is written to stdout and log.file.
  spawn "$dir/stdout.log" "$PROXY_BIN" -c "$dir/proxy.toml"
  SYS_PID[$name]=$SPAWNED_PID
  SYS_ADDR[$name]="127.0.0.1:$port"
  SYS_ADMIN[$name]="127.0.0.1:$admin"
  wait_serving "http://127.0.0.1:$admin/ready" "$SPAWNED_PID" "$dir/stdout.log"
  wait_serving "http://127.0.0.1:$port${READY_PATH:-/}" "$SPAWNED_PID" "$dir/stdout.log"
}

# routes_toml N: N [[routes]] to the group default for start_ours' EXTRA_TOML. N = 1: one
# catch-all; N > 1: /r00/ ... /rNN/, all of one prefix length, so /r(N-1)/ is tried last.
routes_toml() {
  local n=$1 i
  if ((n == 1)); then
    printf '[[routes]]\nname = "all"\nupstream = "default"\n'
    return
  fi
  for ((i = 0; i < n; i++)); do
    printf '[[routes]]\nname = "r%02d"\npath_prefix = "/r%02d/"\nupstream = "default"\n' "$i" "$i"
  done
}

# start_bare NAME PORT THREADS: proxy/examples/bare_proxy.rs (BARE_BIN).
start_bare() {
  local name=$1 port=$2 threads=$3 dir="$WORK_DIR/$1"
  mkdir -p "$dir"
  # shellcheck disable=SC2086
  spawn "$dir/stdout.log" "$BARE_BIN" --listen "127.0.0.1:$port" --threads "$threads" $BACKENDS_ARGS
  SYS_PID[$name]=$SPAWNED_PID
  SYS_ADDR[$name]="127.0.0.1:$port"
  wait_serving "http://127.0.0.1:$port/" "$SPAWNED_PID" "$dir/stdout.log"
}

# nginx_proxy_conf DIR WORKERS DIRECTIVE...: writes DIR/nginx.conf for nginx as a reverse proxy
# to the backends of BACKENDS_ARGS (upstream keepalive 128, X-Forwarded-For, 1 s connect
# timeout); its one server block opens with the DIRECTIVEs, one per line (the listen line, and
# the ssl_* lines for TLS).
nginx_proxy_conf() {
  local dir=$1 workers=$2 servers="" b
  shift 2
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
$(printf '        %s\n' "$@")
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
}

# start_nginx_proxy NAME PORT WORKERS: nginx as a reverse proxy (nginx_proxy_conf: upstream
# keepalive, XFF) on 127.0.0.1:PORT.
start_nginx_proxy() {
  local name=$1 port=$2 workers=$3 dir="$WORK_DIR/$1"
  nginx_proxy_conf "$dir" "$workers" "listen 127.0.0.1:$port backlog=4096;"
  run_nginx "$dir"
  SYS_PID[$name]=$SPAWNED_PID
  SYS_ADDR[$name]="127.0.0.1:$port"
  wait_serving "http://127.0.0.1:$port/" "$SPAWNED_PID" "$dir/logs/error.log"
}

# start_haproxy NAME PORT THREADS: HAProxy (roundrobin, forwardfor, http-reuse always).
start_haproxy() {
  local name=$1 port=$2 threads=$3 dir="$WORK_DIR/$1" servers="" b i=0
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
  haproxy -c -q -f "$dir/haproxy.cfg" || log_die "$name: haproxy config rejected: $dir/haproxy.cfg"
  spawn "$dir/stdout.log" haproxy -f "$dir/haproxy.cfg" -db
  SYS_PID[$name]=$SPAWNED_PID
  SYS_ADDR[$name]="127.0.0.1:$port"
  wait_serving "http://127.0.0.1:$port/" "$SPAWNED_PID" "$dir/stdout.log"
}

# ours_metric_sum ADMIN_ADDR REGEX: sum of the samples of the metric lines matching REGEX.
ours_metric_sum() {
  curl -s -m 2 "http://$1/metrics" | awk -v re="$2" '$0 ~ re {s += $NF} END {printf "%d\n", s}'
}

# TLS (loadtest/bench.sh --tls). CERT_DIR is what scripts/dev_certs.sh makes: ca.pem and
# localhost.{pem,key} (SANs localhost and 127.0.0.1). Clients go to https://localhost:PORT/, so
# SNI is sent; the servers listen on 127.0.0.1 only (curl, wrk and h2load each skip an address
# that refuses the connection, should localhost also resolve to ::1).

# wait_serving_tls URL CA_FILE PID [LOGFILE]: wait_serving over HTTPS, the server's certificate
# verified against CA_FILE.
wait_serving_tls() {
  local url=$1 ca=$2 pid=$3 logfile=${4:-} i code
  for ((i = 0; i < 200; i++)); do
    code=$(curl -s -o /dev/null -m 1 --cacert "$ca" -w '%{http_code}' "$url" || true)
    [[ $code == 200 ]] && return 0
    if ! alive "$pid"; then
      [[ -n $logfile ]] && tail -n 5 "$logfile" >&2
      log_die "process $pid exited before $url answered"
    fi
    sleep 0.1
  done
  log_die "$url did not answer 200 (certificate checked against $ca) within 20s"
}

# start_ours_tls NAME PORT ADMIN_PORT TLS_PORT THREADS CERT_DIR HTTP2(true|false)
# start_ours (rate limiting on, never reached; no access log) plus a [tls] table: one listener
# on 127.0.0.1:TLS_PORT (the plain one on PORT stays), CERT_DIR/localhost.{pem,key},
# min_version "1.2", http2 = HTTP2. A caller's EXTRA_TOML is kept (the [tls] table goes after
# it). Sets SYS_TLS_ADDR[NAME] = localhost:TLS_PORT; returns once https://localhost:TLS_PORT
# READY_PATH [/] answers 200 with the certificate verified against CERT_DIR/ca.pem.
start_ours_tls() {
  local name=$1 port=$2 admin=$3 tls_port=$4 threads=$5 certs=$6 http2=$7
  EXTRA_TOML="${EXTRA_TOML:-}
[tls]
listen = [\"127.0.0.1:$tls_port\"]
certificates = [{ cert = \"$certs/localhost.pem\", key = \"$certs/localhost.key\" }]
min_version = \"1.2\"
http2 = $http2" start_ours "$name" "$port" "$admin" "$threads" true false
  SYS_TLS_ADDR[$name]="localhost:$tls_port"
  wait_serving_tls "https://localhost:$tls_port${READY_PATH:-/}" "$certs/ca.pem" "${SYS_PID[$name]}" \
    "$WORK_DIR/$name/stdout.log"
}

# start_nginx_tls_proxy NAME PORT WORKERS CERT_DIR HTTP2(true|false): nginx as a reverse proxy
# as nginx_proxy_conf writes it (keepalive 128 to the backends, X-Forwarded-For), listening
# with TLS only on 127.0.0.1:PORT: CERT_DIR/localhost.{pem,key}, TLSv1.2 and TLSv1.3, `http2` on
# the listener when HTTP2 is true (ALPN h2 offered, as the gateway's tls.http2 does). Session
# resumption is offered as by nginx's defaults and the gateway's (rustls: two TLS 1.3 tickets per
# handshake): ssl_session_tickets on, no session cache. Sets SYS_PID[NAME] and SYS_TLS_ADDR[NAME]
# = localhost:PORT; returns once it answers 200 over HTTPS (certificate checked).
start_nginx_tls_proxy() {
  local name=$1 port=$2 workers=$3 certs=$4 http2="" dir="$WORK_DIR/$1"
  [[ $5 == true ]] && http2=" http2"
  nginx_proxy_conf "$dir" "$workers" "listen 127.0.0.1:$port ssl$http2 backlog=4096;" \
    "ssl_certificate $certs/localhost.pem;" "ssl_certificate_key $certs/localhost.key;" \
    "ssl_protocols TLSv1.2 TLSv1.3;" "ssl_session_cache none;" "ssl_session_tickets on;"
  run_nginx "$dir"
  SYS_PID[$name]=$SPAWNED_PID
  SYS_TLS_ADDR[$name]="localhost:$port"
  wait_serving_tls "https://localhost:$port/" "$certs/ca.pem" "$SPAWNED_PID" "$dir/logs/error.log"
}

# start_bare_tls NAME PORT TLS_PORT THREADS CERT_DIR: bare Pingora (BARE_BIN) on 127.0.0.1:PORT and
# with Pingora's own rustls listener on 127.0.0.1:TLS_PORT (CERT_DIR/localhost.{pem,key}), to the
# backends of BACKENDS_ARGS. Sets SYS_PID[NAME], SYS_ADDR[NAME] and SYS_TLS_ADDR[NAME] =
# localhost:TLS_PORT; returns once it answers 200 over HTTPS (certificate checked).
start_bare_tls() {
  local name=$1 port=$2 tls_port=$3 threads=$4 certs=$5 dir="$WORK_DIR/$1"
  mkdir -p "$dir"
  # shellcheck disable=SC2086
  spawn "$dir/stdout.log" "$BARE_BIN" --listen "127.0.0.1:$port" --threads "$threads" \
    --tls-listen "127.0.0.1:$tls_port" --tls-cert "$certs/localhost.pem" \
    --tls-key "$certs/localhost.key" $BACKENDS_ARGS
  SYS_PID[$name]=$SPAWNED_PID
  SYS_ADDR[$name]="127.0.0.1:$port"
  SYS_TLS_ADDR[$name]="localhost:$tls_port"
  wait_serving_tls "https://localhost:$tls_port/" "$certs/ca.pem" "$SPAWNED_PID" "$dir/stdout.log"
}

# start_redis NAME PORT: redis-server on 127.0.0.1:PORT with persistence off (no RDB snapshots,
# no AOF), its working directory WORK_DIR/NAME; started with spawn, so the EXIT trap stops it
# by its PID. Sets SYS_PID[NAME] and SYS_ADDR[NAME]; returns once it answers PING.
start_redis() {
  local name=$1 port=$2 dir="$WORK_DIR/$1" i
  mkdir -p "$dir"
  spawn "$dir/redis.log" redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
    --dir "$dir" --daemonize no --logfile "" --databases 1
  SYS_PID[$name]=$SPAWNED_PID
  SYS_ADDR[$name]="127.0.0.1:$port"
  for ((i = 0; i < 200; i++)); do
    [[ $(redis-cli -h 127.0.0.1 -p "$port" PING 2>/dev/null) == PONG ]] && return 0
    if ! alive "$SPAWNED_PID"; then
      tail -n 5 "$dir/redis.log" >&2
      log_die "redis-server $SPAWNED_PID exited before answering on port $port"
    fi
    sleep 0.1
  done
  log_die "redis-server on port $port did not answer PING within 20s"
}

# redis_cli NAME ARGS...: redis-cli against the redis-server NAME (start_redis), without the
# \r that ends each line of INFO.
redis_cli() {
  local addr=${SYS_ADDR[$1]}
  shift
  redis-cli -h "${addr%:*}" -p "${addr##*:}" "$@" | tr -d '\r'
}

# start_ours_redis NAME PORT ADMIN_PORT THREADS REDIS_URL [REQUESTS [MAX_CLIENTS [WINDOW_SECONDS]]]
# start_ours (rate limiting on, no access log) with rate_limit.store = "redis" and
# [rate_limit.redis] url = REDIS_URL, timeout_ms = 20, on_error = "local",
# key_prefix = "gateway:rl:" (EXTRA_TOML is kept and appended after that table); returns once
# /ready reports rate_limit_store.state "up" (log_die after 10 s).
start_ours_redis() {
  local name=$1 url=$5 i body
  # start_ours writes its RATE_LIMIT argument as `enabled = ...`, the first key of
  # [rate_limit]; `store` is given as a second line of that value, since a key of that table
  # cannot be set from EXTRA_TOML (appended after other tables). The /ready check below fails
  # when the store line did not land in [rate_limit].
  EXTRA_TOML="[rate_limit.redis]
url = \"$url\"
timeout_ms = 20
on_error = \"local\"
key_prefix = \"gateway:rl:\"
${EXTRA_TOML:-}" start_ours "$name" "$2" "$3" "$4" $'true\nstore = "redis"' false "${6:-1000000000}" \
    "${7:-100000}" "${8:-60}"
  for ((i = 0; i < 100; i++)); do
    body=$(curl -fsS --max-time 2 "http://${SYS_ADMIN[$name]}/ready" 2>/dev/null || true)
    if [[ $body =~ \"rate_limit_store\":\{[^}]*\"state\":\"up\" && $body =~ \"store\":\"redis\" ]]; then
      return 0
    fi
    sleep 0.1
  done
  log_die "$name: /ready does not report the redis store up (last: ${body:-no answer})"
}

# ---- Redis and the proxy's shared store (loadtest/run_ab.sh cluster, check_dashboard_live.sh) --

# redis_ping HOST PORT: a redis-server answers PING at HOST:PORT.
redis_ping() { [[ $(redis-cli -h "$1" -p "$2" PING 2>/dev/null) == PONG ]]; }

# store_state ADMIN_URL: rate_limit_store.state on the proxy's /ready ("up", "down" or
# "connecting"; empty when its store is local or the admin listener does not answer). /ready
# answers 503 with the same body when the proxy is not ready, so the body is read either way.
store_state() {
  curl -s --max-time 2 "$1/ready" 2>/dev/null |
    sed -n 's/.*"rate_limit_store":{[^}]*"state":"\([a-z]*\)".*/\1/p'
}

# store_state_is ADMIN_URL STATE: store_state is STATE (a condition for poll).
store_state_is() { [[ $(store_state "$1") == "$2" ]]; }
