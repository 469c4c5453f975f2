//! Request routing for the mock backend: one handler matched on the path.
//!
//! `/health`, `/stats` and the `/_mock/*` control routes are never faulted; every other request
//! first draws against the fault in force (see `fault`), and a hit is answered by [`faulted`]
//! or, for a `reset` fault, not answered at all ([`ResetFault`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};

use crate::fault::{Fault, FaultSwitch};

/// Largest `/bytes/{n}` body we build, so a typo cannot exhaust memory.
const MAX_BYTES: usize = 64 * 1024 * 1024;
/// Longest `/delay/{ms}` we honour; also the cap on a fault's `delay_ms`.
pub const MAX_DELAY_MS: u64 = 600_000;
/// Largest `PUT /_mock/fault` body we read.
const MAX_CONTROL_BODY: usize = 64 * 1024;
/// Prefix of the control routes that set the backend's behaviour.
const CONTROL_PREFIX: &str = "/_mock/";
/// Marks a faulted answer (useful where there is no body, e.g. a 204).
const FAULT_HEADER: HeaderName = HeaderName::from_static("x-mock-fault");
/// Distinct paths counted one by one on `/stats`; beyond this they share [`OTHER_PATHS`], so a
/// client walking endless paths cannot grow the map without bound.
const MAX_PATHS: usize = 10_000;
const OTHER_PATHS: &str = "(other)";

/// What the server shares between connections: its counters and the fault in force.
pub struct State {
    stats: Stats,
    fault: FaultSwitch,
}

impl State {
    pub fn new(name: String, fault: Option<Fault>) -> Self {
        Self {
            stats: Stats::new(name),
            fault: FaultSwitch::new(fault),
        }
    }

    pub fn connection_accepted(&self) {
        self.stats.connection_accepted();
    }

    fn snapshot(&self) -> serde_json::Value {
        let mut snapshot = self.stats.snapshot();
        snapshot["fault"] = fault_json(self.fault.get());
        snapshot
    }
}

/// Counters served on `/stats`, so tests can see connection reuse and count what they sent.
///
/// Health probes arrive on their own schedule, so they are left out of `requests` and
/// `traffic_connections` (they still show in `paths`); a test that counts what it sent is then
/// never off by a probe that happened to land. Reads of `/stats` itself and the `/_mock/*`
/// control requests are counted nowhere: reading or steering the backend does not move its
/// counters. Faulted requests are counted like any other, and in `faulted` too.
pub struct Stats {
    name: String,
    /// Every TCP connection accepted, health probes' included.
    connections: AtomicU64,
    /// Connections that carried at least one counted request.
    traffic_connections: AtomicU64,
    /// Requests other than `/health` and `/stats`.
    requests: AtomicU64,
    in_flight: AtomicU64,
    /// Requests answered by the fault instead of their route.
    faulted: AtomicU64,
    /// Requests by path (without the query), `/health` included.
    paths: Mutex<HashMap<String, u64>>,
}

/// Per-connection state: whether the connection has carried a counted request yet, and whether
/// a `reset` fault hit it (its stream then closes with a TCP RST; see `main::serve`).
#[derive(Default)]
pub struct Connection {
    counted: AtomicBool,
    reset: AtomicBool,
}

impl Connection {
    /// Whether a `reset` fault hit this connection, so it is to be closed abortively.
    pub fn reset_requested(&self) -> bool {
        self.reset.load(Ordering::Relaxed)
    }
}

/// The error [`handle`] fails with when a `reset` fault hits: hyper then closes the connection
/// without writing anything, which is the point.
#[derive(Debug)]
pub struct ResetFault;

impl fmt::Display for ResetFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection reset by the fault in force")
    }
}

impl std::error::Error for ResetFault {}

/// Counts a request as in flight until it is answered.
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn new(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Stats {
    pub fn new(name: String) -> Self {
        Self {
            name,
            connections: AtomicU64::new(0),
            traffic_connections: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            faulted: AtomicU64::new(0),
            paths: Mutex::new(HashMap::new()),
        }
    }

    pub fn connection_accepted(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one request for `path` arriving on `conn` (see [`Stats`] for what is left out).
    fn count(&self, path: &str, conn: &Connection) {
        if path == "/stats" || is_control(path) {
            return;
        }
        {
            // A poisoned lock only means a counting thread panicked; the counts are still usable.
            let mut paths = self.paths.lock().unwrap_or_else(|p| p.into_inner());
            let key = if paths.len() < MAX_PATHS || paths.contains_key(path) {
                path
            } else {
                OTHER_PATHS
            };
            match paths.get_mut(key) {
                Some(n) => *n += 1,
                None => {
                    paths.insert(key.to_owned(), 1);
                }
            }
        }
        if path == "/health" {
            return;
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        if !conn.counted.swap(true, Ordering::Relaxed) {
            self.traffic_connections.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn snapshot(&self) -> serde_json::Value {
        let paths: BTreeMap<String, u64> = self
            .paths
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        serde_json::json!({
            "backend": self.name,
            "connections": self.connections.load(Ordering::Relaxed),
            "traffic_connections": self.traffic_connections.load(Ordering::Relaxed),
            "requests": self.requests.load(Ordering::Relaxed),
            // Includes the /stats request itself.
            "in_flight": self.in_flight.load(Ordering::Relaxed),
            "faulted": self.faulted.load(Ordering::Relaxed),
            "paths": paths,
        })
    }
}

/// `/_mock` and everything under it: the control routes.
fn is_control(path: &str) -> bool {
    path == "/_mock" || path.starts_with(CONTROL_PREFIX)
}

/// Answers one request: bad parameters get a 400. Fails only when a `reset` fault hits, so
/// that hyper drops the connection unanswered.
pub async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
    conn: Arc<Connection>,
) -> Result<Response<Full<Bytes>>, ResetFault> {
    let stats = &state.stats;
    let path = req.uri().path().to_owned();
    stats.count(&path, &conn);
    let _in_flight = InFlight::new(&stats.in_flight);
    if is_control(&path) {
        return Ok(control(&path, req, &state.fault).await);
    }
    if path != "/health" && path != "/stats" {
        if let Some(fault) = state.fault.draw() {
            stats.faulted.fetch_add(1, Ordering::Relaxed);
            if fault.reset {
                if fault.delay_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(fault.delay_ms)).await;
                }
                // Flagged before failing, so the stream sees it when hyper drops it.
                conn.reset.store(true, Ordering::Relaxed);
                return Err(ResetFault);
            }
            return Ok(faulted(fault, req, &stats.name).await);
        }
    }
    let mut segments = path.trim_start_matches('/').splitn(2, '/');
    let first = segments.next().unwrap_or("");
    let arg = segments.next();

    let response = match (first, arg) {
        ("health", None) => text(StatusCode::OK, "ok\n"),
        ("stats", None) => json(StatusCode::OK, state.snapshot()),
        ("delay", Some(ms)) => match ms.parse::<u64>() {
            Ok(ms) if ms <= MAX_DELAY_MS => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                echo(StatusCode::OK, req, &stats.name).await
            }
            _ => bad_request("delay must be a whole number of milliseconds up to 600000"),
        },
        ("status", Some(code)) => match code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(status) => echo(status, req, &stats.name).await,
            None => bad_request("status must be an HTTP status code (100-999)"),
        },
        ("bytes", Some(n)) => match n.parse::<usize>() {
            Ok(n) if n <= MAX_BYTES => bytes_body(n),
            _ => bad_request("bytes must be a whole number up to 67108864"),
        },
        _ => echo(StatusCode::OK, req, &stats.name).await,
    };
    Ok(response)
}

/// The `/_mock/*` routes: `GET`, `PUT` and `DELETE /_mock/fault`. Each answers the fault in
/// force afterwards (`null` for none).
async fn control(path: &str, req: Request<Incoming>, fault: &FaultSwitch) -> Response<Full<Bytes>> {
    if path != "/_mock/fault" {
        return json(
            StatusCode::NOT_FOUND,
            serde_json::json!({ "error": "unknown control route; there is /_mock/fault" }),
        );
    }
    match *req.method() {
        Method::GET => {}
        Method::PUT => {
            let body = match Limited::new(req.into_body(), MAX_CONTROL_BODY)
                .collect()
                .await
            {
                Ok(body) => body.to_bytes(),
                Err(_) => return bad_request("body unreadable or over 64 KiB"),
            };
            match Fault::from_json(&body) {
                Ok(new) => fault.set(Some(new)),
                Err(message) => return bad_request(&message),
            }
        }
        Method::DELETE => fault.set(None),
        _ => {
            let mut resp = json(
                StatusCode::METHOD_NOT_ALLOWED,
                serde_json::json!({ "error": "use GET, PUT or DELETE" }),
            );
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, PUT, DELETE"));
            return resp;
        }
    }
    json(StatusCode::OK, fault_json(fault.get()))
}

fn fault_json(fault: Option<Fault>) -> serde_json::Value {
    fault.map_or(serde_json::Value::Null, Fault::to_json)
}

/// A faulted answer: `status` after `delay_ms`, with `{"backend", "fault": true, "status"}` (no
/// body for statuses that cannot have one). hyper cannot send a final 1xx: it answers those 500.
async fn faulted(fault: Fault, req: Request<Incoming>, name: &str) -> Response<Full<Bytes>> {
    if fault.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(fault.delay_ms)).await;
    }
    // Drain the request body so the connection stays reusable.
    let _ = req.into_body().collect().await;
    // Validated to 100..=599 when the fault was set.
    let status = StatusCode::from_u16(fault.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = status;
        resp
    } else {
        json(
            status,
            serde_json::json!({ "backend": name, "fault": true, "status": fault.status }),
        )
    };
    resp.headers_mut()
        .insert(FAULT_HEADER, HeaderValue::from_static("true"));
    resp
}

/// The echo body: who answered, and what request it saw (headers lowercased).
async fn echo(status: StatusCode, req: Request<Incoming>, name: &str) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    // Drain the request body so the connection stays reusable; its size is reported.
    let body_len = body
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in &parts.headers {
        let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
        headers
            .entry(k.as_str().to_owned())
            .and_modify(|existing| {
                existing.push_str(", ");
                existing.push_str(&value);
            })
            .or_insert(value);
    }
    json(
        status,
        serde_json::json!({
            "backend": name,
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "query": parts.uri.query(),
            "headers": headers,
            "body_bytes": body_len,
        }),
    )
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = value.to_string();
    body.push('\n');
    build(status, "application/json", Bytes::from(body))
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    build(status, "text/plain", Bytes::from_static(body.as_bytes()))
}

fn bytes_body(n: usize) -> Response<Full<Bytes>> {
    build(
        StatusCode::OK,
        "application/octet-stream",
        Bytes::from(vec![b'x'; n]),
    )
}

fn bad_request(message: &str) -> Response<Full<Bytes>> {
    json(
        StatusCode::BAD_REQUEST,
        serde_json::json!({ "error": message }),
    )
}

fn build(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let len = body.len();
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_leave_out_probes_and_their_own_reads() {
        let stats = Stats::new("t".into());
        let (probe_conn, traffic_conn) = (Connection::default(), Connection::default());
        stats.count("/health", &probe_conn);
        stats.count("/stats", &probe_conn);
        stats.count("/x", &traffic_conn);
        stats.count("/x", &traffic_conn);
        stats.count("/health", &traffic_conn);
        stats.count("/y", &traffic_conn);
        let s = stats.snapshot();
        assert_eq!(s["requests"], 3);
        assert_eq!(s["traffic_connections"], 1);
        assert_eq!(
            s["paths"],
            serde_json::json!({"/health": 2, "/x": 2, "/y": 1})
        );
    }

    #[test]
    fn control_routes_are_counted_nowhere() {
        let state = State::new("t".into(), None);
        let conn = Connection::default();
        state.stats.count("/_mock/fault", &conn);
        state.stats.count("/_mock", &conn);
        state.stats.count("/x", &conn);
        state.stats.count("/_mockery", &conn);
        let s = state.snapshot();
        assert_eq!(s["requests"], 2);
        assert_eq!(s["faulted"], 0);
        assert_eq!(s["fault"], serde_json::Value::Null);
        assert_eq!(s["paths"], serde_json::json!({"/x": 1, "/_mockery": 1}));
        assert!(is_control("/_mock/anything") && !is_control("/_mockery"));
    }

    #[test]
    fn snapshot_shows_the_fault_in_force() {
        let fault = Fault::new(503, 0.5, 10, false).unwrap();
        let state = State::new("t".into(), Some(fault));
        assert_eq!(
            state.snapshot()["fault"],
            serde_json::json!({"status": 503, "rate": 0.5, "delay_ms": 10, "reset": false})
        );
        state.fault.set(None);
        assert_eq!(state.snapshot()["fault"], serde_json::Value::Null);
    }

    #[test]
    fn distinct_paths_are_bounded() {
        let stats = Stats::new("t".into());
        let conn = Connection::default();
        for i in 0..MAX_PATHS + 5 {
            stats.count(&format!("/p/{i}"), &conn);
        }
        stats.count("/p/0", &conn);
        let s = stats.snapshot();
        let paths = s["paths"].as_object().unwrap();
        assert_eq!(paths.len(), MAX_PATHS + 1);
        assert_eq!(paths[OTHER_PATHS], 5);
        assert_eq!(
            paths["/p/0"], 2,
            "a path already counted keeps its own entry"
        );
        assert_eq!(s["requests"], (MAX_PATHS + 6) as u64);
    }
}
