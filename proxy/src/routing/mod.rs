//! Which route a request takes: host, path prefix and method, compiled once per config.
//!
//! Precedence (the contract's): the most specific host (exact, then the longest `*.suffix`, then
//! routes without a host), then the longest `path_prefix`, then file order. A route whose host
//! matches but whose prefix or methods do not is passed over for the next candidate, so a
//! host-less catch-all still catches what a host's own routes leave.

mod host;
mod methods;

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderValue, Method};

use crate::config::{ConfiguredHeader, HostMatch, RouteSettings};
use crate::limits::quota::Quota;
use crate::observe::metrics::RouteMetrics;
pub use host::{host_buffer, host_key};
use methods::MethodSet;

/// A compiled route.
pub struct Route {
    pub name: Arc<str>,
    /// Index of its group in the snapshot's groups.
    pub group: usize,
    pub prefix: Box<str>,
    /// `Some` when `strip_prefix` is set: the prefix as sent in `X-Forwarded-Prefix`.
    pub forwarded_prefix: Option<HeaderValue>,
    methods: Option<MethodSet>,
    /// `None`: the global `[rate_limit]` applies.
    pub quota: Option<Arc<Quota>>,
    pub request_headers: Vec<ConfiguredHeader>,
    pub response_headers: Vec<ConfiguredHeader>,
    pub metrics: Arc<RouteMetrics>,
}

impl Route {
    pub fn new(
        settings: &RouteSettings,
        group: usize,
        quota: Option<Arc<Quota>>,
        metrics: Arc<RouteMetrics>,
    ) -> Self {
        let forwarded_prefix = settings.strip_prefix.then(|| {
            let trimmed = settings.path_prefix.trim_end_matches('/');
            HeaderValue::from_str(if trimmed.is_empty() { "/" } else { trimmed })
                .unwrap_or_else(|_| HeaderValue::from_static("/"))
        });
        Self {
            name: settings.name.clone(),
            group,
            prefix: settings.path_prefix.clone().into_boxed_str(),
            forwarded_prefix,
            methods: settings.methods.as_deref().map(MethodSet::new),
            quota,
            request_headers: settings.request_headers.clone(),
            response_headers: settings.response_headers.clone(),
            metrics,
        }
    }

    fn takes_method(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|m| m.contains(method))
    }

    /// With `strip_prefix`: the path (and query) to send upstream, the prefix dropped and a
    /// leading `/` kept (`/api/orders?x` → `/orders?x`, `/api` → `/`).
    pub fn stripped_path(&self, path_and_query: &str) -> Option<String> {
        self.forwarded_prefix.as_ref()?;
        let rest = path_and_query.strip_prefix(&*self.prefix)?;
        let rest = rest.strip_prefix('/').unwrap_or(rest);
        let mut out = String::with_capacity(rest.len() + 1);
        out.push('/');
        out.push_str(rest);
        Some(out)
    }
}

/// Routes to try, in order.
type Candidates = Box<[Candidate]>;

/// A route in a candidate list, with its prefix's first 8 bytes packed into a word: most
/// candidates are ruled out by one masked compare instead of a `memcmp` call (50 routes with
/// the hit on the last cost about 1.9k instructions per request with `starts_with`).
struct Candidate {
    route: u16,
    head: u64,
    mask: u64,
    /// The prefix's length; beyond 8 bytes the rest is compared as bytes.
    len: usize,
}

impl Candidate {
    fn new(route: u16, prefix: &str) -> Self {
        let n = prefix.len().min(8);
        Self {
            route,
            head: head(prefix.as_bytes()),
            mask: if n == 8 {
                u64::MAX
            } else {
                (1u64 << (8 * n)) - 1
            },
            len: prefix.len(),
        }
    }

    /// Whether `path` (whose [`head`] is `path_head`) starts with the prefix of `routes[route]`.
    fn prefix_of(&self, path: &[u8], path_head: u64, routes: &[Route]) -> bool {
        path.len() >= self.len
            && path_head & self.mask == self.head
            && (self.len <= 8
                || routes
                    .get(self.route as usize)
                    .is_some_and(|r| path[8..self.len] == r.prefix.as_bytes()[8..]))
    }
}

/// The first 8 bytes of `bytes` (zero-padded), little-endian.
fn head(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    let n = bytes.len().min(8);
    word[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(word)
}

/// Routes indexed by host; each candidate list is ordered by prefix length, then file order.
pub struct Router {
    routes: Box<[Route]>,
    exact: HashMap<Box<str>, Candidates>,
    /// Longest suffix first.
    wildcard: Box<[(Box<str>, Candidates)]>,
    any: Candidates,
}

impl Router {
    /// Compiles `routes` (in file order) with the hosts they were configured for.
    pub fn new(routes: Vec<(Route, HostMatch)>) -> Self {
        let mut exact: HashMap<Box<str>, Vec<u16>> = HashMap::new();
        let mut wildcard: HashMap<Box<str>, Vec<u16>> = HashMap::new();
        let mut any = Vec::new();
        let mut compiled = Vec::with_capacity(routes.len());
        for (i, (route, host)) in routes.into_iter().enumerate() {
            // Validation caps the number of routes well below u16::MAX.
            let i = i as u16;
            match host {
                HostMatch::Exact(h) => exact.entry(h.into()).or_default().push(i),
                HostMatch::Suffix(s) => wildcard.entry(s.into()).or_default().push(i),
                HostMatch::Any => any.push(i),
            }
            compiled.push(route);
        }
        let order = |list: Vec<u16>| -> Candidates {
            let mut list = list;
            // Stable: equal lengths keep file order.
            list.sort_by_key(|&i| std::cmp::Reverse(compiled[i as usize].prefix.len()));
            list.into_iter()
                .map(|i| Candidate::new(i, &compiled[i as usize].prefix))
                .collect()
        };
        let exact = exact.into_iter().map(|(h, l)| (h, order(l))).collect();
        let mut wildcard: Vec<(Box<str>, Candidates)> =
            wildcard.into_iter().map(|(s, l)| (s, order(l))).collect();
        wildcard.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        let any = order(any);
        Self {
            routes: compiled.into(),
            exact,
            wildcard: wildcard.into(),
            any,
        }
    }

    /// The route for a request to `host` (lower case, no port: see [`host_key`]), `path` and
    /// `method`. Allocates nothing.
    pub fn find(&self, host: Option<&str>, path: &str, method: &Method) -> Option<usize> {
        let path = path.as_bytes();
        let path_head = head(path);
        let first = |list: &[Candidate]| {
            list.iter()
                .find(|c| {
                    c.prefix_of(path, path_head, &self.routes)
                        && self.routes[c.route as usize].takes_method(method)
                })
                .map(|c| c.route as usize)
        };
        if let Some(host) = host {
            if !self.exact.is_empty() {
                if let Some(hit) = self.exact.get(host).and_then(|l| first(l)) {
                    return Some(hit);
                }
            }
            for (suffix, list) in self.wildcard.iter() {
                if host.len() > suffix.len() && host.ends_with(&**suffix) {
                    if let Some(hit) = first(list) {
                        return Some(hit);
                    }
                }
            }
        }
        first(&self.any)
    }

    /// Whether any route names a host (else [`find`](Self::find) needs none).
    pub fn routes_by_host(&self) -> bool {
        !self.exact.is_empty() || !self.wildcard.is_empty()
    }

    pub fn route(&self, i: usize) -> Option<&Route> {
        self.routes.get(i)
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

#[cfg(test)]
mod tests;
