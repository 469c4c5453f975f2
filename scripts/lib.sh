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
