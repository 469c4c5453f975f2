//! The loop that keeps one group's backend set current: discovery every second, health checks
//! at the group's interval, never overlapping, and the first round done before traffic.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;
use tokio::time::{interval_at, Instant, MissedTickBehavior};

use crate::config::HealthCheckSettings;
use crate::upstream::discovery::{DISCOVERY_INTERVAL, LOOKUP_TIMEOUT};

/// Runs the balancer: discovery every [`DISCOVERY_INTERVAL`], health checks every
/// `health_check.interval`, one at a time (Pingora's `update()` must not overlap itself).
///
/// It reports ready only after the first discovery and one round of health checks, so a proxy
/// service that depends on it takes no request while the backend set is still empty (host-name
/// backends would get 503 at start and after `-u`) or holds a dead backend. Wiring: each group
/// owns one (`upstream::group`); the supervisor's background service starts them
/// (`upstream::supervisor`), and `app::build` makes the proxy services depend on it.
pub struct UpstreamService {
    lb: Arc<LoadBalancer<RoundRobin>>,
    health_interval: Duration,
    /// How long the first round may hold traffic back. Lookups and probes are bounded on their
    /// own; this only keeps something unforeseen from keeping the listeners closed for good.
    first_round_timeout: Duration,
}

impl UpstreamService {
    pub fn new(lb: Arc<LoadBalancer<RoundRobin>>, health: &HealthCheckSettings) -> Self {
        Self {
            lb,
            health_interval: health.interval,
            // A lookup, then a probe's connect and its answer, each at its own limit.
            first_round_timeout: LOOKUP_TIMEOUT + health.timeout * 2 + Duration::from_secs(1),
        }
    }

    async fn discover(&self) {
        if let Err(e) = self.lb.update().await {
            tracing::warn!(error = %e, "backend discovery failed; the current backends stay");
        }
    }

    async fn check(&self) {
        let parallel = self.lb.parallel_health_check;
        self.lb.backends().run_health_check(parallel).await;
    }

    async fn first_round(&self) {
        self.discover().await;
        self.check().await;
    }

    /// The periodic rounds, after the first.
    async fn run(&self, mut shutdown: ShutdownWatch) {
        let now = Instant::now();
        let mut discovery = interval_at(now + DISCOVERY_INTERVAL, DISCOVERY_INTERVAL);
        let mut health = interval_at(now + self.health_interval, self.health_interval);
        // A round that overran its interval is not followed by a burst of catch-up rounds.
        discovery.set_missed_tick_behavior(MissedTickBehavior::Delay);
        health.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            // Whichever is due runs; then the other, if it is due too. Taking one of them first
            // every time would starve the other whenever a round overruns its interval (a
            // name lookup hanging until its timeout must not stop the health checks).
            let finished = tokio::select! {
                biased;
                () = shutdown_signalled(&mut shutdown) => return,
                _ = discovery.tick() => {
                    let done = until_shutdown(&mut shutdown, self.discover()).await;
                    match health.tick().now_or_never() {
                        Some(_) if done.is_some() => until_shutdown(&mut shutdown, self.check()).await,
                        _ => done,
                    }
                }
                _ = health.tick() => {
                    let done = until_shutdown(&mut shutdown, self.check()).await;
                    match discovery.tick().now_or_never() {
                        Some(_) if done.is_some() => until_shutdown(&mut shutdown, self.discover()).await,
                        _ => done,
                    }
                }
            };
            if finished.is_none() {
                return;
            }
        }
    }
}

#[async_trait]
impl BackgroundService for UpstreamService {
    async fn start_with_ready_notifier(
        &self,
        mut shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        let first = self.first_round();
        tokio::pin!(first);
        let bounded = tokio::time::timeout(self.first_round_timeout, first.as_mut());
        // Returning drops `ready`, which Pingora reads as ready: moot once shutting down.
        let Some(in_time) = until_shutdown(&mut shutdown, bounded).await else {
            return;
        };
        if in_time.is_err() {
            tracing::warn!(
                after = ?self.first_round_timeout,
                "first backend discovery and health check still running; taking traffic anyway"
            );
        }
        ready.notify_ready();
        // A late first round is finished, not restarted: no two discoveries at once.
        if in_time.is_err() && until_shutdown(&mut shutdown, first).await.is_none() {
            return;
        }
        self.run(shutdown).await;
    }
}

/// Resolves once shutdown is signalled; never when the watch closed without it (nothing could
/// signal it any more).
async fn shutdown_signalled(shutdown: &mut ShutdownWatch) {
    if shutdown.wait_for(|&stop| stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// `work`'s output, or `None` when shutdown came first (`work` is dropped, as Pingora's own
/// balancer loop drops an in-flight round).
async fn until_shutdown<F: Future>(shutdown: &mut ShutdownWatch, work: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        () = shutdown_signalled(shutdown) => None,
        out = work => Some(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::discovery::test_support::*;
    use crate::upstream::discovery::Discovery;
    use pingora::lb::discovery::ServiceDiscovery;
    use pingora::lb::health_check::HealthCheck;
    use pingora::lb::{Backend, Backends};
    use std::collections::{BTreeSet, HashMap};
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Fails the probe of one address; every other passes.
    struct FailsFor(SocketAddr);

    #[async_trait]
    impl HealthCheck for FailsFor {
        async fn check(&self, target: &Backend) -> pingora::Result<()> {
            if target.addr.as_inet() == Some(&self.0) {
                return pingora::Error::e_explain(pingora::ErrorType::ConnectRefused, "down");
            }
            Ok(())
        }
        fn health_threshold(&self, _success: bool) -> usize {
            1
        }
    }

    /// Discovery that never finishes.
    struct Hung(Arc<AtomicUsize>);

    #[async_trait]
    impl ServiceDiscovery for Hung {
        async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
            self.0.fetch_add(1, Ordering::SeqCst);
            std::future::pending().await
        }
    }

    fn health_settings() -> HealthCheckSettings {
        HealthCheckSettings {
            path: "/health".into(),
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(100),
        }
    }

    /// Starts `service` as Pingora would; returns its readiness, its shutdown switch and task.
    fn start(
        service: UpstreamService,
    ) -> (
        tokio::sync::watch::Receiver<bool>,
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ) {
        let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            service
                .start_with_ready_notifier(stop_rx, ServiceReadyNotifier::new(ready_tx))
                .await;
        });
        (ready_rx, stop_tx, task)
    }

    /// Bounds a wait that should end at once; a generous limit, only so a bug cannot hang.
    async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .unwrap_or_else(|_| panic!("{what} never happened"))
    }

    #[tokio::test]
    async fn ready_only_after_first_discovery_and_health_round() {
        let (b, _) = setup(vec![Some(vec![
            addr("10.0.0.1:9000"),
            addr("10.0.0.2:9000"),
        ])]);
        let mut lb =
            LoadBalancer::<RoundRobin>::from_backends(Backends::new(Box::new(Discovery(b))));
        lb.set_health_check(Box::new(FailsFor(addr("10.0.0.2:9000"))));
        lb.parallel_health_check = true;
        let lb = Arc::new(lb);
        let (mut ready, stop, task) = start(UpstreamService::new(lb.clone(), &health_settings()));

        bounded("ready", ready.wait_for(|&r| r)).await.unwrap();
        let backends = lb.backends();
        let set = backends.get_backend();
        let up: Vec<String> = set
            .iter()
            .filter(|b| backends.ready(b))
            .map(|b| b.addr.to_string())
            .collect();
        assert_eq!(set.len(), 2, "discovered before ready");
        assert_eq!(up, ["10.0.0.1:9000"], "probed before ready");

        stop.send(true).unwrap();
        bounded("stop", task).await.unwrap();
    }

    #[tokio::test]
    async fn a_hung_first_round_holds_traffic_back_only_so_long() {
        let calls = Arc::new(AtomicUsize::new(0));
        let lb = Arc::new(LoadBalancer::<RoundRobin>::from_backends(Backends::new(
            Box::new(Hung(calls.clone())),
        )));
        let service = UpstreamService {
            lb,
            health_interval: Duration::from_millis(100),
            first_round_timeout: Duration::from_millis(20),
        };
        let (mut ready, stop, task) = start(service);

        bounded("ready", ready.wait_for(|&r| r)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Still waiting on that first discovery (never a second beside it): shutdown ends it.
        stop.send(true).unwrap();
        bounded("stop", task).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    /// Discovery whose every round after the first takes longer than its interval.
    struct SlowAfterFirst(Arc<AtomicUsize>);

    #[async_trait]
    impl ServiceDiscovery for SlowAfterFirst {
        async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
            if self.0.fetch_add(1, Ordering::SeqCst) > 0 {
                tokio::time::sleep(DISCOVERY_INTERVAL + Duration::from_millis(500)).await;
            }
            let backend = Backend::new("10.0.0.1:9000")?;
            Ok((BTreeSet::from([backend]), HashMap::new()))
        }
    }

    /// Counts probes; every one passes.
    struct CountingCheck(Arc<AtomicUsize>);

    #[async_trait]
    impl HealthCheck for CountingCheck {
        async fn check(&self, _target: &Backend) -> pingora::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn health_threshold(&self, _success: bool) -> usize {
            1
        }
    }

    #[tokio::test(start_paused = true)]
    async fn overrunning_discovery_does_not_starve_health_checks() {
        let (discoveries, checks) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut lb = LoadBalancer::<RoundRobin>::from_backends(Backends::new(Box::new(
            SlowAfterFirst(discoveries.clone()),
        )));
        lb.set_health_check(Box::new(CountingCheck(checks.clone())));
        let service = UpstreamService {
            lb: Arc::new(lb),
            health_interval: Duration::from_millis(100),
            first_round_timeout: Duration::from_secs(5),
        };
        let (mut ready, stop, task) = start(service);
        bounded("ready", ready.wait_for(|&r| r)).await.unwrap();
        // (Virtual time.) Once discovery overruns, both are due after every round: the probes
        // must still run.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (d0, c0) = (
            discoveries.load(Ordering::SeqCst),
            checks.load(Ordering::SeqCst),
        );
        tokio::time::sleep(Duration::from_secs(7)).await;
        let (d1, c1) = (
            discoveries.load(Ordering::SeqCst),
            checks.load(Ordering::SeqCst),
        );
        assert!(d1 - d0 >= 3, "discovery keeps running: {d0} -> {d1}");
        assert!(
            c1 - c0 >= 3,
            "health checks starved: {c0} -> {c1} while discovery ran {d0} -> {d1}"
        );
        stop.send(true).unwrap();
        bounded("stop", task).await.unwrap();
    }
}
