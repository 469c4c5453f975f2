//! SIGHUP reload: read and validate the whole file, then swap it in for new requests.
//!
//! Pingora does not handle SIGHUP (its default action would kill the process). A bad file is
//! logged and counted and the running config stays. Settings that bind sockets or threads at
//! start cannot change on reload; a reload that changes them says so.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};

use futures_util::future::join_all;

use crate::config::{
    load_config, load_upstream_roots, BackendAddr, GroupSettings, RouteSettings, Settings,
};
use crate::gateway::live::{Live, LiveState};
use crate::limits::shared_store::SharedStore;
use crate::observe::metrics::Metrics;
use crate::ops::signals::PendingReload;
use crate::tls::terminator::TlsTerminator;
use crate::upstream::discovery::SystemResolver;
use crate::upstream::group::plan_cores;
use crate::upstream::supervisor::GroupStarter;

pub struct Reloader {
    pub path: PathBuf,
    pub live: LiveState,
    pub metrics: Arc<Metrics>,
    /// Starts the loops of groups a reload adds.
    pub groups: GroupStarter,
    /// The shared rate-limit store made at start (its settings need a restart to change).
    pub store: Option<Arc<SharedStore>>,
    /// The TLS listeners' certificates, read again on every reload.
    pub tls: Option<Arc<TlsTerminator>>,
    /// SIGHUPs caught since `main` began, before this service listened.
    pub pending: PendingReload,
}

impl Reloader {
    /// Loads the file and applies it, or keeps the running config.
    pub async fn reload(&self) {
        let path = self.path.clone();
        let tls = self.tls.clone();
        // Files are read off the runtime: the config, then the certificates, which are swapped
        // in only when both are good (a bad certificate keeps the running config and the old
        // certificates).
        let loaded = tokio::task::spawn_blocking(move || {
            let mut settings = load_config(&path).map_err(|e| e.to_string())?;
            load_upstream_roots(&mut settings)?;
            let warnings = match (&tls, &settings.tls) {
                (Some(terminator), Some(t)) => terminator.reload(t)?,
                _ => Vec::new(),
            };
            Ok::<_, String>((settings, warnings))
        })
        .await;
        match loaded {
            Ok(Ok((settings, warnings))) => {
                for w in warnings {
                    tracing::warn!("{w}");
                }
                self.apply(settings).await;
                self.metrics.count_reload(true);
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "config reload rejected; the running config stays");
                self.metrics.count_reload(false);
            }
            Err(e) => {
                tracing::error!(error = %e, "config reload failed; the running config stays");
                self.metrics.count_reload(false);
            }
        }
    }

    /// Swaps `new` in: groups that can keep their core keep it (health state, pooled
    /// connections), new groups finish their first discovery and health round first, removed
    /// groups stop.
    async fn apply(&self, new: Settings) {
        let old = self.live.load_full();
        let changes = describe_changes(&old.settings, &new);
        let plan = plan_cores(&new.groups, &old.groups, &self.metrics, || {
            Box::new(SystemResolver)
        });
        join_all(
            plan.started
                .iter()
                .map(|core| self.groups.start(core.clone())),
        )
        .await;
        let live = Live::new(
            Arc::new(new),
            plan.cores,
            &self.metrics,
            self.store.as_ref(),
            Some(&old),
        );
        self.live.store(Arc::new(live));
        for core in &plan.retired {
            core.retire();
        }
        if changes.is_empty() {
            tracing::info!("config reloaded: nothing changed");
        } else {
            tracing::info!(changes = %changes.join("; "), "config reloaded");
        }
    }
}

/// Human-readable list of what changed, with a warning for what needs a restart.
fn describe_changes(old: &Settings, new: &Settings) -> Vec<String> {
    let mut out = Vec::new();
    let named =
        |list: &[Arc<GroupSettings>], name: &str| list.iter().find(|g| *g.name == *name).cloned();
    for n in &new.groups {
        match named(&old.groups, &n.name) {
            None => out.push(format!("upstream group \"{}\" added", n.name)),
            Some(o) if o != *n => {
                let mut what = Vec::new();
                if o.backends != n.backends {
                    let label = |b: &BackendAddr| format!("{} (weight {})", b.label(), b.weight);
                    let added: Vec<String> = n
                        .backends
                        .iter()
                        .filter(|b| !o.backends.contains(b))
                        .map(label)
                        .collect();
                    let removed: Vec<String> = o
                        .backends
                        .iter()
                        .filter(|b| !n.backends.contains(b))
                        .map(label)
                        .collect();
                    what.push(format!("backends added {added:?}, removed {removed:?}"));
                }
                if o.balance != n.balance {
                    what.push(format!("balance {:?}", n.balance));
                }
                if o.health_check != n.health_check {
                    what.push(
                        "health check changed (checks restart, health state starts afresh)".into(),
                    );
                }
                if (
                    o.connect_timeout,
                    o.read_timeout,
                    o.idle_timeout,
                    o.max_retries,
                ) != (
                    n.connect_timeout,
                    n.read_timeout,
                    n.idle_timeout,
                    n.max_retries,
                ) {
                    what.push("timeouts/retries updated".into());
                }
                out.push(format!(
                    "upstream group \"{}\": {}",
                    n.name,
                    what.join(", ")
                ));
            }
            Some(_) => {}
        }
    }
    for o in &old.groups {
        if named(&new.groups, &o.name).is_none() {
            out.push(format!("upstream group \"{}\" removed", o.name));
        }
    }
    if old.routes != new.routes {
        let names = |r: &[RouteSettings]| r.iter().map(|r| r.name.to_string()).collect::<Vec<_>>();
        out.push(format!("routes now {:?}", names(&new.routes)));
    }
    if old.rate_limit != new.rate_limit {
        out.push("rate_limit updated".into());
    }
    if old.headers != new.headers {
        out.push("headers updated".into());
    }
    if old.log.access_log != new.log.access_log {
        out.push(format!("log.access_log = {}", new.log.access_log));
    }
    let fixed = [
        ("server", old.server != new.server),
        ("admin.listen", old.admin != new.admin),
        (
            "tls.listen (certificates, min_version and http2 are reloaded)",
            old.tls.as_ref().map(|t| &t.listen) != new.tls.as_ref().map(|t| &t.listen),
        ),
        (
            "log.level/log.file",
            (&old.log.level, &old.log.file) != (&new.log.level, &new.log.file),
        ),
        (
            "rate_limit.store/rate_limit.redis",
            old.rate_limit.redis != new.rate_limit.redis,
        ),
        (
            "upstream.keepalive_pool_size",
            old.upstream.keepalive_pool_size != new.upstream.keepalive_pool_size,
        ),
    ];
    for (key, changed) in fixed {
        if changed {
            tracing::warn!(key, "changed in the file but cannot change on reload; restart or upgrade (-u) to apply it");
            out.push(format!("{key} NOT applied (needs restart)"));
        }
    }
    out
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; reload disabled");
                return;
            }
        };
        if self.pending.take() {
            tracing::info!(path = %self.path.display(), "SIGHUP arrived during start-up: reloading config now");
            self.reload().await;
        }
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    self.pending.take();
                    tracing::info!(path = %self.path.display(), "SIGHUP: reloading config");
                    self.reload().await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
