//! Passive outlier detection: a backend that keeps failing real requests (5xx answers, connect
//! failures, resets, timeouts) while its health check still passes is taken out of rotation for
//! a while (Envoy's consecutive-5xx ejection, nginx's `max_fails`).
//!
//! - `consecutive_failures` failures in a row eject a backend for `base_ejection` × the times it
//!   was ejected (at most [`MAX_EJECTION`]); any good answer resets the count.
//! - Never more than `max_ejected_percent` of the group's backends are out, and one always
//!   stays: passive detection must not empty a group that active checks call healthy.
//! - Back from an ejection, a backend is on probation: its first failure before a good answer
//!   ejects it again at once, for longer. Once it has served well for as long as its last
//!   ejection lasted, the multiplier starts over.
//!
//! The per-backend state lives in [`BackendInfo`] (it survives reloads with the backend); the
//! group's part here. Only failures take the lock; a good answer costs two loads when nothing
//! is pending.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::{OutlierSettings, MAX_EJECTION};
use crate::upstream::BackendInfo;

/// One backend's failure streak and ejection state.
#[derive(Default)]
pub struct BackendOutlier {
    consecutive: AtomicU32,
    times_ejected: AtomicU32,
    ejected: AtomicBool,
    /// Back from an ejection and not answered well since.
    probation: AtomicBool,
    /// When it came back (ms since the group's epoch), while `times_ejected` > 0.
    returned_ms: AtomicU64,
}

impl BackendOutlier {
    /// Whether picks must skip it now.
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    /// Failures in a row so far.
    pub fn consecutive(&self) -> u32 {
        self.consecutive.load(Ordering::Relaxed)
    }
}

/// What [`Ejections::record`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing changed state.
    Kept,
    /// The backend was ejected for this long.
    Ejected(Duration),
    /// It reached the threshold, but the group's share of ejected backends is used up.
    CapReached,
}

/// A group's size now and how many of its backends are ejected, for the share cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Members {
    pub total: usize,
    pub ejected: usize,
}

/// A group's ejections: how many of its backends are out, and the clock their times use.
pub struct Ejections {
    /// Ejections not yet undone, of current and of removed backends (whose timers still run):
    /// a hint for picks, not the share cap's count.
    ejected: AtomicUsize,
    /// Serializes ejection decisions so the share cap holds under concurrent failures.
    decide: Mutex<()>,
    epoch: Instant,
}

impl Default for Ejections {
    fn default() -> Self {
        Self {
            ejected: AtomicUsize::new(0),
            decide: Mutex::new(()),
            epoch: Instant::now(),
        }
    }
}

impl Ejections {
    /// Whether any backend of the group is ejected (picks check backends only then).
    pub fn any(&self) -> bool {
        self.ejected.load(Ordering::Relaxed) > 0
    }

    /// Ejections not yet undone (removed backends' included).
    #[cfg(test)]
    pub fn count(&self) -> usize {
        self.ejected.load(Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Records one attempt's outcome at `backend`. `members` says, when an ejection is being
    /// decided, how many backends the group has now and how many of them are ejected: the share
    /// cap counts current members only, so a backend that a reload removed while it was out
    /// leaves its place at once rather than when its timer ends.
    pub fn record(
        &self,
        settings: &OutlierSettings,
        backend: &BackendInfo,
        ok: bool,
        members: impl FnOnce() -> Members,
    ) -> Verdict {
        let o = &backend.outlier;
        if ok {
            if o.consecutive.load(Ordering::Relaxed) != 0 {
                o.consecutive.store(0, Ordering::Relaxed);
            }
            if o.probation.load(Ordering::Relaxed) {
                o.probation.store(false, Ordering::Relaxed);
            }
            self.maybe_forgive(o, settings);
            return Verdict::Kept;
        }
        let streak = o.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        let on_probation = o.probation.load(Ordering::Relaxed);
        if settings.consecutive_failures == 0
            || (streak < settings.consecutive_failures && !on_probation)
            || o.is_ejected()
        {
            return Verdict::Kept;
        }
        let _one_at_a_time = self.decide.lock();
        if o.is_ejected() {
            return Verdict::Kept;
        }
        let Members { total, ejected } = members();
        let cap =
            (total * settings.max_ejected_percent as usize / 100).min(total.saturating_sub(1));
        if ejected >= cap {
            return Verdict::CapReached;
        }
        let times = o.times_ejected.fetch_add(1, Ordering::Relaxed) + 1;
        o.ejected.store(true, Ordering::Relaxed);
        o.probation.store(false, Ordering::Relaxed);
        self.ejected.fetch_add(1, Ordering::Relaxed);
        Verdict::Ejected(ejection_time(settings.base_ejection, times))
    }

    /// Puts an ejected backend back in rotation, on probation. Returns false when it was not
    /// ejected (nothing to do).
    pub fn readmit(&self, backend: &BackendInfo) -> bool {
        let o = &backend.outlier;
        let _one_at_a_time = self.decide.lock();
        if !o.ejected.swap(false, Ordering::Relaxed) {
            return false;
        }
        o.consecutive.store(0, Ordering::Relaxed);
        o.probation.store(true, Ordering::Relaxed);
        o.returned_ms.store(self.now_ms(), Ordering::Relaxed);
        self.ejected.fetch_sub(1, Ordering::Relaxed);
        true
    }

    /// After a good answer: a backend that has been back for as long as its last ejection
    /// lasted starts over with the base ejection time.
    fn maybe_forgive(&self, o: &BackendOutlier, settings: &OutlierSettings) {
        let times = o.times_ejected.load(Ordering::Relaxed);
        if times == 0 || o.is_ejected() {
            return;
        }
        let back_for = self
            .now_ms()
            .saturating_sub(o.returned_ms.load(Ordering::Relaxed));
        if back_for >= ejection_time(settings.base_ejection, times).as_millis() as u64 {
            o.times_ejected.store(0, Ordering::Relaxed);
        }
    }
}

/// `base` × `times`, at most [`MAX_EJECTION`].
pub fn ejection_time(base: Duration, times: u32) -> Duration {
    base.saturating_mul(times).min(MAX_EJECTION)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::discovery::test_support::backend_info;
    use std::sync::Arc;

    fn settings(threshold: u32, percent: u32) -> OutlierSettings {
        OutlierSettings {
            consecutive_failures: threshold,
            base_ejection: Duration::from_secs(30),
            max_ejected_percent: percent,
        }
    }

    /// A group of `total` backends whose known members are `infos` (the others not ejected),
    /// as it is when the call is made.
    fn group(total: usize, infos: &[&Arc<BackendInfo>]) -> impl FnOnce() -> Members {
        let ejected = infos.iter().filter(|i| i.outlier.is_ejected()).count();
        move || Members { total, ejected }
    }

    #[test]
    fn the_threshold_th_failure_in_a_row_ejects_and_a_success_resets_the_streak() {
        let e = Ejections::default();
        let s = settings(3, 50);
        let b = backend_info("a");
        let g = || group(3, &[&b]);
        assert_eq!(e.record(&s, &b, false, g()), Verdict::Kept);
        assert_eq!(e.record(&s, &b, false, g()), Verdict::Kept);
        assert_eq!(e.record(&s, &b, true, g()), Verdict::Kept);
        assert_eq!(e.record(&s, &b, false, g()), Verdict::Kept);
        assert_eq!(e.record(&s, &b, false, g()), Verdict::Kept);
        assert_eq!(
            e.record(&s, &b, false, g()),
            Verdict::Ejected(Duration::from_secs(30))
        );
        assert!(b.outlier.is_ejected());
        assert_eq!(e.count(), 1);
        // Failures reported while it is out change nothing.
        assert_eq!(e.record(&s, &b, false, g()), Verdict::Kept);
        assert_eq!(e.count(), 1);
    }

    #[test]
    fn the_share_cap_keeps_one_of_three_out_at_fifty_percent_and_one_always_in() {
        let e = Ejections::default();
        let s = settings(1, 50);
        let (a, b) = (backend_info("a"), backend_info("b"));
        assert!(matches!(
            e.record(&s, &a, false, group(3, &[&a, &b])),
            Verdict::Ejected(_)
        ));
        assert_eq!(
            e.record(&s, &b, false, group(3, &[&a, &b])),
            Verdict::CapReached
        );
        assert!(!b.outlier.is_ejected());
        // 100% of two backends still leaves one.
        let e = Ejections::default();
        let s = settings(1, 100);
        let (a, b) = (backend_info("a"), backend_info("b"));
        assert!(matches!(
            e.record(&s, &a, false, group(2, &[&a, &b])),
            Verdict::Ejected(_)
        ));
        assert_eq!(
            e.record(&s, &b, false, group(2, &[&a, &b])),
            Verdict::CapReached
        );
        // A group of one never ejects.
        let e = Ejections::default();
        let a = backend_info("a");
        assert_eq!(
            e.record(&s, &a, false, group(1, &[&a])),
            Verdict::CapReached
        );
    }

    #[test]
    fn a_backend_removed_while_ejected_leaves_its_place_in_the_share_at_once() {
        let e = Ejections::default();
        let s = settings(1, 50);
        let (a, b, c, d) = (
            backend_info("a"),
            backend_info("b"),
            backend_info("c"),
            backend_info("d"),
        );
        assert!(matches!(
            e.record(&s, &b, false, group(3, &[&a, &b, &c])),
            Verdict::Ejected(_)
        ));
        assert_eq!(
            e.record(&s, &c, false, group(3, &[&a, &b, &c])),
            Verdict::CapReached
        );
        // A reload replaces b (still ejected, its timer running) with d: the group has three
        // members again, none of them out, so c may go.
        assert!(b.outlier.is_ejected());
        assert!(matches!(
            e.record(&s, &c, false, group(3, &[&a, &c, &d])),
            Verdict::Ejected(_)
        ));
        // b's timer still ends its ejection and the count of undone ejections.
        assert_eq!(e.count(), 2);
        assert!(e.readmit(&b));
        assert_eq!(e.count(), 1);
    }

    #[test]
    fn back_from_ejection_one_failure_ejects_again_for_longer() {
        let e = Ejections::default();
        let s = settings(2, 50);
        let b = backend_info("a");
        let g = || group(2, &[&b]);
        e.record(&s, &b, false, g());
        assert_eq!(
            e.record(&s, &b, false, g()),
            Verdict::Ejected(Duration::from_secs(30))
        );
        assert!(e.readmit(&b));
        assert!(!e.readmit(&b), "readmitting twice does nothing");
        assert_eq!(e.count(), 0);
        assert_eq!(
            e.record(&s, &b, false, g()),
            Verdict::Ejected(Duration::from_secs(60))
        );
        // A good answer after the return ends probation: the streak is needed again.
        assert!(e.readmit(&b));
        assert_eq!(e.record(&s, &b, true, g()), Verdict::Kept);
        assert_eq!(e.record(&s, &b, false, g()), Verdict::Kept);
    }

    #[test]
    fn zero_threshold_never_ejects() {
        let e = Ejections::default();
        let s = settings(0, 100);
        let b = backend_info("a");
        for _ in 0..100 {
            assert_eq!(e.record(&s, &b, false, group(3, &[&b])), Verdict::Kept);
        }
        assert!(!b.outlier.is_ejected());
    }

    #[test]
    fn ejection_time_grows_with_each_ejection_up_to_five_minutes() {
        let base = Duration::from_secs(30);
        assert_eq!(ejection_time(base, 1), Duration::from_secs(30));
        assert_eq!(ejection_time(base, 3), Duration::from_secs(90));
        assert_eq!(ejection_time(base, 50), MAX_EJECTION);
    }
}
