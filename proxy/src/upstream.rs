//! The upstream pool: discovery of the configured backends (host names re-resolved on every
//! round, in parallel and each lookup bounded, so a container restarted with a new IP is found
//! again), the balancer's backend set, the HTTP health check that drives `gateway_backend_up`,
//! and the background service that runs discovery and checks (and holds the proxy back until
//! the first round is done).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use futures_util::future::join_all;
use futures_util::FutureExt;
use http::HeaderValue;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::{HealthCheck, HealthObserve, HttpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::prelude::HttpPeer;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;
use tokio::time::{interval_at, Instant, MissedTickBehavior};

use crate::config::{BackendAddr, HealthCheckSettings};
use crate::metrics::{BackendMetrics, Metrics};

/// How often discovery runs: picks up reloaded backend lists and re-resolves host names.
pub const DISCOVERY_INTERVAL: Duration = Duration::from_secs(1);

/// Longest wait for one host-name lookup; beyond it the last good answer stays, as on failure.
/// getaddrinfo's own retries can take tens of seconds, and discovery must keep its pace.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// What the gateway knows about a backend beyond its address, carried in `Backend::ext`.
pub struct BackendInfo {
    /// The configured `host:port`, used in logs, metrics and `X-Upstream`.
    pub label: Arc<str>,
    pub header_value: HeaderValue,
    pub metrics: Arc<BackendMetrics>,
}

/// The info attached to `backend` by discovery.
pub fn info(backend: &Backend) -> Option<&Arc<BackendInfo>> {
    backend.ext.get::<Arc<BackendInfo>>()
}

/// Name resolution for backends given by host name; a trait so tests can change the answers.
#[async_trait]
pub trait Resolve: Send + Sync {
    async fn lookup(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>>;
}

/// The system resolver (getaddrinfo on tokio's blocking pool).
pub struct SystemResolver;

#[async_trait]
impl Resolve for SystemResolver {
    async fn lookup(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }
}

/// Discovery over the configured list, swapped in by reload.
pub struct ConfiguredBackends {
    list: ArcSwap<Vec<BackendAddr>>,
    metrics: Arc<Metrics>,
    resolver: Box<dyn Resolve>,
    lookup_timeout: Duration,
    /// Current addresses per label; for host names the last good answer, kept when a lookup
    /// fails so a DNS hiccup drops nothing.
    resolved: Mutex<HashMap<String, Vec<SocketAddr>>>,
    /// Addresses the health check found down, per label.
    down: Mutex<HashMap<String, HashSet<SocketAddr>>>,
}

impl ConfiguredBackends {
    pub fn new(
        list: Vec<BackendAddr>,
        metrics: Arc<Metrics>,
        resolver: Box<dyn Resolve>,
    ) -> Arc<Self> {
        Self::with_lookup_timeout(list, metrics, resolver, LOOKUP_TIMEOUT)
    }

    fn with_lookup_timeout(
        list: Vec<BackendAddr>,
        metrics: Arc<Metrics>,
        resolver: Box<dyn Resolve>,
        lookup_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            list: ArcSwap::from_pointee(list),
            metrics,
            resolver,
            lookup_timeout,
            resolved: Mutex::new(HashMap::new()),
            down: Mutex::new(HashMap::new()),
        })
    }

    /// Replaces the list; the balancer picks it up at the next discovery round.
    pub fn replace(&self, list: Vec<BackendAddr>) {
        self.list.store(Arc::new(list));
    }

    async fn resolve(&self, backend: &BackendAddr) -> Vec<SocketAddr> {
        if let Ok(ip) = backend.host.parse::<std::net::IpAddr>() {
            return vec![SocketAddr::new(ip, backend.port)];
        }
        let label = backend.label();
        let lookup = self.resolver.lookup(&backend.host, backend.port);
        let failure = match tokio::time::timeout(self.lookup_timeout, lookup).await {
            Ok(Ok(mut addrs)) if !addrs.is_empty() => {
                addrs.sort();
                addrs.dedup();
                let changed = lock(&self.resolved).get(&label) != Some(&addrs);
                if changed {
                    tracing::info!(backend = %label, addresses = ?addrs, "backend resolved");
                }
                return addrs;
            }
            Ok(Ok(_)) => "no addresses".to_owned(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", self.lookup_timeout),
        };
        let last = lock(&self.resolved)
            .get(&label)
            .cloned()
            .unwrap_or_default();
        tracing::warn!(backend = %label, error = %failure, kept = ?last, "backend name did not resolve; keeping the last answer");
        last
    }

    /// Records a health change of one address and returns whether its backend (any of the
    /// addresses its name resolves to) is up.
    fn record_health(&self, label: &str, addr: SocketAddr, healthy: bool) -> bool {
        let mut down = lock(&self.down);
        let set = down.entry(label.to_owned()).or_default();
        if healthy {
            set.remove(&addr);
        } else {
            set.insert(addr);
        }
        let resolved = lock(&self.resolved);
        let addrs = resolved.get(label).map_or(&[][..], |v| v.as_slice());
        addrs.is_empty() || addrs.iter().any(|a| !set.contains(a))
    }

    /// One discovery round: every configured backend with its current addresses. Names are
    /// looked up side by side, so one slow name costs a round one lookup timeout, not one each.
    async fn discover_backends(&self) -> BTreeSet<Backend> {
        let list = self.list.load_full();
        let answers = join_all(list.iter().map(|b| self.resolve(b))).await;
        let mut set = BTreeSet::new();
        let mut current: HashMap<String, Vec<SocketAddr>> = HashMap::new();
        for (configured, addrs) in list.iter().zip(answers) {
            let label = configured.label();
            let info = Arc::new(BackendInfo {
                header_value: HeaderValue::from_str(&label)
                    .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
                label: Arc::from(label.as_str()),
                metrics: self.metrics.backend(&label),
            });
            for addr in &addrs {
                let mut backend = Backend {
                    addr: pingora::protocols::l4::socket::SocketAddr::Inet(*addr),
                    weight: 1,
                    ext: Default::default(),
                };
                backend.ext.insert(info.clone());
                set.insert(backend);
            }
            current.insert(label, addrs);
        }
        self.settle_membership(current);
        set
    }

    /// Forgets what belonged to removed backends or to addresses a name no longer resolves to
    /// (new addresses start healthy, as Pingora starts them).
    fn settle_membership(&self, current: HashMap<String, Vec<SocketAddr>>) {
        let mut resolved = lock(&self.resolved);
        let mut down = lock(&self.down);
        for gone in resolved.keys().filter(|l| !current.contains_key(*l)) {
            self.metrics.forget_backend(gone);
        }
        down.retain(|label, set| {
            let Some(addrs) = current.get(label) else {
                return false;
            };
            set.retain(|a| addrs.contains(a));
            if let Some(m) = self.metrics.known_backend(label) {
                let up = addrs.is_empty() || addrs.iter().any(|a| !set.contains(a));
                m.up.set(i64::from(up));
            }
            true
        });
        *resolved = current;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps hold plain data; a panic elsewhere mid-update leaves nothing inconsistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Discovery handle given to Pingora (which wants a `Box`), sharing the list with reload.
pub struct Discovery(pub Arc<ConfiguredBackends>);

#[async_trait]
impl ServiceDiscovery for Discovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        Ok((self.0.discover_backends().await, HashMap::new()))
    }
}

/// Logs health changes once per change and drives `gateway_backend_up`.
struct HealthObserver(Arc<ConfiguredBackends>);

#[async_trait]
impl HealthObserve for HealthObserver {
    async fn observe(&self, target: &Backend, healthy: bool) {
        let (Some(info), Some(addr)) = (info(target), target.addr.as_inet()) else {
            return;
        };
        let up = self.0.record_health(&info.label, *addr, healthy);
        info.metrics.up.set(i64::from(up));
        if healthy {
            tracing::info!(backend = %info.label, address = %target.addr, "backend is healthy again");
        } else {
            tracing::warn!(backend = %info.label, address = %target.addr, "backend is unhealthy; taken out of rotation");
        }
    }
}

/// The balancer with its health check. It is empty until its first discovery: run it with
/// [`UpstreamService`] (its frequencies stay unset; that service schedules both tasks).
pub fn build_balancer(
    backends: Arc<ConfiguredBackends>,
    health: &HealthCheckSettings,
) -> LoadBalancer<RoundRobin> {
    let observer = HealthObserver(backends.clone());
    let mut lb =
        LoadBalancer::<RoundRobin>::from_backends(Backends::new(Box::new(Discovery(backends))));
    lb.set_health_check(health_check(health, observer));
    lb.parallel_health_check = true;
    lb
}

/// Runs the balancer: discovery every [`DISCOVERY_INTERVAL`], health checks every
/// `health_check.interval`, one at a time (Pingora's `update()` must not overlap itself).
///
/// It reports ready only after the first discovery and one round of health checks, so a proxy
/// service that depends on it takes no request while the backend set is still empty (host-name
/// backends would get 503 at start and after `-u`) or holds a dead backend. Wiring:
///
/// ```ignore
/// let lb = Arc::new(build_balancer(backends.clone(), &settings.upstream.health_check));
/// let upstream = background_service("upstream health and discovery",
///     UpstreamService::new(lb.clone(), &settings.upstream.health_check));
/// let upstream = server.add_service(upstream);
/// let proxy = server.add_service(proxy);
/// proxy.add_dependency(&upstream);
/// ```
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

fn health_check(
    settings: &HealthCheckSettings,
    observer: HealthObserver,
) -> Box<dyn HealthCheck + Send + Sync + 'static> {
    let mut hc = HttpHealthCheck::new("gateway-health-check", false);
    if let Ok(uri) = settings.path.parse() {
        hc.req.set_uri(uri);
    }
    let mut peer = HttpPeer::new("0.0.0.0:1", false, String::new());
    peer.options.connection_timeout = Some(settings.timeout);
    peer.options.read_timeout = Some(settings.timeout);
    peer.options.idle_timeout = Some(settings.interval * 3);
    hc.peer_template = peer;
    hc.reuse_connection = true;
    hc.health_changed_callback = Some(Box::new(observer));
    Box::new(hc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Answers from a script: one entry per lookup, the last one repeated.
    struct ScriptedResolver {
        answers: Vec<Option<Vec<SocketAddr>>>,
        calls: AtomicUsize,
    }

    #[async_trait]
    impl Resolve for ScriptedResolver {
        async fn lookup(&self, _host: &str, _port: u16) -> std::io::Result<Vec<SocketAddr>> {
            let i = self
                .calls
                .fetch_add(1, Ordering::Relaxed)
                .min(self.answers.len() - 1);
            self.answers[i]
                .clone()
                .ok_or_else(|| std::io::Error::other("no such host"))
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn named(host: &str) -> BackendAddr {
        BackendAddr {
            host: host.into(),
            port: 9000,
        }
    }

    fn setup(answers: Vec<Option<Vec<SocketAddr>>>) -> (Arc<ConfiguredBackends>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new().unwrap());
        let resolver = ScriptedResolver {
            answers,
            calls: AtomicUsize::new(0),
        };
        let b =
            ConfiguredBackends::new(vec![named("backend1")], metrics.clone(), Box::new(resolver));
        (b, metrics)
    }

    async fn addresses(b: &ConfiguredBackends) -> Vec<String> {
        b.discover_backends()
            .await
            .iter()
            .map(|x| x.addr.to_string())
            .collect()
    }

    #[tokio::test]
    async fn host_names_are_re_resolved_and_kept_on_failure() {
        let (b, _) = setup(vec![
            Some(vec![addr("10.0.0.1:9000")]),
            Some(vec![addr("10.0.0.2:9000")]), // the container came back with a new IP
            None,                              // DNS hiccup
        ]);
        assert_eq!(addresses(&b).await, ["10.0.0.1:9000"]);
        assert_eq!(addresses(&b).await, ["10.0.0.2:9000"]);
        assert_eq!(addresses(&b).await, ["10.0.0.2:9000"], "last answer kept");
    }

    #[tokio::test]
    async fn backend_is_up_while_any_of_its_addresses_is() {
        let (b, metrics) = setup(vec![Some(vec![
            addr("10.0.0.1:9000"),
            addr("10.0.0.2:9000"),
        ])]);
        assert_eq!(addresses(&b).await.len(), 2);
        let label = "backend1:9000";
        assert!(b.record_health(label, addr("10.0.0.1:9000"), false));
        assert!(!b.record_health(label, addr("10.0.0.2:9000"), false));
        assert!(b.record_health(label, addr("10.0.0.1:9000"), true));
        // A re-resolution that drops the down address leaves the backend up.
        b.record_health(label, addr("10.0.0.1:9000"), false);
        b.settle_membership(HashMap::from([(
            label.to_owned(),
            vec![addr("10.0.0.1:9000"), addr("10.0.0.3:9000")],
        )]));
        assert_eq!(metrics.known_backend(label).unwrap().up.get(), 1);
    }

    #[tokio::test]
    async fn removed_backends_lose_their_up_series() {
        let (b, metrics) = setup(vec![Some(vec![addr("10.0.0.1:9000")])]);
        addresses(&b).await;
        assert!(metrics.known_backend("backend1:9000").is_some());
        b.replace(vec![]);
        addresses(&b).await;
        assert!(metrics.known_backend("backend1:9000").is_none());
    }

    /// Answers its first lookup, then never again within any timeout (a hung DNS server).
    struct StallingResolver {
        first: SocketAddr,
        calls: AtomicUsize,
    }

    #[async_trait]
    impl Resolve for StallingResolver {
        async fn lookup(&self, _host: &str, _port: u16) -> std::io::Result<Vec<SocketAddr>> {
            if self.calls.fetch_add(1, Ordering::Relaxed) == 0 {
                return Ok(vec![self.first]);
            }
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Err(std::io::Error::other("gave up"))
        }
    }

    #[tokio::test]
    async fn a_lookup_past_its_timeout_keeps_the_last_answer() {
        let resolver = StallingResolver {
            first: addr("10.0.0.1:9000"),
            calls: AtomicUsize::new(0),
        };
        let b = ConfiguredBackends::with_lookup_timeout(
            vec![named("backend1")],
            Arc::new(Metrics::new().unwrap()),
            Box::new(resolver),
            Duration::from_millis(20),
        );
        assert_eq!(addresses(&b).await, ["10.0.0.1:9000"]);
        assert_eq!(addresses(&b).await, ["10.0.0.1:9000"], "last answer kept");
    }

    /// Holds every lookup until `gate` lookups are in flight at once, counting the most seen:
    /// one-by-one lookups never get past the gate (and time out with nothing).
    struct GatedResolver {
        gate: tokio::sync::Barrier,
        in_flight: AtomicUsize,
        most: Arc<AtomicUsize>,
    }

    #[async_trait]
    impl Resolve for GatedResolver {
        async fn lookup(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            self.gate.wait().await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            // backendN answers 10.0.0.N.
            let n: u8 = host.trim_start_matches("backend").parse().unwrap();
            Ok(vec![SocketAddr::from(([10, 0, 0, n], port))])
        }
    }

    #[tokio::test]
    async fn names_of_a_round_are_looked_up_together() {
        let most = Arc::new(AtomicUsize::new(0));
        let resolver = GatedResolver {
            gate: tokio::sync::Barrier::new(3),
            in_flight: AtomicUsize::new(0),
            most: most.clone(),
        };
        let b = ConfiguredBackends::with_lookup_timeout(
            ["backend1", "backend2", "backend3"].map(named).to_vec(),
            Arc::new(Metrics::new().unwrap()),
            Box::new(resolver),
            Duration::from_secs(10),
        );
        assert_eq!(
            addresses(&b).await,
            ["10.0.0.1:9000", "10.0.0.2:9000", "10.0.0.3:9000"]
        );
        assert_eq!(most.load(Ordering::SeqCst), 3);
    }

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
