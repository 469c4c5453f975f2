//! Fault injection, end to end: the real `mock-backend` binary on a loopback port the OS picks,
//! driven over plain HTTP/1.1 keep-alive connections.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{request_bytes, run_expecting_exit, take_response, Backend, Response, TIMEOUT};

impl Backend {
    /// A plain HTTP client on a new connection to this backend.
    fn client(&self) -> Client {
        Client::connect(self.addr)
    }
}

/// A minimal HTTP/1.1 client on one keep-alive connection.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    fn get(&mut self, path: &str) -> Response {
        self.request("GET", path, None)
    }

    fn request(&mut self, method: &str, path: &str, body: Option<&str>) -> Response {
        let req = request_bytes(method, path, "test", body);
        self.stream.write_all(&req).expect("send");
        loop {
            if let Some(response) = take_response(&mut self.buf, method) {
                return response;
            }
            self.fill();
        }
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).expect("read response");
        assert!(n > 0, "connection closed mid-response");
        self.buf.extend_from_slice(&chunk[..n]);
    }
}

fn put_fault(client: &mut Client, body: &str) -> Response {
    client.request("PUT", "/_mock/fault", Some(body))
}

/// How a connection ended that got no answer.
#[derive(Debug, PartialEq)]
enum Unanswered {
    Eof,
    Reset,
}

/// Sends `GET path` on `client`'s connection and expects not one byte back: the server must
/// end the connection, with a FIN (EOF) or an RST (connection reset). A hang fails on the
/// client's read timeout.
fn expect_no_answer(client: &mut Client, path: &str) -> Unanswered {
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    client.stream.write_all(req.as_bytes()).expect("send");
    let mut chunk = [0u8; 1024];
    let ended = match client.stream.read(&mut chunk) {
        Ok(0) => Unanswered::Eof,
        Ok(n) => panic!(
            "{path} was answered: {:?}",
            String::from_utf8_lossy(&chunk[..n])
        ),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Unanswered::Reset,
        Err(e) => panic!("{path}: neither an answer, EOF nor a reset: {e}"),
    };
    // Linux reports an RST to a blocked read as ECONNRESET, so the abort itself is checked.
    if cfg!(target_os = "linux") {
        assert_eq!(ended, Unanswered::Reset, "{path}: closed without an RST");
    }
    ended
}

#[test]
fn full_rate_faults_traffic_but_never_health_stats_or_control() {
    let backend = Backend::start("fb", &[]);
    let mut c = backend.client();
    assert_eq!(c.get("/x").status, 200, "no fault before one is set");
    assert_eq!(c.get("/_mock/fault").json(), serde_json::Value::Null);

    let put = put_fault(&mut c, r#"{"status": 500, "rate": 1.0}"#);
    assert_eq!(put.status, 200);
    assert_eq!(
        put.json(),
        serde_json::json!({"status": 500, "rate": 1.0, "delay_ms": 0, "reset": false})
    );

    for _ in 0..5 {
        let r = c.get("/x");
        assert_eq!(r.status, 500);
        assert_eq!(
            r.json(),
            serde_json::json!({"backend": "fb", "fault": true, "status": 500})
        );
        assert_eq!(r.header("x-mock-fault"), Some("true"));
    }
    let post = c.request("POST", "/delay/0", Some("{}"));
    assert_eq!(
        post.status, 500,
        "every route but the control ones is faulted"
    );

    let health = c.get("/health");
    assert_eq!(health.status, 200);
    assert_eq!(health.body, b"ok\n");
    assert_eq!(health.header("x-mock-fault"), None);
    assert_eq!(
        c.get("/_mock/fault").json(),
        serde_json::json!({"status": 500, "rate": 1.0, "delay_ms": 0, "reset": false})
    );

    let stats = c.get("/stats");
    assert_eq!(stats.status, 200);
    let stats = stats.json();
    assert_eq!(stats["faulted"], 6);
    assert_eq!(
        stats["requests"], 7,
        "faulted requests count; control ones do not"
    );
    assert_eq!(
        stats["paths"],
        serde_json::json!({"/x": 6, "/delay/0": 1, "/health": 1})
    );
    assert_eq!(
        stats["fault"],
        serde_json::json!({"status": 500, "rate": 1.0, "delay_ms": 0, "reset": false})
    );

    let delete = c.request("DELETE", "/_mock/fault", None);
    assert_eq!(delete.status, 200);
    assert_eq!(delete.json(), serde_json::Value::Null);
    let r = c.get("/x");
    assert_eq!(r.status, 200, "DELETE restores normal answers");
    assert_eq!(r.json()["path"], "/x");
    assert_eq!(c.get("/status/418").status, 418);
    assert_eq!(c.get("/_mock/fault").json(), serde_json::Value::Null);
    let stats = c.get("/stats").json();
    assert_eq!(stats["faulted"], 6);
    assert_eq!(stats["fault"], serde_json::Value::Null);
}

#[test]
fn status_200_with_delay_is_slow_but_healthy() {
    let backend = Backend::start("fb", &[]);
    let mut c = backend.client();
    let put = put_fault(&mut c, r#"{"status": 200, "delay_ms": 200}"#);
    assert_eq!(put.status, 200);
    assert_eq!(
        put.json(),
        serde_json::json!({"status": 200, "rate": 1.0, "delay_ms": 200, "reset": false})
    );

    let started = Instant::now();
    let r = c.get("/x");
    let took = started.elapsed();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["fault"], true);
    assert!(
        took >= Duration::from_millis(200),
        "answered after {took:?}"
    );
    assert_eq!(c.get("/health").body, b"ok\n");
}

#[test]
fn half_rate_faults_about_half() {
    let backend = Backend::start("fb", &[]);
    let mut c = backend.client();
    assert_eq!(
        put_fault(&mut c, r#"{"status": 503, "rate": 0.5}"#).status,
        200
    );
    let mut faulted = 0;
    for _ in 0..400 {
        match c.get("/x").status {
            503 => faulted += 1,
            200 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        (120..=280).contains(&faulted),
        "{faulted} of 400 requests faulted at rate 0.5"
    );
    let stats = c.get("/stats").json();
    assert_eq!(stats["faulted"], faulted);
    assert_eq!(stats["requests"], 400);
}

#[test]
fn zero_rate_and_bodyless_statuses() {
    let backend = Backend::start("fb", &[]);
    let mut c = backend.client();
    assert_eq!(put_fault(&mut c, r#"{"rate": 0}"#).status, 200);
    assert!((0..50).all(|_| c.get("/x").status == 200));

    // A 204 fault has no body, and the connection stays usable after it.
    assert_eq!(put_fault(&mut c, r#"{"status": 204}"#).status, 200);
    let r = c.get("/x");
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    assert_eq!(r.header("x-mock-fault"), Some("true"));
    assert_eq!(c.get("/x").status, 204);

    // An empty body means all defaults.
    let put = c.request("PUT", "/_mock/fault", Some(""));
    assert_eq!(
        put.json(),
        serde_json::json!({"status": 500, "rate": 1.0, "delay_ms": 0, "reset": false})
    );
    assert_eq!(c.get("/y").status, 500);
    assert_eq!(c.get("/stats").json()["faulted"], 3);
}

#[test]
fn bad_input_is_refused_and_keeps_the_fault() {
    let backend = Backend::start("fb", &[]);
    let mut c = backend.client();
    let good = serde_json::json!({"status": 502, "rate": 1.0, "delay_ms": 0, "reset": false});
    assert_eq!(put_fault(&mut c, r#"{"status": 502}"#).json(), good);
    for body in [
        "{",
        "not json",
        "[]",
        r#"{"status": "500"}"#,
        r#"{"status": 99}"#,
        r#"{"status": 600}"#,
        r#"{"rate": 1.5}"#,
        r#"{"rate": -0.1}"#,
        r#"{"delay_ms": 600001}"#,
        r#"{"delay": 100}"#,
        r#"{"reset": "true"}"#,
        r#"{"reset": 1}"#,
    ] {
        let r = put_fault(&mut c, body);
        assert_eq!(r.status, 400, "{body} was accepted");
        assert!(
            r.json()["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}: no error message"
        );
    }
    assert_eq!(
        c.get("/_mock/fault").json(),
        good,
        "bad PUTs change nothing"
    );
    assert_eq!(c.get("/x").status, 502);

    let post = c.request("POST", "/_mock/fault", Some("{}"));
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, PUT, DELETE"));
    assert_eq!(c.get("/_mock/other").status, 404);
    assert_eq!(c.get("/_mock/fault").json(), good);
}

#[test]
fn reset_fault_drops_connections_unanswered() {
    let backend = Backend::start("fb", &[]);
    let mut c = backend.client();
    // A keep-alive connection opened and used before the fault, as a proxy's pool would hold.
    let mut pooled = backend.client();
    assert_eq!(pooled.get("/x").status, 200);

    let put = put_fault(&mut c, r#"{"reset": true}"#);
    assert_eq!(put.status, 200);
    let reset = serde_json::json!({"status": 500, "rate": 1.0, "delay_ms": 0, "reset": true});
    assert_eq!(put.json(), reset);
    assert_eq!(c.get("/_mock/fault").json(), reset);

    for _ in 0..3 {
        expect_no_answer(&mut backend.client(), "/x");
    }
    expect_no_answer(&mut pooled, "/y");

    // Health, stats and control stay answered, on the control connection and on a fresh one.
    let health = c.get("/health");
    assert_eq!(health.status, 200);
    assert_eq!(health.body, b"ok\n");
    assert_eq!(backend.client().get("/health").status, 200);
    let stats = c.get("/stats").json();
    assert_eq!(stats["faulted"], 4, "resets count as faulted");
    assert_eq!(stats["requests"], 5, "the answered /x and the four resets");
    assert_eq!(
        stats["paths"],
        serde_json::json!({"/x": 4, "/y": 1, "/health": 2})
    );
    assert_eq!(stats["fault"], reset);

    // With a delay the reset comes after it, still unanswered.
    assert_eq!(
        put_fault(&mut c, r#"{"reset": true, "delay_ms": 100}"#).status,
        200
    );
    let started = Instant::now();
    expect_no_answer(&mut backend.client(), "/x");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(100), "reset after {took:?}");

    let delete = c.request("DELETE", "/_mock/fault", None);
    assert_eq!(delete.status, 200);
    assert_eq!(delete.json(), serde_json::Value::Null);
    let r = backend.client().get("/x");
    assert_eq!(r.status, 200, "DELETE restores normal answers");
    assert_eq!(r.json()["path"], "/x");
    assert_eq!(c.get("/stats").json()["faulted"], 5);
}

#[test]
fn reset_false_answers_the_status() {
    let backend = Backend::start("fb", &[]);
    let mut c = backend.client();
    let put = put_fault(&mut c, r#"{"status": 503, "reset": false}"#);
    assert_eq!(
        put.json(),
        serde_json::json!({"status": 503, "rate": 1.0, "delay_ms": 0, "reset": false})
    );
    let r = c.get("/x");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-mock-fault"), Some("true"));
}

#[test]
fn fault_flags_start_a_faulty_backend() {
    let backend = Backend::start("fb", &["--fault-status", "503", "--fault-rate", "1"]);
    let mut c = backend.client();
    assert_eq!(
        c.get("/_mock/fault").json(),
        serde_json::json!({"status": 503, "rate": 1.0, "delay_ms": 0, "reset": false})
    );
    assert_eq!(c.get("/x").status, 503);
    assert_eq!(c.get("/health").status, 200);
    assert_eq!(c.request("DELETE", "/_mock/fault", None).status, 200);
    assert_eq!(c.get("/x").status, 200);
    drop(backend);

    // One flag is enough; the others take their defaults.
    let backend = Backend::start("fb", &["--fault-delay-ms", "5"]);
    assert_eq!(
        backend.client().get("/_mock/fault").json(),
        serde_json::json!({"status": 500, "rate": 1.0, "delay_ms": 5, "reset": false})
    );
    drop(backend);

    let backend = Backend::start("fb", &["--fault-reset"]);
    let mut c = backend.client();
    assert_eq!(
        c.get("/_mock/fault").json(),
        serde_json::json!({"status": 500, "rate": 1.0, "delay_ms": 0, "reset": true})
    );
    expect_no_answer(&mut backend.client(), "/x");
    assert_eq!(c.get("/health").status, 200);
}

#[test]
fn bad_fault_flags_refuse_to_start() {
    for args in [
        ["--fault-rate", "1.5"],
        ["--fault-status", "99"],
        ["--fault-status", "600"],
        ["--fault-delay-ms", "600001"],
    ] {
        let out = run_expecting_exit(&args)
            .unwrap_or_else(|| panic!("mock-backend {args:?} did not exit"));
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}
