//! The HTTP health check of a group's backends, which drives `gateway_backend_up`, and the
//! Pingora balancer that holds the backend set and its health.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::lb::health_check::{HealthCheck, HealthObserve, HttpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::prelude::HttpPeer;
use pingora::protocols::tls::CaType;

use crate::config::HealthCheckSettings;
use crate::upstream::discovery::{info, ConfiguredBackends, Discovery};
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
/// [`UpstreamService`](crate::upstream::service::UpstreamService) (its frequencies stay
/// unset; that service schedules both tasks).
pub fn build_balancer(
    backends: Arc<ConfiguredBackends>,
    health: &HealthCheckSettings,
    tls: Option<&TlsPeer>,
) -> LoadBalancer<RoundRobin> {
    let observer = HealthObserver(backends.clone());
    let mut lb =
        LoadBalancer::<RoundRobin>::from_backends(Backends::new(Box::new(Discovery(backends))));
    lb.set_health_check(health_check(health, observer, tls));
    lb.parallel_health_check = true;
    lb
}

/// What a TLS group's peers need: the name to send and verify, and the roots.
#[derive(Clone)]
pub struct TlsPeer {
    /// `None`: each backend's own host.
    pub sni: Option<String>,
    pub ca: Option<Arc<CaType>>,
}

fn health_check(
    settings: &HealthCheckSettings,
    observer: HealthObserver,
    tls: Option<&TlsPeer>,
) -> Box<dyn HealthCheck + Send + Sync + 'static> {
    let mut hc = HttpHealthCheck::new("gateway-health-check", tls.is_some());
    if let Ok(uri) = settings.path.parse() {
        hc.req.set_uri(uri);
    }
    // One template serves every backend of the group: with a per-backend name (no `sni`) the
    // probe verifies the chain but not the name, which the requests themselves verify.
    let sni = tls.map_or(String::new(), |t| {
        t.sni
            .clone()
            .unwrap_or_else(|| "health-check.invalid".into())
    });
    let mut peer = HttpPeer::new("0.0.0.0:1", tls.is_some(), sni);
    if let Some(t) = tls {
        peer.options.ca = t.ca.clone();
        peer.options.verify_hostname = t.sni.is_some();
    }
    peer.options.connection_timeout = Some(settings.timeout);
    peer.options.read_timeout = Some(settings.timeout);
    peer.options.idle_timeout = Some(settings.interval * 3);
    hc.peer_template = peer;
    hc.reuse_connection = true;
    hc.health_changed_callback = Some(Box::new(observer));
    Box::new(hc)
}
