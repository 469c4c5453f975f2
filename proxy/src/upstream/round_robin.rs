//! Smooth weighted round robin over the backends a request may still use (nginx's
//! `ngx_http_upstream_get_peer`).
//!
//! Walking the list with a counter and taking the next usable backend hands a dead backend's
//! turns to its successor (one of three down: 200/100 instead of 150/150). Here a backend that
//! is not ready, or already tried by this request, takes no part in the pick: every candidate
//! adds its weight to its current weight, the largest wins and gives back the candidates' total.
//! The survivors share by weight, and the order stays smooth (5/1/1: a a b a c a a, not a burst
//! of five a).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use pingora::lb::Backend;

use crate::upstream::{self, BackendInfo};

/// The largest weight that counts; keeps the running sums far from overflow.
const MAX_WEIGHT: usize = u32::MAX as usize;

/// A backend chosen for one attempt: its address and what discovery attached to it.
pub type Pick = (SocketAddr, Option<Arc<BackendInfo>>);

/// The balancer state shared by every request of one backend pool.
#[derive(Default)]
pub struct SmoothRoundRobin {
    state: Mutex<Weights>,
}

#[derive(Default)]
struct Weights {
    /// The membership `current` was built for. Pingora publishes a new set only when membership
    /// changes, so a different pointer means different backends (or weights): start afresh.
    members: Option<Arc<BTreeSet<Backend>>>,
    /// nginx's `current_weight` of each member, in set order.
    current: Vec<i64>,
}

impl SmoothRoundRobin {
    /// The next of `members` that `ready` accepts and that is not in `tried`. Allocates only
    /// when the membership changed since the last pick.
    pub fn pick(
        &self,
        members: &Arc<BTreeSet<Backend>>,
        ready: impl Fn(&Backend) -> bool,
        tried: &[SocketAddr],
    ) -> Option<Pick> {
        let mut state = self.state.lock();
        let Weights {
            members: known,
            current,
        } = &mut *state;
        if !known.as_ref().is_some_and(|k| Arc::ptr_eq(k, members)) {
            current.clear();
            current.resize(members.len(), 0);
            *known = Some(Arc::clone(members));
        }

        let mut total: i64 = 0;
        let mut best: Option<(usize, i64, SocketAddr, &Backend)> = None;
        for (i, (backend, weight_now)) in members.iter().zip(current.iter_mut()).enumerate() {
            let Some(addr) = backend.addr.as_inet() else {
                continue;
            };
            if tried.contains(addr) || !ready(backend) {
                continue;
            }
            let weight = effective_weight(backend);
            *weight_now += weight;
            total += weight;
            // Strictly greater: ties go to the first in order, as in nginx.
            if best.is_none_or(|(_, top, ..)| *weight_now > top) {
                best = Some((i, *weight_now, *addr, backend));
            }
        }
        let (i, _, addr, backend) = best?;
        current[i] -= total;
        Some((addr, upstream::info(backend).cloned()))
    }
}

/// A backend's weight as the algorithm uses it: 0 counts as 1 (nginx has no zero weight; a
/// backend is taken out by disabling or removing it).
fn effective_weight(backend: &Backend) -> i64 {
    // Lossless: clamped to u32 range.
    backend.weight.clamp(1, MAX_WEIGHT) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "10.0.0.1:80";
    const B: &str = "10.0.0.2:80";
    const C: &str = "10.0.0.3:80";
    const D: &str = "10.0.0.4:80";

    fn members(list: &[(&str, usize)]) -> Arc<BTreeSet<Backend>> {
        Arc::new(
            list.iter()
                .map(|(a, w)| Backend::new_with_weight(a, *w).unwrap())
                .collect(),
        )
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Letter of a test address (A..D), for readable sequences.
    fn letter(a: SocketAddr) -> char {
        match a.to_string().as_str() {
            A => 'a',
            B => 'b',
            C => 'c',
            D => 'd',
            other => panic!("unexpected {other}"),
        }
    }

    fn sequence(
        rr: &SmoothRoundRobin,
        set: &Arc<BTreeSet<Backend>>,
        ready: impl Fn(&Backend) -> bool + Copy,
        tried: &[SocketAddr],
        n: usize,
    ) -> String {
        (0..n)
            .map(|_| letter(rr.pick(set, ready, tried).expect("a pick").0))
            .collect()
    }

    fn all(_: &Backend) -> bool {
        true
    }

    #[test]
    fn equal_weights_rotate_exactly() {
        let set = members(&[(A, 1), (B, 1), (C, 1)]);
        let rr = SmoothRoundRobin::default();
        assert_eq!(sequence(&rr, &set, all, &[], 9), "abcabcabc");
    }

    #[test]
    fn survivors_of_a_dead_backend_split_evenly() {
        let set = members(&[(A, 1), (B, 1), (C, 1)]);
        let not_b = |b: &Backend| b.addr.to_string() != B;
        let rr = SmoothRoundRobin::default();
        let seq = sequence(&rr, &set, not_b, &[], 300);
        assert_eq!(seq.matches('a').count(), 150);
        assert_eq!(seq.matches('c').count(), 150);
        assert!(seq.starts_with("acac"), "{seq}");

        // Dying mid-rotation: the survivors catch up at once and then alternate.
        let rr = SmoothRoundRobin::default();
        assert_eq!(sequence(&rr, &set, all, &[], 1), "a");
        let seq = sequence(&rr, &set, not_b, &[], 300);
        let (a, c) = (seq.matches('a').count(), seq.matches('c').count());
        assert!(a.abs_diff(c) <= 2, "{a}/{c}: {seq}");
    }

    #[test]
    fn weights_follow_nginx_sequence() {
        let set = members(&[(A, 5), (B, 1), (C, 1)]);
        let rr = SmoothRoundRobin::default();
        assert_eq!(sequence(&rr, &set, all, &[], 14), "aabacaaaabacaa");
    }

    #[test]
    fn tried_backends_are_skipped() {
        let set = members(&[(A, 1), (B, 1), (C, 1)]);
        let rr = SmoothRoundRobin::default();
        assert_eq!(sequence(&rr, &set, all, &[addr(A)], 4), "bcbc");
        assert!(rr.pick(&set, all, &[addr(A), addr(B), addr(C)]).is_none());
        let not_c = |b: &Backend| b.addr.to_string() != C;
        assert!(rr.pick(&set, not_c, &[addr(A), addr(B)]).is_none());
    }

    #[test]
    fn membership_change_resets_the_weights() {
        let rr = SmoothRoundRobin::default();
        let set = members(&[(A, 1), (B, 1), (C, 1)]);
        assert_eq!(sequence(&rr, &set, all, &[], 1), "a");
        // Carried-over weights would make b next; a new member set starts from zero.
        let grown = members(&[(A, 1), (B, 1), (C, 1), (D, 1)]);
        assert_eq!(sequence(&rr, &grown, all, &[], 5), "abcda");
        // A weight change is a membership change too (Backend equality includes the weight).
        let reweighted = members(&[(A, 1), (B, 2), (C, 1), (D, 1)]);
        assert_eq!(sequence(&rr, &reweighted, all, &[], 5), "bacdb");
    }
}
