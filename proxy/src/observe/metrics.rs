//! Prometheus metrics owned by the app: one registry, handles created once.
//!
//! Per-backend handles live in [`BackendMetrics`] (resolved when a backend is discovered, not
//! per request); `gateway_requests_total` handles are resolved on first use per backend, method
//! and common status, and looked up per request only for rare statuses.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, RwLock};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Buckets from 0.5 ms to 10 s, fine below 10 ms where a loopback backend answers.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Buckets of a shared rate-limit check: 100 µs (loopback Redis) to 250 ms (far past any
/// sensible timeout_ms).
pub const STORE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25,
];

/// Label value for requests no backend answered (404, 429, 502, 503).
pub const NO_BACKEND: &str = "none";

/// The `proto` and `tls` labels of `gateway_downstream_requests_total`, by [`protocol_index`].
const PROTOCOLS: [(&str, bool); 6] = [
    ("http/1.0", false),
    ("http/1.0", true),
    ("http/1.1", false),
    ("http/1.1", true),
    ("h2", false),
    ("h2", true),
];

/// Where a request's protocol is in [`PROTOCOLS`] (HTTP/0.9 counts as 1.0, HTTP/3 as h2: the
/// listeners speak neither).
fn protocol_index(version: http::Version, tls: bool) -> usize {
    let proto = match version {
        http::Version::HTTP_09 | http::Version::HTTP_10 => 0,
        http::Version::HTTP_11 => 1,
        _ => 2,
    };
    proto * 2 + usize::from(tls)
}

/// A backend's metrics key: its group and its label.
type BackendKey = (Arc<str>, String);

/// Every gateway metric, registered in the app's own registry.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream_response: HistogramVec,
    backend_up: IntGaugeVec,
    pub rate_limited: IntCounter,
    retries: IntCounterVec,
    connections: IntCounterVec,
    reloads: IntCounterVec,
    pub inflight: IntGauge,
    /// Clients the rate limiter keeps state for, set at scrape time.
    pub rate_limit_clients: IntGauge,
    pub downstream_connections: IntGauge,
    rejected_connections: IntCounterVec,
    /// Connections closed because the request header did not arrive in time.
    pub header_timeouts: IntCounter,
    /// Requests whose body stalled longer than `server.body_timeout_ms` (answered 408).
    pub body_timeouts: IntCounter,
    /// Responses cut off because the client read nothing for `server.send_timeout_ms`.
    pub send_timeouts: IntCounter,
    /// TLS connections closed before a request: the handshake failed or did not finish in time.
    pub tls_handshake_failures: IntCounter,
    upstream_errors: IntCounterVec,
    backend_ejected: IntGaugeVec,
    backend_ejections: IntCounterVec,
    retries_by_reason: IntCounterVec,
    retries_refused: IntCounterVec,
    overloaded: IntCounterVec,
    /// `gateway_downstream_requests_total` by [`protocol_index`], resolved once.
    by_protocol: [IntCounter; 6],
    /// The shared rate-limit store: failed checks and check latency.
    pub store_errors: IntCounter,
    pub store_seconds: Histogram,
    pub store_fallbacks: IntCounter,
    /// Handles of configured backends by group and label, so rediscovery keeps health-driven
    /// values.
    backends: Mutex<HashMap<BackendKey, Arc<BackendMetrics>>>,
    /// Request handles by route name, kept across reloads.
    routes: Mutex<HashMap<Arc<str>, Arc<RouteMetrics>>>,
}

/// Handles for one backend of one group, resolved once.
pub struct BackendMetrics {
    pub upstream_response: Histogram,
    pub retries: IntCounter,
    pub connections_reused: IntCounter,
    pub connections_new: IntCounter,
    pub up: IntGauge,
    /// 1 while outlier detection keeps it out of rotation.
    pub ejected: IntGauge,
    pub ejections: IntCounter,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "gateway_requests_total",
                "Requests answered, by route, backend, method and status",
            ),
            &["route", "backend", "method", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "gateway_request_duration_seconds",
                "Time from the request's first byte to the response's last byte",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "backend"],
        )?;
        let upstream_response = HistogramVec::new(
            HistogramOpts::new(
                "gateway_upstream_response_seconds",
                "Time from sending the request upstream to the upstream's response header",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["upstream", "backend"],
        )?;
        let backend_up = IntGaugeVec::new(
            Opts::new(
                "gateway_backend_up",
                "1 when the backend passes health checks, else 0",
            ),
            &["upstream", "backend"],
        )?;
        let rate_limited = IntCounter::new(
            "gateway_rate_limited_total",
            "Requests answered 429 by the rate limiter",
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "gateway_upstream_retries_total",
                "Attempts that failed and were retried on another backend, by the backend that failed",
            ),
            &["upstream", "backend"],
        )?;
        let connections = IntCounterVec::new(
            Opts::new(
                "gateway_upstream_connections_total",
                "Upstream connections used, by whether they came from the keepalive pool",
            ),
            &["upstream", "backend", "reused"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new("gateway_config_reloads_total", "Config reloads by result"),
            &["result"],
        )?;
        let inflight = IntGauge::new("gateway_inflight_requests", "Requests being processed")?;
        let rate_limit_clients = IntGauge::new(
            "gateway_rate_limit_clients",
            "Clients the rate limiter keeps exact state for (bounded by rate_limit.max_clients)",
        )?;
        let downstream_connections = IntGauge::new(
            "gateway_downstream_connections",
            "Open downstream (client) connections",
        )?;
        let rejected_connections = IntCounterVec::new(
            Opts::new(
                "gateway_downstream_connections_rejected_total",
                "Downstream connections closed at accept, by the cap they were over",
            ),
            &["reason"],
        )?;
        for reason in ["max_connections", "per_client"] {
            rejected_connections.with_label_values(&[reason]);
        }
        let header_timeouts = IntCounter::new(
            "gateway_downstream_header_timeouts_total",
            "Connections closed because a request header (HTTP/2: the connection preface) was not complete within server.header_timeout_ms",
        )?;
        let body_timeouts = IntCounter::new(
            "gateway_downstream_body_timeouts_total",
            "Requests answered 408 because the body stalled longer than server.body_timeout_ms",
        )?;
        let send_timeouts = IntCounter::new(
            "gateway_downstream_send_timeouts_total",
            "Connections closed because a write to the client waited longer than server.send_timeout_ms (the client stopped reading)",
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "gateway_upstream_errors_total",
                "Failed upstream attempts by group, backend and kind (connect, timeout, reset, truncated)",
            ),
            &["upstream", "backend", "kind"],
        )?;
        let backend_ejected = IntGaugeVec::new(
            Opts::new(
                "gateway_backend_ejected",
                "1 while outlier detection keeps the backend out of rotation (consecutive failures), else 0",
            ),
            &["upstream", "backend"],
        )?;
        let backend_ejections = IntCounterVec::new(
            Opts::new(
                "gateway_backend_ejections_total",
                "Times outlier detection ejected the backend",
            ),
            &["upstream", "backend"],
        )?;
        let retries_by_reason = IntCounterVec::new(
            Opts::new(
                "gateway_retries_total",
                "Retries made, by group and the failure retried (connect-failure, reset, gateway-error)",
            ),
            &["upstream", "reason"],
        )?;
        let retries_refused = IntCounterVec::new(
            Opts::new(
                "gateway_retries_budget_exhausted_total",
                "Retryable failures not retried because the group's retry budget was spent",
            ),
            &["upstream", "reason"],
        )?;
        let overloaded = IntCounterVec::new(
            Opts::new(
                "gateway_upstream_overloaded_total",
                "Requests answered 503 at once because the group had limits.max_requests in flight",
            ),
            &["upstream"],
        )?;
        let downstream_requests = IntCounterVec::new(
            Opts::new(
                "gateway_downstream_requests_total",
                "Requests from clients by protocol (http/1.0, http/1.1, h2) and whether over TLS",
            ),
            &["proto", "tls"],
        )?;
        let by_protocol = PROTOCOLS.map(|(proto, tls)| {
            downstream_requests.with_label_values(&[proto, if tls { "true" } else { "false" }])
        });
        let tls_handshake_failures = IntCounter::new(
            "gateway_tls_handshake_failures_total",
            "TLS connections closed before a request: the handshake failed (no shared version or cipher, bad client hello) or took longer than server.header_timeout_ms",
        )?;
        let store_errors = IntCounter::new(
            "gateway_rate_limit_store_errors_total",
            "Shared rate-limit checks that failed (store down, slow or answering an error); rate_limit.redis.on_error decided them",
        )?;
        let store_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "gateway_rate_limit_store_seconds",
                "Time of one shared rate-limit check, answered or not",
            )
            .buckets(STORE_BUCKETS.to_vec()),
        )?;
        let store_fallbacks = IntCounter::new(
            "gateway_rate_limit_store_fallbacks_total",
            "Shared rate-limit checks rate_limit.redis.on_error decided: failed ones and those skipped while the store is down",
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new("gateway_build_info", "Build information; always 1"),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for result in ["success", "failure"] {
            reloads.with_label_values(&[result]);
        }

        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(upstream_response.clone()))?;
        registry.register(Box::new(backend_up.clone()))?;
        registry.register(Box::new(rate_limited.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(inflight.clone()))?;
        registry.register(Box::new(rate_limit_clients.clone()))?;
        registry.register(Box::new(downstream_connections.clone()))?;
        registry.register(Box::new(rejected_connections.clone()))?;
        registry.register(Box::new(header_timeouts.clone()))?;
        registry.register(Box::new(body_timeouts.clone()))?;
        registry.register(Box::new(send_timeouts.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(backend_ejected.clone()))?;
        registry.register(Box::new(backend_ejections.clone()))?;
        registry.register(Box::new(retries_by_reason.clone()))?;
        registry.register(Box::new(retries_refused.clone()))?;
        registry.register(Box::new(overloaded.clone()))?;
        registry.register(Box::new(downstream_requests))?;
        registry.register(Box::new(store_errors.clone()))?;
        registry.register(Box::new(tls_handshake_failures.clone()))?;
        registry.register(Box::new(store_seconds.clone()))?;
        registry.register(Box::new(store_fallbacks.clone()))?;
        registry.register(Box::new(build_info))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;

        Ok(Self {
            registry,
            requests,
            duration,
            upstream_response,
            backend_up,
            rate_limited,
            retries,
            connections,
            reloads,
            inflight,
            rate_limit_clients,
            downstream_connections,
            rejected_connections,
            header_timeouts,
            body_timeouts,
            send_timeouts,
            upstream_errors,
            backend_ejected,
            backend_ejections,
            retries_by_reason,
            retries_refused,
            overloaded,
            by_protocol,
            tls_handshake_failures,
            store_errors,
            store_seconds,
            store_fallbacks,
            backends: Mutex::new(HashMap::new()),
            routes: Mutex::new(HashMap::new()),
        })
    }

    /// Handles for a configured backend of `group`; its `gateway_backend_up` series starts at
    /// 1, as Pingora starts every backend healthy until a check says otherwise.
    pub fn backend(&self, group: &str, label: &str) -> Arc<BackendMetrics> {
        let mut known = self.backends.lock();
        let key = (Arc::from(group), label.to_owned());
        if let Some(m) = known.get(&key) {
            return m.clone();
        }
        let labels = [group, label];
        let up = self.backend_up.with_label_values(&labels);
        up.set(1);
        let ejected = self.backend_ejected.with_label_values(&labels);
        ejected.set(0);
        let m = Arc::new(BackendMetrics {
            upstream_response: self.upstream_response.with_label_values(&labels),
            retries: self.retries.with_label_values(&labels),
            connections_reused: self.connections.with_label_values(&[group, label, "true"]),
            connections_new: self.connections.with_label_values(&[group, label, "false"]),
            up,
            ejected,
            ejections: self.backend_ejections.with_label_values(&labels),
        });
        known.insert(key, m.clone());
        m
    }

    /// Handles of a configured backend, if discovery has seen it.
    pub fn known_backend(&self, group: &str, label: &str) -> Option<Arc<BackendMetrics>> {
        self.backends
            .lock()
            .get(&(Arc::from(group), label.to_owned()))
            .cloned()
    }

    /// Request handles of the route `name` (`none`: requests no route matched).
    pub fn route(&self, name: &Arc<str>) -> Arc<RouteMetrics> {
        self.routes
            .lock()
            .entry(name.clone())
            .or_insert_with(|| {
                Arc::new(RouteMetrics {
                    none: RequestSeries::new(&self.requests, &self.duration, name, NO_BACKEND),
                    requests: self.requests.clone(),
                    duration: self.duration.clone(),
                    name: name.clone(),
                    per_backend: RwLock::new(Vec::new()),
                })
            })
            .clone()
    }

    /// Counts a downstream connection closed at accept (`reason`: the cap it was over).
    pub fn connection_rejected(&self, reason: &str) {
        self.rejected_connections.with_label_values(&[reason]).inc();
    }

    /// Counts a failed upstream attempt (rare: the labelled lookup is fine here).
    pub fn upstream_error(&self, group: &str, backend: &str, kind: &str) {
        self.upstream_errors
            .with_label_values(&[group, backend, kind])
            .inc();
    }

    /// Drops the up/down series of a backend that left the configuration.
    pub fn forget_backend(&self, group: &str, label: &str) {
        self.backends
            .lock()
            .remove(&(Arc::from(group), label.to_owned()));
        let _ = self.backend_up.remove_label_values(&[group, label]);
        let _ = self.backend_ejected.remove_label_values(&[group, label]);
    }

    /// Counts a retry of `group` (`reason`: the failure retried). Failure path only.
    pub fn retried(&self, group: &str, reason: &str) {
        self.retries_by_reason
            .with_label_values(&[group, reason])
            .inc();
    }

    /// Counts a retryable failure the group's retry budget did not let retry.
    pub fn retry_refused(&self, group: &str, reason: &str) {
        self.retries_refused
            .with_label_values(&[group, reason])
            .inc();
    }

    /// Counts a client request by its protocol.
    pub fn downstream_request(&self, version: http::Version, tls: bool) {
        self.by_protocol[protocol_index(version, tls)].inc();
    }

    /// Counts a request refused by `limits.max_requests`.
    pub fn overloaded(&self, group: &str) {
        self.overloaded.with_label_values(&[group]).inc();
    }

    pub fn count_reload(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.reloads.with_label_values(&[result]).inc();
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16 * 1024);
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        buf
    }
}

/// `gateway_requests_total` and `gateway_request_duration_seconds` of one route and backend.
pub struct RequestSeries {
    pub requests: RequestCounters,
    pub duration: Histogram,
}

impl RequestSeries {
    fn new(requests: &IntCounterVec, duration: &HistogramVec, route: &str, backend: &str) -> Self {
        Self {
            requests: RequestCounters::new(requests, route, backend),
            duration: duration.with_label_values(&[route, backend]),
        }
    }
}

/// The request handles of one route, per backend that answered, resolved on first use.
pub struct RouteMetrics {
    name: Arc<str>,
    requests: IntCounterVec,
    duration: HistogramVec,
    /// Requests no backend answered (429, 404, 502, 503).
    pub none: RequestSeries,
    /// By backend label. A route's group has a handful of backends: a scan beats hashing.
    per_backend: RwLock<Vec<(Arc<str>, Arc<RequestSeries>)>>,
}

impl RouteMetrics {
    /// Runs `f` with the handles of `backend` (`None`: no backend answered).
    pub fn with_series<R>(
        &self,
        backend: Option<&Arc<str>>,
        f: impl FnOnce(&RequestSeries) -> R,
    ) -> R {
        let Some(label) = backend else {
            return f(&self.none);
        };
        let same = |known: &Arc<str>| Arc::ptr_eq(known, label) || **known == **label;
        {
            let known = self.per_backend.read();
            if let Some((_, series)) = known.iter().find(|(k, _)| same(k)) {
                return f(series);
            }
        }
        let series = {
            let mut known = self.per_backend.write();
            match known.iter().find(|(k, _)| same(k)) {
                Some((_, series)) => series.clone(),
                None => {
                    let series = Arc::new(RequestSeries::new(
                        &self.requests,
                        &self.duration,
                        &self.name,
                        label,
                    ));
                    known.push((label.clone(), series.clone()));
                    series
                }
            }
        };
        f(&series)
    }
}

/// `method` label values: known HTTP methods keep their name, anything else is "OTHER".
const METHOD_LABELS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE", "OTHER",
];

fn method_index(method: &http::Method) -> usize {
    match *method {
        http::Method::GET => 0,
        http::Method::POST => 1,
        http::Method::PUT => 2,
        http::Method::DELETE => 3,
        http::Method::HEAD => 4,
        http::Method::OPTIONS => 5,
        http::Method::PATCH => 6,
        http::Method::CONNECT => 7,
        http::Method::TRACE => 8,
        _ => 9,
    }
}

/// Statuses whose `gateway_requests_total` handles are kept per backend and method (sorted).
const CACHED_STATUSES: [u16; 26] = [
    200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404, 405, 408, 409, 413,
    422, 429, 499, 500, 502, 503, 504,
];

/// `status` label of responses whose code is outside 100–599.
pub const INVALID_STATUS: &str = "invalid";

/// `gateway_requests_total` of one backend. `with_label_values` hashes three strings under a
/// lock on every call (~700 instructions per request, callgrind); the handles of common
/// method × status pairs are resolved once instead.
pub struct RequestCounters {
    vec: IntCounterVec,
    route: Arc<str>,
    label: Arc<str>,
    cached: Box<[OnceLock<IntCounter>]>,
}

impl RequestCounters {
    fn new(vec: &IntCounterVec, route: &str, label: &str) -> Self {
        Self {
            vec: vec.clone(),
            route: Arc::from(route),
            label: Arc::from(label),
            cached: (0..METHOD_LABELS.len() * CACHED_STATUSES.len())
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    /// Counts one answered request; `status` is the label of `code` (e.g. "499"). Codes outside
    /// 100–599 are labelled [`INVALID_STATUS`]: a backend may send any three-digit code, and each
    /// would otherwise add a series of its own.
    pub fn inc(&self, method: &http::Method, code: u16, status: &str) {
        let status = if (100..=599).contains(&code) {
            status
        } else {
            INVALID_STATUS
        };
        let method = method_index(method);
        let resolve = || {
            self.vec
                .with_label_values(&[&self.route, &self.label, METHOD_LABELS[method], status])
        };
        match CACHED_STATUSES.binary_search(&code) {
            Ok(i) => match self.cached.get(method * CACHED_STATUSES.len() + i) {
                Some(cell) => cell.get_or_init(resolve).inc(),
                None => resolve().inc(),
            },
            Err(_) => resolve().inc(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::core::Collector;

    #[test]
    fn statuses_outside_100_to_599_share_one_invalid_series() {
        let vec = IntCounterVec::new(
            Opts::new("gateway_requests_total", "test"),
            &["route", "backend", "method", "status"],
        )
        .unwrap();
        let counters = RequestCounters::new(&vec, "r", "b");
        for code in [600u16, 700, 999, 600] {
            counters.inc(&http::Method::GET, code, &code.to_string());
        }
        counters.inc(&http::Method::GET, 599, "599");
        counters.inc(&http::Method::GET, 100, "100");
        counters.inc(&http::Method::GET, 200, "200");

        let get = |status: &str| vec.with_label_values(&["r", "b", "GET", status]).get();
        assert_eq!(get(INVALID_STATUS), 4);
        assert_eq!((get("599"), get("100"), get("200")), (1, 1, 1));
        let statuses: Vec<String> = vec.collect()[0]
            .get_metric()
            .iter()
            .flat_map(|m| m.get_label().iter())
            .filter(|l| l.name() == "status")
            .map(|l| l.value().to_owned())
            .collect();
        assert_eq!(statuses.len(), 4, "{statuses:?}");
        assert!(
            !statuses
                .iter()
                .any(|s| s == "600" || s == "700" || s == "999"),
            "{statuses:?}"
        );
    }
}
