//! `/metrics` and the access log, read from the real proxy after real traffic.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_add_up_after_traffic_with_429s() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let proxy = Proxy::start(&[&a, &b], "[rate_limit]\nrequests = 5").await;
    let (n, k) = (12usize, 7usize);
    let mut client = Client::new(proxy.addr);
    for _ in 0..n {
        client.get("/m").await.unwrap();
    }
    // logging() runs just after the last response is sent, and the in-flight count drops just
    // after logging(): wait for both, then read once.
    let settled = wait_until(Duration::from_secs(5), || async {
        let m = proxy.metrics().await;
        m.sum("gateway_request_duration_seconds_count", &[]) >= n as f64
            && m.sum("gateway_inflight_requests", &[]) == 0.0
    })
    .await;
    assert!(settled);
    let m = proxy.metrics().await;
    assert_eq!(m.sum("gateway_requests_total", &[]), n as f64);
    assert_eq!(
        m.sum("gateway_requests_total", &[("status", "429")]),
        k as f64
    );
    assert_eq!(
        m.sum(
            "gateway_requests_total",
            &[("status", "429"), ("backend", "none")]
        ),
        k as f64
    );
    assert_eq!(
        m.sum("gateway_requests_total", &[("method", "GET")]),
        n as f64
    );
    assert_eq!(m.sum("gateway_rate_limited_total", &[]), k as f64);
    assert_eq!(
        m.sum("gateway_request_duration_seconds_count", &[]),
        n as f64
    );
    assert_eq!(
        m.sum("gateway_upstream_response_seconds_count", &[]),
        (n - k) as f64
    );
    let mut per_backend: Vec<f64> = [&a, &b]
        .iter()
        .map(|x| {
            m.sum(
                "gateway_request_duration_seconds_count",
                &[("backend", &x.addr.to_string())],
            )
        })
        .collect();
    per_backend.sort_by(f64::total_cmp);
    assert_eq!(
        per_backend,
        [2.0, 3.0],
        "round robin over the 5 admitted requests"
    );
    assert_eq!(m.sum("gateway_inflight_requests", &[]), 0.0);

    // Buckets are cumulative, span 0.5 ms to 10 s, and end in +Inf equal to the count.
    for family in [
        "gateway_request_duration_seconds",
        "gateway_upstream_response_seconds",
    ] {
        let buckets = m.series(&format!("{family}_bucket"));
        // One histogram per label set other than `le` (route and backend, or upstream and
        // backend).
        let without_le = |l: &Vec<(String, String)>| -> Vec<(String, String)> {
            l.iter().filter(|(k, _)| k != "le").cloned().collect()
        };
        let histograms: std::collections::BTreeSet<Vec<(String, String)>> =
            buckets.iter().map(|(l, _)| without_le(l)).collect();
        assert!(!histograms.is_empty(), "{family} has no series");
        for labels in histograms {
            let backend = format!("{labels:?}");
            let series: Vec<(String, f64)> = buckets
                .iter()
                .filter(|(l, _)| without_le(l) == labels)
                .map(|(l, v)| (l.iter().find(|(k, _)| k == "le").unwrap().1.clone(), *v))
                .collect();
            assert_eq!(series.first().unwrap().0, "0.0005", "{family} {backend}");
            assert_eq!(series[series.len() - 2].0, "10", "{family} {backend}");
            assert_eq!(series.last().unwrap().0, "+Inf", "{family} {backend}");
            assert!(
                series.windows(2).all(|w| w[0].1 <= w[1].1),
                "{family} {backend} not cumulative"
            );
            let filter: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let count = m.sum(&format!("{family}_count"), &filter);
            assert_eq!(series.last().unwrap().1, count);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_up_and_reload_counters_present_from_start() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let proxy = Proxy::start(&[&a, &b], "").await;
    let m = proxy.metrics().await;
    for backend in [&a, &b] {
        assert_eq!(
            m.sum(
                "gateway_backend_up",
                &[("backend", &backend.addr.to_string())]
            ),
            1.0
        );
    }
    assert_eq!(m.series("gateway_config_reloads_total").len(), 2);
    assert_eq!(m.sum("gateway_config_reloads_total", &[]), 0.0);
    assert_eq!(m.sum("gateway_build_info", &[]), 1.0);
    assert!(m.sum("process_resident_memory_bytes", &[]) > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_upstream_connections_are_counted() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&[&a], "").await;
    let mut client = Client::new(proxy.addr);
    for _ in 0..10 {
        assert_eq!(client.get("/reuse").await.unwrap().status, 200);
    }
    let label = a.addr.to_string();
    let settled = wait_until(Duration::from_secs(5), || async {
        proxy.metrics().await.sum("gateway_requests_total", &[]) >= 10.0
    })
    .await;
    assert!(settled);
    let m = proxy.metrics().await;
    let fresh = m.sum(
        "gateway_upstream_connections_total",
        &[("backend", &label), ("reused", "false")],
    );
    let reused = m.sum(
        "gateway_upstream_connections_total",
        &[("backend", &label), ("reused", "true")],
    );
    assert_eq!(fresh + reused, 10.0);
    assert_eq!(fresh, 1.0, "only the first request opens a connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_label_is_bounded() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&[&a], "").await;
    let mut client = Client::new(proxy.addr);
    for method in ["GET", "POST", "BREW", "PURGEALL"] {
        client
            .request(method, "/m", &[("Content-Length", "0")])
            .await
            .unwrap();
    }
    let settled = wait_until(Duration::from_secs(5), || async {
        proxy.metrics().await.sum("gateway_requests_total", &[]) >= 4.0
    })
    .await;
    assert!(settled);
    let m = proxy.metrics().await;
    assert_eq!(m.sum("gateway_requests_total", &[("method", "OTHER")]), 2.0);
    assert_eq!(m.sum("gateway_requests_total", &[("method", "POST")]), 1.0);
    assert!(!m.text.contains("BREW"));
}

/// Backend codes outside 100–599 reach the client as sent but share one `status` label value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_backend_statuses_are_labelled_invalid() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&[&a], "").await;
    let mut client = Client::new(proxy.addr);
    for code in [600, 799, 999] {
        let r = client.get(&format!("/status/{code}")).await.unwrap();
        assert_eq!(r.status, code);
    }
    assert_eq!(client.get("/status/599").await.unwrap().status, 599);
    let settled = wait_until(Duration::from_secs(5), || async {
        proxy.metrics().await.sum("gateway_requests_total", &[]) >= 4.0
    })
    .await;
    assert!(settled);
    let m = proxy.metrics().await;
    let label = a.addr.to_string();
    assert_eq!(
        m.sum(
            "gateway_requests_total",
            &[("backend", &label), ("status", "invalid")]
        ),
        3.0
    );
    assert_eq!(m.sum("gateway_requests_total", &[("status", "599")]), 1.0);
    for code in ["600", "799", "999"] {
        assert!(!m.text.contains(&format!("status=\"{code}\"")), "{code}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_passes_promtool_and_has_the_right_content_type() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&[&a], "[rate_limit]\nrequests = 3").await;
    let mut client = Client::new(proxy.addr);
    for _ in 0..5 {
        client.get("/p").await.unwrap();
    }
    let r = get(proxy.admin, "/metrics").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );

    let promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = promtool.unwrap_or_else(|e| {
        panic!("promtool is needed for this test ({e}): apt-get install -y prometheus")
    });
    child.stdin.take().unwrap().write_all(&r.body).unwrap();
    let out = child.wait_with_output().unwrap();
    // promtool exits 3 for lint-only findings (e.g. naming advice), 1 for invalid metrics.
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check metrics:\n{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_line_carries_request_id_backend_and_status() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&[&a], "").await;
    let r = get_with(
        proxy.addr,
        None,
        "/logged?q=1",
        &[("X-Request-Id", "access-1")],
    )
    .await;
    assert_eq!(r.status, 200);
    // Written to log.file and to stdout, each through its own non-blocking writer.
    let found = wait_until(Duration::from_secs(5), || async {
        proxy.log().contains("\"access-1\"") && proxy.output().contains("\"access-1\"")
    })
    .await;
    assert!(
        found,
        "log file:\n{}\nstdout:\n{}",
        proxy.log(),
        proxy.output()
    );
    let log = proxy.log();
    let line = log.lines().find(|l| l.contains("\"access-1\"")).unwrap();
    let entry: serde_json::Value = serde_json::from_str(line).expect("one JSON object per line");
    assert_eq!(entry["request_id"], "access-1");
    assert_eq!(entry["backend"], a.addr.to_string());
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["method"], "GET");
    assert_eq!(entry["path"], "/logged?q=1");
    assert_eq!(entry["client_ip"], "127.0.0.1");
    assert_eq!(entry["attempts"], 1);
    assert!(entry["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(entry["upstream_ms"].as_f64().unwrap() > 0.0);
    assert!(entry["bytes_sent"].as_u64().unwrap() > 0);
    assert!(entry["time"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_off_writes_no_lines() {
    let a = Backend::start("a");
    let proxy = Proxy::start(
        &[&a],
        "[log]\naccess_log = false\n[upstream]\nread_timeout_ms = 300",
    )
    .await;
    let r = get_with(proxy.addr, None, "/quiet", &[("X-Request-Id", "quiet-1")]).await;
    assert_eq!(r.status, 200);
    // A later error line shows the writers flushed past the first request.
    let r = get_with(
        proxy.addr,
        None,
        "/delay/1000",
        &[("X-Request-Id", "quiet-2")],
    )
    .await;
    assert_eq!(r.status, 504);
    let flushed = wait_until(Duration::from_secs(5), || async {
        proxy.log().contains("quiet-2") && proxy.output().contains("quiet-2")
    })
    .await;
    assert!(flushed, "log file:\n{}", proxy.log());
    assert!(!proxy.output().contains("quiet-1"));
    assert!(!proxy.log().contains("quiet-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_overrides_the_configured_level() {
    let a = Backend::start("a");
    let mut proxy = Proxy::start(&[&a], "[log]\nlevel = \"warn\"\naccess_log = false").await;
    let r = get_with(
        proxy.addr,
        Some("127.0.0.1".parse().unwrap()),
        "/quiet",
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        !proxy.output().contains("DEBUG"),
        "warn level printed debug lines"
    );

    // The same config with RUST_LOG=debug: Pingora's and our debug records appear.
    proxy.restart_with_rust_log("debug").await;
    assert_eq!(get(proxy.addr, "/loud").await.status, 200);
    let debug = wait_until(Duration::from_secs(5), || async {
        proxy.output().contains("DEBUG")
    })
    .await;
    assert!(debug, "output:\n{}", proxy.output());
}

/// Lines are handed to the writers in batches: a burst larger than several batches, sent right
/// before SIGTERM, is in the log file whole after the exit, one JSON object per line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_batches_lose_no_line_up_to_exit() {
    let a = Backend::start("a");
    let mut proxy = Proxy::start(&[&a], "[rate_limit]\nenabled = false").await;
    let mut client = Client::new(proxy.addr);
    let n = 400; // ~130 KB of lines: four batches and a partial one
    for i in 0..n {
        let id = format!("burst-{i}");
        let r = client
            .request("GET", "/burst", &[("X-Request-Id", id.as_str())])
            .await
            .expect("answered");
        assert_eq!(r.status, 200);
    }
    proxy.signal("TERM");
    let status = proxy.wait_exit(Duration::from_secs(15)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let log = proxy.log();
    let mut seen = std::collections::BTreeSet::new();
    for line in log.lines().filter(|l| l.contains("\"burst-")) {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        seen.insert(entry["request_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen.len(), n, "lines missing from the log file");
}
