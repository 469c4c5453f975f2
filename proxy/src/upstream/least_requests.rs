//! Least requests by the power of two random choices (Envoy's `LEAST_REQUEST`): two backends
//! drawn at random among the candidates, the one with fewer attempts in flight (relative to its
//! weight) wins. Unlike scanning for the global minimum, concurrent picks do not all pile onto
//! the same idle backend, and the cost stays constant in the number of backends.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pingora::lb::Backend;

use crate::upstream::round_robin::Pick;
use crate::upstream::{info, BackendInfo};

/// The random state of one group's picks (lock-free: splitmix64 over an atomic counter).
pub struct LeastRequests {
    seed: AtomicU64,
}

impl Default for LeastRequests {
    fn default() -> Self {
        // Any odd start will do; the sequence only has to spread picks, not be unpredictable.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9E37_79B9, |d| d.as_nanos() as u64);
        Self {
            seed: AtomicU64::new(start | 1),
        }
    }
}

impl LeastRequests {
    /// A uniformly random index below `n` (`n` > 0).
    fn below(&self, n: usize) -> usize {
        let mut z = self
            .seed
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((u128::from(z) * n as u128) >> 64) as usize
    }

    /// The better of two random candidates among `members` that `ready` accepts and that are
    /// not in `tried`. Allocates nothing.
    pub fn pick(
        &self,
        members: &BTreeSet<Backend>,
        ready: impl Fn(&Backend) -> bool,
        tried: &[SocketAddr],
    ) -> Option<Pick> {
        let usable =
            |b: &&Backend| b.addr.as_inet().is_some_and(|a| !tried.contains(a)) && ready(b);
        let n = members.iter().filter(usable).count();
        if n == 0 {
            return None;
        }
        let first = self.below(n);
        let chosen = if n == 1 {
            first
        } else {
            // A second, distinct draw.
            let second = self.below(n - 1);
            let second = if second >= first { second + 1 } else { second };
            let nth = |i| members.iter().filter(usable).nth(i);
            match (nth(first), nth(second)) {
                (Some(a), Some(b)) if load_below(b, a) => second,
                _ => first,
            }
        };
        let backend = members.iter().filter(usable).nth(chosen)?;
        let addr = *backend.addr.as_inet()?;
        Some((addr, info(backend).cloned()))
    }
}

/// Whether `a` is less loaded than `b`: in-flight over weight, compared without division.
fn load_below(a: &Backend, b: &Backend) -> bool {
    let load =
        |x: &Backend| info(x).map_or(0, |i: &Arc<BackendInfo>| i.inflight.load(Ordering::Relaxed));
    let weight = |x: &Backend| x.weight.max(1) as u128;
    (load(a) as u128) * weight(b) < (load(b) as u128) * weight(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn member(addr: &str, inflight: usize) -> Backend {
        let mut b = Backend::new(addr).unwrap();
        b.ext.insert(Arc::new(BackendInfo {
            label: Arc::from(addr),
            header_value: http::HeaderValue::from_static("x"),
            metrics: crate::observe::metrics::Metrics::new()
                .unwrap()
                .backend("g", addr),
            inflight: AtomicUsize::new(inflight),
            outlier: Default::default(),
            host: Arc::from("10.0.0.1"),
        }));
        b
    }

    #[test]
    fn the_less_loaded_of_two_wins() {
        let set: BTreeSet<Backend> = [member("10.0.0.1:80", 10), member("10.0.0.2:80", 0)]
            .into_iter()
            .collect();
        let lr = LeastRequests::default();
        for _ in 0..100 {
            let (addr, _) = lr.pick(&set, |_| true, &[]).unwrap();
            assert_eq!(addr.to_string(), "10.0.0.2:80");
        }
    }

    #[test]
    fn idle_backends_share_evenly_and_tried_ones_are_skipped() {
        let set: BTreeSet<Backend> = (1..=4)
            .map(|i| member(&format!("10.0.0.{i}:80"), 0))
            .collect();
        let lr = LeastRequests::default();
        let mut counts = std::collections::HashMap::new();
        for _ in 0..4000 {
            let (addr, _) = lr.pick(&set, |_| true, &[]).unwrap();
            *counts.entry(addr).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 4);
        assert!(counts.values().all(|&c| c > 800), "{counts:?}");
        let tried: Vec<SocketAddr> = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let (addr, _) = lr.pick(&set, |_| true, &tried).unwrap();
        assert_eq!(addr.to_string(), "10.0.0.4:80");
        assert!(lr.pick(&set, |_| false, &[]).is_none());
    }
}
