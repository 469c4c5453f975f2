//! Shared rate limits through a real `redis-server`: two replicas, one exact budget; both header
//! drafts; what happens when Redis dies, comes back, or stalls.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use proxy::config::{OnStoreError, RedisSettings};
use proxy::limits::shared_store::{SharedStore, StoreConnector, StoreMetrics};
use proxy::limits::sliding_window::{ClientKey, Limits, RateLimiter};

fn store_config(redis: &Redis, on_error: &str, extra: &str) -> String {
    format!(
        "[rate_limit]\nstore = \"redis\"\n{extra}\n[rate_limit.redis]\nurl = \"{}\"\ntimeout_ms = 50\non_error = \"{on_error}\"\n",
        redis.url()
    )
}

/// Until the proxy's store connection is up (`/ready` reports it; it never fails readiness).
async fn store_up(proxy: &Proxy) -> bool {
    wait_until(Duration::from_secs(20), || async {
        try_get(proxy.admin, "/ready")
            .await
            .is_some_and(|r| r.json()["rate_limit_store"]["state"] == "up")
    })
    .await
}

async fn replicas(redis: &Redis, on_error: &str, extra: &str) -> (Backend, Proxy, Proxy) {
    let backend = Backend::start("b");
    let config = store_config(redis, on_error, extra);
    let (p1, p2) = (
        Proxy::start(&[&backend], &config).await,
        Proxy::start(&[&backend], &config).await,
    );
    assert!(store_up(&p1).await && store_up(&p2).await, "store never up");
    (backend, p1, p2)
}

fn header<'a>(r: &'a Response, name: &str) -> &'a str {
    r.header(name).unwrap_or("-")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_exact_limit_with_both_header_drafts() {
    let redis = Redis::start().await;
    let (_b, p1, p2) = replicas(&redis, "local", "").await;
    let from = Some("127.0.0.30".parse().unwrap());
    let mut remaining = Vec::new();
    let (mut ok, mut limited) = (0, 0);
    for i in 0..150 {
        let proxy = if i % 2 == 0 { &p1 } else { &p2 };
        let r = get_with(proxy.addr, from, "/shared", &[]).await;
        let legacy_remaining: u64 = header(&r, "ratelimit-remaining")
            .parse()
            .expect("Remaining");
        // The IETF draft's fields say the same: one policy, the same remaining count, and `t`
        // never later than Retry-After.
        assert_eq!(header(&r, "ratelimit-policy"), "\"default\";q=100;w=60");
        let ietf = header(&r, "ratelimit");
        let (r_part, t_part) = ietf
            .strip_prefix("\"default\";r=")
            .and_then(|rest| rest.split_once(";t="))
            .unwrap_or_else(|| panic!("RateLimit: {ietf}"));
        assert_eq!(r_part.parse::<u64>().unwrap(), legacy_remaining, "{ietf}");
        let t: u64 = t_part.parse().unwrap();
        match r.status {
            200 => {
                ok += 1;
                remaining.push(legacy_remaining);
                assert_eq!(t.to_string(), header(&r, "ratelimit-reset"));
            }
            429 => {
                limited += 1;
                let retry_after: u64 = header(&r, "retry-after").parse().unwrap();
                assert!(retry_after >= t, "Retry-After {retry_after} before t={t}");
            }
            other => panic!("request {i}: status {other}: {}", r.text()),
        }
    }
    assert_eq!((ok, limited), (100, 50));
    assert_eq!(
        remaining,
        (0..100).rev().collect::<Vec<u64>>(),
        "counting down across replicas"
    );
    for p in [&p1, &p2] {
        assert_eq!(
            p.metrics()
                .await
                .sum("gateway_rate_limit_store_errors_total", &[]),
            0.0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_concurrent_clients_over_both_replicas_get_exactly_the_limit() {
    let redis = Redis::start().await;
    let (_b, p1, p2) = replicas(&redis, "local", "").await;
    let from = Some("127.0.0.31".parse().unwrap());
    let next = Arc::new(AtomicUsize::new(0));
    let admitted = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for worker in 0..10 {
        let (next, admitted) = (next.clone(), admitted.clone());
        let target = if worker % 2 == 0 { p1.addr } else { p2.addr };
        tasks.push(tokio::spawn(async move {
            let mut client = Client::from_addr(target, from);
            while next.fetch_add(1, Ordering::SeqCst) < 150 {
                let r = client.get("/c").await.expect("request");
                match r.status {
                    200 => {
                        admitted.fetch_add(1, Ordering::SeqCst);
                    }
                    429 => {}
                    other => panic!("status {other}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(admitted.load(Ordering::SeqCst), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_falls_back_to_local_limits_and_comes_back() {
    let mut redis = Redis::start().await;
    let (backend, p1, _p2) = replicas(&redis, "local", "requests = 1000").await;
    let from = Some("127.0.0.32".parse().unwrap());
    for _ in 0..5 {
        assert_eq!(get_with(p1.addr, from, "/a", &[]).await.status, 200);
    }
    let key = "gateway:rl:default:{ip:127.0.0.32}";
    assert_eq!(redis.cmd(&["HGET", key, "c"]).await.as_deref(), Some("5"));

    // Killed: no 5xx, requests keep flowing under this replica's own limiter.
    redis.kill();
    let before = backend.requests().await;
    for i in 0..40 {
        let r = get_with(p1.addr, from, "/a", &[]).await;
        assert_eq!(r.status, 200, "request {i} with Redis down: {}", r.text());
        assert_eq!(
            header(&r, "ratelimit-limit"),
            "1000",
            "local limits keep their headers"
        );
    }
    assert_eq!(backend.requests().await - before, 40);
    let m = p1.metrics().await;
    assert!(m.sum("gateway_rate_limit_store_errors_total", &[]) >= 1.0);
    // Every one of the 40 was decided by the fallback, skipped checks included.
    assert_eq!(m.sum("gateway_rate_limit_store_fallbacks_total", &[]), 40.0);
    let state = get(p1.admin, "/ready").await;
    assert_eq!(state.status, 200, "a store outage never fails readiness");
    assert_eq!(state.json()["rate_limit_store"]["state"], "down");

    // Back (empty): shared counting resumes within a few seconds.
    redis.restart().await;
    let resumed = wait_until(Duration::from_secs(15), || async {
        get_with(p1.addr, from, "/a", &[]).await;
        redis
            .cmd(&["HGET", key, "c"])
            .await
            .is_some_and(|c| !c.is_empty())
    })
    .await;
    assert!(resumed, "counting never went back to Redis:\n{}", p1.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_never_holds_a_request_past_the_timeout() {
    let redis = Redis::start().await;
    let backend = Backend::start("b");
    let allow = Proxy::start(&[&backend], &store_config(&redis, "allow", "")).await;
    let deny = Proxy::start(&[&backend], &store_config(&redis, "deny", "")).await;
    assert!(store_up(&allow).await && store_up(&deny).await);
    let from = Some("127.0.0.33".parse().unwrap());

    assert_eq!(
        redis.cmd(&["CLIENT", "PAUSE", "2000"]).await.as_deref(),
        Some("OK")
    );
    let started = Instant::now();
    for _ in 0..5 {
        let t = Instant::now();
        let r = get_with(allow.addr, from, "/p", &[]).await;
        assert_eq!(r.status, 200, "allow: {}", r.text());
        assert!(r.header("ratelimit-limit").is_none() && r.header("ratelimit").is_none());
        assert!(
            t.elapsed() < Duration::from_millis(1000),
            "allow waited {:?}",
            t.elapsed()
        );
        let t = Instant::now();
        let r = get_with(deny.addr, from, "/p", &[]).await;
        assert_eq!(r.status, 429, "deny: {}", r.text());
        assert_eq!(header(&r, "retry-after"), "1");
        assert_eq!(r.json()["status"], 429);
        assert!(
            t.elapsed() < Duration::from_millis(1000),
            "deny waited {:?}",
            t.elapsed()
        );
    }
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "checks waited on the pause"
    );
    // Inside the proxies: no check took longer than timeout_ms (50) + 50 ms.
    for p in [&allow, &deny] {
        let m = p.metrics().await;
        let total = m.sum("gateway_rate_limit_store_seconds_count", &[]);
        let within = m.sum("gateway_rate_limit_store_seconds_bucket", &[("le", "0.1")]);
        assert!(total >= 1.0, "no check was timed");
        assert_eq!(within, total, "a check waited longer than timeout + 50 ms");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_forwarding_buys_nothing_and_exempt_clients_never_reach_redis() {
    let redis = Redis::start().await;
    let (_b, p1, p2) = replicas(&redis, "local", "requests = 5\nexempt = [\"127.0.0.35\"]").await;
    let from = Some("127.0.0.34".parse().unwrap());
    let mut statuses = Vec::new();
    for i in 0..8 {
        let proxy = if i % 2 == 0 { &p1 } else { &p2 };
        let spoof = format!("198.51.100.{i}");
        let r = get_with(proxy.addr, from, "/s", &[("X-Forwarded-For", &spoof)]).await;
        statuses.push(r.status);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    let exempt = Some("127.0.0.35".parse().unwrap());
    for _ in 0..20 {
        let r = get_with(p1.addr, exempt, "/e", &[]).await;
        assert_eq!(r.status, 200);
        assert!(r.header("ratelimit-limit").is_none());
    }
    let keys = redis
        .cmd(&["KEYS", "gateway:rl:*"])
        .await
        .unwrap_or_default();
    assert!(keys.contains("127.0.0.34"), "{keys}");
    assert!(
        !keys.contains("127.0.0.35"),
        "an exempt client reached Redis: {keys}"
    );
    assert!(
        !keys.contains("198.51.100"),
        "a spoofed address was counted: {keys}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_stores_give_the_same_numbers_for_the_same_requests() {
    let redis = Redis::start().await;
    let store = SharedStore::new(
        RedisSettings {
            url: redis.url(),
            timeout: Duration::from_secs(2),
            on_error: OnStoreError::Local,
            key_prefix: "same:".into(),
        },
        StoreMetrics {
            errors: prometheus::IntCounter::new("e", "e").unwrap(),
            seconds: prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("s", "s"))
                .unwrap(),
            fallbacks: prometheus::IntCounter::new("f", "f").unwrap(),
        },
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let connector = {
        let store = store.clone();
        tokio::spawn(async move {
            use pingora::services::background::BackgroundService;
            StoreConnector(store).start(stop_rx).await;
        })
    };
    assert!(wait_until(Duration::from_secs(20), || async { store.state() == "up" }).await);

    // Bursts, pauses inside a window, across one window, across several: (ms, requests).
    let script: &[(u64, usize)] = &[
        (1_000, 7),
        (1_400, 2),
        (2_950, 3),
        (3_100, 4),
        (3_999, 1),
        (4_500, 9),
        (6_001, 2),
        (9_000, 12),
        (9_001, 1),
    ];
    for (limit, window_s) in [(10u32, 2u64), (3, 1), (100, 60)] {
        let limits = Limits {
            requests: limit,
            window: Duration::from_secs(window_s),
            max_clients: std::num::NonZeroUsize::new(10).unwrap(),
        };
        let local = RateLimiter::new(limits);
        let client = ClientKey::from_ip(format!("10.9.{limit}.{window_s}").parse().unwrap());
        for &(at, n) in script {
            for k in 0..n {
                let want = local.check_at_ms(client, at);
                let got = store
                    .check_at("p", &client, limit, limits.window, Some(at))
                    .await
                    .expect("store answers");
                assert_eq!(
                    got, want,
                    "limit {limit}/{window_s}s at {at} ms, request {k}"
                );
            }
        }
    }
    // The connector is done once connected; the signal only matters if it were not.
    let _ = stop_tx.send(true);
    connector.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_quota_is_shared_too_under_its_own_key() {
    let redis = Redis::start().await;
    let routes = "[[routes]]\nname = \"api\"\npath_prefix = \"/api/\"\nupstream = \"default\"\n\
                  rate_limit = { requests = 3, window_seconds = 60, key = \"header:X-Api-Key\" }\n\
                  [[routes]]\nname = \"rest\"\nupstream = \"default\"\n";
    let (_b, p1, p2) = replicas(&redis, "local", routes).await;
    let from = Some("127.0.0.36".parse().unwrap());
    let mut statuses = Vec::new();
    for i in 0..4 {
        let proxy = if i % 2 == 0 { &p1 } else { &p2 };
        let r = get_with(proxy.addr, from, "/api/x", &[("X-Api-Key", "shared-key")]).await;
        assert_eq!(header(&r, "ratelimit-policy"), "\"api\";q=3;w=60");
        statuses.push(r.status);
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    // The same client elsewhere spends the global budget, not the route's.
    assert_eq!(get_with(p2.addr, from, "/other", &[]).await.status, 200);
    let keys = redis
        .cmd(&["KEYS", "gateway:rl:*"])
        .await
        .unwrap_or_default();
    assert!(keys.contains("gateway:rl:api:{key:"), "{keys}");
    assert!(
        keys.contains("gateway:rl:default:{ip:127.0.0.36}"),
        "{keys}"
    );
    assert!(
        !keys.contains("shared-key"),
        "the API key itself was stored: {keys}"
    );
}
