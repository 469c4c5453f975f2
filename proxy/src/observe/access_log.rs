//! The access log: one JSON object per line, written once per request from borrowed fields,
//! gathered in memory and handed to the non-blocking writers (stdout and `log.file`) in batches:
//! at 32 KiB or every 100 ms, and before the process exits. Handing over every line on its own
//! woke a writer thread and made a write syscall per line and sink (about +1.2 s of system time
//! per 100k requests); as nginx's `access_log ... buffer= flush=`. Nothing is built when
//! `log.access_log` is off.

use std::io::Write;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use std::time::Duration;

use pingora::proxy::Session;
use tracing_appender::non_blocking::NonBlocking;

use crate::gateway::request_ctx::RequestCtx;
use crate::observe::json_line::{json_key, JsonObject};

/// A batch is handed to the writers once it holds this much...
const FLUSH_BYTES: usize = 32 * 1024;
/// ...or when it is this old: how late a line may reach the log.
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// Where access log lines go; fixed at start (the log file cannot change on reload).
#[derive(Clone)]
pub struct AccessLog {
    batch: Arc<Batch>,
}

struct Batch {
    sinks: Vec<NonBlocking>,
    pending: Mutex<Vec<u8>>,
    clock: Rfc3339Clock,
}

/// One line's fields, in the order they are written.
#[cfg_attr(test, derive(serde::Serialize))]
struct Line<'a> {
    time: &'a str,
    request_id: &'a str,
    client_ip: Option<std::net::IpAddr>,
    method: &'a str,
    path: &'a str,
    status: u16,
    /// The matched route (`none`: no route matched).
    route: &'a str,
    /// The route's upstream group.
    upstream: Option<&'a str>,
    backend: Option<&'a str>,
    attempts: usize,
    /// Written in milliseconds (`duration_ms`), from whole microseconds.
    #[cfg_attr(test, serde(rename = "duration_ms", serialize_with = "tests::as_ms"))]
    duration_us: u64,
    #[cfg_attr(
        test,
        serde(rename = "upstream_ms", serialize_with = "tests::opt_as_ms")
    )]
    upstream_us: Option<u64>,
    bytes_sent: usize,
    /// `HTTP/1.1`, `HTTP/2.0`, ...
    proto: &'a str,
    /// The TLS version (`TLSv1_3`), absent over plain HTTP.
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    tls: Option<&'a str>,
}

impl Line<'_> {
    /// The JSON object, as serde_json would write the struct (see the tests).
    fn write_json(&self, out: &mut Vec<u8>) {
        let mut o = JsonObject::begin(out);
        o.plain_str(json_key!("time"), self.time);
        o.str(json_key!("request_id"), self.request_id);
        o.opt_ip(json_key!("client_ip"), self.client_ip);
        o.str(json_key!("method"), self.method);
        o.str(json_key!("path"), self.path);
        o.uint(json_key!("status"), u64::from(self.status));
        o.str(json_key!("route"), self.route);
        o.opt_str(json_key!("upstream"), self.upstream);
        o.opt_str(json_key!("backend"), self.backend);
        o.uint(json_key!("attempts"), self.attempts as u64);
        o.millis(json_key!("duration_ms"), self.duration_us);
        o.opt_millis(json_key!("upstream_ms"), self.upstream_us);
        o.uint(json_key!("bytes_sent"), self.bytes_sent as u64);
        o.plain_str(json_key!("proto"), self.proto);
        if let Some(tls) = self.tls {
            o.str(json_key!("tls"), tls);
        }
        o.end();
    }
}

impl AccessLog {
    /// Also starts the thread that hands over batches every `FLUSH_INTERVAL`; it holds a weak
    /// reference and ends with the log.
    pub fn new(sinks: Vec<NonBlocking>) -> Self {
        Self::with_flush_interval(sinks, FLUSH_INTERVAL)
    }

    fn with_flush_interval(sinks: Vec<NonBlocking>, interval: Duration) -> Self {
        let batch = Arc::new(Batch {
            sinks,
            pending: Mutex::new(Vec::with_capacity(FLUSH_BYTES)),
            clock: Rfc3339Clock::default(),
        });
        let weak = Arc::downgrade(&batch);
        let flusher = std::thread::Builder::new()
            .name("access-log-flush".into())
            .spawn(move || loop {
                std::thread::sleep(interval);
                match weak.upgrade() {
                    Some(batch) => batch.flush(),
                    None => return,
                }
            });
        if let Err(e) = flusher {
            // Lines still go out when a batch fills and at exit; only the 100 ms bound is lost.
            tracing::error!(error = %e, "cannot start the access log flusher thread");
        }
        Self { batch }
    }

    /// Hands every gathered line to the writers now (before the process exits).
    pub fn flush(&self) {
        self.batch.flush();
    }

    /// Writes the line of a finished request.
    pub fn write(&self, session: &Session, ctx: &RequestCtx, status: u16, elapsed: Duration) {
        let req = session.req_header();
        let mut time_buf = [0u8; TIME_LEN];
        let time = self.batch.clock.now(&mut time_buf);
        let tls_version = session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .map(|ssl| ssl.version.clone());
        let line = Line {
            time,
            request_id: ctx.request_id(),
            client_ip: ctx.client.or(ctx.peer),
            method: req.method.as_str(),
            path: ctx
                .original_path
                .as_deref()
                .unwrap_or_else(|| req.uri.path_and_query().map_or("/", |p| p.as_str())),
            route: ctx.route_name(),
            upstream: ctx.group().map(|g| &*g.settings.name),
            status,
            backend: ctx
                .backend
                .as_ref()
                .filter(|_| ctx.upstream_time.is_some())
                .map(|b| &*b.label),
            attempts: ctx.attempts,
            duration_us: micros(elapsed),
            upstream_us: ctx.upstream_time.map(micros),
            bytes_sent: session.as_ref().body_bytes_sent(),
            proto: match req.version {
                http::Version::HTTP_2 => "HTTP/2.0",
                http::Version::HTTP_10 => "HTTP/1.0",
                http::Version::HTTP_09 => "HTTP/0.9",
                http::Version::HTTP_3 => "HTTP/3.0",
                _ => "HTTP/1.1",
            },
            tls: tls_version.as_deref(),
        };
        let mut buf = Vec::with_capacity(320);
        line.write_json(&mut buf);
        buf.push(b'\n');
        self.batch.push(&buf);
    }
}

impl Batch {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.pending.lock()
    }

    fn push(&self, line: &[u8]) {
        let full = {
            let mut pending = self.lock();
            pending.extend_from_slice(line);
            (pending.len() >= FLUSH_BYTES).then(|| Self::take(&mut pending))
        };
        if let Some(chunk) = full {
            self.send(&chunk);
        }
    }

    fn flush(&self) {
        let chunk = Self::take(&mut self.lock());
        if !chunk.is_empty() {
            self.send(&chunk);
        }
    }

    fn take(pending: &mut Vec<u8>) -> Vec<u8> {
        std::mem::replace(pending, Vec::with_capacity(FLUSH_BYTES))
    }

    fn send(&self, chunk: &[u8]) {
        for sink in &self.sinks {
            // Non-blocking: a full queue drops the batch (counted by tracing-appender), never
            // stalls a request.
            let _ = sink.clone().write_all(chunk);
        }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.flush();
    }
}

/// `d` in whole microseconds, rounded to the nearest.
fn micros(d: Duration) -> u64 {
    u64::try_from((d.as_nanos() + 500) / 1000).unwrap_or(u64::MAX)
}

/// `2026-11-26T04:55:32.123Z`: RFC 3339, UTC, milliseconds.
const TIME_LEN: usize = 24;

/// The lines' timestamps. humantime formats the date and time once per second (~0.6k
/// instructions); within the second only the milliseconds change.
#[derive(Default)]
struct Rfc3339Clock {
    /// The second formatted last (seconds since the epoch) and its text up to the `.`.
    second: Mutex<(u64, [u8; 20])>,
}

impl Rfc3339Clock {
    /// The time now, in `buf`.
    fn now<'b>(&self, buf: &'b mut [u8; TIME_LEN]) -> &'b str {
        let now = std::time::SystemTime::now();
        let since = now
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let (secs, millis) = (since.as_secs(), since.subsec_millis());
        {
            let mut second = self.second.lock();
            if second.0 != secs || second.1[0] == 0 {
                // Always 24 bytes up to the year 9999.
                let text = humantime::format_rfc3339_millis(now).to_string();
                if let Some(head) = text.as_bytes().get(..20) {
                    second.1.copy_from_slice(head);
                    second.0 = secs;
                }
            }
            buf[..20].copy_from_slice(&second.1);
        }
        buf[20] = b'0' + (millis / 100) as u8;
        buf[21] = b'0' + (millis / 10 % 10) as u8;
        buf[22] = b'0' + (millis % 10) as u8;
        buf[23] = b'Z';
        std::str::from_utf8(&buf[..]).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that keeps what it is given, for a `NonBlocking` sink.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A log whose timer never fires during a test, its sink, and the sink's guard (dropping it
    /// waits until the writer thread has written everything handed over).
    fn quiet_log() -> (
        AccessLog,
        Capture,
        tracing_appender::non_blocking::WorkerGuard,
    ) {
        let capture = Capture::default();
        let (sink, guard) = tracing_appender::non_blocking(capture.clone());
        let log = AccessLog::with_flush_interval(vec![sink], Duration::from_secs(3600));
        (log, capture, guard)
    }

    fn line(i: usize) -> Vec<u8> {
        format!("{{\"request_id\":\"line-{i:06}\"}}\n").into_bytes()
    }

    #[test]
    fn lines_wait_for_a_flush_then_all_go_out_in_order() {
        let (log, capture, guard) = quiet_log();
        let lines: Vec<u8> = (0..3).flat_map(line).collect();
        for i in 0..3 {
            log.batch.push(&line(i));
        }
        assert_eq!(
            log.batch.lock().len(),
            lines.len(),
            "handed over before a flush"
        );
        log.flush();
        assert!(log.batch.lock().is_empty());
        drop(guard);
        assert_eq!(*capture.0.lock(), lines);
    }

    #[test]
    fn a_full_batch_goes_out_without_a_flush() {
        let (log, capture, guard) = quiet_log();
        let mut pushed = Vec::new();
        let mut i = 0;
        while pushed.len() < FLUSH_BYTES {
            pushed.extend_from_slice(&line(i));
            log.batch.push(&line(i));
            i += 1;
        }
        assert!(log.batch.lock().is_empty(), "a full batch stayed pending");
        drop(guard);
        assert_eq!(*capture.0.lock(), pushed);
    }

    #[test]
    fn dropping_the_log_writes_what_is_pending() {
        let (log, capture, guard) = quiet_log();
        log.batch.push(&line(7));
        drop(log);
        drop(guard);
        assert_eq!(*capture.0.lock(), line(7));
    }

    #[test]
    fn lines_are_what_serde_json_writes_for_the_same_fields() {
        let full = Line {
            time: "2026-11-26T04:55:32.123Z",
            request_id: "id-\"quoted\"",
            client_ip: Some("127.0.0.9".parse().unwrap()),
            method: "GET",
            path: "/caf\u{e9}/a b?x=\\&y=\u{1}",
            status: 200,
            route: "api",
            upstream: Some("backends"),
            backend: Some("127.0.0.1:9001"),
            attempts: 2,
            duration_us: 12_345,
            upstream_us: Some(500),
            bytes_sent: 1234,
            proto: "HTTP/1.1",
            tls: Some("TLSv1_3"),
        };
        let bare = Line {
            client_ip: Some("::1".parse().unwrap()),
            upstream: None,
            backend: None,
            attempts: 0,
            duration_us: 3000,
            upstream_us: None,
            tls: None,
            ..full
        };
        let no_client = Line {
            client_ip: None,
            duration_us: 1,
            ..bare
        };
        for line in [full, bare, no_client] {
            let mut ours = Vec::new();
            line.write_json(&mut ours);
            assert_eq!(
                String::from_utf8_lossy(&ours),
                serde_json::to_string(&line).unwrap()
            );
        }
    }

    pub fn as_ms<S: serde::Serializer>(us: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(*us as f64 / 1000.0)
    }

    pub fn opt_as_ms<S: serde::Serializer>(us: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match us {
            Some(us) => as_ms(us, s),
            None => s.serialize_none(),
        }
    }

    #[test]
    fn time_is_rfc3339_utc_with_milliseconds_and_now() {
        let clock = Rfc3339Clock::default();
        for _ in 0..3 {
            let mut buf = [0u8; TIME_LEN];
            let t = clock.now(&mut buf).to_owned();
            assert_eq!(t.len(), 24, "{t}");
            assert!(t.ends_with('Z') && t.as_bytes()[19] == b'.', "{t}");
            let parsed = humantime::parse_rfc3339(&t).unwrap_or_else(|e| panic!("{t}: {e}"));
            let off = std::time::SystemTime::now()
                .duration_since(parsed)
                .unwrap_or_else(|e| e.duration());
            assert!(off < Duration::from_secs(2), "{t} is {off:?} off");
        }
    }
}
