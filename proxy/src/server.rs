//! Assembles the Pingora server from validated settings: the proxy service on every listen
//! address, the balancer with its health checks, the admin listener, the reload and drain
//! watchers.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pingora::prelude::{background_service, Opt};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::listening::Service;

use crate::access_log::AccessLog;
use crate::admin::AdminApp;
use crate::config::Settings;
use crate::gateway::Gateway;
use crate::lifecycle::{DrainWatcher, SharedLogGuards};
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::state::Live;
use crate::upstream::{build_balancer, ConfiguredBackends, SystemResolver, UpstreamService};

/// Pingora's own bound on attempts per request; ours (`upstream.max_retries`, at most 15)
/// decides below it, so reloads can change it.
const PINGORA_MAX_ATTEMPTS: usize = 16;

/// How Pingora itself is run.
pub struct RunOptions {
    pub upgrade: bool,
    pub daemon: bool,
    /// Flushed by the drain watcher when it ends the process early.
    pub log_guards: SharedLogGuards,
    pub access_log: AccessLog,
}

/// The whole time in-flight requests get after SIGTERM.
fn drain_budget(settings: &Settings) -> Duration {
    let s = &settings.server;
    Duration::from_secs(s.grace_period_seconds + s.graceful_shutdown_timeout_seconds)
}

fn server_conf(settings: &Settings, daemon: bool) -> ServerConf {
    let s = &settings.server;
    ServerConf {
        version: 1,
        daemon,
        threads: s.threads,
        work_stealing: s.work_stealing,
        // Requests keep running through Pingora's grace period only (its runtime shutdown
        // drops tasks), so the whole budget goes there; DrainWatcher exits early when idle.
        grace_period_seconds: Some(drain_budget(settings).as_secs()),
        graceful_shutdown_timeout_seconds: Some(0),
        upgrade_sock: s.upgrade_sock.clone(),
        pid_file: s.pid_file.clone(),
        upstream_keepalive_pool_size: settings.upstream.keepalive_pool_size,
        max_retries: PINGORA_MAX_ATTEMPTS,
        ..Default::default()
    }
}

/// Builds the bootstrapped server with every service added, ready to run.
pub fn build(
    settings: Settings,
    config_path: &Path,
    run: RunOptions,
) -> Result<Server, Box<dyn std::error::Error>> {
    let opt = Opt {
        upgrade: run.upgrade,
        daemon: run.daemon,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), server_conf(&settings, run.daemon));
    server.bootstrap();

    let metrics = Arc::new(Metrics::new()?);
    let backends = ConfiguredBackends::new(
        settings.upstream.backends.clone(),
        metrics.clone(),
        Box::new(SystemResolver),
    );
    let lb = Arc::new(build_balancer(
        backends.clone(),
        &settings.upstream.health_check,
    ));
    let balancer = background_service(
        "upstream health and discovery",
        UpstreamService::new(lb.clone(), &settings.upstream.health_check),
    );

    let settings = Arc::new(settings);
    let live = Arc::new(ArcSwap::from_pointee(Live::new(settings.clone(), None)));
    let draining = Arc::new(AtomicBool::new(false));

    let gateway = Gateway::new(
        live.clone(),
        lb.clone(),
        metrics.clone(),
        run.access_log.clone(),
    );
    let mut proxy =
        pingora::proxy::http_proxy_service_with_name(&server.configuration, gateway, "gateway");
    for addr in &settings.server.listen {
        proxy.add_tcp(&addr.to_string());
    }

    let mut admin = Service::new(
        "admin".to_owned(),
        AdminApp {
            metrics: metrics.clone(),
            lb,
            draining: draining.clone(),
            live: live.clone(),
        },
    );
    admin.add_tcp(&settings.admin.listen.to_string());
    admin.threads = Some(1);

    let reloader = background_service(
        "config reload",
        Reloader {
            path: config_path.to_path_buf(),
            live,
            backends,
            metrics: metrics.clone(),
        },
    );
    let drain = background_service(
        "drain watcher",
        DrainWatcher {
            draining,
            metrics: metrics.clone(),
            budget: drain_budget(&settings),
            log_guards: run.log_guards,
            access_log: run.access_log,
        },
    );

    let balancer = server.add_service(balancer);
    // No request before the first discovery and health round (see UpstreamService).
    server.add_service(proxy).add_dependency(&balancer);
    server.add_service(admin);
    server.add_service(reloader);
    server.add_service(drain);
    Ok(server)
}
