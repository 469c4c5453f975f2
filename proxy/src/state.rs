//! The reloadable part of the gateway: settings and the limiter built from them, swapped as one.

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderValue;

use crate::config::Settings;
use crate::rate_limit::{Limits, RateLimiter};

/// One consistent snapshot; a request holds the one it started with.
pub struct Live {
    pub settings: Arc<Settings>,
    /// `None` when rate limiting is disabled: no limiter work on the request path.
    pub limiter: Option<Arc<RateLimiter>>,
    /// `RateLimit-Limit` value, formatted once.
    pub limit_header: HeaderValue,
    /// Header values of 0..=n for the rate-limit headers' usual numbers (reset and retry
    /// seconds within the window, remaining counts of small limits), formatted once: cloning one
    /// is a reference count, formatting one an allocation.
    numbers: Box<[HeaderValue]>,
}

/// Most small numbers formatted ahead (~100 bytes each).
const MAX_FORMATTED_NUMBERS: u64 = 1024;

impl Live {
    /// Builds the snapshot for `settings`, keeping `previous`'s limiter (and so every client's
    /// count) when the limits did not change.
    pub fn new(settings: Arc<Settings>, previous: Option<&Live>) -> Self {
        let rl = &settings.rate_limit;
        let limits = Limits {
            requests: rl.requests.get(),
            window: rl.window,
            max_clients: rl.max_clients,
        };
        let limiter = rl.enabled.then(|| {
            previous
                .and_then(|p| p.limiter.clone())
                .filter(|l| l.limits() == limits)
                .unwrap_or_else(|| Arc::new(RateLimiter::new(limits)))
        });
        let window_secs = limits.window.as_secs();
        let wanted = u64::from(limits.requests).max(2 * window_secs + 2);
        let numbers = (0..=wanted.min(MAX_FORMATTED_NUMBERS))
            .map(HeaderValue::from)
            .collect();
        Self {
            limit_header: HeaderValue::from(limits.requests),
            settings,
            limiter,
            numbers,
        }
    }

    /// `n` as a header value.
    pub fn number(&self, n: u64) -> HeaderValue {
        usize::try_from(n)
            .ok()
            .and_then(|i| self.numbers.get(i))
            .cloned()
            .unwrap_or_else(|| HeaderValue::from(n))
    }
}

/// Shared handle to the current snapshot.
pub type LiveState = Arc<ArcSwap<Live>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_config;

    #[test]
    fn numbers_read_as_if_formatted_now() {
        for (requests, window) in [(100, 60), (1_000_000_000, 60), (5, 3600)] {
            let text = format!(
                "[upstream]\nbackends = [\"127.0.0.1:9001\"]\n[rate_limit]\nrequests = {requests}\nwindow_seconds = {window}\n"
            );
            let live = Live::new(Arc::new(parse_config(&text, "t.toml").unwrap()), None);
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
                assert_eq!(live.number(n), HeaderValue::from(n), "{n}");
            }
            assert!(
                live.numbers.len() as u64 > 2 * window.min(511),
                "window {window}"
            );
        }
    }
}
