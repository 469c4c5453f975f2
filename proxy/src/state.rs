//! The reloadable part of the gateway: settings and the limiter built from them, swapped as one.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Settings;
use crate::rate_limit::{Limits, RateLimiter};

/// One consistent snapshot; a request holds the one it started with.
pub struct Live {
    pub settings: Arc<Settings>,
    /// `None` when rate limiting is disabled: no limiter work on the request path.
    pub limiter: Option<Arc<RateLimiter>>,
    /// `RateLimit-Limit` value, formatted once.
    pub limit_header: http::HeaderValue,
}

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
        Self {
            limit_header: http::HeaderValue::from(limits.requests),
            settings,
            limiter,
        }
    }
}

/// Shared handle to the current snapshot.
pub type LiveState = Arc<ArcSwap<Live>>;
