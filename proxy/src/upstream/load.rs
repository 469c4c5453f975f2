//! A group's load: its requests in flight (for `limits.max_requests`) and its requests in a
//! budgeted retry (for `retry.budget_percent`, Envoy's retry budget).
//!
//! The budget bounds how much extra work retries put on a group: at any moment at most
//! `budget_percent` of its active requests (and at least [`MIN_RETRY_CONCURRENCY`]) may be in a
//! budgeted retry, so a failing group cannot double its load by retrying. A request holds at
//! most one retry slot from its first budgeted retry until it ends.
//!
//! Counters only; the request context takes and gives back its slots (see `RequestCtx`'s
//! `Drop`), so every way out of a request gives them back.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::MIN_RETRY_CONCURRENCY;

#[derive(Default)]
pub struct GroupLoad {
    active: AtomicUsize,
    retrying: AtomicUsize,
}

impl GroupLoad {
    /// Counts a request in; `false` (and not counted) when `max` requests are already in.
    pub fn enter(&self, max: Option<usize>) -> bool {
        let now = self.active.fetch_add(1, Ordering::Relaxed) + 1;
        match max {
            Some(max) if now > max => {
                self.active.fetch_sub(1, Ordering::Relaxed);
                false
            }
            _ => true,
        }
    }

    /// Counts a request out (one that [`enter`](Self::enter) let in).
    pub fn leave(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }

    /// Takes a retry slot if the budget has one: in-flight retries below `budget_percent` of
    /// the active requests, or below the minimum.
    pub fn try_retry(&self, budget_percent: u32) -> bool {
        let active = self.active.load(Ordering::Relaxed);
        let limit = (active * budget_percent as usize / 100).max(MIN_RETRY_CONCURRENCY);
        let now = self.retrying.fetch_add(1, Ordering::Relaxed) + 1;
        if now > limit {
            self.retrying.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Gives back a slot [`try_retry`](Self::try_retry) took.
    pub fn retry_done(&self) {
        self.retrying.fetch_sub(1, Ordering::Relaxed);
    }

    /// Requests in flight.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Requests in a budgeted retry.
    pub fn retrying(&self) -> usize {
        self.retrying.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_requests_lets_that_many_in_and_a_leaver_makes_room() {
        let load = GroupLoad::default();
        assert!(load.enter(Some(2)));
        assert!(load.enter(Some(2)));
        assert!(!load.enter(Some(2)));
        assert_eq!(load.active(), 2);
        load.leave();
        assert!(load.enter(Some(2)));
        assert!(load.enter(None), "no cap: always in");
    }

    #[test]
    fn the_budget_is_a_share_of_active_requests_with_a_floor_of_three() {
        let load = GroupLoad::default();
        for _ in 0..40 {
            load.enter(None);
        }
        // 20% of 40 = 8 slots.
        let taken = (0..20).filter(|_| load.try_retry(20)).count();
        assert_eq!(taken, 8);
        assert_eq!(load.retrying(), 8);
        load.retry_done();
        assert!(load.try_retry(20));
        // A quiet group still has three.
        let quiet = GroupLoad::default();
        quiet.enter(None);
        let taken = (0..10).filter(|_| quiet.try_retry(20)).count();
        assert_eq!(taken, MIN_RETRY_CONCURRENCY);
    }
}
