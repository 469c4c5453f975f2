//! A quota: one rate-limit policy (the global `[rate_limit]`, or a route's own) with its
//! limiter, whose budget a request spends, and its header values formatted once.

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use pingora::http::RequestHeader;

use crate::config::QuotaKey;
use crate::limits::sliding_window::{ClientKey, Limits, RateLimiter};

/// One policy: its name (the route's, or `default`), its limiter and how a request is keyed.
pub struct Quota {
    pub policy: Arc<str>,
    pub limiter: Arc<RateLimiter>,
    pub key: QuotaKey,
    /// `RateLimit-Limit` value, formatted once.
    pub limit_header: HeaderValue,
    numbers: Arc<Numbers>,
}

impl Quota {
    /// The quota `policy` with `limits`, keeping `previous`'s limiter (and so every client's
    /// count) when neither the limits nor the key changed.
    pub fn new(
        policy: Arc<str>,
        limits: Limits,
        key: QuotaKey,
        numbers: Arc<Numbers>,
        previous: Option<&Quota>,
    ) -> Self {
        let kept = previous.filter(|p| p.limiter.limits() == limits && p.key == key);
        Self {
            policy,
            limiter: kept
                .map(|p| p.limiter.clone())
                .unwrap_or_else(|| Arc::new(RateLimiter::new(limits))),
            limit_header: HeaderValue::from(limits.requests),
            key,
            numbers,
        }
    }

    /// Whose budget this request spends: the keyed header's value, or the client's address
    /// when the key is `client_ip` or the header is missing.
    pub fn key_for(&self, req: &RequestHeader, client: IpAddr) -> ClientKey {
        if let QuotaKey::Header(name) = &self.key {
            if let Some(v) = req.headers.get(name).filter(|v| !v.is_empty()) {
                return ClientKey::from_token(v.as_bytes());
            }
        }
        ClientKey::from_ip(client)
    }

    /// `n` as a header value.
    pub fn number(&self, n: u64) -> HeaderValue {
        self.numbers.get(n)
    }
}

/// Header values of 0..=n for the rate-limit headers' usual numbers (reset and retry seconds
/// within the window, remaining counts of small limits), formatted once and shared by every
/// quota of a snapshot: cloning one is a reference count, formatting one an allocation.
pub struct Numbers(Box<[HeaderValue]>);

/// Most small numbers formatted ahead (~100 bytes each).
const MAX_FORMATTED_NUMBERS: u64 = 1024;

impl Numbers {
    /// Numbers up to what limits of `requests` per `window` print, capped.
    pub fn for_limits(limits: impl IntoIterator<Item = (u32, Duration)>) -> Self {
        let wanted = limits
            .into_iter()
            .map(|(requests, window)| u64::from(requests).max(2 * window.as_secs() + 2))
            .max()
            .unwrap_or(0);
        Self(
            (0..=wanted.min(MAX_FORMATTED_NUMBERS))
                .map(HeaderValue::from)
                .collect(),
        )
    }

    pub fn get(&self, n: u64) -> HeaderValue {
        usize::try_from(n)
            .ok()
            .and_then(|i| self.0.get(i))
            .cloned()
            .unwrap_or_else(|| HeaderValue::from(n))
    }
}

/// The limits of a quota of `requests` per `window` for at most `max_clients` keys.
pub fn limits(requests: u32, window: Duration, max_clients: NonZeroUsize) -> Limits {
    Limits {
        requests,
        window,
        max_clients,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_as_if_formatted_now() {
        for (requests, window) in [(100, 60), (1_000_000_000, 60), (5, 3600)] {
            let numbers = Numbers::for_limits([(requests, Duration::from_secs(window))]);
            for n in [
                0,
                1,
                59,
                60,
                61,
                100,
                1023,
                1024,
                1025,
                999_999_999,
                u64::MAX,
            ] {
                assert_eq!(numbers.get(n), HeaderValue::from(n), "{n}");
            }
            assert!(
                numbers.0.len() as u64 > 2 * window.min(511),
                "window {window}"
            );
        }
    }

    #[test]
    fn header_keys_fall_back_to_the_client_address() {
        let limits = limits(10, Duration::from_secs(1), NonZeroUsize::new(10).unwrap());
        let numbers = Arc::new(Numbers::for_limits([]));
        let q = Quota::new(
            "api".into(),
            limits,
            QuotaKey::Header(http::HeaderName::from_static("x-api-key")),
            numbers,
            None,
        );
        let client: IpAddr = "127.0.0.9".parse().unwrap();
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        assert_eq!(q.key_for(&req, client), ClientKey::from_ip(client));
        req.insert_header("x-api-key", "k1").unwrap();
        let k1 = q.key_for(&req, client);
        assert!(matches!(k1, ClientKey::Token(_)));
        req.insert_header("x-api-key", "k2").unwrap();
        assert_ne!(q.key_for(&req, client), k1);
        req.insert_header("x-api-key", "k1").unwrap();
        assert_eq!(q.key_for(&req, client), k1);
    }
}
