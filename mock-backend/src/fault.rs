//! Fault injection: a share of traffic answered with a chosen status after a chosen delay, or
//! (with `reset`) not answered at all, its connection reset.
//!
//! The fault in force is set by `PUT /_mock/fault` (or the `--fault-*` flags), read by
//! `GET /_mock/fault` and cleared by `DELETE /_mock/fault`; see `routes` for which requests it
//! applies to.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use serde::{Deserialize, Serialize};

use crate::routes::MAX_DELAY_MS;

pub const DEFAULT_STATUS: u16 = 500;
pub const DEFAULT_RATE: f64 = 1.0;
pub const DEFAULT_DELAY_MS: u64 = 0;
pub const DEFAULT_RESET: bool = false;

/// A validated fault: `rate` of the faultable requests answer `status` after `delay_ms`, or with
/// `reset` get no answer at all: their connection is reset after `delay_ms` (`status` is then
/// unused, but kept so the fault still serializes as its `PUT` body). With a `seed`, which
/// requests are hit is a fixed sequence from the moment the fault is set, so a test or a demo
/// can replay the same pattern.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Fault {
    pub status: u16,
    pub rate: f64,
    pub delay_ms: u64,
    pub reset: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// The body of `PUT /_mock/fault`: every field optional, nothing else allowed (a misspelt field
/// is an error, not a silently ignored setting).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultBody {
    status: Option<u16>,
    rate: Option<f64>,
    delay_ms: Option<u64>,
    reset: Option<bool>,
    seed: Option<u64>,
}

impl Fault {
    /// Validates one fault: status 100..=599, rate within 0.0..=1.0, delay up to `MAX_DELAY_MS`.
    /// The status is checked even with `reset`, so a fault read back is always a valid `PUT`.
    pub fn new(status: u16, rate: f64, delay_ms: u64, reset: bool) -> Result<Self, String> {
        if !(100..=599).contains(&status) {
            return Err(format!("status must be within 100..=599, got {status}"));
        }
        if !(0.0..=1.0).contains(&rate) {
            return Err(format!("rate must be within 0.0..=1.0, got {rate}"));
        }
        if delay_ms > MAX_DELAY_MS {
            return Err(format!(
                "delay_ms must be at most {MAX_DELAY_MS}, got {delay_ms}"
            ));
        }
        Ok(Self {
            status,
            rate,
            delay_ms,
            reset,
            seed: None,
        })
    }

    /// The same fault with its draws replayed from `seed` (or random again with `None`).
    pub fn with_seed(self, seed: Option<u64>) -> Self {
        Self { seed, ..self }
    }

    /// From optional parts, the missing ones defaulted (status 500, rate 1.0, no delay, no
    /// reset).
    pub fn with_defaults(
        status: Option<u16>,
        rate: Option<f64>,
        delay_ms: Option<u64>,
        reset: Option<bool>,
    ) -> Result<Self, String> {
        Self::new(
            status.unwrap_or(DEFAULT_STATUS),
            rate.unwrap_or(DEFAULT_RATE),
            delay_ms.unwrap_or(DEFAULT_DELAY_MS),
            reset.unwrap_or(DEFAULT_RESET),
        )
    }

    /// Parses and validates a `PUT /_mock/fault` body. An empty body counts as `{}`.
    pub fn from_json(body: &[u8]) -> Result<Self, String> {
        let body: FaultBody = if body.iter().all(u8::is_ascii_whitespace) {
            FaultBody {
                status: None,
                rate: None,
                delay_ms: None,
                reset: None,
                seed: None,
            }
        } else {
            serde_json::from_slice(body).map_err(|e| {
                format!(
                    "body must be a JSON object with optional \"status\", \"rate\", \"delay_ms\", \"reset\", \"seed\": {e}"
                )
            })?
        };
        Ok(
            Self::with_defaults(body.status, body.rate, body.delay_ms, body.reset)?
                .with_seed(body.seed),
        )
    }

    pub fn to_json(self) -> serde_json::Value {
        // Serializing three numbers and a bool cannot fail.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// Parses `--fault-rate`: a number within 0.0..=1.0.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("rate must be within 0.0..=1.0, got {s}"))
    }
}

/// The fault in force (if any), swapped atomically, and the random source that picks which
/// requests it hits.
pub struct FaultSwitch {
    current: ArcSwapOption<Fault>,
    rng: Rng,
}

impl FaultSwitch {
    pub fn new(initial: Option<Fault>) -> Self {
        Self {
            current: ArcSwapOption::new(initial.map(Arc::new)),
            rng: match initial.and_then(|f| f.seed) {
                Some(seed) => Rng::new(seed),
                None => Rng::from_entropy(),
            },
        }
    }

    pub fn get(&self) -> Option<Fault> {
        self.current.load().as_deref().copied()
    }

    /// Puts `fault` in force; a seeded one restarts the draws from its seed first.
    pub fn set(&self, fault: Option<Fault>) {
        if let Some(seed) = fault.and_then(|f| f.seed) {
            self.rng.reseed(seed);
        }
        self.current.store(fault.map(Arc::new));
    }

    /// One draw: the fault if this request is to get it (probability `rate`), else `None`.
    pub fn draw(&self) -> Option<Fault> {
        let current = self.current.load();
        match current.as_deref() {
            Some(fault) if self.rng.chance(fault.rate) => Some(*fault),
            _ => None,
        }
    }
}

/// A lock-free SplitMix64 generator: one atomic add per number, good enough to pick requests.
pub struct Rng(AtomicU64);

impl Rng {
    const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

    pub fn new(seed: u64) -> Self {
        Self(AtomicU64::new(seed))
    }

    /// Seeded from the per-process random keys std uses for `HashMap`.
    pub fn from_entropy() -> Self {
        Self::new(RandomState::new().hash_one(0x6d6f_636b_u64))
    }

    pub fn reseed(&self, seed: u64) {
        self.0.store(seed, Ordering::Relaxed);
    }

    pub fn next_u64(&self) -> u64 {
        let mut z = self
            .0
            .fetch_add(Self::GAMMA, Ordering::Relaxed)
            .wrapping_add(Self::GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// True with probability `p`: always for 1.0, never for 0.0.
    pub fn chance(&self, p: f64) -> bool {
        if p >= 1.0 {
            return true;
        }
        if p <= 0.0 || p.is_nan() {
            return false;
        }
        // 53 random bits: a uniform draw from [0, 1).
        let unit = (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        unit < p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_optional() {
        let all_defaults = Fault {
            status: 500,
            rate: 1.0,
            delay_ms: 0,
            reset: false,
            seed: None,
        };
        assert_eq!(Fault::from_json(b"{}"), Ok(all_defaults));
        assert_eq!(Fault::from_json(b""), Ok(all_defaults));
        assert_eq!(Fault::from_json(b" \n"), Ok(all_defaults));
        assert_eq!(
            Fault::from_json(br#"{"status": null, "rate": null}"#),
            Ok(all_defaults)
        );
        assert_eq!(
            Fault::from_json(br#"{"status": 200, "delay_ms": 300}"#),
            Ok(Fault {
                status: 200,
                rate: 1.0,
                delay_ms: 300,
                reset: false,
                seed: None,
            })
        );
        assert_eq!(
            Fault::from_json(br#"{"rate": 0}"#),
            Ok(Fault {
                status: 500,
                rate: 0.0,
                delay_ms: 0,
                reset: false,
                seed: None,
            })
        );
    }

    #[test]
    fn bad_bodies_and_values_are_refused() {
        for body in [
            "{",
            "null",
            "[]",
            "500",
            r#"{"status": "500"}"#,
            r#"{"status": 99}"#,
            r#"{"status": 600}"#,
            r#"{"status": 70000}"#,
            r#"{"status": -1}"#,
            r#"{"status": 500.5}"#,
            r#"{"rate": 1.01}"#,
            r#"{"rate": -0.1}"#,
            r#"{"rate": "half"}"#,
            r#"{"delay_ms": 600001}"#,
            r#"{"delay_ms": -5}"#,
            r#"{"delay": 100}"#,
            r#"{"reset": "true"}"#,
            r#"{"reset": 1}"#,
            r#"{"reset": "yes"}"#,
            r#"{"reset": true, "status": 600}"#,
            r#"{"seed": -1}"#,
            r#"{"seed": 1.5}"#,
            r#"{"seed": "6"}"#,
        ] {
            assert!(
                Fault::from_json(body.as_bytes()).is_err(),
                "{body} was accepted"
            );
        }
        assert!(Fault::from_json(br#"{"status": 100, "rate": 1, "delay_ms": 600000}"#).is_ok());
        assert!(Fault::from_json(br#"{"status": 599}"#).is_ok());
    }

    #[test]
    fn fault_serializes_as_its_put_body() {
        let fault = Fault::new(503, 0.25, 40, false).unwrap();
        assert_eq!(
            fault.to_json(),
            serde_json::json!({"status": 503, "rate": 0.25, "delay_ms": 40, "reset": false})
        );
        assert_eq!(
            Fault::from_json(fault.to_json().to_string().as_bytes()),
            Ok(fault)
        );
        let reset = Fault::new(500, 0.5, 0, true).unwrap();
        assert_eq!(
            reset.to_json(),
            serde_json::json!({"status": 500, "rate": 0.5, "delay_ms": 0, "reset": true})
        );
        assert_eq!(
            Fault::from_json(reset.to_json().to_string().as_bytes()),
            Ok(reset)
        );
    }

    #[test]
    fn reset_is_an_optional_bool() {
        let reset = |r| Fault::new(500, 1.0, 0, r).unwrap();
        assert_eq!(Fault::from_json(br#"{"reset": true}"#), Ok(reset(true)));
        assert_eq!(Fault::from_json(br#"{"reset": false}"#), Ok(reset(false)));
        assert_eq!(Fault::from_json(br#"{"reset": null}"#), Ok(reset(false)));
        assert_eq!(Fault::from_json(br#"{"status": 500}"#), Ok(reset(false)));
        assert_eq!(
            Fault::from_json(br#"{"reset": true, "status": 503, "rate": 0.5, "delay_ms": 7}"#),
            Ok(Fault::new(503, 0.5, 7, true).unwrap()),
            "the other fields are kept (and validated) alongside reset"
        );
    }

    #[test]
    fn rate_flag_parses_within_bounds() {
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        assert_eq!(parse_rate("1"), Ok(1.0));
        assert_eq!(parse_rate("0"), Ok(0.0));
        assert!(parse_rate("1.5").is_err());
        assert!(parse_rate("-0.5").is_err());
        assert!(parse_rate("NaN").is_err());
        assert!(parse_rate("half").is_err());
    }

    #[test]
    fn chance_extremes_are_exact_and_the_middle_is_close() {
        let rng = Rng::new(42);
        assert!((0..10_000).all(|_| rng.chance(1.0)));
        assert!((0..10_000).all(|_| !rng.chance(0.0)));
        let hits = (0..100_000).filter(|_| rng.chance(0.3)).count();
        assert!((29_000..=31_000).contains(&hits), "{hits} hits of 100000");
    }

    #[test]
    fn switch_draws_only_while_a_fault_is_set() {
        let switch = FaultSwitch::new(None);
        assert_eq!(switch.get(), None);
        assert_eq!(switch.draw(), None);
        let fault = Fault::new(502, 1.0, 0, false).unwrap();
        switch.set(Some(fault));
        assert_eq!(switch.get(), Some(fault));
        assert_eq!(switch.draw(), Some(fault));
        switch.set(Some(Fault::new(502, 0.0, 0, false).unwrap()));
        assert!((0..1_000).all(|_| switch.draw().is_none()));
        switch.set(None);
        assert_eq!(switch.get(), None);
        assert_eq!(switch.draw(), None);
    }

    #[test]
    fn a_seeded_fault_replays_the_same_pattern_each_time_it_is_set() {
        let switch = FaultSwitch::new(None);
        let fault = Fault::from_json(br#"{"rate": 0.3, "seed": 6}"#).unwrap();
        assert_eq!(fault.seed, Some(6));
        assert_eq!(
            Fault::from_json(fault.to_json().to_string().as_bytes()),
            Ok(fault)
        );
        let pattern = |switch: &FaultSwitch| -> Vec<bool> {
            switch.set(Some(fault));
            (0..200).map(|_| switch.draw().is_some()).collect()
        };
        let first = pattern(&switch);
        assert_eq!(pattern(&switch), first);
        let hits = first.iter().filter(|&&hit| hit).count();
        assert!((40..=80).contains(&hits), "{hits} hits of 200 at rate 0.3");
    }
}
