//! The shared rate-limit store: the local limiter's exact sliding window, evaluated atomically
//! in Redis so that every replica counts against one budget.
//!
//! One Lua script per check (loaded once, run by `EVALSHA`, loaded again on `NOSCRIPT`) rolls
//! the client's window on Redis' own clock (`TIME`, so replicas' clocks do not matter), admits
//! and counts, and returns the counts; the headers' numbers come from [`describe`], the function
//! the local limiter uses, so both stores give the same numbers. A client is one hash (`s`, `p`,
//! `c`: window start, previous and current count) under `PREFIX + policy + ":{client}"`; the hash
//! tag keeps every key of a client in one Redis Cluster slot; the key expires after two windows,
//! so an idle client costs nothing.
//!
//! The connection is the `redis` crate's multiplexed `ConnectionManager`: concurrent checks are
//! pipelined on one connection, and it reconnects with backoff by itself. A check waits at most
//! `timeout_ms`. After a failure the store counts as down: checks skip it (the caller applies
//! `on_error`) and one check every [`PROBE_INTERVAL`] tries it again, so an outage costs requests
//! no waiting beyond those probes, and counting goes back to Redis as soon as one succeeds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::{Histogram, IntCounter};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::RedisSettings;
use crate::limits::sliding_window::{describe, ClientKey, Decision, WindowState};

/// How often a store that failed is tried again (by one request; the others do not wait).
pub const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// Longest wait for the first connection attempt and each reconnection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The sliding window of `limits/sliding_window.rs`, in Lua. KEYS[1]: the client's hash.
/// ARGV: limit, window in ms, and (tests only) a fixed "now" in ms instead of Redis' clock.
/// Returns {allowed (0/1), previous count, current count, ms into the current window}.
const CHECK_SCRIPT: &str = r"
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local now
if ARGV[3] and ARGV[3] ~= '' then
  now = tonumber(ARGV[3])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local v = redis.call('HMGET', KEYS[1], 's', 'p', 'c')
local start = tonumber(v[1])
local prev = tonumber(v[2]) or 0
local curr = tonumber(v[3]) or 0
if not start then
  start = now
  prev = 0
  curr = 0
end
local elapsed = now - start
if elapsed >= window then
  local passed = math.floor(elapsed / window)
  if passed == 1 then prev = curr else prev = 0 end
  curr = 0
  start = start + passed * window
end
local e = now - start
if e < 0 then e = 0 end
if e > window then e = window end
local allowed = 0
if prev * (window - e) + (curr + 1) * window <= limit * window then
  allowed = 1
  curr = curr + 1
end
redis.call('HSET', KEYS[1], 's', start, 'p', prev, 'c', curr)
redis.call('PEXPIRE', KEYS[1], 2 * window)
return {allowed, prev, curr, e}
";

/// Gives back one unit, for a request refused after its check for another reason.
const REFUND_SCRIPT: &str = r"
local c = tonumber(redis.call('HGET', KEYS[1], 'c'))
if c and c > 0 then redis.call('HINCRBY', KEYS[1], 'c', -1) end
return 0
";

/// Why a check did not get an answer from the store.
#[derive(Debug)]
pub enum StoreError {
    /// Not connected yet, or failed recently and not due for a probe.
    Down,
    Timeout,
    Redis(redis::RedisError),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Down => f.write_str("store down"),
            StoreError::Timeout => f.write_str("no answer within rate_limit.redis.timeout_ms"),
            StoreError::Redis(e) => write!(f, "{e}"),
        }
    }
}

/// Handles the store reports through.
pub struct StoreMetrics {
    pub errors: IntCounter,
    pub seconds: Histogram,
    /// Checks `on_error` decided: failed ones and those skipped while the store is down.
    pub fallbacks: IntCounter,
}

/// The shared store, owned by the app (one per process, built from the settings at start).
pub struct SharedStore {
    settings: RedisSettings,
    conn: ArcSwapOption<ConnectionManager>,
    check: redis::Script,
    refund: redis::Script,
    /// 0: up; else the time (ms since `epoch`) from which one check may probe the store again.
    down_until_ms: AtomicU64,
    epoch: Instant,
    metrics: StoreMetrics,
}

impl SharedStore {
    pub fn new(settings: RedisSettings, metrics: StoreMetrics) -> Arc<Self> {
        Arc::new(Self {
            settings,
            conn: ArcSwapOption::empty(),
            check: redis::Script::new(CHECK_SCRIPT),
            refund: redis::Script::new(REFUND_SCRIPT),
            // Down until the first connection: nothing waits on a store that is not there.
            down_until_ms: AtomicU64::new(1),
            epoch: Instant::now(),
            metrics,
        })
    }

    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    /// Counts a check that `on_error` decided.
    pub fn count_fallback(&self) {
        self.metrics.fallbacks.inc();
    }

    /// `connecting`, `up` or `down`, for `/ready`.
    pub fn state(&self) -> &'static str {
        if self.conn.load().is_none() {
            "connecting"
        } else if self.down_until_ms.load(Ordering::Relaxed) == 0 {
            "up"
        } else {
            "down"
        }
    }

    fn now_ms(&self) -> u64 {
        // At least 2: 0 means up and 1 "not connected yet".
        self.epoch.elapsed().as_millis() as u64 + 2
    }

    /// The key of `client` under `policy`.
    fn key(&self, policy: &str, client: &ClientKey) -> String {
        let prefix = &self.settings.key_prefix;
        let mut key = String::with_capacity(prefix.len() + policy.len() + 48);
        key.push_str(prefix);
        key.push_str(policy);
        key.push_str(":{");
        client.write_store_name(&mut key);
        key.push('}');
        key
    }

    /// Whether this check may use the store: it is up, or this check is the one probe due.
    fn may_try(&self) -> bool {
        let until = self.down_until_ms.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        let now = self.now_ms();
        now >= until
            && self
                .down_until_ms
                .compare_exchange(
                    until,
                    now + PROBE_INTERVAL.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    fn succeeded(&self) {
        if self.down_until_ms.swap(0, Ordering::Relaxed) != 0 {
            tracing::info!("rate-limit store answers again: limits are shared again");
        }
    }

    fn failed(&self, why: &StoreError) {
        self.metrics.errors.inc();
        let next = self.now_ms() + PROBE_INTERVAL.as_millis() as u64;
        if self.down_until_ms.swap(next, Ordering::Relaxed) == 0 {
            tracing::warn!(error = %why, on_error = ?self.settings.on_error, "rate-limit store failed; rate_limit.redis.on_error applies until it answers again");
        }
    }

    /// Checks and counts one request of `client` against `limit` per `window` under `policy`.
    pub async fn check(
        &self,
        policy: &str,
        client: &ClientKey,
        limit: u32,
        window: Duration,
    ) -> Result<Decision, StoreError> {
        self.check_at(policy, client, limit, window, None).await
    }

    /// [`check`](Self::check) with a fixed clock (ms), for tests.
    pub async fn check_at(
        &self,
        policy: &str,
        client: &ClientKey,
        limit: u32,
        window: Duration,
        now_ms: Option<u64>,
    ) -> Result<Decision, StoreError> {
        if !self.may_try() {
            return Err(StoreError::Down);
        }
        let Some(conn) = self.conn.load_full() else {
            return Err(StoreError::Down);
        };
        let window_ms = window.as_millis().max(1) as u64;
        let mut conn = (*conn).clone();
        let mut call = self.check.key(self.key(policy, client));
        call.arg(limit).arg(window_ms);
        if let Some(now) = now_ms {
            call.arg(now);
        }
        let started = Instant::now();
        let answer = tokio::time::timeout(
            self.settings.timeout,
            call.invoke_async::<(u8, u64, u64, u64)>(&mut conn),
        )
        .await;
        self.metrics
            .seconds
            .observe(started.elapsed().as_secs_f64());
        let result = match answer {
            Ok(Ok((allowed, prev, curr, elapsed_ms))) => {
                let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
                Ok(describe(
                    WindowState {
                        prev: clamp(prev),
                        curr: clamp(curr),
                        elapsed_ms,
                    },
                    allowed == 1,
                    limit,
                    window_ms,
                ))
            }
            Ok(Err(e)) => Err(StoreError::Redis(e)),
            Err(_) => Err(StoreError::Timeout),
        };
        match &result {
            Ok(_) => self.succeeded(),
            Err(e) => self.failed(e),
        }
        result
    }

    /// Gives back the unit the last check of `client` counted (in the background, bounded).
    pub fn refund(self: &Arc<Self>, policy: &str, client: &ClientKey) {
        let Some(conn) = self.conn.load_full() else {
            return;
        };
        let key = self.key(policy, client);
        let store = self.clone();
        tokio::spawn(async move {
            let mut conn = (*conn).clone();
            let invocation = store.refund.key(key);
            let call = invocation.invoke_async::<i64>(&mut conn);
            if let Ok(Err(e)) = tokio::time::timeout(store.settings.timeout, call).await {
                tracing::debug!(error = %e, "rate-limit refund failed");
            }
        });
    }
}

/// Makes the store's first connection, retrying with backoff, as a background service (the
/// proxy starts and serves, under `on_error`, while Redis is not there yet). Once connected,
/// the connection manager reconnects by itself.
pub struct StoreConnector(pub Arc<SharedStore>);

#[async_trait]
impl BackgroundService for StoreConnector {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let store = &self.0;
        let mut delay = Duration::from_millis(100);
        loop {
            let attempt = async {
                let client = redis::Client::open(store.settings.url.as_str())?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_factor(100)
                    .set_max_delay(2000);
                ConnectionManager::new_with_config(client, config).await
            };
            let outcome = tokio::select! {
                _ = shutdown.changed() => return,
                outcome = tokio::time::timeout(CONNECT_TIMEOUT * 8, attempt) => outcome,
            };
            match outcome {
                Ok(Ok(conn)) => {
                    store.conn.store(Some(Arc::new(conn)));
                    store.down_until_ms.store(0, Ordering::Relaxed);
                    tracing::info!(url = %redacted(&store.settings.url), "rate-limit store connected");
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!(url = %redacted(&store.settings.url), error = %e, retry_in = ?delay, "rate-limit store not reachable; rate_limit.redis.on_error applies meanwhile");
                }
                Err(_) => {
                    tracing::warn!(url = %redacted(&store.settings.url), retry_in = ?delay, "rate-limit store did not answer; rate_limit.redis.on_error applies meanwhile");
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}

/// The URL without its password, for logs.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_owned(),
    }
}
