//! A quota: one rate-limit policy (the global `[rate_limit]`, or a route's own) with its
//! limiter, whose budget a request spends, and its header values formatted once.

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use pingora::http::RequestHeader;

use crate::config::{OnStoreError, QuotaKey};
use crate::limits::shared_store::SharedStore;
use crate::limits::sliding_window::{ClientKey, Decision, Limits, RateLimiter};

/// One policy: its name (the route's, or `default`), its limiter and how a request is keyed.
pub struct Quota {
    pub policy: Arc<str>,
    /// This instance's exact limiter: the store, or `on_error = "local"`'s stand-in.
    pub limiter: Arc<RateLimiter>,
    /// The shared store, when `store = "redis"`.
    pub shared: Option<Arc<SharedStore>>,
    pub key: QuotaKey,
    /// `RateLimit-Limit` value, formatted once.
    pub limit_header: HeaderValue,
    /// `RateLimit-Policy: "NAME";q=LIMIT;w=WINDOW`, formatted once.
    pub policy_header: HeaderValue,
    /// `"NAME";r=` of the `RateLimit` field.
    ietf_prefix: Bytes,
    numbers: Arc<Numbers>,
}

/// The outcome of a quota check.
pub struct Checked {
    /// `None`: let through without a count (the store failed and `on_error = "allow"`).
    pub decision: Option<Decision>,
    /// Whether the shared store decided (a refund goes there).
    pub shared: bool,
}

impl Quota {
    /// The quota `policy` with `limits`, keeping `previous`'s limiter (and so every client's
    /// count) when neither the limits nor the key changed.
    pub fn new(
        policy: Arc<str>,
        limits: Limits,
        key: QuotaKey,
        numbers: Arc<Numbers>,
        shared: Option<Arc<SharedStore>>,
        previous: Option<&Quota>,
    ) -> Self {
        let kept = previous.filter(|p| p.limiter.limits() == limits && p.key == key);
        // Policy names are tokens (validated): they need no escaping in a structured field.
        let policy_header = HeaderValue::from_str(&format!(
            "\"{policy}\";q={};w={}",
            limits.requests,
            limits.window.as_secs()
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("\"default\""));
        Self {
            ietf_prefix: Bytes::from(format!("\"{policy}\";r=")),
            policy,
            limiter: kept
                .map(|p| p.limiter.clone())
                .unwrap_or_else(|| Arc::new(RateLimiter::new(limits))),
            shared,
            limit_header: HeaderValue::from(limits.requests),
            policy_header,
            key,
            numbers,
        }
    }

    /// Checks and counts one request of `key`: in the shared store when there is one (with
    /// `on_error` when it fails), else in this instance's limiter.
    pub async fn check(&self, key: ClientKey, now: Instant) -> Checked {
        let Some(store) = &self.shared else {
            return Checked {
                decision: Some(self.limiter.check(key, now)),
                shared: false,
            };
        };
        let limits = self.limiter.limits();
        // Boxed: inline, the store's round trip would enlarge every request's state, which is
        // copied whole as it moves (local checks included).
        match Box::pin(store.check(&self.policy, &key, limits.requests, limits.window)).await {
            Ok(decision) => Checked {
                decision: Some(decision),
                shared: true,
            },
            Err(_) => {
                store.count_fallback();
                Checked {
                    decision: match store.settings().on_error {
                        OnStoreError::Local => Some(self.limiter.check(key, now)),
                        OnStoreError::Allow => None,
                        OnStoreError::Deny => Some(Decision {
                            allowed: false,
                            limit: limits.requests,
                            remaining: 0,
                            reset_secs: 1,
                            retry_after_secs: 1,
                        }),
                    },
                    shared: false,
                }
            }
        }
    }

    /// Gives back the unit the last check of `key` counted, where it was counted.
    pub fn refund(&self, key: ClientKey, shared: bool) {
        match (&self.shared, shared) {
            (Some(store), true) => store.refund(&self.policy, &key),
            _ => self.limiter.refund(key),
        }
    }

    /// The `RateLimit` field: `"NAME";r=REMAINING;t=SECONDS`.
    pub fn ietf_value(&self, remaining: u32, t: u64) -> HeaderValue {
        let mut buf = BytesMut::with_capacity(self.ietf_prefix.len() + 24);
        buf.extend_from_slice(&self.ietf_prefix);
        let mut n = itoa::Buffer::new();
        buf.extend_from_slice(n.format(remaining).as_bytes());
        buf.extend_from_slice(b";t=");
        buf.extend_from_slice(n.format(t).as_bytes());
        HeaderValue::from_maybe_shared(buf.freeze())
            .unwrap_or_else(|_| HeaderValue::from_static("\"default\""))
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
