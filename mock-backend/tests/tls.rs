//! HTTPS, end to end: the real `mock-backend` binary with `--tls-cert/--tls-key`, on a loopback
//! port the OS picks, with a throwaway CA and leaf made at test time. Clients are rustls clients
//! that trust only the CA they are given, with SNI `localhost`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Bound on anything a test waits for (start-up, a handshake, one response, an exit).
const TIMEOUT: Duration = Duration::from_secs(30);

/// A throwaway certificate authority.
struct TestCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-sign the CA");
        Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses) signed by this CA, and its
    /// key: (certificate PEM, PKCS#8 key PEM).
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign the leaf");
        (cert.pem(), key.serialize_pem())
    }

    /// A client that trusts this CA only.
    fn client(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.cert_pem.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("add root");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

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
}

/// Polls `done` every 10 ms until it holds or `TIMEOUT` passes; whether it held.
fn poll_until(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running `mock-backend` over TLS, killed when dropped. Its stdout and stderr are read to
/// their end by threads (so the pipes never fill) and kept for the test to look at.
struct Backend {
    child: Child,
    addr: SocketAddr,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Backend {
    fn start(certs: &Certs) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mock-backend"))
            .args(["--listen", "127.0.0.1:0", "--name", "tb"])
            .args(["--tls-cert", &certs.cert, "--tls-key", &certs.key])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mock-backend");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let out = BufReader::new(child.stdout.take().expect("stdout piped"));
        let lines = stdout.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in out.lines() {
                let Ok(line) = line else { break };
                let addr = line
                    .split_once(" listening on ")
                    .map(|(_, a)| a.trim().to_owned());
                lines.lock().unwrap().push(line);
                if let Some(addr) = addr {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
            }
        });
        let err = BufReader::new(child.stderr.take().expect("stderr piped"));
        let lines = stderr.clone();
        std::thread::spawn(move || {
            for line in err.lines() {
                let Ok(line) = line else { break };
                eprintln!("[mock-backend] {line}");
                lines.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(TIMEOUT) {
            Ok(addr) => addr.parse().expect("listen address"),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("mock-backend did not report its address: {e}");
            }
        };
        Self {
            child,
            addr,
            stdout,
            stderr,
        }
    }

    fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits (bounded) for a stdout line equal to `line`.
    fn wait_stdout(&self, line: &str) -> bool {
        poll_until(|| self.stdout.lock().unwrap().iter().any(|l| l == line))
    }

    /// Waits (bounded) for a stderr line containing `needle`.
    fn wait_stderr(&self, needle: &str) -> bool {
        poll_until(|| {
            self.stderr
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(needle))
        })
    }

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

    /// SIGTERM, then waits (bounded) for the exit.
    fn terminate(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let mut exit = None;
        let exited = poll_until(|| {
            exit = self.child.try_wait().expect("wait");
            exit.is_some()
        });
        assert!(exited, "mock-backend did not exit after SIGTERM");
        exit.unwrap()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Response {
    status: u16,
    body: Vec<u8>,
}

impl Response {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body {:?} is not JSON: {e}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// A minimal HTTP/1.1 client on one keep-alive TLS connection; responses are framed by
/// Content-Length (which is all `mock-backend` sends).
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
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
        if let Some(body) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body.unwrap_or(""));
        self.stream.write_all(req.as_bytes()).await.expect("send");
        self.stream.flush().await.expect("flush");

        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            self.fill().await;
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec()).expect("UTF-8 head");
        self.buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line in {head:?}"));
        let len: usize = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
        while self.buf.len() < len {
            self.fill().await;
        }
        let body = self.buf.drain(..len).collect();
        Response { status, body }
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
    let backend = Backend::start(&certs);
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
    let mut c = backend.connect(certs.ca.client()).await.expect("handshake");
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
    let backend = Backend::start(&certs);
    let mut c = backend.connect(certs.ca.client()).await.expect("handshake");
    let put = c
        .request("PUT", "/_mock/fault", Some(r#"{"reset": true}"#))
        .await;
    assert_eq!(put.json()["reset"], true);

    let mut victim = backend.connect(certs.ca.client()).await.expect("handshake");
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
    let mut fresh = backend.connect(certs.ca.client()).await.expect("handshake");
    assert_eq!(fresh.get("/x").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_handshakes_are_logged_and_the_server_carries_on() {
    let certs = Certs::new("refused");
    let backend = Backend::start(&certs);

    // A client trusting a different CA refuses the server's certificate.
    let other = TestCa::new("some other CA");
    let err = backend
        .connect(other.client())
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
    let mut c = backend.connect(certs.ca.client()).await.expect("handshake");
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
    let mut backend = Backend::start(&certs);
    let mut slow = backend.connect(certs.ca.client()).await.expect("handshake");
    let in_flight = tokio::spawn(async move { slow.get("/delay/300").await });

    // Wait until the slow request is in flight (the /stats read itself is one more).
    let mut probe = backend.connect(certs.ca.client()).await.expect("handshake");
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
        let mut child = Command::new(env!("CARGO_BIN_EXE_mock-backend"))
            .args(["--listen", "127.0.0.1:0"])
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mock-backend");
        let mut status = None;
        if !poll_until(|| {
            status = child.try_wait().expect("wait");
            status.is_some()
        }) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{case}: mock-backend did not exit");
        }
        let out = child.wait_with_output().expect("collect output");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(status.and_then(|s| s.code()), Some(2), "{case}: {stderr}");
        assert!(!stdout.contains("listening on"), "{case}: listened anyway");
        assert!(!stderr.trim().is_empty(), "{case}: no error message");
        eprintln!("{case}: {}", stderr.trim());
    }
}
