//! When a failed attempt is followed by another.
//!
//! Which failures are retryable at all (connect failures; resets of idempotent requests the
//! client has seen nothing of) is decided where Pingora reports them; this is the group's part.

use std::net::SocketAddr;

use crate::upstream::group::Group;

/// Whether another attempt may follow `attempts` failed ones: the group's `max_retries` allows
/// it and a healthy backend not in `tried` is left (a retry never goes to the same backend).
pub fn another_attempt(group: &Group, attempts: usize, tried: &[SocketAddr]) -> bool {
    attempts <= group.settings.max_retries && group.untried_left(tried)
}
