//! Runs every group's discovery and health loop as one Pingora background service.
//!
//! Pingora services are fixed once the server runs, but groups come and go on reload; so this
//! service starts one task per group (each the group's [`UpstreamService`]), stops a task when
//! its group is retired, and reports ready once every initial group finished its first round.
//!
//! [`UpstreamService`]: crate::upstream::service::UpstreamService

use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;
use tokio::sync::{mpsc, watch};

use crate::upstream::group::GroupCore;

/// A group to start, and whom to tell when its first round is done.
type Start = (Arc<GroupCore>, ServiceReadyNotifier);

/// Hands groups created by a reload to the running [`GroupSupervisor`].
#[derive(Clone)]
pub struct GroupStarter(mpsc::UnboundedSender<Start>);

impl GroupStarter {
    /// Starts `core`'s loop and waits until its first discovery and health round is done (each
    /// bounded; see `UpstreamService`), so a snapshot that uses it never sees it empty.
    pub async fn start(&self, core: Arc<GroupCore>) {
        let (tx, mut rx) = watch::channel(false);
        if self.0.send((core, ServiceReadyNotifier::new(tx))).is_err() {
            return; // shutting down
        }
        // A dropped notifier (the task ended) reads as ready.
        let _ = rx.wait_for(|&ready| ready).await;
    }
}

/// The background service that owns every group's loop.
pub struct GroupSupervisor {
    initial: Vec<Arc<GroupCore>>,
    added: Mutex<Option<mpsc::UnboundedReceiver<Start>>>,
}

impl GroupSupervisor {
    pub fn new(initial: Vec<Arc<GroupCore>>) -> (Self, GroupStarter) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Self {
                initial,
                added: Mutex::new(Some(rx)),
            },
            GroupStarter(tx),
        )
    }
}

/// Runs one group until shutdown or until it is retired.
fn spawn_group(core: Arc<GroupCore>, shutdown: ShutdownWatch, ready: ServiceReadyNotifier) {
    tokio::spawn(async move {
        let mut retired = core.retired();
        tokio::select! {
            () = core.service.start_with_ready_notifier(shutdown, ready) => {}
            _ = retired.wait_for(|&r| r) => {
                tracing::info!(upstream = %core.name, "upstream group removed; its health checks stopped");
            }
        }
    });
}

#[async_trait]
impl BackgroundService for GroupSupervisor {
    async fn start_with_ready_notifier(
        &self,
        mut shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        let mut waits = Vec::with_capacity(self.initial.len());
        for core in &self.initial {
            let (tx, rx) = watch::channel(false);
            spawn_group(
                core.clone(),
                shutdown.clone(),
                ServiceReadyNotifier::new(tx),
            );
            waits.push(rx);
        }
        for mut rx in waits {
            let _ = rx.wait_for(|&r| r).await;
        }
        ready.notify_ready();
        let Some(mut added) = self.added.lock().take() else {
            return;
        };
        let groups_shutdown = shutdown.clone();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|&stop| stop) => return,
                next = added.recv() => match next {
                    Some((core, ready)) => spawn_group(core, groups_shutdown.clone(), ready),
                    None => return,
                },
            }
        }
    }
}
