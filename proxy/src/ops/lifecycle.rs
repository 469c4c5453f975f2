//! Graceful shutdown as operators expect it: on SIGTERM (or after an upgrade hand-over) `/ready`
//! turns 503 at once, in-flight requests get up to `grace_period_seconds +
//! `graceful_shutdown_timeout_seconds`, and the process exits as soon as none is left.
//!
//! Pingora alone would sleep the whole grace period even when idle, then drop whatever is still
//! running; so it is given the full drain budget as its grace period, and this watcher ends the
//! process early once the gateway is idle.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::observe::access_log::AccessLog;
use crate::observe::logging::LogGuards;
use crate::observe::metrics::Metrics;

/// How long the gateway must stay idle before the process exits early: a keep-alive client
/// may send one more request right after a response.
const IDLE_SETTLE: Duration = Duration::from_millis(300);
const POLL: Duration = Duration::from_millis(50);

/// The log writers, handed back for a final flush when the watcher ends the process.
pub type SharedLogGuards = Arc<Mutex<Option<LogGuards>>>;

pub struct DrainWatcher {
    pub draining: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
    /// The whole drain budget: grace period plus shutdown timeout.
    pub budget: Duration,
    pub log_guards: SharedLogGuards,
    /// Flushed before the log writers, so the last access log lines are written.
    pub access_log: AccessLog,
}

#[async_trait]
impl BackgroundService for DrainWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        self.draining.store(true, Ordering::Relaxed);
        let started = Instant::now();
        tracing::info!(
            in_flight = self.metrics.inflight.get(),
            budget_secs = self.budget.as_secs(),
            "shutdown begun: no new connections; draining in-flight requests"
        );
        let mut idle_since: Option<Instant> = None;
        while started.elapsed() < self.budget {
            if self.metrics.inflight.get() == 0 {
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= IDLE_SETTLE {
                    tracing::info!(
                        after_ms = started.elapsed().as_millis() as u64,
                        "drained; exiting"
                    );
                    self.access_log.flush();
                    {
                        let mut guards = self.log_guards.lock();
                        guards.take(); // flushes the log writers
                    }
                    std::process::exit(0);
                }
            } else {
                idle_since = None;
            }
            tokio::time::sleep(POLL).await;
        }
        // Budget spent: Pingora's own grace period ends now and it stops what is left.
    }
}
