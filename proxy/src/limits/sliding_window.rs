//! Exact per-client rate limiting: a sliding-window counter per client key.
//!
//! Each client has the count of its previous and current window and the start of the current
//! window (windows are anchored at the client's first request). A request is admitted when
//! `prev × (remaining fraction of the current window) + curr + 1 ≤ limit`, in integer
//! arithmetic. Admission and the increment happen under one shard lock, so concurrent requests
//! from one client are counted exactly. Rejected requests use no budget.
//!
//! The weighting of the previous window assumes its requests were spread evenly; a client that
//! sent its whole budget at the very end of one window can send a weighted share early in the
//! next. A burst is never admitted beyond the limit.
//!
//! Memory is bounded: at most `max_clients` entries, kept in per-shard LRU lists so the client
//! idle the longest is evicted first. An entry costs about 100 bytes as measured by
//! `loadtest/bench_ratelimit.sh` (key, 16-byte state, a heap-allocated LRU node, hash slot and
//! table slack); 100,000 clients take about 10 MB.

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use lru::LruCache;
use parking_lot::Mutex;

use crate::limits::client_ip::write_ip;

/// The identity a budget belongs to: an IPv4 address, an IPv6 /64 (one host owns a /64), or a
/// token such as an API key (kept as a 128-bit keyed hash, not as the secret itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    Ip(IpAddr),
    Token(u128),
}

impl ClientKey {
    pub fn from_ip(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => ClientKey::Ip(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey::Ip(IpAddr::V4(v4)),
                None => {
                    let masked = u128::from(v6) & !((1u128 << 64) - 1);
                    ClientKey::Ip(IpAddr::V6(masked.into()))
                }
            },
        }
    }

    /// A token's key (an API key, say): the first 128 bits of its SHA-256, the same in every
    /// replica (a shared store counts it once), and neither the secret nor a collision with
    /// another token can be read back or aimed at.
    pub fn from_token(value: &[u8]) -> Self {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(value);
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        ClientKey::Token(u128::from_be_bytes(first))
    }

    /// The key as a shared store names it: `ip:1.2.3.4`, `ip:2001:db8::/64`, `key:<32 hex>`.
    pub fn store_name(&self) -> String {
        let mut out = String::with_capacity(40);
        self.write_store_name(&mut out);
        out
    }

    /// Appends [`store_name`](Self::store_name) to `out`, without `format!` on the request
    /// path (IPv4 addresses by [`write_ip`], token hex digits directly).
    pub fn write_store_name(&self, out: &mut String) {
        match self {
            ClientKey::Ip(ip @ IpAddr::V4(_)) => {
                out.push_str("ip:");
                write_ip(out, *ip);
            }
            ClientKey::Ip(IpAddr::V6(v6)) => {
                use std::fmt::Write;
                let _ = write!(out, "ip:{v6}/64");
            }
            ClientKey::Token(t) => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("key:");
                for shift in (0..32).rev() {
                    out.push(HEX[((t >> (shift * 4)) & 0xf) as usize] as char);
                }
            }
        }
    }

    fn bits(&self) -> u128 {
        match self {
            ClientKey::Ip(IpAddr::V4(v4)) => u32::from(*v4) as u128,
            ClientKey::Ip(IpAddr::V6(v6)) => u128::from(*v6),
            ClientKey::Token(t) => *t,
        }
    }
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientKey::Ip(IpAddr::V4(v4)) => write!(f, "{v4}"),
            ClientKey::Ip(IpAddr::V6(v6)) => write!(f, "{v6}/64"),
            ClientKey::Token(t) => write!(f, "token:{:08x}", (t >> 96) as u32),
        }
    }
}

/// The outcome of one check, with what the rate-limit headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    /// Requests left in the window after this one.
    pub remaining: u32,
    /// Whole seconds until the current window ends (at least 1).
    pub reset_secs: u64,
    /// Whole seconds until a request would be admitted (rejections only; 0 otherwise). After a
    /// full burst this is the window plus one window/limit slice (60.6 s → 61 for 100/60 s):
    /// the previous window's weight must fall by one request first. It is never rounded down,
    /// so a client that waits as told is admitted.
    pub retry_after_secs: u64,
}

/// Per-client state: 16 bytes.
#[derive(Debug, Clone, Copy)]
struct Window {
    /// Start of the current window, in ms since the limiter's epoch.
    start_ms: u64,
    prev: u32,
    curr: u32,
}

/// Limit settings a limiter is built with; a reload that changes them builds a new limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub requests: u32,
    pub window: Duration,
    pub max_clients: NonZeroUsize,
}

/// Sharded map of exact sliding-window counters, owned by the gateway.
pub struct RateLimiter {
    limits: Limits,
    window_ms: u64,
    epoch: Instant,
    shard_bits: u32,
    /// Clients kept per shard; the shards' capacities add up to at most `max_clients`.
    per_shard: usize,
    /// Grown as clients arrive (nothing is allocated for `max_clients` up front).
    shards: Box<[Mutex<LruCache<ClientKey, Window>>]>,
}

impl RateLimiter {
    pub fn new(limits: Limits) -> Self {
        // One shard per ~1024 clients, up to 64: exact LRU for small caps, little contention for
        // large ones. The shard capacities add up to at most `max_clients`.
        let wanted = (limits.max_clients.get() / 1024).clamp(1, 64);
        let shard_count = wanted.next_power_of_two().min(64);
        let shard_count = if shard_count > wanted {
            shard_count / 2
        } else {
            shard_count
        }
        .max(1);
        let per_shard = (limits.max_clients.get() / shard_count).max(1);
        let shards = (0..shard_count)
            .map(|_| Mutex::new(LruCache::unbounded()))
            .collect();
        Self {
            limits,
            window_ms: limits.window.as_millis().max(1) as u64,
            epoch: Instant::now(),
            shard_bits: shard_count.trailing_zeros(),
            per_shard,
            shards,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Checks and, when admitted, counts one request from `key` at `now` (the caller's clock
    /// reading for the request: one fewer clock read per request).
    pub fn check(&self, key: ClientKey, now: Instant) -> Decision {
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        self.check_at(key, now_ms)
    }

    /// Gives back the unit `check` just counted for `key`, for a request refused afterwards for
    /// another reason (the concurrency cap): refused requests use no budget.
    pub fn refund(&self, key: ClientKey) {
        let mut map = self.shard(&key).lock();
        if let Some(w) = map.peek_mut(&key) {
            w.curr = w.curr.saturating_sub(1);
        }
    }

    /// Clients currently tracked (each costs about 100 bytes).
    pub fn tracked_clients(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    fn shard(&self, key: &ClientKey) -> &Mutex<LruCache<ClientKey, Window>> {
        if self.shard_bits == 0 {
            return &self.shards[0];
        }
        &self.shards[shard_index(key.bits(), self.shard_bits)]
    }

    /// [`check`](Self::check) at `now_ms` after the limiter's start: for tests that replay the
    /// same requests through another store.
    #[doc(hidden)]
    pub fn check_at_ms(&self, key: ClientKey, now_ms: u64) -> Decision {
        self.check_at(key, now_ms)
    }

    /// The check with time injected, so window arithmetic is tested without sleeping.
    fn check_at(&self, key: ClientKey, now_ms: u64) -> Decision {
        let shard = self.shard(&key);
        let mut map = shard.lock();
        let fresh = Window {
            start_ms: now_ms,
            prev: 0,
            curr: 0,
        };
        if let Some(window) = map.get_mut(&key) {
            return decide(window, now_ms, self.limits.requests, self.window_ms);
        }
        if map.len() >= self.per_shard {
            map.pop_lru(); // the client idle the longest
        }
        let window = map.get_or_insert_mut(key, || fresh);
        decide(window, now_ms, self.limits.requests, self.window_ms)
    }
}

/// Fibonacci hashing: the top `bits` bits of the key times 2^64/φ spread neighbouring addresses
/// over all shards. SipHash did the same at ~200 instructions per request, and with fixed keys
/// it was no harder to aim at one shard.
fn shard_index(key: u128, bits: u32) -> usize {
    let folded = (key as u64) ^ ((key >> 64) as u64);
    (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as usize
}

/// Time into the current window. Requests take their clock reading when they start, so one
/// that started earlier can reach the limiter after another has moved the window start past its
/// reading: it is taken as arriving at the window start (the decision is made no earlier).
fn elapsed_in(w: &Window, now_ms: u64, window_ms: u64) -> u64 {
    now_ms.saturating_sub(w.start_ms).min(window_ms)
}

/// Advances `w` to `now_ms`, then admits and counts one request if the budget allows.
fn decide(w: &mut Window, now_ms: u64, limit: u32, window_ms: u64) -> Decision {
    roll(w, now_ms, window_ms);
    let left_of_window = window_ms - elapsed_in(w, now_ms, window_ms);
    // Weighted count in units of 1/window_ms requests, exact in integers.
    let weighted =
        w.prev as u128 * left_of_window as u128 + (w.curr as u128 + 1) * window_ms as u128;
    let allowed = weighted <= limit as u128 * window_ms as u128;
    if allowed {
        w.curr += 1;
    }
    describe(
        WindowState {
            prev: w.prev,
            curr: w.curr,
            elapsed_ms: elapsed_in(w, now_ms, window_ms),
        },
        allowed,
        limit,
        window_ms,
    )
}

/// A client's window after a decision, as a store reports it: the counts and how far into the
/// current window the decision was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowState {
    pub prev: u32,
    pub curr: u32,
    pub elapsed_ms: u64,
}

/// The headers' numbers for a decision: one function for every store, so a shared store gives
/// exactly the numbers this process would.
pub fn describe(state: WindowState, allowed: bool, limit: u32, window_ms: u64) -> Decision {
    let w = Window {
        start_ms: 0,
        prev: state.prev,
        curr: state.curr,
    };
    let now_ms = state.elapsed_ms.min(window_ms);
    let left_of_window = window_ms - now_ms;
    let weighted = w.prev as u128 * left_of_window as u128 + w.curr as u128 * window_ms as u128;
    let used = weighted.div_ceil(window_ms as u128);
    let remaining = (limit as u128).saturating_sub(used) as u32;
    let reset_secs = left_of_window.div_ceil(1000).max(1);
    let retry_after_secs = if allowed {
        0
    } else {
        retry_after_ms(&w, now_ms, limit, window_ms)
            .div_ceil(1000)
            .clamp(1, (2 * window_ms).div_ceil(1000))
    };
    Decision {
        allowed,
        limit,
        remaining,
        reset_secs,
        retry_after_secs,
    }
}

/// Moves the window forward so that `now_ms` falls in the current one.
fn roll(w: &mut Window, now_ms: u64, window_ms: u64) {
    let elapsed = now_ms.saturating_sub(w.start_ms);
    if elapsed < window_ms {
        return;
    }
    let windows_passed = elapsed / window_ms;
    w.prev = if windows_passed == 1 { w.curr } else { 0 };
    w.curr = 0;
    w.start_ms += windows_passed * window_ms;
}

/// Milliseconds from `now_ms` until one more request fits, for a client that was just refused.
/// A reading before the window start counts from the window start (see [`elapsed_in`]): never
/// more than the wait from the moment of the decision, and at least 1 ms.
fn retry_after_ms(w: &Window, now_ms: u64, limit: u32, window_ms: u64) -> u64 {
    let elapsed = elapsed_in(w, now_ms, window_ms);
    // Within the current window: need prev × (window − e) ≤ (limit − curr − 1) × window.
    if w.curr < limit && w.prev > 0 {
        let room = (limit - w.curr - 1) as u128 * window_ms as u128;
        let max_left = room / w.prev as u128; // largest (window − e) that fits
        let e_needed = window_ms - (max_left as u64).min(window_ms);
        if e_needed < window_ms {
            return e_needed.saturating_sub(elapsed).max(1);
        }
    }
    // In the next window, prev becomes curr: need curr × (window − e') ≤ (limit − 1) × window.
    let to_next = window_ms - elapsed;
    if w.curr == 0 {
        return to_next.max(1);
    }
    let room = limit.saturating_sub(1) as u128 * window_ms as u128;
    let max_left = (room / w.curr as u128) as u64;
    let e_needed = window_ms - max_left.min(window_ms);
    (to_next + e_needed).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_names_are_what_format_would_write() {
        for ip in ["1.2.3.4", "255.0.10.199", "0.0.0.0"] {
            let v4: std::net::Ipv4Addr = ip.parse().unwrap();
            assert_eq!(
                ClientKey::Ip(IpAddr::V4(v4)).store_name(),
                format!("ip:{v4}")
            );
        }
        let v6: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            ClientKey::Ip(IpAddr::V6(v6)).store_name(),
            format!("ip:{v6}/64")
        );
        for t in [
            0u128,
            1,
            u128::MAX,
            0x0123_4567_89ab_cdef_0011_2233_4455_6677,
        ] {
            assert_eq!(ClientKey::Token(t).store_name(), format!("key:{t:032x}"));
        }
    }

    #[test]
    fn neighbouring_addresses_spread_over_all_shards() {
        for (bits, base) in [
            (6u32, 0x0a00_0000u128),
            (3, 0x7f00_0001),
            (6, 0x2001_0db8u128 << 96),
        ] {
            let shards = 1usize << bits;
            let mut counts = vec![0usize; shards];
            let n = 64 * shards;
            for i in 0..n as u128 {
                // IPv6 keys are /64 prefixes: neighbours differ above bit 64.
                let key = if base >> 64 != 0 {
                    base + (i << 64)
                } else {
                    base + i
                };
                counts[shard_index(key, bits)] += 1;
            }
            let mean = n / shards;
            for (shard, c) in counts.iter().enumerate() {
                assert!(
                    *c >= mean / 2 && *c <= mean * 3 / 2,
                    "bits {bits}: shard {shard} got {c}, mean {mean}: {counts:?}"
                );
            }
        }
    }

    const W: u64 = 60_000;

    fn limiter(requests: u32, max_clients: usize) -> RateLimiter {
        RateLimiter::new(Limits {
            requests,
            window: Duration::from_millis(W),
            max_clients: NonZeroUsize::new(max_clients).unwrap(),
        })
    }

    fn key(last: u8) -> ClientKey {
        ClientKey::from_ip(IpAddr::from([127, 0, 0, last]))
    }

    #[test]
    fn exactly_limit_admitted_in_a_burst() {
        let l = limiter(100, 10);
        let admitted = (0..150).filter(|_| l.check_at(key(1), 5).allowed).count();
        assert_eq!(admitted, 100);
    }

    #[test]
    fn remaining_counts_down() {
        let l = limiter(100, 10);
        let r: Vec<u32> = (0..3).map(|_| l.check_at(key(1), 0).remaining).collect();
        assert_eq!(r, vec![99, 98, 97]);
    }

    #[test]
    fn burst_across_window_edge_gets_at_most_the_limit() {
        let l = limiter(100, 10);
        // First request anchors the window at 0; a burst just before and after the edge.
        assert!(l.check_at(key(1), 0).allowed);
        let before = (0..99)
            .filter(|_| l.check_at(key(1), W - 1).allowed)
            .count();
        let after = (0..150)
            .filter(|_| l.check_at(key(1), W + 1).allowed)
            .count();
        assert_eq!(before, 99);
        assert_eq!(after, 0, "the previous window still weighs ~100");
    }

    #[test]
    fn budget_slides_back() {
        let l = limiter(100, 10);
        for _ in 0..100 {
            assert!(l.check_at(key(1), 0).allowed);
        }
        assert!(!l.check_at(key(1), 1000).allowed);
        // Half-way through the next window half of the old count has slid out.
        let admitted = (0..100)
            .filter(|_| l.check_at(key(1), W + W / 2).allowed)
            .count();
        assert_eq!(admitted, 50);
        // Two windows later everything is forgotten.
        let admitted = (0..150)
            .filter(|_| l.check_at(key(1), 3 * W).allowed)
            .count();
        assert_eq!(admitted, 100);
    }

    #[test]
    fn rejected_requests_use_no_budget() {
        let l = limiter(10, 10);
        for _ in 0..10 {
            l.check_at(key(1), 0);
        }
        for _ in 0..1000 {
            assert!(!l.check_at(key(1), 10).allowed);
        }
        assert!(l.check_at(key(1), 2 * W).allowed);
    }

    #[test]
    fn retry_after_tells_the_truth() {
        for (limit, sent_at) in [(100u32, 0u64), (100, 30_000), (5, 59_999), (1, 12_345)] {
            let l = limiter(limit, 10);
            for _ in 0..limit {
                assert!(l.check_at(key(1), sent_at).allowed);
            }
            let refused = l.check_at(key(1), sent_at + 10);
            assert!(!refused.allowed);
            let ra_ms = refused.retry_after_secs * 1000;
            assert!(refused.retry_after_secs >= 1 && refused.retry_after_secs <= 120);
            // At the announced time one request is admitted ...
            let l2 = limiter(limit, 10);
            for _ in 0..limit {
                l2.check_at(key(1), sent_at);
            }
            assert!(
                l2.check_at(key(1), sent_at + 10 + ra_ms).allowed,
                "limit {limit}"
            );
            // ... and clearly before it, none is.
            if ra_ms > 1500 {
                let l3 = limiter(limit, 10);
                for _ in 0..limit {
                    l3.check_at(key(1), sent_at);
                }
                assert!(!l3.check_at(key(1), sent_at + 10 + ra_ms - 1500).allowed);
            }
        }
    }

    /// Request A starts at t1, B at t2 > t1, but B reaches the limiter first and anchors the
    /// window at t2; A then arrives with a reading before the window start.
    #[test]
    fn reading_before_the_window_start_is_decided_as_at_the_start() {
        let (t1, t2) = (9_000, 10_000);
        for limit in [1u32, 5, 100] {
            let l = limiter(limit, 10);
            for _ in 0..limit {
                assert!(l.check_at(key(1), t2).allowed);
            }
            let late = l.check_at(key(1), t1);
            assert!(!late.allowed, "limit {limit}");
            assert_eq!(late.remaining, 0);
            // The same answer as a request read at the window start: a full burst waits the
            // window plus one window/limit slice, rounded up to whole seconds.
            let at_start = l.check_at(key(1), t2);
            assert_eq!(late, at_start, "limit {limit}");
            let bound = (W + W.div_ceil(limit as u64)).div_ceil(1000);
            assert!(
                (1..=bound).contains(&late.retry_after_secs),
                "limit {limit}: Retry-After {} not in 1..={bound}",
                late.retry_after_secs
            );
            // Waiting as told from the window start is enough.
            let after_wait = t2 + late.retry_after_secs * 1000;
            assert!(l.check_at(key(1), after_wait).allowed, "limit {limit}");
        }
    }

    #[test]
    fn interleaved_readings_admit_exactly_the_limit() {
        let l = limiter(10, 10);
        let admitted = (0..30)
            .filter(|i| {
                let now = if i % 2 == 0 { 5_000 } else { 4_700 };
                l.check_at(key(1), now).allowed
            })
            .count();
        assert_eq!(admitted, 10);
        // Across a window edge: B rolls the window forward, A still reads the old window.
        let l = limiter(10, 10);
        for _ in 0..10 {
            assert!(l.check_at(key(1), 0).allowed);
        }
        assert!(
            !l.check_at(key(1), W + 100).allowed,
            "the old window weighs ~10"
        );
        let late = l.check_at(key(1), W - 50);
        assert!(!late.allowed);
        assert!(late.retry_after_secs >= 1);
    }

    #[test]
    fn retry_after_with_a_reading_before_the_window_start() {
        let start = 10_000;
        // A full burst and nothing before: the window, then one window/limit slice.
        let full = Window {
            start_ms: start,
            prev: 0,
            curr: 100,
        };
        assert_eq!(retry_after_ms(&full, start, 100, W), 60_600);
        assert_eq!(retry_after_ms(&full, start - 1_000, 100, W), 60_600);
        assert_eq!(retry_after_ms(&full, 0, 100, W), 60_600);
        // Room left in this window once the previous one's weight slides out.
        let weighted = Window {
            start_ms: start,
            prev: 50,
            curr: 60,
        };
        assert_eq!(retry_after_ms(&weighted, start, 100, W), 13_200);
        assert_eq!(retry_after_ms(&weighted, start - 1, 100, W), 13_200);
        // Never 0 for a refused request, even at the very end of the window.
        let at_end = Window {
            start_ms: start,
            prev: 0,
            curr: 0,
        };
        assert_eq!(retry_after_ms(&at_end, start + W, 100, W), 1);
    }

    /// The same through `check` with real `Instant`s, as the gateway calls it.
    #[test]
    fn check_with_interleaved_instants() {
        let l = limiter(3, 10);
        let t1 = Instant::now() + Duration::from_secs(1);
        let t2 = t1 + Duration::from_millis(500);
        for _ in 0..3 {
            assert!(l.check(key(1), t2).allowed);
        }
        let late = l.check(key(1), t1);
        assert!(!late.allowed);
        assert_eq!(late.retry_after_secs, (W + W.div_ceil(3)).div_ceil(1000));
        // An instant before the limiter existed (a request in flight across a reload).
        let l = limiter(3, 10);
        let early = l.check(key(1), Instant::now() - Duration::from_millis(10));
        assert!(early.allowed);
    }

    #[test]
    fn refund_gives_the_unit_back() {
        let l = limiter(2, 10);
        assert!(l.check_at(key(1), 0).allowed);
        assert!(l.check_at(key(1), 0).allowed);
        l.refund(key(1));
        assert!(l.check_at(key(1), 0).allowed);
        assert!(!l.check_at(key(1), 0).allowed);
    }

    #[test]
    fn clients_have_independent_budgets() {
        let l = limiter(2, 10);
        assert!(l.check_at(key(1), 0).allowed);
        assert!(l.check_at(key(1), 0).allowed);
        assert!(!l.check_at(key(1), 0).allowed);
        assert!(l.check_at(key(2), 0).allowed);
    }

    #[test]
    fn max_clients_evicts_the_longest_idle() {
        let l = limiter(1, 2);
        assert!(l.check_at(key(1), 0).allowed);
        assert!(l.check_at(key(2), 1).allowed);
        assert!(l.check_at(key(3), 2).allowed); // evicts key(1), idle the longest
        assert_eq!(l.tracked_clients(), 2);
        assert!(!l.check_at(key(2), 3).allowed, "key(2) was kept");
        assert!(l.check_at(key(1), 4).allowed, "key(1) was forgotten");
    }

    #[test]
    fn memory_is_bounded_with_many_clients() {
        let l = limiter(100, 100_000);
        for i in 0..200_000u32 {
            l.check_at(ClientKey::from_ip(IpAddr::from(i.to_be_bytes())), 0);
        }
        assert!(l.tracked_clients() <= 100_000);
        assert!(l.tracked_clients() > 90_000);
    }

    #[test]
    fn ipv6_keyed_by_64() {
        let a = ClientKey::from_ip("2001:db8:1:2::1".parse().unwrap());
        let b = ClientKey::from_ip("2001:db8:1:2:ffff::9".parse().unwrap());
        let c = ClientKey::from_ip("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        let mapped = ClientKey::from_ip("::ffff:10.1.2.3".parse().unwrap());
        assert_eq!(mapped.to_string(), "10.1.2.3");
    }
}
