//! The admin listener (`admin.listen`):
//! - `GET /metrics`: Prometheus text format
//! - `GET /health`: 200 while the process runs (liveness)
//! - `GET /ready`: 200 when a backend is healthy and we are not draining, else 503 (readiness)
//!
//! It is served apart from Pingora's listening services on purpose: Pingora closes every
//! listener of its own the moment shutdown begins, and a load balancer must be able to *see*
//! the drain (`/ready` answering 503 on new probes) for as long as it lasts. It is also bound
//! before anything starts (a busy port stops the process at once), caps its own connections,
//! and so stays reachable while the proxy listener is saturated.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::Semaphore;

use crate::gateway::live::LiveState;
use crate::limits::shared_store::{redacted, SharedStore};
use crate::observe::metrics::Metrics;
use crate::ops::write_deadline::WriteDeadline;

/// Admin connections served at once; more are closed at accept. Scrapers and probes need a few.
const MAX_ADMIN_CONNECTIONS: usize = 64;
/// A probe's request header must arrive within this.
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A write to an admin client may wait this long for it to read (see [`WriteDeadline`]).
const ADMIN_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the admin endpoints answer from.
pub struct AdminApp {
    pub metrics: Arc<Metrics>,
    /// Set once graceful shutdown begins (SIGTERM, or an upgrade hand-over).
    pub draining: Arc<AtomicBool>,
    pub live: LiveState,
    /// A proxy listen address to probe: ready also means the proxy listener accepts (Pingora
    /// binds it when its service starts, after the first discovery and health round).
    pub listen_probe: SocketAddr,
    /// Set once the probe connected; a listener, once open, stays open until shutdown.
    pub accepting: AtomicBool,
    /// The shared rate-limit store, reported (never failing readiness: on_error covers it).
    pub store: Option<Arc<SharedStore>>,
}

/// A group as `/ready` shows it: healthy and total backend addresses, and the backends
/// outlier detection has ejected.
struct GroupHealth {
    name: Arc<str>,
    healthy: usize,
    total: usize,
    ejected: Vec<Arc<str>>,
}

impl AdminApp {
    /// Each group of the current snapshot as `/ready` shows it.
    fn group_health(&self) -> Vec<GroupHealth> {
        self.live
            .load()
            .groups
            .iter()
            .map(|g| {
                let (healthy, total) = g.core.health_counts();
                GroupHealth {
                    name: g.settings.name.clone(),
                    healthy,
                    total,
                    ejected: g.core.ejected_labels(),
                }
            })
            .collect()
    }

    /// Whether the proxy listener accepts connections (probed until it first does).
    async fn proxy_accepting(&self) -> bool {
        if self.accepting.load(Ordering::Relaxed) {
            return true;
        }
        let probe = tokio::net::TcpStream::connect(self.listen_probe);
        let open = matches!(
            tokio::time::timeout(Duration::from_millis(200), probe).await,
            Ok(Ok(_))
        );
        if open {
            self.accepting.store(true, Ordering::Relaxed);
        }
        open
    }

    /// The answer for `path`.
    pub async fn respond(&self, path: &str) -> Response<Full<Bytes>> {
        match path {
            "/metrics" => {
                let live = self.live.load();
                let clients: usize = live
                    .global_quota
                    .iter()
                    .chain(live.router.routes().iter().filter_map(|r| r.quota.as_ref()))
                    .map(|q| q.limiter.tracked_clients())
                    .sum();
                self.metrics.rate_limit_clients.set(clients as i64);
                respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.metrics.encode(),
                )
            }
            "/health" => respond(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            "/ready" => {
                let groups = self.group_health();
                let healthy: usize = groups.iter().map(|g| g.healthy).sum();
                let draining = self.draining.load(Ordering::Relaxed);
                let accepting = draining || self.proxy_accepting().await;
                let status = if draining || healthy == 0 || !accepting {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                };
                let body = serde_json::json!({
                    "ready": status == StatusCode::OK,
                    "draining": draining,
                    "healthy_backends": healthy,
                    "accepting": accepting && !draining,
                    "rate_limit_store": match &self.store {
                        None => serde_json::json!({"store": "local"}),
                        Some(store) => serde_json::json!({
                            "store": "redis",
                            "state": store.state(),
                            "url": redacted(&store.settings().url),
                            "on_error": format!("{:?}", store.settings().on_error).to_lowercase(),
                        }),
                    },
                    "upstreams": groups
                        .iter()
                        .map(|g| {
                            let ejected: Vec<&str> = g.ejected.iter().map(|l| &**l).collect();
                            (
                                g.name.to_string(),
                                serde_json::json!({"healthy": g.healthy, "backends": g.total, "ejected": ejected}),
                            )
                        })
                        .collect::<serde_json::Map<_, _>>(),
                });
                respond(status, "application/json", format!("{body}\n").into_bytes())
            }
            _ => respond(
                StatusCode::NOT_FOUND,
                "application/json",
                b"{\"error\":\"not found\",\"status\":404}\n".to_vec(),
            ),
        }
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}

/// Where to probe a listen address from this host (an unspecified address by loopback).
pub fn probe_address(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// Binds the admin address. `SO_REUSEPORT` lets the process started with `-u` bind the same
/// address while the old one still serves it (Pingora hands over only its own listeners); a
/// fresh start first checks that nothing at all holds the port.
pub fn bind(addr: std::net::SocketAddr, upgrade: bool) -> std::io::Result<StdListener> {
    use socket2::{Domain, Socket, Type};
    let new_socket = || -> std::io::Result<Socket> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        Ok(socket)
    };
    if !upgrade {
        // Without SO_REUSEPORT this fails when anything (another gateway too) listens there.
        new_socket()?.bind(&addr.into())?;
    }
    let socket = new_socket()?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Serves the admin endpoints on a listener bound at start, until the process exits: it does
/// not stop when shutdown begins.
pub struct AdminServer {
    listener: Mutex<Option<StdListener>>,
    app: Arc<AdminApp>,
}

impl AdminServer {
    pub fn new(listener: StdListener, app: AdminApp) -> Self {
        Self {
            listener: Mutex::new(Some(listener)),
            app: Arc::new(app),
        }
    }
}

#[async_trait]
impl BackgroundService for AdminServer {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let taken = self.listener.lock().take();
        let Some(listener) = taken else { return };
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "admin listener unusable");
                return;
            }
        };
        let slots = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tracing::debug!(%peer, "admin connection closed: too many open");
                continue;
            };
            let app = self.app.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let app = app.clone();
                    async move { Ok::<_, std::convert::Infallible>(app.respond(req.uri().path()).await) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                    .keep_alive(true)
                    .serve_connection(
                        TokioIo::new(WriteDeadline::new(stream, ADMIN_WRITE_TIMEOUT)),
                        service,
                    );
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "admin connection ended");
                }
            });
        }
    }
}
