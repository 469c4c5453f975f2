//! Start order: the proxy port must not take traffic before the first discovery and health
//! round, so host-name backends answer from the very first request.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const NO_LIMIT: &str = "[rate_limit]\nenabled = false";

/// `localhost:PORT` for each backend: names go through discovery's resolver.
fn by_name(backends: &[&Backend]) -> Vec<String> {
    backends
        .iter()
        .map(|b| format!("localhost:{}", b.addr.port()))
        .collect()
}

/// A proxy process spawned without any readiness wait (unlike `Proxy::start`, which waits for
/// the admin listener first and so gives discovery time to finish).
struct StartingProxy {
    process: Spawned,
    addr: SocketAddr,
    _dir: TempDir,
    /// The proxy and admin ports, held for the process's life.
    _holds: [PortHold; 2],
}

impl StartingProxy {
    fn start(backends: &[String]) -> StartingProxy {
        let dir = TempDir::new("startup");
        let holds = [PortHold::new(), PortHold::new()];
        let (addr, admin) = (holds[0].addr, holds[1].addr);
        let mut config = base_config(addr, admin, backends, dir.path());
        merge(&mut config, NO_LIMIT);
        let config_path = dir.path().join("proxy.toml");
        std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
        let process = Spawned::start(
            PROXY_BIN,
            &["-c", config_path.to_str().unwrap()],
            dir.path(),
        );
        StartingProxy {
            process,
            addr,
            _dir: dir,
            _holds: holds,
        }
    }

    fn output(&self) -> String {
        self.process.output()
    }

    /// The first connection the proxy port accepts, polled every millisecond (bounded).
    async fn first_connection(&mut self) -> Conn {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(conn) = Conn::connect(self.addr, None).await {
                return conn;
            }
            if let Some(status) = self.process.exited() {
                panic!("proxy exited with {status}; output:\n{}", self.output());
            }
            assert!(
                Instant::now() < deadline,
                "proxy port never opened; output:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_name_backends_answer_from_the_first_accepted_connection() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let backends = by_name(&[&a, &b]);
    for start in 0..10 {
        let mut proxy = StartingProxy::start(&backends);
        let mut conn = proxy.first_connection().await;
        // At once on the connection that found the port open, then sequentially, then side by side.
        let r = conn
            .request("GET", "/start", &[])
            .await
            .expect("first connection answers");
        let mut statuses = vec![(r.status, r.text())];
        let mut client = Client::new(proxy.addr);
        for _ in 0..4 {
            let r = client.get("/start").await.expect("request");
            statuses.push((r.status, r.text()));
        }
        let fresh: Vec<_> = (0..5)
            .map(|_| tokio::spawn(get_with(proxy.addr, None, "/start", &[])))
            .collect();
        for t in fresh {
            let r = t.await.expect("request task");
            statuses.push((r.status, r.text()));
        }
        let bad: Vec<_> = statuses
            .iter()
            .filter(|(s, _)| !(200..300).contains(s))
            .collect();
        assert!(
            bad.is_empty(),
            "start {start}: non-2xx {bad:?}; output:\n{}",
            proxy.output()
        );
    }
}

/// GETs on a fresh connection each (so the new process's first accepted connections are among
/// them) until `stop`, bounded; returns the statuses and errors.
async fn fresh_connection_load(to: SocketAddr, stop: Arc<AtomicBool>) -> (Vec<u16>, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut statuses, mut errors) = (Vec::new(), Vec::new());
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let answer = match Conn::connect(to, None).await {
            Ok(mut conn) => {
                conn.request("GET", "/upgrade", &[("Connection", "close")])
                    .await
            }
            Err(e) => Err(e),
        };
        match answer {
            Ok(r) => statuses.push(r.status),
            Err(e) => errors.push(e.to_string()),
        }
    }
    (statuses, errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_name_backends_answer_across_two_upgrades() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let mut proxy = Proxy::start_with(by_name(&[&a, &b]), NO_LIMIT, true).await;
    let stop = Arc::new(AtomicBool::new(false));
    // Four clients: two on a fresh connection per request (so the new process's first accepted
    // connections are among them), two kept alive.
    let fresh: Vec<_> = (0..2)
        .map(|_| tokio::spawn(fresh_connection_load(proxy.addr, stop.clone())))
        .collect();
    let kept = tokio::spawn(load(proxy.addr, "/upgrade", 1_000_000, 2, stop.clone()));

    for round in 0..2 {
        let status = proxy.upgrade().await;
        assert!(
            status.is_some_and(|s| s.success()),
            "round {round}: old process {status:?}:\n{}",
            proxy.output()
        );
    }
    stop.store(true, Ordering::Relaxed);
    let (mut statuses, mut errors) = (Vec::new(), Vec::new());
    for load in fresh {
        let (s, e) = load.await.expect("load task");
        statuses.extend(s);
        errors.extend(e);
    }
    let kept = kept.await.expect("keep-alive load");
    let bad: Vec<_> = statuses
        .iter()
        .filter(|s| !(200..300).contains(*s))
        .collect();
    assert!(
        bad.is_empty() && errors.is_empty(),
        "{} requests; non-2xx {bad:?}; errors {errors:?}; output:\n{}",
        statuses.len(),
        proxy.output()
    );
    assert!(
        kept.ok > 0 && kept.non_2xx.is_empty() && kept.errors.is_empty(),
        "keep-alive clients: {kept:?}"
    );
    assert_eq!(get(proxy.addr, "/new").await.status, 200);
}
