//! Restarts, reloads and upgrades while traffic flows: none may cost a client a request.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const NO_LIMIT: &str = "[rate_limit]\nenabled = false\n";

fn assert_clean(tally: &Tally) {
    assert!(
        tally.non_2xx.is_empty() && tally.errors.is_empty(),
        "non-2xx: {:?}, errors: {:?}",
        tally.non_2xx,
        tally.errors
    );
}

/// The backend holds the request until the test has seen the drain, so the request is in
/// flight for every check however slow the machine; it is released only once the grace period
/// has passed, and must still complete within the rest of the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_request_then_exits_0() {
    let held = HeldBackend::start().await;
    let grace = Duration::from_secs(1);
    let mut proxy = Proxy::start_with(
        vec![held.addr.to_string()],
        // The read timeout outlasts every bounded wait below while the backend holds on.
        "[server]\ngrace_period_seconds = 1\ngraceful_shutdown_timeout_seconds = 30\n\
         [upstream]\nread_timeout_ms = 60000",
        true,
    )
    .await;
    // Admin connections opened before shutdown, to ask /ready once shutdown has begun (the
    // admin listener accepts no new ones then, and answers one more request on each).
    let mut admin_conns = Vec::new();
    for _ in 0..20 {
        let mut c = Conn::connect(proxy.admin, None).await.unwrap();
        assert_eq!(c.request("GET", "/ready", &[]).await.unwrap().status, 200);
        admin_conns.push(c);
    }

    let to = proxy.addr;
    let slow = tokio::spawn(async move { get(to, "/held").await });
    assert!(
        held.wait_arrived(1).await,
        "the request never reached the backend"
    );

    proxy.signal("TERM");
    let sent = Instant::now();

    // /ready answers 503 while draining. A connection is used up only by an answer given after
    // shutdown began but before the drain flag was seen; the pause doubles, so the 20 cover
    // seconds of such lag.
    let mut saw_503 = false;
    let mut pause = Duration::from_millis(10);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut conns = admin_conns.into_iter();
    let mut conn = conns.next();
    while let Some(c) = conn.as_mut() {
        match c.request("GET", "/ready", &[]).await {
            Ok(r) if r.status == 503 => {
                saw_503 = true;
                break;
            }
            Ok(_) if !c.closed => {} // shutdown not begun yet: ask again on this one
            _ => conn = conns.next(),
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
    assert!(saw_503, "/ready never said 503 while draining");

    // New connections are refused while the request is still held.
    let refused = wait_until(Duration::from_secs(10), || async move {
        tokio::net::TcpStream::connect(to).await.is_err()
    })
    .await;
    assert!(refused, "still accepting after SIGTERM");

    // Outlive the grace period (a wait for time itself to pass, not for some state), then let
    // the backend answer: the request still completes.
    tokio::time::sleep_until((sent + grace + Duration::from_millis(500)).into()).await;
    held.release();
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200, "in-flight request: {}", r.text());

    // Drained: the proxy exits 0 without waiting out the rest of its 31 s budget.
    let status = proxy.wait_exit(Duration::from_secs(15)).await;
    let status = status.unwrap_or_else(|| panic!("did not exit; output:\n{}", proxy.output()));
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_proxy_exits_on_sigterm_without_waiting_out_the_budget() {
    let a = Backend::start("a");
    let mut proxy = Proxy::start(
        &[&a],
        "[server]\ngrace_period_seconds = 30\ngraceful_shutdown_timeout_seconds = 30",
    )
    .await;
    assert_eq!(get(proxy.addr, "/x").await.status, 200);
    proxy.signal("TERM");
    let status = proxy.wait_exit(Duration::from_secs(15)).await;
    let status =
        status.unwrap_or_else(|| panic!("still draining an idle proxy:\n{}", proxy.output()));
    assert!(status.success(), "{status:?}");
    assert!(
        proxy.log().contains("drained; exiting"),
        "log:\n{}",
        proxy.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_a_backend_under_load() {
    let (a, b, c) = Backend::start_abc();
    let proxy = Proxy::start(&[&a, &b], NO_LIMIT).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(load(proxy.addr, "/reload", 100_000, 4, stop.clone()));

    let flowing = wait_until(Duration::from_secs(20), || async {
        a.requests().await > 100
    })
    .await;
    assert!(flowing);
    proxy.rewrite_config(&format!(
        "[upstream]\nbackends = {:?}",
        backend_list(&[&a, &b, &c])
    ));
    proxy.signal("HUP");

    let c_serves = wait_until(Duration::from_secs(10), || async {
        c.requests().await > 50
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let tally = load.await.unwrap();
    assert!(c_serves, "the new backend got no traffic; {tally:?}");
    assert_clean(&tally);
    assert!(tally.by_upstream.contains_key(&c.addr.to_string()));
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum("gateway_config_reloads_total", &[("result", "success")]),
        1.0
    );
    assert_eq!(
        m.sum("gateway_config_reloads_total", &[("result", "failure")]),
        0.0
    );
    let logged = wait_until(Duration::from_secs(5), || async {
        proxy.output().contains("config reloaded")
    })
    .await;
    assert!(logged, "output:\n{}", proxy.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reload_keeps_the_running_config() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let proxy = Proxy::start(&[&a, &b], NO_LIMIT).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(load(proxy.addr, "/bad-reload", 100_000, 4, stop.clone()));
    let flowing = wait_until(Duration::from_secs(20), || async {
        a.requests().await > 100
    })
    .await;
    assert!(flowing);

    std::fs::write(&proxy.config_path, "[upstream\nbackends = oops\n").unwrap();
    proxy.signal("HUP");
    let admin = proxy.admin;
    let counted = wait_until(Duration::from_secs(10), || async move {
        Metrics::parse(&get(admin, "/metrics").await.text())
            .sum("gateway_config_reloads_total", &[("result", "failure")])
            == 1.0
    })
    .await;
    assert!(counted, "failure not counted");
    // Keep the load going a little past the failed reload.
    let before = a.requests().await;
    let more = wait_until(Duration::from_secs(10), || async {
        a.requests().await > before + 100
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let tally = load.await.unwrap();
    assert!(more);
    assert_clean(&tally);
    assert_eq!(tally.by_upstream.len(), 2, "{tally:?}");

    let m = proxy.metrics().await;
    assert_eq!(
        m.sum("gateway_config_reloads_total", &[("result", "success")]),
        0.0
    );
    let logged = wait_until(Duration::from_secs(5), || async {
        proxy.log().contains("config reload rejected")
    })
    .await;
    assert!(logged, "log:\n{}", proxy.log());
    assert!(proxy
        .log()
        .contains(&proxy.config_path.display().to_string()));
    assert_eq!(get(proxy.addr, "/after").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_that_removes_a_backend_stops_its_traffic() {
    let (a, b, c) = Backend::start_abc();
    let proxy = Proxy::start(&[&a, &b, &c], NO_LIMIT).await;
    let c_label = c.addr.to_string();
    proxy.rewrite_config(&format!(
        "[upstream]\nbackends = {:?}",
        backend_list(&[&a, &b])
    ));
    proxy.signal("HUP");
    // Discovery has applied the new list once c's health series is gone.
    let admin = proxy.admin;
    let label = c_label.clone();
    let applied = wait_until(Duration::from_secs(10), || {
        let label = label.clone();
        async move {
            let m = Metrics::parse(&get(admin, "/metrics").await.text());
            m.sum("gateway_config_reloads_total", &[("result", "success")]) == 1.0
                && m.series("gateway_backend_up")
                    .iter()
                    .all(|(l, _)| !l.iter().any(|(_, v)| *v == label))
        }
    })
    .await;
    assert!(applied);

    let mut client = Client::new(proxy.addr);
    for _ in 0..30 {
        let r = client.get("/removed").await.unwrap();
        assert_eq!(r.status, 200);
        assert_ne!(r.header("x-upstream"), Some(c_label.as_str()));
    }
    assert_eq!(c.path_count("/removed").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_hands_listeners_over_without_losing_requests() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let mut proxy = Proxy::start(&[&a, &b], NO_LIMIT).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(load(proxy.addr, "/upgrade", 1_000_000, 4, stop.clone()));
    let flowing = wait_until(Duration::from_secs(20), || async {
        a.requests().await > 100
    })
    .await;
    assert!(flowing);

    // The new process waits on the upgrade socket; the old one hands over on SIGQUIT.
    let old_status = proxy.upgrade().await;
    let old_status =
        old_status.unwrap_or_else(|| panic!("old process did not exit:\n{}", proxy.output()));
    assert!(old_status.success(), "old process: {old_status:?}");

    // The new one keeps serving.
    let before = a.requests().await + b.requests().await;
    let serving = wait_until(Duration::from_secs(10), || async {
        a.requests().await + b.requests().await > before + 100
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let tally = load.await.unwrap();
    assert!(serving, "the new process does not serve");
    assert_clean(&tally);
    assert_eq!(get(proxy.addr, "/new").await.status, 200);
    assert_eq!(get(proxy.admin, "/health").await.status, 200);
}

/// Admin clients that ask for `/metrics` and read nothing cannot keep `/ready` from probes.
/// hyper has no write timeout, so each such client held one of the admin listener's 64 slots
/// for ever once `/metrics` outgrew the socket buffers; a write that waits 5 s now ends its
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_clients_that_read_nothing_cannot_keep_ready_from_probes() {
    let backend = Backend::start("a");
    // Every route has its own series: a /metrics page larger than the socket buffers hold
    // (net.ipv4.tcp_wmem lets a send buffer grow to 4 MiB).
    let routes: String = (0..3000)
        .map(|i| {
            format!(
                "[[routes]]\nname = \"r{i}\"\npath_prefix = \"/r{i}/\"\nupstream = \"default\"\n"
            )
        })
        .collect();
    let proxy = Proxy::start(&[&backend], &routes).await;
    let size = get(proxy.admin, "/metrics").await.text().len();
    assert!(size > 4 << 20, "/metrics is only {size} bytes");
    // Every admin slot taken by a client that asks for /metrics and then reads nothing.
    let mut held = Vec::new();
    for _ in 0..64 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(1024).unwrap();
        let mut s = socket.connect(proxy.admin).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut s, b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        held.push(s);
    }
    // They keep their sockets open; their stalled writes give the slots back.
    let ready = wait_until(Duration::from_secs(30), || async {
        try_get(proxy.admin, "/ready")
            .await
            .is_some_and(|r| r.status == 200)
    })
    .await;
    assert!(
        ready,
        "/ready unreachable 30 s after 64 admin clients stopped reading"
    );
    drop(held);
}
