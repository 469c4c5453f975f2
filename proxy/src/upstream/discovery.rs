//! Discovery of a group's configured backends: host names re-resolved on every round, in
//! parallel and each lookup bounded, so a container restarted with a new IP is found again; the
//! last good answer kept when a lookup fails.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use futures_util::future::join_all;
use http::HeaderValue;
use parking_lot::Mutex;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::Backend;

use crate::config::BackendAddr;
use crate::observe::metrics::{BackendMetrics, Metrics};
use crate::upstream::outlier::BackendOutlier;

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
    /// Attempts sent to it and not finished yet (kept for `least_requests` groups only).
    pub inflight: AtomicUsize,
    /// The configured host (name or IP): the TLS name of a group without `sni`.
    pub host: Arc<str>,
    /// Its failure streak and ejection (passive outlier detection).
    pub outlier: BackendOutlier,
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
    /// The group's name: the `upstream` label of its backends' metrics.
    group: Arc<str>,
    list: ArcSwap<Vec<BackendAddr>>,
    metrics: Arc<Metrics>,
    resolver: Box<dyn Resolve>,
    lookup_timeout: Duration,
    /// Current addresses per label; for host names the last good answer, kept when a lookup
    /// fails so a DNS hiccup drops nothing.
    resolved: Mutex<HashMap<String, Vec<SocketAddr>>>,
    /// Addresses the health check found down, per label.
    down: Mutex<HashMap<String, HashSet<SocketAddr>>>,
    /// Every address in `down`, published for the request path: a pick reads it instead of
    /// asking Pingora's `Backends::ready`, which hashes the backend twice (SipHash) per check.
    down_now: ArcSwap<HashSet<SocketAddr>>,
    /// One info per label for as long as the label is configured, so its in-flight count and
    /// metric handles survive membership changes.
    infos: Mutex<HashMap<String, Arc<BackendInfo>>>,
}

impl ConfiguredBackends {
    pub fn new(
        group: Arc<str>,
        list: Vec<BackendAddr>,
        metrics: Arc<Metrics>,
        resolver: Box<dyn Resolve>,
    ) -> Arc<Self> {
        Self::with_lookup_timeout(group, list, metrics, resolver, LOOKUP_TIMEOUT)
    }

    fn with_lookup_timeout(
        group: Arc<str>,
        list: Vec<BackendAddr>,
        metrics: Arc<Metrics>,
        resolver: Box<dyn Resolve>,
        lookup_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            group,
            list: ArcSwap::from_pointee(list),
            metrics,
            resolver,
            lookup_timeout,
            resolved: Mutex::new(HashMap::new()),
            down: Mutex::new(HashMap::new()),
            down_now: ArcSwap::from_pointee(HashSet::new()),
            infos: Mutex::new(HashMap::new()),
        })
    }

    /// Addresses that failed their health check and have not passed it since. Pingora starts
    /// every address healthy and reports each change, so an address not in here is ready.
    pub fn down_now(&self) -> arc_swap::Guard<Arc<HashSet<SocketAddr>>> {
        self.down_now.load()
    }

    fn publish_down(&self, down: &HashMap<String, HashSet<SocketAddr>>) {
        let all: HashSet<SocketAddr> = down.values().flatten().copied().collect();
        if *self.down_now.load_full() != all {
            self.down_now.store(Arc::new(all));
        }
    }

    /// The group these backends belong to.
    pub fn group(&self) -> &Arc<str> {
        &self.group
    }

    /// The configured list.
    pub fn list(&self) -> Arc<Vec<BackendAddr>> {
        self.list.load_full()
    }

    /// How many of the configured backends are ejected now (a removed one stops counting at
    /// the discovery round that sees it gone, within a second of the reload).
    pub fn ejected_members(&self) -> usize {
        self.infos
            .lock()
            .values()
            .filter(|i| i.outlier.is_ejected())
            .count()
    }

    /// Drops every series of the group's backends: the group left the configuration.
    pub fn retire(&self) {
        for label in self.infos.lock().drain().map(|(l, _)| l) {
            self.metrics.forget_backend(&self.group, &label);
        }
    }

    fn info_for(&self, label: &str, configured: &BackendAddr) -> Arc<BackendInfo> {
        self.infos
            .lock()
            .entry(label.to_owned())
            .or_insert_with(|| {
                Arc::new(BackendInfo {
                    header_value: HeaderValue::from_str(label)
                        .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
                    label: Arc::from(label),
                    metrics: self.metrics.backend(&self.group, label),
                    inflight: AtomicUsize::new(0),
                    host: Arc::from(configured.host.as_str()),
                    outlier: BackendOutlier::default(),
                })
            })
            .clone()
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
                let changed = self.resolved.lock().get(&label) != Some(&addrs);
                if changed {
                    tracing::info!(backend = %label, addresses = ?addrs, "backend resolved");
                }
                return addrs;
            }
            Ok(Ok(_)) => "no addresses".to_owned(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", self.lookup_timeout),
        };
        let last = self
            .resolved
            .lock()
            .get(&label)
            .cloned()
            .unwrap_or_default();
        tracing::warn!(backend = %label, error = %failure, kept = ?last, "backend name did not resolve; keeping the last answer");
        last
    }

    /// Records a health change of one address and returns whether its backend (any of the
    /// addresses its name resolves to) is up.
    pub(crate) fn record_health(&self, label: &str, addr: SocketAddr, healthy: bool) -> bool {
        // The same order as settle_membership: resolved, then down.
        let resolved = self.resolved.lock();
        let mut down = self.down.lock();
        let set = down.entry(label.to_owned()).or_default();
        if healthy {
            set.remove(&addr);
        } else {
            set.insert(addr);
        }
        let up = {
            let addrs = resolved.get(label).map_or(&[][..], |v| v.as_slice());
            addrs.is_empty() || addrs.iter().any(|a| !set.contains(a))
        };
        self.publish_down(&down);
        up
    }

    /// One discovery round: every configured backend with its current addresses. Names are
    /// looked up side by side, so one slow name costs a round one lookup timeout, not one each.
    pub(crate) async fn discover_backends(&self) -> BTreeSet<Backend> {
        let list = self.list.load_full();
        let answers = join_all(list.iter().map(|b| self.resolve(b))).await;
        let mut set = BTreeSet::new();
        let mut current: HashMap<String, Vec<SocketAddr>> = HashMap::new();
        for (configured, addrs) in list.iter().zip(answers) {
            let label = configured.label();
            let info = self.info_for(&label, configured);
            for addr in &addrs {
                let mut backend = Backend {
                    addr: pingora::protocols::l4::socket::SocketAddr::Inet(*addr),
                    weight: configured.weight as usize,
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
    pub(crate) fn settle_membership(&self, current: HashMap<String, Vec<SocketAddr>>) {
        let mut resolved = self.resolved.lock();
        let mut down = self.down.lock();
        {
            let mut infos = self.infos.lock();
            infos.retain(|label, _| current.contains_key(label));
            for gone in resolved.keys().filter(|l| !current.contains_key(*l)) {
                self.metrics.forget_backend(&self.group, gone);
            }
        }
        down.retain(|label, set| {
            let Some(addrs) = current.get(label) else {
                return false;
            };
            set.retain(|a| addrs.contains(a));
            if let Some(m) = self.metrics.known_backend(&self.group, label) {
                let up = addrs.is_empty() || addrs.iter().any(|a| !set.contains(a));
                m.up.set(i64::from(up));
            }
            true
        });
        self.publish_down(&down);
        *resolved = current;
    }
}

/// Discovery handle given to Pingora (which wants a `Box`), sharing the list with reload.
pub struct Discovery(pub Arc<ConfiguredBackends>);

#[async_trait]
impl ServiceDiscovery for Discovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        Ok((self.0.discover_backends().await, HashMap::new()))
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Answers from a script: one entry per lookup, the last one repeated.
    pub struct ScriptedResolver {
        pub answers: Vec<Option<Vec<SocketAddr>>>,
        pub calls: AtomicUsize,
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

    /// The group every test backend belongs to.
    pub const GROUP: &str = "default";

    pub fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    pub fn named(host: &str) -> BackendAddr {
        BackendAddr {
            host: host.into(),
            port: 9000,
            weight: 1,
        }
    }

    /// A backend's info outside any group's discovery (own metrics registry).
    pub fn backend_info(label: &str) -> Arc<BackendInfo> {
        let metrics = Metrics::new().unwrap();
        Arc::new(BackendInfo {
            label: Arc::from(label),
            header_value: HeaderValue::from_static("test"),
            metrics: metrics.backend(GROUP, label),
            inflight: AtomicUsize::new(0),
            host: Arc::from(label),
            outlier: BackendOutlier::default(),
        })
    }

    pub fn setup(answers: Vec<Option<Vec<SocketAddr>>>) -> (Arc<ConfiguredBackends>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new().unwrap());
        let resolver = ScriptedResolver {
            answers,
            calls: AtomicUsize::new(0),
        };
        let b = ConfiguredBackends::new(
            GROUP.into(),
            vec![named("backend1")],
            metrics.clone(),
            Box::new(resolver),
        );
        (b, metrics)
    }

    pub async fn addresses(b: &ConfiguredBackends) -> Vec<String> {
        b.discover_backends()
            .await
            .iter()
            .map(|x| x.addr.to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

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
        assert_eq!(metrics.known_backend(GROUP, label).unwrap().up.get(), 1);
    }

    #[tokio::test]
    async fn the_published_down_set_follows_health_and_membership() {
        let (b, _) = setup(vec![Some(vec![
            addr("10.0.0.1:9000"),
            addr("10.0.0.2:9000"),
        ])]);
        addresses(&b).await;
        let label = "backend1:9000";
        assert!(b.down_now().is_empty());
        b.record_health(label, addr("10.0.0.2:9000"), false);
        assert!(b.down_now().contains(&addr("10.0.0.2:9000")));
        b.record_health(label, addr("10.0.0.2:9000"), true);
        assert!(b.down_now().is_empty());
        // An address the name no longer resolves to leaves the set with it.
        b.record_health(label, addr("10.0.0.2:9000"), false);
        b.settle_membership(HashMap::from([(
            label.to_owned(),
            vec![addr("10.0.0.1:9000")],
        )]));
        assert!(b.down_now().is_empty());
    }

    #[tokio::test]
    async fn removed_backends_lose_their_up_series() {
        let (b, metrics) = setup(vec![Some(vec![addr("10.0.0.1:9000")])]);
        addresses(&b).await;
        assert!(metrics.known_backend(GROUP, "backend1:9000").is_some());
        b.replace(vec![]);
        addresses(&b).await;
        assert!(metrics.known_backend(GROUP, "backend1:9000").is_none());
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
            GROUP.into(),
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
            GROUP.into(),
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
}
