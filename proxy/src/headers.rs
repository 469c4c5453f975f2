//! Headers the gateway adds: forwarding and identity headers upstream, identity, rate-limit and
//! configured headers downstream.

use http::header::HeaderName;
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};

use crate::context::RequestCtx;
use crate::rate_limit::Decision;

// Names to look headers up by.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const VIA: HeaderName = HeaderName::from_static("via");

// Names to write, as static title-case strings: Pingora keeps them as the wire spelling without
// copying them (a `HeaderName` it would first copy into a title-case buffer).
const REQUEST_ID: &str = "X-Request-Id";
const FORWARDED_FOR: &str = "X-Forwarded-For";
const FORWARDED_PROTO: &str = "X-Forwarded-Proto";
const FORWARDED_HOST: &str = "X-Forwarded-Host";
pub const UPSTREAM: &str = "X-Upstream";
const VIA_NAME: &str = "Via";
const RATELIMIT_LIMIT: &str = "RateLimit-Limit";
const RATELIMIT_REMAINING: &str = "RateLimit-Remaining";
const RATELIMIT_RESET: &str = "RateLimit-Reset";
const RETRY_AFTER: &str = "Retry-After";

/// Our hop in `Via`.
pub const VIA_VALUE: &str = "1.1 pingora-gateway";

/// The client's `X-Request-Id` when it is sane (1–200 visible ASCII characters), else a new one.
pub fn request_id(req: &RequestHeader) -> HeaderValue {
    if let Some(v) = req.headers.get(&X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 200 && b.iter().all(|c| (0x21..=0x7e).contains(c)) {
            return v.clone();
        }
    }
    let id = uuid::Uuid::new_v4();
    let mut buf = [0u8; uuid::fmt::Simple::LENGTH];
    HeaderValue::from_str(id.simple().encode_lower(&mut buf))
        .unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// `X-Forwarded-*`, `X-Request-Id` and `[headers.request]` on the upstream request.
/// `X-Forwarded-Proto` and `-Host` set by a trusted proxy in front (a TLS-terminating load
/// balancer, say) are kept; from anyone else they are replaced with what we saw.
pub fn add_upstream_headers(req: &mut RequestHeader, ctx: &RequestCtx) -> pingora::Result<()> {
    if let Some(peer) = ctx.peer {
        let peer = peer.to_string();
        let joined = match joined_values(req, &X_FORWARDED_FOR) {
            Some(prev) if !prev.is_empty() => format!("{prev}, {peer}"),
            _ => peer,
        };
        req.insert_header(FORWARDED_FOR, joined)?;
    }
    let keep_proto = ctx.peer_trusted && req.headers.contains_key(&X_FORWARDED_PROTO);
    let keep_host = ctx.peer_trusted && req.headers.contains_key(&X_FORWARDED_HOST);
    if !keep_proto {
        req.insert_header(FORWARDED_PROTO, HeaderValue::from_static("http"))?;
    }
    if !keep_host {
        let host = req.headers.get(http::header::HOST).cloned().or_else(|| {
            req.uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        match host {
            Some(host) => req.insert_header(FORWARDED_HOST, host)?,
            None => drop(req.remove_header(&X_FORWARDED_HOST)),
        }
    }
    req.insert_header(REQUEST_ID, ctx.request_id.clone())?;
    for h in &ctx.live.settings.headers.request {
        req.insert_header(h.name.clone(), h.value.clone())?;
    }
    Ok(())
}

/// All values of a header joined with ", ", as one list (RFC 9110 field lines combine so).
pub fn joined_values(req: &RequestHeader, name: &HeaderName) -> Option<String> {
    let mut values = req.headers.get_all(name).iter();
    let first = values.next()?;
    let mut joined = String::from_utf8_lossy(first.as_bytes()).into_owned();
    for v in values {
        joined.push_str(", ");
        joined.push_str(&String::from_utf8_lossy(v.as_bytes()));
    }
    Some(joined)
}

/// `X-Request-Id`, `Via`, rate-limit and `[headers.response]` headers on anything we send.
pub fn add_downstream_headers(resp: &mut ResponseHeader, ctx: &RequestCtx) -> pingora::Result<()> {
    resp.insert_header(REQUEST_ID, ctx.request_id.clone())?;
    match resp.headers.get(&VIA) {
        Some(prev) if !prev.is_empty() => {
            let via = format!("{}, {VIA_VALUE}", String::from_utf8_lossy(prev.as_bytes()));
            resp.insert_header(VIA_NAME, via)?;
        }
        _ => resp.insert_header(VIA_NAME, HeaderValue::from_static(VIA_VALUE))?,
    }
    if let Some(decision) = &ctx.rate {
        add_rate_limit_headers(resp, decision, &ctx.live.limit_header)?;
    }
    for h in &ctx.live.settings.headers.response {
        resp.insert_header(h.name.clone(), h.value.clone())?;
    }
    Ok(())
}

fn add_rate_limit_headers(
    resp: &mut ResponseHeader,
    d: &Decision,
    limit: &HeaderValue,
) -> pingora::Result<()> {
    resp.insert_header(RATELIMIT_LIMIT, limit.clone())?;
    resp.insert_header(RATELIMIT_REMAINING, HeaderValue::from(d.remaining))?;
    resp.insert_header(RATELIMIT_RESET, HeaderValue::from(d.reset_secs))?;
    if !d.allowed {
        resp.insert_header(RETRY_AFTER, HeaderValue::from(d.retry_after_secs))?;
    }
    Ok(())
}
