# shellcheck shell=bash
# Shared shell helpers for scripts/: tool checks, installs, free ports, readiness polling.
# Sourced, not run.

# Prints the command that installs Debian packages, with sudo when not root.
apt_cmd() {
  if [ "$(id -u)" -eq 0 ]; then echo "apt-get"; else echo "sudo apt-get"; fi
}

# ensure_packages "cmd:package" ...: installs the packages whose command is missing, when run
# as root or with passwordless sudo; otherwise stops with the exact command to run.
ensure_packages() {
  local missing=() pair cmd pkg
  for pair in "$@"; do
    cmd=${pair%%:*}; pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  # Deduplicate (several commands can come from one package).
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  if [ "$(id -u)" -eq 0 ] || sudo -n true 2>/dev/null; then
    echo "==> installing: ${missing[*]}"
    local apt; apt=$(apt_cmd)
    DEBIAN_FRONTEND=noninteractive $apt update -qq
    DEBIAN_FRONTEND=noninteractive $apt install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "missing tools; install them with:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
}

# ---- Docker (check_compose.sh, offline_images.sh) -------------------------------------------

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
  [ -n "$DOCKER" ] || { echo "no docker CLI found" >&2; return 1; }
  mkdir -p "$1"
  ln -sf "$DOCKER" "$1/docker"
  PATH="$1:$PATH"
  export DOCKER PATH
}

# compose_cmd: sets COMPOSE=(docker compose) when the v2 plugin answers, else (docker-compose).
# Returns 1 when neither exists.
COMPOSE=()
compose_cmd() {
  if "$(docker_cli)" compose version >/dev/null 2>&1; then
    COMPOSE=("$(docker_cli)" compose)
  elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
  else
    return 1
  fi
}

# compose_images FILE: one line per service of the compose file: "SERVICE IMAGE BUILD", BUILD 1
# when the service is built from a Dockerfile (so its image is never pulled), else 0. Reads the
# normalized `config` output (v1 and v2 print the same layout).
compose_images() {
  "${COMPOSE[@]}" -f "$1" config | awk '
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

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_http URL [STATUS] [SECONDS]: polls until URL answers STATUS (default 200).
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
