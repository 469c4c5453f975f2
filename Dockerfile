# Image for the docker-compose demo: one image, two binaries.
#   proxy         the gateway (default command, health-checked on the admin listener)
#   mock-backend  the demo backend (compose runs it with its own command and healthcheck)
#
#   docker build -t pingora-gateway .
#   docker run --rm -p 8080:8080 -p 9091:9091 -v "$PWD/config/docker.toml:/etc/gateway/docker.toml:ro" pingora-gateway

ARG RUST_VERSION=1.85.1
ARG DEBIAN_VERSION=12.11

# ---------------------------------------------------------------- build
FROM rust:${RUST_VERSION}-bookworm AS build

# libz-ng-sys (pulled in by pingora-core through flate2/zlib-ng) runs cmake in its build script.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src

# Dependency layer: manifests, the lock file and stub mains. This layer is rebuilt only when
# a manifest or Cargo.lock changes, not on every source edit.
COPY Cargo.toml Cargo.lock ./
COPY proxy/Cargo.toml proxy/Cargo.toml
COPY mock-backend/Cargo.toml mock-backend/Cargo.toml
# The tests' shared crate is a workspace member (its manifest must load) but not built here: an
# empty library stands in for it.
COPY test-support/Cargo.toml test-support/Cargo.toml
RUN mkdir -p proxy/src mock-backend/src test-support/src \
    && echo 'fn main() {}' > proxy/src/main.rs \
    && echo 'fn main() {}' > mock-backend/src/main.rs \
    && touch test-support/src/lib.rs \
    && cargo build --release --locked \
    && rm -rf proxy/src mock-backend/src

# The real sources. Touch them so cargo never mistakes the stubs' fingerprints for them.
COPY proxy/src proxy/src
COPY mock-backend/src mock-backend/src
RUN find proxy/src mock-backend/src -name '*.rs' -exec touch {} + \
    && cargo build --release --locked \
    && install -D -m 0755 target/release/proxy /out/proxy \
    && install -D -m 0755 target/release/mock-backend /out/mock-backend

# ---------------------------------------------------------------- runtime
FROM debian:${DEBIAN_VERSION}-slim AS runtime

# curl is only for HEALTHCHECK (here and in docker-compose.yml); openssl for the demo's
# certificates (compose's `certs` service runs scripts/dev_certs.sh into /certs).
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl openssl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --home-dir /var/lib/gateway --create-home \
        --shell /usr/sbin/nologin gateway \
    && install -d -o gateway -g gateway -m 0755 /certs

COPY --from=build /out/proxy /out/mock-backend /usr/local/bin/
COPY scripts/dev_certs.sh scripts/lib.sh /usr/local/share/gateway/scripts/

USER gateway
WORKDIR /var/lib/gateway

# 8080: proxy listener, 8443: its HTTPS listener, 9091: admin (/metrics, /health, /ready).
EXPOSE 8080 8443 9091

# SIGTERM drains (grace_period_seconds + graceful_shutdown_timeout_seconds); give the
# container a stop timeout above that (compose: stop_grace_period).
STOPSIGNAL SIGTERM

# Liveness of the proxy's admin listener. mock-backend containers override this in compose.
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:9091/health"]

CMD ["proxy", "-c", "/etc/gateway/docker.toml"]
