#!/usr/bin/env bash
# Makes a local certificate authority and server certificates signed by it, for the TLS demo and
# tests. For local development only: nothing it makes is to be committed (certs/ is ignored).
#
#   scripts/dev_certs.sh [--force] [DIR]       (DIR: default certs/ at the repository root)
#
# In DIR (keys mode 600, certificates 644):
#   ca.pem, ca.key               the CA: ECDSA P-256, 10 years, CA:TRUE, pathlen 0
#   localhost.pem, localhost.key ECDSA P-256; DNS:localhost, DNS:gateway.test, IP:127.0.0.1,
#                                IP:::1 (the gateway's own listener)
#   api.pem, api.key             RSA 2048; DNS:api.example.test (so both key types exist)
#   backend.pem, backend.key     ECDSA P-256; DNS:backend.test, IP:127.0.0.1 (for
#                                mock-backend --tls-cert DIR/backend.pem --tls-key DIR/backend.key)
# Each leaf: DAYS days (default 90), CA:FALSE, keyUsage digitalSignature (+ keyEncipherment for
# RSA), extendedKeyUsage serverAuth, a random 128-bit serial, signed with SHA-256 by the CA.
#
# Idempotent: an existing CA is never replaced without --force. A run with the CA in place keeps
# it and (re)issues only the leaves that are missing, expire within 7 days (half of DAYS if that
# is shorter), do not match their key, or were not signed by that CA; with everything in place it
# changes nothing. --force makes a new CA and new leaves.
# Clients trust DIR/ca.pem, e.g. `curl --cacert certs/ca.pem https://127.0.0.1:PORT/health`.
#
# Needs openssl (Debian's openssl package). Exit status: 0 done, 2 usage or setup error.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

USAGE="usage: scripts/dev_certs.sh [--force] [DIR]   (DIR: default certs/ at the repository root)"

force=0
dir=
while (($# > 0)); do
  case $1 in
    --force) force=1 ;;
    -h | --help)
      say "$USAGE"
      exit 0
      ;;
    -*) die "unknown option '$1' ($USAGE)" ;;
    *)
      [[ -z $dir ]] || die "one DIR only ($USAGE)"
      dir=$1
      ;;
  esac
  shift
done
dir=${dir:-$ROOT/certs}

DAYS=${DAYS:-90}
[[ $DAYS =~ ^[1-9][0-9]{0,4}$ ]] || die "DAYS must be a whole number of days from 1 to 99999, not '$DAYS'"
CA_DAYS=3650
# A leaf expiring within this many seconds is reissued by a run without --force: 7 days, or
# half of DAYS when that is shorter (so short-lived leaves are not reissued on every run).
RENEW_SECONDS=$((DAYS < 14 ? DAYS * 86400 / 2 : 7 * 86400))

need_tool openssl "$(apt_cmd) install -y openssl"

mkdir -p "$dir"
[[ -w $dir ]] || die "cannot write to $dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Keys (and everything else) are created private; certificates are opened up below.
umask 077

# The one openssl configuration used, so the system's openssl.cnf adds no extensions of its own.
cat >"$tmp/openssl.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[leaf_ec]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = $ENV::SAN
[leaf_rsa]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = $ENV::SAN
EOF
# $ENV::SAN must be set whenever openssl reads the file, leaf or not.
export SAN=

# random_serial: a positive 128-bit serial in hex, for -set_serial.
random_serial() { printf '0x%s' "$(openssl rand -hex 16)"; }

# new_key FILE ec|rsa: a new private key (PKCS#8 PEM, mode 600) in FILE.
new_key() {
  case $2 in
    ec) openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null ;;
    rsa) openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null ;;
  esac || die "openssl could not make a $2 key"
  chmod 600 "$1"
}

# install_files SRC_DIR NAME...: moves SRC_DIR/NAME.key and SRC_DIR/NAME.pem into $dir (keys 600,
# certificates 644), each by rename so no half-written file is ever in place.
install_files() {
  local src=$1 name
  shift
  for name in "$@"; do
    chmod 600 "$src/$name.key"
    chmod 644 "$src/$name.pem"
    mv -f "$src/$name.key" "$dir/$name.key"
    mv -f "$src/$name.pem" "$dir/$name.pem"
  done
}

# make_ca: a new CA in $tmp (ca.pem, ca.key), installed with the leaves at the end.
make_ca() {
  new_key "$tmp/ca.key" ec
  openssl req -x509 -new -config "$tmp/openssl.cnf" -key "$tmp/ca.key" -sha256 \
    -days "$CA_DAYS" -set_serial "$(random_serial)" -extensions ca \
    -subj "/O=gateway development/CN=gateway development CA $(date -u +%Y-%m-%d)" \
    -out "$tmp/ca.pem" || die "openssl could not make the CA"
  say "made the CA: $dir/ca.pem, $dir/ca.key"
  note "the CA is valid for $CA_DAYS days (10 years): fine for local development only. Never" \
    "add it to a system or browser trust store, and keep ca.key private."
}

# leaf_ok NAME: $dir/NAME.pem and NAME.key exist and belong together, and the certificate was
# signed by $dir/ca.pem and is good for longer than RENEW_SECONDS.
leaf_ok() {
  [[ -s $dir/$1.pem && -s $dir/$1.key ]] &&
    openssl verify -CAfile "$dir/ca.pem" "$dir/$1.pem" >/dev/null 2>&1 &&
    openssl x509 -in "$dir/$1.pem" -noout -checkend "$RENEW_SECONDS" >/dev/null 2>&1 &&
    [[ $(openssl x509 -in "$dir/$1.pem" -noout -pubkey 2>/dev/null) == \
      "$(openssl pkey -in "$dir/$1.key" -pubout 2>/dev/null)" ]]
}

# make_leaf NAME ec|rsa CN SAN: a new key and certificate for NAME in $tmp, signed by the CA at
# $ca_dir (installed at the end).
make_leaf() {
  local name=$1 kind=$2 cn=$3
  new_key "$tmp/$name.key" "$kind"
  openssl req -new -config "$tmp/openssl.cnf" -key "$tmp/$name.key" -subj "/CN=$cn" \
    -out "$tmp/$name.csr" || die "openssl could not make the request for $name"
  SAN=$4 openssl x509 -req -in "$tmp/$name.csr" -CA "$ca_dir/ca.pem" -CAkey "$ca_dir/ca.key" \
    -set_serial "$(random_serial)" -days "$DAYS" -sha256 \
    -extfile "$tmp/openssl.cnf" -extensions "leaf_$kind" -out "$tmp/$name.pem" 2>/dev/null ||
    die "openssl could not sign the certificate for $name"
  made+=("$name")
  say "made $dir/$name.pem, $dir/$name.key ($kind; $4; $DAYS days)"
}

# The leaves this run made in $tmp, moved into $dir with a new CA once all of it is there (an
# interrupted run leaves $dir as it was), and where the CA that signs them is.
made=()
ca_dir=$dir
if [[ -e $dir/ca.pem || -e $dir/ca.key ]] && ((force == 0)); then
  [[ -s $dir/ca.pem && -s $dir/ca.key ]] ||
    die "$dir holds only half a CA (ca.pem and ca.key go together); --force makes a new one"
  openssl x509 -in "$dir/ca.pem" -noout -checkend "$RENEW_SECONDS" >/dev/null 2>&1 ||
    die "the CA in $dir has expired or expires soon; --force makes a new one"
  chmod 600 "$dir/ca.key"
  say "keeping the existing CA $dir/ca.pem (--force replaces it, and every certificate)"
else
  make_ca
  ca_dir=$tmp
  force=1
fi

# name, key type, subject CN, subjectAltName.
leaves=(
  "localhost ec localhost DNS:localhost,DNS:gateway.test,IP:127.0.0.1,IP:::1"
  "api rsa api.example.test DNS:api.example.test"
  "backend ec backend.test DNS:backend.test,IP:127.0.0.1"
)
for leaf in "${leaves[@]}"; do
  read -r name kind cn san <<<"$leaf"
  if ((force == 0)) && leaf_ok "$name"; then
    chmod 600 "$dir/$name.key"
    say "keeping $dir/$name.pem (signed by the CA, not near its expiry)"
  else
    make_leaf "$name" "$kind" "$cn" "$san"
  fi
done

# The leaves first: should the CA's move not happen, the next run reissues them.
((${#made[@]} == 0)) || install_files "$tmp" "${made[@]}"
[[ $ca_dir == "$dir" ]] || install_files "$tmp" ca

for name in ca localhost api backend; do
  [[ $(stat -c %a "$dir/$name.key") == 600 ]] || die "$dir/$name.key is not mode 600"
done
openssl verify -CAfile "$dir/ca.pem" "$dir/localhost.pem" "$dir/api.pem" "$dir/backend.pem" \
  >/dev/null || die "a certificate in $dir does not verify against $dir/ca.pem"
say "done: clients trust $dir/ca.pem; e.g. mock-backend --tls-cert $dir/backend.pem" \
  "--tls-key $dir/backend.key"
