//! The upstream pool: discovery of the configured backends (host names re-resolved on every
//! round, so a container restarted with a new IP is found again), the round-robin balancer, and
//! the HTTP health check that drives `gateway_backend_up`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::HeaderValue;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::{HealthCheck, HealthObserve, HttpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::prelude::HttpPeer;

use crate::config::{BackendAddr, HealthCheckSettings};
use crate::metrics::{BackendMetrics, Metrics};

/// How often discovery runs: picks up reloaded backend lists and re-resolves host names.
pub const DISCOVERY_INTERVAL: Duration = Duration::from_secs(1);

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

/// Discovery over the configured list, swapped in by reload.
pub struct ConfiguredBackends {
    list: ArcSwap<Vec<BackendAddr>>,
    metrics: Arc<Metrics>,
    /// Last good resolution per host name, kept when a lookup fails so a DNS hiccup drops nothing.
    resolved: Mutex<HashMap<String, Vec<SocketAddr>>>,
    /// Labels seen in the last round, to drop metrics of removed backends.
    labels: Mutex<HashSet<String>>,
}

impl ConfiguredBackends {
    pub fn new(list: Vec<BackendAddr>, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            list: ArcSwap::from_pointee(list),
            metrics,
            resolved: Mutex::new(HashMap::new()),
            labels: Mutex::new(HashSet::new()),
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
        let key = backend.label();
        match tokio::net::lookup_host((backend.host.as_str(), backend.port)).await {
            Ok(addrs) => {
                let mut addrs: Vec<SocketAddr> = addrs.collect();
                addrs.sort();
                addrs.dedup();
                let mut cache = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
                if cache.get(&key) != Some(&addrs) {
                    tracing::info!(backend = %key, addresses = ?addrs, "backend resolved");
                }
                cache.insert(key, addrs.clone());
                addrs
            }
            Err(e) => {
                let cache = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
                let last = cache.get(&key).cloned().unwrap_or_default();
                tracing::warn!(backend = %key, error = %e, kept = ?last, "backend name did not resolve");
                last
            }
        }
    }
}

/// Discovery handle given to Pingora (which wants a `Box`), sharing the list with reload.
pub struct Discovery(pub Arc<ConfiguredBackends>);

#[async_trait]
impl ServiceDiscovery for Discovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let me = &self.0;
        let list = me.list.load_full();
        let mut set = BTreeSet::new();
        let mut labels = HashSet::new();
        for configured in list.iter() {
            let label = configured.label();
            let metrics = me.metrics.backend(&label);
            let info = Arc::new(BackendInfo {
                header_value: HeaderValue::from_str(&label)
                    .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
                label: Arc::from(label.as_str()),
                metrics,
            });
            for addr in me.resolve(configured).await {
                let mut backend = Backend {
                    addr: pingora::protocols::l4::socket::SocketAddr::Inet(addr),
                    weight: 1,
                    ext: Default::default(),
                };
                backend.ext.insert(info.clone());
                set.insert(backend);
            }
            labels.insert(label);
        }
        let mut previous = me.labels.lock().unwrap_or_else(|p| p.into_inner());
        for gone in previous.difference(&labels) {
            me.metrics.forget_backend(gone);
        }
        *previous = labels;
        Ok((set, HashMap::new()))
    }
}

/// Logs health changes once per change and drives `gateway_backend_up`.
struct HealthObserver;

#[async_trait]
impl HealthObserve for HealthObserver {
    async fn observe(&self, target: &Backend, healthy: bool) {
        let Some(info) = info(target) else { return };
        info.metrics.up.set(i64::from(healthy));
        if healthy {
            tracing::info!(backend = %info.label, address = %target.addr, "backend is healthy again");
        } else {
            tracing::warn!(backend = %info.label, address = %target.addr, "backend is unhealthy; taken out of rotation");
        }
    }
}

/// The balancer with its health check; run it as a background service.
pub fn build_balancer(
    backends: Arc<ConfiguredBackends>,
    health: &HealthCheckSettings,
) -> LoadBalancer<RoundRobin> {
    let mut lb =
        LoadBalancer::<RoundRobin>::from_backends(Backends::new(Box::new(Discovery(backends))));
    lb.set_health_check(health_check(health));
    lb.health_check_frequency = Some(health.interval);
    lb.update_frequency = Some(DISCOVERY_INTERVAL);
    lb.parallel_health_check = true;
    lb
}

fn health_check(settings: &HealthCheckSettings) -> Box<dyn HealthCheck + Send + Sync + 'static> {
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
    hc.health_changed_callback = Some(Box::new(HealthObserver));
    Box::new(hc)
}
