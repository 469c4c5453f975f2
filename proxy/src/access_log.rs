//! The access log: one JSON object per line, serialized once per request from borrowed fields
//! and handed to the non-blocking writers (stdout and `log.file`). Nothing is built when
//! `log.access_log` is off.

use std::io::Write;
use std::time::Duration;

use pingora::proxy::Session;
use serde::Serialize;
use tracing_appender::non_blocking::NonBlocking;

use crate::context::RequestCtx;

/// Where access log lines go; fixed at start (the log file cannot change on reload).
pub struct AccessLog {
    sinks: Vec<NonBlocking>,
}

#[derive(Serialize)]
struct Line<'a> {
    time: &'a str,
    request_id: &'a str,
    client_ip: Option<std::net::IpAddr>,
    method: &'a str,
    path: &'a str,
    status: u16,
    backend: Option<&'a str>,
    attempts: usize,
    duration_ms: f64,
    upstream_ms: Option<f64>,
    bytes_sent: usize,
}

impl AccessLog {
    pub fn new(sinks: Vec<NonBlocking>) -> Self {
        Self { sinks }
    }

    /// Writes the line of a finished request.
    pub fn write(&self, session: &Session, ctx: &RequestCtx, status: u16, elapsed: Duration) {
        let req = session.req_header();
        let time = rfc3339_now();
        let line = Line {
            time: &time,
            request_id: ctx.request_id(),
            client_ip: ctx.client.or(ctx.peer),
            method: req.method.as_str(),
            path: req.uri.path_and_query().map_or("/", |p| p.as_str()),
            status,
            backend: ctx
                .backend
                .as_ref()
                .filter(|_| ctx.upstream_time.is_some())
                .map(|b| &*b.label),
            attempts: ctx.attempts,
            duration_ms: ms(elapsed),
            upstream_ms: ctx.upstream_time.map(ms),
            bytes_sent: session.as_ref().body_bytes_sent(),
        };
        let mut buf = Vec::with_capacity(320);
        if serde_json::to_writer(&mut buf, &line).is_err() {
            return;
        }
        buf.push(b'\n');
        for sink in &self.sinks {
            // Non-blocking: a full queue drops the line (counted by tracing-appender), never
            // stalls a request.
            let _ = sink.clone().write_all(&buf);
        }
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// RFC 3339 UTC time with milliseconds, without pulling in a date crate.
fn rfc3339_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{:03}Z",
        now.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn time_is_rfc3339() {
        let t = super::rfc3339_now();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }
}
