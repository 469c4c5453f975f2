//! Configuration in two layers: serde structs that mirror the TOML file (defaults, unknown keys
//! rejected), validated once into runtime types ([`Settings`]) that the rest of the proxy uses.
//!
//! Every error names the file, the line and column where they can be found, and the key.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderValue;
use ipnet::IpNet;
use serde::Deserialize;

use crate::config_locate::{key_at, line_col, span_of};
use crate::header_edit::Name;

/// The file as written: every key optional except `upstream.backends`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    server: FileServer,
    upstream: FileUpstream,
    #[serde(default)]
    rate_limit: FileRateLimit,
    #[serde(default)]
    headers: FileHeaders,
    #[serde(default)]
    admin: FileAdmin,
    #[serde(default)]
    log: FileLog,
}

/// A key that takes one string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileServer {
    /// Address(es) the proxy listens on.
    listen: OneOrMany,
    /// Worker threads of the proxy service.
    threads: usize,
    /// Whether idle worker threads steal tasks from busy ones (Pingora's `work_stealing`).
    work_stealing: bool,
    /// Seconds to keep serving in-flight requests after SIGTERM before runtimes shut down.
    grace_period_seconds: u64,
    /// Seconds the runtimes get to finish their tasks after the grace period.
    graceful_shutdown_timeout_seconds: u64,
    /// Unix socket over which `-u` takes the listeners over.
    upgrade_sock: String,
    /// PID file (written when daemonized).
    pid_file: String,
    /// Idle downstream keep-alive connections are closed after this; 0 = no keep-alive.
    keepalive_timeout_seconds: u64,
    /// Requests served on one downstream connection before it is closed.
    keepalive_requests: u32,
    /// The whole request header must arrive within this.
    header_timeout_ms: u64,
    /// Longest gap between two reads of a request body.
    body_timeout_ms: u64,
    /// Downstream connections at once; the file descriptor limit is raised to fit.
    max_connections: usize,
    /// Downstream connections per client IP; 0 = no cap.
    max_connections_per_client: usize,
    /// After SIGTERM: `/ready` answers 503 while the listeners keep accepting this long.
    drain_delay_seconds: u64,
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
            max_connections: 10_000,
            max_connections_per_client: 256,
            drain_delay_seconds: 0,
        }
    }
}

fn default_connect_timeout_ms() -> u64 {
    1000
}
fn default_read_timeout_ms() -> u64 {
    30_000
}
fn default_idle_timeout_seconds() -> u64 {
    60
}
fn default_max_retries() -> usize {
    2
}
fn default_keepalive_pool_size() -> usize {
    128
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUpstream {
    /// `host:port` of every backend; host names are re-resolved periodically.
    backends: Vec<String>,
    #[serde(default = "default_connect_timeout_ms")]
    connect_timeout_ms: u64,
    #[serde(default = "default_read_timeout_ms")]
    read_timeout_ms: u64,
    /// How long an idle pooled upstream connection is kept.
    #[serde(default = "default_idle_timeout_seconds")]
    idle_timeout_seconds: u64,
    /// Other backends tried after a failure (so `max_retries + 1` attempts at most).
    #[serde(default = "default_max_retries")]
    max_retries: usize,
    /// Idle upstream connections kept per worker thread.
    #[serde(default = "default_keepalive_pool_size")]
    keepalive_pool_size: usize,
    #[serde(default)]
    health_check: FileHealthCheck,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileHealthCheck {
    path: String,
    interval_ms: u64,
    timeout_ms: u64,
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
struct FileRateLimit {
    enabled: bool,
    requests: u32,
    window_seconds: u64,
    trusted_proxies: Vec<String>,
    exempt: Vec<String>,
    max_clients: usize,
    max_inflight_per_client: u32,
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
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileHeaders {
    request: BTreeMap<String, String>,
    response: BTreeMap<String, String>,
    /// Send header names in the case they arrived (and `request`/`response` names as written).
    /// Off, as in Envoy and HAProxy: standard names go out in title case, others in lower case.
    preserve_case: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileAdmin {
    listen: String,
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
struct FileLog {
    level: String,
    file: Option<PathBuf>,
    access_log: bool,
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

/// The validated configuration the proxy runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub server: ServerSettings,
    pub upstream: UpstreamSettings,
    pub rate_limit: RateLimitSettings,
    pub headers: HeaderSettings,
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

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamSettings {
    pub backends: Vec<BackendAddr>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_retries: usize,
    pub keepalive_pool_size: usize,
    pub health_check: HealthCheckSettings,
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

/// Why a config file was rejected. `Display` is the one line an operator reads.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {key}{message}")]
    Invalid {
        path: String,
        line: usize,
        column: usize,
        /// `key: ` prefix, empty when TOML itself is malformed.
        key: String,
        message: String,
    },
}

/// Reads, parses and validates `path`. Runs at start-up and on reload, never inside a request.
pub fn load_config(path: &Path) -> Result<Settings, ConfigError> {
    parse_config(&read_config(path)?, &path.display().to_string())
}

fn read_config(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Parses and validates config text; `origin` names the file in errors.
pub fn parse_config(text: &str, origin: &str) -> Result<Settings, ConfigError> {
    let file: FileConfig = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let (line, column) = line_col(text, span.start);
        let key = key_at(text, span.start)
            .map(|k| format!("{k}: "))
            .unwrap_or_default();
        ConfigError::Invalid {
            path: origin.to_owned(),
            line,
            column,
            key,
            message: e.message().trim().replace('\n', "; "),
        }
    })?;
    validate(file).map_err(|e| located(text, origin, e))
}

/// [`load_config`], then what only the running system can tell, as `nginx -t` does: that
/// `log.file` can be opened for append (its directory is created when missing). For `-t` and
/// start-up, not for reload (`log.file` is not reloaded, and a reload must not touch files).
// Called from main.rs once it is wired there (in place of `load_config`).
pub fn load_and_check_config(path: &Path) -> Result<Settings, ConfigError> {
    let text = read_config(path)?;
    let origin = path.display().to_string();
    let settings = parse_config(&text, &origin)?;
    if let Some(file) = &settings.log.file {
        open_log_file(file).map_err(|why| {
            let message = format!("\"{}\": {why}", file.display());
            located(&text, &origin, invalid("log.file", message))
        })?;
    }
    Ok(settings)
}

/// Whether `path` can be the log file: creates its directory when missing and opens it for
/// append (nothing is written). The error reads "log.file PATH: why".
#[cfg(test)]
pub fn check_log_file(path: &Path) -> Result<(), String> {
    open_log_file(path).map_err(|why| format!("log.file {}: {why}", path.display()))
}

fn open_log_file(path: &Path) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create its directory {}: {e}", dir.display()))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(drop)
        .map_err(|e| format!("cannot open it for append: {e}"))
}

/// A validation failure placed at its key's line and column in `text`.
fn located(text: &str, origin: &str, (key, message): Invalid) -> ConfigError {
    let (line, column) = span_of(text, &key)
        .map(|span| line_col(text, span.start))
        .unwrap_or((1, 1));
    ConfigError::Invalid {
        path: origin.to_owned(),
        line,
        column,
        key: format!("{key}: "),
        message,
    }
}

/// A validation failure: the dotted key and what is wrong with its value.
type Invalid = (String, String);

fn invalid(key: &str, message: impl Into<String>) -> Invalid {
    (key.to_owned(), message.into())
}

fn validate(file: FileConfig) -> Result<Settings, Invalid> {
    let server = validate_server(file.server)?;
    let admin_listen = parse_socket_addr("admin.listen", &file.admin.listen)?;
    if let Some(taken) = server
        .listen
        .iter()
        .find(|a| listen_conflict(**a, admin_listen))
    {
        let message = if *taken == admin_listen {
            format!("\"{admin_listen}\" is also in server.listen")
        } else {
            format!(
                "\"{admin_listen}\" and server.listen \"{taken}\" cannot both be bound: {}",
                conflict_reason(*taken, admin_listen)
            )
        };
        return Err(invalid("admin.listen", message));
    }
    Ok(Settings {
        server,
        upstream: validate_upstream(file.upstream)?,
        rate_limit: validate_rate_limit(file.rate_limit)?,
        headers: HeaderSettings {
            request: validate_headers("headers.request", file.headers.request)?,
            response: validate_headers("headers.response", file.headers.response)?,
            preserve_case: file.headers.preserve_case,
        },
        admin: AdminSettings {
            listen: admin_listen,
        },
        log: validate_log(file.log)?,
    })
}

/// Upper bound of each shutdown-related duration.
const MAX_SHUTDOWN_SECONDS: u64 = 3600;

/// Upper bound of `server.max_connections`: two file descriptors each already need more than
/// Linux's default `fs.nr_open` (1048576), and the descriptor budget cannot overflow.
const MAX_CONNECTIONS: usize = 1_000_000;

fn validate_server(s: FileServer) -> Result<ServerSettings, Invalid> {
    let listen_strings = s.listen.into_vec();
    if listen_strings.is_empty() {
        return Err(invalid("server.listen", "at least one address is required"));
    }
    let listen = listen_strings
        .iter()
        .map(|a| parse_socket_addr("server.listen", a))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, b) in listen.iter().enumerate() {
        if let Some(a) = listen[..i].iter().find(|a| listen_conflict(**a, *b)) {
            let message = if a == b {
                format!("\"{b}\" is listed twice")
            } else {
                format!(
                    "\"{a}\" and \"{b}\" cannot both be bound: {}",
                    conflict_reason(*a, *b)
                )
            };
            return Err(invalid("server.listen", message));
        }
    }
    if s.threads == 0 || s.threads > 1024 {
        return Err(invalid("server.threads", "must be between 1 and 1024"));
    }
    if s.upgrade_sock.trim().is_empty() {
        return Err(invalid("server.upgrade_sock", "must be a path"));
    }
    if s.pid_file.trim().is_empty() {
        return Err(invalid("server.pid_file", "must be a path"));
    }
    // Bounded so that sums of them (the drain budget) cannot overflow and a typo cannot make a
    // shutdown hang for days.
    for (key, secs) in [
        ("server.grace_period_seconds", s.grace_period_seconds),
        (
            "server.graceful_shutdown_timeout_seconds",
            s.graceful_shutdown_timeout_seconds,
        ),
        ("server.drain_delay_seconds", s.drain_delay_seconds),
    ] {
        if secs > MAX_SHUTDOWN_SECONDS {
            return Err(invalid(
                key,
                format!("must be at most {MAX_SHUTDOWN_SECONDS} (one hour)"),
            ));
        }
    }
    if s.keepalive_timeout_seconds > 86_400 {
        return Err(invalid(
            "server.keepalive_timeout_seconds",
            "must be at most 86400 (one day)",
        ));
    }
    Ok(ServerSettings {
        listen,
        threads: s.threads,
        work_stealing: s.work_stealing,
        grace_period_seconds: s.grace_period_seconds,
        graceful_shutdown_timeout_seconds: s.graceful_shutdown_timeout_seconds,
        upgrade_sock: s.upgrade_sock,
        pid_file: s.pid_file,
        keepalive_timeout: (s.keepalive_timeout_seconds > 0)
            .then(|| Duration::from_secs(s.keepalive_timeout_seconds)),
        keepalive_requests: NonZeroU32::new(s.keepalive_requests)
            .ok_or_else(|| invalid("server.keepalive_requests", "must be at least 1"))?,
        header_timeout: ms_at_most_an_hour("server.header_timeout_ms", s.header_timeout_ms)?,
        body_timeout: ms_at_most_an_hour("server.body_timeout_ms", s.body_timeout_ms)?,
        max_connections: NonZeroUsize::new(s.max_connections)
            .filter(|n| n.get() <= MAX_CONNECTIONS)
            .ok_or_else(|| {
                invalid(
                    "server.max_connections",
                    format!(
                        "must be between 1 and {MAX_CONNECTIONS} (each takes up to two file descriptors)"
                    ),
                )
            })?,
        max_connections_per_client: s.max_connections_per_client,
        drain_delay: Duration::from_secs(s.drain_delay_seconds),
    })
}

fn validate_upstream(u: FileUpstream) -> Result<UpstreamSettings, Invalid> {
    if u.backends.is_empty() {
        return Err(invalid(
            "upstream.backends",
            "at least one backend (host:port) is required",
        ));
    }
    let mut backends = Vec::with_capacity(u.backends.len());
    for raw in &u.backends {
        let backend = parse_backend(raw).map_err(|m| invalid("upstream.backends", m))?;
        if backends.contains(&backend) {
            return Err(invalid(
                "upstream.backends",
                format!("\"{raw}\" is listed twice"),
            ));
        }
        backends.push(backend);
    }
    if u.max_retries > 15 {
        return Err(invalid("upstream.max_retries", "must be between 0 and 15"));
    }
    if u.keepalive_pool_size == 0 {
        return Err(invalid(
            "upstream.keepalive_pool_size",
            "must be at least 1",
        ));
    }
    let hc = u.health_check;
    if !hc.path.starts_with('/') || hc.path.parse::<http::Uri>().is_err() {
        return Err(invalid(
            "upstream.health_check.path",
            format!("\"{}\" is not an absolute path like /health", hc.path),
        ));
    }
    Ok(UpstreamSettings {
        backends,
        connect_timeout: positive_ms("upstream.connect_timeout_ms", u.connect_timeout_ms)?,
        read_timeout: positive_ms("upstream.read_timeout_ms", u.read_timeout_ms)?,
        idle_timeout: positive_secs("upstream.idle_timeout_seconds", u.idle_timeout_seconds)?,
        max_retries: u.max_retries,
        keepalive_pool_size: u.keepalive_pool_size,
        health_check: HealthCheckSettings {
            path: hc.path,
            interval: positive_ms("upstream.health_check.interval_ms", hc.interval_ms)?,
            timeout: positive_ms("upstream.health_check.timeout_ms", hc.timeout_ms)?,
        },
    })
}

fn validate_rate_limit(r: FileRateLimit) -> Result<RateLimitSettings, Invalid> {
    let requests = NonZeroU32::new(r.requests)
        .ok_or_else(|| invalid("rate_limit.requests", "must be at least 1"))?;
    let window = positive_secs("rate_limit.window_seconds", r.window_seconds)?;
    if r.window_seconds > 86_400 {
        return Err(invalid(
            "rate_limit.window_seconds",
            "must be at most 86400 (one day)",
        ));
    }
    let max_clients = NonZeroUsize::new(r.max_clients)
        .ok_or_else(|| invalid("rate_limit.max_clients", "must be at least 1"))?;
    Ok(RateLimitSettings {
        enabled: r.enabled,
        requests,
        window,
        trusted_proxies: parse_cidrs("rate_limit.trusted_proxies", &r.trusted_proxies)?,
        exempt: parse_cidrs("rate_limit.exempt", &r.exempt)?,
        max_clients,
        max_inflight_per_client: r.max_inflight_per_client,
    })
}

fn validate_log(l: FileLog) -> Result<LogSettings, Invalid> {
    let level = log_filter(&l.level).map_err(|why| {
        invalid(
            "log.level",
            format!(
                "{why}; expected a level ({}, any case) or directives like \"info,proxy=debug\"",
                LOG_LEVELS.join(", ")
            ),
        )
    })?;
    if let Some(file) = &l.file {
        if file.as_os_str().is_empty() || file.file_name().is_none() {
            return Err(invalid("log.file", "must name a file"));
        }
    }
    Ok(LogSettings {
        level,
        file: l.file,
        access_log: l.access_log,
    })
}

/// The levels `log.level` accepts, alone or after `target=`.
const LOG_LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];

fn is_log_level(s: &str) -> bool {
    LOG_LEVELS.iter().any(|l| l.eq_ignore_ascii_case(s))
}

/// `log.level` as a filter `tracing` reads the way it was meant, or why it is not one.
///
/// `EnvFilter` takes any bare word as a target name (`"loud"` would silence every line) and
/// `target=` as `trace`, so each comma-separated directive must be a level or
/// `target[span{field=value}]=level`. Blanks around directives and `=` are dropped: `EnvFilter`
/// would read them into the target name.
fn log_filter(raw: &str) -> Result<String, String> {
    if raw.trim().is_empty() {
        return Err("the value is empty".into());
    }
    let mut directives = Vec::new();
    for directive in raw.split(',').map(str::trim) {
        if directive.is_empty() {
            return Err(format!(
                "\"{raw}\" has an empty directive (two commas, or one at an end)"
            ));
        }
        if is_log_level(directive) {
            directives.push(directive.to_owned());
            continue;
        }
        // The level follows the last `=` outside `[span{field=value}]`.
        let (selector, level) = match directive.rsplit_once('=') {
            Some((selector, level)) if !level.contains([']', '}']) => {
                (selector.trim(), level.trim())
            }
            _ => {
                return Err(format!(
                    "\"{directive}\" is neither a level nor target=level (a bare word would be read as a target name and every other line dropped)"
                ))
            }
        };
        if selector.is_empty() {
            return Err(format!("\"{directive}\" has no target before \"=\""));
        }
        if !is_log_level(level) {
            return Err(format!("in \"{directive}\", \"{level}\" is not a level"));
        }
        directives.push(format!("{selector}={level}"));
    }
    let filter = directives.join(",");
    tracing_subscriber::EnvFilter::try_new(&filter)
        .map_err(|e| format!("\"{filter}\" is not a filter: {e}"))?;
    Ok(filter)
}

fn validate_headers(
    key: &str,
    headers: BTreeMap<String, String>,
) -> Result<Vec<ConfiguredHeader>, Invalid> {
    headers
        .into_iter()
        .map(|(name, value)| {
            let parsed = Name::parse(&name)
                .ok_or_else(|| invalid(key, format!("\"{name}\" is not a valid header name")))?;
            if is_managed_header(parsed.key.as_str()) {
                return Err(invalid(
                    key,
                    format!(
                        "\"{name}\" cannot be set here: framing/hop-by-hop header managed by the proxy"
                    ),
                ));
            }
            let value = HeaderValue::from_str(&value).map_err(|_| {
                invalid(
                    key,
                    format!("the value of \"{name}\" is not a valid header value"),
                )
            })?;
            Ok(ConfiguredHeader {
                name: parsed,
                value,
            })
        })
        .collect()
}

/// Framing and hop-by-hop fields (RFC 9110 7.6.1, 9112 6) that Pingora and the proxy write
/// themselves; a configured value would contradict the real body or connection and stall the
/// exchange. `name` is lower case.
fn is_managed_header(name: &str) -> bool {
    matches!(
        name,
        "host"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "upgrade"
            | "te"
            | "keep-alive"
            | "trailer"
    ) || name.starts_with("proxy-")
}

/// Whether both addresses cannot be bound at once (without `SO_REUSEPORT`, which the proxy does
/// not set): the same port and the same IP, or a wildcard covering the other. `[::]` covers IPv4
/// too: the proxy leaves `IPV6_V6ONLY` at the system default, dual-stack on Linux. Port 0 (any
/// free port) never conflicts.
fn listen_conflict(a: SocketAddr, b: SocketAddr) -> bool {
    let (ia, ib) = (a.ip().to_canonical(), b.ip().to_canonical());
    let covers = |wild: IpAddr, other: IpAddr| {
        wild.is_unspecified() && (wild.is_ipv6() || wild.is_ipv4() == other.is_ipv4())
    };
    a.port() != 0 && a.port() == b.port() && (ia == ib || covers(ia, ib) || covers(ib, ia))
}

/// Why two conflicting, unequal listen addresses cannot both be bound.
fn conflict_reason(a: SocketAddr, b: SocketAddr) -> String {
    let wildcard = [a, b]
        .into_iter()
        .find(|x| x.ip().to_canonical().is_unspecified());
    match wildcard {
        Some(w) if a.ip().to_canonical() != b.ip().to_canonical() => format!(
            "{w} already takes port {} on every {} address",
            w.port(),
            if w.is_ipv6() { "IPv6 and IPv4" } else { "IPv4" }
        ),
        _ => "the same IP and port".into(),
    }
}

fn parse_socket_addr(key: &str, raw: &str) -> Result<SocketAddr, Invalid> {
    raw.parse().map_err(|_| {
        invalid(
            key,
            format!("\"{raw}\" is not an IP:port address (e.g. 127.0.0.1:8080 or [::1]:8080)"),
        )
    })
}

/// `host:port` where host is an IP literal (IPv6 in brackets) or a DNS name. Nothing is resolved
/// here, so `-t` works where the names do not resolve (e.g. outside docker compose).
fn parse_backend(raw: &str) -> Result<BackendAddr, String> {
    if let Ok(addr) = raw.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(format!("\"{raw}\": port must not be 0"));
        }
        return Ok(BackendAddr {
            host: addr.ip().to_string(),
            port: addr.port(),
        });
    }
    let bad = || format!("\"{raw}\" is not host:port (e.g. 127.0.0.1:9001 or backend1:9000)");
    let (host, port) = raw.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(format!("\"{raw}\": port must not be 0"));
    }
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let host_ok = !host.is_empty() && host.len() <= 253 && host.split('.').all(valid_label);
    if !host_ok {
        return Err(bad());
    }
    Ok(BackendAddr {
        host: host.to_ascii_lowercase(),
        port,
    })
}

fn parse_cidrs(key: &str, raw: &[String]) -> Result<Vec<IpNet>, Invalid> {
    raw.iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| invalid(key, format!("\"{s}\" is not an IP address or CIDR")))
        })
        .collect()
}

fn positive_ms(key: &str, ms: u64) -> Result<Duration, Invalid> {
    if ms == 0 {
        return Err(invalid(key, "must be greater than 0"));
    }
    Ok(Duration::from_millis(ms))
}

/// A downstream timeout: more than 0 and at most an hour, so a typo cannot hold connections open
/// for days.
fn ms_at_most_an_hour(key: &str, ms: u64) -> Result<Duration, Invalid> {
    if ms > 3_600_000 {
        return Err(invalid(key, "must be at most 3600000 (one hour)"));
    }
    positive_ms(key, ms)
}

fn positive_secs(key: &str, secs: u64) -> Result<Duration, Invalid> {
    if secs == 0 {
        return Err(invalid(key, "must be greater than 0"));
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[upstream]\nbackends = [\"127.0.0.1:9001\", \"backend2:9000\"]\n";

    fn err(text: &str) -> String {
        match parse_config(text, "test.toml") {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn minimal_file_gets_contract_defaults() {
        let s = parse_config(MINIMAL, "test.toml").unwrap();
        assert_eq!(s.server.listen, vec!["127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(s.server.threads, 2);
        assert!(s.server.work_stealing);
        assert_eq!(s.server.grace_period_seconds, 5);
        assert_eq!(s.upstream.connect_timeout, Duration::from_millis(1000));
        assert_eq!(s.upstream.read_timeout, Duration::from_millis(30_000));
        assert_eq!(s.upstream.max_retries, 2);
        assert_eq!(s.upstream.health_check.path, "/health");
        assert_eq!(s.rate_limit.requests.get(), 100);
        assert_eq!(s.rate_limit.window, Duration::from_secs(60));
        assert_eq!(s.rate_limit.max_clients.get(), 100_000);
        assert!(s.rate_limit.enabled);
        assert_eq!(s.admin.listen, "127.0.0.1:9091".parse().unwrap());
        assert_eq!(s.log.level, "info");
        assert_eq!(
            s.upstream.backends[1],
            BackendAddr {
                host: "backend2".into(),
                port: 9000
            }
        );
    }

    #[test]
    fn listen_takes_a_list() {
        let s = parse_config(
            &format!("[server]\nlisten = [\"127.0.0.1:1\", \"[::1]:2\"]\n{MINIMAL}"),
            "t",
        )
        .unwrap();
        assert_eq!(s.server.listen.len(), 2);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = err(&format!("{MINIMAL}colour = 3\n"));
        assert!(e.starts_with("test.toml:3:"), "{e}");
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn malformed_toml_names_the_line() {
        let e = err("[upstream\nbackends = []\n");
        assert!(e.starts_with("test.toml:1:"), "{e}");
    }

    #[test]
    fn empty_backends_rejected() {
        let e = err("[upstream]\nbackends = []\n");
        assert!(e.starts_with("test.toml:2:"), "{e}");
        assert!(e.contains("upstream.backends"), "{e}");
    }

    #[test]
    fn bad_backend_address_rejected() {
        let e = err("[upstream]\nbackends = [\"127.0.0.1\"]\n");
        assert!(e.contains("upstream.backends"), "{e}");
        assert!(e.contains("127.0.0.1"), "{e}");
        let e = err("[upstream]\nbackends = [\"bad host:80\"]\n");
        assert!(e.contains("upstream.backends"), "{e}");
    }

    #[test]
    fn zero_timeout_rejected_with_its_line() {
        let e = err(&format!(
            "{MINIMAL}read_timeout_ms = 0\n[upstream.health_check]\ninterval_ms = 10\n"
        ));
        assert!(e.starts_with("test.toml:3:"), "{e}");
        assert!(e.contains("upstream.read_timeout_ms"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = err(&format!("{MINIMAL}[rate_limit]\nrequests = \"many\"\n"));
        assert!(e.starts_with("test.toml:4:"), "{e}");
        assert!(e.contains("rate_limit.requests"), "{e}");
    }

    #[test]
    fn bad_cidr_and_header_rejected() {
        let e = err(&format!(
            "{MINIMAL}[rate_limit]\ntrusted_proxies = [\"10.0.0.0/33\"]\n"
        ));
        assert!(e.contains("rate_limit.trusted_proxies"), "{e}");
        let e = err(&format!(
            "{MINIMAL}[headers]\nresponse = {{ \"bad name\" = \"x\" }}\n"
        ));
        assert!(e.contains("headers.response"), "{e}");
    }

    fn log_level(level: &str) -> Result<String, String> {
        let text = format!("{MINIMAL}[log]\nlevel = \"{level}\"\n");
        parse_config(&text, "test.toml")
            .map(|s| s.log.level)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn log_level_takes_levels_in_any_case_and_filter_directives() {
        for level in [
            "error", "warn", "info", "debug", "trace", "off", "INFO", "Warn",
        ] {
            assert_eq!(log_level(level).unwrap(), level);
        }
        for filter in [
            "info,proxy=debug",
            "warn,pingora_core::listeners=off",
            "proxy[request{method=GET}]=trace",
            "[request]=debug",
            "proxy=DEBUG",
        ] {
            assert_eq!(log_level(filter).unwrap(), filter);
        }
        // Blanks that EnvFilter would read into a target name are dropped.
        assert_eq!(
            log_level(" warn , proxy = debug ").unwrap(),
            "warn,proxy=debug"
        );
    }

    #[test]
    fn log_level_rejects_words_that_are_not_levels() {
        for bad in [
            "loud",
            "verbose",
            "",
            "  ",
            "info,",
            "info,,debug",
            "proxy",
            "info,proxy",
            "proxy=loud",
            "proxy=",
            "=debug",
            "proxy[span{a=b}]",
            "3",
        ] {
            let e = log_level(bad).expect_err(bad);
            assert!(e.starts_with("test.toml:4:"), "{bad}: {e}");
            assert!(e.contains("log.level"), "{bad}: {e}");
            assert!(
                e.contains("error, warn, info, debug, trace, off"),
                "{bad}: {e}"
            );
        }
        let e = log_level("proxy=loud").unwrap_err();
        assert!(e.contains("\"loud\" is not a level"), "{e}");
    }

    #[test]
    fn framing_and_hop_by_hop_headers_cannot_be_configured() {
        for table in ["request", "response"] {
            for name in [
                "Host",
                "content-length",
                "Transfer-Encoding",
                "CONNECTION",
                "Upgrade",
                "TE",
                "Keep-Alive",
                "Trailer",
                "Proxy-Authorization",
                "proxy-connection",
            ] {
                let e = err(&format!(
                    "{MINIMAL}[headers]\n{table} = {{ \"{name}\" = \"x\" }}\n"
                ));
                assert!(e.starts_with("test.toml:4:"), "{e}");
                assert!(e.contains(&format!("headers.{table}: ")), "{e}");
                assert!(e.contains(&format!("\"{name}\"")), "{e}");
                assert!(
                    e.contains("framing/hop-by-hop header managed by the proxy"),
                    "{e}"
                );
            }
        }
        // Look-alikes stay allowed.
        let s = parse_config(
            &format!(
                "{MINIMAL}[headers.request]\nX-Host = \"a\"\nTE-Info = \"b\"\nProxied-By = \"c\"\n"
            ),
            "t",
        )
        .unwrap();
        assert_eq!(s.headers.request.len(), 3);
    }

    fn listen_err(server: &str, admin: &str) -> String {
        err(&format!(
            "[server]\nlisten = {server}\n[admin]\nlisten = \"{admin}\"\n{MINIMAL}"
        ))
    }

    #[test]
    fn listen_address_twice_rejected() {
        let e = listen_err(r#"["127.0.0.1:8080", "127.0.0.1:8080"]"#, "127.0.0.1:9091");
        assert!(e.starts_with("test.toml:2:"), "{e}");
        assert!(
            e.contains(r#"server.listen: "127.0.0.1:8080" is listed twice"#),
            "{e}"
        );
        let e = listen_err(r#""127.0.0.1:8080""#, "127.0.0.1:8080");
        assert!(e.starts_with("test.toml:4:"), "{e}");
        assert!(e.contains("admin.listen: "), "{e}");
        assert!(
            e.contains(r#""127.0.0.1:8080" is also in server.listen"#),
            "{e}"
        );
        // The same socket spelled as an IPv4-mapped IPv6 address.
        let e = listen_err(
            r#"["127.0.0.1:8080", "[::ffff:127.0.0.1]:8080"]"#,
            "127.0.0.1:1",
        );
        assert!(e.contains("server.listen: "), "{e}");
        assert!(e.contains("the same IP and port"), "{e}");
    }

    #[test]
    fn wildcard_listen_overlapping_a_specific_ip_rejected() {
        for (server, admin) in [
            (r#"["0.0.0.0:8080", "127.0.0.1:8080"]"#, "127.0.0.1:1"),
            (r#"["10.0.0.1:8080", "0.0.0.0:8080"]"#, "127.0.0.1:1"),
            (r#"["[::]:8080", "127.0.0.1:8080"]"#, "127.0.0.1:1"),
            (r#"["[::]:8080", "0.0.0.0:8080"]"#, "127.0.0.1:1"),
            (r#"["[::1]:8080", "[::]:8080"]"#, "127.0.0.1:1"),
        ] {
            let e = listen_err(server, admin);
            assert!(e.contains("server.listen: "), "{server}: {e}");
            assert!(e.contains("cannot both be bound"), "{server}: {e}");
            assert!(e.contains("8080"), "{server}: {e}");
        }
        let e = listen_err(r#""0.0.0.0:8080""#, "127.0.0.1:8080");
        assert!(e.contains("admin.listen: "), "{e}");
        assert!(
            e.contains(r#""127.0.0.1:8080" and server.listen "0.0.0.0:8080" cannot both be bound"#),
            "{e}"
        );
        let e = listen_err(r#""127.0.0.1:8080""#, "[::]:8080");
        assert!(e.contains("admin.listen: "), "{e}");
    }

    #[test]
    fn listen_addresses_that_can_coexist_accepted() {
        for (server, admin) in [
            // Different ports, different IPs on one port, IPv4 wildcard next to IPv6.
            (r#"["0.0.0.0:8080", "0.0.0.0:8081"]"#, "0.0.0.0:9091"),
            (r#"["127.0.0.1:8080", "127.0.0.2:8080"]"#, "127.0.0.3:8080"),
            (r#"["0.0.0.0:8080", "[::1]:8080"]"#, "127.0.0.1:9091"),
            // Port 0: any free port, never the same one twice.
            (r#"["127.0.0.1:0", "127.0.0.1:0"]"#, "127.0.0.1:0"),
        ] {
            let text =
                format!("[server]\nlisten = {server}\n[admin]\nlisten = \"{admin}\"\n{MINIMAL}");
            assert!(parse_config(&text, "t").is_ok(), "{server} {admin}");
        }
    }

    /// A fresh directory under the system temp dir, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "proxy-config-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn log_file_that_cannot_be_opened_names_the_key_and_path() {
        let scratch = Scratch::new("logfile");
        let regular = scratch.0.join("regular");
        std::fs::write(&regular, "").unwrap();
        // Paths that fail for root too: no directory can be made in /proc, a regular file
        // cannot be a directory, a directory cannot be appended to.
        for bad in [
            PathBuf::from("/proc/nonexistent/x.log"),
            regular.join("x.log"),
            scratch.0.clone(),
        ] {
            let e = check_log_file(&bad).expect_err(&bad.display().to_string());
            let prefix = format!("log.file {}: ", bad.display());
            assert!(e.starts_with(&prefix), "{e}");
            assert!(e.len() > prefix.len(), "{e}");
        }
        let e = check_log_file(&regular.join("x.log")).unwrap_err();
        assert!(e.contains("cannot create its directory"), "{e}");
        let e = check_log_file(&scratch.0).unwrap_err();
        assert!(e.contains("cannot open it for append"), "{e}");
    }

    #[test]
    fn log_file_directory_is_created_and_the_file_appended_to() {
        let scratch = Scratch::new("logdir");
        let file = scratch.0.join("a/b/proxy.log");
        check_log_file(&file).unwrap();
        assert!(file.is_file());
        std::fs::write(&file, "kept\n").unwrap();
        check_log_file(&file).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "kept\n");
    }

    #[test]
    fn start_up_load_checks_the_log_file_where_reload_does_not() {
        let scratch = Scratch::new("startlog");
        let config = scratch.0.join("proxy.toml");
        std::fs::write(
            &config,
            format!("{MINIMAL}[log]\nfile = \"/proc/nonexistent/x.log\"\n"),
        )
        .unwrap();
        let e = load_and_check_config(&config).unwrap_err().to_string();
        let location = format!("{}:4:8: ", config.display());
        assert!(e.starts_with(&location), "{e}");
        assert!(
            e.contains("log.file: \"/proc/nonexistent/x.log\": cannot create its directory"),
            "{e}"
        );
        assert!(load_config(&config).is_ok());
        let fine = scratch.0.join("logs/proxy.log");
        std::fs::write(
            &config,
            format!("{MINIMAL}[log]\nfile = \"{}\"\n", fine.display()),
        )
        .unwrap();
        let s = load_and_check_config(&config).unwrap();
        assert_eq!(s.log.file.as_deref(), Some(fine.as_path()));
        assert!(fine.is_file());
    }

    #[test]
    fn server_connection_keys_get_contract_defaults() {
        let s = parse_config(MINIMAL, "test.toml").unwrap().server;
        assert_eq!(s.keepalive_timeout, Some(Duration::from_secs(60)));
        assert_eq!(s.keepalive_requests.get(), 1000);
        assert_eq!(s.header_timeout, Duration::from_millis(10_000));
        assert_eq!(s.body_timeout, Duration::from_millis(30_000));
        assert_eq!(s.max_connections.get(), 10_000);
        assert_eq!(s.max_connections_per_client, 256);
        assert_eq!(s.drain_delay, Duration::ZERO);
        assert_eq!(s.grace_period_seconds, 5);
        assert_eq!(s.graceful_shutdown_timeout_seconds, 5);
    }

    fn server(lines: &str) -> Result<ServerSettings, String> {
        parse_config(&format!("[server]\n{lines}\n{MINIMAL}"), "test.toml")
            .map(|s| s.server)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn server_connection_keys_take_their_whole_range() {
        let s = server(
            "keepalive_timeout_seconds = 0\nkeepalive_requests = 1\nheader_timeout_ms = 1\n\
             body_timeout_ms = 3600000\nmax_connections = 1000000\n\
             max_connections_per_client = 0\ndrain_delay_seconds = 3600\n\
             grace_period_seconds = 3600\ngraceful_shutdown_timeout_seconds = 0",
        )
        .unwrap();
        assert_eq!(s.keepalive_timeout, None, "0 = keep-alive off");
        assert_eq!(s.keepalive_requests.get(), 1);
        assert_eq!(s.header_timeout, Duration::from_millis(1));
        assert_eq!(s.body_timeout, Duration::from_secs(3600));
        assert_eq!(s.max_connections.get(), 1_000_000);
        assert_eq!(s.max_connections_per_client, 0, "0 = no cap");
        assert_eq!(s.drain_delay, Duration::from_secs(3600));
        let s =
            server("keepalive_timeout_seconds = 86400\nkeepalive_requests = 4294967295").unwrap();
        assert_eq!(s.keepalive_timeout, Some(Duration::from_secs(86_400)));
        assert_eq!(s.keepalive_requests.get(), u32::MAX);
    }

    #[test]
    fn server_connection_keys_reject_zero_and_out_of_range() {
        for (line, key, why) in [
            (
                "keepalive_timeout_seconds = 86401",
                "keepalive_timeout_seconds",
                "at most 86400",
            ),
            ("keepalive_requests = 0", "keepalive_requests", "at least 1"),
            (
                "header_timeout_ms = 0",
                "header_timeout_ms",
                "greater than 0",
            ),
            (
                "header_timeout_ms = 3600001",
                "header_timeout_ms",
                "at most 3600000",
            ),
            ("body_timeout_ms = 0", "body_timeout_ms", "greater than 0"),
            (
                "body_timeout_ms = 3600001",
                "body_timeout_ms",
                "at most 3600000",
            ),
            (
                "max_connections = 0",
                "max_connections",
                "between 1 and 1000000",
            ),
            (
                "max_connections = 1000001",
                "max_connections",
                "between 1 and 1000000",
            ),
            (
                "drain_delay_seconds = 3601",
                "drain_delay_seconds",
                "at most 3600",
            ),
            (
                "grace_period_seconds = 3601",
                "grace_period_seconds",
                "at most 3600",
            ),
            (
                "graceful_shutdown_timeout_seconds = 3601",
                "graceful_shutdown_timeout_seconds",
                "at most 3600",
            ),
            // Out of the type's range: TOML/serde names the key too.
            ("keepalive_requests = 4294967296", "keepalive_requests", ""),
            (
                "max_connections_per_client = -1",
                "max_connections_per_client",
                "",
            ),
            ("drain_delay_seconds = -5", "drain_delay_seconds", ""),
        ] {
            let e = server(&format!("threads = 2\n{line}")).expect_err(line);
            assert!(e.starts_with("test.toml:3:"), "{line}: {e}");
            assert!(e.contains(&format!("server.{key}: ")), "{line}: {e}");
            assert!(e.contains(why), "{line}: {e}");
        }
    }

    #[test]
    fn cidrs_and_plain_addresses_accepted() {
        let s = parse_config(
            &format!("{MINIMAL}[rate_limit]\ntrusted_proxies = [\"10.0.0.0/8\", \"127.0.0.2\"]\n"),
            "t",
        )
        .unwrap();
        assert_eq!(s.rate_limit.trusted_proxies.len(), 2);
    }
}
