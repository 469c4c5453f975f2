#!/usr/bin/env bash
# Static checks: shell scripts, and the shipped deployment files: docker compose, Prometheus config and rules,
# Grafana dashboard wiring, and the systemd unit.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_packages docker-compose:docker-compose promtool:prometheus python3:python3 systemd-analyze:systemd \
  shellcheck:shellcheck
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

echo "==> shell scripts (bash -n, shellcheck)"
for f in scripts/*.sh loadtest/*.sh .ci/run; do bash -n "$f"; done
shellcheck -x -S warning scripts/*.sh loadtest/*.sh

echo "==> docker-compose.yml"
docker-compose -f docker-compose.yml config -q
services=$(docker-compose -f docker-compose.yml config --services | sort | tr '\n' ' ')
for s in proxy proxy2 redis backend1 backend2 backend3 prometheus grafana; do
  case " $services " in *" $s "*) ;; *) echo "service $s missing (have: $services)" >&2; exit 1 ;; esac
done
echo "services: $services"

echo "==> docker-compose.yml: safe defaults (ports on 127.0.0.1, Grafana without a shipped password)"
# As a user gets it: none of the variables that open it up set.
env -u COMPOSE_BIND -u GRAFANA_ADMIN_PASSWORD docker-compose -f docker-compose.yml config >"$tmp/compose.yml"
python3 - "$tmp/compose.yml" <<'EOF'
import sys, yaml

config = yaml.safe_load(open(sys.argv[1]))
bad, ports = [], []
for name, svc in sorted(config["services"].items()):
    for p in svc.get("ports", []):
        if isinstance(p, dict):  # Compose v2's long form
            host_ip, shown = p.get("host_ip", ""), f'{p.get("host_ip", "")}:{p.get("published")}:{p.get("target")}'
        else:  # v1: [IP:]PUBLISHED:TARGET[/PROTO]
            parts = str(p).split("/")[0].rsplit(":", 2)
            host_ip, shown = (parts[0] if len(parts) == 3 else ""), str(p)
        ports.append(f"{name} {shown}")
        if host_ip != "127.0.0.1":
            bad.append(f"{name}: {shown} is published on {host_ip or 'every interface'}, not 127.0.0.1")
env = config["services"].get("grafana", {}).get("environment", {})
want = {"GF_AUTH_ANONYMOUS_ORG_ROLE": "Viewer", "GF_USERS_ALLOW_SIGN_UP": "false"}
for key, value in want.items():
    if str(env.get(key)) != value:
        bad.append(f"grafana: {key} is {env.get(key)!r}, expected {value!r}")
if env.get("GF_SECURITY_ADMIN_PASSWORD"):
    bad.append("grafana: GF_SECURITY_ADMIN_PASSWORD has a shipped default; it must come from GRAFANA_ADMIN_PASSWORD only")
if not ports:
    bad.append("no published ports found in `docker-compose config` (format changed?)")
for line in ports:
    print("published:", line)
for line in bad:
    print("FAIL", line, file=sys.stderr)
sys.exit(1 if bad else 0)
EOF

echo "==> docker-compose.yml: the replicas and their shared store"
# Every gateway replica (a service running `proxy`) counts in the redis service of the stack,
# starts after it, and is scraped by Prometheus; Redis keeps nothing on disk and is not
# published on the host.
python3 - "$tmp/compose.yml" config/docker.toml prometheus/prometheus.yml <<'EOF'
import sys, tomllib, yaml

config = yaml.safe_load(open(sys.argv[1]))
services = config["services"]
with open(sys.argv[2], "rb") as f:
    gateway = tomllib.load(f)
prom = yaml.safe_load(open(sys.argv[3]))
bad = []

def command(svc):
    c = svc.get("command") or []
    return c.split() if isinstance(c, str) else [str(x) for x in c]

replicas = sorted(n for n, svc in services.items() if command(svc)[:1] == ["proxy"])
if len(replicas) < 2:
    bad.append(f"gateway replicas (services running proxy): {replicas}, expected two or more")
redis = services.get("redis", {})
args = command(redis)
if redis.get("ports"):
    bad.append(f"redis publishes {redis['ports']} on the host; only the replicas need it")
for flag, value in (("--save", ""), ("--appendonly", "no")):
    if flag not in args or args.index(flag) + 1 >= len(args) or args[args.index(flag) + 1] != value:
        bad.append(f"redis: persistence must be off ({flag} {value!r} in its command; have {args})")
if not redis.get("healthcheck"):
    bad.append("redis has no healthcheck (the replicas wait for it to be healthy)")
image = str(redis.get("image", ""))
if not image.startswith("redis:7"):
    bad.append(f"redis image {image!r}: a pinned redis:7 tag expected")
rl = gateway.get("rate_limit", {})
url = rl.get("redis", {}).get("url", "")
host = url.split("://", 1)[-1].split("@")[-1].split("/")[0].rsplit(":", 1)[0]
if rl.get("store") != "redis":
    bad.append(f"config/docker.toml: rate_limit.store is {rl.get('store')!r}, expected \"redis\" (the replicas share one budget)")
if host not in services:
    bad.append(f"config/docker.toml: rate_limit.redis.url {url!r} names no service of the stack")
targets = [t for job in prom.get("scrape_configs", []) if job.get("job_name") == "gateway"
           for sc in job.get("static_configs", []) for t in sc.get("targets", [])]
for name in replicas:
    deps = services[name].get("depends_on", {})
    if "redis" not in deps:
        bad.append(f"{name}: does not depend on redis")
    elif isinstance(deps, dict) and deps["redis"].get("condition") != "service_healthy":
        bad.append(f"{name}: depends on redis without condition service_healthy")
    if f"{name}:9091" not in targets:
        bad.append(f"prometheus/prometheus.yml: job gateway does not scrape {name}:9091 (targets {targets})")
if not bad:
    print(f"replicas {', '.join(replicas)}: store redis at {url}, scraped as {', '.join(targets)}; redis {image}, no published port, no persistence")
for line in bad:
    print("FAIL", line, file=sys.stderr)
sys.exit(1 if bad else 0)
EOF

echo "==> prometheus/"
promtool check config prometheus/prometheus.yml
promtool check rules prometheus/rules.yml

echo "==> grafana dashboards (static)"
python3 loadtest/check_dashboard.py

echo "==> deploy/proxy.service"
BIN=${BIN:-$PWD/target/debug}
[ -x "$BIN/proxy" ] || cargo build -p proxy
# verify wants the ExecStart binary to exist: point it at the one just built.
sed "s|/usr/local/bin/proxy|$BIN/proxy|g" deploy/proxy.service >"$tmp/proxy.service"
out=$(systemd-analyze verify "$tmp/proxy.service" 2>&1) || { echo "$out" >&2; exit 1; }
# Warnings about the host's own units are not ours; anything naming our unit is.
if echo "$out" | grep -q "proxy.service"; then echo "$out" >&2; exit 1; fi
echo "systemd unit verified"
