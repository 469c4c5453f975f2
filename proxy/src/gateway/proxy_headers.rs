//! Headers the gateway adds: forwarding and identity headers upstream, identity, rate-limit and
//! configured headers downstream.

use std::net::IpAddr;

use bytes::{BufMut, BytesMut};
use http::header::HeaderName;
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::{ErrorType, OrErr};

use crate::config::RateLimitHeaders;
use crate::gateway::header_case::{edit_request, edit_response, Editor, Name};
use crate::gateway::request_ctx::RequestCtx;
use crate::limits::client_ip::write_ip;
use crate::limits::quota::Quota;
use crate::limits::sliding_window::Decision;

pub const X_REQUEST_ID: Name = Name::from_static("x-request-id", "X-Request-Id");
pub const X_FORWARDED_FOR: Name = Name::from_static("x-forwarded-for", "X-Forwarded-For");
const X_FORWARDED_PROTO: Name = Name::from_static("x-forwarded-proto", "X-Forwarded-Proto");
const X_FORWARDED_HOST: Name = Name::from_static("x-forwarded-host", "X-Forwarded-Host");
const X_FORWARDED_PREFIX: Name = Name::from_static("x-forwarded-prefix", "X-Forwarded-Prefix");
const X_UPSTREAM: Name = Name::from_static("x-upstream", "X-Upstream");
const VIA: Name = Name::from_static("via", "Via");
const RATELIMIT_LIMIT: Name = Name::from_static("ratelimit-limit", "RateLimit-Limit");
const RATELIMIT_REMAINING: Name = Name::from_static("ratelimit-remaining", "RateLimit-Remaining");
const RATELIMIT_RESET: Name = Name::from_static("ratelimit-reset", "RateLimit-Reset");
const RATELIMIT_POLICY: Name = Name::from_static("ratelimit-policy", "RateLimit-Policy");
const RATELIMIT: Name = Name::from_static("ratelimit", "RateLimit");
const RETRY_AFTER: Name = Name::from_static("retry-after", "Retry-After");

/// How many headers `add_upstream_headers` / `add_downstream_headers` add at most, besides the
/// configured ones: the room reserved up front.
const UPSTREAM_ADDED: usize = 4;
const DOWNSTREAM_ADDED: usize = 9;

/// Our hop in `Via`.
pub const VIA_VALUE: &str = "1.1 pingora-gateway";

/// The client's `X-Request-Id` when it is sane (1–200 visible ASCII characters), else a new one.
pub fn request_id(req: &RequestHeader) -> HeaderValue {
    if let Some(v) = req.headers.get(&X_REQUEST_ID.key) {
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

/// `X-Forwarded-*`, `X-Request-Id` and `[headers.request]` on the request that goes upstream.
/// `X-Forwarded-Proto` and `-Host` set by a trusted proxy in front (a TLS-terminating load
/// balancer, say) are kept; from anyone else they are replaced with what we saw.
pub fn add_upstream_headers(req: &mut RequestHeader, ctx: &RequestCtx) -> pingora::Result<()> {
    let settings = &ctx.live.settings.headers;
    let forwarded_for = ctx.peer.map(|peer| forwarded_for(req, peer)).transpose()?;
    let keep_proto = ctx.peer_trusted && req.headers.contains_key(&X_FORWARDED_PROTO.key);
    let keep_host = ctx.peer_trusted && req.headers.contains_key(&X_FORWARDED_HOST.key);
    let host = if keep_host {
        None
    } else {
        req.headers.get(http::header::HOST).cloned().or_else(|| {
            req.uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        })
    };
    let route = ctx.route();
    let room =
        UPSTREAM_ADDED + 1 + settings.request.len() + route.map_or(0, |r| r.request_headers.len());
    edit_request(req, settings.preserve_case, room, |h| {
        if let Some(value) = forwarded_for {
            h.insert(&X_FORWARDED_FOR, value)?;
        }
        if !keep_proto {
            let proto = if ctx.tls { "https" } else { "http" };
            h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto))?;
        }
        if !keep_host {
            match host {
                Some(host) => h.insert(&X_FORWARDED_HOST, host)?,
                None => h.remove(&X_FORWARDED_HOST.key),
            }
        }
        h.insert(&X_REQUEST_ID, ctx.request_id.clone())?;
        for c in &settings.request {
            h.insert(&c.name, c.value.clone())?;
        }
        if let Some(route) = route {
            if let Some(prefix) = &route.forwarded_prefix {
                h.insert(&X_FORWARDED_PREFIX, prefix.clone())?;
            }
            for c in &route.request_headers {
                h.insert(&c.name, c.value.clone())?;
            }
        }
        Ok(())
    })
}

/// Whether the gateway sets `name` on this request's way upstream (`add_upstream_headers`):
/// a client's `Connection` header does not get to remove it. (`X-Forwarded-For`, `-Host` and
/// `-Proto` are refused outright when nominated.)
pub fn set_by_gateway(name: &HeaderName, ctx: &RequestCtx) -> bool {
    let route = ctx.route();
    *name == X_REQUEST_ID.key
        || (*name == X_FORWARDED_PREFIX.key && route.is_some_and(|r| r.forwarded_prefix.is_some()))
        || ctx
            .live
            .settings
            .headers
            .request
            .iter()
            .any(|c| c.name.key == *name)
        || route.is_some_and(|r| r.request_headers.iter().any(|c| c.name.key == *name))
}

/// The client's `X-Forwarded-For` list, then the peer: nginx's `$proxy_add_x_forwarded_for`.
/// Public for the benchmarks' reference proxy (`bare_proxy --contract-headers`).
pub fn forwarded_for(req: &RequestHeader, peer: IpAddr) -> pingora::Result<HeaderValue> {
    let mut buf = BytesMut::with_capacity(48);
    if let Some(prev) = joined_values(req, &X_FORWARDED_FOR.key).filter(|p| !p.is_empty()) {
        buf.put_slice(prev.as_bytes());
        buf.put_slice(b", ");
    }
    write_ip(&mut buf, peer);
    HeaderValue::from_maybe_shared(buf.freeze())
        .or_err(ErrorType::InvalidHTTPHeader, "X-Forwarded-For")
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

/// `X-Upstream` (when a backend answered), `X-Request-Id`, `Via`, rate-limit and
/// `[headers.response]` headers on anything we send.
pub fn add_downstream_headers(
    resp: &mut ResponseHeader,
    ctx: &RequestCtx,
    upstream: Option<&HeaderValue>,
) -> pingora::Result<()> {
    let settings = &ctx.live.settings.headers;
    let via = match resp.headers.get(&VIA.key) {
        Some(prev) if !prev.is_empty() => {
            let mut buf = BytesMut::with_capacity(prev.len() + 2 + VIA_VALUE.len());
            buf.put_slice(prev.as_bytes());
            buf.put_slice(b", ");
            buf.put_slice(VIA_VALUE.as_bytes());
            HeaderValue::from_maybe_shared(buf.freeze())
                .or_err(ErrorType::InvalidHTTPHeader, "Via")?
        }
        _ => HeaderValue::from_static(VIA_VALUE),
    };
    let room = DOWNSTREAM_ADDED
        + settings.response.len()
        + ctx.route().map_or(0, |r| r.response_headers.len());
    edit_response(resp, settings.preserve_case, room, |h| {
        if let Some(upstream) = upstream {
            h.insert(&X_UPSTREAM, upstream.clone())?;
        }
        h.insert(&X_REQUEST_ID, ctx.request_id.clone())?;
        h.insert(&VIA, via)?;
        if let (Some(decision), Some(quota)) = (&ctx.rate, ctx.quota()) {
            add_rate_limit_headers(h, decision, quota, ctx.live.settings.rate_limit.headers)?;
        }
        for c in &settings.response {
            h.insert(&c.name, c.value.clone())?;
        }
        if let Some(route) = ctx.route() {
            for c in &route.response_headers {
                h.insert(&c.name, c.value.clone())?;
            }
        }
        Ok(())
    })
}

fn add_rate_limit_headers(
    h: &mut Editor<'_, ResponseHeader>,
    d: &Decision,
    quota: &Quota,
    mode: RateLimitHeaders,
) -> pingora::Result<()> {
    if mode.legacy() {
        h.insert(&RATELIMIT_LIMIT, quota.limit_header.clone())?;
        h.insert(&RATELIMIT_REMAINING, quota.number(d.remaining.into()))?;
        h.insert(&RATELIMIT_RESET, quota.number(d.reset_secs))?;
    }
    if mode.ietf() {
        // `t`: when the quota has room again; on a 429 that is when Retry-After says, so
        // Retry-After is never earlier than `t`.
        let t = if d.allowed {
            d.reset_secs
        } else {
            d.retry_after_secs
        };
        h.insert(&RATELIMIT_POLICY, quota.policy_header.clone())?;
        h.insert(&RATELIMIT, quota.ietf_value(d.remaining, t))?;
    }
    if !d.allowed {
        h.insert(&RETRY_AFTER, quota.number(d.retry_after_secs))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_lower_case_of_their_spelling() {
        for n in [
            X_REQUEST_ID,
            X_FORWARDED_FOR,
            X_FORWARDED_PROTO,
            X_FORWARDED_HOST,
            X_UPSTREAM,
            VIA,
            RATELIMIT_LIMIT,
            RATELIMIT_REMAINING,
            RATELIMIT_RESET,
            RETRY_AFTER,
        ] {
            let spelled = std::str::from_utf8(&n.spelling).unwrap();
            assert_eq!(n.key.as_str(), spelled.to_ascii_lowercase());
        }
    }
}
