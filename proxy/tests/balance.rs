//! Load balancing end to end: a dead backend's share goes to all survivors alike.

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use common::*;

/// The one client of the split: exempt from rate limiting so 300 requests all pass.
const CLIENT: &str = "127.0.0.9";

async fn healthy_backends(proxy: &Proxy) -> Option<u64> {
    try_get(proxy.admin, "/ready")
        .await
        .and_then(|r| r.json()["healthy_backends"].as_u64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_share_is_split_evenly_between_survivors() {
    let (a, mut b, c) = Backend::start_abc();
    // Generous probe timeout: a slow probe to a survivor on a loaded machine must not take it
    // out of rotation mid-count.
    let proxy = Proxy::start(
        &[&a, &b, &c],
        &format!(
            "[rate_limit]\nexempt = [\"{CLIENT}\"]\n\
             [upstream.health_check]\ninterval_ms = 300\ntimeout_ms = 2000"
        ),
    )
    .await;
    let b_label = b.addr.to_string();

    b.kill();
    let out_of_rotation = wait_until(Duration::from_secs(20), || async {
        proxy.backend_up(&b_label).await == 0.0 && healthy_backends(&proxy).await == Some(2)
    })
    .await;
    assert!(out_of_rotation, "b never left rotation");

    let from: Option<IpAddr> = Some(CLIENT.parse().unwrap());
    let mut client = Client::from_addr(proxy.addr, from);
    let mut split: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..300 {
        let r = client.get("/split").await.expect("request");
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert!(r.header("ratelimit-limit").is_none(), "client not exempt");
        let up = r.header("x-upstream").expect("X-Upstream").to_owned();
        *split.entry(up).or_default() += 1;
    }
    assert!(!split.contains_key(&b_label), "{split:?}");
    for survivor in [&a, &c] {
        let got = split.get(&survivor.addr.to_string()).copied().unwrap_or(0);
        assert!(got.abs_diff(150) <= 5, "{}: {split:?}", survivor.name);
    }
}
