#!/usr/bin/env bash
# Makes sure every base image the Dockerfile and docker-compose.yml name exists in the local
# Docker engine. An image already there is kept; one `docker pull` can get is pulled (and then
# replaces a stand-in left by an earlier run); only an image that cannot be pulled (no registry
# access) gets a local stand-in, built from Debian packages and tagged with the exact name the
# files use:
#
#   debian:12*-slim, debian:bookworm*   mmdebstrap --variant=minbase (slim's dpkg excludes), docker import
#   rust:*-bookworm                     the same base + build-essential, cmake, pkg-config,
#                                       ca-certificates, the host's Rust toolchain and rustup
#                                       (copied in: only the active toolchain's compiler, cargo and
#                                       libraries, no docs) and the host's CA store, so
#                                       `cargo build --locked` fetches crates inside the build
#   prom/prometheus:*                   the same base + Debian's prometheus and wget
#   redis:*                             the same base + Debian's redis-server
#   grafana/grafana:*                   none (not packaged in Debian): reported as missing
#
# A stand-in is NOT the image its tag names: the Debian base is today's bookworm from the mirror
# (not the pinned point release), the Rust image holds the host's toolchain whatever version the
# tag says, Prometheus is Debian's build (2.42 in bookworm). Each is labelled
# io.pingora-gateway.stand-in=true with a description of what it holds, and this script says so
# every time it finds one. On a machine that can pull, nothing is substituted.
#
#   scripts/offline_images.sh             the images of ./Dockerfile and ./docker-compose.yml
#   scripts/offline_images.sh IMAGE...    just these
#
# Settings (environment): DOCKER (the docker CLI; default: see scripts/lib.sh docker_cli),
# OFFLINE_MIRROR [http://deb.debian.org/debian], OFFLINE_SECURITY_MIRROR
# [http://deb.debian.org/debian-security], OFFLINE_REBUILD=1 rebuilds stand-ins that exist,
# PULL_TIMEOUT_SECONDS [120].
# Needs a running Docker engine (scripts/check_compose.sh starts one) and, to build stand-ins,
# root (mmdebstrap's root mode; the hooks copy files with their owners). Exit status: 0 when every image is present or substituted (missing Grafana
# included: it is reported, and check_compose.sh runs the stack without it), 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

MIRROR=${OFFLINE_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${OFFLINE_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
PULL_TIMEOUT_SECONDS=${PULL_TIMEOUT_SECONDS:-120}
DOCKER=$(docker_cli)
[ -n "$DOCKER" ] || { echo "offline_images: no docker CLI (install docker.io)" >&2; exit 1; }
"$DOCKER" info >/dev/null 2>&1 || {
  echo "offline_images: the Docker engine does not answer ('$DOCKER info' failed); start dockerd" >&2
  exit 1
}

work=$(mktemp -d "${TMPDIR:-/tmp}/offline_images.XXXXXX")
trap 'rm -rf -- "$work"' EXIT

# The images to provide.
images=()
if [ $# -gt 0 ]; then
  images=("$@")
else
  mapfile -t images < <(dockerfile_images Dockerfile)
  compose_cmd || { echo "offline_images: docker compose / docker-compose not found" >&2; exit 1; }
  while read -r _ image build; do
    [ "$build" = 1 ] || [ "$image" = - ] || images+=("$image")
  done < <(compose_images docker-compose.yml)
fi

present() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }
stand_in_note() {
  "$DOCKER" image inspect -f '{{index .Config.Labels "io.pingora-gateway.stand-in.note"}}' "$1" 2>/dev/null |
    grep -v '^<no value>$' || true
}

# suite_of TAG: the Debian suite a tag asks for (bookworm only: that is what this host's mirror
# and keyring are known to build).
suite_of() {
  case $1 in
    12 | 12.* | 12-* | bookworm | bookworm-* | *-bookworm) echo bookworm ;;
    *) return 1 ;;
  esac
}

# debootstrap TAG SUITE OUT INCLUDE HOOK [DPKGOPT...]: a minbase tarball of SUITE with INCLUDE
# (comma list) and the slim images' dpkg excludes (and DPKGOPTs); HOOK (an executable or "") runs
# as a customize hook with the root directory as $1.
debootstrap() {
  local tag=$1 suite=$2 out=$3 include=$4 hook=$5 args t0 opt
  shift 5
  args=(--variant=minbase --quiet --format=tar
    --aptopt='Acquire::Languages "none"'
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/groff/*' --dpkgopt='path-exclude=/usr/share/lintian/*'
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias')
  for opt in "$@"; do args+=("--dpkgopt=$opt"); done
  [ -z "$include" ] || args+=("--include=$include")
  [ -z "$hook" ] || args+=("--customize-hook=$hook")
  t0=$SECONDS
  report "$tag: mmdebstrap --variant=minbase $suite${include:+ + $include} ..."
  if ! mmdebstrap "${args[@]}" "$suite" "$out" \
    "deb $MIRROR $suite main" "deb $MIRROR $suite-updates main" \
    "deb $SECURITY_MIRROR $suite-security main" >"$work/mmdebstrap.log" 2>&1; then
    tail -n 20 "$work/mmdebstrap.log" >&2
    echo "offline_images: mmdebstrap failed for $tag (mirror $MIRROR)" >&2
    return 1
  fi
  report "$tag: root file system built in $((SECONDS - t0)) s ($(du -m "$out" | cut -f1) MB)"
}

# import TAR TAG NOTE CHANGE...: docker import with the stand-in labels and Dockerfile changes.
import() {
  local tar=$1 tag=$2 note=$3 changes=() c
  shift 3
  for c in "$@"; do changes+=(--change "$c"); done
  "$DOCKER" import \
    --change 'LABEL io.pingora-gateway.stand-in=true' \
    --change "LABEL io.pingora-gateway.stand-in.note=\"$note\"" \
    "${changes[@]}" "$tar" "$tag" >/dev/null || return 1
  rm -f -- "$tar"
}

BASE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

standin_debian() {
  local tag=$1 suite=$2
  debootstrap "$tag" "$suite" "$work/root.tar" "" "" || return 1
  import "$work/root.tar" "$tag" "offline stand-in: Debian $suite minbase from $MIRROR (not the pinned point release)" \
    "ENV PATH=$BASE_PATH" 'CMD ["bash"]'
}

standin_rust() {
  local tag=$1 suite=$2 rustc sysroot version host name rustup hook
  if ! command -v rustup >/dev/null 2>&1 || ! command -v rustc >/dev/null 2>&1; then
    echo "offline_images: $tag needs the host's Rust toolchain and rustup (https://rustup.rs)" >&2
    return 1
  fi
  rustc=$(rustup which rustc) || return 1
  sysroot=$("$rustc" --print sysroot) || return 1
  version=$("$rustc" -V | awk '{print $2}')
  host=$("$rustc" -vV | sed -n 's/^host: //p')
  name=$version-$host
  rustup=$(command -v rustup)
  [ -x "$sysroot/bin/cargo" ] || { echo "offline_images: no cargo in $sysroot" >&2; return 1; }
  # Runs outside the chroot with its root directory as $1: the toolchain (compiler, cargo,
  # libraries; no docs, clippy or rustfmt) where the rust image keeps it, rustup and its
  # proxies, and the host's CA store in place of the image's (the host may reach crates.io
  # through a TLS-inspecting proxy whose CA only the host trusts).
  hook=$work/rust-hook.sh
  cat >"$hook" <<EOF || return 1
#!/bin/sh
set -eu
root=\$1
tc=\$root/usr/local/rustup/toolchains/$name
mkdir -p "\$tc/bin" "\$root/usr/local/cargo/bin"
cp -a "$sysroot/bin/cargo" "$sysroot/bin/rustc" "\$tc/bin/"
cp -a "$sysroot/lib" "\$tc/"
cp -a "$rustup" "\$root/usr/local/cargo/bin/rustup"
for p in cargo rustc; do ln -s rustup "\$root/usr/local/cargo/bin/\$p"; done
printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\n' "$name" >"\$root/usr/local/rustup/settings.toml"
chmod -R a+w "\$root/usr/local/cargo" "\$root/usr/local/rustup"
# Never write through the image's symlinks (they point at /usr/share/... of the host here).
rm -rf "\$root/etc/ssl/certs"
cp -rL /etc/ssl/certs "\$root/etc/ssl/certs"
if [ -d /usr/local/share/ca-certificates ]; then
  rm -rf "\$root/usr/local/share/ca-certificates"
  cp -rL /usr/local/share/ca-certificates "\$root/usr/local/share/ca-certificates"
fi
EOF
  chmod +x "$hook"
  report "$tag: the host's toolchain $name (rustc $version) and rustup go in; the tag asks for ${tag#rust:}"
  debootstrap "$tag" "$suite" "$work/root.tar" "build-essential,cmake,pkg-config,ca-certificates" "$hook" || return 1
  import "$work/root.tar" "$tag" "offline stand-in: Debian $suite + build-essential cmake + the host's Rust $version (rustup; not the tagged version) + the host's CA store" \
    "ENV PATH=/usr/local/cargo/bin:$BASE_PATH" 'ENV RUSTUP_HOME=/usr/local/rustup' \
    'ENV CARGO_HOME=/usr/local/cargo' "ENV RUST_VERSION=$version" 'CMD ["bash"]'
}

standin_prometheus() {
  local tag=$1 suite=$2 hook=$work/prometheus-hook.sh
  cat >"$hook" <<'EOF'
#!/bin/sh
set -eu
# The official image's layout: data in /prometheus, owned by nobody.
mkdir -p "$1/prometheus"
chown 65534:65534 "$1/prometheus"
EOF
  chmod +x "$hook"
  # The classic web UI's JavaScript libraries (220 MB) are left out: the HTTP API, /-/ready and
  # the scrapes are what the stack and its check use.
  debootstrap "$tag" "$suite" "$work/root.tar" "prometheus,wget" "$hook" 'path-exclude=/usr/share/javascript/*' || return 1
  import "$work/root.tar" "$tag" "offline stand-in: Debian $suite's prometheus package (not ${tag#*:}; no web UI assets) + wget" \
    "ENV PATH=$BASE_PATH" 'USER nobody' 'WORKDIR /prometheus' 'EXPOSE 9090' 'VOLUME ["/prometheus"]' \
    'ENTRYPOINT ["/usr/bin/prometheus"]' \
    'CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]'
}

standin_redis() {
  local tag=$1 suite=$2 hook=$work/redis-hook.sh
  cat >"$hook" <<'EOF'
#!/bin/sh
set -eu
mkdir -p "$1/data"
chroot "$1" chown redis:redis /data
EOF
  chmod +x "$hook"
  debootstrap "$tag" "$suite" "$work/root.tar" "redis-server" "$hook" || return 1
  # The official image turns protected mode off (the network is the container's own).
  import "$work/root.tar" "$tag" "offline stand-in: Debian $suite's redis-server (not ${tag#*:})" \
    "ENV PATH=$BASE_PATH" 'USER redis' 'WORKDIR /data' 'EXPOSE 6379' 'VOLUME ["/data"]' \
    'CMD ["redis-server", "--protected-mode", "no"]'
}

# standin IMAGE: the stand-in recipe for IMAGE; 2 when there is none.
standin() {
  local image=$1 repo tag suite
  repo=${image%:*}
  tag=${image##*:}
  [ "$repo" != "$image" ] || tag=latest
  repo=${repo#docker.io/}
  repo=${repo#library/}
  case $repo in
    debian)
      suite=$(suite_of "${tag%-slim}") || return 2
      standin_debian "$image" "$suite"
      ;;
    rust)
      suite=$(suite_of "$tag") || return 2
      standin_rust "$image" "$suite"
      ;;
    prom/prometheus) standin_prometheus "$image" bookworm ;;
    redis) standin_redis "$image" bookworm ;;
    *) return 2 ;;
  esac
}

failed=0 missing=()
for image in "${images[@]}"; do
  note='' old=''
  if present "$image"; then
    note=$(stand_in_note "$image")
    if [ -z "$note" ]; then
      report "$image: present"
      continue
    fi
    old=$("$DOCKER" image inspect -f '{{.Id}}' "$image")
  fi
  # Missing, or a stand-in: the real image whenever a pull can get it.
  if timeout "$PULL_TIMEOUT_SECONDS" "$DOCKER" pull -q "$image" >"$work/pull.log" 2>&1; then
    report "$image: pulled${old:+ (it replaces the stand-in)}"
    [ -z "$old" ] || "$DOCKER" image rm "$old" >/dev/null 2>&1 || true
    continue
  fi
  why=$(tail -n 1 "$work/pull.log")
  if [ -n "$note" ] && [ -z "${OFFLINE_REBUILD:-}" ]; then
    report "$image: STAND-IN present ($note); the real image cannot be pulled: $why"
    continue
  fi
  report "$image: cannot be pulled ($why)${old:+; rebuilding the stand-in (OFFLINE_REBUILD)}"
  ensure_packages mmdebstrap:mmdebstrap
  t0=$SECONDS rc=0
  standin "$image" || rc=$?
  if [ "$rc" = 0 ]; then
    report "$image: STAND-IN built in $((SECONDS - t0)) s: $(stand_in_note "$image")"
    [ -z "$old" ] || "$DOCKER" image rm "$old" >/dev/null 2>&1 || true
  elif [ "$rc" = 2 ]; then
    report "$image: MISSING: no stand-in can be built for it here"
    missing+=("$image")
  else
    echo "offline_images: building the stand-in for $image failed" >&2
    failed=1
  fi
done

for image in ${missing[@]+"${missing[@]}"}; do
  case $image in
    grafana/grafana:* | docker.io/grafana/grafana:*) ;;
    *) failed=1 ;;
  esac
done
exit "$failed"
