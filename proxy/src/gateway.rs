//! The proxy itself: Pingora's request phases, in the order they run.
//!
//! `request_filter` identifies and limits the client; `upstream_peer` picks a backend not yet
//! tried; `fail_to_connect` / `error_while_proxy` decide retries; the response filters add
//! headers; `fail_to_proxy` writes our JSON errors; `logging` records metrics and the access log.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::prelude::*;
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyWarnLogContext, Session};
use pingora::ErrorSource;
use pingora_limits::inflight::Inflight;

use crate::access_log::AccessLog;
use crate::balance::SmoothRoundRobin;
use crate::client_ip::{client_ip, in_any};
use crate::context::{InflightGuard, RequestCtx};
use crate::downstream::ConnectionContext;
use crate::headers::{self, X_FORWARDED_FOR};
use crate::metrics::Metrics;
use crate::panic_guard;
use crate::rate_limit::{ClientKey, Decision};
use crate::responses::{classify, write_error};
use crate::state::LiveState;
use crate::upstream::BackendInfo;

/// The gateway service: everything shared across requests.
pub struct Gateway {
    pub live: LiveState,
    pub lb: Arc<LoadBalancer<RoundRobin>>,
    pub metrics: Arc<Metrics>,
    /// Concurrent requests per client (approximate; only consulted when a cap is set).
    pub client_inflight: Inflight,
    pub access_log: AccessLog,
    /// Smooth weighted round robin over the healthy backends.
    balancer: SmoothRoundRobin,
}

impl Gateway {
    pub fn new(
        live: LiveState,
        lb: Arc<LoadBalancer<RoundRobin>>,
        metrics: Arc<Metrics>,
        access_log: AccessLog,
    ) -> Self {
        Self {
            live,
            lb,
            metrics,
            client_inflight: Inflight::new(),
            access_log,
            balancer: SmoothRoundRobin::default(),
        }
    }

    /// The next healthy backend not yet tried by this request, by smooth weighted round robin
    /// (a dead backend's share is spread over the others, not handed to its successor): its
    /// address and what discovery attached to it. Not Pingora's `select_with`, which allocates
    /// a `HashSet` and clones the `Backend` on every call.
    fn next_backend(&self, tried: &[SocketAddr]) -> Option<(SocketAddr, Option<Arc<BackendInfo>>)> {
        self.balancer.next(self.lb.backends(), tried)
    }

    /// Whether another attempt could go to a healthy backend this request has not tried.
    fn untried_backend_left(&self, ctx: &RequestCtx) -> bool {
        let backends = self.lb.backends();
        backends
            .get_backend()
            .iter()
            .any(|b| backends.ready(b) && b.addr.as_inet().is_some_and(|a| !ctx.tried.contains(a)))
    }

    /// Marks `e` retryable when the budget and the pool allow, and counts the retry.
    fn decide_retry(&self, e: &mut Error, ctx: &RequestCtx, retryable: bool) {
        let settings = &ctx.live.settings;
        let retry = retryable
            && ctx.attempts <= settings.upstream.max_retries
            && self.untried_backend_left(ctx);
        e.set_retry(retry);
        if retry {
            if let Some(b) = &ctx.backend {
                b.metrics.retries.inc();
            }
            tracing::warn!(
                request_id = ctx.request_id(),
                backend = ctx.backend_label(),
                attempt = ctx.attempts,
                cause = %e,
                "upstream attempt failed; retrying on another backend"
            );
        }
    }

    /// Counts a failed upstream attempt in `gateway_upstream_errors_total`.
    fn count_upstream_error(&self, ctx: &RequestCtx, kind: &str) {
        self.metrics.upstream_error(ctx.backend_label(), kind);
    }

    /// Answers 429 with the rate-limit headers and JSON body.
    async fn reject(&self, session: &mut Session, ctx: &RequestCtx, why: &str) -> Result<bool> {
        self.metrics.rate_limited.inc();
        tracing::debug!(
            request_id = ctx.request_id(),
            client = ?ctx.client.map(ClientKey::from_ip).map(|k| k.to_string()),
            why,
            "rate limited"
        );
        write_error(session, ctx, 429, "rate limited", true).await?;
        Ok(true)
    }

    /// Identifies the client and applies the rate limit; `Ok(true)` = answered (429).
    async fn admit(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.inflight = Some(InflightGuard::new(&self.metrics.inflight));
        panic_guard::injected(session.req_header(), "request_filter");
        let peer: Option<IpAddr> = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.peer = peer;

        let live = &ctx.live;
        let rl = &live.settings.rate_limit;
        ctx.peer_trusted =
            !rl.trusted_proxies.is_empty() && peer.is_some_and(|p| in_any(&rl.trusted_proxies, p));
        let Some(limiter) = &live.limiter else {
            ctx.client = peer;
            return Ok(false);
        };
        let Some(peer) = peer else {
            return Ok(false);
        };
        let forwarded = if rl.trusted_proxies.is_empty() {
            None
        } else {
            headers::joined_values(session.req_header(), &X_FORWARDED_FOR.key)
        };
        let client = client_ip(peer, forwarded.as_deref(), &rl.trusted_proxies);
        ctx.client = Some(client);
        if in_any(&rl.exempt, client) {
            return Ok(false);
        }
        let key = ClientKey::from_ip(client);
        let decision = limiter.check(key, ctx.start);
        ctx.rate = Some(decision);
        if !decision.allowed {
            return self.reject(session, ctx, "request budget spent").await;
        }
        if rl.max_inflight_per_client > 0 {
            let (guard, count) = self.client_inflight.incr(key, 1);
            ctx.client_inflight = Some(guard);
            if count > rl.max_inflight_per_client as isize {
                // Refused requests use no budget; a slot frees up when one finishes.
                limiter.refund(key);
                ctx.rate = Some(Decision {
                    allowed: false,
                    remaining: decision.remaining + 1,
                    retry_after_secs: 1,
                    ..decision
                });
                return self
                    .reject(session, ctx, "too many concurrent requests")
                    .await;
            }
        }
        Ok(false)
    }

    /// Picks a healthy backend this request has not tried yet and builds its peer.
    fn pick_peer(&self, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        ctx.attempts += 1;
        let Some((addr, info)) = self.next_backend(&ctx.tried) else {
            return if ctx.tried.is_empty() {
                Error::e_explain(HTTPStatus(503), "no healthy backend")
            } else {
                Error::e_explain(HTTPStatus(502), "every backend tried failed")
            };
        };
        ctx.backend = info;
        ctx.tried.push(addr);

        let up = &ctx.live.settings.upstream;
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(up.connect_timeout);
        peer.options.total_connection_timeout = Some(up.connect_timeout);
        peer.options.read_timeout = Some(up.read_timeout);
        peer.options.write_timeout = Some(up.read_timeout);
        peer.options.idle_timeout = Some(up.idle_timeout);
        Ok(Box::new(peer))
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx::new(self.live.load_full())
    }

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
        ctx.request_id = headers::request_id(session.req_header());
        let answered = panic_guard::catch(self.admit(session, ctx))
            .await
            .map_err(|m| panic_guard::panicked("request_filter", ctx.request_id(), &m))??;
        if !answered {
            // Once, on the downstream header: every attempt's upstream request is a copy of it.
            headers::add_upstream_headers(session.req_header_mut(), ctx)?;
        }
        Ok(answered)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let req = session.req_header();
        panic_guard::catch(async {
            panic_guard::injected(req, "upstream_peer");
            self.pick_peer(ctx)
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
        _session: &mut Session,
        _upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        ctx.upstream_sent = Some(Instant::now());
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(sent) = ctx.upstream_sent {
            ctx.upstream_time = Some(sent.elapsed());
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
        headers::add_downstream_headers(upstream_response, ctx, upstream)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        self.count_upstream_error(ctx, "connect");
        // Nothing reached the backend: any method may go elsewhere.
        self.decide_retry(&mut e, ctx, true);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        // Only the backend's faults are retried (and counted against it): a client that went
        // away mid-body or sent a request Pingora refuses to forward is not the backend's
        // failure, and sending it elsewhere would repeat a partial or refused request.
        if *e.esource() != ErrorSource::Upstream {
            e.set_retry(false);
            return e;
        }
        let kind = if session.response_written().is_some() {
            "truncated"
        } else if matches!(e.etype(), ReadTimedout | WriteTimedout) {
            "timeout"
        } else {
            "reset"
        };
        self.count_upstream_error(ctx, kind);
        // Retry only what is safe to send twice and what the client has not seen any of; a
        // timeout means the backend may still be working on it, so it is not retried.
        let retryable = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated()
            && session.response_written().is_none()
            && !matches!(e.etype(), ReadTimedout | WriteTimedout);
        self.decide_retry(&mut e, ctx, retryable);
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
        let backend_metrics = answered_by.map_or(self.metrics.no_backend(), |b| &b.metrics);
        backend_metrics
            .requests
            .inc(&session.req_header().method, code, status_label);
        backend_metrics.duration.observe(elapsed.as_secs_f64());
        if let Some(t) = ctx.upstream_time {
            backend_metrics.upstream_response.observe(t.as_secs_f64());
        }
        if ctx.live.settings.log.access_log {
            self.access_log.write(session, ctx, code, elapsed);
        }
        ctx.client_inflight = None;
    }
}
