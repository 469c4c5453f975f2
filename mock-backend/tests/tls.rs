//! HTTPS, end to end: the real `mock-backend` binary with `--tls-cert/--tls-key`, on a loopback
//! port the OS picks, with a throwaway CA and leaf made at test time. Clients are rustls clients
//! that trust only the CA they are given, with SNI `localhost`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::KeyPair;
use rustls::pki_types::ServerName;
use rustls::{CertificateError, ClientConfig};
use test_support::TestCa;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use common::{
    poll_until, request_bytes, run_expecting_exit, take_response, Backend, Response, TIMEOUT,
};

/// What the tests' clients offer by ALPN.
const HTTP1: &[&[u8]] = &[b"http/1.1"];

/// A directory of its own under Cargo's scratch space for integration tests, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "tls-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    fn write(&self, name: &str, contents: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write temp file");
        path.to_str().expect("UTF-8 path").to_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Files for a backend: a CA, and a leaf for `localhost` and 127.0.0.1 in `dir`.
struct Certs {
    ca: TestCa,
    cert: String,
    key: String,
    _dir: TempDir,
}

impl Certs {
    fn new(label: &str) -> Self {
        let dir = TempDir::new(label);
        let ca = TestCa::new("mock-backend test CA");
        let (cert_pem, key_pem) = ca.leaf(&["localhost", "127.0.0.1"]);
        Self {
            cert: dir.write("leaf.pem", &cert_pem),
            key: dir.write("leaf.key", &key_pem),
            ca,
            _dir: dir,
        }
    }

    /// The flags that make `mock-backend` serve HTTPS with this leaf.
    fn tls_args(&self) -> [&str; 4] {
        ["--tls-cert", &self.cert, "--tls-key", &self.key]
    }
}

impl Backend {
    /// A TLS connection to this backend with SNI `localhost`, trusting what `config` trusts.
    async fn connect(&self, config: Arc<ClientConfig>) -> std::io::Result<Client> {
        let connect = async {
            let tcp = TcpStream::connect(self.addr).await?;
            tcp.set_nodelay(true)?;
            let sni = ServerName::try_from("localhost").expect("server name");
            TlsConnector::from(config).connect(sni, tcp).await
        };
        let stream = tokio::time::timeout(TIMEOUT, connect)
            .await
            .expect("TLS connect timed out")?;
        Ok(Client {
            stream,
            buf: Vec::new(),
        })
    }
}

/// A minimal HTTP/1.1 client on one keep-alive TLS connection.
struct Client {
    stream: TlsStream<TcpStream>,
    buf: Vec<u8>,
}

impl Client {
    async fn get(&mut self, path: &str) -> Response {
        self.request("GET", path, None).await
    }

    async fn request(&mut self, method: &str, path: &str, body: Option<&str>) -> Response {
        tokio::time::timeout(TIMEOUT, self.exchange(method, path, body))
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no response within {TIMEOUT:?}"))
    }

    async fn exchange(&mut self, method: &str, path: &str, body: Option<&str>) -> Response {
        let req = request_bytes(method, path, "localhost", body);
        self.stream.write_all(&req).await.expect("send");
        self.stream.flush().await.expect("flush");
        loop {
            if let Some(response) = take_response(&mut self.buf, method) {
                return response;
            }
            self.fill().await;
        }
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await.expect("read response");
        assert!(n > 0, "connection closed mid-response");
        self.buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads `stream` to its end (bounded by `TIMEOUT`), tolerating a reset.
async fn read_to_close(stream: &mut (impl AsyncRead + AsyncWrite + Unpin)) -> Vec<u8> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the server did not close the connection");
    got
}

/// The rustls error inside a failed handshake's `io::Error`.
fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_every_route_as_plain_http_does() {
    let certs = Certs::new("routes");
    let backend = Backend::start("tb", &certs.tls_args());
    // The first line keeps its plain-HTTP form (scripts and tests parse the address from it).
    assert_eq!(
        backend.stdout()[0],
        format!("mock-backend tb listening on {}", backend.addr)
    );
    assert!(
        backend.wait_stdout(&format!(
            "mock-backend tb tls: HTTPS with certificate {}",
            certs.cert
        )),
        "no tls line on stdout: {:?}",
        backend.stdout()
    );
    let mut c = backend
        .connect(certs.ca.client(HTTP1, false))
        .await
        .expect("handshake");
    let (_, session) = c.stream.get_ref();
    assert_eq!(session.alpn_protocol(), Some(&b"http/1.1"[..]));

    let health = c.get("/health").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.body, b"ok\n");

    let echo = c
        .request("POST", "/some/path?q=1", Some(r#"{"x": 1}"#))
        .await;
    assert_eq!(echo.status, 200);
    let echo = echo.json();
    assert_eq!(echo["backend"], "tb");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/some/path");
    assert_eq!(echo["query"], "q=1");
    assert_eq!(echo["headers"]["host"], "localhost");
    assert_eq!(echo["headers"]["content-type"], "application/json");
    assert_eq!(echo["body_bytes"], 8);

    assert_eq!(c.get("/status/418").await.status, 418);
    assert_eq!(c.get("/bytes/5").await.body, b"xxxxx");

    // Fault injection and its control routes work the same over TLS.
    let put = c
        .request("PUT", "/_mock/fault", Some(r#"{"status": 503}"#))
        .await;
    assert_eq!(
        put.json(),
        serde_json::json!({"status": 503, "rate": 1.0, "delay_ms": 0, "reset": false})
    );
    let faulted = c.get("/x").await;
    assert_eq!(faulted.status, 503);
    assert_eq!(faulted.json()["fault"], true);
    assert_eq!(
        c.get("/health").await.status,
        200,
        "health is never faulted"
    );
    assert_eq!(c.request("DELETE", "/_mock/fault", None).await.status, 200);
    assert_eq!(c.get("/x").await.status, 200);

    let stats = c.get("/stats").await.json();
    assert_eq!(
        stats["connections"], 1,
        "all of it on one keep-alive connection"
    );
    assert_eq!(stats["traffic_connections"], 1);
    assert_eq!(stats["requests"], 5);
    assert_eq!(stats["faulted"], 1);
    assert_eq!(stats["paths"]["/health"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_fault_drops_https_connections_unanswered() {
    let certs = Certs::new("reset");
    let backend = Backend::start("tb", &certs.tls_args());
    let mut c = backend
        .connect(certs.ca.client(HTTP1, false))
        .await
        .expect("handshake");
    let put = c
        .request("PUT", "/_mock/fault", Some(r#"{"reset": true}"#))
        .await;
    assert_eq!(put.json()["reset"], true);

    let mut victim = backend
        .connect(certs.ca.client(HTTP1, false))
        .await
        .expect("handshake");
    victim
        .stream
        .write_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("send");
    victim.stream.flush().await.expect("flush");
    let mut chunk = [0u8; 1024];
    let read = tokio::time::timeout(TIMEOUT, victim.stream.read(&mut chunk))
        .await
        .expect("the server neither answered nor closed");
    // No close_notify comes first, so rustls may also report the end as an unexpected EOF.
    match read {
        Ok(0) => {}
        Ok(n) => panic!("answered: {:?}", String::from_utf8_lossy(&chunk[..n])),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
            ),
            "neither EOF nor a reset: {e}"
        ),
    }

    assert_eq!(
        c.get("/health").await.status,
        200,
        "health is never faulted"
    );
    assert_eq!(c.get("/stats").await.json()["faulted"], 1);
    assert_eq!(c.request("DELETE", "/_mock/fault", None).await.status, 200);
    let mut fresh = backend
        .connect(certs.ca.client(HTTP1, false))
        .await
        .expect("handshake");
    assert_eq!(fresh.get("/x").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_handshakes_are_logged_and_the_server_carries_on() {
    let certs = Certs::new("refused");
    let backend = Backend::start("tb", &certs.tls_args());

    // A client trusting a different CA refuses the server's certificate.
    let other = TestCa::new("some other CA");
    let err = backend
        .connect(other.client(HTTP1, false))
        .await
        .err()
        .expect("a client trusting another CA completed the handshake");
    assert!(
        matches!(
            rustls_error(&err),
            Some(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))
        ),
        "unexpected handshake error: {err:?}"
    );
    assert!(
        backend.wait_stderr("TLS handshake with 127.0.0.1:"),
        "the failed handshake was not logged"
    );

    // Plain HTTP on the TLS port gets no HTTP answer, only a closed connection.
    let mut plain = TcpStream::connect(backend.addr).await.expect("connect");
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("send");
    let answer = read_to_close(&mut plain).await;
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP was answered: {:?}",
        String::from_utf8_lossy(&answer)
    );

    // A client that connects and leaves without a word.
    drop(TcpStream::connect(backend.addr).await.expect("connect"));

    // Through all of that the server kept serving.
    let mut c = backend
        .connect(certs.ca.client(HTTP1, false))
        .await
        .expect("handshake");
    assert_eq!(c.get("/health").await.status, 200);
    assert_eq!(c.get("/x").await.json()["path"], "/x");
    let stats = c.get("/stats").await.json();
    assert_eq!(
        stats["connections"], 4,
        "connections counts TCP connections, failed handshakes included"
    );
    assert_eq!(stats["requests"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_https_requests() {
    let certs = Certs::new("drain");
    let mut backend = Backend::start("tb", &certs.tls_args());
    let mut slow = backend
        .connect(certs.ca.client(HTTP1, false))
        .await
        .expect("handshake");
    let in_flight = tokio::spawn(async move { slow.get("/delay/300").await });

    // Wait until the slow request is in flight (the /stats read itself is one more).
    let mut probe = backend
        .connect(certs.ca.client(HTTP1, false))
        .await
        .expect("handshake");
    let deadline = Instant::now() + TIMEOUT;
    while probe.get("/stats").await.json()["in_flight"] != 2 {
        assert!(Instant::now() < deadline, "the slow request never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(probe);

    let exit = tokio::task::spawn_blocking(move || {
        let exit = backend.terminate();
        (exit, backend)
    });
    let answer = tokio::time::timeout(TIMEOUT, in_flight)
        .await
        .expect("in-flight request not answered")
        .expect("request task");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["path"], "/delay/300");
    let (exit, backend) = exit.await.expect("terminate task");
    assert!(exit.success(), "exit after drain: {exit:?}");
    assert!(
        poll_until(|| backend.stdout().iter().any(|l| l.ends_with(" stopped"))),
        "no stopped line: {:?}",
        backend.stdout()
    );
}

#[test]
fn tls_flags_go_together_and_bad_files_refuse_to_start() {
    let certs = Certs::new("flags");
    let dir = TempDir::new("flags-extra");
    let other_key = dir.write(
        "other.key",
        &KeyPair::generate().expect("key").serialize_pem(),
    );
    let missing = dir.0.join("missing.pem");
    let missing = missing.to_str().unwrap();
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("cert without key", vec!["--tls-cert", &certs.cert]),
        ("key without cert", vec!["--tls-key", &certs.key]),
        (
            "missing cert",
            vec!["--tls-cert", missing, "--tls-key", &certs.key],
        ),
        (
            "missing key",
            vec!["--tls-cert", &certs.cert, "--tls-key", missing],
        ),
        (
            "no certificate in the cert file",
            vec!["--tls-cert", &certs.key, "--tls-key", &certs.key],
        ),
        (
            "no key in the key file",
            vec!["--tls-cert", &certs.cert, "--tls-key", &certs.cert],
        ),
        (
            "key of another certificate",
            vec!["--tls-cert", &certs.cert, "--tls-key", &other_key],
        ),
    ];
    for (case, args) in cases {
        let out = run_expecting_exit(&args)
            .unwrap_or_else(|| panic!("{case}: mock-backend did not exit"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{case}: {stderr}");
        assert!(!stdout.contains("listening on"), "{case}: listened anyway");
        assert!(!stderr.trim().is_empty(), "{case}: no error message");
        eprintln!("{case}: {}", stderr.trim());
    }
}
