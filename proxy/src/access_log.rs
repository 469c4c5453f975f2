//! The access log: one JSON object per line, through the logging writers (stdout and
//! `log.file`). Only built when `log.access_log` is on.

use std::time::Duration;

use pingora::proxy::Session;

use crate::context::RequestCtx;

/// tracing target of access log events; the log setup routes it to its own plain formatter.
pub const TARGET: &str = "access";

/// Writes the access log line of a finished request.
pub fn write(session: &Session, ctx: &RequestCtx, status: &str, elapsed: Duration) {
    let req = session.req_header();
    let line = serde_json::json!({
        "time": humantime_now(),
        "request_id": ctx.request_id(),
        "client_ip": ctx.client.or(ctx.peer).map(|ip| ip.to_string()),
        "method": req.method.as_str(),
        "path": req.uri.path_and_query().map_or("/", |p| p.as_str()),
        "status": status.parse::<u16>().unwrap_or(0),
        "backend": ctx.backend.as_ref().filter(|_| ctx.upstream_time.is_some()).map(|b| &*b.label),
        "attempts": ctx.attempts,
        "duration_ms": ms(elapsed),
        "upstream_ms": ctx.upstream_time.map(ms),
        "bytes_sent": session.as_ref().body_bytes_sent(),
    });
    tracing::info!(target: TARGET, "{line}");
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// RFC 3339 UTC time with milliseconds, without pulling in a date crate.
fn humantime_now() -> String {
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
        let t = super::humantime_now();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }
}
