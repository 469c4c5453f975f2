//! The admin listener (`admin.listen`):
//! - `GET /metrics`: Prometheus text format
//! - `GET /health`: 200 while the process runs (liveness)
//! - `GET /ready`: 200 when a backend is healthy and we are not draining, else 503 (readiness)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::protocols::http::ServerSession;

use crate::metrics::Metrics;
use crate::state::LiveState;

pub struct AdminApp {
    pub metrics: Arc<Metrics>,
    pub lb: Arc<LoadBalancer<RoundRobin>>,
    /// Set once graceful shutdown begins.
    pub draining: Arc<AtomicBool>,
    pub live: LiveState,
}

impl AdminApp {
    fn healthy_backends(&self) -> usize {
        let backends = self.lb.backends();
        backends
            .get_backend()
            .iter()
            .filter(|b| backends.ready(b))
            .count()
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_owned();
        match path.as_str() {
            "/metrics" => {
                let clients = self
                    .live
                    .load()
                    .limiter
                    .as_ref()
                    .map_or(0, |l| l.tracked_clients());
                self.metrics.rate_limit_clients.set(clients as i64);
                respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.metrics.encode(),
                )
            }
            "/health" => respond(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            "/ready" => {
                let healthy = self.healthy_backends();
                let draining = self.draining.load(Ordering::Relaxed);
                let status = if draining || healthy == 0 {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                };
                let body = serde_json::json!({
                    "ready": status == StatusCode::OK,
                    "draining": draining,
                    "healthy_backends": healthy,
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

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let len = body.len();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp.headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    resp
}
