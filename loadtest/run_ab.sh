#!/usr/bin/env bash
# Load-test scenarios for the gateway, driven by ApacheBench (ab).
#
#   loadtest/run_ab.sh SCENARIO [--compose]
#
#   balance    BALANCE_REQUESTS requests through the proxy: an even split over the live backends
#              (round robin: 300 over 3 backends is 100 each). The load generator is exempt from
#              the rate limiter, so volume is not limited.
#   ratelimit  150 requests from one client under the default limit (100 per 60 s): exactly
#              100 x 2xx and 50 x 429, once with `ab -c 1` and once with `ab -c 10`, each
#              against a fresh limiter.
#   failover   `ab -k -n 3000 -c 6` while a backend (backend2) is SIGKILLed mid-run: zero non-2xx
#              and zero failed requests. The table is split where the kill returned and where
#              the proxy marked the backend down (gateway_backend_up 0 on /metrics): the killed
#              backend must be credited with no answer after either, and the load must still be
#              running when it was marked down.
#   graceful   SIGTERM to the proxy while /delay/1500 is in flight: that request completes with
#              200, new connections are refused, and the proxy exits 0 within its drain time
#              (grace_period_seconds + graceful_shutdown_timeout_seconds, + DRAIN_SLACK_MS).
#   routes     the demo's upstream groups and routes (config/proxy.toml, config/docker.toml):
#              the split: ROUTES_API_REQUESTS requests to /api/ with one X-Api-Key land on
#              backend1 and backend2 only (group "api", least requests; both used),
#              ROUTES_STATIC_REQUESTS to /static/ on backend3 only (group "static"), and
#              ROUTES_DEFAULT_REQUESTS to / evenly on all three (group "default", round robin),
#              each counted per route and backend (gateway_requests_total{route,backend});
#              one /static/app.js request shows the prefix stripped (the backend echoes path
#              /app.js and X-Forwarded-Prefix: /static). The quota of route "api" (20 per 10 s
#              per X-Api-Key): a fresh key (unique per run) gets exactly 20 x 2xx and 5 x 429
#              for 25 requests, each answered with RateLimit-Limit: 20; a second key right
#              after has its own 20 (21 requests with ab -c ROUTES_QUOTA_CONCURRENCY: 20 x 2xx,
#              1 x 429); and 3 requests without the header are under the route's quota keyed by
#              the client IP (RateLimit-Limit: 20, RateLimit-Remaining 19, 18, 17), a budget
#              that is never used up (a rerun needs no wait). Static and default requests spend
#              the global limit (100 per 60 s, nothing exempt: an exempt client would skip the
#              route quota too), so together they stay below it.
#   cluster    two replicas sharing their rate limits through Redis (rate_limit.store = "redis",
#              on_error = "local"). Locally it starts redis-server itself (free 127.0.0.1 port,
#              persistence off), three backends and two proxies; with --compose it drives proxy,
#              proxy2 and redis of the stack. Four phases, each for a client with a fresh budget
#              (locally a source address of its own, 127.0.0.11-15; with --compose the host is
#              one client, so its count is cleared with FLUSHALL between them):
#              1. RATE_SENT (150) requests alternating between the replicas: exactly 100 x 2xx
#                 and 50 x 429 in all, RateLimit-Remaining of the 2xx counting 99..0 across both
#                 (the IETF RateLimit field's r= the same), no store error;
#              2. CLUSTER_KILL_AFTER (60) requests alternating, then replica 2 is SIGKILLed
#                 (locally its PID; compose: `docker compose kill proxy2`), then the rest of
#                 150 to replica 1 alone: still exactly 100 x 2xx in all (the first answer after
#                 the kill says Remaining 39: the count survived the replica), zero 5xx;
#              3. Redis stopped (locally SIGTERM to its PID; compose: `docker compose stop
#                 redis`), CLUSTER_DOWN_REQUESTS (120) to replica 1: on_error "local" decides,
#                 so zero 5xx and exactly 100 x 2xx + 20 x 429 from the replica's own exact
#                 limiter; gateway_rate_limit_store_errors_total grew and /ready says
#                 rate_limit_store.state "down" while still ready;
#              4. Redis started again (same port; compose: `docker compose start redis`):
#                 replica 1 is back to "up" after a few requests (each failed store check waits
#                 250 ms for the next probe), replica 2 is started again (compose: `docker
#                 compose start proxy2`), and requests alternating between them count down one
#                 shared budget again.
#              With --compose, whatever it stopped is started again (also when it fails).
#   outlier    passive outlier detection (a group's `outlier` settings): a steady load over the
#              three backends of the group "default" (OUTLIER_CONCURRENCY clients, each a bounded
#              keep-alive loop of GET /, not ab: the load must last through phases of unknown
#              length and stop cleanly), then backend2 made faulty with `PUT /_mock/fault
#              {"status": 500}` after OUTLIER_WARMUP answers (its /health stays fine: only passive
#              detection can see it). With F = consecutive_failures, E = base_ejection_seconds
#              and c = OUTLIER_CONCURRENCY: the proxy ejects it (gateway_backend_ejected 1,
#              gateway_backend_ejections_total +1, /ready upstreams.default.ejected lists it,
#              "backend ejected: consecutive failures" logged) while gateway_backend_up stays 1;
#              its 5xx are F..F+c (F in a row, the rest in flight when it was ejected), every 5xx
#              is its own and the client-visible errors (the 5xx the client got, equal to the
#              proxy's count; no request failed without an answer) are at most F + c; its
#              /stats "faulted" equals them. The fault is cleared (DELETE /_mock/fault) as soon
#              as it is seen ejected; a scrape complete less than E after the fault was set
#              still shows it ejected, with at most c - 1 answers of it since the ejection; it
#              comes back by itself no sooner than E after the fault (gateway_backend_ejected 0,
#              /ready lists none, "backend back from ejection" logged) and answers
#              OUTLIER_RETURN_ANSWERS 2xx, no 5xx, before the load stops. Every wait polls
#              /metrics and is bounded. The table is split where the fault was set, where it was
#              seen ejected, inside the ejection, where it was seen back, and at the end; a line
#              gives backend2's 2xx/5xx per phase. Locally F = OUTLIER_FAILURES and E =
#              OUTLIER_EJECTION_SECONDS ([upstream.outlier] of the generated config); with
#              --compose both are read from config/docker.toml's [upstream.outlier].
#   all        the seven, back to back (each in its own process); non-zero if any failed.
#
# Each scenario prints a table (sent, 2xx, 429, 5xx, other, failed, rps, per-backend split; the
# counts come from the deltas of gateway_requests_total on the admin /metrics, in routes those of
# one route per row; failed and rps from ab, in outlier from its own load) and one line per
# check, then "RESULT <scenario>: PASS|FAIL".
# Exit status: 0 expectations met, 1 an expectation missed, 2 usage or setup error.
#
# Local mode (default): every scenario starts its own three mock backends and its own proxy
# instance (so its own, fresh rate-limit state) on free 127.0.0.1 ports, from a config generated
# in a temporary directory; everything it started is stopped on exit. The directory (configs,
# logs, ab reports) is removed afterwards unless the scenario failed or KEEP_TMP=1.
# Binaries are built with `cargo build --workspace` when missing; after changing the code, build
# (or delete the binaries) before running.
#
# --compose: drives the docker-compose stack (`docker compose up -d --build` first) at
# COMPOSE_PROXY_URL / COMPOSE_ADMIN_URL (and the second replica, for cluster, at
# COMPOSE_PROXY2_URL / COMPOSE_ADMIN2_URL). config/docker.toml has the default limits and
# nothing exempt, and the host is one client with 100 requests per 60 s for everything; both
# replicas count it in Redis (rate_limit.store = "redis"), so restarting a proxy no longer
# hands out a fresh budget. Every scenario first gives the host a fresh one: it makes sure
# redis runs and answers, restarts the proxy container only when it is not ready or its store
# is not "up" (`docker compose restart proxy`; each restart waits out the proxy's drain, about
# 5 s), then clears every count with `docker compose exec redis redis-cli FLUSHALL`. Each keeps
# its volume within the budget:
# balance sends 90 requests, failover 90 requests of /delay/200 with -c 3 (slow enough to kill
# `backend2` with `docker compose kill backend2` mid-run and see the proxy mark it down while
# the load runs; it is started again afterwards),
# ratelimit clears the count before each of its two runs, graceful sends SIGTERM with
# `docker compose kill -s SIGTERM proxy`, reads the container's exit code and starts it again,
# routes uses config/docker.toml's groups and routes as they are and spends 46 of the host's
# 100 (15 static, 30 default, the /static/app.js probe); its /api/ requests spend the route's
# quota (per key, and 3 of the host IP's 20 per 10 s) instead. cluster restarts both replicas
# (fresh limiters of their own for phase 3) and clears the count before phases 1, 2 and 4.
# outlier paces its load (2 clients, 400 ms between requests each: about 5 per second while
# backend2 is out for config/docker.toml's base_ejection_seconds, 10) and clears the count again
# (FLUSHALL) whenever 70 requests were counted since the last time. The backends' ports are not
# published, so backend2's fault is set and cleared, and its /stats read, inside its container:
# `docker compose exec -T backend2 curl ... http://127.0.0.1:9000/_mock/fault` (curl is in the
# image for the health checks); the fault is cleared on exit too. It starts backend2 when it is
# stopped, and waits for it to come back when an earlier run left it ejected. The running proxy
# must have loaded config/docker.toml's [upstream.outlier] (after editing it: `docker compose
# restart proxy`, or `docker compose kill -s HUP proxy`). Ejection state is the proxy's own: a
# rerun started less than E after the last run's return (before backend2 served well for as
# long as it was out) sees it ejected for longer (base x times ejected), which the bounded
# waits allow (2 x E + 15 s).
#
# Settings (environment, defaults in brackets):
#   PROFILE [debug]            debug or release: where the binaries are looked for and built
#   PROXY_BIN [target/$PROFILE/proxy]  BACKEND_BIN [target/$PROFILE/mock-backend]
#                              (relative paths are relative to the repository root)
#   KEEP_TMP [0]               1 keeps the temporary directory even when everything passed
#   READY_TIMEOUT_SECONDS [30; 120 with --compose]  how long to wait for readiness
#   AB_TIMEOUT_SECONDS [300]   hard limit for one ab run
#   BALANCE_REQUESTS [300; 90]  BALANCE_CONCURRENCY [1]  BALANCE_TOLERANCE [0] (requests per backend)
#   RATELIMIT_CONCURRENCY ["1 10"]  ab -c values, one fresh limiter each
#   FAILOVER_REQUESTS [3000; 90]  FAILOVER_CONCURRENCY [6; 3]  FAILOVER_PATH [/; /delay/200]
#   FAILOVER_KILL_AFTER [a third of FAILOVER_REQUESTS]  requests answered before the kill
#   GRACEFUL_DELAY_MS [1500]   the in-flight request (/delay/MS)
#   GRACEFUL_GRACE_SECONDS [1]  GRACEFUL_TIMEOUT_SECONDS [5]  drain settings of the local proxy
#                              (with --compose they are read from config/docker.toml); the
#                              budget leaves a loaded machine seconds of room around the
#                              in-flight request, and an idle proxy exits without using it up
#   DRAIN_SLACK_MS [1000]      allowed on top of grace + timeout for the proxy to exit
#   COMPOSE_PROXY_URL [http://127.0.0.1:8080]  COMPOSE_ADMIN_URL [http://127.0.0.1:9091]
#   COMPOSE_PROXY2_URL [http://127.0.0.1:8081]  COMPOSE_ADMIN2_URL [http://127.0.0.1:9092]
#                              the second replica (cluster)
#   COMPOSE_REPLICA2 [proxy2]  COMPOSE_REDIS [redis]  their compose services (cluster)
#   COMPOSE_BACKENDS ["backend1 backend2 backend3"]  COMPOSE_BACKEND_PORT [9000]
#   FAILOVER_SERVICE [backend2]  the compose service killed by failover
#   ROUTES_API_REQUESTS [20]   /api/ requests of the split, one key (at most the quota, 20)
#   ROUTES_STATIC_REQUESTS [30; 15]  ROUTES_DEFAULT_REQUESTS [60; 30]  the split's /static/ and
#                              / requests (together with the probe at most the global 100);
#                              the default route's share per backend allows BALANCE_TOLERANCE
#   ROUTES_QUOTA_CONCURRENCY [5]  ab -c of the second key's 21 requests
#   CLUSTER_KILL_AFTER [60]    cluster: requests (alternating) before replica 2 is killed
#   CLUSTER_DOWN_REQUESTS [120]  cluster: requests to replica 1 while Redis is down
#   CLUSTER_STORE_TIMEOUT_MS [100]  cluster, local: rate_limit.redis.timeout_ms of the proxies
#                              (above the default 20 ms: a check that times out on a loaded
#                              machine is decided by on_error, and the counts would not be exact)
#   REDIS_BIN [redis-server]   cluster, local: the Redis server started
#   OUTLIER_FAILURES [5]  OUTLIER_EJECTION_SECONDS [5]  outlier, local: [upstream.outlier]
#                              consecutive_failures and base_ejection_seconds of the proxy
#                              (with --compose they are read from config/docker.toml)
#   OUTLIER_CONCURRENCY [4; 2]  outlier: clients of the load (c)
#   OUTLIER_PAUSE_MS [0; 400]  outlier: pause of each client after each answer
#   OUTLIER_WARMUP [150; 9]    outlier: requests answered before backend2 is made faulty
#   OUTLIER_RETURN_ANSWERS [30; 3]  outlier: 2xx from backend2 after its return before the load stops
#   OUTLIER_MAX_REQUESTS [2000000; 1000]  outlier: bound of the load (with AB_TIMEOUT_SECONDS)
#   OUTLIER_SERVICE [backend2]  outlier, --compose: the compose service made faulty
#
# Examples:
#   loadtest/run_ab.sh ratelimit
#   loadtest/run_ab.sh routes
#   loadtest/run_ab.sh cluster
#   loadtest/run_ab.sh outlier
#   loadtest/run_ab.sh all
#   PROFILE=release loadtest/run_ab.sh failover
#   loadtest/run_ab.sh all --compose

set -euo pipefail

LOADTEST_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$LOADTEST_DIR/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

SCENARIOS=(balance ratelimit failover graceful routes cluster outlier)

usage() {
    cat <<EOF
usage: loadtest/run_ab.sh SCENARIO [--compose]

SCENARIO: balance | ratelimit | failover | graceful | routes | cluster | outlier | all
--compose: drive the docker-compose stack instead of starting local processes

Settings are environment variables; see the comment at the top of $LOADTEST_DIR/run_ab.sh.
EOF
}

SCENARIO=
COMPOSE=0
for arg in "$@"; do
    case $arg in
    --compose) COMPOSE=1 ;;
    -h | --help)
        usage
        exit 0
        ;;
    balance | ratelimit | failover | graceful | routes | cluster | outlier | all)
        [[ -z $SCENARIO ]] || {
            usage >&2
            exit 2
        }
        SCENARIO=$arg
        ;;
    *)
        printf 'run_ab: unknown argument: %s\n' "$arg" >&2
        usage >&2
        exit 2
        ;;
    esac
done
[[ -n $SCENARIO ]] || {
    usage >&2
    exit 2
}

# ---------------------------------------------------------------------------------------------
# Settings

PROFILE=${PROFILE:-debug}
case $PROFILE in
debug | release) ;;
*) die "PROFILE must be debug or release, not '$PROFILE'" ;;
esac
PROXY_BIN=${PROXY_BIN:-target/$PROFILE/proxy}
BACKEND_BIN=${BACKEND_BIN:-target/$PROFILE/mock-backend}
AB_TIMEOUT_SECONDS=${AB_TIMEOUT_SECONDS:-300}
DRAIN_SLACK_MS=${DRAIN_SLACK_MS:-1000}
RATELIMIT_CONCURRENCY=${RATELIMIT_CONCURRENCY:-"1 10"}
BALANCE_CONCURRENCY=${BALANCE_CONCURRENCY:-1}
BALANCE_TOLERANCE=${BALANCE_TOLERANCE:-0}
GRACEFUL_DELAY_MS=${GRACEFUL_DELAY_MS:-1500}
COMPOSE_PROXY_URL=${COMPOSE_PROXY_URL:-http://127.0.0.1:8080}
COMPOSE_ADMIN_URL=${COMPOSE_ADMIN_URL:-http://127.0.0.1:9091}
COMPOSE_PROXY2_URL=${COMPOSE_PROXY2_URL:-http://127.0.0.1:8081}
COMPOSE_ADMIN2_URL=${COMPOSE_ADMIN2_URL:-http://127.0.0.1:9092}
COMPOSE_REPLICA2=${COMPOSE_REPLICA2:-proxy2}
COMPOSE_REDIS=${COMPOSE_REDIS:-redis}
COMPOSE_BACKENDS=${COMPOSE_BACKENDS:-"backend1 backend2 backend3"}
COMPOSE_BACKEND_PORT=${COMPOSE_BACKEND_PORT:-9000}
FAILOVER_SERVICE=${FAILOVER_SERVICE:-backend2}
ROUTES_API_REQUESTS=${ROUTES_API_REQUESTS:-20}
ROUTES_QUOTA_CONCURRENCY=${ROUTES_QUOTA_CONCURRENCY:-5}
CLUSTER_KILL_AFTER=${CLUSTER_KILL_AFTER:-60}
CLUSTER_DOWN_REQUESTS=${CLUSTER_DOWN_REQUESTS:-120}
CLUSTER_STORE_TIMEOUT_MS=${CLUSTER_STORE_TIMEOUT_MS:-100}
REDIS_BIN=${REDIS_BIN:-redis-server}
OUTLIER_FAILURES=${OUTLIER_FAILURES:-5}
OUTLIER_EJECTION_SECONDS=${OUTLIER_EJECTION_SECONDS:-5}
OUTLIER_SERVICE=${OUTLIER_SERVICE:-backend2}
if ((COMPOSE)); then
    READY_TIMEOUT_SECONDS=${READY_TIMEOUT_SECONDS:-120}
    BALANCE_REQUESTS=${BALANCE_REQUESTS:-90}
    FAILOVER_REQUESTS=${FAILOVER_REQUESTS:-90}
    FAILOVER_CONCURRENCY=${FAILOVER_CONCURRENCY:-3}
    FAILOVER_PATH=${FAILOVER_PATH:-/delay/200}
    ROUTES_STATIC_REQUESTS=${ROUTES_STATIC_REQUESTS:-15}
    ROUTES_DEFAULT_REQUESTS=${ROUTES_DEFAULT_REQUESTS:-30}
    OUTLIER_CONCURRENCY=${OUTLIER_CONCURRENCY:-2}
    OUTLIER_PAUSE_MS=${OUTLIER_PAUSE_MS:-400}
    OUTLIER_WARMUP=${OUTLIER_WARMUP:-9}
    OUTLIER_RETURN_ANSWERS=${OUTLIER_RETURN_ANSWERS:-3}
    OUTLIER_MAX_REQUESTS=${OUTLIER_MAX_REQUESTS:-1000}
else
    READY_TIMEOUT_SECONDS=${READY_TIMEOUT_SECONDS:-30}
    BALANCE_REQUESTS=${BALANCE_REQUESTS:-300}
    FAILOVER_REQUESTS=${FAILOVER_REQUESTS:-3000}
    FAILOVER_CONCURRENCY=${FAILOVER_CONCURRENCY:-6}
    FAILOVER_PATH=${FAILOVER_PATH:-/}
    ROUTES_STATIC_REQUESTS=${ROUTES_STATIC_REQUESTS:-30}
    ROUTES_DEFAULT_REQUESTS=${ROUTES_DEFAULT_REQUESTS:-60}
    OUTLIER_CONCURRENCY=${OUTLIER_CONCURRENCY:-4}
    OUTLIER_PAUSE_MS=${OUTLIER_PAUSE_MS:-0}
    OUTLIER_WARMUP=${OUTLIER_WARMUP:-150}
    OUTLIER_RETURN_ANSWERS=${OUTLIER_RETURN_ANSWERS:-30}
    OUTLIER_MAX_REQUESTS=${OUTLIER_MAX_REQUESTS:-2000000}
fi
FAILOVER_KILL_AFTER=${FAILOVER_KILL_AFTER:-$((FAILOVER_REQUESTS / 3))}
GRACEFUL_GRACE_SECONDS=${GRACEFUL_GRACE_SECONDS:-1}
GRACEFUL_TIMEOUT_SECONDS=${GRACEFUL_TIMEOUT_SECONDS:-5}

# The contract's default limit; ratelimit sends half as much again.
RATE_LIMIT=100
RATE_SENT=150
# The quota of the demo's route "api" (config/proxy.toml, config/docker.toml): ROUTE_QUOTA
# requests per ROUTE_QUOTA_WINDOW seconds per X-Api-Key; routes sends ROUTE_QUOTA_OVER more
# with its first key, and ROUTES_NOKEY requests without one.
ROUTE_QUOTA=20
ROUTE_QUOTA_WINDOW=10
ROUTE_QUOTA_OVER=5
ROUTES_NOKEY=3

for v in AB_TIMEOUT_SECONDS DRAIN_SLACK_MS BALANCE_REQUESTS BALANCE_CONCURRENCY BALANCE_TOLERANCE \
    FAILOVER_REQUESTS FAILOVER_CONCURRENCY FAILOVER_KILL_AFTER GRACEFUL_DELAY_MS \
    GRACEFUL_GRACE_SECONDS GRACEFUL_TIMEOUT_SECONDS READY_TIMEOUT_SECONDS COMPOSE_BACKEND_PORT \
    ROUTES_API_REQUESTS ROUTES_STATIC_REQUESTS ROUTES_DEFAULT_REQUESTS ROUTES_QUOTA_CONCURRENCY \
    CLUSTER_KILL_AFTER CLUSTER_DOWN_REQUESTS CLUSTER_STORE_TIMEOUT_MS OUTLIER_FAILURES \
    OUTLIER_EJECTION_SECONDS OUTLIER_CONCURRENCY OUTLIER_PAUSE_MS OUTLIER_WARMUP OUTLIER_RETURN_ANSWERS \
    OUTLIER_MAX_REQUESTS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, not '${!v}'"
done
for c in $RATELIMIT_CONCURRENCY; do
    [[ $c =~ ^[1-9][0-9]*$ ]] || die "RATELIMIT_CONCURRENCY must list whole numbers, not '$c'"
done
((BALANCE_REQUESTS > 0 && BALANCE_CONCURRENCY > 0 && FAILOVER_REQUESTS > 0 && FAILOVER_CONCURRENCY > 0)) ||
    die "request counts and concurrency must be at least 1"
((ROUTES_API_REQUESTS > 0 && ROUTES_STATIC_REQUESTS > 0 && ROUTES_DEFAULT_REQUESTS > 0 && ROUTES_QUOTA_CONCURRENCY > 0)) ||
    die "ROUTES_* request counts and concurrency must be at least 1"
((ROUTES_API_REQUESTS <= ROUTE_QUOTA)) ||
    die "ROUTES_API_REQUESTS must stay within the /api/ quota of one key ($ROUTE_QUOTA), not $ROUTES_API_REQUESTS"
# The static and default routes (and the one /static/ probe) spend the global limit.
((ROUTES_STATIC_REQUESTS + ROUTES_DEFAULT_REQUESTS + 1 <= RATE_LIMIT)) ||
    die "ROUTES_STATIC_REQUESTS + ROUTES_DEFAULT_REQUESTS must stay below the global limit ($RATE_LIMIT, one request is the probe)"
# Replica 2 must be killed while the budget lasts, so that what replica 1 admits after it shows
# the count it left behind.
((CLUSTER_KILL_AFTER >= 2 && CLUSTER_KILL_AFTER < RATE_LIMIT)) ||
    die "CLUSTER_KILL_AFTER must be 2..$((RATE_LIMIT - 1)) (both replicas used, and killed before the limit), not $CLUSTER_KILL_AFTER"
((CLUSTER_DOWN_REQUESTS > 0 && CLUSTER_STORE_TIMEOUT_MS > 0)) ||
    die "CLUSTER_DOWN_REQUESTS and CLUSTER_STORE_TIMEOUT_MS must be at least 1"
# The local proxy's [upstream.outlier] (config validation's ranges; 0 failures would turn
# ejection off, and the scenario needs the fault cleared while backend2 is still out).
((OUTLIER_FAILURES >= 1 && OUTLIER_FAILURES <= 1000)) ||
    die "OUTLIER_FAILURES must be 1..1000 (consecutive_failures; 0 turns ejection off), not $OUTLIER_FAILURES"
((OUTLIER_EJECTION_SECONDS >= 1 && OUTLIER_EJECTION_SECONDS <= 300)) ||
    die "OUTLIER_EJECTION_SECONDS must be 1..300 (base_ejection_seconds), not $OUTLIER_EJECTION_SECONDS"
((OUTLIER_CONCURRENCY > 0 && OUTLIER_WARMUP > 0 && OUTLIER_RETURN_ANSWERS > 0 && OUTLIER_MAX_REQUESTS > 0)) ||
    die "OUTLIER_CONCURRENCY, OUTLIER_WARMUP, OUTLIER_RETURN_ANSWERS and OUTLIER_MAX_REQUESTS must be at least 1"

# ---------------------------------------------------------------------------------------------
# Tools

need_tool ab "sudo apt-get install -y apache2-utils   (Fedora: sudo dnf install -y httpd-tools)"
need_tool curl "sudo apt-get install -y curl"
need_tool python3 "sudo apt-get install -y python3"
need_tool timeout "sudo apt-get install -y coreutils"

COMPOSE_CMD=()
if ((COMPOSE)); then
    need_tool docker "see https://docs.docker.com/engine/install/ (Debian/Ubuntu: sudo apt-get install -y docker.io docker-compose-v2)"
    if docker compose version >/dev/null 2>&1; then
        COMPOSE_CMD=(docker compose)
    elif command -v docker-compose >/dev/null 2>&1; then
        COMPOSE_CMD=(docker-compose)
    else
        die "Docker Compose is required. Install it with: sudo apt-get install -y docker-compose-v2   (or see https://docs.docker.com/compose/install/)"
    fi
fi

ensure_binaries() {
    [[ -x $PROXY_BIN && -x $BACKEND_BIN ]] && return 0
    need_tool cargo "curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh   (see https://rustup.rs)"
    local flags=(build --workspace)
    [[ $PROFILE == release ]] && flags+=(--release)
    note "$PROXY_BIN or $BACKEND_BIN missing: running cargo ${flags[*]}"
    cargo "${flags[@]}" || die "cargo ${flags[*]} failed"
    [[ -x $PROXY_BIN ]] || die "$PROXY_BIN is still missing after the build (check PROXY_BIN)"
    [[ -x $BACKEND_BIN ]] || die "$BACKEND_BIN is still missing after the build (check BACKEND_BIN)"
}

# ---------------------------------------------------------------------------------------------
# State of one scenario run.

PROXY_URL=
ADMIN_URL=
PROXY_PID=
PROXY_LOG=
PROXY_INSTANCE=0
BACKEND_PIDS=()
STARTED_DIED=0

# ---- local stack ----------------------------------------------------------------------------

# backend_up LOG PID: the backend printed its address (or died: STARTED_DIED=1).
backend_up() {
    alive "$2" || {
        STARTED_DIED=1
        return 0
    }
    grep -q '^mock-backend .* listening on ' "$1"
}

# start_backends: three mock backends on 127.0.0.1 port 0; the OS picks the port, the backend
# prints it. Sets BACKEND_LABELS, BACKEND_NAMES, BACKEND_PIDS.
start_backends() {
    local i log addr
    BACKEND_LABELS=() BACKEND_NAMES=() BACKEND_PIDS=()
    for i in 1 2 3; do
        spawn "$WORK_DIR/backend$i.log" "$BACKEND_BIN" --listen 127.0.0.1:0 --name "backend$i"
        BACKEND_PIDS+=("$SPAWNED_PID")
        BACKEND_NAMES+=("backend$i")
    done
    for i in 1 2 3; do
        log=$WORK_DIR/backend$i.log
        STARTED_DIED=0
        poll $((READY_TIMEOUT_SECONDS * 1000)) 0.05 backend_up "$log" "${BACKEND_PIDS[i - 1]}" ||
            die "backend$i did not print its address within ${READY_TIMEOUT_SECONDS}s (log: $log)"
        ((STARTED_DIED == 0)) || die "backend$i exited at start: $(tail -n 5 "$log")"
        addr=$(sed -n 's/^mock-backend .* listening on \(127\.0\.0\.1:[0-9][0-9]*\).*$/\1/p' "$log" | head -n 1)
        [[ -n $addr ]] || die "cannot read backend$i's address from $log"
        poll $((READY_TIMEOUT_SECONDS * 1000)) 0.05 curl -fs -o /dev/null --max-time 1 "http://$addr/health" ||
            die "backend$i ($addr) does not answer /health"
        BACKEND_LABELS+=("$addr")
    done
}

# toml_list LABEL...: a TOML list of strings ("a", "b").
toml_list() {
    local b list=""
    for b in "$@"; do
        list+="${list:+, }\"$b\""
    done
    printf '%s\n' "$list"
}

# write_config FILE LIMITER GRACE TIMEOUT: a proxy config for this run.
#   LIMITER: "exempt" (loopback never limited), "default" (the default 100 per 60 s), "redis"
#   (the default limit counted in the redis-server at REDIS_URL, on_error "local") or
#   "routes" (the default limit, and the demo's groups and routes of config/proxy.toml: "api" =
#   backend1 + backend2, least requests, for /api/ with a quota of ROUTE_QUOTA per
#   ROUTE_QUOTA_WINDOW s per X-Api-Key; "static" = backend3 for /static/, prefix stripped;
#   everything else to "default", all three) or "outlier" (as "exempt", with [upstream.outlier]:
#   OUTLIER_FAILURES failures in a row eject a backend for OUTLIER_EJECTION_SECONDS, and
#   [upstream.retry] left at its default conditions, which do not retry a 500).
write_config() {
    local file=$1 limiter=$2 grace=$3 timeout=$4 list
    list=$(toml_list "${BACKEND_LABELS[@]}")
    {
        printf '# Generated by loadtest/run_ab.sh %s (instance %s).\n\n' "$SCENARIO" "$PROXY_INSTANCE"
        printf '[server]\nlisten = "127.0.0.1:%s"\nthreads = 2\n' "$PROXY_PORT"
        printf 'grace_period_seconds = %s\ngraceful_shutdown_timeout_seconds = %s\n' "$grace" "$timeout"
        printf 'upgrade_sock = "%s/proxy%s-upgrade.sock"\n' "$WORK_DIR" "$PROXY_INSTANCE"
        printf 'pid_file = "%s/proxy%s.pid"\n\n' "$WORK_DIR" "$PROXY_INSTANCE"
        printf '[upstream]\nbackends = [%s]\n\n' "$list"
        printf '[upstream.health_check]\n'
        printf '# Far above what a probe needs: a slow probe on a loaded machine must not take a live\n'
        printf '# backend out of rotation (and spoil an exact split). A killed one is refused at once.\n'
        printf 'timeout_ms = 2000\n\n'
        if [[ $limiter == outlier ]]; then
            printf '[upstream.outlier]\n'
            printf '# Short, so that the scenario sees the backend come back within seconds.\n'
            printf 'consecutive_failures = %s\nbase_ejection_seconds = %s\nmax_ejected_percent = 50\n\n' \
                "$OUTLIER_FAILURES" "$OUTLIER_EJECTION_SECONDS"
            printf '[upstream.retry]\n'
            printf '# The defaults: a 500 answer is never retried, so each one reaches the client.\n'
            printf 'on = ["connect-failure", "reset"]\n\n'
        fi
        if [[ $limiter == routes ]]; then
            printf '[upstreams.api]\nbackends = [%s]\nbalance = "least_requests"\n\n' \
                "$(toml_list "${BACKEND_LABELS[0]}" "${BACKEND_LABELS[1]}")"
            printf '[upstreams.static]\nbackends = [%s]\n\n' "$(toml_list "${BACKEND_LABELS[2]}")"
            printf '[[routes]]\nname = "api"\npath_prefix = "/api/"\nupstream = "api"\n'
            printf 'rate_limit = { requests = %s, window_seconds = %s, key = "header:X-Api-Key" }\n' \
                "$ROUTE_QUOTA" "$ROUTE_QUOTA_WINDOW"
            printf 'headers = { response = { "X-Route" = "api" } }\n\n'
            printf '[[routes]]\nname = "static"\npath_prefix = "/static/"\nupstream = "static"\nstrip_prefix = true\n\n'
            printf '[[routes]]\nname = "default"\nupstream = "default"\n\n'
        fi
        printf '[rate_limit]\n'
        if [[ $limiter == exempt || $limiter == outlier ]]; then
            printf '# The load generator is on loopback: never limited, so volume is not throttled.\n'
            printf 'exempt = ["127.0.0.0/8", "::1/128"]\n\n'
        elif [[ $limiter == redis ]]; then
            printf '# Defaults (100 requests per 60 s per client, nothing exempt), counted in Redis: one\n'
            printf '# budget per client for every replica.\n'
            printf 'store = "redis"\nheaders = "both"\n\n'
            printf '[rate_limit.redis]\nurl = "%s"\ntimeout_ms = %s\non_error = "local"\n\n' \
                "$REDIS_URL" "$CLUSTER_STORE_TIMEOUT_MS"
        else
            printf '# Defaults: 100 requests per 60 s per client, nothing exempt.\n\n'
        fi
        printf '[admin]\nlisten = "127.0.0.1:%s"\n\n' "$ADMIN_PORT"
        printf '[log]\nlevel = "info"\nfile = "%s"\naccess_log = true\n' "$PROXY_LOG"
    } >"$file"
}

# proxy_up: ready with every backend healthy and the proxy port accepting; or it failed to
# start: exited, or says a port is taken (Pingora keeps retrying such a bind; a port picked by
# free_ports can be taken before the proxy binds it).
proxy_up() {
    if ! alive "$PROXY_PID" || grep -qiE 'is in use|address in use|already in use' "$PROXY_OUT"; then
        STARTED_DIED=1
        return 0
    fi
    ready_with "$ADMIN_URL" "${#BACKEND_LABELS[@]}" && tcp_open 127.0.0.1 "$PROXY_PORT"
}

# start_proxy LIMITER GRACE TIMEOUT: a new proxy instance on free ports (a port taken between
# picking and binding makes it fail; then it is tried again with new ports, three times at most).
PROXY_OUT=
start_proxy() {
    local limiter=$1 grace=$2 timeout=$3 attempt cfg out
    for attempt in 1 2 3; do
        PROXY_INSTANCE=$((PROXY_INSTANCE + 1))
        read -r PROXY_PORT ADMIN_PORT <<<"$(free_ports 2)"
        PROXY_URL=http://127.0.0.1:$PROXY_PORT
        ADMIN_URL=http://127.0.0.1:$ADMIN_PORT
        cfg=$WORK_DIR/proxy$PROXY_INSTANCE.toml
        out=$WORK_DIR/proxy$PROXY_INSTANCE.out
        PROXY_OUT=$out
        PROXY_LOG=$WORK_DIR/proxy$PROXY_INSTANCE.log
        write_config "$cfg" "$limiter" "$grace" "$timeout"
        "$PROXY_BIN" -t -c "$cfg" >"$out" 2>&1 || die "the generated config is rejected: $(cat "$out")"
        spawn "$out" "$PROXY_BIN" -c "$cfg"
        PROXY_PID=$SPAWNED_PID
        STARTED_DIED=0
        poll $((READY_TIMEOUT_SECONDS * 1000)) 0.1 proxy_up ||
            die "the proxy was not ready (with ${#BACKEND_LABELS[@]} healthy backends) within ${READY_TIMEOUT_SECONDS}s; /ready says: $(curl -s --max-time 2 "$ADMIN_URL/ready" || true)"
        if ((STARTED_DIED == 0)); then
            # Connected to Redis before the first request (else on_error would decide it).
            [[ $limiter != redis ]] || poll $((READY_TIMEOUT_SECONDS * 1000)) 0.05 store_state_is "$ADMIN_URL" up ||
                die "the proxy's rate-limit store is not up within ${READY_TIMEOUT_SECONDS}s; /ready says: $(curl -s --max-time 2 "$ADMIN_URL/ready" || true)"
            return 0
        fi
        stop_pid "$PROXY_PID"
        warn "the proxy failed to start (attempt $attempt): $(tail -n 3 "$out")"
    done
    die "the proxy did not start; see $WORK_DIR"
}

# ---- compose stack --------------------------------------------------------------------------

compose() { "${COMPOSE_CMD[@]}" -f "$ROOT/docker-compose.yml" "$@"; }

# compose_do ARGS...: compose ARGS with its output in the work dir; on failure the last lines
# are shown and the status is 1.
compose_do() {
    compose "$@" >"$WORK_DIR/compose.log" 2>&1 && return 0
    warn "docker compose $* failed: $(tail -n 3 "$WORK_DIR/compose.log" | tr '\n' ' ')"
    return 1
}

compose_labels() {
    local s
    BACKEND_LABELS=() BACKEND_NAMES=()
    for s in $COMPOSE_BACKENDS; do
        BACKEND_NAMES+=("$s")
        BACKEND_LABELS+=("$s:$COMPOSE_BACKEND_PORT")
    done
}

# store_settled ADMIN_URL: the proxy's rate-limit store is not connecting or down ("up", or a
# local store: no state).
store_settled() {
    local state
    state=$(store_state "$1")
    [[ $state != connecting && $state != down ]]
}

# compose_ready HEALTHY [ADMIN_URL PROXY_URL]: /ready with HEALTHY healthy backends, the proxy
# port accepting and the rate-limit store settled (default: the proxy service).
compose_ready() {
    local admin=${2:-$ADMIN_URL} url=${3:-$PROXY_URL} hostport
    hostport=${url#*://}
    hostport=${hostport%%/*}
    ready_with "$admin" "$1" && tcp_open "${hostport%:*}" "${hostport##*:}" && store_settled "$admin"
}

compose_wait_ready() {
    local admin=${2:-$ADMIN_URL}
    poll $((READY_TIMEOUT_SECONDS * 1000)) 0.5 compose_ready "$@" ||
        die "the compose proxy at $admin was not ready with $1 healthy backends (and its store up) within ${READY_TIMEOUT_SECONDS}s; /ready says: $(curl -s --max-time 2 "$admin/ready" || true)"
}

# compose_redis_cli ARGS...: redis-cli inside the redis container (its port is not published).
compose_redis_cli() {
    compose exec -T "$COMPOSE_REDIS" redis-cli "$@" 2>/dev/null | tr -d '\r'
}

compose_redis_up() { [[ $(compose_redis_cli PING) == PONG ]]; }

# compose_redis_running: redis started (a run stopped half-way may have left it stopped) and
# answering PING.
compose_redis_running() {
    compose_redis_up && return 0
    note "starting $COMPOSE_REDIS (docker compose start $COMPOSE_REDIS)"
    compose_do start "$COMPOSE_REDIS" || die "could not start $COMPOSE_REDIS"
    poll $((READY_TIMEOUT_SECONDS * 1000)) 0.5 compose_redis_up ||
        die "$COMPOSE_REDIS does not answer PING within ${READY_TIMEOUT_SECONDS}s (docker compose logs $COMPOSE_REDIS)"
}

# compose_flush: every client's count cleared in the shared store (FLUSHALL).
compose_flush() {
    local answer
    note "clearing the shared rate-limit counts (docker compose exec $COMPOSE_REDIS redis-cli FLUSHALL)"
    answer=$(compose_redis_cli FLUSHALL)
    [[ $answer == OK ]] || die "FLUSHALL in $COMPOSE_REDIS failed: ${answer:-no answer}"
}

# compose_fresh_budget: a fresh rate-limit budget for the host. The replicas count in Redis, so
# a restart of the proxy no longer resets it: Redis running, the proxy ready with its store
# "up" (restarted only when it is not: stopped, or its store down, which only a request would
# probe again; a proxy with a local store, which has no state, is restarted as before for its
# fresh limiter), then FLUSHALL.
compose_fresh_budget() {
    local state
    compose_redis_running
    state=$(store_state "$ADMIN_URL")
    if [[ -z $state || $state == down ]]; then
        note "restarting the proxy container (docker compose restart proxy): its rate-limit store is ${state:-local or not answering}"
        compose_do restart proxy || die "could not restart the proxy container"
    fi
    compose_wait_ready "${#BACKEND_LABELS[@]}"
    compose_flush
}

# Reads an integer key from config/docker.toml (first occurrence).
toml_int() {
    awk -v key="$2" -F= '{ k = $1; gsub(/[[:space:]]/, "", k) }
        k == key { v = $2; sub(/#.*/, "", v); gsub(/[^0-9]/, "", v); print v; exit }' "$1"
}

# ---- either ---------------------------------------------------------------------------------

# stack_up LIMITER GRACE TIMEOUT: backends (once) and a fresh proxy; with --compose the proxy
# container ready and the host's budget fresh (compose_fresh_budget; the compose config decides
# the limiter, drain settings, groups and routes).
stack_up() {
    if ((COMPOSE)); then
        compose_fresh_budget
    else
        ((${#BACKEND_PIDS[@]})) || start_backends
        if [[ -n $PROXY_PID ]]; then
            stop_pid "$PROXY_PID"
        fi
        start_proxy "$@"
    fi
}

# backend_name LABEL: the name printed for a backend address.
backend_name() {
    local i
    for i in "${!BACKEND_LABELS[@]}"; do
        [[ ${BACKEND_LABELS[i]} == "$1" ]] && {
            printf '%s\n' "${BACKEND_NAMES[i]}"
            return 0
        }
    done
    printf '%s\n' "${1:-?}"
}

show_backends() {
    local i line=""
    for i in "${!BACKEND_LABELS[@]}"; do
        line+="${line:+, }${BACKEND_NAMES[i]}=${BACKEND_LABELS[i]}"
    done
    say "backends: $line; proxy $PROXY_URL, admin $ADMIN_URL"
}

# run_ab OUT ARGS...: ab -q -l -r ARGS (variable lengths accepted, receive errors counted instead
# of aborting), bounded by AB_TIMEOUT_SECONDS; sets AB_RC and AB_* from its report.
run_ab() {
    local out=$1
    shift
    AB_RC=0
    timeout "$AB_TIMEOUT_SECONDS" ab -q -l -r -s 30 "$@" >"$out" 2>&1 || AB_RC=$?
    ab_summary "$out"
    ((AB_RC == 0)) || warn "ab exited with $AB_RC: $(grep -v '^$' "$out" | tail -n 2 | tr '\n' ' ')"
}

# Checks shared by the scenarios on an ab run of N requests.
expect_ab_clean() {
    expect_eq "ab exit status" "$AB_RC" 0
    expect_eq "ab complete requests" "$AB_COMPLETE" "$1"
    expect_eq "ab failed requests" "$AB_FAILED" 0
}

scenario_title() {
    say "== $SCENARIO$( ((COMPOSE)) && printf ' (compose)'): $* =="
}

# ---------------------------------------------------------------------------------------------
# Scenarios

scenario_balance() {
    local n=$BALANCE_REQUESTS c=$BALANCE_CONCURRENCY live lo hi i
    stack_up exempt 0 1
    live=${#BACKEND_LABELS[@]}
    scenario_title "$n requests, ab -c $c, $live live backends"
    show_backends
    scrape "$ADMIN_URL" "$WORK_DIR/m0"
    run_ab "$WORK_DIR/balance.ab" -n "$n" -c "$c" "$PROXY_URL/"
    scrape_settled "$ADMIN_URL" "$WORK_DIR/m1" "$(requests_total "$WORK_DIR/m0")" "$n"
    delta "$WORK_DIR/m0" "$WORK_DIR/m1"
    table_header
    table_row "ab -c $c" "$n" "$AB_FAILED" "$AB_RPS"

    expect_ab_clean "$n"
    expect_eq "ab non-2xx responses" "$AB_NON2XX" 0
    expect_eq "2xx counted by the proxy" "$D_2XX" "$n"
    expect_eq "rate limited (gateway_rate_limited_total)" "$D_LIMITED" 0
    lo=$((n / live - BALANCE_TOLERANCE))
    hi=$(((n + live - 1) / live + BALANCE_TOLERANCE))
    for i in "${!BACKEND_LABELS[@]}"; do
        expect_range "${BACKEND_NAMES[i]} share" "${D_BACKEND[i]:-0}" "$lo" "$hi"
    done
    expect_eq "answered by no backend or an unlisted one" $((D_NONE + D_UNLISTED)) 0
}

scenario_ratelimit() {
    local c title=""
    for c in $RATELIMIT_CONCURRENCY; do title+="${title:+, }-c $c"; done
    scenario_title "$RATE_SENT requests from one client, default limit $RATE_LIMIT per 60 s (ab $title, fresh limiter each)"
    local first=1 want_2xx=$RATE_LIMIT want_429=$((RATE_SENT - RATE_LIMIT))
    local rows=() headers=""
    for c in $RATELIMIT_CONCURRENCY; do
        stack_up default 0 1
        ((first)) && show_backends
        scrape "$ADMIN_URL" "$WORK_DIR/m0.c$c"
        run_ab "$WORK_DIR/ratelimit.c$c.ab" -n "$RATE_SENT" -c "$c" "$PROXY_URL/"
        scrape_settled "$ADMIN_URL" "$WORK_DIR/m1.c$c" "$(requests_total "$WORK_DIR/m0.c$c")" "$RATE_SENT"
        delta "$WORK_DIR/m0.c$c" "$WORK_DIR/m1.c$c"
        ((first)) && table_header
        table_row "ab -c $c" "$RATE_SENT" "$AB_FAILED" "$AB_RPS"
        rows+=("$c $AB_RC $AB_COMPLETE $AB_FAILED $AB_NON2XX $D_2XX $D_429 $D_5XX $D_OTHER $D_LIMITED")
        if ((first)); then
            # One more request, after the measurement: what a limited client is told.
            headers=$(curl -s -o /dev/null -D - --max-time 5 "$PROXY_URL/" |
                tr -d '\r' | grep -i -E '^(HTTP/|ratelimit|retry-after)' | paste -sd ' ' || true)
        fi
        first=0
    done
    [[ -n $headers ]] && say "a further request gets: $headers"
    local row rc complete failed non2xx ok limited server other counted
    for row in "${rows[@]}"; do
        read -r c rc complete failed non2xx ok limited server other counted <<<"$row"
        AB_RC=$rc AB_COMPLETE=$complete AB_FAILED=$failed
        say " ab -c $c:"
        expect_ab_clean "$RATE_SENT"
        expect_eq "ab non-2xx responses" "$non2xx" "$want_429"
        expect_eq "2xx" "$ok" "$want_2xx"
        expect_eq "429" "$limited" "$want_429"
        expect_eq "5xx and other statuses" $((server + other)) 0
        expect_eq "gateway_rate_limited_total increase" "$counted" "$want_429"
    done
}

# load_progress BASE WANT AB_PID: WANT requests answered since BASE, or ab ended (LOAD_ENDED=1).
LOAD_ENDED=0
LOAD_DONE=0
load_progress() {
    local now
    alive "$3" || {
        LOAD_ENDED=1
        return 0
    }
    now=$(curl -s --max-time 2 "$ADMIN_URL/metrics" | requests_total -) || return 1
    LOAD_DONE=$((now - $1))
    ((LOAD_DONE >= $2))
}

# backend_up_value FILE LABEL: gateway_backend_up{backend="LABEL"} in a scrape (empty when absent).
backend_up_value() {
    awk -v want="backend=\"$2\"" 'index($0, "gateway_backend_up{") == 1 && index($0, want) { print $NF; exit }' "$1"
}

# victim_marked_down LABEL FILE: the proxy's /metrics say gateway_backend_up{backend="LABEL"} 0;
# that scrape stays in FILE (the split point of the table: its counters are read at that moment).
victim_marked_down() {
    curl -fsS --max-time 2 "$ADMIN_URL/metrics" >"$2.tmp" 2>/dev/null || return 1
    [[ $(backend_up_value "$2.tmp" "$1") == 0 ]] || return 1
    mv -f -- "$2.tmp" "$2"
}

VICTIM_KILLED=0
compose_restore_victim() {
    ((VICTIM_KILLED)) || return 0
    note "starting $FAILOVER_SERVICE again (docker compose start $FAILOVER_SERVICE)"
    compose_do start "$FAILOVER_SERVICE" && VICTIM_KILLED=0
}

# The table is split at two moments, each read from the proxy's /metrics: when the kill returned
# (`docker compose kill` returns once the container has stopped; locally the killed process has
# been reaped), and when the proxy marked the victim down (gateway_backend_up 0, the scrape that
# showed it). The victim can answer nothing after the first; requests it was sent until the
# second fail to connect and are retried on another backend, so it must be credited with none.
scenario_failover() {
    local n=$FAILOVER_REQUESTS c=$FAILOVER_CONCURRENCY path=$FAILOVER_PATH
    local victim=1 victim_name victim_label base ab_pid t_kill down_ms="" load_at_down="" i
    if ((COMPOSE)); then
        # A previous run may have left the victim down.
        compose_do start "$FAILOVER_SERVICE" || die "could not start $FAILOVER_SERVICE"
        for i in "${!BACKEND_NAMES[@]}"; do
            [[ ${BACKEND_NAMES[i]} == "$FAILOVER_SERVICE" ]] && victim=$i
        done
    fi
    stack_up exempt 0 1
    victim_name=${BACKEND_NAMES[victim]}
    victim_label=${BACKEND_LABELS[victim]}
    scenario_title "ab -k -n $n -c $c $path; $victim_name SIGKILLed after $FAILOVER_KILL_AFTER answers"
    show_backends
    scrape "$ADMIN_URL" "$WORK_DIR/m0"
    base=$(requests_total "$WORK_DIR/m0")
    spawn "$WORK_DIR/failover.ab" timeout "$AB_TIMEOUT_SECONDS" ab -q -l -r -k -s 30 -n "$n" -c "$c" "$PROXY_URL$path"
    ab_pid=$SPAWNED_PID

    LOAD_ENDED=0
    poll $((AB_TIMEOUT_SECONDS * 1000)) 0.02 load_progress "$base" "$FAILOVER_KILL_AFTER" "$ab_pid" ||
        die "the load did not reach $FAILOVER_KILL_AFTER answered requests"
    ((LOAD_DONE >= n)) && LOAD_ENDED=1
    if ((LOAD_ENDED)); then
        fail_line "the load ended before the kill could land ($LOAD_DONE of $n answered); raise FAILOVER_REQUESTS"
        scrape "$ADMIN_URL" "$WORK_DIR/m_kill"
    elif ((COMPOSE)); then
        VICTIM_KILLED=1
        CLEANUP_HOOKS+=(compose_restore_victim)
        compose_do kill "$FAILOVER_SERVICE" || die "could not kill $FAILOVER_SERVICE"
        t_kill=$(now_ms)
        scrape "$ADMIN_URL" "$WORK_DIR/m_kill"
        say "killed $victim_name ($victim_label) with docker compose kill (SIGKILL); $(($(requests_total "$WORK_DIR/m_kill") - base)) requests answered when it returned"
    else
        # Reaped at once, with stderr closed, so bash reports no "Killed" job.
        { kill -KILL "${BACKEND_PIDS[victim]}" && wait "${BACKEND_PIDS[victim]}"; } 2>/dev/null || true
        t_kill=$(now_ms)
        scrape "$ADMIN_URL" "$WORK_DIR/m_kill"
        say "killed $victim_name ($victim_label, pid ${BACKEND_PIDS[victim]}) with SIGKILL; $(($(requests_total "$WORK_DIR/m_kill") - base)) requests answered when it was reaped"
    fi
    if ((!LOAD_ENDED)); then
        if poll 10000 0.05 victim_marked_down "$victim_label" "$WORK_DIR/m_down"; then
            down_ms=$(($(now_ms) - t_kill))
            load_at_down=$(($(requests_total "$WORK_DIR/m_down") - base))
        fi
    fi
    # Without a "marked down" moment the last two rows are one: from the kill to the end.
    [[ -f $WORK_DIR/m_down ]] || cp "$WORK_DIR/m_kill" "$WORK_DIR/m_down"

    wait_exit "$ab_pid" $((AB_TIMEOUT_SECONDS * 1000 + 5000))
    AB_RC=$EXIT_RC
    ab_summary "$WORK_DIR/failover.ab"
    ((AB_RC == 0)) || warn "ab exited with $AB_RC: $(grep -v '^$' "$WORK_DIR/failover.ab" | tail -n 2 | tr '\n' ' ')"
    scrape_settled "$ADMIN_URL" "$WORK_DIR/m_end" "$base" "$n"

    table_header
    delta "$WORK_DIR/m0" "$WORK_DIR/m_kill"
    local before_victim=${D_BACKEND[victim]:-0}
    table_row "before kill" "$D_TOTAL" - -
    delta "$WORK_DIR/m_kill" "$WORK_DIR/m_down"
    local between_victim=${D_BACKEND[victim]:-0}
    table_row "kill..marked down" "$D_TOTAL" - -
    delta "$WORK_DIR/m_down" "$WORK_DIR/m_end"
    local after_total=$D_TOTAL after_victim=${D_BACKEND[victim]:-0}
    table_row "after marked down" "$D_TOTAL" - -
    delta "$WORK_DIR/m0" "$WORK_DIR/m_end"
    table_row "total" "$n" "$AB_FAILED" "$AB_RPS"
    say "retried on another backend: $D_RETRIES (gateway_upstream_retries_total)"
    if [[ -n $down_ms ]]; then
        say "the proxy marked $victim_name down (gateway_backend_up 0) $(secs "$down_ms")s after the kill returned, with $load_at_down of $n requests answered"
    fi

    expect_ab_clean "$n"
    expect_eq "ab non-2xx responses" "$AB_NON2XX" 0
    expect_eq "2xx counted by the proxy" "$D_2XX" "$n"
    expect_eq "5xx and other statuses" $((D_5XX + D_OTHER + D_429)) 0
    expect_true "$victim_name answered requests before the kill" $((before_victim > 0 ? 0 : 1)) "it answered none"
    if ((!LOAD_ENDED)); then
        expect_true "the proxy marked $victim_name down (gateway_backend_up 0 on /metrics)" \
            "$([[ -n $down_ms ]] && echo 0 || echo 1)" "still 1 on /metrics 10 s after the kill"
        expect_eq "$victim_name answers between the kill and marked down" "$between_victim" 0
        expect_eq "$victim_name answers after marked down" "$after_victim" 0
        expect_true "requests were answered after $victim_name was marked down" $((after_total > 0 ? 0 : 1)) \
            "none were: the load ended first (raise FAILOVER_REQUESTS or slow FAILOVER_PATH)"
    fi
    if ((COMPOSE)); then
        compose_restore_victim || warn "could not start $FAILOVER_SERVICE again"
        compose_wait_ready "${#BACKEND_LABELS[@]}"
    fi
}

# slow_in_flight CURL_PID: the proxy has a request in flight (or the curl already ended).
slow_in_flight() {
    local n
    alive "$1" || return 0
    n=$(inflight "$ADMIN_URL")
    [[ -n $n ]] && ((n >= 1))
}

# refused: a new request gets no HTTP answer at all (connection refused or closed).
refused() {
    [[ $(http_code "$PROXY_URL/" --max-time 1) == 000 ]]
}

PROXY_STOPPED=0
compose_restore_proxy() {
    ((PROXY_STOPPED)) || return 0
    note "starting the proxy container again (docker compose start proxy)"
    compose_do start proxy && PROXY_STOPPED=0
}

container_running() {
    [[ $(docker inspect -f '{{.State.Running}}' "$1" 2>/dev/null) == true ]]
}

container_stopped() { ! container_running "$1"; }

scenario_graceful() {
    local grace timeout delay=$GRACEFUL_DELAY_MS budget slow_pid t0 refused_ms="" cid=""
    local exit_rc exit_ms code time_total upstream slow_start ended
    if ((COMPOSE)); then
        grace=$(toml_int config/docker.toml grace_period_seconds)
        timeout=$(toml_int config/docker.toml graceful_shutdown_timeout_seconds)
        [[ -n $grace && -n $timeout ]] || die "cannot read the drain settings from config/docker.toml"
    else
        grace=$GRACEFUL_GRACE_SECONDS
        timeout=$GRACEFUL_TIMEOUT_SECONDS
    fi
    budget=$(((grace + timeout) * 1000 + DRAIN_SLACK_MS))
    stack_up exempt "$grace" "$timeout"
    scenario_title "SIGTERM while /delay/$delay is in flight; drain = grace ${grace}s + timeout ${timeout}s"
    show_backends
    if ((COMPOSE)); then
        cid=$(compose ps -q proxy 2>/dev/null) || true
        [[ -n $cid ]] || die "no proxy container (docker compose ps -q proxy)"
    fi

    slow_start=$(now_ms)
    spawn "$WORK_DIR/slow.out" curl -sS -o "$WORK_DIR/slow.body" -D "$WORK_DIR/slow.headers" \
        --stderr "$WORK_DIR/slow.err" -w '%{http_code} %{time_total}\n' --max-time 60 "$PROXY_URL/delay/$delay"
    slow_pid=$SPAWNED_PID
    poll 5000 0.02 slow_in_flight "$slow_pid" || die "the slow request never showed up in gateway_inflight_requests"
    alive "$slow_pid" || die "the slow request ended before SIGTERM could be sent: $(cat "$WORK_DIR/slow.out")"

    t0=$(now_ms)
    if ((COMPOSE)); then
        PROXY_STOPPED=1
        CLEANUP_HOOKS+=(compose_restore_proxy)
        compose_do kill -s SIGTERM proxy || die "could not send SIGTERM to the proxy container"
    else
        kill -TERM "$PROXY_PID"
    fi
    say "SIGTERM sent to the proxy with the slow request in flight"
    # Bounded, and ends at the first refusal (an exited proxy refuses too).
    if poll 5000 0.05 refused; then
        refused_ms=$(($(now_ms) - t0))
    fi

    if ((COMPOSE)); then
        poll $((budget + 10000)) 0.1 container_stopped "$cid" || true
        exit_ms=$(($(now_ms) - t0))
        if container_running "$cid"; then
            exit_rc=running
        else
            exit_rc=$(docker inspect -f '{{.State.ExitCode}}' "$cid" 2>/dev/null || echo unknown)
        fi
    else
        wait_exit "$PROXY_PID" $((budget + 10000))
        exit_ms=$(($(now_ms) - t0))
        exit_rc=$EXIT_RC
        ((EXIT_RC == 124)) && exit_rc=running
    fi

    wait_exit "$slow_pid" 65000
    read -r code time_total <"$WORK_DIR/slow.out" || true
    code=${code:-000}
    upstream=$(tr -d '\r' <"$WORK_DIR/slow.headers" 2>/dev/null |
        awk 'tolower(substr($0, 1, 11)) == "x-upstream:" { sub(/^[^:]*:[ \t]*/, ""); print; exit }')

    # The table from the client's view (the proxy's /metrics are gone with it).
    D_2XX=0 D_429=0 D_5XX=0 D_OTHER=0 D_NONE=0 D_BACKEND=()
    local failed=0 i
    case $code in
    2??) D_2XX=1 ;;
    429) D_429=1 ;;
    5??) D_5XX=1 ;;
    000) failed=1 ;;
    *) D_OTHER=1 ;;
    esac
    for i in "${!BACKEND_LABELS[@]}"; do
        D_BACKEND+=("$([[ ${BACKEND_LABELS[i]} == "$upstream" ]] && echo 1 || echo 0)")
    done
    [[ -z $upstream && $failed == 0 ]] && D_NONE=1
    table_header
    table_row "/delay/$delay" 1 "$failed" -
    # When it ended, counted from SIGTERM (curl's own duration, from just before its start).
    ended=$(awk -v t="${time_total:-0}" -v s="$slow_start" -v k="$t0" 'BEGIN { printf "%d", s + t * 1000 - k }')
    say "slow request: status $code after ${time_total:-?}s, $(secs "$((ended < 0 ? 0 : ended))")s after SIGTERM${upstream:+, X-Upstream $upstream ($(backend_name "$upstream"))}$([[ -s $WORK_DIR/slow.err ]] && printf '; %s' "$(tr '\n' ' ' <"$WORK_DIR/slow.err")")"
    say "proxy: exit status $exit_rc $(secs "$exit_ms")s after SIGTERM (allowed: ${grace}s + ${timeout}s + $(secs "$DRAIN_SLACK_MS")s)"
    if [[ -n $refused_ms ]]; then
        say "new connections refused $(secs "$refused_ms")s after SIGTERM"
    fi

    expect_eq "in-flight request status" "$code" 200
    expect_true "new connections refused after SIGTERM" "$([[ -n $refused_ms ]] && echo 0 || echo 1)" "still answered 5 s after SIGTERM"
    expect_eq "proxy exit status" "$exit_rc" 0
    expect_true "proxy exited within its drain time ($(secs "$budget")s)" $((exit_ms <= budget ? 0 : 1)) "took $(secs "$exit_ms")s"
    if ((COMPOSE)); then
        compose_restore_proxy || warn "could not start the proxy container again"
        compose_wait_ready "${#BACKEND_LABELS[@]}"
    fi
}

# ---- routes ---------------------------------------------------------------------------------

# delta_route BEFORE AFTER ROUTE: `delta` over one route's requests: the gateway_requests_total
# samples labelled route="ROUTE" (both scrapes filtered into FILE.ROUTE). D_RETRIES and D_LIMITED
# are not per route and read 0.
delta_route() {
    local f
    for f in "$1" "$2"; do
        awk -v want="route=\"$3\"" 'index($0, "gateway_requests_total{") == 1 &&
            (index($0, "{" want ",") || index($0, "," want ",") || index($0, "," want "}") || index($0, "{" want "}"))' \
            "$f" >"$f.$3"
    done
    delta "$1.$3" "$2.$3"
}

# header_value FILE NAME: the value of header NAME (any case) in a `curl -D` dump; empty when
# absent.
header_value() {
    local want
    want=$(tr '[:upper:]' '[:lower:]' <<<"$2")
    tr -d '\r' <"$1" | awk -v want="$want:" \
        'tolower(substr($0, 1, length(want))) == want { sub(/^[^:]*:[ \t]*/, ""); print; exit }'
}

# api_burst KEY N OUT: N requests to /api/x one after another, with `X-Api-Key: KEY` (without the
# header when KEY is empty). One line per request in OUT: status RateLimit-Limit
# RateLimit-Remaining Retry-After X-Route X-Upstream ("-" for a header that is absent). The
# headers are read after the last request, so the burst takes little of the quota's window;
# BURST_MS is how long it took.
BURST_MS=0
api_burst() {
    local key=$1 n=$2 out=$3 i t0 name v line codes=() args=()
    [[ -n $key ]] && args+=(-H "X-Api-Key: $key")
    t0=$(now_ms)
    for ((i = 0; i < n; i++)); do
        : >"$out.$i.headers"
        codes+=("$(http_code "$PROXY_URL/api/x" -D "$out.$i.headers" ${args[@]+"${args[@]}"})")
    done
    BURST_MS=$(($(now_ms) - t0))
    : >"$out"
    for ((i = 0; i < n; i++)); do
        line=${codes[i]:-000}
        for name in RateLimit-Limit RateLimit-Remaining Retry-After X-Route X-Upstream; do
            v=$(header_value "$out.$i.headers" "$name")
            line+=" ${v:--}"
        done
        printf '%s\n' "$line" >>"$out"
    done
}

# burst_count FILE AWK_CONDITION: lines of an api_burst file that meet the condition ($1 status,
# $2 limit, $3 remaining, $4 Retry-After, $5 X-Route, $6 X-Upstream).
burst_count() {
    awk "$2 { n++ } END { printf \"%d\\n\", n }" "$1"
}

# burst_remaining FILE: RateLimit-Remaining of the 2xx answers, in order, space-separated.
burst_remaining() {
    awk '$1 ~ /^2/ { printf "%s%s", sep, $3; sep = " " } END { print "" }' "$1"
}

# burst_summary FILE: an api_burst file in one line: runs of one status with their RateLimit-Limit
# and the first and last RateLimit-Remaining (and Retry-After on 429).
burst_summary() {
    awk 'function flush() {
            if (!n) return
            printf "%s%d x %s (RateLimit-Limit %s, Remaining %s", sep, n, st, lim, r0
            if (n > 1) printf "..%s", r1
            if (st == 429) { printf ", Retry-After %s", a0; if (n > 1) printf "..%s", a1 }
            printf ")"
            sep = ", "
        }
        $1 != st || $2 != lim { flush(); n = 0; st = $1; lim = $2; r0 = $3; a0 = $4 }
        { n++; r1 = $3; a1 = $4 }
        END { flush(); print "" }' "$1"
}

# countdown FROM N: "FROM FROM-1 ..." (N numbers).
countdown() {
    local i out=""
    for ((i = 0; i < $2; i++)); do out+="${out:+ }$(($1 - i))"; done
    printf '%s\n' "$out"
}

# The split first (ab: one key on /api/, then /static/ and /), a probe of /static/, then the
# quota of route "api" (a fresh key request by request, a second key with ab, no key). Every
# row counts one route's requests from the deltas of gateway_requests_total{route=...}.
scenario_routes() {
    local n_api=$ROUTES_API_REQUESTS n_static=$ROUTES_STATIC_REQUESTS n_default=$ROUTES_DEFAULT_REQUESTS
    local quota=$ROUTE_QUOTA over=$ROUTE_QUOTA_OVER nokey=$ROUTES_NOKEY c=$ROUTES_QUOTA_CONCURRENCY
    local run key_split key_a key_b rows=() i live lo hi
    # Unique per run: a rerun within the quota window never meets a spent key.
    run=$$-$(now_ms)
    key_split=run-ab-split-$run key_a=run-ab-a-$run key_b=run-ab-b-$run
    stack_up routes 0 1
    live=${#BACKEND_LABELS[@]}
    ((live == 3)) || die "routes needs three backends (backend1 and backend2 for /api/, backend3 for /static/), not $live"
    scenario_title "/api/ -> ${BACKEND_NAMES[0]}+${BACKEND_NAMES[1]} (quota $quota per ${ROUTE_QUOTA_WINDOW} s per X-Api-Key), /static/ -> ${BACKEND_NAMES[2]} (prefix stripped), rest -> all three"
    show_backends

    # -- The split: one ab run per route.
    local api_rc api_complete api_failed api_non2xx api_total api_2xx api_other api_b1 api_b2 api_b3 api_stray
    scrape "$ADMIN_URL" "$WORK_DIR/m0"
    run_ab "$WORK_DIR/routes.api.ab" -n "$n_api" -c 1 -H "X-Api-Key: $key_split" "$PROXY_URL/api/orders"
    scrape_settled "$ADMIN_URL" "$WORK_DIR/m1" "$(requests_total "$WORK_DIR/m0")" "$n_api"
    delta_route "$WORK_DIR/m0" "$WORK_DIR/m1" api
    rows+=("$(table_row "api, one key" "$n_api" "$AB_FAILED" "$AB_RPS")")
    api_rc=$AB_RC api_complete=$AB_COMPLETE api_failed=$AB_FAILED api_non2xx=$AB_NON2XX
    api_total=$D_TOTAL api_2xx=$D_2XX api_other=$((D_429 + D_5XX + D_OTHER))
    api_b1=${D_BACKEND[0]:-0} api_b2=${D_BACKEND[1]:-0} api_b3=${D_BACKEND[2]:-0}
    api_stray=$((D_NONE + D_UNLISTED))

    local st_rc st_complete st_failed st_non2xx st_total st_2xx st_other st_b1 st_b2 st_b3 st_stray
    run_ab "$WORK_DIR/routes.static.ab" -n "$n_static" -c 1 "$PROXY_URL/static/app.js"
    scrape_settled "$ADMIN_URL" "$WORK_DIR/m2" "$(requests_total "$WORK_DIR/m1")" "$n_static"
    delta_route "$WORK_DIR/m1" "$WORK_DIR/m2" static
    rows+=("$(table_row "static" "$n_static" "$AB_FAILED" "$AB_RPS")")
    st_rc=$AB_RC st_complete=$AB_COMPLETE st_failed=$AB_FAILED st_non2xx=$AB_NON2XX
    st_total=$D_TOTAL st_2xx=$D_2XX st_other=$((D_429 + D_5XX + D_OTHER))
    st_b1=${D_BACKEND[0]:-0} st_b2=${D_BACKEND[1]:-0} st_b3=${D_BACKEND[2]:-0}
    st_stray=$((D_NONE + D_UNLISTED))

    local df_rc df_complete df_failed df_non2xx df_total df_2xx df_other df_b=() df_stray
    run_ab "$WORK_DIR/routes.default.ab" -n "$n_default" -c 1 "$PROXY_URL/"
    scrape_settled "$ADMIN_URL" "$WORK_DIR/m3" "$(requests_total "$WORK_DIR/m2")" "$n_default"
    delta_route "$WORK_DIR/m2" "$WORK_DIR/m3" default
    rows+=("$(table_row "default" "$n_default" "$AB_FAILED" "$AB_RPS")")
    df_rc=$AB_RC df_complete=$AB_COMPLETE df_failed=$AB_FAILED df_non2xx=$AB_NON2XX
    df_total=$D_TOTAL df_2xx=$D_2XX df_other=$((D_429 + D_5XX + D_OTHER))
    df_b=("${D_BACKEND[@]}")
    df_stray=$((D_NONE + D_UNLISTED))

    # -- What a /static/ request looks like upstream: the echo of the backend that answered.
    local probe_code probe_backend probe_path probe_prefix probe_limit
    : >"$WORK_DIR/static.headers"
    probe_code=$(curl -s -o "$WORK_DIR/static.body" -D "$WORK_DIR/static.headers" -w '%{http_code}' \
        --max-time 5 "$PROXY_URL/static/app.js?v=1" 2>/dev/null) || true
    read -r probe_backend probe_path probe_prefix <<<"$(python3 -c '
import json, sys
try:
    d = json.load(open(sys.argv[1], encoding="utf-8"))
    h = {k.lower(): v for k, v in d.get("headers", {}).items()}
    print(d.get("backend") or "-", d.get("path") or "-", h.get("x-forwarded-prefix") or "-")
except (OSError, ValueError, AttributeError):
    print("- - -")' "$WORK_DIR/static.body")"
    probe_limit=$(header_value "$WORK_DIR/static.headers" RateLimit-Limit)

    # -- The quota of route "api": a fresh key request by request, then a second key with ab.
    local qa_total qa_2xx qa_429 qa_other qb_rc qb_complete qb_failed qb_non2xx qb_total qb_2xx qb_429 qb_other
    local nk_total nk_2xx nk_other limited burst_a_ms
    scrape "$ADMIN_URL" "$WORK_DIR/q0"
    api_burst "$key_a" $((quota + over)) "$WORK_DIR/burst.a"
    burst_a_ms=$BURST_MS
    scrape_settled "$ADMIN_URL" "$WORK_DIR/q1" "$(requests_total "$WORK_DIR/q0")" $((quota + over))
    delta_route "$WORK_DIR/q0" "$WORK_DIR/q1" api
    rows+=("$(table_row "api, key A" $((quota + over)) - -)")
    qa_total=$D_TOTAL qa_2xx=$D_2XX qa_429=$D_429 qa_other=$((D_5XX + D_OTHER))

    run_ab "$WORK_DIR/routes.keyb.ab" -n $((quota + 1)) -c "$c" -H "X-Api-Key: $key_b" "$PROXY_URL/api/x"
    scrape_settled "$ADMIN_URL" "$WORK_DIR/q2" "$(requests_total "$WORK_DIR/q1")" $((quota + 1))
    delta_route "$WORK_DIR/q1" "$WORK_DIR/q2" api
    rows+=("$(table_row "api, key B (-c $c)" $((quota + 1)) "$AB_FAILED" "$AB_RPS")")
    qb_rc=$AB_RC qb_complete=$AB_COMPLETE qb_failed=$AB_FAILED qb_non2xx=$AB_NON2XX
    qb_total=$D_TOTAL qb_2xx=$D_2XX qb_429=$D_429 qb_other=$((D_5XX + D_OTHER))

    # Without the header: the route's quota keyed by the client IP. A few only, never all of it
    # (with --compose every host request is one IP).
    api_burst "" "$nokey" "$WORK_DIR/burst.nokey"
    scrape_settled "$ADMIN_URL" "$WORK_DIR/q3" "$(requests_total "$WORK_DIR/q2")" "$nokey"
    delta_route "$WORK_DIR/q2" "$WORK_DIR/q3" api
    rows+=("$(table_row "api, no key" "$nokey" - -)")
    nk_total=$D_TOTAL nk_2xx=$D_2XX nk_other=$((D_429 + D_5XX + D_OTHER))
    delta "$WORK_DIR/q0" "$WORK_DIR/q3"
    limited=$D_LIMITED

    table_header
    printf '%s\n' "${rows[@]}"
    say "keys: split $key_split, A $key_a, B $key_b"
    say "GET /static/app.js?v=1: status $probe_code from ${probe_backend}, which saw path $probe_path and X-Forwarded-Prefix $probe_prefix; RateLimit-Limit ${probe_limit:--} (the global limit)"
    say "key A, request by request ($(secs "$burst_a_ms") s): $(burst_summary "$WORK_DIR/burst.a")"
    say "no key, request by request: $(burst_summary "$WORK_DIR/burst.nokey")"

    say " /api/, one key (ab -c 1):"
    AB_RC=$api_rc AB_COMPLETE=$api_complete AB_FAILED=$api_failed
    expect_ab_clean "$n_api"
    expect_eq "ab non-2xx responses" "$api_non2xx" 0
    expect_eq "requests counted on route api" "$api_total" "$n_api"
    expect_eq "2xx" "$api_2xx" "$n_api"
    expect_true "both ${BACKEND_NAMES[0]} and ${BACKEND_NAMES[1]} used" $((api_b1 > 0 && api_b2 > 0 ? 0 : 1)) "$api_b1 and $api_b2"
    expect_eq "answered by ${BACKEND_NAMES[0]} or ${BACKEND_NAMES[1]}" $((api_b1 + api_b2)) "$n_api"
    expect_eq "answered by ${BACKEND_NAMES[2]}, no backend or an unlisted one" $((api_b3 + api_stray)) 0
    expect_eq "429, 5xx and other statuses" "$api_other" 0
    say " /static/ (ab -c 1):"
    AB_RC=$st_rc AB_COMPLETE=$st_complete AB_FAILED=$st_failed
    expect_ab_clean "$n_static"
    expect_eq "ab non-2xx responses" "$st_non2xx" 0
    expect_eq "requests counted on route static" "$st_total" "$n_static"
    expect_eq "2xx" "$st_2xx" "$n_static"
    expect_eq "answered by ${BACKEND_NAMES[2]}" "$st_b3" "$n_static"
    expect_eq "answered by another backend, none or an unlisted one" $((st_b1 + st_b2 + st_stray)) 0
    expect_eq "429, 5xx and other statuses" "$st_other" 0
    say " / (ab -c 1):"
    AB_RC=$df_rc AB_COMPLETE=$df_complete AB_FAILED=$df_failed
    expect_ab_clean "$n_default"
    expect_eq "ab non-2xx responses" "$df_non2xx" 0
    expect_eq "requests counted on route default" "$df_total" "$n_default"
    expect_eq "2xx" "$df_2xx" "$n_default"
    lo=$((n_default / live - BALANCE_TOLERANCE))
    hi=$(((n_default + live - 1) / live + BALANCE_TOLERANCE))
    for i in "${!BACKEND_LABELS[@]}"; do
        expect_range "${BACKEND_NAMES[i]} share" "${df_b[i]:-0}" "$lo" "$hi"
    done
    expect_eq "answered by no backend or an unlisted one" "$df_stray" 0
    expect_eq "429, 5xx and other statuses" "$df_other" 0
    say " GET /static/app.js?v=1 (strip_prefix):"
    expect_eq "status" "$probe_code" 200
    expect_eq "answered by" "$probe_backend" "${BACKEND_NAMES[2]}"
    expect_eq "path the backend saw" "$probe_path" /app.js
    expect_eq "X-Forwarded-Prefix the backend saw" "$probe_prefix" /static
    expect_eq "RateLimit-Limit (no route quota: the global limit)" "${probe_limit:--}" "$RATE_LIMIT"
    say " key A, $((quota + over)) requests one by one (curl):"
    expect_eq "2xx" "$(burst_count "$WORK_DIR/burst.a" '$1 ~ /^2/')" "$quota"
    expect_eq "429" "$(burst_count "$WORK_DIR/burst.a" '$1 == 429')" "$over"
    expect_eq "requests counted on route api" "$qa_total" $((quota + over))
    expect_eq "2xx counted" "$qa_2xx" "$quota"
    expect_eq "429 counted" "$qa_429" "$over"
    expect_eq "5xx and other statuses" "$qa_other" 0
    expect_eq "answers with RateLimit-Limit $quota" "$(burst_count "$WORK_DIR/burst.a" "\$2 == $quota")" $((quota + over))
    expect_eq "RateLimit-Remaining of the 2xx" "$(burst_remaining "$WORK_DIR/burst.a")" "$(countdown $((quota - 1)) "$quota")"
    expect_eq "429 with a Retry-After of at least 1 s" \
        "$(burst_count "$WORK_DIR/burst.a" '$1 == 429 && $4 ~ /^[0-9]+$/ && $4 >= 1')" "$over"
    expect_eq "X-Route of the first answer" "$(awk '{ print $5; exit }' "$WORK_DIR/burst.a")" api
    expect_true "sent within the quota window (${ROUTE_QUOTA_WINDOW} s)" $((burst_a_ms < ROUTE_QUOTA_WINDOW * 1000 ? 0 : 1)) \
        "took $(secs "$burst_a_ms") s: a window slid by, so the counts above cannot hold"
    say " key B right after, $((quota + 1)) requests (ab -c $c):"
    AB_RC=$qb_rc AB_COMPLETE=$qb_complete AB_FAILED=$qb_failed
    expect_ab_clean $((quota + 1))
    expect_eq "ab non-2xx responses" "$qb_non2xx" 1
    expect_eq "requests counted on route api" "$qb_total" $((quota + 1))
    expect_eq "2xx counted (its own $quota)" "$qb_2xx" "$quota"
    expect_eq "429 counted" "$qb_429" 1
    expect_eq "5xx and other statuses" "$qb_other" 0
    say " no X-Api-Key, $nokey requests (curl; the route's quota, keyed by the client IP):"
    expect_eq "requests counted on route api" "$nk_total" "$nokey"
    expect_eq "2xx counted" "$nk_2xx" "$nokey"
    expect_eq "429, 5xx and other statuses" "$nk_other" 0
    expect_eq "answers with RateLimit-Limit $quota" "$(burst_count "$WORK_DIR/burst.nokey" "\$2 == $quota")" "$nokey"
    expect_eq "RateLimit-Remaining" "$(burst_remaining "$WORK_DIR/burst.nokey")" "$(countdown $((quota - 1)) "$nokey")"
    say " the limiter:"
    expect_eq "gateway_rate_limited_total increase" "$limited" $((over + 1))
}

# ---- cluster --------------------------------------------------------------------------------

# The replicas: R_NAMES (as printed: compose service names, or proxy and proxy2 locally),
# R_URLS, R_ADMINS, R_PIDS (local); the local redis-server: REDIS_PID, REDIS_PORT, REDIS_URL.
R_NAMES=() R_URLS=() R_ADMINS=() R_PIDS=()
REDIS_PID='' REDIS_PORT='' REDIS_URL='' REDIS_STARTS=0

# local_redis_up: the local redis-server answers PING, or it exited (STARTED_DIED=1).
local_redis_up() {
    alive "$REDIS_PID" || {
        STARTED_DIED=1
        return 0
    }
    redis_ping 127.0.0.1 "$REDIS_PORT"
}

# local_redis_start [PORT]: redis-server on 127.0.0.1:PORT (default: a free port, tried again on
# another when it was taken in between, three times at most), persistence off (no RDB snapshot,
# no AOF; its directory is in the work dir), started with spawn so that the EXIT trap stops it.
local_redis_start() {
    local want=${1:-} attempt log
    mkdir -p "$WORK_DIR/redis"
    for attempt in 1 2 3; do
        REDIS_STARTS=$((REDIS_STARTS + 1))
        REDIS_PORT=${want:-$(free_port)}
        log=$WORK_DIR/redis$REDIS_STARTS.log
        spawn "$log" "$REDIS_BIN" --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
            --dir "$WORK_DIR/redis" --daemonize no
        REDIS_PID=$SPAWNED_PID
        STARTED_DIED=0
        poll $((READY_TIMEOUT_SECONDS * 1000)) 0.05 local_redis_up ||
            die "redis-server did not answer PING on 127.0.0.1:$REDIS_PORT within ${READY_TIMEOUT_SECONDS}s (log: $log)"
        if ((STARTED_DIED == 0)); then
            REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0
            return 0
        fi
        stop_pid "$REDIS_PID"
        [[ -z $want ]] || die "redis-server could not start again on port $want: $(tail -n 3 "$log")"
        warn "redis-server failed to start (attempt $attempt): $(tail -n 3 "$log")"
    done
    die "redis-server did not start; see $WORK_DIR"
}

# cluster_send OUT SRC N URL...: N requests one after another, request i to URL[i mod count],
# each on a new connection from source address SRC ("-": any). Appends one line per request to
# OUT: "TARGET STATUS LIMIT REMAINING RETRY_AFTER IETF_R POLICY" (TARGET the index of its URL;
# LIMIT, REMAINING: RateLimit-Limit, RateLimit-Remaining; IETF_R: r= of the RateLimit field;
# POLICY: RateLimit-Policy without blanks; "-" for what is absent; STATUS 000 when there was no
# HTTP answer).
cluster_send() {
    python3 - "$@" <<'PY'
import http.client, re, sys
from urllib.parse import urlsplit
out, src, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
urls = [urlsplit(u) for u in sys.argv[4:]]
with open(out, "a", encoding="utf-8") as f:
    for i in range(n):
        k = i % len(urls)
        u = urls[k]
        fields = [str(k), "000", "-", "-", "-", "-", "-"]
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5,
                                          source_address=None if src == "-" else (src, 0))
        try:
            conn.request("GET", u.path or "/", headers={"Connection": "close"})
            r = conn.getresponse()
            r.read()
            def h(name):
                return "".join((r.getheader(name) or "-").split())
            m = re.search(r";\s*r=(\d+)", r.getheader("RateLimit") or "")
            fields = [str(k), str(r.status), h("RateLimit-Limit"), h("RateLimit-Remaining"),
                      h("Retry-After"), m.group(1) if m else "-", h("RateLimit-Policy")]
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        f.write(" ".join(fields) + "\n")
PY
}

# sent_count FILE AWK_CONDITION: lines of a cluster_send file that meet the condition ($1 target,
# $2 status, $3 limit, $4 remaining, $5 Retry-After, $6 IETF r, $7 policy).
sent_count() {
    awk "$2 { n++ } END { printf \"%d\\n\", n }" "$1"
}

# sent_remaining FILE: RateLimit-Remaining of the 2xx answers, in order, space-separated.
sent_remaining() {
    awk '$2 ~ /^2/ { printf "%s%s", sep, $4; sep = " " } END { print "" }' "$1"
}

# sent_summary FILE: a cluster_send file in one line (burst_summary's runs of one status).
sent_summary() {
    awk '{ print $2, $3, $4, $5 }' "$1" >"$1.summary"
    burst_summary "$1.summary"
}

# expect_countdown WHAT ACTUAL FROM N: ACTUAL is FROM, FROM-1, ... (N numbers, space-separated);
# printed as a range when it is.
expect_countdown() {
    local want
    want=$(countdown "$3" "$4")
    if [[ $2 == "$want" ]]; then
        pass_line "$1 = $3..$(($3 - $4 + 1)), one by one"
    else
        fail_line "$1: expected $3..$(($3 - $4 + 1)) one by one, got ${2:-none}"
    fi
}

# store_errors FILE: gateway_rate_limit_store_errors_total in a scrape (0 when absent).
store_errors() {
    awk '$1 == "gateway_rate_limit_store_errors_total" { v = $2 } END { printf "%d\n", v }' "$1"
}

# CLUSTER_ROWS: the table's rows; cluster_row LABEL BEFORE AFTER SENT_FILE TARGET appends one:
# the proxy's counts from two scrapes of one replica, sent and failed (000) from the client's
# lines for TARGET.
CLUSTER_ROWS=()
cluster_row() {
    local sent failed
    delta "$2" "$3"
    sent=$(sent_count "$4" "\$1 == $5")
    failed=$(sent_count "$4" "\$1 == $5 && \$2 == \"000\"")
    CLUSTER_ROWS+=("$(table_row "$1" "$sent" "$failed" -)")
}

# replica_settled I FILE BASE N: scrape replica I until it counted N requests over BASE.
replica_settled() {
    scrape_settled "${R_ADMINS[$1]}" "$2" "$(requests_total "$3")" "$4"
}

REPLICA2_KILLED=0
REDIS_STOPPED=0
# compose_restore_cluster: what cluster stopped, started again (also the EXIT trap's hook).
compose_restore_cluster() {
    if ((REDIS_STOPPED)); then
        note "starting $COMPOSE_REDIS again (docker compose start $COMPOSE_REDIS)"
        compose_do start "$COMPOSE_REDIS" && REDIS_STOPPED=0
    fi
    if ((REPLICA2_KILLED)); then
        note "starting $COMPOSE_REPLICA2 again (docker compose start $COMPOSE_REPLICA2)"
        compose_do start "$COMPOSE_REPLICA2" && REPLICA2_KILLED=0
    fi
    ((REDIS_STOPPED == 0 && REPLICA2_KILLED == 0))
}

# cluster_setup: Redis, backends and two replicas with store = "redis", each ready with its
# store up. With --compose: redis and proxy2 started when stopped, both replicas restarted
# (fresh limiters of their own: phase 3 counts in replica 1's).
cluster_setup() {
    local i
    if ((COMPOSE)); then
        R_NAMES=(proxy "$COMPOSE_REPLICA2")
        R_URLS=("$COMPOSE_PROXY_URL" "$COMPOSE_PROXY2_URL")
        R_ADMINS=("$COMPOSE_ADMIN_URL" "$COMPOSE_ADMIN2_URL")
        CLEANUP_HOOKS+=(compose_restore_cluster)
        compose_redis_running
        compose_do start "$COMPOSE_REPLICA2" || die "could not start $COMPOSE_REPLICA2"
        note "restarting both replicas (docker compose restart proxy $COMPOSE_REPLICA2): fresh limiters of their own"
        compose_do restart proxy "$COMPOSE_REPLICA2" || die "could not restart the replicas"
        for i in 0 1; do
            compose_wait_ready "${#BACKEND_LABELS[@]}" "${R_ADMINS[i]}" "${R_URLS[i]}"
        done
    else
        need_tool "$REDIS_BIN" "sudo apt-get install -y redis-server"
        need_tool redis-cli "sudo apt-get install -y redis-tools"
        start_backends
        local_redis_start
        R_NAMES=(proxy proxy2)
        for i in 0 1; do
            start_proxy redis 0 1
            R_URLS[i]=$PROXY_URL R_ADMINS[i]=$ADMIN_URL R_PIDS[i]=$PROXY_PID
        done
    fi
}

# cluster_client PHASE [keep]: CLIENT_SRC, the client of a phase, with a budget of its own:
# locally a source address of its own (127.0.0.1PHASE); with --compose the host ("-": one
# client), whose count is cleared in Redis (FLUSHALL) unless "keep" is given.
CLIENT_SRC=-
cluster_client() {
    if ((COMPOSE)); then
        [[ ${2:-} == keep ]] || compose_flush
        CLIENT_SRC=-
    else
        CLIENT_SRC=127.0.0.1$1
    fi
}

# ready_line ADMIN_URL: "HTTP STATUS STATE" of /ready (its code and rate_limit_store.state).
ready_line() {
    local code state
    code=$(http_code "$1/ready")
    state=$(store_state "$1")
    printf '%s %s\n' "$code" "${state:--}"
}

scenario_cluster() {
    local limit=$RATE_LIMIT sent=$RATE_SENT k=$CLUSTER_KILL_AFTER n3=$CLUSTER_DOWN_REQUESTS
    local over=$((RATE_SENT - RATE_LIMIT)) w=$WORK_DIR i
    cluster_setup
    scenario_title "two replicas, one budget per client in Redis (limit $limit per 60 s): $sent alternating; replica 2 killed after $k; Redis stopped; Redis back"
    if ((COMPOSE)); then
        say "r1 = ${R_NAMES[0]} ${R_URLS[0]} (admin ${R_ADMINS[0]}), r2 = ${R_NAMES[1]} ${R_URLS[1]} (admin ${R_ADMINS[1]}); Redis: compose service $COMPOSE_REDIS (not published)"
    else
        say "r1 = ${R_NAMES[0]} ${R_URLS[0]} (admin ${R_ADMINS[0]}), r2 = ${R_NAMES[1]} ${R_URLS[1]} (admin ${R_ADMINS[1]}); Redis: $REDIS_URL (pid $REDIS_PID)"
    fi
    local names=""
    for i in "${!BACKEND_LABELS[@]}"; do names+="${names:+, }${BACKEND_NAMES[i]}=${BACKEND_LABELS[i]}"; done
    say "backends: $names"

    # -- 1. One budget across both replicas.
    local p1_src p1_err0=() p1_err1=()
    cluster_client 1
    p1_src=$CLIENT_SRC
    for i in 0 1; do
        scrape "${R_ADMINS[i]}" "$w/p1.r$i.m0"
        p1_err0[i]=$(store_errors "$w/p1.r$i.m0")
    done
    cluster_send "$w/c1" "$p1_src" "$sent" "${R_URLS[0]}/" "${R_URLS[1]}/"
    replica_settled 0 "$w/p1.r0.m1" "$w/p1.r0.m0" $(((sent + 1) / 2))
    replica_settled 1 "$w/p1.r1.m1" "$w/p1.r1.m0" $((sent / 2))
    local p1_m2xx=0 p1_m429=0 p1_mbad=0 p1_limited=0
    for i in 0 1; do
        cluster_row "1 alternate r$((i + 1))" "$w/p1.r$i.m0" "$w/p1.r$i.m1" "$w/c1" "$i"
        p1_m2xx=$((p1_m2xx + D_2XX)) p1_m429=$((p1_m429 + D_429)) p1_mbad=$((p1_mbad + D_5XX + D_OTHER))
        p1_limited=$((p1_limited + D_LIMITED))
        p1_err1[i]=$(store_errors "$w/p1.r$i.m1")
    done

    # -- 2. Replica 2 killed mid-run: replica 1 goes on with the count both left in Redis.
    local p2_src before_r1 before_r2 first_after
    cluster_client 2
    p2_src=$CLIENT_SRC
    for i in 0 1; do scrape "${R_ADMINS[i]}" "$w/p2.r$i.m0"; done
    cluster_send "$w/c2a" "$p2_src" "$k" "${R_URLS[0]}/" "${R_URLS[1]}/"
    replica_settled 0 "$w/p2.r0.m1" "$w/p2.r0.m0" $(((k + 1) / 2))
    replica_settled 1 "$w/p2.r1.m1" "$w/p2.r1.m0" $((k / 2))
    if ((COMPOSE)); then
        REPLICA2_KILLED=1
        compose_do kill "$COMPOSE_REPLICA2" || die "could not kill $COMPOSE_REPLICA2"
        say "phase 2: killed r2 with docker compose kill $COMPOSE_REPLICA2 (SIGKILL) after $k requests"
    else
        { kill -KILL "${R_PIDS[1]}" && wait "${R_PIDS[1]}"; } 2>/dev/null || true
        stop_pid "${R_PIDS[1]}"
        say "phase 2: killed r2 (pid ${R_PIDS[1]}) with SIGKILL after $k requests"
    fi
    cluster_send "$w/c2x" "$p2_src" 1 "${R_URLS[1]}/"
    cluster_send "$w/c2b" "$p2_src" $((sent - k)) "${R_URLS[0]}/"
    replica_settled 0 "$w/p2.r0.m2" "$w/p2.r0.m1" $((sent - k))
    cluster_row "2 before kill r1" "$w/p2.r0.m0" "$w/p2.r0.m1" "$w/c2a" 0
    before_r1=$D_2XX
    cluster_row "2 before kill r2" "$w/p2.r1.m0" "$w/p2.r1.m1" "$w/c2a" 1
    before_r2=$D_2XX
    cluster_row "2 after kill r1" "$w/p2.r0.m1" "$w/p2.r0.m2" "$w/c2b" 0
    local after_2xx=$D_2XX after_429=$D_429 after_bad=$((D_5XX + D_OTHER))
    first_after=$(awk '$2 ~ /^2/ { print $4; exit }' "$w/c2b")

    # -- 3. Redis stopped: on_error = "local", replica 1's own exact limiter decides.
    local p3_src p3_err0 p3_err1 p3_ready
    cluster_client 3 keep
    p3_src=$CLIENT_SRC
    if ((COMPOSE)); then
        REDIS_STOPPED=1
        compose_do stop "$COMPOSE_REDIS" || die "could not stop $COMPOSE_REDIS"
        say "phase 3: stopped Redis (docker compose stop $COMPOSE_REDIS)"
    else
        stop_pid "$REDIS_PID"
        say "phase 3: stopped Redis (SIGTERM to pid $REDIS_PID; it has exited)"
    fi
    scrape "${R_ADMINS[0]}" "$w/p3.r0.m0"
    p3_err0=$(store_errors "$w/p3.r0.m0")
    cluster_send "$w/c3" "$p3_src" "$n3" "${R_URLS[0]}/"
    replica_settled 0 "$w/p3.r0.m1" "$w/p3.r0.m0" "$n3"
    p3_err1=$(store_errors "$w/p3.r0.m1")
    p3_ready=$(ready_line "${R_ADMINS[0]}")
    cluster_row "3 redis down r1" "$w/p3.r0.m0" "$w/p3.r0.m1" "$w/c3" 0
    local p3_2xx=$D_2XX p3_429=$D_429 p3_bad=$((D_5XX + D_OTHER))
    local p3_want2xx=$((n3 < limit ? n3 : limit))

    # -- 4. Redis back (empty: no persistence): replica 1 probes it again; replica 2 back; one
    # shared budget again.
    local p4_src p4_probes=0 p4_ready p5_src
    cluster_client 4 keep
    p4_src=$CLIENT_SRC
    if ((COMPOSE)); then
        compose_do start "$COMPOSE_REDIS" || die "could not start $COMPOSE_REDIS again"
        poll $((READY_TIMEOUT_SECONDS * 1000)) 0.5 compose_redis_up || die "$COMPOSE_REDIS does not answer PING after its start"
        REDIS_STOPPED=0
        say "phase 4: started Redis again (docker compose start $COMPOSE_REDIS)"
    else
        local_redis_start "$REDIS_PORT"
        say "phase 4: started Redis again on the same port (pid $REDIS_PID)"
    fi
    scrape "${R_ADMINS[0]}" "$w/p4.r0.m0"
    # Each request while the store is down may be the probe (one per 250 ms): a few, spaced.
    for ((i = 0; i < 40; i++)); do
        store_state_is "${R_ADMINS[0]}" up && break
        cluster_send "$w/c4" "$p4_src" 1 "${R_URLS[0]}/"
        p4_probes=$((p4_probes + 1))
        sleep 0.3
    done
    p4_ready=$(ready_line "${R_ADMINS[0]}")
    [[ -f $w/c4 ]] || : >"$w/c4"
    replica_settled 0 "$w/p4.r0.m1" "$w/p4.r0.m0" "$p4_probes"
    cluster_row "4 redis back r1" "$w/p4.r0.m0" "$w/p4.r0.m1" "$w/c4" 0
    local p4_bad=$((D_5XX + D_OTHER))
    if ((COMPOSE)); then
        compose_do start "$COMPOSE_REPLICA2" || die "could not start $COMPOSE_REPLICA2 again"
        compose_wait_ready "${#BACKEND_LABELS[@]}" "${R_ADMINS[1]}" "${R_URLS[1]}"
        REPLICA2_KILLED=0
        say "phase 4: started r2 again (docker compose start $COMPOSE_REPLICA2)"
    else
        start_proxy redis 0 1
        R_URLS[1]=$PROXY_URL R_ADMINS[1]=$ADMIN_URL R_PIDS[1]=$PROXY_PID
        say "phase 4: started r2 again: ${R_URLS[1]} (admin ${R_ADMINS[1]}, pid ${R_PIDS[1]})"
    fi
    cluster_client 5
    p5_src=$CLIENT_SRC
    for i in 0 1; do scrape "${R_ADMINS[i]}" "$w/p5.r$i.m0"; done
    cluster_send "$w/c5" "$p5_src" 4 "${R_URLS[0]}/" "${R_URLS[1]}/"
    for i in 0 1; do
        replica_settled "$i" "$w/p5.r$i.m1" "$w/p5.r$i.m0" 2
        cluster_row "4 shared r$((i + 1))" "$w/p5.r$i.m0" "$w/p5.r$i.m1" "$w/c5" "$i"
    done
    if ((COMPOSE)); then
        compose_wait_ready "${#BACKEND_LABELS[@]}"
    fi

    table_header
    printf '%s\n' "${CLUSTER_ROWS[@]}"
    say "1: $(sent_summary "$w/c1")"
    say "   first answers: $(awk 'NR <= 4 { printf "%sr%d %s Remaining %s (RateLimit r=%s)", sep, $1 + 1, $2, $4, $6; sep = ", " }' "$w/c1"); RateLimit-Policy $(awk '{ print $7; exit }' "$w/c1")"
    say "2: before the kill $(sent_summary "$w/c2a"); r2 after the kill: status $(awk '{ print $2; exit }' "$w/c2x"); r1 after: $(sent_summary "$w/c2b")"
    say "3: $(sent_summary "$w/c3"); r1 /ready: HTTP ${p3_ready% *}, rate_limit_store.state ${p3_ready#* }; gateway_rate_limit_store_errors_total $p3_err0 -> $p3_err1"
    say "4: r1 after Redis came back: $p4_probes request(s) until /ready said store up (statuses: $(awk '{ printf "%s%s", sep, $2; sep = " " } END { print "" }' "$w/c4")); /ready: HTTP ${p4_ready% *}, state ${p4_ready#* }; then alternating: $(awk '{ printf "%sr%d %s Remaining %s", sep, $1 + 1, $2, $4; sep = ", " }' "$w/c5")"

    say " 1. $sent requests alternating between r1 and r2, one client:"
    expect_eq "2xx (the client's answers)" "$(sent_count "$w/c1" '$2 ~ /^2/')" "$limit"
    expect_eq "429 (the client's answers)" "$(sent_count "$w/c1" '$2 == 429')" "$over"
    expect_eq "2xx counted by the replicas" "$p1_m2xx" "$limit"
    expect_eq "429 counted by the replicas" "$p1_m429" "$over"
    expect_eq "gateway_rate_limited_total increase (both)" "$p1_limited" "$over"
    expect_eq "5xx, other statuses and failed requests" $((p1_mbad + $(sent_count "$w/c1" '$2 !~ /^2/ && $2 != 429'))) 0
    expect_eq "2xx answered by r1, by r2" "$(sent_count "$w/c1" '$1 == 0 && $2 ~ /^2/') $(sent_count "$w/c1" '$1 == 1 && $2 ~ /^2/')" "$((limit / 2)) $((limit - limit / 2))"
    expect_countdown "RateLimit-Remaining of the 2xx, across both" "$(sent_remaining "$w/c1")" $((limit - 1)) "$limit"
    expect_eq "RateLimit r= equal to RateLimit-Remaining on every answer" "$(sent_count "$w/c1" '$4 != $6')" 0
    expect_eq "RateLimit-Policy" "$(awk '{ print $7; exit }' "$w/c1")" "\"default\";q=$limit;w=60"
    expect_eq "429 with a Retry-After of at least 1 s" "$(sent_count "$w/c1" '$2 == 429 && $5 ~ /^[0-9]+$/ && $5 >= 1')" "$over"
    expect_eq "store errors on r1, r2 (every check answered by Redis)" "$((p1_err1[0] - p1_err0[0])) $((p1_err1[1] - p1_err0[1]))" "0 0"
    say " 2. a fresh client: $k alternating, r2 SIGKILLed, $((sent - k)) to r1:"
    expect_eq "2xx before the kill (r1 + r2)" "$(sent_count "$w/c2a" '$2 ~ /^2/') ($before_r1 + $before_r2)" "$k ($(((k + 1) / 2)) + $((k / 2)))"
    expect_eq "r2 after the kill (no HTTP answer)" "$(awk '{ print $2; exit }' "$w/c2x")" 000
    expect_eq "first RateLimit-Remaining from r1 after the kill (the shared count)" "${first_after:--}" $((limit - k - 1))
    expect_eq "2xx from r1 after the kill" "$after_2xx" $((limit - k))
    expect_eq "429 from r1 after the kill" "$after_429" "$over"
    expect_eq "2xx in all (the limit, though a replica died)" "$(($(sent_count "$w/c2a" '$2 ~ /^2/') + $(sent_count "$w/c2b" '$2 ~ /^2/')))" "$limit"
    expect_eq "5xx, other statuses and failed requests to r1" $((after_bad + $(sent_count "$w/c2b" '$2 !~ /^2/ && $2 != 429'))) 0
    say " 3. Redis stopped, $n3 requests to r1 (on_error = \"local\"):"
    expect_eq "5xx and other statuses" "$p3_bad" 0
    expect_eq "failed requests (no HTTP answer)" "$(sent_count "$w/c3" '$2 == "000"')" 0
    expect_eq "2xx (r1's own exact limiter)" "$p3_2xx" "$p3_want2xx"
    expect_eq "429" "$p3_429" $((n3 - p3_want2xx))
    expect_countdown "RateLimit-Remaining of the 2xx" "$(sent_remaining "$w/c3")" $((limit - 1)) "$p3_want2xx"
    expect_true "gateway_rate_limit_store_errors_total grew" $((p3_err1 > p3_err0 ? 0 : 1)) "$p3_err0 -> $p3_err1"
    expect_eq "r1 /ready: HTTP status, rate_limit_store.state" "$p3_ready" "200 down"
    say " 4. Redis back:"
    expect_eq "r1 /ready: HTTP status, rate_limit_store.state" "$p4_ready" "200 up"
    expect_eq "5xx, other statuses and failed requests while it recovered" \
        $((p4_bad + $(sent_count "$w/c4" '$2 !~ /^2/ && $2 != 429'))) 0
    expect_eq "alternating r1, r2, r1, r2: status and RateLimit-Remaining" \
        "$(awk '{ printf "%s%s/%s", sep, $2, $4; sep = " " } END { print "" }' "$w/c5")" \
        "200/$((limit - 1)) 200/$((limit - 2)) 200/$((limit - 3)) 200/$((limit - 4))"
}

# ---- outlier --------------------------------------------------------------------------------

# write_outlier_load FILE: the load generator of outlier, a Python script, run (with spawn) as
#   python3 FILE OUT URL CONCURRENCY STOP_FILE MAX_REQUESTS MAX_SECONDS PAUSE_MS
# A steady load of GET URL from CONCURRENCY clients, each on a keep-alive connection of its own
# (a new one when the proxy closes it; a request that finds its reused connection closed before
# any answer is sent again once, on a new one, as any HTTP client does), pausing PAUSE_MS after
# each request. Runs until STOP_FILE exists (or its directory is gone), MAX_REQUESTS were sent
# or MAX_SECONDS passed; each client ends with the answer it waits for. Writes one line to OUT:
# "SENT FAILED RPS STATUS:COUNT..." (FAILED: no HTTP answer, counted as status 000).
write_outlier_load() {
    cat >"$1" <<'PY'
import http.client, os, sys, threading, time
from urllib.parse import urlsplit
out, url, clients, stop = sys.argv[1], urlsplit(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
max_requests, max_seconds, pause = int(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7]) / 1000.0
path = url.path or "/"
stop_dir = os.path.dirname(stop) or "."
lock = threading.Lock()
counts = {}
sent = 0
start = time.monotonic()

def take():
    global sent
    with lock:
        if sent >= max_requests:
            return False
        sent += 1
        return True

def once(conn):
    conn.request("GET", path)
    r = conn.getresponse()
    r.read()
    return r

def client():
    conn = None
    while (not os.path.exists(stop) and os.path.isdir(stop_dir)
           and time.monotonic() - start < max_seconds and take()):
        status = "000"
        for attempt in (1, 2):
            reused = conn is not None
            if conn is None:
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
            try:
                r = once(conn)
                status = str(r.status)
                if r.will_close:
                    conn.close()
                    conn = None
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                conn.close()
                conn = None
                if reused and attempt == 1:
                    continue
                break
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = None
                break
        with lock:
            counts[status] = counts.get(status, 0) + 1
        if pause:
            time.sleep(pause)
    if conn is not None:
        conn.close()

threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
elapsed = max(time.monotonic() - start, 1e-6)
with open(out, "w", encoding="utf-8") as f:
    f.write("%d %d %.2f %s\n" % (sent, counts.get("000", 0), sent / elapsed,
                                 " ".join("%s:%d" % kv for kv in sorted(counts.items()))))
PY
}

# metric_sample FILE NAME LABEL=VALUE...: the value of the first NAME sample in a scrape that
# carries every label given (empty when there is none).
metric_sample() {
    local file=$1 name=$2
    shift 2
    awk -v name="$name" -v want="$*" 'BEGIN { n = split(want, w, " ") }
        index($0, name "{") == 1 {
            for (i = 1; i <= n; i++) {
                eq = index(w[i], "=")
                if (!index($0, substr(w[i], 1, eq - 1) "=\"" substr(w[i], eq + 1) "\"")) next
            }
            print $NF; exit
        }' "$file"
}

# answered_by FILE LABEL CLASS: gateway_requests_total of backend LABEL with a status starting
# with CLASS ("2", "5", or "" for all), summed over route and method.
answered_by() {
    awk -v b="backend=\"$2\"" -v s="status=\"$3" 'index($0, "gateway_requests_total{") == 1 &&
        index($0, b) && index($0, s) { t += $NF } END { printf "%d\n", t }' "$1"
}

# answered_delta BEFORE AFTER LABEL CLASS: answered_by AFTER minus answered_by BEFORE.
answered_delta() {
    echo $(($(answered_by "$2" "$3" "$4") - $(answered_by "$1" "$3" "$4")))
}

# ready_ejected: upstreams.default.ejected on /ready, comma-separated ("?" when unreadable).
ready_ejected() {
    curl -s --max-time 2 "$ADMIN_URL/ready" 2>/dev/null | python3 -c '
import json, sys
try:
    print(",".join(json.load(sys.stdin)["upstreams"]["default"]["ejected"]))
except (ValueError, KeyError, TypeError):
    print("?")'
}

# victim_mock METHOD PATH [JSON]: a request to the victim backend's own port (/_mock/fault,
# /stats), not through the proxy; its body on stdout. Locally its address; with --compose
# inside its container (`docker compose exec`), since the backends' ports are not published
# (curl is in the image for the health checks).
victim_mock() {
    local args=(-fsS --max-time 5 -X "$1")
    [[ -n ${3:-} ]] && args+=(-H "Content-Type: application/json" --data "$3")
    if ((COMPOSE)); then
        compose exec -T "$OUTLIER_SERVICE" curl "${args[@]}" "http://127.0.0.1:$COMPOSE_BACKEND_PORT$2" 2>/dev/null
    else
        curl "${args[@]}" "http://$OUTLIER_VICTIM_LABEL$2" 2>/dev/null
    fi
}

# victim_faulted: "faulted" of the victim's /stats (requests it answered with the fault).
victim_faulted() {
    victim_mock GET /stats | python3 -c '
import json, sys
try:
    print(int(json.load(sys.stdin)["faulted"]))
except (ValueError, KeyError, TypeError):
    print("?")'
}

FAULT_SET=0
# outlier_clear_fault: the victim's fault cleared if this run set it (also the EXIT trap's hook:
# a compose backend outlives the run).
outlier_clear_fault() {
    ((FAULT_SET)) || return 0
    victim_mock DELETE /_mock/fault >/dev/null && FAULT_SET=0
}

# outlier_scrape FILE: /metrics into FILE (1 when unreadable). With --compose it also keeps the
# host's budget fresh: FLUSHALL whenever OUTLIER_FLUSH_AT requests were counted since the last.
OUTLIER_FLUSH_AT=70
OUTLIER_FLUSH_BASE=0
OUTLIER_FLUSHES=0
outlier_scrape() {
    local now answer
    curl -fsS --max-time 2 "$ADMIN_URL/metrics" >"$1.tmp" 2>/dev/null || return 1
    mv -f -- "$1.tmp" "$1"
    ((COMPOSE)) || return 0
    now=$(requests_total "$1")
    if ((now - OUTLIER_FLUSH_BASE >= OUTLIER_FLUSH_AT)); then
        answer=$(compose_redis_cli FLUSHALL)
        [[ $answer == OK ]] || die "FLUSHALL in $COMPOSE_REDIS failed: ${answer:-no answer}"
        OUTLIER_FLUSH_BASE=$now
        OUTLIER_FLUSHES=$((OUTLIER_FLUSHES + 1))
    fi
}

# Conditions for poll. Each scrapes into FILE (the scrape that met it stays there) and is also
# met when the load has ended (LOAD_ENDED=1), so that no wait outlasts the load.
# outlier_answered FILE BASE N: N requests counted since BASE (gateway_requests_total).
outlier_answered() {
    alive "$OUTLIER_LOAD_PID" || LOAD_ENDED=1
    outlier_scrape "$1" || return 1
    ((LOAD_ENDED || $(requests_total "$1") - $2 >= $3))
}

# outlier_ejected_is FILE VALUE: gateway_backend_ejected{upstream="default",backend=victim} is VALUE.
outlier_ejected_is() {
    alive "$OUTLIER_LOAD_PID" || LOAD_ENDED=1
    outlier_scrape "$1" || return 1
    ((LOAD_ENDED)) && return 0
    [[ $(metric_sample "$1" gateway_backend_ejected upstream=default "backend=$OUTLIER_VICTIM_LABEL") == "$2" ]]
}

# outlier_time_is FILE MS: the clock has reached MS (now_ms); the scrape taken then stays in FILE
# and OUT_SCRAPED_MS says when it was complete. (Before MS it scrapes too, into FILE.wait: with
# --compose that keeps the budget fresh.)
OUT_SCRAPED_MS=
outlier_time_is() {
    if (($(now_ms) < $2)); then
        outlier_scrape "$1.wait" || true
        return 1
    fi
    outlier_scrape "$1" || return 1
    OUT_SCRAPED_MS=$(now_ms)
}

# victim_not_ejected: /ready lists no ejected backend in the group "default".
victim_not_ejected() { [[ $(ready_ejected) == "" ]]; }

# outlier_victim_2xx FILE BASE_FILE N: the victim answered N 2xx since the scrape in BASE_FILE.
outlier_victim_2xx() {
    alive "$OUTLIER_LOAD_PID" || LOAD_ENDED=1
    outlier_scrape "$1" || return 1
    ((LOAD_ENDED || $(answered_delta "$2" "$1" "$OUTLIER_VICTIM_LABEL" 2) >= $3))
}

# proxy_log_since MS: the proxy's log lines since MS (locally its log file; with --compose the
# container's output since then).
proxy_log_since() {
    if ((COMPOSE)); then
        local cid
        cid=$(compose ps -q proxy 2>/dev/null | head -n 1)
        [[ -n $cid ]] && docker logs --since "$(($1 / 1000 - 1))" "$cid" 2>&1
    else
        cat "$PROXY_LOG" 2>/dev/null
    fi
}

# log_line TEXT_FILE PATTERN: the first line with PATTERN that names the victim (without ANSI
# colours); empty when there is none.
log_line() {
    sed 's/\x1b\[[0-9;]*m//g' "$1" | grep -F -- "$2" | grep -F -- "$OUTLIER_VICTIM_LABEL" | head -n 1 || true
}

OUTLIER_LOAD_PID=
OUTLIER_VICTIM_LABEL=
# Passive outlier detection. The table is split where the fault was set, where the proxy showed
# the victim ejected (the scrape that said gateway_backend_ejected 1), a moment known to lie
# inside the ejection (base_ejection_seconds after the fault was set, less OUTLIER_INSIDE_MS: it
# cannot have come back earlier, as its ejection began after the fault), where it was shown back
# (gateway_backend_ejected 0), and at the end of the load (the victim having answered
# OUTLIER_RETURN_ANSWERS 2xx since then).
OUTLIER_INSIDE_MS=250
scenario_outlier() {
    local c=$OUTLIER_CONCURRENCY f e victim=1 i w=$WORK_DIR stop base return_ms
    local t0 t_fault t_ej="" t_clear="" t_out="" t_back="" fault_answer clear_answer
    local faulted0 faulted1 ready_ej="" ready_back="" up_at_ej="" out_ejected="" return_bound
    if ((COMPOSE)); then
        f=$(toml_int config/docker.toml consecutive_failures)
        e=$(toml_int config/docker.toml base_ejection_seconds)
        [[ -n $f && -n $e ]] ||
            die "cannot read [upstream.outlier] consecutive_failures and base_ejection_seconds from config/docker.toml"
        ((f >= 1)) || die "config/docker.toml sets consecutive_failures = 0 (no ejection): outlier needs it on"
        for i in "${!BACKEND_NAMES[@]}"; do
            [[ ${BACKEND_NAMES[i]} == "$OUTLIER_SERVICE" ]] && victim=$i
        done
        # A previous run (failover) may have left it stopped, or (this one, killed) faulty.
        compose_do start "$OUTLIER_SERVICE" || die "could not start $OUTLIER_SERVICE"
    else
        f=$OUTLIER_FAILURES e=$OUTLIER_EJECTION_SECONDS
    fi
    stack_up outlier 0 1
    OUTLIER_VICTIM_LABEL=${BACKEND_LABELS[victim]}
    local victim_name=${BACKEND_NAMES[victim]} label=${BACKEND_LABELS[victim]}
    # Bounds of the waits: ejection within 30 s of the fault (the load sends requests all the
    # while); the return within twice the base time and 15 s more (a backend ejected again soon
    # after an earlier ejection, as in a rerun against the compose stack, is out for longer).
    return_bound=$((2 * e * 1000 + 15000))
    scenario_title "load -c $c over ${#BACKEND_LABELS[@]} backends; $victim_name answers 500 after $OUTLIER_WARMUP requests; ejected after $f failures in a row for ${e}s; fault cleared; back"
    show_backends
    CLEANUP_HOOKS+=(outlier_clear_fault)
    if ((COMPOSE)); then
        FAULT_SET=1
        outlier_clear_fault || die "could not clear $OUTLIER_SERVICE's fault (docker compose exec $OUTLIER_SERVICE curl -X DELETE .../_mock/fault)"
        # An aborted run may have left it ejected: wait until it is back.
        poll "$return_bound" 0.2 victim_not_ejected ||
            die "$victim_name is still ejected (/ready: upstreams.default.ejected = $(ready_ejected))"
    fi
    faulted0=$(victim_faulted)
    [[ $faulted0 =~ ^[0-9]+$ ]] || die "cannot read $victim_name's /stats"

    scrape "$ADMIN_URL" "$w/m0"
    OUTLIER_FLUSH_BASE=$(requests_total "$w/m0")
    base=$OUTLIER_FLUSH_BASE
    stop=$w/load.stop
    write_outlier_load "$w/load.py"
    t0=$(now_ms)
    spawn "$w/load.err" python3 "$w/load.py" "$w/load.out" "$PROXY_URL/" "$c" "$stop" "$OUTLIER_MAX_REQUESTS" \
        "$AB_TIMEOUT_SECONDS" "$OUTLIER_PAUSE_MS"
    OUTLIER_LOAD_PID=$SPAWNED_PID
    LOAD_ENDED=0

    # -- Steady load, then the fault.
    poll $((AB_TIMEOUT_SECONDS * 1000)) 0.05 outlier_answered "$w/m_fault" "$base" "$OUTLIER_WARMUP" ||
        die "the load did not reach $OUTLIER_WARMUP answered requests"
    if ((!LOAD_ENDED)); then
        t_fault=$(now_ms)
        FAULT_SET=1
        fault_answer=$(victim_mock PUT /_mock/fault '{"status": 500}') ||
            die "could not set $victim_name's fault (PUT /_mock/fault)"
        say "$(secs $((t_fault - t0)))s: PUT /_mock/fault on $victim_name: $fault_answer"
        # -- Ejected.
        if poll 30000 0.05 outlier_ejected_is "$w/m_ej" 1 && ((!LOAD_ENDED)); then
            t_ej=$(now_ms)
            # Cleared at once: it must be healthy again before its ejection ends (else it comes
            # back faulty, on probation, and is ejected again).
            clear_answer=$(victim_mock DELETE /_mock/fault) || die "could not clear $victim_name's fault (DELETE /_mock/fault)"
            t_clear=$(now_ms)
            FAULT_SET=0
            ready_ej=$(ready_ejected)
            # Read before it can have come back (E after the fault), or not at all.
            (($(now_ms) < t_fault + e * 1000)) || ready_ej="(read too late: ${e}s after the fault)"
            up_at_ej=$(metric_sample "$w/m_ej" gateway_backend_up upstream=default "backend=$label")
            say "$(secs $((t_ej - t0)))s: gateway_backend_ejected 1 for $victim_name ($(secs $((t_ej - t_fault)))s after the fault); /ready upstreams.default.ejected = [${ready_ej}]; gateway_backend_up ${up_at_ej:-?}"
            say "$(secs $((t_clear - t0)))s: DELETE /_mock/fault on $victim_name: $clear_answer"
            # -- A moment that lies inside the ejection (if detection left one): a scrape complete
            # before base_ejection_seconds had passed since the fault was set.
            if ((t_fault + e * 1000 - OUTLIER_INSIDE_MS > $(now_ms))); then
                OUT_SCRAPED_MS=
                if poll $((e * 1000 + 5000)) 0.05 outlier_time_is "$w/m_out" $((t_fault + e * 1000 - OUTLIER_INSIDE_MS)) &&
                    ((OUT_SCRAPED_MS < t_fault + e * 1000)); then
                    t_out=$OUT_SCRAPED_MS
                    out_ejected=$(metric_sample "$w/m_out" gateway_backend_ejected upstream=default "backend=$label")
                else
                    rm -f -- "$w/m_out"
                fi
            fi
            # -- Back by itself.
            if poll "$return_bound" 0.05 outlier_ejected_is "$w/m_back" 0 && ((!LOAD_ENDED)); then
                t_back=$(now_ms)
                ready_back=$(ready_ejected)
                say "$(secs $((t_back - t0)))s: gateway_backend_ejected 0 for $victim_name again ($(secs $((t_back - t_fault)))s after the fault); /ready upstreams.default.ejected = [${ready_back}]"
                poll 30000 0.05 outlier_victim_2xx "$w/m_end" "$w/m_back" "$OUTLIER_RETURN_ANSWERS" || true
            fi
        fi
    fi
    : >"$stop"
    wait_exit "$OUTLIER_LOAD_PID" 60000
    local load_rc=$EXIT_RC load_sent=0 load_failed=0 load_rps=0 load_codes=""
    read -r load_sent load_failed load_rps load_codes <"$w/load.out" 2>/dev/null || true
    ((load_rc == 0)) || warn "the load exited with $load_rc: $(tail -n 3 "$w/load.err" | tr '\n' ' ')"
    outlier_clear_fault || warn "could not clear $victim_name's fault"
    scrape_settled "$ADMIN_URL" "$w/m_last" "$base" "${load_sent:-0}"
    faulted1=$(victim_faulted)
    proxy_log_since "$t0" >"$w/proxy.lines" || true
    # Rows without their split point (a wait that failed) are empty.
    local m
    for m in m_fault m_ej m_out m_back m_end; do [[ -f $w/$m ]] || cp "$w/m_last" "$w/$m"; done
    [[ -n $t_out ]] || cp "$w/m_ej" "$w/m_out"
    cp "$w/m_last" "$w/m_end"

    local client_5xx client_2xx client_other
    client_5xx=$(tr ' ' '\n' <<<"$load_codes" | awk -F: '$1 ~ /^5/ { n += $2 } END { printf "%d\n", n }')
    client_2xx=$(tr ' ' '\n' <<<"$load_codes" | awk -F: '$1 ~ /^2/ { n += $2 } END { printf "%d\n", n }')
    client_other=$((${load_sent:-0} - client_5xx - client_2xx - ${load_failed:-0}))
    table_header
    delta "$w/m0" "$w/m_fault"
    table_row "before fault" "$D_TOTAL" - -
    local before_victim=${D_BACKEND[victim]:-0}
    delta "$w/m_fault" "$w/m_ej"
    table_row "fault..ejected" "$D_TOTAL" - -
    delta "$w/m_ej" "$w/m_out"
    table_row "ejected" "$D_TOTAL" - -
    local inside_victim=${D_BACKEND[victim]:-0}
    delta "$w/m_out" "$w/m_back"
    table_row "ejected..back" "$D_TOTAL" - -
    delta "$w/m_back" "$w/m_end"
    table_row "back" "$D_TOTAL" - -
    local after_victim_2xx after_victim_5xx
    after_victim_2xx=$(answered_delta "$w/m_back" "$w/m_end" "$label" 2)
    after_victim_5xx=$(answered_delta "$w/m_back" "$w/m_end" "$label" 5)
    delta "$w/m0" "$w/m_end"
    table_row "total" "${load_sent:-0}" "${load_failed:-0}" "${load_rps:-0}"
    local total_5xx=$D_5XX total_429_other=$((D_429 + D_OTHER)) total=$D_TOTAL
    local victim_5xx ejections others_ejections=0 other_label
    victim_5xx=$(answered_delta "$w/m0" "$w/m_end" "$label" 5)
    ejections=$(($(metric_sample "$w/m_end" gateway_backend_ejections_total upstream=default "backend=$label") -
        $(metric_sample "$w/m0" gateway_backend_ejections_total upstream=default "backend=$label")))
    for other_label in "${BACKEND_LABELS[@]}"; do
        [[ $other_label == "$label" ]] && continue
        others_ejections=$((others_ejections + $(metric_sample "$w/m_end" gateway_backend_ejections_total upstream=default "backend=$other_label") -
            $(metric_sample "$w/m0" gateway_backend_ejections_total upstream=default "backend=$other_label")))
    done
    local split="" from=m0 to
    for to in m_fault m_ej m_out m_back m_end; do
        split+="${split:+, }$(answered_delta "$w/$from" "$w/$to" "$label" 2)/$(answered_delta "$w/$from" "$w/$to" "$label" 5)"
        from=$to
    done
    say "$victim_name's 2xx/5xx by phase (before fault, fault..ejected, ejected, ejected..back, back): $split"
    say "client: ${load_sent:-0} sent, statuses ${load_codes:-none}; $victim_name's /stats: faulted $faulted0 -> $faulted1"
    say "gateway_backend_ejections_total{upstream=\"default\",backend=\"$label\"} +$ejections"
    if [[ -n $t_out ]]; then
        say "inside the ejection ($(secs $((t_out - t_fault)))s after the fault): gateway_backend_ejected ${out_ejected:-?}"
    fi
    ((COMPOSE && OUTLIER_FLUSHES)) && say "the host's budget was renewed $OUTLIER_FLUSHES time(s) during the load (FLUSHALL every $OUTLIER_FLUSH_AT requests)"
    local log_ej log_back
    log_ej=$(log_line "$w/proxy.lines" "backend ejected: consecutive failures")
    log_back=$(log_line "$w/proxy.lines" "backend back from ejection")
    say "proxy log: ${log_ej:-(no ejection line)}"
    say "proxy log: ${log_back:-(no return line)}"

    say " the load:"
    expect_true "the load ran through every phase" $((LOAD_ENDED ? 1 : 0)) \
        "it ended first, after ${load_sent:-?} requests (raise OUTLIER_MAX_REQUESTS or AB_TIMEOUT_SECONDS)"
    expect_eq "load exit status" "$load_rc" 0
    expect_eq "failed requests (no HTTP answer)" "${load_failed:-?}" 0
    expect_eq "requests counted by the proxy" "$total" "${load_sent:-?}"
    expect_eq "429 and other statuses" "$total_429_other" 0
    expect_eq "client-visible errors (5xx the client got) = 5xx counted by the proxy" "$client_5xx" "$total_5xx"
    expect_eq "statuses other than 2xx and 5xx the client got" "$client_other" 0
    expect_true "$victim_name answered before the fault" $((before_victim > 0 ? 0 : 1)) "it answered none"
    say " the fault ($victim_name: 500 on every request but /health):"
    expect_true "$victim_name ejected (gateway_backend_ejected 1)" "$([[ -n $t_ej ]] && echo 0 || echo 1)" \
        "not seen while the load ran (at most 30 s after the fault)"
    expect_range "$victim_name's 5xx ($f in a row eject it; up to $c more in flight)" "$victim_5xx" "$f" $((f + c))
    expect_range "client-visible errors (at most consecutive_failures + concurrency)" "$client_5xx" 0 $((f + c))
    expect_eq "5xx answered by other backends" $((total_5xx - victim_5xx)) 0
    expect_eq "$victim_name's /stats faulted = its 5xx counted by the proxy" "$((faulted1 - faulted0))" "$victim_5xx"
    expect_eq "gateway_backend_ejections_total of $victim_name" "$ejections" 1
    expect_eq "ejections of the other backends" "$others_ejections" 0
    expect_eq "/ready upstreams.default.ejected when ejected" "$ready_ej" "$label"
    expect_eq "gateway_backend_up of $victim_name when ejected (its health check passes)" "${up_at_ej:-?}" 1
    expect_true "the proxy logged \"backend ejected: consecutive failures\" for $victim_name" \
        "$([[ -n $log_ej ]] && echo 0 || echo 1)" "no such line"
    if [[ -z $t_ej ]]; then
        say " (not ejected: nothing more to check)"
    else
        say " while ejected:"
        expect_true "fault cleared before its return (${e}s after the fault at the earliest)" \
            "$([[ -n $t_clear ]] && ((t_clear < t_fault + e * 1000)) && echo 0 || echo 1)" \
            "${t_clear:+cleared $(secs $((t_clear - t_fault)))s after the fault: it may have come back faulty}"
        if [[ -n $t_out ]]; then
            expect_eq "still ejected $(secs $((e * 1000 - OUTLIER_INSIDE_MS)))s after the fault" "$out_ejected" 1
            expect_range "$victim_name's answers inside the ejection (in flight when ejected)" "$inside_victim" 0 $((c - 1))
        else
            say "   (no moment inside the ejection left to check: seen ejected, or scraped, too late)"
        fi
        say " back:"
        expect_true "$victim_name back by itself (gateway_backend_ejected 0)" "$([[ -n $t_back ]] && echo 0 || echo 1)" \
            "still ejected $(secs "$return_bound")s after the fault"
        if [[ -n $t_back ]]; then
            return_ms=$((t_back - t_fault))
            expect_true "back no sooner than base_ejection_seconds (${e}s) after the fault" $((return_ms >= e * 1000 ? 0 : 1)) \
                "after $(secs "$return_ms")s"
            expect_eq "/ready upstreams.default.ejected when back" "$ready_back" ""
            expect_true "$victim_name answered 2xx again (at least $OUTLIER_RETURN_ANSWERS)" \
                $((after_victim_2xx >= OUTLIER_RETURN_ANSWERS ? 0 : 1)) "$after_victim_2xx"
            expect_eq "$victim_name's 5xx after its return" "$after_victim_5xx" 0
            expect_true "the proxy logged \"backend back from ejection\" for $victim_name" \
                "$([[ -n $log_back ]] && echo 0 || echo 1)" "no such line"
        fi
    fi
    if ((COMPOSE)); then
        compose_wait_ready "${#BACKEND_LABELS[@]}"
    fi
}

# ---------------------------------------------------------------------------------------------
# Main

# preflight: what every scenario needs: the binaries, or a reachable compose stack.
preflight() {
    if ((COMPOSE)); then
        PROXY_URL=$COMPOSE_PROXY_URL
        ADMIN_URL=$COMPOSE_ADMIN_URL
        local cid
        compose_labels
        docker info >/dev/null 2>&1 ||
            die "cannot reach the Docker engine ('docker info' failed); start it, then the stack: docker compose up -d --build"
        cid=$(compose ps -q proxy 2>/dev/null) || true
        if [[ -z $cid ]] || ! container_running "$cid"; then
            die "the compose proxy is not running; start the stack with: docker compose up -d --build"
        fi
        curl -fsS -o /dev/null --max-time 5 "$ADMIN_URL/health" 2>/dev/null ||
            die "the compose proxy does not answer at $ADMIN_URL/health (docker compose ps; docker compose logs proxy)"
    else
        ensure_binaries
    fi
}

# run_all: each scenario in its own process, so each gets its own processes, cleanup and exit
# status; a summary with the time each took.
run_all() {
    local flags=() results=() failed=0 all_start s start rc elapsed
    ((COMPOSE)) && flags+=(--compose)
    all_start=$(now_ms)
    for s in "${SCENARIOS[@]}"; do
        start=$(now_ms)
        rc=0
        "$BASH" "$LOADTEST_DIR/run_ab.sh" "$s" ${flags[@]+"${flags[@]}"} || rc=$?
        elapsed=$(($(now_ms) - start))
        if ((rc == 0)); then
            results+=("$(printf '%-10s PASS  %7ss' "$s" "$(secs "$elapsed")")")
        else
            results+=("$(printf '%-10s FAIL  %7ss  (exit %s)' "$s" "$(secs "$elapsed")" "$rc")")
            failed=$((failed + 1))
        fi
        say ""
    done
    say "== all$( ((COMPOSE)) && printf ' (compose)') =="
    printf '%s\n' "${results[@]}"
    say "total $(secs $(($(now_ms) - all_start)))s"
    if ((failed)); then
        say "RESULT all: FAIL ($failed of ${#SCENARIOS[@]} scenarios failed)"
        return 1
    fi
    say "RESULT all: PASS"
}

if [[ $SCENARIO == all ]]; then
    preflight
    run_all || exit 1
    exit 0
fi

install_cleanup
make_work_dir "run_ab.$SCENARIO" keep-failed
preflight
scenario_start=$(now_ms)
"scenario_$SCENARIO"
say "($(secs $(($(now_ms) - scenario_start)))s)"
verdict "$SCENARIO" || exit 1
