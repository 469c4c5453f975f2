//! Signals, from the first instant of `main` to the end of the drain.
//!
//! SIGHUP's default action kills the process and Pingora does not handle it, so a reload sent
//! while the process is still starting (systemd's `ExecReload` right after start, a config
//! management run) would kill it. [`PendingReload`] catches SIGHUP before anything else runs
//! and remembers it until the reloader is ready to act on it.
//!
//! SIGTERM, SIGQUIT and SIGINT are watched by [`ShutdownSignals`] in place of Pingora's own
//! watcher, to add `server.drain_delay_seconds`: on SIGTERM `/ready` turns 503 at once while the
//! proxy keeps accepting, so a load balancer sees the drain and stops sending before the
//! listeners close (Envoy's drain, a Kubernetes preStop hook).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};

/// A SIGHUP that arrived and has not been acted on yet.
#[derive(Clone)]
pub struct PendingReload(Arc<AtomicBool>);

impl PendingReload {
    /// Installs the SIGHUP handler; call it first thing in `main`. A SIGHUP that a parent
    /// kept blocked across `exec` (the mask is inherited) is unblocked here and so delivered
    /// to the handler: queued, not lost and not fatal.
    pub fn install() -> std::io::Result<Self> {
        use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
        let flag = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGHUP, flag.clone())?;
        let mut hup = SigSet::empty();
        hup.add(Signal::SIGHUP);
        // Threads started later inherit this thread's mask.
        pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&hup), None).map_err(std::io::Error::from)?;
        Ok(Self(flag))
    }

    /// Whether a SIGHUP arrived since the last call (and forgets it).
    pub fn take(&self) -> bool {
        self.0.swap(false, Ordering::AcqRel)
    }
}

/// Pingora's shutdown signals, with the drain delay before a graceful terminate.
pub struct ShutdownSignals {
    pub draining: Arc<AtomicBool>,
    pub drain_delay: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for ShutdownSignals {
    async fn recv(&self) -> ShutdownSignal {
        let (mut quit, mut term, mut int) = match (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(q), Ok(t), Ok(i)) => (q, t, i),
            _ => {
                tracing::error!("cannot listen for shutdown signals; shutting down");
                return ShutdownSignal::GracefulTerminate;
            }
        };
        tokio::select! {
            _ = quit.recv() => {
                self.draining.store(true, Ordering::Relaxed);
                ShutdownSignal::GracefulUpgrade
            }
            _ = int.recv() => ShutdownSignal::FastShutdown,
            _ = term.recv() => {
                self.draining.store(true, Ordering::Relaxed);
                if self.drain_delay.is_zero() {
                    return ShutdownSignal::GracefulTerminate;
                }
                tracing::info!(
                    delay_secs = self.drain_delay.as_secs(),
                    "SIGTERM: /ready answers 503; still accepting during the drain delay"
                );
                tokio::select! {
                    _ = tokio::time::sleep(self.drain_delay) => ShutdownSignal::GracefulTerminate,
                    // A second SIGTERM or a SIGINT cuts the delay short.
                    _ = term.recv() => ShutdownSignal::GracefulTerminate,
                    _ = int.recv() => ShutdownSignal::FastShutdown,
                }
            }
        }
    }
}
