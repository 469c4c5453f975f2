//! When a failed attempt is followed by another, and how long to wait first.
//!
//! Which failures are retryable at all (connect failures; resets of idempotent requests the
//! client has seen nothing of; 502/503/504 answers to idempotent requests) is decided where
//! Pingora reports them; this is the group's part: `retry.on`, `max_retries`, the budget's cost
//! and the backoff.
//!
//! A retry costs budget and waits a backoff only when the failed attempt may have cost the
//! backend work: a reset after the request went out on a fresh connection, or a gateway error.
//! A connect failure, or a pooled connection found closed before any answer (the keep-alive
//! race every proxy retries), did no work there; it goes to another backend at once and
//! budget-free, as nginx's `proxy_next_upstream error` does, so losing a backend costs clients
//! nothing however busy the group is.

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::RetryOn;
use crate::upstream::group::Group;

/// The failure an attempt ended with, as `retry.on` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    ConnectFailure,
    Reset,
    GatewayError,
}

impl RetryReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::ConnectFailure => "connect-failure",
            RetryReason::Reset => "reset",
            RetryReason::GatewayError => "gateway-error",
        }
    }

    /// Whether `on` lets this failure be retried.
    pub fn enabled(self, on: &RetryOn) -> bool {
        match self {
            RetryReason::ConnectFailure => on.connect_failure,
            RetryReason::Reset => on.reset,
            RetryReason::GatewayError => on.gateway_error,
        }
    }
}

/// Whether another attempt may follow `attempts` failed ones: the group's `max_retries` allows
/// it and a healthy backend not in `tried` is left (a retry never goes to the same backend).
pub fn another_attempt(group: &Group, attempts: usize, tried: &[SocketAddr]) -> bool {
    attempts <= group.settings.max_retries && group.untried_left(tried)
}

/// The wait before the `n`th budgeted retry (1-based): uniformly random up to
/// `base` × (2^n − 1), at most 10 × `base` (Envoy's full-jitter backoff). `unit` is a random
/// number in [0, 1).
pub fn backoff(base: Duration, n: u32, unit: f64) -> Duration {
    let factor = ((1u64 << n.min(16)) - 1) as f64;
    let ceiling = base.mul_f64(factor).min(base * 10);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_under_a_ceiling_of_ten_times_the_base() {
        let base = Duration::from_millis(25);
        assert_eq!(backoff(base, 1, 0.999_999).as_millis(), 24);
        assert_eq!(backoff(base, 2, 0.5), Duration::from_micros(37_500));
        assert_eq!(backoff(base, 3, 1.0), Duration::from_millis(175));
        assert_eq!(backoff(base, 9, 1.0), Duration::from_millis(250));
        assert_eq!(backoff(base, 40, 1.0), Duration::from_millis(250));
        assert_eq!(backoff(base, 3, 0.0), Duration::ZERO);
        assert_eq!(backoff(Duration::ZERO, 3, 0.7), Duration::ZERO);
    }

    #[test]
    fn retry_on_gates_each_reason() {
        let on = RetryOn {
            connect_failure: true,
            reset: false,
            gateway_error: true,
        };
        assert!(RetryReason::ConnectFailure.enabled(&on));
        assert!(!RetryReason::Reset.enabled(&on));
        assert!(RetryReason::GatewayError.enabled(&on));
        assert_eq!(RetryReason::GatewayError.as_str(), "gateway-error");
    }
}
