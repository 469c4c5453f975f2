//! Assembles the Pingora server from validated settings: the proxy service on every listen
//! address (started once the first discovery and health round are done), the balancer with its
//! health checks, the admin listener, the reload and drain watchers, and the shutdown signals.

use std::net::TcpListener as StdListener;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pingora::listeners::ListenerConfig;
use pingora::prelude::{background_service, Opt};
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;

use crate::config::Settings;
use crate::gateway::downstream::{ConnectionBounds, DownstreamApp};
use crate::gateway::live::Live;
use crate::gateway::Gateway;
use crate::limits::shared_store::{SharedStore, StoreConnector, StoreMetrics};
use crate::observe::access_log::AccessLog;
use crate::observe::metrics::Metrics;
use crate::ops::admin::{AdminApp, AdminServer};
use crate::ops::lifecycle::{DrainWatcher, SharedLogGuards};
use crate::ops::reload::Reloader;
use crate::ops::signals::{PendingReload, ShutdownSignals};
use crate::tls::terminator::TlsTerminator;
use crate::upstream::discovery::SystemResolver;
use crate::upstream::group::plan_cores;
use crate::upstream::supervisor::GroupSupervisor;

/// Pingora's own bound on attempts per request; ours (`upstream.max_retries`, at most 15)
/// decides below it, so reloads can change it.
const PINGORA_MAX_ATTEMPTS: usize = 16;

/// How Pingora itself is run.
pub struct RunOptions {
    pub upgrade: bool,
    /// The admin listener, bound before anything started.
    pub admin_listener: StdListener,
    /// A SIGHUP caught before the reloader runs.
    pub pending_reload: PendingReload,
    /// Flushed by the drain watcher when it ends the process early.
    pub log_guards: SharedLogGuards,
    pub access_log: AccessLog,
}

/// The whole time in-flight requests get after SIGTERM.
fn drain_budget(settings: &Settings) -> Duration {
    let s = &settings.server;
    Duration::from_secs(s.grace_period_seconds + s.graceful_shutdown_timeout_seconds)
}

fn server_conf(settings: &Settings) -> ServerConf {
    let s = &settings.server;
    ServerConf {
        version: 1,
        // `-d` forks in main, before any thread exists (Pingora would fork after its own and
        // our threads started, and they would not exist in the child).
        daemon: false,
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
        // Timeouts of a second or more (upstream reads, pooled connections' idle bound) on
        // tokio's timer wheel rather than Pingora's shared timer map: registering one there
        // costs ~0.9k instructions (a lock, a BTreeMap insert, a clock read) against ~0.5k for
        // tokio's, two or three per request, and a cancelled one is removed at once instead of
        // staying in the map until its deadline. Sub-second timeouts stay on Pingora's.
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        ..Default::default()
    }
}

/// Builds the bootstrapped server with every service added, and the signals to run it with.
pub fn build(
    settings: Settings,
    config_path: &Path,
    run: RunOptions,
) -> Result<(Server, RunArgs), Box<dyn std::error::Error>> {
    let opt = Opt {
        upgrade: run.upgrade,
        daemon: false,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), server_conf(&settings));
    server.bootstrap();

    let metrics = Arc::new(Metrics::new()?);
    let plan = plan_cores(&settings.groups, &[], &metrics, || Box::new(SystemResolver));
    let (supervisor, group_starter) = GroupSupervisor::new(plan.started);
    let groups = background_service("upstream groups: discovery and health checks", supervisor);

    let store = settings.rate_limit.redis.clone().map(|redis| {
        SharedStore::new(
            redis,
            StoreMetrics {
                errors: metrics.store_errors.clone(),
                seconds: metrics.store_seconds.clone(),
                fallbacks: metrics.store_fallbacks.clone(),
            },
        )
    });
    let settings = Arc::new(settings);
    let live = Arc::new(ArcSwap::from_pointee(Live::new(
        settings.clone(),
        plan.cores,
        &metrics,
        store.as_ref(),
        None,
    )));
    let draining = Arc::new(AtomicBool::new(false));

    let gateway = Gateway::new(
        live.clone(),
        metrics.clone(),
        run.access_log.clone(),
        settings.server.send_timeout,
    );
    // Certificates were checked before anything started (load_and_check_config).
    let tls = match &settings.tls {
        Some(t) => Some(Arc::new(TlsTerminator::new(t)?.0)),
        None => None,
    };
    let http = pingora::proxy::http_proxy(&server.configuration, gateway);
    let downstream = DownstreamApp::new(
        http,
        ConnectionBounds::from_settings(&settings.server),
        metrics.clone(),
        live.clone(),
    );
    let tls_app = tls.as_ref().map(|t| downstream.with_tls(t.clone()));
    let mut proxy = Service::new("gateway".to_owned(), downstream);
    for addr in &settings.server.listen {
        proxy.add_listener(unbuffered_tcp(addr));
    }

    let admin = background_service(
        "admin",
        AdminServer::new(
            run.admin_listener,
            AdminApp {
                metrics: metrics.clone(),
                draining: draining.clone(),
                live: live.clone(),
                listen_probe: crate::ops::admin::probe_address(settings.server.listen[0]),
                store: store.clone(),
                accepting: AtomicBool::new(false),
            },
        ),
    );

    let reloader = background_service(
        "config reload",
        Reloader {
            path: config_path.to_path_buf(),
            live,
            metrics: metrics.clone(),
            groups: group_starter,
            store: store.clone(),
            tls: tls.clone(),
            pending: run.pending_reload,
        },
    );
    let drain = background_service(
        "drain watcher",
        DrainWatcher {
            draining: draining.clone(),
            metrics: metrics.clone(),
            budget: drain_budget(&settings),
            log_guards: run.log_guards,
            access_log: run.access_log,
        },
    );

    server.add_service(admin);
    let upstream = server.add_service(groups);
    // No request before the first discovery and health round (see UpstreamService).
    let proxy = server.add_service(proxy);
    proxy.add_dependency(&upstream);
    if let (Some(app), Some(t)) = (tls_app, &settings.tls) {
        // TLS listeners are plain TCP to Pingora: the handshake is the app's (see tls/).
        let mut service = Service::new("gateway tls".to_owned(), app);
        for addr in &t.listen {
            // Buffered: the TLS layer reads records in small pieces.
            service.add_tcp(&addr.to_string());
        }
        let service = server.add_service(service);
        service.add_dependency(&upstream);
    }
    server.add_service(reloader);
    if let Some(store) = &store {
        server.add_service(background_service(
            "rate-limit store connection",
            StoreConnector(store.clone()),
        ));
    }
    server.add_service(drain);
    let signals = ShutdownSignals {
        draining,
        drain_delay: settings.server.drain_delay,
    };
    Ok((
        server,
        RunArgs {
            shutdown_signal: Box::new(signals),
        },
    ))
}

/// A plain listener without Pingora's 64 KiB read buffer per connection: the HTTP/1 session
/// reads into its own header buffer anyway, and the buffer, zero-filled when the connection is
/// accepted, was most of an idle kept-alive connection's memory (107 KB per connection with
/// it, see loadtest/results/memory.md).
fn unbuffered_tcp(addr: &std::net::SocketAddr) -> ListenerConfig {
    ListenerConfig::tcp(addr.to_string()).l4_buffer(L4BufferSettings {
        read: Some(0),
        write: None,
    })
}
