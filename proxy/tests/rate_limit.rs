//! Per-client rate limiting through the real proxy: exact counts, headers, identity, windows.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::*;

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

/// Sends `n` sequential requests from `from` and returns the statuses in order.
async fn statuses(
    proxy: &Proxy,
    from: Option<IpAddr>,
    n: usize,
    headers: &[(&str, &str)],
) -> Vec<u16> {
    let mut client = Client::from_addr(proxy.addr, from);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(
            client
                .request("GET", "/rl", headers)
                .await
                .expect("request")
                .status,
        );
    }
    out
}

async fn statuses_from(proxy: &Proxy, from: Option<IpAddr>, n: usize) -> Vec<u16> {
    statuses(proxy, from, n, &[]).await
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_burst_gets_exactly_100_then_429() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&[&a], "").await;

    let mut client = Client::new(proxy.addr);
    let mut seen = Vec::new();
    for i in 0..150 {
        let r = client.get("/burst").await.expect("request");
        assert_eq!(r.header("ratelimit-limit"), Some("100"));
        if i < 100 {
            assert_eq!(r.status, 200, "request {i}");
            let remaining: u32 = r.header("ratelimit-remaining").unwrap().parse().unwrap();
            assert_eq!(remaining, 99 - i as u32, "RateLimit-Remaining counts down");
            assert!(r.header("retry-after").is_none());
        } else {
            assert_eq!(r.status, 429, "request {i}");
            assert_eq!(r.header("ratelimit-remaining"), Some("0"));
            let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
            assert!((1..=61).contains(&retry), "Retry-After {retry}");
            let reset: u64 = r.header("ratelimit-reset").unwrap().parse().unwrap();
            assert!((1..=60).contains(&reset), "RateLimit-Reset {reset}");
            let body = r.json();
            assert_eq!(body["status"], 429);
            assert_eq!(body["error"], "rate limited");
            assert_eq!(body["request_id"], r.header("x-request-id").unwrap());
        }
        seen.push(r.status);
    }
    assert_eq!((count(&seen, 200), count(&seen, 429)), (100, 50));
    // The limited requests never reached the backend.
    assert_eq!(a.path_count("/burst").await, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_burst_gets_exactly_100() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&[&a], "").await;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let to = proxy.addr;
        tasks.push(tokio::spawn(async move {
            let mut client = Client::new(to);
            let mut out = Vec::new();
            for _ in 0..15 {
                out.push(client.get("/c").await.expect("request").status);
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_eq!(
        (count(&all, 200), count(&all, 429), all.len()),
        (100, 50, 150)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_addresses_have_independent_budgets() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&[&a], "[rate_limit]\nrequests = 5").await;
    let one = statuses(&proxy, ip("127.0.0.2"), 8, &[]).await;
    let two = statuses(&proxy, ip("127.0.0.3"), 8, &[]).await;
    assert_eq!(one, [200, 200, 200, 200, 200, 429, 429, 429]);
    assert_eq!(two, one);
}

/// Retry-After is rounded up and the limiter decides with the clock reading of each request's
/// start, so waiting as told from receipt of the 429 is always enough; a slow machine only
/// waits longer. "Still refused before then" is checked only when the timing is known to be
/// early enough (see below), so it cannot fail on a loaded machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_slides_and_retry_after_tells_the_truth() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&[&a], "[rate_limit]\nrequests = 5\nwindow_seconds = 2").await;
    let from = ip("127.0.0.4");
    assert_eq!(statuses(&proxy, from, 5, &[]).await, [200; 5]);
    // Normally the next request is refused; a machine slow enough for the window to slide
    // under the burst admits a few more first (bounded).
    let mut refused = None;
    for _ in 0..50 {
        let sent = Instant::now();
        let r = get_with(proxy.addr, from, "/w", &[]).await;
        if r.status == 429 {
            refused = Some((sent, r, Instant::now()));
            break;
        }
        assert_eq!(r.status, 200);
    }
    let (sent, refused, told) = refused.expect("never refused");
    let retry = Duration::from_secs(refused.header("retry-after").unwrap().parse().unwrap());
    assert!(
        retry >= Duration::from_secs(1) && retry <= Duration::from_secs(4),
        "{retry:?}"
    );

    // Before the announced time: the true wait is more than `retry - 1 s` (it was rounded up)
    // from the refusal, which the limiter decided after `sent`. A request answered less than
    // that after `sent` was surely decided too early, and must be refused.
    let early = retry.saturating_sub(Duration::from_millis(1500));
    tokio::time::sleep_until((told + early).into()).await;
    let r = get_with(proxy.addr, from, "/w", &[]).await;
    if sent.elapsed() + Duration::from_secs(1) < retry {
        assert_eq!(r.status, 429, "admitted before Retry-After");
    }

    // At the announced time (counted from receipt, after the decision): admitted again.
    tokio::time::sleep_until((told + retry).into()).await;
    assert_eq!(get_with(proxy.addr, from, "/w", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_is_believed_only_from_trusted_peers() {
    let a = Backend::start("a");
    let proxy = Proxy::start(
        &[&a],
        r#"[rate_limit]
requests = 2
trusted_proxies = ["127.0.0.5/32"]
exempt = ["127.0.0.7"]"#,
    )
    .await;
    let spoofed = [("X-Forwarded-For", "10.9.9.9")];

    // Untrusted peer: limited as itself, whatever the header says.
    let untrusted = statuses(&proxy, ip("127.0.0.6"), 3, &spoofed).await;
    assert_eq!(untrusted, [200, 200, 429]);
    let other_header = statuses(
        &proxy,
        ip("127.0.0.6"),
        1,
        &[("X-Forwarded-For", "10.1.1.1")],
    )
    .await;
    assert_eq!(other_header, [429], "a new spoofed address buys nothing");

    // Trusted peer: limited as the forwarded client, whose budget is its own.
    let via_proxy = statuses(&proxy, ip("127.0.0.5"), 3, &spoofed).await;
    assert_eq!(via_proxy, [200, 200, 429]);
    let another_client = statuses(
        &proxy,
        ip("127.0.0.5"),
        2,
        &[("X-Forwarded-For", "10.9.9.8")],
    )
    .await;
    assert_eq!(another_client, [200, 200]);
    // The right-most untrusted hop counts, not what the client wrote on the left.
    let chained = statuses(
        &proxy,
        ip("127.0.0.5"),
        1,
        &[("X-Forwarded-For", "1.2.3.4, 10.9.9.9")],
    )
    .await;
    assert_eq!(chained, [429]);

    // Exempt peer: never limited, no rate-limit headers.
    let exempt = statuses(&proxy, ip("127.0.0.7"), 10, &[]).await;
    assert_eq!(exempt, [200; 10]);
    let r = get_with(proxy.addr, ip("127.0.0.7"), "/x", &[]).await;
    assert!(r.header("ratelimit-limit").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_clients_evicts_the_oldest_idle_client() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&[&a], "[rate_limit]\nrequests = 2\nmax_clients = 3").await;
    // 127.0.0.20 spends its budget first, then 10 other clients come along.
    assert_eq!(
        statuses(&proxy, ip("127.0.0.20"), 3, &[]).await,
        [200, 200, 429]
    );
    for last in 21..31 {
        let from = ip(&format!("127.0.0.{last}"));
        assert_eq!(statuses(&proxy, from, 1, &[]).await, [200]);
    }
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum("gateway_rate_limit_clients", &[]),
        3.0,
        "bounded by max_clients"
    );
    // The oldest idle client was forgotten (a fresh budget); the newest is still counted.
    assert_eq!(statuses(&proxy, ip("127.0.0.20"), 1, &[]).await, [200]);
    assert_eq!(statuses(&proxy, ip("127.0.0.30"), 2, &[]).await, [200, 429]);
}

/// The backend holds the first two requests until the third has been refused, so the three
/// overlap however slow the machine is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflight_cap_per_client() {
    let held = HeldBackend::start().await;
    let proxy = Proxy::start_with(
        vec![held.addr.to_string()],
        "[rate_limit]\nmax_inflight_per_client = 2\nrequests = 5\n\
         [upstream]\nread_timeout_ms = 60000",
        true,
    )
    .await;
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let to = proxy.addr;
        tasks.push(tokio::spawn(async move {
            get_with(to, ip("127.0.0.8"), "/held", &[]).await
        }));
    }
    assert!(held.wait_arrived(2).await, "the two requests never arrived");
    let third = get_with(proxy.addr, ip("127.0.0.8"), "/held", &[]).await;
    assert_eq!(third.status, 429);
    assert_eq!(third.header("retry-after"), Some("1"));
    assert_eq!(third.json()["error"], "rate limited");
    assert_eq!(held.arrived(), 2, "the refused request reached the backend");
    held.release();
    for t in tasks {
        assert_eq!(t.await.unwrap().status, 200);
    }
    // A request leaves the cap once the proxy has logged it, just after its response.
    let admin = proxy.admin;
    let settled = wait_until(Duration::from_secs(5), || async move {
        Metrics::parse(&get(admin, "/metrics").await.text()).sum("gateway_inflight_requests", &[])
            == 0.0
    })
    .await;
    assert!(settled);
    // The refused request used no budget: 5 - 2 admitted = 3 left, and the cap has freed up.
    let left = statuses_from(&proxy, ip("127.0.0.8"), 4).await;
    assert_eq!(left, [200, 200, 200, 429]);
    // Another client is not affected.
    assert_eq!(statuses_from(&proxy, ip("127.0.0.9"), 1).await, [200]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_limiter_limits_nothing_and_sends_no_headers() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&[&a], "[rate_limit]\nenabled = false").await;
    let mut client = Client::new(proxy.addr);
    for _ in 0..150 {
        let r = client.get("/free").await.unwrap();
        assert_eq!(r.status, 200);
        assert!(r.header("ratelimit-limit").is_none() && r.header("ratelimit-remaining").is_none());
    }
}
