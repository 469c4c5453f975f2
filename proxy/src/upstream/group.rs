//! One upstream group at run time.
//!
//! [`GroupCore`] is what must survive a reload for health state and pooled connections to
//! survive: the discovery list, Pingora's balancer with its health check, and the loop that runs
//! them. [`Group`] is what a config snapshot sees: a core, the group's settings (timeouts,
//! retries) and its selection policy, all of which a reload may change around the same core.

use std::net::SocketAddr;
use std::sync::Arc;

use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::prelude::HttpPeer;
use pingora::upstreams::peer::HttpUpstreamRequestPolicy;
use tokio::sync::watch;

use pingora::protocols::tls::CaType;
use pingora::utils::tls::{parse_x509, WrappedX509};

use crate::config::{
    Balance, GroupSettings, HashKey, HealthCheckSettings, OutlierSettings, UpstreamTls,
};
use crate::observe::metrics::Metrics;
use crate::upstream::consistent_hash::ConsistentHash;
use crate::upstream::discovery::{ConfiguredBackends, Resolve};
use crate::upstream::health::{build_balancer, TlsPeer};
use crate::upstream::least_requests::LeastRequests;
use crate::upstream::load::GroupLoad;
use crate::upstream::outlier::{Ejections, Members, Verdict};
use crate::upstream::round_robin::{Pick, SmoothRoundRobin};
use crate::upstream::service::UpstreamService;
use crate::upstream::BackendInfo;

/// The long-lived part of a group: backends, health, and the loop that keeps them current.
pub struct GroupCore {
    pub name: Arc<str>,
    pub backends: Arc<ConfiguredBackends>,
    pub lb: Arc<LoadBalancer<RoundRobin>>,
    /// The health check the balancer was built with (it cannot be changed in place), and the
    /// TLS its probes use.
    pub health: HealthCheckSettings,
    pub tls: Option<UpstreamTls>,
    /// The peers' TLS settings, the roots parsed once.
    pub tls_peer: Option<TlsPeer>,
    pub service: UpstreamService,
    /// Backends outlier detection took out, and its clock.
    pub ejections: Ejections,
    /// Requests in flight and in a budgeted retry.
    pub load: GroupLoad,
    retired: watch::Sender<bool>,
}

impl GroupCore {
    pub fn new(
        settings: &GroupSettings,
        metrics: Arc<Metrics>,
        resolver: Box<dyn Resolve>,
    ) -> Arc<Self> {
        let backends = ConfiguredBackends::new(
            settings.name.clone(),
            settings.backends.clone(),
            metrics,
            resolver,
        );
        let tls_peer = settings.tls.as_ref().map(tls_peer);
        let lb = Arc::new(build_balancer(
            backends.clone(),
            &settings.health_check,
            tls_peer.as_ref(),
        ));
        Arc::new(Self {
            name: settings.name.clone(),
            service: UpstreamService::new(lb.clone(), &settings.health_check),
            backends,
            lb,
            health: settings.health_check.clone(),
            tls: settings.tls.clone(),
            tls_peer,
            ejections: Ejections::default(),
            load: GroupLoad::default(),
            retired: watch::channel(false).0,
        })
    }

    /// Whether this core can carry `settings` after a reload: the same group with the same
    /// health check (its backend list is swapped in place).
    pub fn can_carry(&self, settings: &GroupSettings) -> bool {
        *self.name == *settings.name
            && self.health == settings.health_check
            && self.tls == settings.tls
    }

    /// Stops the group's discovery and health checks and drops its backends' series. Requests
    /// still running with an older snapshot keep using its last backend set.
    pub fn retire(&self) {
        self.retired.send_replace(true);
        self.backends.retire();
    }

    /// Resolves once [`retire`](Self::retire) was called.
    pub fn retired(&self) -> watch::Receiver<bool> {
        self.retired.subscribe()
    }

    /// Records one attempt's outcome at `backend` for outlier detection. An ejection is logged,
    /// shown in `gateway_backend_ejected`, and undone by a timer task when its time is up.
    pub fn record_outcome(
        self: &Arc<Self>,
        settings: &OutlierSettings,
        backend: &Arc<BackendInfo>,
        ok: bool,
    ) {
        if settings.consecutive_failures == 0 {
            return;
        }
        let members = || Members {
            total: self.backends.list().len(),
            ejected: self.backends.ejected_members(),
        };
        match self.ejections.record(settings, backend, ok, members) {
            Verdict::Kept => {}
            Verdict::CapReached => tracing::debug!(
                upstream = %self.name,
                backend = %backend.label,
                failures = backend.outlier.consecutive(),
                ejected = self.backends.ejected_members(),
                "backend keeps failing but stays: outlier.max_ejected_percent reached"
            ),
            Verdict::Ejected(time) => {
                backend.metrics.ejected.set(1);
                backend.metrics.ejections.inc();
                tracing::warn!(
                    upstream = %self.name,
                    backend = %backend.label,
                    failures = backend.outlier.consecutive(),
                    seconds = time.as_secs(),
                    "backend ejected: consecutive failures"
                );
                let (core, backend) = (self.clone(), backend.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(time).await;
                    if core.ejections.readmit(&backend) {
                        backend.metrics.ejected.set(0);
                        tracing::info!(
                            upstream = %core.name,
                            backend = %backend.label,
                            "backend back from ejection (one more failure ejects it again)"
                        );
                    }
                });
            }
        }
    }

    /// Labels of the backends ejected now.
    pub fn ejected_labels(&self) -> Vec<Arc<str>> {
        if !self.ejections.any() {
            return Vec::new();
        }
        let mut labels: Vec<Arc<str>> = self
            .lb
            .backends()
            .get_backend()
            .iter()
            .filter_map(crate::upstream::info)
            .filter(|i| i.outlier.is_ejected())
            .map(|i| i.label.clone())
            .collect();
        labels.sort();
        labels.dedup();
        labels
    }

    /// Backends (addresses) that are enabled and pass their health check, and all of them.
    pub fn health_counts(&self) -> (usize, usize) {
        let backends = self.lb.backends();
        let set = backends.get_backend();
        (set.iter().filter(|b| backends.ready(b)).count(), set.len())
    }
}

/// How a group chooses a backend, with the state that takes.
pub enum Selector {
    RoundRobin(SmoothRoundRobin),
    LeastRequests(LeastRequests),
    Hash(ConsistentHash, HashKey),
}

impl Selector {
    pub fn new(balance: &Balance) -> Self {
        match balance {
            Balance::RoundRobin => Selector::RoundRobin(SmoothRoundRobin::default()),
            Balance::LeastRequests => Selector::LeastRequests(LeastRequests::default()),
            Balance::Hash(key) => Selector::Hash(ConsistentHash::default(), key.clone()),
        }
    }

    fn same_policy(&self, balance: &Balance) -> bool {
        match (self, balance) {
            (Selector::RoundRobin(_), Balance::RoundRobin) => true,
            (Selector::LeastRequests(_), Balance::LeastRequests) => true,
            (Selector::Hash(_, k), Balance::Hash(b)) => k == b,
            _ => false,
        }
    }
}

/// A group as one config snapshot sees it.
pub struct Group {
    pub core: Arc<GroupCore>,
    pub settings: Arc<GroupSettings>,
    pub selector: Arc<Selector>,
}

impl Group {
    /// The group for `settings` on `core`, keeping `previous`'s selection state (round-robin
    /// position, hash ring) when the policy did not change.
    pub fn new(
        core: Arc<GroupCore>,
        settings: Arc<GroupSettings>,
        previous: Option<&Group>,
    ) -> Self {
        let selector = previous
            .filter(|p| Arc::ptr_eq(&p.core, &core) && p.selector.same_policy(&settings.balance))
            .map(|p| p.selector.clone())
            .unwrap_or_else(|| Arc::new(Selector::new(&settings.balance)));
        Self {
            core,
            settings,
            selector,
        }
    }

    /// Whether attempts must be counted per backend (only `least_requests` reads the count).
    pub fn counts_inflight(&self) -> bool {
        matches!(*self.selector, Selector::LeastRequests(_))
    }

    /// The hash key this group needs, if it hashes.
    pub fn hash_key(&self) -> Option<&HashKey> {
        match &*self.selector {
            Selector::Hash(_, key) => Some(key),
            _ => None,
        }
    }

    /// A healthy backend not in `tried`, by the group's policy; `key` is the hash key's bytes
    /// (only read by `hash` groups). Healthy: not in the group's published down set (which
    /// mirrors Pingora's health without hashing per check) and not ejected. When only ejected
    /// backends are left, one of them is picked: an ejected backend beats no backend.
    pub fn pick(&self, tried: &[SocketAddr], key: &[u8]) -> Option<Pick> {
        let members = self.core.lb.backends().get_backend();
        let down = self.core.backends.down_now();
        let up = |b: &pingora::lb::Backend| {
            down.is_empty() || b.addr.as_inet().is_some_and(|a| !down.contains(a))
        };
        if !self.core.ejections.any() {
            return self.pick_among(&members, up, tried, key);
        }
        self.pick_among(&members, |b| up(b) && !is_ejected(b), tried, key)
            .or_else(|| self.pick_among(&members, up, tried, key))
    }

    fn pick_among(
        &self,
        members: &Arc<std::collections::BTreeSet<pingora::lb::Backend>>,
        ready: impl Fn(&pingora::lb::Backend) -> bool,
        tried: &[SocketAddr],
        key: &[u8],
    ) -> Option<Pick> {
        match &*self.selector {
            Selector::RoundRobin(rr) => rr.pick(members, ready, tried),
            Selector::LeastRequests(lr) => lr.pick(members, ready, tried),
            Selector::Hash(ring, _) => ring.pick(members, ready, tried, key),
        }
    }

    /// Whether another attempt could go to a healthy, not ejected backend `tried` does not
    /// hold.
    pub fn untried_left(&self, tried: &[SocketAddr]) -> bool {
        let down = self.core.backends.down_now();
        let ejections = self.core.ejections.any();
        self.core.lb.backends().get_backend().iter().any(|b| {
            b.addr
                .as_inet()
                .is_some_and(|a| !down.contains(a) && !tried.contains(a))
                && !(ejections && is_ejected(b))
        })
    }

    /// The peer for one attempt at `addr`, with the group's timeouts. Writes are timed only
    /// when a body follows (`with_body`): a request header fits the socket buffer and is never
    /// left waiting, while each timed write costs a timer (about 1k instructions per request).
    pub fn peer(
        &self,
        addr: SocketAddr,
        backend: Option<&BackendInfo>,
        with_body: bool,
    ) -> HttpPeer {
        let s = &self.settings;
        let mut peer = match &self.core.tls_peer {
            None => HttpPeer::new(addr, false, String::new()),
            Some(tls) => {
                // Never empty: Pingora skips verification for a peer without a name.
                let sni = tls
                    .sni
                    .clone()
                    .or_else(|| backend.map(|b| b.host.to_string()))
                    .unwrap_or_else(|| addr.ip().to_string());
                let mut peer = HttpPeer::new(addr, true, sni);
                peer.options.ca = tls.ca.clone();
                peer
            }
        };
        peer.options.connection_timeout = Some(s.connect_timeout);
        peer.options.total_connection_timeout = Some(s.connect_timeout);
        peer.options.read_timeout = Some(s.read_timeout);
        peer.options.write_timeout = with_body.then_some(s.read_timeout);
        peer.options.idle_timeout = Some(s.idle_timeout);
        // The same rules, applied by `gateway::hop_by_hop` at a fraction of the cost.
        peer.options.http_upstream_request_policy = HttpUpstreamRequestPolicy::preserve();
        peer
    }
}

fn is_ejected(b: &pingora::lb::Backend) -> bool {
    crate::upstream::info(b).is_some_and(|i| i.outlier.is_ejected())
}

/// The peers' TLS settings of a group: its name and its roots, parsed once.
fn tls_peer(tls: &UpstreamTls) -> TlsPeer {
    let ca = tls.ca_der.as_ref().map(|ders| {
        let roots: Vec<WrappedX509> = ders
            .iter()
            .map(|der| WrappedX509::new(der.clone(), parse_x509))
            .collect();
        Arc::<CaType>::from(roots)
    });
    TlsPeer {
        sni: tls.sni.clone(),
        ca,
    }
}

/// The cores a new snapshot runs its groups on.
pub struct CorePlan {
    /// One per group of the new settings, in order.
    pub cores: Vec<Arc<GroupCore>>,
    /// Cores that did not exist before: their loops must be started.
    pub started: Vec<Arc<GroupCore>>,
    /// Cores of the previous snapshot that no group uses any more.
    pub retired: Vec<Arc<GroupCore>>,
}

/// Keeps each of `previous`'s cores that can carry its group's new settings (a changed backend
/// list is swapped in; discovery takes it up within a second), builds the others.
pub fn plan_cores(
    groups: &[Arc<GroupSettings>],
    previous: &[Group],
    metrics: &Arc<Metrics>,
    resolver: impl Fn() -> Box<dyn Resolve>,
) -> CorePlan {
    let mut started = Vec::new();
    let cores: Vec<Arc<GroupCore>> = groups
        .iter()
        .map(|s| match previous.iter().find(|g| g.core.can_carry(s)) {
            Some(g) => {
                if *g.core.backends.list() != s.backends {
                    g.core.backends.replace(s.backends.clone());
                }
                g.core.clone()
            }
            None => {
                let core = GroupCore::new(s, metrics.clone(), resolver());
                started.push(core.clone());
                core
            }
        })
        .collect();
    let retired = previous
        .iter()
        .map(|g| &g.core)
        .filter(|c| !cores.iter().any(|k| Arc::ptr_eq(k, c)))
        .cloned()
        .collect();
    CorePlan {
        cores,
        started,
        retired,
    }
}
