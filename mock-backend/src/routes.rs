//! Request routing for the mock backend: one handler matched on the path.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};

/// Largest `/bytes/{n}` body we build, so a typo cannot exhaust memory.
const MAX_BYTES: usize = 64 * 1024 * 1024;
/// Longest `/delay/{ms}` we honour.
const MAX_DELAY_MS: u64 = 600_000;

/// Counters served on `/stats`, so tests can see connection reuse.
pub struct Stats {
    name: String,
    connections: AtomicU64,
    requests: AtomicU64,
    in_flight: AtomicU64,
}

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
            requests: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
        }
    }

    pub fn connection_accepted(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }
}

/// Answers one request. Never fails: bad parameters get a 400.
pub async fn handle(
    req: Request<Incoming>,
    stats: Arc<Stats>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let _in_flight = InFlight::new(&stats.in_flight);
    let path = req.uri().path().to_owned();
    let mut segments = path.trim_start_matches('/').splitn(2, '/');
    let first = segments.next().unwrap_or("");
    let arg = segments.next();

    let response = match (first, arg) {
        ("health", None) => text(StatusCode::OK, "ok\n"),
        ("stats", None) => json(
            StatusCode::OK,
            serde_json::json!({
                "backend": stats.name,
                "connections": stats.connections.load(Ordering::Relaxed),
                "requests": stats.requests.load(Ordering::Relaxed),
                // Includes the /stats request itself.
                "in_flight": stats.in_flight.load(Ordering::Relaxed),
            }),
        ),
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
