//! Round robin, headers, pooling, health checks, failover and error answers, end to end.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use common::*;

async fn upstream_split(proxy: &Proxy, n: usize) -> BTreeMap<String, usize> {
    let mut client = Client::new(proxy.addr);
    let mut split = BTreeMap::new();
    for _ in 0..n {
        let r = client.get("/split").await.expect("request");
        assert_eq!(r.status, 200, "{}", r.text());
        let up = r.header("x-upstream").expect("X-Upstream").to_owned();
        *split.entry(up).or_insert(0) += 1;
    }
    split
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_splits_evenly() {
    let (a, b, c) = Backend::start_abc();
    let proxy = Proxy::start(&[&a, &b, &c], "").await;
    let split = upstream_split(&proxy, 30).await;
    let expected: BTreeMap<String, usize> = [&a, &b, &c]
        .iter()
        .map(|b| (b.addr.to_string(), 10))
        .collect();
    assert_eq!(split, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_and_identity_headers() {
    let a = Backend::start("a");
    let proxy = Proxy::start(
        &[&a],
        r#"[headers]
request = { "X-Env" = "test" }"#,
    )
    .await;

    let r = get_with(
        proxy.addr,
        None,
        "/echo",
        &[
            ("X-Forwarded-For", "203.0.113.7"),
            ("X-Request-Id", "client-id-1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = r.json();
    let h = &seen["headers"];
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "gateway.test");
    assert_eq!(h["x-request-id"], "client-id-1");
    assert_eq!(h["x-env"], "test");
    assert_eq!(r.header("x-upstream"), Some(a.addr.to_string().as_str()));
    assert_eq!(r.header("x-request-id"), Some("client-id-1"));
    assert!(r
        .header("via")
        .is_some_and(|v| v.contains("pingora-gateway")));
    assert_eq!(r.header("x-test-gateway"), Some("yes"));

    // Several X-Forwarded-For lines form one list, and our hop is appended to it.
    let r = get_with(
        proxy.addr,
        None,
        "/echo",
        &[
            ("X-Forwarded-For", "198.51.100.1"),
            ("X-Forwarded-For", "203.0.113.7"),
        ],
    )
    .await;
    assert_eq!(
        r.json()["headers"]["x-forwarded-for"],
        "198.51.100.1, 203.0.113.7, 127.0.0.1"
    );

    // Without an id, one is generated and the backend and the client see the same.
    let r = get(proxy.addr, "/echo").await;
    let id = r.header("x-request-id").expect("generated id").to_owned();
    assert_eq!(id.len(), 32, "{id}");
    assert_eq!(r.json()["headers"]["x-request-id"], id.as_str());
    assert_eq!(r.json()["headers"]["x-forwarded-for"], "127.0.0.1");
}

/// The request headers the backend saw for a GET /echo with `headers` (which must answer 200).
async fn seen_by_backend(proxy: &Proxy, headers: &[(&str, &str)]) -> serde_json::Value {
    let r = get_with(proxy.addr, None, "/echo", headers).await;
    assert_eq!(r.status, 200, "{headers:?}: {}", r.text());
    r.json()["headers"].clone()
}

/// The fields RFC 9110 §7.6.1 confines to one hop, and those the client's `Connection` names,
/// never reach the backend; a WebSocket handshake does, normalised; a `Connection` header that
/// names a forwarding field or is malformed is refused. (What Pingora's standard upstream
/// request policy does; the gateway applies it itself, see `gateway::hop_by_hop`.) Unlike under
/// Pingora's policy, a nomination cannot remove a header the gateway sets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_fields_stay_on_the_client_hop() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&[&a], "[headers]\nrequest = { \"X-Env\" = \"test\" }").await;
    let hop_by_hop = "connection keep-alive proxy-connection proxy-authenticate \
                      proxy-authorization te trailer upgrade http2-settings";
    let absent = |h: &serde_json::Value, names: &str| {
        for name in names.split_whitespace() {
            assert!(h.get(name).is_none(), "{name} reached the backend: {h}");
        }
    };

    // Every standard hop-by-hop field, and two the client nominates, in any case and spacing.
    let h = seen_by_backend(
        &proxy,
        &[
            ("Connection", "keep-alive, X-Drop-One"),
            ("connection", " x-drop-two ,"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("Proxy-Authenticate", "Basic"),
            ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
            ("TE", "trailers"),
            ("Trailer", "X-Checksum"),
            ("HTTP2-Settings", "AAMAAABkAAQAAP__"),
            ("X-Drop-One", "1"),
            ("X-Drop-Two", "2"),
            ("X-Keep", "3"),
        ],
    )
    .await;
    absent(&h, hop_by_hop);
    absent(&h, "x-drop-one x-drop-two");
    assert_eq!(h["x-keep"], "3", "{h}");
    assert_eq!(h["x-env"], "test", "{h}");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
    assert!(h["x-request-id"].is_string(), "{h}");

    // What the gateway sets stays, nominated or not: the request id (here the client's own,
    // which the gateway keeps) and the configured header.
    let h = seen_by_backend(
        &proxy,
        &[
            ("Connection", "X-Request-Id, x-env, X-Drop-One"),
            ("X-Request-Id", "client-id-7"),
            ("X-Drop-One", "1"),
        ],
    )
    .await;
    assert_eq!(h["x-request-id"], "client-id-7", "{h}");
    assert_eq!(h["x-env"], "test", "{h}");
    absent(&h, "x-drop-one connection");

    // An upgrade to anything but WebSocket is not passed on.
    let h = seen_by_backend(
        &proxy,
        &[
            ("Connection", "Upgrade, HTTP2-Settings"),
            ("Upgrade", "h2c"),
            ("HTTP2-Settings", "AAMAAABkAAQAAP__"),
        ],
    )
    .await;
    absent(&h, hop_by_hop);

    // A WebSocket handshake is, with exactly `Connection: Upgrade` and `Upgrade: websocket`.
    let h = seen_by_backend(
        &proxy,
        &[
            ("Connection", "keep-alive, Upgrade, X-Drop-One"),
            ("Upgrade", "WebSocket"),
            ("X-Drop-One", "1"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
    )
    .await;
    assert_eq!(h["connection"], "Upgrade", "{h}");
    assert_eq!(h["upgrade"], "websocket", "{h}");
    assert_eq!(h["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==", "{h}");
    absent(&h, "x-drop-one");

    // Nine nominations are stripped; a tenth, a forwarding field, a pseudo-header or a name
    // that is not a token is a bad request, and never reaches a backend.
    let nine = "x-n1, x-n2, x-n3, x-n4, x-n5, x-n6, x-n7, x-n8, x-n9";
    let h = seen_by_backend(&proxy, &[("Connection", nine), ("X-N9", "9")]).await;
    absent(&h, "x-n9");
    let ten = format!("{nine}, x-n10");
    for bad in [
        ten.as_str(),
        "X-Forwarded-For",
        "x-forwarded-host",
        "X-Forwarded-Proto",
        "Host",
        ":path",
        "\"x-quoted\"",
        "x-a;b",
    ] {
        let r = get_with(proxy.addr, None, "/echo", &[("Connection", bad)]).await;
        assert_eq!(r.status, 400, "Connection: {bad}: {}", r.text());
        assert_eq!(r.json()["status"], 400, "Connection: {bad}");
    }
    let m = proxy.metrics().await;
    assert_eq!(m.sum("gateway_upstream_errors_total", &[]), 0.0);
    let reached = a.path_count("/echo").await;
    assert_eq!(reached, 5, "only the five good requests reach the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_pooled() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&[&a], "[rate_limit]\nenabled = false").await;
    let mut client = Client::new(proxy.addr);
    for _ in 0..200 {
        assert_eq!(client.get("/pooled").await.unwrap().status, 200);
    }
    // Health probes come on their own connections and are not counted here. Pingora puts the
    // upstream connection back in its pool before it reads the client's next request.
    assert_eq!(a.path_count("/pooled").await, 200);
    assert_eq!(
        a.traffic_connections().await,
        1,
        "200 sequential requests should share one upstream connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_down_at_start_costs_nothing() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let down = PortHold::new();
    let dead = down.addr.to_string();
    let mut backends = backend_list(&[&a, &b]);
    backends.insert(1, dead.clone());
    let proxy = Proxy::start_with(backends, "[rate_limit]\nenabled = false", true).await;
    let mut client = Client::new(proxy.addr);
    for i in 0..60 {
        let r = client.get("/start").await.expect("request");
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_ne!(r.header("x-upstream"), Some(dead.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_leaves_rotation_and_comes_back() {
    let (a, mut b, c) = Backend::start_abc();
    let proxy = Proxy::start(
        &[&a, &b, &c],
        "[rate_limit]\nenabled = false\n[upstream.health_check]\ninterval_ms = 400",
    )
    .await;
    let b_addr = b.addr;
    let b_label = b_addr.to_string();

    // Polled, with no deadline on how soon: on a loaded machine probes run late.
    b.kill();
    let down = wait_until(Duration::from_secs(10), || async {
        proxy.backend_up(&b_label).await == 0.0
    })
    .await;
    assert!(down, "backend never marked down");

    // Out of rotation: no request goes there, no connect attempt is retried from it.
    let retries_before = proxy
        .metrics()
        .await
        .sum("gateway_upstream_retries_total", &[("backend", &b_label)]);
    let split = upstream_split(&proxy, 30).await;
    assert!(!split.contains_key(&b_label), "{split:?}");
    assert_eq!(split.values().sum::<usize>(), 30);
    let retries_after = proxy
        .metrics()
        .await
        .sum("gateway_upstream_retries_total", &[("backend", &b_label)]);
    assert_eq!(
        retries_before, retries_after,
        "connects were still attempted"
    );

    // Back on the same port: it gets its share again.
    let _b = Backend::start_at("b", b_addr);
    let up = wait_until(Duration::from_secs(10), || async {
        proxy.backend_up(&b_label).await == 1.0
    })
    .await;
    assert!(up, "backend never marked up again");
    let split = upstream_split(&proxy, 30).await;
    assert_eq!(split.get(&b_label), Some(&10), "{split:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_backend_costs_clients_nothing() {
    let (a, mut b, c) = Backend::start_abc();
    let proxy = Proxy::start(&[&a, &b, &c], "[rate_limit]\nenabled = false").await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(load(proxy.addr, "/failover", 3000, 6, stop));

    // Kill b once traffic is flowing through it.
    let flowing = wait_until(Duration::from_secs(30), || async {
        b.requests().await > 200
    })
    .await;
    assert!(flowing, "traffic never reached b");
    b.kill();

    let tally = load.await.unwrap();
    assert_eq!(tally.total(), 3000, "{tally:?}");
    assert!(
        tally.non_2xx.is_empty() && tally.errors.is_empty(),
        "non-2xx: {:?}, errors: {:?}",
        tally.non_2xx,
        tally.errors
    );
    assert!(tally.by_upstream.contains_key(&b.addr.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_backends_down_answers_json_502_or_503() {
    let down = [PortHold::new(), PortHold::new()];
    let dead: Vec<String> = down.iter().map(|h| h.addr.to_string()).collect();
    let proxy = Proxy::start_with(dead.clone(), "", false).await;

    // Before the first health check every backend counts as healthy: each is tried, all fail.
    let r = get(proxy.addr, "/down").await;
    assert!(r.status == 502 || r.status == 503, "status {}", r.status);
    let body = r.json();
    assert_eq!(body["status"], r.status);
    let expected = if r.status == 502 {
        "no backend could be reached"
    } else {
        "no healthy backend"
    };
    assert_eq!(body["error"], expected);
    assert_eq!(body["request_id"], r.header("x-request-id").unwrap());
    assert_eq!(r.header("content-type"), Some("application/json"));

    // Once checks have marked them down: 503, and /ready says so.
    let admin = proxy.admin;
    let unready = wait_until(Duration::from_secs(10), || async move {
        try_get(admin, "/ready")
            .await
            .is_some_and(|r| r.status == 503)
    })
    .await;
    assert!(unready);
    let r = get_with(proxy.addr, None, "/down", &[("X-Request-Id", "down-1")]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "no healthy backend");
    assert_eq!(r.json()["request_id"], "down-1");

    // Each failure is logged once, with its request id, in log.file.
    let logged = wait_until(Duration::from_secs(5), || async {
        proxy.log().contains("down-1")
    })
    .await;
    assert!(logged, "log file:\n{}", proxy.log());
    let line = proxy
        .log()
        .lines()
        .find(|l| l.contains("down-1") && l.contains("request failed"))
        .map(str::to_owned);
    assert!(line.is_some(), "log file:\n{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_logged_with_backend_and_cause() {
    let (a, mut gone) = (Backend::start("a"), Backend::start("gone"));
    let dead = gone.addr.to_string();
    // Health checks an hour apart, longer than any bounded wait here: no probe can land
    // between the kill and the requests, so the killed backend still counts as healthy.
    let proxy = Proxy::start(
        &[&gone, &a],
        "[upstream]\nmax_retries = 0\n[upstream.health_check]\ninterval_ms = 3600000",
    )
    .await;
    gone.kill();
    // With no retries, the request that lands on the dead backend fails with 502.
    let mut statuses = Vec::new();
    for i in 0..2 {
        let id = format!("conn-fail-{i}");
        let r = get_with(proxy.addr, None, "/x", &[("X-Request-Id", &id)]).await;
        statuses.push((id, r.status));
    }
    let (failed_id, _) = statuses
        .iter()
        .find(|(_, s)| *s == 502)
        .unwrap_or_else(|| panic!("no 502 in {statuses:?}"));
    let logged = wait_until(Duration::from_secs(5), || async {
        proxy.log().lines().any(|l| l.contains(failed_id.as_str()))
    })
    .await;
    assert!(logged, "log file:\n{}", proxy.log());
    let log = proxy.log();
    let line = log
        .lines()
        .find(|l| l.contains(failed_id.as_str()))
        .unwrap();
    assert!(line.contains(&dead), "{line}");
    assert!(line.contains("ERROR"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_backend_gives_504() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&[&a], "[upstream]\nread_timeout_ms = 300").await;
    let r = get_with(
        proxy.addr,
        None,
        "/delay/3000",
        &[("X-Request-Id", "slow-1")],
    )
    .await;
    assert_eq!(r.status, 504, "{}", r.text());
    let body = r.json();
    assert_eq!(body["status"], 504);
    assert_eq!(body["request_id"], "slow-1");
    assert_eq!(body["error"], "upstream timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_gets_400_and_proxy_lives() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Backend::start("a");
    let proxy = Proxy::start(&[&a], "").await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /\x01bad HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 400"), "{text:?}");
    assert_eq!(get(proxy.addr, "/after").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_in_a_phase_answers_500_and_the_process_stays_up() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&[&a], "").await;
    for phase in ["request_filter", "upstream_peer"] {
        let id = format!("panic-{phase}");
        let r = get_with(
            proxy.addr,
            None,
            "/boom",
            &[("X-Gateway-Test-Panic", phase), ("X-Request-Id", &id)],
        )
        .await;
        assert_eq!(r.status, 500, "{phase}: {}", r.text());
        assert_eq!(r.json()["status"], 500);
        assert_eq!(r.json()["request_id"], id.as_str());
        let logged = wait_until(Duration::from_secs(5), || async {
            proxy
                .log()
                .lines()
                .any(|l| l.contains(&id) && l.contains("panic"))
        })
        .await;
        assert!(logged, "log:\n{}", proxy.log());
    }
    assert_eq!(get(proxy.addr, "/after").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_given_by_host_name_resolve() {
    let a = Backend::start("a");
    let name = format!("localhost:{}", a.addr.port());
    let proxy = Proxy::start_with(vec![name.clone()], "", true).await;
    let mut client = Client::new(proxy.addr);
    for _ in 0..10 {
        let r = client.get("/named").await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-upstream"), Some(name.as_str()));
        assert_eq!(r.json()["backend"], "a");
    }
    assert_eq!(proxy.backend_up(&name).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_backend_finishes_in_flight_requests_on_sigterm() {
    let mut a = Backend::start("a");
    let addr = a.addr;
    let slow = tokio::spawn(async move { get(addr, "/delay/1500").await });
    // Counted on arrival (a count only grows, so no window to miss); on a machine slow enough
    // for it to finish first, SIGTERM simply finds nothing in flight.
    let arrived = wait_until(Duration::from_secs(10), || async {
        a.path_count("/delay/1500").await == 1
    })
    .await;
    assert!(arrived);
    let status = a.terminate().expect("exit status");
    assert!(status.success(), "{status:?}");
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["backend"], "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_proto_and_host_are_kept_only_from_trusted_proxies() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&[&a], "[rate_limit]\ntrusted_proxies = [\"127.0.0.10\"]").await;
    let sent = [
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "api.example.com"),
    ];
    let from = |ip: &str| Some(ip.parse().unwrap());

    // A TLS-terminating load balancer we trust: its view of the request is kept.
    let r = get_with(proxy.addr, from("127.0.0.10"), "/trusted", &sent).await;
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "api.example.com");

    // Anyone else: replaced with what the gateway saw.
    let r = get_with(proxy.addr, from("127.0.0.11"), "/spoofed", &sent).await;
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "gateway.test");
}

/// A backend that records the raw bytes of each request head it gets (except health checks) and
/// answers with a header spelled in mixed case, so tests can see header case on the wire.
struct WireBackend {
    addr: std::net::SocketAddr,
    heads: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WireBackend {
    async fn start() -> Self {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = heads.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut stream = BufReader::new(stream);
                    loop {
                        let mut head = String::new();
                        loop {
                            let mut line = String::new();
                            match stream.read_line(&mut line).await {
                                Ok(0) | Err(_) => return,
                                Ok(_) => {}
                            }
                            head.push_str(&line);
                            if line == "\r\n" {
                                break;
                            }
                        }
                        if !head.starts_with("GET /health") {
                            seen.lock().unwrap().push(head);
                        }
                        let answer =
                            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Backend-Thing: b\r\n\r\nok";
                        if stream.get_mut().write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, heads, task }
    }

    fn last_head(&self) -> String {
        self.heads
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for WireBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Header names on the wire, both ways: lower case for non-standard names by default (as Envoy
/// and HAProxy send them), each name as it arrived or was configured with `preserve_case`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_case_follows_preserve_case() {
    for preserve in [false, true] {
        let backend = WireBackend::start().await;
        let proxy = Proxy::start_with(
            vec![backend.addr.to_string()],
            &format!("[headers]\npreserve_case = {preserve}\nrequest = {{ \"X-Env\" = \"test\" }}"),
            true,
        )
        .await;
        let r = get_with(proxy.addr, None, "/case", &[("X-Client-Thing", "c")]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "ok");
        let head = backend.last_head();
        let names_out: Vec<&str> = r.headers.iter().map(|(k, _)| k.as_str()).collect();
        // Standard names Pingora knows (Host, Content-Length) are title case either way.
        let (upstream_lines, client_names): (&[&str], &[&str]) = if preserve {
            (
                &[
                    "X-Client-Thing: c",
                    "X-Forwarded-For: 127.0.0.1",
                    "X-Env: test",
                    "X-Request-Id: ",
                ],
                &[
                    "X-Backend-Thing",
                    "X-Upstream",
                    "RateLimit-Limit",
                    "X-Test-Gateway",
                    "Via",
                ],
            )
        } else {
            (
                &[
                    "x-client-thing: c",
                    "x-forwarded-for: 127.0.0.1",
                    "x-env: test",
                    "x-request-id: ",
                ],
                &[
                    "x-backend-thing",
                    "x-upstream",
                    "ratelimit-limit",
                    "x-test-gateway",
                    "via",
                ],
            )
        };
        for line in upstream_lines.iter().chain(&["Host: gateway.test"]) {
            assert!(
                head.contains(line),
                "preserve_case={preserve}: {line:?} not in {head:?}"
            );
        }
        for name in client_names.iter().chain(&["Content-Length"]) {
            assert!(
                names_out.contains(name),
                "preserve_case={preserve}: {name} not in {names_out:?}"
            );
        }
    }
}
