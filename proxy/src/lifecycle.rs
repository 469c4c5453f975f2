//! Notices when graceful shutdown begins, so `/ready` can answer 503 while we drain.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

/// Background service that flips `draining` when Pingora broadcasts shutdown.
pub struct DrainWatcher {
    pub draining: Arc<AtomicBool>,
}

#[async_trait]
impl BackgroundService for DrainWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        self.draining.store(true, Ordering::Relaxed);
        tracing::info!("shutdown begun: no new connections; draining in-flight requests");
    }
}
