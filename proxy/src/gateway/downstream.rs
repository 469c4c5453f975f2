//! Downstream connections, bounded: how many at once (in total and per client), how long one
//! may sit idle, how many requests it may carry, and how long a request header may take.
//!
//! Pingora's own HTTP/1 loop keeps a kept-alive connection forever (after the first request it
//! switches the idle wait to "infinite"), has no whole-header deadline (its read timeout is per
//! read, so a header trickled a byte at a time is never cut), and counts no connections. So the
//! proxy service runs [`DownstreamApp`]: the same keep-alive loop as Pingora's
//! `impl ServerApp for HttpServerApp`, with those bounds added around Pingora's request
//! processing ([`HttpProxy::process_new_http`]). HTTP/2 connections stay Pingora's to serve;
//! their preface gets the first header's deadline here, and Pingora their idle bound.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ServerApp};
use pingora::prelude::fast_timeout::fast_sleep;
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;

use crate::config::ServerSettings;
use crate::gateway::live::LiveState;
use crate::gateway::preface::PrefaceWatch;
use crate::gateway::Gateway;
use crate::limits::client_ip::in_any;
use crate::limits::sliding_window::ClientKey;
use crate::observe::metrics::Metrics;
use crate::tls::terminator::TlsTerminator;

/// How long a connection accepted just before shutdown gets to deliver its request.
const ACCEPTED_REQUEST_GRACE: Duration = Duration::from_millis(250);

/// The per-connection bounds, from `[server]` (fixed for the process's life).
#[derive(Debug, Clone)]
pub struct ConnectionBounds {
    /// `None`: no keep-alive.
    pub keepalive_timeout: Option<Duration>,
    pub keepalive_requests: u32,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
    /// 0 = no cap.
    pub max_per_client: usize,
}

impl ConnectionBounds {
    pub fn from_settings(s: &ServerSettings) -> Self {
        Self {
            keepalive_timeout: s.keepalive_timeout,
            keepalive_requests: s.keepalive_requests.get(),
            header_timeout: s.header_timeout,
            body_timeout: s.body_timeout,
            max_connections: s.max_connections.get(),
            max_per_client: s.max_connections_per_client,
        }
    }

    /// What Pingora itself enforces: HTTP/2 connections, which Pingora serves, are closed once
    /// no stream has been open for the idle bound (Pingora's default keeps them forever). The
    /// idle bound is `keepalive_timeout`, or `header_timeout` when keep-alive is off (HTTP/2
    /// has no "one request per connection": an idle one waits no longer than a first header).
    pub fn server_options(&self) -> HttpServerOptions {
        let mut options = HttpServerOptions::default();
        options.h2_idle_timeout = Some(self.keepalive_timeout.unwrap_or(self.header_timeout));
        options
    }
}

/// Why a connection was closed at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    MaxConnections,
    PerClient,
}

impl Rejected {
    pub fn label(self) -> &'static str {
        match self {
            Rejected::MaxConnections => "max_connections",
            Rejected::PerClient => "per_client",
        }
    }
}

/// Open downstream connections, in total and per client. A connection holds a [`Slot`].
#[derive(Default)]
pub struct ConnectionTable {
    total: AtomicUsize,
    /// Connections per client key; entries at 0 are removed, so the map holds only clients
    /// with an open connection (bounded by `max_connections`).
    per_client: Mutex<HashMap<ClientKey, usize>>,
}

/// One admitted connection; dropping it gives the place back.
pub struct Slot {
    table: Arc<ConnectionTable>,
    client: Option<ClientKey>,
}

impl ConnectionTable {
    /// Admits a connection from `client` (`None`: not subject to the per-client cap) or says
    /// which cap it is over.
    pub fn admit(
        self: &Arc<Self>,
        client: Option<ClientKey>,
        max_total: usize,
        max_per_client: usize,
    ) -> Result<Slot, Rejected> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Rejected::MaxConnections);
        }
        let client = client.filter(|_| max_per_client > 0);
        if let Some(key) = client {
            let mut map = self.per_client.lock();
            let count = map.entry(key).or_insert(0);
            if *count >= max_per_client {
                drop(map);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(Rejected::PerClient);
            }
            *count += 1;
        }
        Ok(Slot {
            table: self.clone(),
            client,
        })
    }

    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(key) = self.client {
            let mut map = self.table.per_client.lock();
            if let Some(count) = map.get_mut(&key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    map.remove(&key);
                }
            }
        }
        self.table.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Handed to each request as its connection context: the gateway marks the request header as
/// read (in `on_connection_reuse`, which Pingora calls right after the header is parsed) and
/// applies the connection's body-read bound to the session.
pub struct ConnectionContext {
    pub header_read: Arc<AtomicBool>,
    /// `keepalive_timeout_seconds = 0`: no keep-alive at all.
    pub keepalive_off: bool,
    pub body_timeout: Duration,
}

impl ConnectionContext {
    /// Applies the bounds to a session whose request header has just been read.
    pub fn on_header_read(&self, session: &mut ServerSession) {
        self.header_read.store(true, Ordering::Release);
        // The idle bound is ours (the deadline in `serve_http1`), so Pingora's keep-alive stays
        // "no limit" and its header reads carry no timer of their own.
        if self.keepalive_off {
            session.set_keepalive(None);
        }
        session.set_read_timeout(Some(self.body_timeout));
    }
}

/// The proxy service's connection handler: bounds around Pingora's HTTP processing.
pub struct DownstreamApp {
    proxy: Arc<HttpProxy<Gateway>>,
    bounds: ConnectionBounds,
    table: Arc<ConnectionTable>,
    metrics: Arc<Metrics>,
    live: LiveState,
    /// `Some` for the TLS listeners: each connection's handshake comes first.
    tls: Option<Arc<TlsTerminator>>,
}

impl DownstreamApp {
    pub fn new(
        mut proxy: HttpProxy<Gateway>,
        bounds: ConnectionBounds,
        metrics: Arc<Metrics>,
        live: LiveState,
    ) -> Self {
        proxy.server_options = Some(bounds.server_options());
        Self {
            proxy: Arc::new(proxy),
            bounds,
            table: Arc::new(ConnectionTable::default()),
            metrics,
            live,
            tls: None,
        }
    }

    /// The app of the TLS listeners: the same proxy and the same connection caps (one table for
    /// both), each connection's TLS handshake first.
    pub fn with_tls(&self, tls: Arc<TlsTerminator>) -> Self {
        Self {
            proxy: self.proxy.clone(),
            bounds: self.bounds.clone(),
            table: self.table.clone(),
            metrics: self.metrics.clone(),
            live: self.live.clone(),
            tls: Some(tls),
        }
    }

    /// The per-client key of the connection's peer, or `None` when the peer is exempt from the
    /// per-client cap (a trusted proxy in front carries many clients; exempt addresses are
    /// never limited).
    fn client_key(&self, stream: &Stream) -> Option<ClientKey> {
        let digest = stream.get_socket_digest()?;
        let ip: IpAddr = digest.peer_addr()?.as_inet()?.ip();
        let live = self.live.load();
        let rl = &live.settings.rate_limit;
        if in_any(&rl.trusted_proxies, ip) || in_any(&rl.exempt, ip) {
            return None;
        }
        Some(ClientKey::from_ip(ip))
    }

    /// Serves HTTP/1.x requests on one connection until it closes or a bound is reached.
    async fn serve_http1(&self, stream: Stream, accepted: Instant, shutdown: &ShutdownWatch) {
        let header_read = Arc::new(AtomicBool::new(false));
        let keepalive_off = self.bounds.keepalive_timeout.is_none();
        let mut session = ServerSession::new_http1(stream);
        // Some(0): keep-alive without Pingora's own idle timer; the deadline below bounds it.
        session.set_keepalive((!keepalive_off && !*shutdown.borrow()).then_some(0));
        // Pingora counts reuses, so N requests are N - 1 reuses.
        session.set_keepalive_reuses_remaining(Some(self.bounds.keepalive_requests - 1));
        session.set_pipelining_enabled(true);
        // One deadline per request, on our own lazily armed timer: the first header is due
        // `header_timeout` after accept; on a kept-alive connection the next header is due
        // `keepalive_timeout` after the previous response, which is also the idle bound.
        // (Pingora's own idle limit would put a timer on every header read.)
        let mut deadline = accepted + self.bounds.header_timeout;
        let mut timer = ConnectionTimer::default();
        let mut first = true;
        loop {
            header_read.store(false, Ordering::Release);
            session.set_connection_user_context(Some(Box::new(ConnectionContext {
                header_read: header_read.clone(),
                keepalive_off,
                body_timeout: self.bounds.body_timeout,
            })));
            // Held here, not by the deadline's future, so a timeout is counted before dropping
            // it closes the connection (a client that sees the close sees the count).
            let mut processing = self.proxy.process_new_http(session, shutdown);
            let Some(reused) =
                within_header_deadline(processing.as_mut(), &header_read, deadline, &mut timer)
                    .await
            else {
                if first {
                    self.metrics.header_timeouts.inc();
                    tracing::debug!(
                        "request header not complete within server.header_timeout_ms; closing"
                    );
                }
                return; // dropping the session closes the connection (idle or too slow)
            };
            first = false;
            let Some(reused) = reused else { return };
            let (stream, persistent) = reused.consume();
            session = ServerSession::new_http1(stream);
            if let Some(persistent) = persistent {
                persistent.apply_to_session(&mut session);
            }
            deadline = Instant::now() + self.bounds.keepalive_timeout.unwrap_or_default();
        }
    }

    /// Serves an HTTP/2 connection through Pingora (streams, flow control, its idle bound from
    /// [`ConnectionBounds::server_options`]), with the first header's deadline on the client's
    /// connection preface, which Pingora's handshake would wait for without end.
    async fn serve_http2(&self, stream: Stream, accepted: Instant, shutdown: &ShutdownWatch) {
        let preface_read = Arc::new(AtomicBool::new(false));
        let stream: Stream = Box::new(PrefaceWatch::new(stream, preface_read.clone()));
        let mut serving = ServerApp::process_new(&self.proxy, stream, shutdown);
        let deadline = accepted + self.bounds.header_timeout;
        let mut timer = ConnectionTimer::default();
        if within_header_deadline(serving.as_mut(), &preface_read, deadline, &mut timer)
            .await
            .is_none()
        {
            self.metrics.header_timeouts.inc();
            tracing::debug!("HTTP/2 preface not complete within server.header_timeout_ms; closing");
        }
    }
}

/// How early Pingora's coarse timers may fire (they tick every 10 ms): a deadline this close
/// counts as reached.
const TIMER_SLACK: Duration = Duration::from_millis(10);

/// The one timer of a connection's header deadlines, kept across its requests: registering a
/// timer costs about 1.2k instructions, and on a busy kept-alive connection each deadline lies
/// past the last. When it fires before the current deadline it is armed again for the rest, so
/// a connection pays one registration per `keepalive_timeout` of activity, not one per request.
///
/// Between requests the connection's task is polled about twice while it waits for the next
/// header; the timer is only polled again when that could change something: a new waker to
/// register, or its time come (an untouched timer wakes the task it was polled by).
#[derive(Default)]
struct ConnectionTimer {
    sleep: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// When `sleep` fires.
    fires_at: Option<Instant>,
    /// The waker `sleep` last returned `Pending` to, which it wakes when it fires.
    waiting_with: Option<Waker>,
}

impl ConnectionTimer {
    /// Resolves when `deadline` has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        loop {
            // A timer set past the deadline (a deadline that moved earlier) is replaced.
            if self.sleep.is_none() || self.fires_at.is_some_and(|at| at > deadline) {
                let wait = deadline.saturating_duration_since(Instant::now());
                self.sleep = Some(Box::pin(fast_sleep(wait)));
                self.fires_at = Some(deadline);
                self.waiting_with = None;
            }
            // Pingora's timer fires at most a millisecond before its time (it rounds up to its
            // 10 ms tick), so from TIMER_SLACK before it on, a wake-up may be the timer's own,
            // which only polling it again can tell.
            if let (Some(waker), Some(at)) = (&self.waiting_with, self.fires_at) {
                if waker.will_wake(cx.waker()) && Instant::now() + TIMER_SLACK < at {
                    return Poll::Pending;
                }
            }
            let Some(sleep) = self.sleep.as_mut() else {
                return Poll::Pending;
            };
            match sleep.as_mut().poll(cx) {
                Poll::Pending => {
                    self.waiting_with = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                Poll::Ready(()) => {
                    self.sleep = None;
                    self.waiting_with = None;
                    if Instant::now() + TIMER_SLACK >= deadline {
                        return Poll::Ready(());
                    }
                    // Fired for an earlier deadline: armed again for this one.
                }
            }
        }
    }
}

/// Runs `processing` (one request, from reading its header to the end of its response) and
/// gives up when its header has not been read by `deadline`: `None` (the caller then drops it,
/// which closes the connection). The timer is
/// only polled when the header is not complete at the first poll, so the common case (a request
/// already waiting on the socket) never touches it.
async fn within_header_deadline<F: Future + ?Sized>(
    mut processing: Pin<&mut F>,
    header_read: &AtomicBool,
    deadline: Instant,
    timer: &mut ConnectionTimer,
) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = processing.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        if header_read.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        timer.poll_deadline(cx, deadline).map(|()| None)
    })
    .await
}

#[async_trait]
impl ServerApp for DownstreamApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let accepted = Instant::now();
        let client = self.client_key(&stream);
        let _slot = match self.table.admit(
            client,
            self.bounds.max_connections,
            self.bounds.max_per_client,
        ) {
            Ok(slot) => slot,
            Err(why) => {
                self.metrics.connection_rejected(why.label());
                tracing::debug!(reason = why.label(), client = ?client.map(|c| c.to_string()), "connection closed at accept");
                return None;
            }
        };
        self.metrics.downstream_connections.inc();
        let _open = GaugeGuard(&self.metrics);
        let stream = match &self.tls {
            None => stream,
            // The handshake counts against the first header's deadline. Boxed: inline, its
            // future (about 7 KB) would sit in every connection's state, plain ones included,
            // for the connection's whole life.
            Some(tls) => {
                let handshake = Box::pin(tokio::time::timeout(
                    self.bounds.header_timeout,
                    tls.accept(stream),
                ));
                match handshake.await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        self.metrics.tls_handshake_failures.inc();
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return None;
                    }
                    Err(_) => {
                        self.metrics.tls_handshake_failures.inc();
                        tracing::debug!("TLS handshake not done within server.header_timeout_ms");
                        return None;
                    }
                }
            }
        };
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            self.serve_http2(stream, accepted, shutdown).await;
            return None;
        }
        self.serve_http1(stream, accepted, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        // Pingora runs this once the listeners stopped accepting. A connection accepted in the
        // last instant may not have delivered its request yet, and Pingora's cleanup aborts
        // every request still being waited for: give those a moment to arrive (they are
        // then answered, with keep-alive off), then wake the idle kept-alive connections so
        // shutdown closes them.
        fast_sleep(ACCEPTED_REQUEST_GRACE).await;
        self.proxy.http_cleanup().await;
    }
}

/// Decrements `gateway_downstream_connections` when the connection ends, on every path.
struct GaugeGuard<'a>(&'a Metrics);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.downstream_connections.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_header_deadline_fires_even_when_the_timer_is_early() {
        // Pingora's timer may fire up to a millisecond before a deadline. A connection that
        // took that wake-up for a spurious one and did not poll the timer again would never be
        // woken for its deadline. 2,000 deadlines 100 µs apart cover every sub-millisecond
        // offset across twenty of the timer's 10 ms ticks.
        let start = Instant::now() + Duration::from_millis(20);
        let waits: Vec<_> = (0..2000u64)
            .map(|i| {
                let deadline = start + Duration::from_micros(i * 100);
                tokio::spawn(async move {
                    let mut timer = ConnectionTimer::default();
                    std::future::poll_fn(|cx| timer.poll_deadline(cx, deadline)).await;
                    assert!(Instant::now() + TIMER_SLACK >= deadline, "fired too early");
                })
            })
            .collect();
        for (i, wait) in waits.into_iter().enumerate() {
            tokio::time::timeout(Duration::from_secs(20), wait)
                .await
                .unwrap_or_else(|_| panic!("deadline {i} never reached its connection"))
                .unwrap();
        }
    }

    fn key(s: &str) -> Option<ClientKey> {
        Some(ClientKey::from_ip(s.parse().unwrap()))
    }

    #[test]
    fn per_client_cap_closes_the_excess_and_frees_on_drop() {
        let table = Arc::new(ConnectionTable::default());
        let a: Vec<_> = (0..3)
            .map(|_| table.admit(key("127.0.0.2"), 10, 3).unwrap())
            .collect();
        assert_eq!(
            table.admit(key("127.0.0.2"), 10, 3).err(),
            Some(Rejected::PerClient)
        );
        // Another client is not affected, nor is an exempt one.
        let b = table.admit(key("127.0.0.3"), 10, 3).unwrap();
        let c = table.admit(None, 10, 3).unwrap();
        assert_eq!(table.open(), 5);
        drop(a);
        assert_eq!(table.open(), 2);
        assert!(table.admit(key("127.0.0.2"), 10, 3).is_ok());
        drop((b, c));
        assert_eq!(table.per_client.lock().len(), 0, "no entries left behind");
    }

    #[test]
    fn total_cap_applies_to_everyone() {
        let table = Arc::new(ConnectionTable::default());
        let held: Vec<_> = (0..4)
            .map(|i| {
                table
                    .admit(key(&format!("127.0.0.{}", i + 2)), 4, 0)
                    .unwrap()
            })
            .collect();
        assert_eq!(
            table.admit(None, 4, 0).err(),
            Some(Rejected::MaxConnections)
        );
        assert_eq!(table.open(), 4, "a refused connection is not counted");
        drop(held);
        assert_eq!(table.open(), 0);
    }
}
