//! The runtime layer: validated settings the rest of the proxy uses.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;

use crate::gateway::header_case::Name;

/// The validated configuration the proxy runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub server: ServerSettings,
    /// `[upstream]`: the group `default` (its backends may be empty when routes cover the
    /// traffic) and what every group shares.
    pub upstream: UpstreamSettings,
    /// Every group that has backends, `default` first when it has any, then by name.
    pub groups: Vec<Arc<GroupSettings>>,
    /// In file order. Empty: everything goes to the group `default`.
    pub routes: Vec<RouteSettings>,
    pub rate_limit: RateLimitSettings,
    pub headers: HeaderSettings,
    /// `None`: no `[tls] listen`.
    pub tls: Option<TlsSettings>,
    pub admin: AdminSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    pub listen: Vec<SocketAddr>,
    pub threads: usize,
    pub work_stealing: bool,
    pub grace_period_seconds: u64,
    pub graceful_shutdown_timeout_seconds: u64,
    pub upgrade_sock: String,
    pub pid_file: String,
    /// `None`: keep-alive off.
    pub keepalive_timeout: Option<Duration>,
    pub keepalive_requests: NonZeroU32,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub send_timeout: Duration,
    pub max_connections: NonZeroUsize,
    /// 0 = no cap.
    pub max_connections_per_client: usize,
    pub drain_delay: Duration,
}

/// One configured backend: a host (IP literal or DNS name) and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendAddr {
    pub host: String,
    pub port: u16,
    /// Share of the group's traffic relative to the others (1 by default).
    pub weight: u32,
}

impl BackendAddr {
    /// The spelling used in logs, metrics labels and `X-Upstream`.
    pub fn label(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// `[upstream]` as a whole: the group `default` and the pool every group shares.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamSettings {
    pub default_group: Arc<GroupSettings>,
    pub keepalive_pool_size: usize,
}

/// The name of the group `[upstream]` defines.
pub const DEFAULT_GROUP: &str = "default";

/// One upstream group: its backends and how they are chosen, probed and talked to.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSettings {
    pub name: Arc<str>,
    /// The dotted key it was configured under (`upstream`, `upstreams.api`), for messages.
    pub key: String,
    pub backends: Vec<BackendAddr>,
    pub balance: Balance,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_retries: usize,
    pub health_check: HealthCheckSettings,
    /// `Some`: HTTPS to the backends.
    pub tls: Option<UpstreamTls>,
    pub outlier: OutlierSettings,
    pub retry: RetrySettings,
    /// Concurrent requests to the group at most (`None`: no cap); beyond it 503 at once.
    pub max_requests: Option<usize>,
}

/// Passive outlier ejection of a group's backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierSettings {
    /// Failures in a row (5xx answers, connect failures, resets, timeouts) that eject a
    /// backend; 0 turns ejection off.
    pub consecutive_failures: u32,
    /// Ejected for this times the number of ejections so far, at most [`MAX_EJECTION`].
    pub base_ejection: Duration,
    /// Share of the group's backends ejected at most (one always stays).
    pub max_ejected_percent: u32,
}

/// The longest ejection, however often a backend was ejected.
pub const MAX_EJECTION: Duration = Duration::from_secs(300);

impl Default for OutlierSettings {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejected_percent: 50,
        }
    }
}

/// When a failed attempt is retried, and how much retrying a group may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySettings {
    /// Retries in flight at most this share of the group's active requests (at least
    /// [`MIN_RETRY_CONCURRENCY`]).
    pub budget_percent: u32,
    pub on: RetryOn,
    /// Base of the jittered exponential backoff before a budgeted retry.
    pub backoff: Duration,
}

/// Budgeted retries that may always be in flight, whatever the group's load (Envoy's
/// `min_retry_concurrency`): a quiet group can still retry.
pub const MIN_RETRY_CONCURRENCY: usize = 3;

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            budget_percent: 20,
            on: RetryOn::default(),
            backoff: Duration::from_millis(25),
        }
    }
}

/// The failures `retry.on` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryOn {
    /// `connect-failure`: the connection (or its TLS handshake) failed; nothing was sent.
    pub connect_failure: bool,
    /// `reset`: the connection broke before any response byte (idempotent requests only).
    pub reset: bool,
    /// `gateway-error`: the backend answered 502, 503 or 504 (idempotent requests only).
    pub gateway_error: bool,
}

impl Default for RetryOn {
    fn default() -> Self {
        Self {
            connect_failure: true,
            reset: true,
            gateway_error: false,
        }
    }
}

/// A group's `tls = true`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// The name sent and verified; `None`: each backend's host (its IP for IP backends).
    pub sni: Option<String>,
    /// PEM roots to verify against; `None`: the system roots.
    pub ca_file: Option<PathBuf>,
    /// The roots of `ca_file` (DER), read by `load_upstream_roots` before the settings are used.
    pub ca_der: Option<Arc<Vec<Vec<u8>>>>,
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    /// Smooth weighted round robin over the healthy backends (nginx).
    RoundRobin,
    /// Power of two random choices on in-flight requests (Envoy).
    LeastRequests,
    /// Consistent hashing (Ketama) on the key.
    Hash(HashKey),
}

/// What `balance = "hash"` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    /// A request header's value; requests without it hash on the client IP.
    Header(HeaderName),
    Path,
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSettings {
    pub name: Arc<str>,
    pub host: HostMatch,
    pub path_prefix: String,
    /// `None`: any method.
    pub methods: Option<Vec<Method>>,
    pub upstream: Arc<str>,
    pub strip_prefix: bool,
    pub rate_limit: Option<QuotaSettings>,
    pub request_headers: Vec<ConfiguredHeader>,
    pub response_headers: Vec<ConfiguredHeader>,
}

/// Which `Host` a route takes (lower case, without a port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Any,
    Exact(String),
    /// `*.example.com`: stored as `.example.com`; matches any name ending in it.
    Suffix(String),
}

/// A route's own rate limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaSettings {
    pub requests: NonZeroU32,
    pub window: Duration,
    pub key: QuotaKey,
}

/// Whose budget a request spends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuotaKey {
    ClientIp,
    /// A request header's value (an API key); requests without it spend their client IP's.
    Header(HeaderName),
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckSettings {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitSettings {
    pub enabled: bool,
    pub requests: NonZeroU32,
    pub window: Duration,
    pub trusted_proxies: Vec<IpNet>,
    pub exempt: Vec<IpNet>,
    pub max_clients: NonZeroUsize,
    /// 0 = no cap.
    pub max_inflight_per_client: u32,
    /// `None`: this instance's own limiter; `Some`: shared by every replica through Redis.
    pub redis: Option<RedisSettings>,
    pub headers: RateLimitHeaders,
}

/// `store = "redis"` and `[rate_limit.redis]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    pub url: String,
    /// Longest wait for one check; beyond it `on_error` applies.
    pub timeout: Duration,
    pub on_error: OnStoreError,
    pub key_prefix: String,
}

/// What a check does when the shared store is down, slow or answers an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    /// This instance's exact limiter decides until the store is back.
    Local,
    /// The request is let through (no rate-limit headers).
    Allow,
    /// 429 with `Retry-After: 1`.
    Deny,
}

/// Which rate-limit header fields responses carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitHeaders {
    /// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`.
    Legacy,
    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
    Ietf,
    Both,
    None,
}

impl RateLimitHeaders {
    pub fn legacy(self) -> bool {
        matches!(self, RateLimitHeaders::Legacy | RateLimitHeaders::Both)
    }

    pub fn ietf(self) -> bool {
        matches!(self, RateLimitHeaders::Ietf | RateLimitHeaders::Both)
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct HeaderSettings {
    pub request: Vec<ConfiguredHeader>,
    pub response: Vec<ConfiguredHeader>,
    pub preserve_case: bool,
}

/// A header from `[headers.*]`: the name (spelled as written when case is kept), and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfiguredHeader {
    pub name: Name,
    pub value: HeaderValue,
}

/// `[tls]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    pub listen: Vec<SocketAddr>,
    /// Chosen by SNI from each certificate's names; the first is the default.
    pub certificates: Vec<CertificateFiles>,
    pub min_version: TlsVersion,
    /// ALPN `h2` beside `http/1.1`.
    pub http2: bool,
    /// Plain listeners answer 308 to the `https://` URL.
    pub redirect_http: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminSettings {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogSettings {
    pub level: String,
    pub file: Option<PathBuf>,
    pub access_log: bool,
}
