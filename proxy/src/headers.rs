//! Headers the gateway adds: forwarding and identity headers upstream, identity, rate-limit and
//! configured headers downstream.

use http::header::HeaderName;
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};

use crate::context::RequestCtx;
use crate::rate_limit::Decision;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_UPSTREAM: HeaderName = HeaderName::from_static("x-upstream");
pub const VIA: HeaderName = HeaderName::from_static("via");
pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
pub const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
pub const RETRY_AFTER: HeaderName = HeaderName::from_static("retry-after");

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
pub fn add_upstream_headers(req: &mut RequestHeader, ctx: &RequestCtx) -> pingora::Result<()> {
    if let Some(peer) = ctx.peer {
        let peer = peer.to_string();
        let joined = match joined_values(req, &X_FORWARDED_FOR) {
            Some(prev) if !prev.is_empty() => format!("{prev}, {peer}"),
            _ => peer,
        };
        req.insert_header(X_FORWARDED_FOR, joined)?;
    }
    req.insert_header(X_FORWARDED_PROTO, HeaderValue::from_static("http"))?;
    let host = req.headers.get(http::header::HOST).cloned().or_else(|| {
        req.uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    if let Some(host) = host {
        req.insert_header(X_FORWARDED_HOST, host)?;
    }
    req.insert_header(X_REQUEST_ID, ctx.request_id.clone())?;
    for (name, value) in &ctx.live.settings.headers.request {
        req.insert_header(name.clone(), value.clone())?;
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
    resp.insert_header(X_REQUEST_ID, ctx.request_id.clone())?;
    let via = match resp.headers.get(&VIA) {
        Some(prev) if !prev.is_empty() => {
            format!("{}, {VIA_VALUE}", String::from_utf8_lossy(prev.as_bytes()))
        }
        _ => VIA_VALUE.to_owned(),
    };
    resp.insert_header(VIA, via)?;
    if let Some(decision) = &ctx.rate {
        add_rate_limit_headers(resp, decision, &ctx.live.limit_header)?;
    }
    for (name, value) in &ctx.live.settings.headers.response {
        resp.insert_header(name.clone(), value.clone())?;
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
