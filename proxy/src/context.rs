//! Per-request state, carried through every Pingora phase and read by `logging()`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderValue;
use pingora_limits::inflight::Guard;
use prometheus::IntGauge;

use crate::rate_limit::Decision;
use crate::state::Live;
use crate::upstream::BackendInfo;

/// State of one request. Retries see the same value, so attempts and tried backends add up.
pub struct RequestCtx {
    /// When the request header was read.
    pub start: Instant,
    /// The configuration this request runs with, fixed at its start (reloads affect new ones).
    pub live: Arc<Live>,
    pub request_id: HeaderValue,
    /// The client as the rate limiter and access log see it.
    pub client: Option<IpAddr>,
    /// The TCP peer, appended to `X-Forwarded-For`.
    pub peer: Option<IpAddr>,
    /// The peer is in `rate_limit.trusted_proxies`: its forwarding headers are believed.
    pub peer_trusted: bool,
    pub rate: Option<Decision>,
    /// Upstream attempts made (1 = no retry).
    pub attempts: usize,
    /// Backend addresses already tried for this request; a retry never picks one again.
    pub tried: Vec<SocketAddr>,
    /// The backend of the current (last) attempt.
    pub backend: Option<Arc<BackendInfo>>,
    /// When the current attempt's request header went upstream.
    pub upstream_sent: Option<Instant>,
    /// Time from sending upstream to the upstream's response header.
    pub upstream_time: Option<Duration>,
    /// Held for the whole request: the per-client concurrency count.
    pub client_inflight: Option<Guard>,
    /// Held for the whole request: decrements `gateway_inflight_requests` when dropped.
    pub inflight: Option<InflightGuard>,
}

impl RequestCtx {
    pub fn new(live: Arc<Live>) -> Self {
        Self {
            start: Instant::now(),
            live,
            request_id: HeaderValue::from_static("-"),
            client: None,
            peer: None,
            peer_trusted: false,
            rate: None,
            attempts: 0,
            tried: Vec::new(),
            backend: None,
            upstream_sent: None,
            upstream_time: None,
            client_inflight: None,
            inflight: None,
        }
    }

    pub fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or("-")
    }

    pub fn backend_label(&self) -> &str {
        self.backend.as_ref().map_or("-", |b| &b.label)
    }
}

/// Counts a request in `gateway_inflight_requests` for as long as it lives, on every path out.
pub struct InflightGuard(IntGauge);

impl InflightGuard {
    pub fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
