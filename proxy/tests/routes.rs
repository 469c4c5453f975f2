//! Routes and upstream groups end to end: host, path and method routing over two groups,
//! `strip_prefix`, 404 for what no route takes, the balancing policies, per-key quotas and
//! reloads that change routes and groups under load.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use common::*;

/// A client exempt from the global limit, so volume tests are not cut short.
const EXEMPT: &str = "127.0.0.9";

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().expect("an IP"))
}

/// `method path` with `Host: host` from `from`, on a fresh connection.
async fn send(proxy: &Proxy, from: &str, method: &str, host: &str, path: &str) -> Response {
    send_with(proxy, from, method, host, path, &[]).await
}

async fn send_with(
    proxy: &Proxy,
    from: &str,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Response {
    let mut all = vec![("Host", host), ("Connection", "close")];
    all.extend_from_slice(headers);
    let mut conn = Conn::connect(proxy.addr, ip(from))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    conn.request(method, path, &all)
        .await
        .unwrap_or_else(|e| panic!("{method} {host}{path}: {e}"))
}

/// Which mock backend answered (its `--name`).
fn answered_by(r: &Response) -> String {
    r.json()["backend"].as_str().unwrap_or("-").to_owned()
}

fn group(name: &str, backends: &[&Backend], extra: &str) -> String {
    format!(
        "[upstreams.{name}]\nbackends = {:?}\n{extra}\n",
        backend_list(backends)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_path_and_method_routing_across_two_groups() {
    let (a, b, c) = Backend::start_abc();
    let config = format!(
        r#"
[rate_limit]
exempt = ["{EXEMPT}"]
{api}
[[routes]]
name = "api"
host = "api.example.com"
path_prefix = "/api/"
methods = ["GET", "POST"]
upstream = "api"
strip_prefix = true
headers = {{ request = {{ "X-Route" = "api" }}, response = {{ "X-Route-Seen" = "api" }} }}

[[routes]]
name = "wild"
host = "*.example.com"
upstream = "default"

[[routes]]
name = "static"
path_prefix = "/static/"
upstream = "default"
"#,
        api = group("api", &[&a, &b], "")
    );
    let proxy = Proxy::start(&[&c], &config).await;

    // Exact host, prefix and method: the api group, prefix stripped and passed on.
    let r = send(
        &proxy,
        EXEMPT,
        "GET",
        "API.example.com:8080",
        "/api/orders?id=7",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert!(["a", "b"].contains(&answered_by(&r).as_str()), "{body}");
    assert_eq!(body["path"], "/orders");
    assert_eq!(body["query"], "id=7");
    assert_eq!(body["headers"]["x-forwarded-prefix"], "/api");
    assert_eq!(body["headers"]["x-route"], "api");
    assert_eq!(r.header("x-route-seen"), Some("api"));

    // The method is not the route's: the next most specific host takes it, unstripped.
    let r = send(&proxy, EXEMPT, "DELETE", "api.example.com", "/api/orders").await;
    assert_eq!(answered_by(&r), "c");
    assert_eq!(r.json()["path"], "/api/orders");
    assert!(r.json()["headers"].get("x-forwarded-prefix").is_none());
    assert!(r.header("x-route-seen").is_none());

    // Wildcard host; path-only route for any host.
    let r = send(&proxy, EXEMPT, "GET", "www.example.com", "/anything").await;
    assert_eq!(answered_by(&r), "c");
    let r = send(&proxy, EXEMPT, "GET", "other.test", "/static/app.js").await;
    assert_eq!(
        (answered_by(&r).as_str(), r.json()["path"].as_str()),
        ("c", Some("/static/app.js"))
    );

    // Nothing matches: 404 with the JSON error body and the request id.
    let r = send(&proxy, EXEMPT, "GET", "other.test", "/nothing").await;
    assert_eq!(r.status, 404);
    let body = r.json();
    assert_eq!(body["status"], 404);
    assert_eq!(body["error"], "no route");
    let id = r.header("x-request-id").expect("X-Request-Id on a 404");
    assert_eq!(body["request_id"], id);

    // Labels: route on request metrics (none where nothing matched), upstream on backend ones.
    // A request is counted just after its response went out: poll until the last one is.
    let counted = wait_until(Duration::from_secs(10), || async {
        proxy.metrics().await.sum("gateway_requests_total", &[]) == 5.0
    })
    .await;
    let m = proxy.metrics().await;
    assert!(counted, "{:?}", m.series("gateway_requests_total"));
    assert_eq!(m.sum("gateway_requests_total", &[("route", "api")]), 1.0);
    assert_eq!(m.sum("gateway_requests_total", &[("route", "wild")]), 2.0);
    assert_eq!(m.sum("gateway_requests_total", &[("route", "static")]), 1.0);
    assert_eq!(
        m.sum(
            "gateway_requests_total",
            &[("route", "none"), ("status", "404")]
        ),
        1.0
    );
    let a_label = a.addr.to_string();
    assert_eq!(
        m.sum(
            "gateway_backend_up",
            &[("upstream", "api"), ("backend", &a_label)]
        ),
        1.0
    );
    assert_eq!(
        m.sum(
            "gateway_backend_up",
            &[("upstream", "default"), ("backend", &c.addr.to_string())]
        ),
        1.0
    );

    // The access log names the route and its group (lines are flushed in batches: poll).
    let logged = wait_until(Duration::from_secs(10), || async {
        let log = proxy.log();
        log.contains(r#""route":"api","upstream":"api""#)
            && log.contains(r#""path":"/api/orders?id=7""#)
            && log.contains(r#""route":"none""#)
    })
    .await;
    assert!(logged, "access log lacks route/upstream:\n{}", proxy.log());
}

/// `n` requests from one exempt client; the answering backend of each.
async fn split(proxy: &Proxy, n: usize, path: &str) -> BTreeMap<String, usize> {
    let mut client = Client::from_addr(proxy.addr, ip(EXEMPT));
    let mut out = BTreeMap::new();
    for i in 0..n {
        let r = client.get(path).await.expect("request");
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        *out.entry(answered_by(&r)).or_default() += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_splits_exactly_by_weight() {
    let (a, b, c) = Backend::start_abc();
    let config = format!(
        r#"
[rate_limit]
exempt = ["{EXEMPT}"]
[upstreams.weighted]
backends = [{{ address = "{a}", weight = 2 }}, "{b}"]
[[routes]]
name = "all"
upstream = "weighted"
"#,
        a = a.addr,
        b = b.addr
    );
    let proxy = Proxy::start(&[&c], &config).await;
    let got = split(&proxy, 300, "/w").await;
    assert_eq!(
        got,
        BTreeMap::from([("a".to_owned(), 200), ("b".to_owned(), 100)]),
        "2:1 over 300 requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_requests_sends_fewer_requests_to_a_slow_backend() {
    let (fast, slow) = (Backend::start("fast"), Backend::start("slow"));
    // `slow` answers everything but /health 300 ms late: healthy, and slow.
    let fault = put_json(
        slow.addr,
        "/_mock/fault",
        r#"{"status": 200, "delay_ms": 300}"#,
    )
    .await;
    assert_eq!(fault.status, 200, "{}", fault.text());
    assert_eq!(
        fault.json()["delay_ms"],
        300,
        "fault not in force: {}",
        fault.text()
    );
    let config = format!(
        "[rate_limit]\nexempt = [\"127.0.0.1\"]\n{}[[routes]]\nname = \"all\"\nupstream = \"lr\"\n",
        group("lr", &[&fast, &slow], "balance = \"least_requests\"")
    );
    let proxy = Proxy::start(&[&fast], &config).await;
    let tally = load(proxy.addr, "/lr", 200, 8, Arc::new(AtomicBool::new(false))).await;
    assert_eq!(tally.ok, 200, "{tally:?}");
    let to = |b: &Backend| {
        tally
            .by_upstream
            .get(&b.addr.to_string())
            .copied()
            .unwrap_or(0)
    };
    // Round robin would send it 100. With 8 clients in flight the slow one only wins a pick
    // while it has fewer requests in flight than the fast one.
    assert!(
        to(&slow) * 4 <= to(&fast),
        "slow {} vs fast {}: {tally:?}",
        to(&slow),
        to(&fast)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_keeps_clients_on_one_backend_and_moves_only_the_removed_ones_keys() {
    let (a, b, c) = Backend::start_abc();
    let with = |backends: &[&Backend]| {
        format!(
            "{}[[routes]]\nname = \"sticky\"\nupstream = \"h\"\n",
            group(
                "h",
                backends,
                "balance = \"hash\"\nhash_key = \"client_ip\""
            )
        )
    };
    let proxy = Proxy::start(&[&a], &with(&[&a, &b, &c])).await;
    // 200 clients, each a distinct source address.
    let clients: Vec<String> = (1..=200)
        .map(|i| format!("127.0.{}.{}", 1 + i / 250, i % 250 + 1))
        .collect();
    let mut before = BTreeMap::new();
    for client in &clients {
        let mut seen = BTreeSet::new();
        for _ in 0..3 {
            seen.insert(answered_by(
                &send(&proxy, client, "GET", "h.test", "/h").await,
            ));
        }
        assert_eq!(seen.len(), 1, "{client} went to {seen:?}");
        before.insert(client.clone(), seen.into_iter().next().unwrap_or_default());
    }
    let on = |m: &BTreeMap<String, String>, name: &str| m.values().filter(|v| *v == name).count();
    assert!(
        ["a", "b", "c"].iter().all(|n| on(&before, n) > 0),
        "every backend takes keys: {} {} {}",
        on(&before, "a"),
        on(&before, "b"),
        on(&before, "c")
    );

    // Remove c by reload; once c gets no more traffic, map again.
    proxy.rewrite_config(&with(&[&a, &b]));
    proxy.signal("HUP");
    let c_client = before
        .iter()
        .find(|(_, v)| *v == "c")
        .map(|(k, _)| k.clone())
        .unwrap();
    let moved_off = wait_until(Duration::from_secs(15), || async {
        answered_by(&send(&proxy, &c_client, "GET", "h.test", "/h").await) != "c"
    })
    .await;
    assert!(moved_off, "c still in the ring after the reload");
    let mut moved = 0;
    for client in &clients {
        let now = answered_by(&send(&proxy, client, "GET", "h.test", "/h").await);
        let was = &before[client];
        if now != *was {
            assert_eq!(
                was, "c",
                "{client} moved from {was} to {now}: only c's keys may move"
            );
            moved += 1;
        }
    }
    // Exactly c's keys moved: about 1/3, within hashing's spread.
    assert_eq!(moved, on(&before, "c"));
    assert!(
        moved <= clients.len() / 3 + clients.len() / 10,
        "{moved} of {} keys moved",
        clients.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_quota_on_a_route_and_the_global_limit_elsewhere() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let config = format!(
        r#"
[rate_limit]
requests = 5
window_seconds = 60
{api}
[[routes]]
name = "api"
path_prefix = "/api/"
upstream = "api"
rate_limit = {{ requests = 3, window_seconds = 60, key = "header:X-Api-Key" }}

[[routes]]
name = "rest"
upstream = "default"
"#,
        api = group("api", &[&a], "")
    );
    let proxy = Proxy::start(&[&b], &config).await;
    let statuses = |rs: &[Response]| rs.iter().map(|r| r.status).collect::<Vec<_>>();
    let burst = |from: &'static str, path: &'static str, key: Option<&'static str>, n: usize| {
        let proxy = &proxy;
        async move {
            let mut out = Vec::new();
            for _ in 0..n {
                let headers: Vec<(&str, &str)> =
                    key.map(|k| ("X-Api-Key", k)).into_iter().collect();
                out.push(send_with(proxy, from, "GET", "q.test", path, &headers).await);
            }
            out
        }
    };
    // Two keys from one address: a budget each.
    let k1 = burst("127.0.0.20", "/api/x", Some("key-one"), 4).await;
    let k2 = burst("127.0.0.20", "/api/x", Some("key-two"), 4).await;
    assert_eq!(statuses(&k1), [200, 200, 200, 429]);
    assert_eq!(statuses(&k2), [200, 200, 200, 429]);
    assert_eq!(k1[0].header("ratelimit-limit"), Some("3"));
    assert_eq!(k1[2].header("ratelimit-remaining"), Some("0"));
    assert!(k1[3].header("retry-after").is_some());
    // No key: the client's address is the key.
    let anon = burst("127.0.0.21", "/api/x", None, 4).await;
    assert_eq!(statuses(&anon), [200, 200, 200, 429]);
    // Elsewhere the global limit applies, with its own count for the same address.
    let rest = burst("127.0.0.21", "/other", None, 6).await;
    assert_eq!(statuses(&rest), [200, 200, 200, 200, 200, 429]);
    assert_eq!(rest[0].header("ratelimit-limit"), Some("5"));
    let all_counted = wait_until(Duration::from_secs(10), || async {
        proxy.metrics().await.sum("gateway_rate_limited_total", &[]) == 4.0
    })
    .await;
    assert!(
        all_counted,
        "{:?}",
        proxy.metrics().await.series("gateway_rate_limited_total")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_changes_routes_and_groups_under_load_without_a_failure() {
    let (a, b, c) = Backend::start_abc();
    let routes = |api: &[&Backend], old_or_new: &str| {
        format!(
            "[rate_limit]\nexempt = [\"127.0.0.1\"]\n{}\
             [[routes]]\nname = \"api\"\npath_prefix = \"/api/\"\nupstream = \"api\"\n\
             [[routes]]\nname = \"rest\"\npath_prefix = \"/rest/\"\nupstream = \"default\"\n\
             [[routes]]\nname = \"{old_or_new}\"\npath_prefix = \"/{old_or_new}/\"\nupstream = \"api\"\n",
            group("api", api, "")
        )
    };
    let proxy = Proxy::start(&[&a], &routes(&[&b], "old")).await;
    assert_eq!(get(proxy.addr, "/old/x").await.status, 200);
    assert_eq!(get(proxy.addr, "/new/x").await.status, 404);

    let stop = Arc::new(AtomicBool::new(false));
    let api_load = tokio::spawn(load(proxy.addr, "/api/x", 200_000, 2, stop.clone()));
    let rest_load = tokio::spawn(load(proxy.addr, "/rest/x", 200_000, 2, stop.clone()));
    // Traffic is flowing before the reload.
    assert!(
        wait_until(Duration::from_secs(10), || async {
            b.requests().await > 50
        })
        .await
    );

    // The api group gains c, route "old" goes, route "new" comes.
    proxy.rewrite_config(&routes(&[&b, &c], "new"));
    proxy.signal("HUP");
    let reloaded = wait_until(Duration::from_secs(15), || async {
        proxy
            .metrics()
            .await
            .sum("gateway_config_reloads_total", &[("result", "success")])
            == 1.0
    })
    .await;
    assert!(reloaded, "reload not applied:\n{}", proxy.log());
    assert_eq!(
        get(proxy.addr, "/new/x").await.status,
        200,
        "the new route serves"
    );
    assert_eq!(
        get(proxy.addr, "/old/x").await.status,
        404,
        "the removed route is gone"
    );
    let c_serves = wait_until(Duration::from_secs(15), || async {
        c.requests().await > 20
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (api, rest) = (api_load.await.unwrap(), rest_load.await.unwrap());
    assert!(c_serves, "the changed group never used its new backend");
    for (name, t) in [("api", &api), ("rest", &rest)] {
        assert!(t.ok > 100, "{name}: {t:?}");
        assert!(
            t.non_2xx.is_empty() && t.errors.is_empty(),
            "{name} failed: {t:?}"
        );
    }
    assert!(
        rest.by_upstream.keys().all(|k| *k == a.addr.to_string()),
        "{rest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_group_stops_its_health_checks_and_a_bad_reference_keeps_the_config() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let with_extra = format!(
        "{}[[routes]]\nname = \"extra\"\npath_prefix = \"/extra/\"\nupstream = \"extra\"\n\
         [[routes]]\nname = \"rest\"\nupstream = \"default\"\n",
        group("extra", &[&b], "")
    );
    let proxy = Proxy::start(&[&a], &with_extra).await;
    assert_eq!(answered_by(&get(proxy.addr, "/extra/x").await), "b");
    let b_label = b.addr.to_string();
    let probed = wait_until(Duration::from_secs(10), || async {
        b.path_count("/health").await >= 2
    })
    .await;
    assert!(probed, "the extra group is health checked");

    // A route to a group that does not exist: rejected, named, and nothing changes.
    proxy.rewrite_config("[[routes]]\nname = \"rest\"\nupstream = \"missing\"\n");
    proxy.signal("HUP");
    let rejected = wait_until(Duration::from_secs(10), || async {
        proxy
            .metrics()
            .await
            .sum("gateway_config_reloads_total", &[("result", "failure")])
            == 1.0
            // Logged through a non-blocking writer: the line can come after the count.
            && proxy.log().contains("routes[0].upstream: no group")
            && proxy.log().contains("missing")
    })
    .await;
    assert!(
        rejected,
        "bad reload not counted and named:\n{}",
        proxy.log()
    );
    assert_eq!(
        answered_by(&get(proxy.addr, "/extra/x").await),
        "b",
        "old config kept"
    );

    // Without the group: its series go, its checks stop.
    let text = std::fs::read_to_string(&proxy.config_path).unwrap();
    let mut config: toml::Table = text.parse().unwrap();
    config.remove("upstreams");
    std::fs::write(&proxy.config_path, toml::to_string(&config).unwrap()).unwrap();
    proxy.rewrite_config("[[routes]]\nname = \"rest\"\nupstream = \"default\"\n");
    proxy.signal("HUP");
    let gone = wait_until(Duration::from_secs(10), || async {
        let m = proxy.metrics().await;
        m.sum("gateway_config_reloads_total", &[("result", "success")]) == 1.0
            && m.series("gateway_backend_up")
                .iter()
                .all(|(l, _)| !l.contains(&("backend".to_owned(), b_label.clone())))
    })
    .await;
    assert!(
        gone,
        "{:?}",
        proxy.metrics().await.series("gateway_backend_up")
    );
    let stopped = wait_until(Duration::from_secs(10), || async {
        proxy
            .log()
            .contains("upstream group removed; its health checks stopped")
    })
    .await;
    assert!(stopped, "{}", proxy.log());
    assert_eq!(answered_by(&get(proxy.addr, "/extra/x").await), "a");
}
