//! A bare Pingora round-robin proxy: the baseline `loadtest/bench.sh` compares the gateway with.
//!
//! It does only what every proxy in the benchmark does: round robin over the backends given on
//! the command line (Pingora's `LoadBalancer<RoundRobin>`, as the gateway uses), upstream
//! keepalive (Pingora's connection pool) and `X-Forwarded-For`, with the gateway's allocator
//! (mimalloc). No health checks, rate limiting, metrics, logging or other headers, so the
//! difference to the gateway is what those cost. Otherwise it keeps Pingora's defaults, as a
//! Pingora user's proxy would: the standard upstream request policy (hop-by-hop fields stripped
//! with 13 removals per request) and the response-compression module switched off. The gateway
//! does without both: its own pass over the fields (about 0.2k instructions per request under
//! callgrind, where Pingora's policy costs bare 3.5k) and no module (about 0.8k).
//!
//! ```text
//! cargo build --release --example bare_proxy
//! target/release/examples/bare_proxy --listen 127.0.0.1:6188 --threads 1 127.0.0.1:9001 127.0.0.1:9002
//! ```
//!
//! `--tls-listen ADDR --tls-cert CHAIN.pem --tls-key KEY.pem` adds Pingora's own TLS listener
//! (rustls, its default versions and ALPN): the ceiling for `loadtest/bench.sh --tls`.
//!
//! `--contract-headers` is a measuring device, not a baseline: it adds the headers the
//! gateway's contract makes it add (five to the backend and nine to the client, as `ours` in
//! the benchmarks sends them: `X-Forwarded-For` built as the gateway builds it,
//! `X-Forwarded-Proto`, `-Host`, `X-Request-Id`, one configured header; `X-Upstream`,
//! `X-Request-Id`, `Via`, five rate-limit fields, one configured header), the others with
//! fixed values, through the gateway's own header-map path (`gateway::header_case`). The
//! gateway against it is the cost of everything else the gateway does (routing, rate limiting,
//! metrics, request ids, health state, its connection handling), the headers' own cost being
//! that of the `http` map and Pingora writing them out.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use clap::Parser;
use http::header::HeaderName;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::prelude::*;

/// The same allocator as the gateway, so the comparison measures proxy work, not malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use proxy::gateway::header_case::{edit_request, edit_response, Name};
use proxy::gateway::proxy_headers::{forwarded_for, X_FORWARDED_FOR as XFF};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Same as the gateway's default `upstream.idle_timeout_seconds`.
const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Same as the gateway's default `upstream.connect_timeout_ms`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Parser, Debug)]
#[command(about = "Bare Pingora round-robin proxy (benchmark baseline)")]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:6188")]
    listen: SocketAddr,
    /// Worker threads of the proxy service.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Idle upstream connections kept per worker thread.
    #[arg(long, default_value_t = 128)]
    keepalive_pool_size: usize,
    /// Also serve HTTPS here, with Pingora's own TLS listener.
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    tls_listen: Option<SocketAddr>,
    /// Certificate chain (PEM) of the TLS listener.
    #[arg(long)]
    tls_cert: Option<String>,
    /// Private key (PEM) of the TLS listener.
    #[arg(long)]
    tls_key: Option<String>,
    /// Also add the headers the gateway's contract adds, with fixed values (see the module
    /// doc): a measuring device for what the gateway's own logic costs.
    #[arg(long)]
    contract_headers: bool,
    /// Backends (`ip:port`), used in turn.
    #[arg(required = true)]
    backends: Vec<SocketAddr>,
}

/// The proxy: only a balancer.
struct Bare {
    lb: Arc<LoadBalancer<RoundRobin>>,
    contract_headers: bool,
}

/// The headers `--contract-headers` adds to the request, and their fixed values.
const REQUEST_HEADERS: [(Name, &str); 4] = [
    (
        Name::from_static("x-forwarded-proto", "X-Forwarded-Proto"),
        "http",
    ),
    (
        Name::from_static("x-forwarded-host", "X-Forwarded-Host"),
        "127.0.0.1",
    ),
    (
        Name::from_static("x-request-id", "X-Request-Id"),
        "0123456789abcdef0123456789abcdef",
    ),
    (Name::from_static("x-gateway", "X-Gateway"), "bench"),
];

/// The headers `--contract-headers` adds to the response, and their fixed values.
const RESPONSE_HEADERS: [(Name, &str); 9] = [
    (
        Name::from_static("x-upstream", "X-Upstream"),
        "127.0.0.1:9001",
    ),
    (
        Name::from_static("x-request-id", "X-Request-Id"),
        "0123456789abcdef0123456789abcdef",
    ),
    (Name::from_static("via", "Via"), "1.1 pingora-gateway"),
    (
        Name::from_static("ratelimit-limit", "RateLimit-Limit"),
        "1000000000",
    ),
    (
        Name::from_static("ratelimit-remaining", "RateLimit-Remaining"),
        "999999999",
    ),
    (Name::from_static("ratelimit-reset", "RateLimit-Reset"), "1"),
    (
        Name::from_static("ratelimit-policy", "RateLimit-Policy"),
        "\"default\";q=1000000000;w=1",
    ),
    (
        Name::from_static("ratelimit", "RateLimit"),
        "\"default\";r=999999999;t=1",
    ),
    (Name::from_static("x-served-by", "X-Served-By"), "bench"),
];

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let Some(backend) = self.lb.select(b"", 256) else {
            return Error::e_explain(HTTPStatus(503), "no backend");
        };
        let Some(addr) = backend.addr.as_inet().copied() else {
            return Error::e_explain(InternalError, "backend without an inet address");
        };
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(CONNECT_TIMEOUT);
        peer.options.idle_timeout = Some(UPSTREAM_IDLE_TIMEOUT);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        let Some(peer) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        else {
            return Ok(());
        };
        if self.contract_headers {
            // As the gateway writes them: `X-Forwarded-For` built and inserted as it does, so
            // the difference to it is not in how that one header is written either.
            let xff = forwarded_for(upstream_request, peer)?;
            return edit_request(upstream_request, false, REQUEST_HEADERS.len() + 1, |h| {
                h.insert(&XFF, xff)?;
                for (name, value) in &REQUEST_HEADERS {
                    h.insert(name, http::HeaderValue::from_static(value))?;
                }
                Ok(())
            });
        }
        // As nginx's $proxy_add_x_forwarded_for: every previous line joined, then the peer.
        let mut value = String::new();
        for prev in upstream_request.headers.get_all(&X_FORWARDED_FOR) {
            if prev.is_empty() {
                continue;
            }
            value.push_str(&String::from_utf8_lossy(prev.as_bytes()));
            value.push_str(", ");
        }
        value.push_str(&peer.to_string());
        upstream_request.insert_header(X_FORWARDED_FOR, value)?;
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        if self.contract_headers {
            edit_response(upstream_response, false, RESPONSE_HEADERS.len(), |h| {
                for (name, value) in &RESPONSE_HEADERS {
                    h.insert(name, http::HeaderValue::from_static(value))?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }
}

fn main() {
    let cli = Cli::parse();
    let lb = match LoadBalancer::<RoundRobin>::try_from_iter(cli.backends.iter().copied()) {
        Ok(lb) => Arc::new(lb),
        Err(e) => {
            eprintln!("bare_proxy: bad backend list: {e}");
            std::process::exit(1);
        }
    };
    let conf = ServerConf {
        version: 1,
        threads: cli.threads.max(1),
        upstream_keepalive_pool_size: cli.keepalive_pool_size,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let bare = Bare {
        lb,
        contract_headers: cli.contract_headers,
    };
    let mut proxy = http_proxy_service(&server.configuration, bare);
    proxy.add_tcp(&cli.listen.to_string());
    if let (Some(addr), Some(cert), Some(key)) = (cli.tls_listen, &cli.tls_cert, &cli.tls_key) {
        if let Err(e) = proxy.add_tls(&addr.to_string(), cert, key) {
            eprintln!("bare_proxy: TLS listener: {e}");
            std::process::exit(1);
        }
        println!("bare_proxy TLS on {addr}");
    }
    server.add_service(proxy);
    println!(
        "bare_proxy listening on {} ({} threads)",
        cli.listen, cli.threads
    );
    server.run_forever();
}
