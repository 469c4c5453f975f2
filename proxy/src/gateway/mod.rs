//! The proxy itself: Pingora's request phases, in the order they run.
//!
//! `request_filter` identifies and limits the client; `upstream_peer` picks a backend not yet
//! tried; `fail_to_connect` / `error_while_proxy` decide retries; the response filters add
//! headers; `fail_to_proxy` writes our JSON errors; `logging` records metrics and the access log.

pub mod downstream;
pub mod error_response;
pub mod header_case;
pub mod hop_by_hop;
pub mod live;
pub mod panic_guard;
pub mod preface;
pub mod proxy_headers;
pub mod request_ctx;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::modules::http::HttpModules;
use pingora::prelude::*;
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyWarnLogContext, Session};
use pingora::{ErrorSource, RetryType};
use pingora_limits::inflight::Inflight;

use crate::config::validate::NO_ROUTE;
use crate::config::HashKey;
use crate::limits::client_ip::{client_ip, in_any};
use crate::limits::sliding_window::{ClientKey, Decision};
use crate::observe::access_log::AccessLog;
use crate::observe::metrics::Metrics;
use crate::observe::metrics::RouteMetrics;
use crate::routing::{host_buffer, host_key};
use crate::upstream::retry::{self, RetryReason};
use crate::upstream::BackendInfo;
use downstream::ConnectionContext;
use error_response::{classify, write_error, CLIENT_STOPPED_READING, OVERLOADED};
use live::LiveState;
use proxy_headers::X_FORWARDED_FOR;
use request_ctx::{group_of, quota_of, AttemptGuard, InflightGuard, RequestCtx};

/// The gateway service: everything shared across requests.
pub struct Gateway {
    pub live: LiveState,
    pub metrics: Arc<Metrics>,
    /// Concurrent requests per client (approximate; only consulted when a cap is set).
    pub client_inflight: Inflight,
    pub access_log: AccessLog,
    /// Request metrics of requests no route matched.
    no_route: Arc<RouteMetrics>,
    /// `server.send_timeout_ms` (fixed for the process's life, as the other connection bounds).
    send_timeout: Duration,
}

impl Gateway {
    pub fn new(
        live: LiveState,
        metrics: Arc<Metrics>,
        access_log: AccessLog,
        send_timeout: Duration,
    ) -> Self {
        Self {
            live,
            no_route: metrics.route(&Arc::from(NO_ROUTE)),
            metrics,
            client_inflight: Inflight::new(),
            access_log,
            send_timeout,
        }
    }

    /// Whether the failed attempt is retried: the failure and the request allow it
    /// (`retryable`), the group's `retry.on` names `reason`, `max_retries` and its backends leave
    /// another attempt, and, when the failure may have cost the backend work (`budgeted`), the
    /// group's retry budget has room. A budgeted retry also sets the backoff before the next
    /// attempt. Counts and logs the decision.
    fn decide_retry(
        &self,
        ctx: &mut RequestCtx,
        reason: RetryReason,
        retryable: bool,
        budgeted: bool,
        cause: &dyn std::fmt::Display,
    ) -> bool {
        let Some(group) = group_of(&ctx.live, ctx.route) else {
            return false;
        };
        if !retryable
            || !reason.enabled(&group.settings.retry.on)
            || !retry::another_attempt(group, ctx.attempts, &ctx.tried)
        {
            return false;
        }
        let retry_settings = &group.settings.retry;
        if budgeted {
            if !ctx.retry_slot && !group.core.load.try_retry(retry_settings.budget_percent) {
                self.metrics
                    .retry_refused(&group.settings.name, reason.as_str());
                tracing::debug!(
                    request_id = ctx.request_id(),
                    upstream = %group.settings.name,
                    reason = reason.as_str(),
                    retrying = group.core.load.retrying(),
                    active = group.core.load.active(),
                    "retry budget spent; not retrying"
                );
                return false;
            }
            let base = retry_settings.backoff;
            ctx.retry_slot = true;
            ctx.budgeted_retries += 1;
            ctx.backoff = Some(retry::backoff(base, ctx.budgeted_retries, fastrand::f64()))
                .filter(|d| !d.is_zero());
        }
        self.metrics.retried(&group.settings.name, reason.as_str());
        if let Some(b) = &ctx.backend {
            b.metrics.retries.inc();
        }
        tracing::warn!(
            request_id = ctx.request_id(),
            route = ctx.route_name(),
            backend = ctx.backend_label(),
            attempt = ctx.attempts,
            reason = reason.as_str(),
            cause = %cause,
            "upstream attempt failed; retrying on another backend"
        );
        true
    }

    /// Feeds an attempt's outcome to the group's outlier detection.
    fn record_outcome(&self, ctx: &RequestCtx, ok: bool) {
        if let (Some(group), Some(backend)) = (ctx.group(), &ctx.backend) {
            group
                .core
                .record_outcome(&group.settings.outlier, backend, ok);
        }
    }

    /// Counts a failed upstream attempt in `gateway_upstream_errors_total`.
    fn count_upstream_error(&self, ctx: &RequestCtx, kind: &str) {
        let group = ctx.group().map_or("-", |g| &*g.settings.name);
        self.metrics
            .upstream_error(group, ctx.backend_label(), kind);
    }

    /// Answers 429 with the rate-limit headers and JSON body.
    async fn reject(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        key: ClientKey,
        why: &str,
    ) -> Result<bool> {
        self.metrics.rate_limited.inc();
        tracing::debug!(
            request_id = ctx.request_id(),
            route = ctx.route_name(),
            client = %key,
            why,
            "rate limited"
        );
        write_error(session, ctx, 429, "rate limited", true).await?;
        Ok(true)
    }

    /// Finds the route, identifies the client and applies the route's or the global quota;
    /// `Ok(true)` = answered (404, 429).
    async fn admit(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.inflight = Some(InflightGuard::new(&self.metrics.inflight));
        panic_guard::injected(session.req_header(), "request_filter");
        let peer: Option<IpAddr> = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.peer = peer;
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());

        // Field by field (no clone of the snapshot): `live` stays borrowed while the request's
        // other fields are filled in.
        let live = &ctx.live;
        let rl = &live.settings.rate_limit;
        ctx.peer_trusted =
            !rl.trusted_proxies.is_empty() && peer.is_some_and(|p| in_any(&rl.trusted_proxies, p));
        ctx.client = match peer {
            Some(peer) if ctx.peer_trusted => {
                let forwarded =
                    proxy_headers::joined_values(session.req_header(), &X_FORWARDED_FOR.key);
                Some(client_ip(peer, forwarded.as_deref(), &rl.trusted_proxies))
            }
            other => other,
        };

        // The answers that end the request here are boxed (`Box::pin`): they are rare, and
        // inline their futures would enlarge every request's state, copied whole as it moves.
        if !ctx.tls {
            if let Some(tls) = live.settings.tls.as_ref().filter(|t| t.redirect_http) {
                return Box::pin(redirect_to_https(session, ctx, tls.listen[0].port())).await;
            }
        }
        let req = session.req_header();
        let mut host_buf;
        // Only routes with a host need it: without any, no header lookup and no copy.
        let host = if live.router.routes_by_host() {
            host_buf = host_buffer();
            req.headers
                .get(http::header::HOST)
                .map(|h| h.as_bytes())
                .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()))
                .and_then(|raw| host_key(raw, &mut host_buf))
        } else {
            None
        };
        ctx.route = live.router.find(host, req.uri.path(), &req.method);
        if ctx.route.is_none() {
            tracing::debug!(request_id = ctx.request_id(), host = ?host, path = req.uri.path(), "no route");
            Box::pin(write_error(session, ctx, 404, "no route", false)).await?;
            return Ok(true);
        }

        let (Some(quota), Some(client)) = (quota_of(live, ctx.route), ctx.client) else {
            return Ok(false);
        };
        if in_any(&rl.exempt, client) {
            return Ok(false);
        }
        let key = quota.key_for(session.req_header(), client);
        let checked = quota.check(key, ctx.start).await;
        let Some(decision) = checked.decision else {
            return Ok(false); // the store failed and on_error = "allow"
        };
        ctx.rate = Some(decision);
        if !decision.allowed {
            return Box::pin(self.reject(session, ctx, key, "request budget spent")).await;
        }
        if rl.max_inflight_per_client > 0 {
            let (guard, count) = self.client_inflight.incr(key, 1);
            ctx.client_inflight = Some(guard);
            if count > rl.max_inflight_per_client as isize {
                // Refused requests use no budget; a slot frees up when one finishes.
                quota.refund(key, checked.shared);
                ctx.rate = Some(Decision {
                    allowed: false,
                    remaining: decision.remaining + 1,
                    retry_after_secs: 1,
                    ..decision
                });
                return Box::pin(self.reject(session, ctx, key, "too many concurrent requests"))
                    .await;
            }
        }
        Ok(false)
    }

    /// Picks a healthy backend of the route's group that this request has not tried yet, and
    /// builds its peer.
    fn pick_peer(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        with_body: bool,
    ) -> Result<Box<HttpPeer>> {
        ctx.attempts += 1;
        ctx.attempt = None;
        // Field by field: the group borrows `live` while `tried` and the rest change.
        let live = &ctx.live;
        let group = ctx
            .route
            .and_then(|i| live.router.route(i))
            .and_then(|r| live.groups.get(r.group));
        let Some(group) = group else {
            return Error::e_explain(HTTPStatus(503), "no upstream group");
        };
        if !ctx.in_group {
            if !group.core.load.enter(group.settings.max_requests) {
                self.metrics.overloaded(&group.settings.name);
                return Error::e_explain(HTTPStatus(503), OVERLOADED);
            }
            ctx.in_group = true;
        }
        let mut ip_buf = [0u8; 16];
        let key = match group.hash_key() {
            None => &[][..],
            Some(k) => balance_key(k, session.req_header(), ctx.client, &mut ip_buf),
        };
        let Some((addr, info)) = group.pick(&ctx.tried, key) else {
            return if ctx.tried.is_empty() {
                Error::e_explain(HTTPStatus(503), "no healthy backend")
            } else {
                Error::e_explain(HTTPStatus(502), "every backend tried failed")
            };
        };
        if group.counts_inflight() {
            ctx.attempt = info.clone().map(AttemptGuard::new);
        }
        ctx.backend = info;
        ctx.tried.push(addr);
        let peer = group.peer(addr, ctx.backend.as_deref(), with_body);
        Ok(Box::new(peer))
    }
}

/// `redirect_http`: 308 to the same host and path over HTTPS (the first TLS listener's port,
/// left out when it is 443).
async fn redirect_to_https(session: &mut Session, ctx: &RequestCtx, port: u16) -> Result<bool> {
    let req = session.req_header();
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("localhost");
    // The host without its port (an IPv6 literal keeps its brackets).
    let name = match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => host,
    };
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let location = if port == 443 {
        format!("https://{name}{path}")
    } else {
        format!("https://{name}:{port}{path}")
    };
    let mut resp = ResponseHeader::build(308, Some(4))?;
    resp.insert_header(http::header::LOCATION, location)?;
    resp.insert_header(http::header::CONTENT_LENGTH, "0")?;
    proxy_headers::add_downstream_headers(&mut resp, ctx, None)?;
    session.write_response_header(Box::new(resp), true).await?;
    Ok(true)
}

/// With the route's `strip_prefix`: the upstream request's path without the prefix (the
/// original stays in the access log; the prefix goes in `X-Forwarded-Prefix`).
fn strip_route_prefix(session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
    let req = session.req_header();
    let Some(path) = ctx
        .route()
        .and_then(|r| r.stripped_path(req.uri.path_and_query().map_or("/", |p| p.as_str())))
    else {
        return Ok(());
    };
    let uri = http::Uri::builder()
        .path_and_query(path)
        .build()
        .or_err(InvalidHTTPHeader, "path after strip_prefix")?;
    ctx.original_path = Some(req.uri.path_and_query().map_or("/", |p| p.as_str()).into());
    session.req_header_mut().set_uri(uri);
    Ok(())
}

/// The bytes a `hash` group hashes for this request. A missing header hashes the client.
fn balance_key<'a>(
    key: &HashKey,
    req: &'a RequestHeader,
    client: Option<IpAddr>,
    ip_buf: &'a mut [u8; 16],
) -> &'a [u8] {
    let ip = |buf: &'a mut [u8; 16]| -> &'a [u8] {
        match client {
            Some(IpAddr::V4(v4)) => {
                buf[..4].copy_from_slice(&v4.octets());
                &buf[..4]
            }
            Some(IpAddr::V6(v6)) => {
                *buf = v6.octets();
                &buf[..]
            }
            None => &[],
        }
    };
    match key {
        HashKey::ClientIp => ip(ip_buf),
        HashKey::Path => req.uri.path().as_bytes(),
        HashKey::Header(name) => match req.headers.get(name) {
            Some(v) if !v.is_empty() => v.as_bytes(),
            _ => ip(ip_buf),
        },
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    /// Boxed: Pingora keeps the context inline in its per-request future (~14 KB), which it
    /// moves whole into a box for every request; the context inline made that copy about 0.9 KB
    /// larger, a box adds one small allocation (callgrind: 95.9k → 94.9k instructions a request).
    type CTX = Box<RequestCtx>;

    fn new_ctx(&self) -> Self::CTX {
        Box::new(RequestCtx::new(self.live.load_full()))
    }

    /// None. Pingora's default adds its response-compression module switched off, so that a
    /// filter could turn it on per request; the gateway compresses nothing (a backend's
    /// `Content-Encoding` passes through as it is), and the idle module still cost every
    /// request a module context, two boxed filter calls and its body filters (callgrind:
    /// ~0.8k instructions).
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    fn on_connection_reuse(
        &self,
        session: &mut Session,
        _ctx: &mut Self::CTX,
        connection: Box<dyn std::any::Any + Send + Sync>,
    ) {
        // Called right after each request header is read, with the context DownstreamApp gave
        // the connection (not only on reuse: it hands one to every request).
        if let Some(connection) = connection.downcast_ref::<ConnectionContext>() {
            connection.on_header_read(session);
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        ctx.request_id = proxy_headers::request_id(session.req_header());
        // Every write to the client is bounded (HTTP/1 and HTTP/2; Pingora's default is none), so
        // a client that stops reading cannot hold its connection and its backend's for ever.
        session.set_write_timeout(Some(self.send_timeout));
        let answered = panic_guard::catch(self.admit(session, ctx))
            .await
            .map_err(|m| panic_guard::panicked("request_filter", ctx.request_id(), &m))??;
        if !answered {
            // Once, on the downstream header: every attempt's upstream request is a copy of it.
            proxy_headers::add_upstream_headers(session.req_header_mut(), ctx)?;
            strip_route_prefix(session, ctx)?;
        }
        Ok(answered)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        if let Some(wait) = ctx.backoff.take() {
            tokio::time::sleep(wait).await;
        }
        // Read before the phase borrows the session: whether a body follows the header.
        let with_body = !session.is_body_empty();
        let req = session.req_header();
        let session = &*session;
        panic_guard::catch(async {
            panic_guard::injected(req, "upstream_peer");
            self.pick_peer(session, ctx, with_body)
        })
        .await
        .map_err(|m| panic_guard::panicked("upstream_peer", ctx.request_id(), &m))?
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&Digest>,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(b) = &ctx.backend {
            if reused {
                b.metrics.connections_reused.inc();
            } else {
                b.metrics.connections_new.inc();
            }
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        // Where Pingora's own (per-peer, here switched off) request policy would have run.
        let http11 = session.req_header().version == http::Version::HTTP_11;
        hop_by_hop::strip(upstream_request, http11, |name| {
            proxy_headers::set_by_gateway(name, ctx)
        })?;
        ctx.upstream_sent = Some(Instant::now());
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(sent) = ctx.upstream_sent {
            ctx.upstream_time = Some(sent.elapsed());
        }
        let status = upstream_response.status.as_u16();
        self.record_outcome(ctx, status < 500);
        if matches!(status, 502..=504) {
            // Retried only while nothing of it reached the client, and only what is safe to
            // send twice; the last attempt's answer goes to the client as it is.
            let retryable = session.req_header().method.is_idempotent()
                && !session.as_ref().retry_buffer_truncated();
            let cause = upstream_response.status;
            if self.decide_retry(ctx, RetryReason::GatewayError, retryable, true, &cause) {
                self.count_upstream_error(ctx, "gateway-error");
                ctx.gateway_error_retry = true;
                ctx.upstream_time = None;
                return Err(Error::create(
                    HTTPStatus(status),
                    ErrorSource::Upstream,
                    Some("the backend answered a gateway error".into()),
                    None,
                ));
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let upstream = ctx.backend.as_ref().map(|b| &b.header_value);
        proxy_headers::add_downstream_headers(upstream_response, ctx, upstream)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        self.count_upstream_error(ctx, "connect");
        self.record_outcome(ctx, false);
        // Nothing reached the backend: any method may go elsewhere, budget-free.
        let retry = self.decide_retry(ctx, RetryReason::ConnectFailure, true, false, &e);
        e.set_retry(retry);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if std::mem::take(&mut ctx.gateway_error_retry) {
            // upstream_response_filter decided and counted it.
            e.set_retry(true);
            return e;
        }
        // Only the backend's faults are retried (and counted against it): a client that went
        // away mid-body or sent a request Pingora refuses to forward is not the backend's
        // failure, and sending it elsewhere would repeat a partial or refused request.
        if *e.esource() != ErrorSource::Upstream {
            e.set_retry(false);
            return e;
        }
        let timeout = matches!(e.etype(), ReadTimedout | WriteTimedout);
        let kind = if session.response_written().is_some() {
            "truncated"
        } else if timeout {
            "timeout"
        } else {
            "reset"
        };
        self.count_upstream_error(ctx, kind);
        // A pooled connection closed before any answer is the keep-alive race (Pingora marks
        // those errors "retry if reused"): not the backend failing, and no work done there.
        let stale_pooled = client_reused && matches!(e.retry, RetryType::ReusedOnly);
        if !stale_pooled {
            self.record_outcome(ctx, false);
        }
        // Retry only what is safe to send twice and what the client has not seen any of; a
        // timeout means the backend may still be working on it, so it is not retried.
        let retryable = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated()
            && session.response_written().is_none()
            && !timeout;
        let retry = self.decide_retry(ctx, RetryReason::Reset, retryable, !stale_pooled, &e);
        e.set_retry(retry);
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy
    where
        Self::CTX: Send + Sync,
    {
        let (status, message) = classify(e);
        if status == 408 {
            self.metrics.body_timeouts.inc();
        } else if message == CLIENT_STOPPED_READING {
            self.metrics.send_timeouts.inc();
        }
        if status == 0 {
            tracing::debug!(request_id = ctx.request_id(), cause = %e, "client went away");
        } else if status >= 500 {
            tracing::error!(
                request_id = ctx.request_id(),
                backend = ctx.backend_label(),
                attempts = ctx.attempts,
                status,
                cause = %e,
                "request failed"
            );
        } else {
            tracing::info!(request_id = ctx.request_id(), status, cause = %e, "bad request");
        }
        // Nothing can be sent once the response has started, or to a client that is gone.
        if status != 0 && session.response_written().is_none() {
            if let Err(write_err) = write_error(session, ctx, status, message, false).await {
                tracing::debug!(request_id = ctx.request_id(), error = %write_err, "could not send error response");
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, _error: &Error) -> bool {
        // fail_to_proxy logs every failure once, with the request id.
        true
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &Self::CTX,
        _error: &Error,
        _context: ProxyWarnLogContext,
    ) -> bool {
        // decide_retry logs retries with the request id.
        true
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Self::CTX)
    where
        Self::CTX: Send + Sync,
    {
        let elapsed = ctx.start.elapsed();
        // 499 (as nginx): the client went away before any response was written.
        let status = session
            .response_written()
            .map_or(http::StatusCode::from_u16(499).ok(), |r| Some(r.status));
        let code = status.as_ref().map_or(499, |s| s.as_u16());
        let status_label = status.as_ref().map_or("499", |s| s.as_str());
        let answered_by: Option<&Arc<BackendInfo>> =
            ctx.backend.as_ref().filter(|_| ctx.upstream_time.is_some());
        let route_metrics = ctx.route().map_or(&self.no_route, |r| &r.metrics);
        let method = &session.req_header().method;
        self.metrics
            .downstream_request(session.req_header().version, ctx.tls);
        route_metrics.with_series(answered_by.map(|b| &b.label), |series| {
            series.requests.inc(method, code, status_label);
            series.duration.observe(elapsed.as_secs_f64());
        });
        if let (Some(b), Some(t)) = (answered_by, ctx.upstream_time) {
            b.metrics.upstream_response.observe(t.as_secs_f64());
        }
        if ctx.live.settings.log.access_log {
            self.access_log.write(session, ctx, code, elapsed);
        }
        ctx.client_inflight = None;
    }
}
