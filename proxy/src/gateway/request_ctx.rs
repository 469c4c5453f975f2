//! Per-request state, carried through every Pingora phase and read by `logging()`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderValue;
use pingora_limits::inflight::Guard;
use prometheus::IntGauge;

use std::sync::atomic::Ordering;

use crate::config::validate::NO_ROUTE;
use crate::gateway::live::Live;
use crate::limits::quota::Quota;
use crate::limits::sliding_window::Decision;
use crate::routing::Route;
use crate::upstream::group::Group;
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
    /// The request came over TLS.
    pub tls: bool,
    /// The matched route, an index into `live.router` (`None`: nothing matched, or not yet).
    pub route: Option<usize>,
    /// The path and query as the client sent them, when `strip_prefix` changed them.
    pub original_path: Option<Box<str>>,
    /// The rate-limit decision of [`quota`](Self::quota).
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
    /// Counts the current attempt in its backend's in-flight requests (`least_requests`).
    pub attempt: Option<AttemptGuard>,
    /// Held for the whole request: the per-client concurrency count.
    pub client_inflight: Option<Guard>,
    /// Held for the whole request: decrements `gateway_inflight_requests` when dropped.
    pub inflight: Option<InflightGuard>,
    /// Counted in its group's requests in flight (`limits.max_requests`, the retry budget);
    /// given back when the context drops.
    pub in_group: bool,
    /// Holds one of its group's retry-budget slots; given back when the context drops.
    pub retry_slot: bool,
    /// Budgeted retries made so far (the backoff doubles with each).
    pub budgeted_retries: u32,
    /// Wait before the next attempt (jittered exponential backoff).
    pub backoff: Option<Duration>,
    /// The backend's 502/503/504 was turned into a retry in `upstream_response_filter`:
    /// `error_while_proxy` only has to carry it out.
    pub gateway_error_retry: bool,
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
            tls: false,
            route: None,
            original_path: None,
            rate: None,
            attempts: 0,
            tried: Vec::new(),
            backend: None,
            upstream_sent: None,
            upstream_time: None,
            attempt: None,
            client_inflight: None,
            inflight: None,
            in_group: false,
            retry_slot: false,
            budgeted_retries: 0,
            backoff: None,
            gateway_error_retry: false,
        }
    }

    pub fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or("-")
    }

    pub fn backend_label(&self) -> &str {
        self.backend.as_ref().map_or("-", |b| &b.label)
    }

    /// The matched route.
    pub fn route(&self) -> Option<&Route> {
        self.route.and_then(|i| self.live.router.route(i))
    }

    /// The matched route's name, `none` when nothing matched.
    pub fn route_name(&self) -> &str {
        self.route().map_or(NO_ROUTE, |r| &r.name)
    }

    /// The quota this request spends: its route's own, or the global one.
    pub fn quota(&self) -> Option<&Quota> {
        quota_of(&self.live, self.route)
    }

    /// The group the matched route sends to.
    pub fn group(&self) -> Option<&Group> {
        group_of(&self.live, self.route)
    }
}

impl Drop for RequestCtx {
    /// Gives the group's counters back on every way out of a request, panics included.
    fn drop(&mut self) {
        if !self.in_group && !self.retry_slot {
            return;
        }
        if let Some(group) = self.group() {
            if self.in_group {
                group.core.load.leave();
            }
            if self.retry_slot {
                group.core.load.retry_done();
            }
        }
    }
}

/// The group `route` of `live` sends to (a borrow of `live` only, so the request's other
/// fields stay writable).
pub fn group_of(live: &Live, route: Option<usize>) -> Option<&Group> {
    route
        .and_then(|i| live.router.route(i))
        .and_then(|r| live.groups.get(r.group))
}

/// The quota a request on `route` of `live` spends: the route's own, or the global one.
pub fn quota_of(live: &Live, route: Option<usize>) -> Option<&Quota> {
    match route
        .and_then(|i| live.router.route(i))
        .map(|r| r.quota.as_deref())
    {
        Some(Some(own)) => Some(own),
        _ => live.global_quota.as_deref(),
    }
}

/// One attempt counted in its backend's in-flight requests until it ends.
pub struct AttemptGuard(Arc<BackendInfo>);

impl AttemptGuard {
    pub fn new(backend: Arc<BackendInfo>) -> Self {
        backend.inflight.fetch_add(1, Ordering::Relaxed);
        Self(backend)
    }
}

impl Drop for AttemptGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
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
