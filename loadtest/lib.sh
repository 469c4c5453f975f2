# Helpers for loadtest/run_ab.sh (sourced, not run): processes and their cleanup, bounded waits,
# ab output, /metrics deltas, the result table and the pass/fail checks.
# shellcheck shell=bash
# The D_* and AB_* globals set here are read by run_ab.sh:
# shellcheck disable=SC2034

# ---------------------------------------------------------------------------------------------
# Messages

say() { printf '%s\n' "$*"; }
note() { printf -- '-- %s\n' "$*"; }
warn() { printf 'run_ab: warning: %s\n' "$*" >&2; }
die() {
    printf 'run_ab: error: %s\n' "$*" >&2
    exit 2
}

# need_tool NAME HOW_TO_INSTALL: fail with the install command when NAME is not on PATH.
need_tool() {
    command -v "$1" >/dev/null 2>&1 || die "'$1' is required but not installed. Install it with: $2"
}

# ---------------------------------------------------------------------------------------------
# Time

# now_ms: wall clock in milliseconds (bash 5 $EPOCHREALTIME, no subprocess).
now_ms() {
    local t=${EPOCHREALTIME//[.,]/}
    printf '%s\n' $((t / 1000))
}

# secs MS: "1.234" for 1234.
secs() { printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)); }

# ---------------------------------------------------------------------------------------------
# Processes: everything started goes through spawn, so the EXIT trap can stop it.

PIDS=()
SPAWNED_PID=
WORK_DIR=
# Extra commands the EXIT trap runs first (e.g. restart a killed compose service).
CLEANUP_HOOKS=()

# spawn LOGFILE CMD [ARGS...]: start CMD in the background with stdout and stderr in LOGFILE;
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

# wait_exit PID TIMEOUT_MS: wait (bounded) for a child to exit; sets EXIT_RC to its exit status,
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

# stop_pid PID: SIGTERM, up to 5 s to exit, then SIGKILL; reaps it.
stop_pid() {
    local pid=$1
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

# cleanup: the EXIT trap. Runs the hooks, stops every spawned process, removes the work dir
# (kept, with its logs, when the run failed or KEEP_TMP=1).
cleanup() {
    local rc=$? hook pid
    trap - EXIT
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
        if [[ ($rc != 0 || ${KEEP_TMP:-0} == 1) && -n $(ls -A "$WORK_DIR") ]]; then
            say "logs and configs kept in $WORK_DIR"
        else
            rm -rf -- "$WORK_DIR"
        fi
    fi
    exit "$rc"
}

install_cleanup() {
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
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

# ---------------------------------------------------------------------------------------------
# Bounded polling

# poll TIMEOUT_MS INTERVAL_S CMD [ARGS...]: run CMD until it succeeds; 1 when the deadline passes.
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

# healthy_count ADMIN_URL: the healthy_backends /ready reports (empty when it does not answer).
healthy_count() {
    curl -s --max-time 2 "$1/ready" 2>/dev/null |
        sed -n 's/.*"healthy_backends":[[:space:]]*\([0-9][0-9]*\).*/\1/p'
}

# ---------------------------------------------------------------------------------------------
# Metrics

# scrape ADMIN_URL FILE: save /metrics.
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

# scrape_settled ADMIN_URL FILE BASE_TOTAL EXPECTED: scrape until gateway_requests_total has
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
# D_UNLISTED and D_BACKEND[i] (requests answered by BACKEND_LABELS[i]).
delta() {
    local line
    line=$(python3 "$LOADTEST_DIR/metrics_delta.py" "$1" "$2" ${BACKEND_LABELS[@]+"${BACKEND_LABELS[@]}"}) ||
        die "cannot compare metrics $1 and $2"
    local -a f
    read -r -a f <<<"$line"
    D_TOTAL=${f[0]} D_2XX=${f[1]} D_429=${f[2]} D_5XX=${f[3]} D_OTHER=${f[4]}
    D_RETRIES=${f[5]} D_LIMITED=${f[6]} D_NONE=${f[7]} D_UNLISTED=${f[8]}
    D_BACKEND=("${f[@]:9}")
}

# ---------------------------------------------------------------------------------------------
# ab

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

# ---------------------------------------------------------------------------------------------
# The table: one row per phase, counts from the proxy's /metrics, failed and rps from the client.

# Backend labels as the proxy reports them, and the names to print for them.
BACKEND_LABELS=()
BACKEND_NAMES=()

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

# ---------------------------------------------------------------------------------------------
# Checks: each prints one line; `verdict` turns them into the exit status.

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
