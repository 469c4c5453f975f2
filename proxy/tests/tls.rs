//! TLS termination end to end: certificates made by the test, `curl --cacert` over HTTP/1.1 and
//! HTTP/2, SNI, versions, reload of certificates, redirect to HTTPS, and `-t`'s checks.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A proxy with `[tls]` on a held port, `localhost` and `api.example.test` certificates.
struct TlsSetup {
    ca: TestCa,
    dir: TempDir,
    hold: PortHold,
}

impl TlsSetup {
    fn new() -> Self {
        let ca = TestCa::new("gateway test CA");
        let dir = TempDir::new("tls");
        ca.write_ca(dir.path());
        ca.write_leaf(dir.path(), "localhost", &["localhost"]);
        ca.write_leaf(dir.path(), "api", &["api.example.test"]);
        Self {
            ca,
            dir,
            hold: PortHold::new(),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn config(&self, extra: &str) -> String {
        format!(
            "[tls]\nlisten = [\"{}\"]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}, {{ cert = \"{}\", key = \"{}\" }}]\n{extra}\n",
            self.hold.addr,
            self.path("localhost.pem"),
            self.path("localhost.key"),
            self.path("api.pem"),
            self.path("api.key"),
        )
    }

    fn port(&self) -> u16 {
        self.hold.port()
    }
}

/// `curl` over HTTPS: (HTTP version, status, body).
fn curl(setup: &TlsSetup, args: &[&str], path: &str) -> (String, String, String) {
    let url = format!("https://localhost:{}{path}", setup.port());
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "--cacert", &setup.path("ca.pem")])
        .args(args)
        .args(["-w", "\n%{http_version} %{http_code}", &url])
        .output()
        .expect("curl (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (version, status) = tail.split_once(' ').unwrap_or(("", ""));
    (version.to_owned(), status.to_owned(), body.to_owned())
}

async fn tls_ready(setup: &TlsSetup) -> bool {
    let client = setup.ca.client(&[b"http/1.1"], false);
    wait_until(Duration::from_secs(20), || {
        let client = client.clone();
        async move {
            tls_connect(client, setup.hold.addr, "localhost")
                .await
                .is_ok()
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_over_http1_and_http2_with_certificates_chosen_by_sni() {
    let setup = TlsSetup::new();
    let backend = Backend::start("b");
    let proxy = Proxy::start(&[&backend], &setup.config("")).await;
    assert!(
        tls_ready(&setup).await,
        "TLS listener never accepted:\n{}",
        proxy.log()
    );

    let (version, status, body) = curl(&setup, &["--http1.1"], "/echo");
    assert_eq!(
        (version.as_str(), status.as_str()),
        ("1.1", "200"),
        "{body}"
    );
    let echoed: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(echoed["headers"]["x-forwarded-proto"], "https");
    let (version, status, body) = curl(&setup, &["--http2"], "/echo");
    assert_eq!(
        (version.as_str(), status.as_str()),
        ("2", "200"),
        "ALPN h2: {body}"
    );
    let echoed: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(echoed["headers"]["x-forwarded-proto"], "https");

    // SNI: each name its certificate; an unknown name (and none) gets the first.
    let client = setup.ca.client(&[b"http/1.1"], false);
    let localhost = der_of(&setup.dir.path().join("localhost.pem"));
    let api = der_of(&setup.dir.path().join("api.pem"));
    let s = tls_connect(client.clone(), setup.hold.addr, "api.example.test")
        .await
        .unwrap();
    assert_eq!(presented(&s), api);
    let s = tls_connect(client.clone(), setup.hold.addr, "localhost")
        .await
        .unwrap();
    assert_eq!(presented(&s), localhost);
    // An unknown name is not in the default certificate: verification fails, which shows the
    // default was presented (the client checks the name against what it got).
    let err = tls_connect(client, setup.hold.addr, "other.example.test")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("NotValidForName") || err.to_string().contains("not valid"),
        "{err}"
    );

    // Plain HTTP still works beside it, and says http.
    let r = get(proxy.addr, "/echo").await;
    assert_eq!(r.json()["headers"]["x-forwarded-proto"], "http");
    // The access log has the protocol and the TLS version.
    let logged = wait_until(Duration::from_secs(10), || async {
        let log = proxy.log();
        log.lines()
            .any(|l| l.contains("\"proto\":\"HTTP/2.0\"") && l.contains("\"tls\":\"TLS"))
            && log
                .lines()
                .any(|l| l.contains("\"proto\":\"HTTP/1.1\"") && !l.contains("\"tls\""))
    })
    .await;
    assert!(logged, "{}", proxy.log());
    // And the metrics count requests by protocol and TLS.
    let m = proxy.metrics().await;
    let count = |proto: &str, tls: &str| {
        m.sum(
            "gateway_downstream_requests_total",
            &[("proto", proto), ("tls", tls)],
        )
    };
    assert_eq!(count("h2", "true"), 1.0, "{}", m.text);
    assert_eq!(count("http/1.1", "true"), 1.0);
    assert!(count("http/1.1", "false") >= 1.0);
    assert_eq!(count("h2", "false"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_versions_are_refused_and_min_version_is_honoured() {
    let setup = TlsSetup::new();
    let backend = Backend::start("b");
    let proxy = Proxy::start(&[&backend], &setup.config("")).await;
    assert!(tls_ready(&setup).await);
    for max in ["1.0", "1.1"] {
        let (_, status, _) = curl(&setup, &["--tlsv1", "--tls-max", max], "/x");
        assert_eq!(status, "000", "TLS {max} accepted");
    }
    let (_, status, _) = curl(&setup, &["--tls-max", "1.2"], "/x");
    assert_eq!(status, "200", "TLS 1.2 refused with min_version 1.2");
    let m = proxy.metrics().await;
    assert!(m.sum("gateway_tls_handshake_failures_total", &[]) >= 2.0);
    drop(proxy);

    let setup = TlsSetup::new();
    let _proxy = Proxy::start(&[&backend], &setup.config("min_version = \"1.3\"")).await;
    assert!(tls_ready(&setup).await);
    let (_, status, _) = curl(&setup, &["--tls-max", "1.2"], "/x");
    assert_eq!(status, "000", "TLS 1.2 accepted with min_version 1.3");
    let (_, status, _) = curl(&setup, &["--tlsv1.3"], "/x");
    assert_eq!(status, "200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_certificates_keeps_open_connections_and_a_broken_file_keeps_the_old_one() {
    let setup = TlsSetup::new();
    let backend = Backend::start("b");
    let proxy = Proxy::start(&[&backend], &setup.config("")).await;
    assert!(tls_ready(&setup).await);
    let client = setup.ca.client(&[b"http/1.1"], false);
    let first = der_of(&setup.dir.path().join("localhost.pem"));

    // A connection opened before the reload, kept alive across it.
    let mut open = tls_connect(client.clone(), setup.hold.addr, "localhost")
        .await
        .unwrap();
    assert_eq!(presented(&open), first);
    let request = b"GET /before HTTP/1.1\r\nHost: localhost\r\n\r\n";
    open.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = open.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    // A new certificate in the same files, then SIGHUP.
    setup
        .ca
        .write_leaf(setup.dir.path(), "localhost", &["localhost"]);
    let second = der_of(&setup.dir.path().join("localhost.pem"));
    assert_ne!(first, second);
    proxy.signal("HUP");
    let swapped = wait_until(Duration::from_secs(15), || {
        let client = client.clone();
        let second = second.clone();
        async move {
            tls_connect(client, setup.hold.addr, "localhost")
                .await
                .is_ok_and(|s| presented(&s) == second)
        }
    })
    .await;
    assert!(
        swapped,
        "new handshakes never saw the new certificate:\n{}",
        proxy.log()
    );
    // The old connection still completes a request.
    open.write_all(b"GET /after HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let n = open.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    // A broken certificate file: the reload fails, the last good certificate stays.
    std::fs::write(setup.dir.path().join("localhost.pem"), "not a certificate").unwrap();
    proxy.signal("HUP");
    let failed = wait_until(Duration::from_secs(15), || async {
        proxy
            .metrics()
            .await
            .sum("gateway_config_reloads_total", &[("result", "failure")])
            == 1.0
            // Logged through a non-blocking writer: the line can come after the count.
            && proxy.log().contains("tls.certificates[0].cert")
    })
    .await;
    assert!(failed, "{}", proxy.log());
    let s = tls_connect(client, setup.hold.addr, "localhost")
        .await
        .unwrap();
    assert_eq!(presented(&s), second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_http_answers_308_to_the_https_url() {
    let setup = TlsSetup::new();
    let backend = Backend::start("b");
    let proxy = Proxy::start(&[&backend], &setup.config("redirect_http = true")).await;
    let r = get_with(proxy.addr, None, "/a/b?c=1", &[("Host", "localhost:8080")]).await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some(format!("https://localhost:{}/a/b?c=1", setup.port()).as_str())
    );
    assert_eq!(
        backend.requests().await,
        0,
        "a redirected request reached a backend"
    );
    assert!(tls_ready(&setup).await);
    let (_, status, _) = curl(&setup, &[], "/a");
    assert_eq!(status, "200", "HTTPS is served, not redirected");
}

fn check(config: &str, dir: &Path) -> (i32, String) {
    let path = dir.join("check.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(PROXY_BIN)
        .args(["-t", "-c"])
        .arg(&path)
        .output()
        .expect("proxy -t");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_loads_every_certificate_and_names_what_is_wrong() {
    let setup = TlsSetup::new();
    let dir = setup.dir.path();
    let base = "[upstream]\nbackends = [\"127.0.0.1:9\"]\n[admin]\nlisten = \"127.0.0.1:1\"\n";
    let tls = |cert: &str, key: &str| {
        format!("{base}[tls]\nlisten = \"127.0.0.1:2\"\ncertificates = [{{ cert = \"{cert}\", key = \"{key}\" }}]\n")
    };
    let (code, out) = check(
        &tls(&setup.path("localhost.pem"), &setup.path("localhost.key")),
        dir,
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = check(
        &tls(&setup.path("missing.pem"), &setup.path("localhost.key")),
        dir,
    );
    assert_eq!(code, 1);
    assert!(
        out.contains("tls.certificates[0].cert") && out.contains("missing.pem"),
        "{out}"
    );
    let (code, out) = check(
        &tls(&setup.path("localhost.pem"), &setup.path("api.key")),
        dir,
    );
    assert_eq!(code, 1);
    assert!(
        out.contains("tls.certificates[0].key") && out.contains("does not fit"),
        "{out}"
    );
    std::fs::write(dir.join("empty.pem"), "").unwrap();
    let (code, out) = check(
        &tls(&setup.path("empty.pem"), &setup.path("localhost.key")),
        dir,
    );
    assert_eq!(code, 1);
    assert!(out.contains("no certificate in the file"), "{out}");
    // A route's host no certificate covers: a warning, an error with redirect_http.
    let route = "[[routes]]\nname = \"r\"\nhost = \"shop.example.test\"\nupstream = \"default\"\n";
    let with_route = tls(&setup.path("localhost.pem"), &setup.path("localhost.key")) + route;
    let (code, out) = check(&with_route, dir);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warning") && out.contains("shop.example.test"),
        "{out}"
    );
    let redirecting = with_route.replace("[tls]\n", "[tls]\nredirect_http = true\n");
    let (code, out) = check(&redirecting, dir);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("routes[0].host") && out.contains("shop.example.test"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_upstreams_is_verified_and_a_wrong_ca_never_passes() {
    let ca = TestCa::new("upstream CA");
    let other = TestCa::new("someone else's CA");
    let dir = TempDir::new("upstream-tls");
    let (cert, key) = ca.write_leaf(dir.path(), "backend", &["backend.test", "127.0.0.1"]);
    let ca_path = ca.write_ca(dir.path());
    let other_dir = TempDir::new("other-ca");
    let other_path = other.write_ca(other_dir.path());
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let secure = Backend::start_with(
        "secure",
        "127.0.0.1:0".parse().unwrap(),
        &["--tls-cert", &cert, "--tls-key", &key],
    );
    let plain = Backend::start("plain");
    let group = |ca: &Path, sni: &str| {
        format!(
            "[upstreams.secure]\nbackends = [\"{}\"]\ntls = true\nsni = \"{sni}\"\nca_file = \"{}\"\n\
             [[routes]]\nname = \"secure\"\npath_prefix = \"/secure/\"\nupstream = \"secure\"\n\
             [[routes]]\nname = \"rest\"\nupstream = \"default\"\n",
            secure.addr,
            ca.display()
        )
    };
    // Verified against the right CA, with the name the certificate has: served over HTTPS.
    let proxy = Proxy::start(&[&plain], &group(&ca_path, "backend.test")).await;
    let served = wait_until(Duration::from_secs(15), || async {
        try_get(proxy.addr, "/secure/x")
            .await
            .is_some_and(|r| r.status == 200)
    })
    .await;
    assert!(served, "{}", proxy.log());
    let r = get(proxy.addr, "/secure/x").await;
    assert_eq!(r.json()["backend"], "secure");
    assert_eq!(r.json()["path"], "/secure/x");
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum(
            "gateway_backend_up",
            &[
                ("upstream", "secure"),
                ("backend", &secure.addr.to_string())
            ]
        ),
        1.0,
        "the TLS health check passes"
    );
    drop(proxy);

    // Another CA: the certificate does not verify, so nothing is ever served from it: the
    // health check fails and requests get 502/503, with the reason in the log.
    let proxy = Proxy::start(&[&plain], &group(&other_path, "backend.test")).await;
    for _ in 0..5 {
        let r = get(proxy.addr, "/secure/x").await;
        assert!(
            r.status == 502 || r.status == 503,
            "a wrong CA let a request through: {}",
            r.status
        );
    }
    drop(proxy);
    // The right CA but a name the certificate does not have: refused as well.
    let proxy = Proxy::start(&[&plain], &group(&ca_path, "wrong.test")).await;
    for _ in 0..5 {
        let r = get(proxy.addr, "/secure/x").await;
        assert!(
            r.status == 502 || r.status == 503,
            "a wrong name let a request through: {}",
            r.status
        );
    }
    assert_eq!(
        get(proxy.addr, "/other").await.status,
        200,
        "plain groups are unaffected"
    );
}

/// An HTTP/2 GET of `path` on a new connection (ALPN h2 checked), its response header read:
/// the request handle (the connection stays open while it lives), the task driving the
/// connection (it ends when the connection does) and the response.
async fn h2_get(
    setup: &TlsSetup,
    path: &str,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
    http::Response<h2::RecvStream>,
) {
    let tls = tls_connect(
        setup.ca.client(&[b"h2"], false),
        setup.hold.addr,
        "localhost",
    )
    .await
    .expect("TLS");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, connection) = h2::client::handshake(tls).await.expect("h2 handshake");
    let connection = tokio::spawn(connection);
    let request = http::Request::get(format!("https://localhost:{}{path}", setup.port()))
        .body(())
        .unwrap();
    let (response, _) = send.send_request(request, true).expect("h2 request");
    let response = response.await.expect("h2 response");
    (send, connection, response)
}

/// HTTP/2 connections are bounded in time as HTTP/1 ones are: one left idle after its requests
/// is closed after `keepalive_timeout_seconds`, and one that agrees on h2 and then never sends
/// the connection preface is closed after `header_timeout_ms`. (Pingora serves HTTP/2 itself,
/// and by default keeps both open for ever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connections_are_closed_when_idle_or_silent() {
    let setup = TlsSetup::new();
    let backend = Backend::start("b");
    let config = format!(
        "{}[server]\nkeepalive_timeout_seconds = 2\nheader_timeout_ms = 1000\n",
        setup.config("")
    );
    let proxy = Proxy::start(&[&backend], &config).await;
    assert!(tls_ready(&setup).await, "{}", proxy.log());
    let client = setup.ca.client(&[b"h2"], false);
    // Far beyond both bounds: reaching it means the connection was kept.
    let patience = Duration::from_secs(20);

    // A request, then nothing (the client keeps its side open).
    let (send, connection, response) = h2_get(&setup, "/echo").await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        chunk.expect("h2 body");
    }
    let closed = tokio::time::timeout(patience, connection).await;
    assert!(
        closed.is_ok(),
        "an idle HTTP/2 connection was still open {patience:?} after its request \
         (keepalive_timeout_seconds = 2)"
    );
    drop(send);

    // h2 agreed in the TLS handshake, then silence: the preface never comes.
    let mut tls = tls_connect(client, setup.hold.addr, "localhost")
        .await
        .expect("TLS");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(patience, async {
        // The server's SETTINGS may come first; then the end of the connection.
        while matches!(tls.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    assert!(
        closed.is_ok(),
        "an HTTP/2 connection without a preface was still open {patience:?} later \
         (header_timeout_ms = 1000)"
    );
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum("gateway_downstream_header_timeouts_total", &[]),
        1.0,
        "the silent connection, and only it, counts as a header timeout:\n{}",
        m.text
    );
}

/// `send_timeout_ms` on HTTP/2: a client that takes a large answer's headers and then grants no
/// flow-control window (reads none of the body) has the answer cut; the proxy serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_a_client_that_grants_no_window_is_cut_at_send_timeout() {
    let setup = TlsSetup::new();
    let backend = Backend::start("b");
    let config = format!("{}[server]\nsend_timeout_ms = 1000\n", setup.config(""));
    let proxy = Proxy::start(&[&backend], &config).await;
    assert!(tls_ready(&setup).await, "{}", proxy.log());
    let (send, connection, response) = h2_get(&setup, "/bytes/67108864").await;
    assert_eq!(response.status(), 200);
    // The body is never read, so no window is given back after the first 64 KiB.
    let cut = wait_until(Duration::from_secs(20), || async {
        let m = proxy.metrics().await;
        m.sum("gateway_downstream_send_timeouts_total", &[]) == 1.0
    })
    .await;
    assert!(
        cut,
        "an HTTP/2 answer with no window left was still waiting 20 s later (send_timeout_ms = 1000):\n{}",
        proxy.log()
    );
    drop((response, send));
    connection.abort();
    let (version, status, _) = curl(&setup, &["--http2"], "/after");
    assert_eq!((version.as_str(), status.as_str()), ("2", "200"));
}
