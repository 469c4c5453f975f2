//! The reloadable part of the gateway, swapped as one: settings, upstream groups, the compiled
//! routes and the quotas built from them. A request holds the snapshot it started with.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{QuotaKey, RouteSettings, Settings, DEFAULT_GROUP};
use crate::limits::quota::{limits, Numbers, Quota};
use crate::limits::shared_store::SharedStore;
use crate::observe::metrics::Metrics;
use crate::routing::{Route, Router};
use crate::upstream::group::{Group, GroupCore};

/// The name of the route that takes everything when no `[[routes]]` are configured, and of the
/// global rate-limit policy.
pub const DEFAULT_ROUTE: &str = "default";

/// One consistent snapshot.
pub struct Live {
    pub settings: Arc<Settings>,
    /// In `settings.groups` order; routes refer to them by index.
    pub groups: Vec<Group>,
    pub router: Router,
    /// `[rate_limit]`: `None` when disabled (routes with their own quota still have it).
    pub global_quota: Option<Arc<Quota>>,
}

impl Live {
    /// The snapshot for `settings`, with `cores[i]` running `settings.groups[i]`. What did not
    /// change is kept from `previous`: limiters (and so every client's count) and selection
    /// state.
    pub fn new(
        settings: Arc<Settings>,
        cores: Vec<Arc<GroupCore>>,
        metrics: &Metrics,
        store: Option<&Arc<SharedStore>>,
        previous: Option<&Live>,
    ) -> Self {
        let groups: Vec<Group> = settings
            .groups
            .iter()
            .zip(cores)
            .map(|(s, core)| {
                let before =
                    previous.and_then(|p| p.groups.iter().find(|g| g.settings.name == s.name));
                Group::new(core, s.clone(), before)
            })
            .collect();

        let rl = &settings.rate_limit;
        let implicit;
        let routes: &[RouteSettings] = if settings.routes.is_empty() {
            implicit = [default_route()];
            &implicit
        } else {
            &settings.routes
        };
        let numbers = Arc::new(Numbers::for_limits(
            routes
                .iter()
                .filter_map(|r| r.rate_limit.as_ref())
                .map(|q| (q.requests.get(), q.window))
                .chain(rl.enabled.then(|| (rl.requests.get(), rl.window))),
        ));
        let global_quota = rl.enabled.then(|| {
            Arc::new(Quota::new(
                Arc::from(DEFAULT_ROUTE),
                limits(rl.requests.get(), rl.window, rl.max_clients),
                QuotaKey::ClientIp,
                numbers.clone(),
                store.cloned(),
                previous.and_then(|p| p.global_quota.as_deref()),
            ))
        });
        let compiled = routes
            .iter()
            .map(|r| {
                let group = groups
                    .iter()
                    .position(|g| g.settings.name == r.upstream)
                    .unwrap_or(0);
                let quota = r.rate_limit.as_ref().map(|q| {
                    let before = previous
                        .and_then(|p| p.router.routes().iter().find(|x| x.name == r.name))
                        .and_then(|x| x.quota.as_deref());
                    Arc::new(Quota::new(
                        r.name.clone(),
                        limits(q.requests.get(), q.window, rl.max_clients),
                        q.key.clone(),
                        numbers.clone(),
                        store.cloned(),
                        before,
                    ))
                });
                (
                    Route::new(r, group, quota, metrics.route(&r.name)),
                    r.host.clone(),
                )
            })
            .collect();
        Self {
            settings,
            groups,
            router: Router::new(compiled),
            global_quota,
        }
    }
}

/// The route everything takes when no `[[routes]]` are configured: the group `default`.
fn default_route() -> RouteSettings {
    RouteSettings {
        name: Arc::from(DEFAULT_ROUTE),
        host: crate::config::HostMatch::Any,
        path_prefix: "/".into(),
        methods: None,
        upstream: Arc::from(DEFAULT_GROUP),
        strip_prefix: false,
        rate_limit: None,
        request_headers: Vec::new(),
        response_headers: Vec::new(),
    }
}

/// Shared handle to the current snapshot.
pub type LiveState = Arc<ArcSwap<Live>>;
