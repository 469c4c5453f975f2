//! The HTTP health check of a group's backends, which drives `gateway_backend_up`, and the
//! Pingora balancer that holds the backend set and its health.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::lb::health_check::{HealthCheck, HealthObserve, HttpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::prelude::HttpPeer;

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
