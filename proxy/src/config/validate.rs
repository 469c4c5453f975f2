//! From the file layer to the runtime layer: every value checked, every error naming its key.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;

use super::file::*;
use super::resilience::{validate_max_requests, validate_outlier, validate_retry};
use super::runtime::*;
use crate::gateway::header_case::Name;

/// A validation failure: the dotted key and what is wrong with its value.
pub type Invalid = (String, String);

pub fn invalid(key: &str, message: impl Into<String>) -> Invalid {
    (key.to_owned(), message.into())
}

pub fn validate(file: FileConfig) -> Result<Settings, Invalid> {
    let server = validate_server(file.server)?;
    let upstream = validate_upstream(&file.upstream)?;
    let mut groups = Vec::with_capacity(file.upstreams.len() + 1);
    if !upstream.default_group.backends.is_empty() {
        groups.push(upstream.default_group.clone());
    }
    for (name, group) in file.upstreams {
        groups.push(Arc::new(validate_group(
            &name,
            group,
            &upstream.default_group,
        )?));
    }
    let routes = validate_routes(file.routes, &groups)?;
    let rate_limit = validate_rate_limit(file.rate_limit)?;
    if rate_limit.redis.is_some() {
        let budget = |requests: u32, window: Duration| requests as u128 * window.as_millis();
        if budget(rate_limit.requests.get(), rate_limit.window) > MAX_SHARED_BUDGET {
            return Err(invalid(
                "rate_limit.requests",
                "requests x window_seconds x 1000 must stay below 2^53 with store = \"redis\"",
            ));
        }
        for (i, r) in routes.iter().enumerate() {
            if let Some(q) = &r.rate_limit {
                if budget(q.requests.get(), q.window) > MAX_SHARED_BUDGET {
                    return Err(invalid(
                        &format!("routes[{i}].rate_limit.requests"),
                        "requests x window_seconds x 1000 must stay below 2^53 with store = \"redis\"",
                    ));
                }
            }
        }
    }
    if routes.is_empty() && upstream.default_group.backends.is_empty() {
        return Err(invalid(
            "upstream.backends",
            "at least one backend (host:port) is required, unless [[routes]] send the traffic to [upstreams.*] groups",
        ));
    }
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
    let tls = validate_tls(file.tls, &server.listen, admin_listen)?;
    Ok(Settings {
        server,
        upstream,
        groups,
        routes,
        rate_limit,
        tls,
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
        send_timeout: ms_at_most_an_hour("server.send_timeout_ms", s.send_timeout_ms)?,
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

fn validate_upstream(u: &FileUpstream) -> Result<UpstreamSettings, Invalid> {
    if u.keepalive_pool_size == 0 {
        return Err(invalid(
            "upstream.keepalive_pool_size",
            "must be at least 1",
        ));
    }
    let key = "upstream";
    let hc = &u.health_check;
    let default_group = GroupSettings {
        name: Arc::from(DEFAULT_GROUP),
        key: key.into(),
        backends: validate_backends(key, &u.backends)?,
        balance: validate_balance(key, u.balance.as_deref(), u.hash_key.as_deref())?,
        connect_timeout: positive_ms("upstream.connect_timeout_ms", u.connect_timeout_ms)?,
        read_timeout: positive_ms("upstream.read_timeout_ms", u.read_timeout_ms)?,
        idle_timeout: positive_secs("upstream.idle_timeout_seconds", u.idle_timeout_seconds)?,
        max_retries: validate_max_retries(key, u.max_retries)?,
        health_check: validate_health_check(key, &hc.path, hc.interval_ms, hc.timeout_ms)?,
        tls: validate_upstream_tls(key, u.tls, u.sni.clone(), u.ca_file.clone())?,
        outlier: validate_outlier(key, &u.outlier, &OutlierSettings::default())?,
        retry: validate_retry(key, &u.retry, &RetrySettings::default())?,
        max_requests: validate_max_requests(&u.limits, None)?,
    };
    Ok(UpstreamSettings {
        default_group: Arc::new(default_group),
        keepalive_pool_size: u.keepalive_pool_size,
    })
}

/// `[upstreams.NAME]`, with what it leaves out taken from `[upstream]` (`defaults`).
fn validate_group(
    name: &str,
    g: FileGroup,
    defaults: &GroupSettings,
) -> Result<GroupSettings, Invalid> {
    let key = format!("upstreams.{name}");
    if name == DEFAULT_GROUP {
        return Err(invalid(
            &key,
            "the group \"default\" is [upstream]; give this group another name",
        ));
    }
    if !is_token(name) {
        return Err(invalid(
            &key,
            format!("\"{name}\" is not a group name (letters, digits, '-', '_', '.')"),
        ));
    }
    if g.backends.is_empty() {
        return Err(invalid(
            &format!("{key}.backends"),
            "at least one backend (host:port) is required",
        ));
    }
    let ms = |field: &str, v: Option<u64>, d: Duration| match v {
        Some(v) => positive_ms(&format!("{key}.{field}"), v),
        None => Ok(d),
    };
    let hc = g.health_check.unwrap_or_default();
    let dhc = &defaults.health_check;
    Ok(GroupSettings {
        name: Arc::from(name),
        backends: validate_backends(&key, &g.backends)?,
        balance: validate_balance(&key, g.balance.as_deref(), g.hash_key.as_deref())?,
        connect_timeout: ms(
            "connect_timeout_ms",
            g.connect_timeout_ms,
            defaults.connect_timeout,
        )?,
        read_timeout: ms("read_timeout_ms", g.read_timeout_ms, defaults.read_timeout)?,
        idle_timeout: match g.idle_timeout_seconds {
            Some(v) => positive_secs(&format!("{key}.idle_timeout_seconds"), v)?,
            None => defaults.idle_timeout,
        },
        max_retries: validate_max_retries(&key, g.max_retries.unwrap_or(defaults.max_retries))?,
        health_check: validate_health_check(
            &key,
            hc.path.as_deref().unwrap_or(&dhc.path),
            hc.interval_ms.unwrap_or(dhc.interval.as_millis() as u64),
            hc.timeout_ms.unwrap_or(dhc.timeout.as_millis() as u64),
        )?,
        tls: validate_upstream_tls(&key, g.tls, g.sni, g.ca_file)?,
        outlier: validate_outlier(&key, &g.outlier, &defaults.outlier)?,
        retry: validate_retry(&key, &g.retry, &defaults.retry)?,
        max_requests: validate_max_requests(&g.limits, None)?,
        key,
    })
}

fn validate_upstream_tls(
    group_key: &str,
    tls: bool,
    sni: Option<String>,
    ca_file: Option<PathBuf>,
) -> Result<Option<UpstreamTls>, Invalid> {
    if !tls {
        for (field, set) in [("sni", sni.is_some()), ("ca_file", ca_file.is_some())] {
            if set {
                return Err(invalid(
                    &format!("{group_key}.{field}"),
                    "only used with tls = true",
                ));
            }
        }
        return Ok(None);
    }
    let sni = match sni.map(|s| s.trim().to_ascii_lowercase()) {
        Some(s) if s.is_empty() => None,
        Some(s) => {
            if rustls::pki_types::ServerName::try_from(s.as_str()).is_err() {
                return Err(invalid(
                    &format!("{group_key}.sni"),
                    format!("\"{s}\" is not a host name or IP address"),
                ));
            }
            Some(s)
        }
        None => None,
    };
    let ca_file = match ca_file {
        Some(p) if p.as_os_str().is_empty() => None,
        other => other,
    };
    Ok(Some(UpstreamTls {
        sni,
        ca_file,
        ca_der: None,
    }))
}

fn validate_backends(group_key: &str, raw: &[FileBackend]) -> Result<Vec<BackendAddr>, Invalid> {
    let key = format!("{group_key}.backends");
    let mut backends: Vec<BackendAddr> = Vec::with_capacity(raw.len());
    for entry in raw {
        let (address, weight) = match entry {
            FileBackend::Address(a) => (a.as_str(), 1),
            FileBackend::Weighted(w) => (w.address.as_str(), w.weight),
        };
        if weight == 0 || weight > MAX_WEIGHT {
            return Err(invalid(
                &key,
                format!("\"{address}\": weight must be between 1 and {MAX_WEIGHT}"),
            ));
        }
        let backend = parse_backend(address, weight).map_err(|m| invalid(&key, m))?;
        if backends
            .iter()
            .any(|b| b.host == backend.host && b.port == backend.port)
        {
            return Err(invalid(&key, format!("\"{address}\" is listed twice")));
        }
        backends.push(backend);
    }
    Ok(backends)
}

/// Largest backend weight: a sum over many backends stays far from overflow.
const MAX_WEIGHT: u32 = 1_000_000;

fn validate_balance(
    group_key: &str,
    balance: Option<&str>,
    hash_key: Option<&str>,
) -> Result<Balance, Invalid> {
    let balance_key = format!("{group_key}.balance");
    let hash_key_key = format!("{group_key}.hash_key");
    let policy = match balance.unwrap_or("round_robin") {
        "round_robin" => Balance::RoundRobin,
        "least_requests" => Balance::LeastRequests,
        "hash" => Balance::Hash(match hash_key.unwrap_or("client_ip") {
            "client_ip" => HashKey::ClientIp,
            "path" => HashKey::Path,
            other => match other.strip_prefix("header:") {
                Some(name) => HashKey::Header(header_name(&hash_key_key, name)?),
                None => {
                    return Err(invalid(
                        &hash_key_key,
                        format!("\"{other}\" is not client_ip, path or header:NAME"),
                    ))
                }
            },
        }),
        other => {
            return Err(invalid(
                &balance_key,
                format!("\"{other}\" is not round_robin, least_requests or hash"),
            ))
        }
    };
    if hash_key.is_some() && !matches!(policy, Balance::Hash(_)) {
        return Err(invalid(&hash_key_key, "only used with balance = \"hash\""));
    }
    Ok(policy)
}

fn header_name(key: &str, name: &str) -> Result<HeaderName, Invalid> {
    HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| invalid(key, format!("\"{name}\" is not a valid header name")))
}

fn validate_max_retries(group_key: &str, n: usize) -> Result<usize, Invalid> {
    if n > 15 {
        return Err(invalid(
            &format!("{group_key}.max_retries"),
            "must be between 0 and 15",
        ));
    }
    Ok(n)
}

fn validate_health_check(
    group_key: &str,
    path: &str,
    interval_ms: u64,
    timeout_ms: u64,
) -> Result<HealthCheckSettings, Invalid> {
    let key = format!("{group_key}.health_check");
    if !path.starts_with('/') || path.parse::<http::Uri>().is_err() {
        return Err(invalid(
            &format!("{key}.path"),
            format!("\"{path}\" is not an absolute path like /health"),
        ));
    }
    Ok(HealthCheckSettings {
        path: path.to_owned(),
        interval: positive_ms(&format!("{key}.interval_ms"), interval_ms)?,
        timeout: positive_ms(&format!("{key}.timeout_ms"), timeout_ms)?,
    })
}

/// A name that reads the same in a metric label, a log field and a header parameter.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn validate_routes(
    routes: Vec<FileRoute>,
    groups: &[Arc<GroupSettings>],
) -> Result<Vec<RouteSettings>, Invalid> {
    if routes.len() > MAX_ROUTES {
        return Err(invalid(
            &format!("routes[{MAX_ROUTES}]"),
            format!("at most {MAX_ROUTES} routes"),
        ));
    }
    let mut out: Vec<RouteSettings> = Vec::with_capacity(routes.len());
    for (i, r) in routes.into_iter().enumerate() {
        let key = |field: &str| format!("routes[{i}].{field}");
        if !is_token(&r.name) || r.name == NO_ROUTE {
            return Err(invalid(
                &key("name"),
                format!(
                    "\"{}\" is not a route name (letters, digits, '-', '_', '.'; not \"{NO_ROUTE}\")",
                    r.name
                ),
            ));
        }
        if out.iter().any(|o| *o.name == *r.name) {
            return Err(invalid(
                &key("name"),
                format!("\"{}\" names two routes", r.name),
            ));
        }
        let Some(group) = groups.iter().find(|g| *g.name == *r.upstream) else {
            let known: Vec<&str> = groups.iter().map(|g| &*g.name).collect();
            let why = if r.upstream == DEFAULT_GROUP {
                "the group \"default\" ([upstream]) has no backends".to_owned()
            } else {
                format!("no group \"{}\" (groups: {known:?})", r.upstream)
            };
            return Err(invalid(&key("upstream"), why));
        };
        if !r.path_prefix.starts_with('/')
            || r.path_prefix.contains(['?', '#'])
            || r.path_prefix.bytes().any(|b| b <= b' ' || b == 0x7f)
        {
            return Err(invalid(
                &key("path_prefix"),
                format!("\"{}\" is not a path prefix like /api/", r.path_prefix),
            ));
        }
        let host = match r.host.as_deref().map(str::trim) {
            None | Some("") | Some("*") => HostMatch::Any,
            Some(h) => parse_host_match(h).ok_or_else(|| {
                invalid(
                    &key("host"),
                    format!("\"{h}\" is not a host name or *.suffix"),
                )
            })?,
        };
        let methods = match r.methods {
            None => None,
            Some(list) if list.is_empty() => {
                return Err(invalid(
                    &key("methods"),
                    "lists no method (leave it out for any)",
                ))
            }
            Some(list) => Some(
                list.iter()
                    .map(|m| {
                        Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes()).map_err(|_| {
                            invalid(&key("methods"), format!("\"{m}\" is not a method"))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let rate_limit = match r.rate_limit {
            None => None,
            Some(q) => Some(validate_quota(&key("rate_limit"), q)?),
        };
        out.push(RouteSettings {
            name: Arc::from(r.name.as_str()),
            host,
            path_prefix: r.path_prefix,
            methods,
            upstream: group.name.clone(),
            strip_prefix: r.strip_prefix,
            rate_limit,
            request_headers: validate_headers(&key("headers.request"), r.headers.request)?,
            response_headers: validate_headers(&key("headers.response"), r.headers.response)?,
        });
    }
    Ok(out)
}

/// Most routes one file may hold (the router indexes them with 16 bits).
const MAX_ROUTES: usize = 10_000;

/// The `route` label of requests no route matched.
pub const NO_ROUTE: &str = "none";

/// `api.example.com` or `*.example.com`, lower case; a port is not part of it.
fn parse_host_match(raw: &str) -> Option<HostMatch> {
    let lower = raw.to_ascii_lowercase();
    let (wild, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return None;
    }
    Some(if wild {
        HostMatch::Suffix(format!(".{name}"))
    } else {
        HostMatch::Exact(name.to_owned())
    })
}

fn validate_quota(key: &str, q: FileRouteRateLimit) -> Result<QuotaSettings, Invalid> {
    let requests = NonZeroU32::new(q.requests)
        .ok_or_else(|| invalid(&format!("{key}.requests"), "must be at least 1"))?;
    if q.window_seconds == 0 || q.window_seconds > 86_400 {
        return Err(invalid(
            &format!("{key}.window_seconds"),
            "must be between 1 and 86400 (one day)",
        ));
    }
    let quota_key = match q.key.as_str() {
        "client_ip" => QuotaKey::ClientIp,
        other => match other.strip_prefix("header:") {
            Some(name) => QuotaKey::Header(header_name(&format!("{key}.key"), name)?),
            None => {
                return Err(invalid(
                    &format!("{key}.key"),
                    format!("\"{other}\" is not client_ip or header:NAME"),
                ))
            }
        },
    };
    Ok(QuotaSettings {
        requests,
        window: Duration::from_secs(q.window_seconds),
        key: quota_key,
    })
}

fn validate_tls(
    t: FileTls,
    plain: &[SocketAddr],
    admin: SocketAddr,
) -> Result<Option<TlsSettings>, Invalid> {
    let min_version = match t.min_version.as_str() {
        "1.2" => TlsVersion::Tls12,
        "1.3" => TlsVersion::Tls13,
        other => {
            return Err(invalid(
                "tls.min_version",
                format!("\"{other}\" is not 1.2 or 1.3 (older versions are not offered)"),
            ))
        }
    };
    let listen = match t.listen {
        None => Vec::new(),
        Some(l) => l
            .into_vec()
            .iter()
            .map(|a| parse_socket_addr("tls.listen", a))
            .collect::<Result<Vec<_>, _>>()?,
    };
    for (i, b) in listen.iter().enumerate() {
        let taken = listen[..i]
            .iter()
            .chain(plain)
            .chain(std::iter::once(&admin))
            .find(|a| listen_conflict(**a, *b));
        if let Some(a) = taken {
            let message = if a == b {
                format!("\"{b}\" is also a plain or admin listener, or listed twice")
            } else {
                format!(
                    "\"{a}\" and \"{b}\" cannot both be bound: {}",
                    conflict_reason(*a, *b)
                )
            };
            return Err(invalid("tls.listen", message));
        }
    }
    if listen.is_empty() {
        if t.redirect_http {
            return Err(invalid(
                "tls.redirect_http",
                "needs a tls.listen address to redirect to",
            ));
        }
        return Ok(None);
    }
    if t.certificates.is_empty() {
        return Err(invalid(
            "tls.certificates",
            "at least one { cert, key } is required with tls.listen",
        ));
    }
    let mut certificates = Vec::with_capacity(t.certificates.len());
    for (i, c) in t.certificates.into_iter().enumerate() {
        for (field, path) in [("cert", &c.cert), ("key", &c.key)] {
            if path.as_os_str().is_empty() {
                return Err(invalid(
                    &format!("tls.certificates[{i}].{field}"),
                    "must name a file",
                ));
            }
        }
        certificates.push(CertificateFiles {
            cert: c.cert,
            key: c.key,
        });
    }
    Ok(Some(TlsSettings {
        listen,
        certificates,
        min_version,
        http2: t.http2,
        redirect_http: t.redirect_http,
    }))
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
    let headers = match r.headers.as_str() {
        "legacy" => RateLimitHeaders::Legacy,
        "ietf" => RateLimitHeaders::Ietf,
        "both" => RateLimitHeaders::Both,
        "none" => RateLimitHeaders::None,
        other => {
            return Err(invalid(
                "rate_limit.headers",
                format!("\"{other}\" is not legacy, ietf, both or none"),
            ))
        }
    };
    // Checked even when unused, so a typo shows before the day the store is switched on.
    let shared = validate_redis(r.redis)?;
    let redis = match r.store.as_str() {
        "local" => None,
        "redis" => Some(shared),
        other => {
            return Err(invalid(
                "rate_limit.store",
                format!("\"{other}\" is not local or redis"),
            ))
        }
    };
    Ok(RateLimitSettings {
        enabled: r.enabled,
        requests,
        window,
        trusted_proxies: parse_cidrs("rate_limit.trusted_proxies", &r.trusted_proxies)?,
        exempt: parse_cidrs("rate_limit.exempt", &r.exempt)?,
        max_clients,
        max_inflight_per_client: r.max_inflight_per_client,
        redis,
        headers,
    })
}

fn validate_redis(r: FileRedis) -> Result<RedisSettings, Invalid> {
    // Parsed only (nothing connects): `-t` works where Redis is not reachable.
    if let Err(e) = redis::Client::open(r.url.as_str()) {
        return Err(invalid(
            "rate_limit.redis.url",
            format!(
                "\"{}\" is not a Redis URL ({e}); e.g. redis://127.0.0.1:6379/0",
                r.url
            ),
        ));
    }
    if r.timeout_ms == 0 || r.timeout_ms > 10_000 {
        return Err(invalid(
            "rate_limit.redis.timeout_ms",
            "must be between 1 and 10000",
        ));
    }
    let on_error = match r.on_error.as_str() {
        "local" => OnStoreError::Local,
        "allow" => OnStoreError::Allow,
        "deny" => OnStoreError::Deny,
        other => {
            return Err(invalid(
                "rate_limit.redis.on_error",
                format!("\"{other}\" is not local, allow or deny"),
            ))
        }
    };
    let prefix_ok = !r.key_prefix.is_empty()
        && r.key_prefix.len() <= 64
        && r.key_prefix
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}');
    if !prefix_ok {
        return Err(invalid(
            "rate_limit.redis.key_prefix",
            "must be 1-64 visible ASCII characters without { or } (they mark Redis hash tags)",
        ));
    }
    Ok(RedisSettings {
        url: r.url,
        timeout: Duration::from_millis(r.timeout_ms),
        on_error,
        key_prefix: r.key_prefix,
    })
}

/// Largest `requests` × window in ms a shared check computes exactly: Redis' Lua numbers are
/// doubles, exact up to 2^53.
pub const MAX_SHARED_BUDGET: u128 = 1 << 53;

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
fn parse_backend(raw: &str, weight: u32) -> Result<BackendAddr, String> {
    if let Ok(addr) = raw.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(format!("\"{raw}\": port must not be 0"));
        }
        return Ok(BackendAddr {
            host: addr.ip().to_string(),
            port: addr.port(),
            weight,
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
        weight,
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
