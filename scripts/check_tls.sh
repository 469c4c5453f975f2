#!/usr/bin/env bash
# The TLS listener as a scanner sees it: testssl.sh (Debian's package) against the gateway's
# HTTPS listener, with certificates from scripts/dev_certs.sh in a temporary directory. Fails
# when a protocol or a cipher category rated weak is offered (SSLv2/3, TLS 1.0/1.1, NULL,
# anonymous, export, LOW, 3DES/IDEA); prints testssl's verdict lines either way.
#
#   scripts/check_tls.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

need_tool testssl "apt-get install -y testssl.sh"
need_tool openssl "apt-get install -y openssl"
need_tool curl "apt-get install -y curl"
BIN=${BIN:-target/debug}
[[ -x $BIN/proxy && -x $BIN/mock-backend ]] || cargo build --workspace -q

install_cleanup
make_work_dir gateway-tls-check keep-failed

scripts/dev_certs.sh "$WORK_DIR/certs" >"$WORK_DIR/certs.log" 2>&1 || die "dev_certs.sh failed: $(cat "$WORK_DIR/certs.log")"

spawn "$WORK_DIR/backend.out" "$BIN/mock-backend" --listen 127.0.0.1:0 --name tls-check
backend_listening() { grep -q '^mock-backend .* listening on ' "$WORK_DIR/backend.out"; }
poll 20000 0.05 backend_listening || die "the mock backend did not start"
backend=$(sed -n 's/^mock-backend .* listening on \(127\.0\.0\.1:[0-9]*\).*$/\1/p' "$WORK_DIR/backend.out" | head -n 1)

# https_ready URL: the proxy answers 200 over TLS, verified against the demo CA.
https_ready() {
  [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 --cacert "$WORK_DIR/certs/ca.pem" "$1") == 200 ]]
}

# The ports are picked, then bound by the proxy: a port taken in between fails the start, which
# is tried again on new ports (three times at most).
started=0
for attempt in 1 2 3; do
  read -r http_port tls_port admin_port <<<"$(free_ports 3)"
  cat >"$WORK_DIR/proxy.toml" <<EOF
[server]
listen = "127.0.0.1:$http_port"
upgrade_sock = "$WORK_DIR/upgrade.sock"
pid_file = "$WORK_DIR/proxy.pid"
[upstream]
backends = ["$backend"]
[rate_limit]
exempt = ["127.0.0.0/8"]
[tls]
listen = "127.0.0.1:$tls_port"
certificates = [{ cert = "$WORK_DIR/certs/localhost.pem", key = "$WORK_DIR/certs/localhost.key" }]
[admin]
listen = "127.0.0.1:$admin_port"
EOF
  spawn "$WORK_DIR/proxy$attempt.out" "$BIN/proxy" -c "$WORK_DIR/proxy.toml"
  proxy_pid=$SPAWNED_PID
  if poll 20000 0.1 https_ready "https://localhost:$tls_port/health"; then
    started=1
    break
  fi
  stop_pid "$proxy_pid"
  say "the proxy did not start (attempt $attempt): $(tail -n 3 "$WORK_DIR/proxy$attempt.out")"
done
((started)) || die "the proxy never served HTTPS; see $WORK_DIR"

say "testssl.sh against https://localhost:$tls_port (protocols and cipher categories)"
timeout 300 testssl --quiet --color 0 --warnings off -p -s --jsonfile "$WORK_DIR/testssl.json" \
  "localhost:$tls_port" >"$WORK_DIR/testssl.txt" 2>&1 || true
# The verdict lines, as testssl printed them.
grep -E '^ (SSLv|TLS 1|NPN|ALPN|NULL|Anonymous|Export|LOW|Triple|Obsolete|Strong)' "$WORK_DIR/testssl.txt" || true

python3 - "$WORK_DIR/testssl.json" <<'PY'
import json, sys
findings = json.load(open(sys.argv[1]))
weak_protocols = {"SSLv2", "SSLv3", "TLS1", "TLS1_1"}
weak_ciphers = {"cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT", "cipherlist_LOW",
                "cipherlist_3DES_IDEA"}
seen, bad = set(), []
for f in findings:
    fid, sev, text = f.get("id", ""), f.get("severity", ""), f.get("finding", "")
    seen.add(fid)
    offered = "offered" in text and "not offered" not in text
    if fid in weak_protocols | weak_ciphers and offered:
        bad.append(f"{fid}: {text} ({sev})")
    elif fid.startswith(("SSLv", "TLS", "cipherlist_")) and sev in {"MEDIUM", "HIGH", "CRITICAL"}:
        bad.append(f"{fid}: {text} ({sev})")
missing = sorted((weak_protocols | weak_ciphers | {"TLS1_2", "TLS1_3"}) - seen)
if missing:
    bad.append(f"testssl did not report {missing}")
for line in bad:
    print(f"FAIL {line}")
print("check_tls: PASS: no weak protocol or cipher offered" if not bad else "check_tls: FAIL")
sys.exit(1 if bad else 0)
PY
