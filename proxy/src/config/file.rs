//! The file layer: serde structs that mirror the TOML file as written (defaults filled in,
//! unknown keys rejected). Nothing here is checked beyond its type; see `validate`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// The file as written: every key optional (`upstream.backends` is required unless routes cover
/// the traffic; validation says so).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: FileServer,
    /// The group `default`; its timeouts are every group's defaults.
    #[serde(default)]
    pub upstream: FileUpstream,
    /// Named groups, in name order (TOML rejects a name given twice).
    #[serde(default)]
    pub upstreams: BTreeMap<String, FileGroup>,
    #[serde(default)]
    pub routes: Vec<FileRoute>,
    #[serde(default)]
    pub rate_limit: FileRateLimit,
    #[serde(default)]
    pub headers: FileHeaders,
    #[serde(default)]
    pub tls: FileTls,
    #[serde(default)]
    pub admin: FileAdmin,
    #[serde(default)]
    pub log: FileLog,
}

/// A key that takes one string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileServer {
    /// Address(es) the proxy listens on.
    pub listen: OneOrMany,
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// Whether idle worker threads steal tasks from busy ones (Pingora's `work_stealing`).
    pub work_stealing: bool,
    /// Seconds to keep serving in-flight requests after SIGTERM before runtimes shut down.
    pub grace_period_seconds: u64,
    /// Seconds the runtimes get to finish their tasks after the grace period.
    pub graceful_shutdown_timeout_seconds: u64,
    /// Unix socket over which `-u` takes the listeners over.
    pub upgrade_sock: String,
    /// PID file (written when daemonized).
    pub pid_file: String,
    /// Idle downstream keep-alive connections are closed after this; 0 = no keep-alive.
    pub keepalive_timeout_seconds: u64,
    /// Requests served on one downstream connection before it is closed.
    pub keepalive_requests: u32,
    /// The whole request header must arrive within this.
    pub header_timeout_ms: u64,
    /// Longest gap between two reads of a request body.
    pub body_timeout_ms: u64,
    /// Longest a write to the client may wait (a client that stops reading its response).
    pub send_timeout_ms: u64,
    /// Downstream connections at once; the file descriptor limit is raised to fit.
    pub max_connections: usize,
    /// Downstream connections per client IP; 0 = no cap.
    pub max_connections_per_client: usize,
    /// After SIGTERM: `/ready` answers 503 while the listeners keep accepting this long.
    pub drain_delay_seconds: u64,
}

impl Default for FileServer {
    fn default() -> Self {
        Self {
            listen: OneOrMany::One("127.0.0.1:8080".into()),
            threads: 2,
            work_stealing: true,
            grace_period_seconds: 5,
            graceful_shutdown_timeout_seconds: 5,
            upgrade_sock: "/tmp/proxy-upgrade.sock".into(),
            pid_file: "/tmp/proxy.pid".into(),
            keepalive_timeout_seconds: 60,
            keepalive_requests: 1000,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            send_timeout_ms: 60_000,
            max_connections: 10_000,
            max_connections_per_client: 256,
            drain_delay_seconds: 0,
        }
    }
}

pub fn default_connect_timeout_ms() -> u64 {
    1000
}
pub fn default_read_timeout_ms() -> u64 {
    30_000
}
pub fn default_idle_timeout_seconds() -> u64 {
    60
}
pub fn default_max_retries() -> usize {
    2
}
pub fn default_keepalive_pool_size() -> usize {
    128
}

/// `[tls]`: HTTPS listeners.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileTls {
    pub listen: Option<OneOrMany>,
    pub certificates: Vec<FileCertificate>,
    pub min_version: String,
    pub http2: bool,
    pub redirect_http: bool,
}

impl Default for FileTls {
    fn default() -> Self {
        Self {
            listen: None,
            certificates: Vec::new(),
            min_version: "1.2".into(),
            http2: true,
            redirect_http: false,
        }
    }
}

/// One certificate: a PEM chain (leaf first) and its PEM private key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCertificate {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[upstream]`: the group `default`, plus the pool size every group shares.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpstream {
    /// `host:port` or `{ address, weight }`; host names are re-resolved periodically.
    #[serde(default)]
    pub backends: Vec<FileBackend>,
    #[serde(default)]
    pub balance: Option<String>,
    #[serde(default)]
    pub hash_key: Option<String>,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_read_timeout_ms")]
    pub read_timeout_ms: u64,
    /// How long an idle pooled upstream connection is kept.
    #[serde(default = "default_idle_timeout_seconds")]
    pub idle_timeout_seconds: u64,
    /// Other backends tried after a failure (so `max_retries + 1` attempts at most).
    #[serde(default = "default_max_retries")]
    pub max_retries: usize,
    /// Idle upstream connections kept per worker thread (one pool for every group).
    #[serde(default = "default_keepalive_pool_size")]
    pub keepalive_pool_size: usize,
    #[serde(default)]
    pub health_check: FileHealthCheck,
    /// HTTPS to the backends.
    #[serde(default)]
    pub tls: bool,
    #[serde(default)]
    pub sni: Option<String>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub outlier: FileOutlier,
    #[serde(default)]
    pub retry: FileRetry,
    #[serde(default)]
    pub limits: FileGroupLimits,
}

impl Default for FileUpstream {
    fn default() -> Self {
        Self {
            backends: Vec::new(),
            balance: None,
            hash_key: None,
            connect_timeout_ms: default_connect_timeout_ms(),
            read_timeout_ms: default_read_timeout_ms(),
            idle_timeout_seconds: default_idle_timeout_seconds(),
            max_retries: default_max_retries(),
            keepalive_pool_size: default_keepalive_pool_size(),
            health_check: FileHealthCheck::default(),
            tls: false,
            sni: None,
            ca_file: None,
            outlier: FileOutlier::default(),
            retry: FileRetry::default(),
            limits: FileGroupLimits::default(),
        }
    }
}

/// A backend as written: `"host:port"` or `{ address = "host:port", weight = 2 }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FileBackend {
    Address(String),
    Weighted(FileWeightedBackend),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileWeightedBackend {
    pub address: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

pub fn default_weight() -> u32 {
    1
}

/// `[upstreams.NAME]`: what is left out is taken from `[upstream]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileGroup {
    pub backends: Vec<FileBackend>,
    pub balance: Option<String>,
    pub hash_key: Option<String>,
    pub connect_timeout_ms: Option<u64>,
    pub read_timeout_ms: Option<u64>,
    pub idle_timeout_seconds: Option<u64>,
    pub max_retries: Option<usize>,
    pub health_check: Option<FilePartialHealthCheck>,
    #[serde(default)]
    pub tls: bool,
    pub sni: Option<String>,
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub outlier: FileOutlier,
    #[serde(default)]
    pub retry: FileRetry,
    #[serde(default)]
    pub limits: FileGroupLimits,
}

/// `outlier` of a group (passive ejection): each key left out is the default's (for a named
/// group, `[upstream.outlier]`'s).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOutlier {
    pub consecutive_failures: Option<u32>,
    pub base_ejection_seconds: Option<u64>,
    pub max_ejected_percent: Option<u32>,
}

/// `retry` of a group: which failures are retried, the budget and the backoff.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRetry {
    pub budget_percent: Option<u32>,
    pub on: Option<Vec<String>>,
    pub backoff_ms: Option<u64>,
}

/// `limits` of a group: its circuit limits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileGroupLimits {
    pub max_requests: Option<usize>,
}

/// A group's `health_check`: each key left out is `[upstream.health_check]`'s.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePartialHealthCheck {
    pub path: Option<String>,
    pub interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
}

/// `[[routes]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    pub name: String,
    pub host: Option<String>,
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
    pub methods: Option<Vec<String>>,
    pub upstream: String,
    #[serde(default)]
    pub strip_prefix: bool,
    pub rate_limit: Option<FileRouteRateLimit>,
    #[serde(default)]
    pub headers: FileRouteHeaders,
}

pub fn default_path_prefix() -> String {
    "/".into()
}

/// A route's own quota, replacing `[rate_limit]`'s budget on that route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRouteRateLimit {
    pub requests: u32,
    pub window_seconds: u64,
    #[serde(default = "default_quota_key")]
    pub key: String,
}

pub fn default_quota_key() -> String {
    "client_ip".into()
}

/// A route's headers, added after the global `[headers]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileRouteHeaders {
    pub request: BTreeMap<String, String>,
    pub response: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileHealthCheck {
    pub path: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
}

impl Default for FileHealthCheck {
    fn default() -> Self {
        Self {
            path: "/health".into(),
            interval_ms: 1000,
            timeout_ms: 500,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileRateLimit {
    pub enabled: bool,
    pub requests: u32,
    pub window_seconds: u64,
    pub trusted_proxies: Vec<String>,
    pub exempt: Vec<String>,
    pub max_clients: usize,
    pub max_inflight_per_client: u32,
    /// "local" or "redis".
    pub store: String,
    /// "legacy", "ietf", "both" or "none".
    pub headers: String,
    pub redis: FileRedis,
}

/// `[rate_limit.redis]`: the shared store.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileRedis {
    pub url: String,
    pub timeout_ms: u64,
    pub on_error: String,
    pub key_prefix: String,
}

impl Default for FileRedis {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/0".into(),
            timeout_ms: 20,
            on_error: "local".into(),
            key_prefix: "gateway:rl:".into(),
        }
    }
}

impl Default for FileRateLimit {
    fn default() -> Self {
        Self {
            enabled: true,
            requests: 100,
            window_seconds: 60,
            trusted_proxies: Vec::new(),
            exempt: Vec::new(),
            max_clients: 100_000,
            max_inflight_per_client: 0,
            store: "local".into(),
            headers: "both".into(),
            redis: FileRedis::default(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileHeaders {
    pub request: BTreeMap<String, String>,
    pub response: BTreeMap<String, String>,
    /// Send header names in the case they arrived (and `request`/`response` names as written).
    /// Off, as in Envoy and HAProxy: standard names go out in title case, others in lower case.
    pub preserve_case: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileAdmin {
    pub listen: String,
}

impl Default for FileAdmin {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9091".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileLog {
    pub level: String,
    pub file: Option<PathBuf>,
    pub access_log: bool,
}

impl Default for FileLog {
    fn default() -> Self {
        Self {
            level: "info".into(),
            file: None,
            access_log: true,
        }
    }
}
