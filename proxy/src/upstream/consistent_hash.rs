//! Consistent hashing on Pingora's Ketama ring: a key keeps its backend while that backend is
//! healthy; when one leaves, only its keys move (to the next backends on the ring).
//!
//! The ring is built over every member, healthy or not, so a backend going down moves only its
//! own keys and coming back takes exactly them back. It is rebuilt only when membership changes.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use pingora::lb::selection::consistent::KetamaHashing;
use pingora::lb::selection::{BackendIter, BackendSelection};
use pingora::lb::Backend;

use crate::upstream::info;
use crate::upstream::round_robin::Pick;

/// Ring positions walked looking for a usable backend before falling back to the first usable
/// member (every backend has 160 points per unit of weight, so a short walk almost always finds
/// one; the bound keeps a mostly-down group from a long walk).
const MAX_STEPS: usize = 512;

/// A ring and the membership it was built for.
type BuiltRing = (Arc<BTreeSet<Backend>>, Arc<KetamaHashing>);

/// The ring of one group, rebuilt when its membership changes.
#[derive(Default)]
pub struct ConsistentHash {
    ring: Mutex<Option<BuiltRing>>,
}

impl ConsistentHash {
    fn ring_for(&self, members: &Arc<BTreeSet<Backend>>) -> Arc<KetamaHashing> {
        let mut ring = self.ring.lock();
        match &*ring {
            Some((built_for, r)) if Arc::ptr_eq(built_for, members) => r.clone(),
            _ => {
                let r = Arc::new(KetamaHashing::build(members));
                *ring = Some((members.clone(), r.clone()));
                r
            }
        }
    }

    /// The backend `key` maps to, or the next one on the ring that `ready` accepts and that is
    /// not in `tried`.
    pub fn pick(
        &self,
        members: &Arc<BTreeSet<Backend>>,
        ready: impl Fn(&Backend) -> bool,
        tried: &[SocketAddr],
        key: &[u8],
    ) -> Option<Pick> {
        let usable = |b: &Backend| b.addr.as_inet().is_some_and(|a| !tried.contains(a)) && ready(b);
        let ring = self.ring_for(members);
        let mut walk = ring.iter(key);
        for _ in 0..MAX_STEPS {
            match walk.next() {
                Some(b) if usable(b) => return pick_of(b),
                Some(_) => continue,
                None => break,
            }
        }
        members.iter().find(|b| usable(b)).and_then(pick_of)
    }
}

fn pick_of(b: &Backend) -> Option<Pick> {
    Some((*b.addr.as_inet()?, info(b).cloned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Arc<BTreeSet<Backend>> {
        Arc::new(
            (1..=n)
                .map(|i| Backend::new(&format!("10.0.0.{i}:80")).unwrap())
                .collect(),
        )
    }

    fn map(h: &ConsistentHash, set: &Arc<BTreeSet<Backend>>, keys: usize) -> Vec<SocketAddr> {
        (0..keys)
            .map(|k| {
                h.pick(set, |_| true, &[], format!("client-{k}").as_bytes())
                    .unwrap()
                    .0
            })
            .collect()
    }

    #[test]
    fn a_key_stays_on_its_backend() {
        let set = members(3);
        let h = ConsistentHash::default();
        let first = map(&h, &set, 1000);
        assert_eq!(first, map(&h, &set, 1000));
        let distinct: BTreeSet<_> = first.iter().collect();
        assert_eq!(distinct.len(), 3);
    }

    #[test]
    fn removing_one_of_n_moves_only_its_keys() {
        let (n, keys) = (4, 4000);
        let h = ConsistentHash::default();
        let before = map(&h, &members(n), keys);
        let after = map(&h, &members(n - 1), keys);
        let removed: SocketAddr = format!("10.0.0.{n}:80").parse().unwrap();
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        // Only the removed backend's keys move, and it held about 1/n of them.
        assert!(before
            .iter()
            .zip(&after)
            .all(|(b, a)| b == a || *b == removed));
        assert!(
            moved <= keys / n + keys / 20,
            "{moved} of {keys} keys moved"
        );
    }

    #[test]
    fn an_unhealthy_backend_hands_over_only_its_keys() {
        let set = members(3);
        let h = ConsistentHash::default();
        let before = map(&h, &set, 1000);
        let down: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let ready = |b: &Backend| b.addr.as_inet() != Some(&down);
        for (k, was) in before.iter().enumerate() {
            let now = h
                .pick(&set, ready, &[], format!("client-{k}").as_bytes())
                .unwrap()
                .0;
            assert_ne!(now, down);
            if *was != down {
                assert_eq!(now, *was);
            }
        }
        assert!(h.pick(&set, |_| false, &[], b"x").is_none());
    }
}
