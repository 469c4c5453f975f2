//! Hostile clients and operator mistakes: idle and slow connections, busy ports, daemon mode,
//! early signals, drain visibility, client faults that must not be retried, pipelining.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream as StdStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A config written for a test: the proxy and admin addresses (held, so no other test is
/// handed them meanwhile) and the file.
struct Written {
    addr: SocketAddr,
    admin: SocketAddr,
    path: std::path::PathBuf,
    _holds: [PortHold; 2],
}

/// Writes a config for `backends` with `overrides`.
fn write_config(dir: &Path, backends: &[String], overrides: &str) -> Written {
    let holds = [PortHold::new(), PortHold::new()];
    let (addr, admin) = (holds[0].addr, holds[1].addr);
    let mut config = base_config(addr, admin, backends, dir);
    merge(&mut config, overrides);
    let path = dir.join("proxy.toml");
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    Written {
        addr,
        admin,
        path,
        _holds: holds,
    }
}

async fn wait_admin(admin: SocketAddr, path: &'static str) -> bool {
    wait_until(Duration::from_secs(20), || async move {
        try_get(admin, path).await.is_some_and(|r| r.status == 200)
    })
    .await
}

async fn metric(admin: SocketAddr, name: &str, filter: &[(&str, &str)]) -> f64 {
    let r = get(admin, "/metrics").await;
    Metrics::parse(&r.text()).sum(name, filter)
}

/// Opens a connection from `from`, sends one GET and reads its answer; the connection stays
/// open (kept alive). `None` when the proxy closed it at accept.
async fn idle_after_one_request(to: SocketAddr, from: IpAddr) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(from, 0)).ok()?;
    let mut stream = socket.connect(to).await.ok()?;
    stream
        .write_all(b"GET /idle HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .ok()?;
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    // Until the end of the header and the small JSON body (Content-Length is there).
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return Some(stream);
            }
        }
    }
}

/// Whether the server closed `stream` (EOF or reset) within `within`.
async fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, stream.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_one_client_cannot_exhaust_the_process() {
    let backend = Backend::start("a");
    let dir = TempDir::new("idle");
    let w = write_config(
        dir.path(),
        &backend_list(&[&backend]),
        "[server]\nkeepalive_timeout_seconds = 3\nmax_connections = 400\nmax_connections_per_client = 256\n\
         [upstream]\nkeepalive_pool_size = 32\n[rate_limit]\nenabled = false\n",
    );
    let (addr, admin, config) = (w.addr, w.admin, w.path.clone());
    // The fd limit that broke the process before: 1024, soft and hard.
    let mut proxy = Spawned::start(
        "prlimit",
        &[
            "--nofile=1024:1024",
            "--",
            PROXY_BIN,
            "-c",
            config.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(wait_admin(admin, "/ready").await, "{}", proxy.output());

    // 900 kept-alive connections from 127.0.0.2, one request each, then idle.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..900 {
        match idle_after_one_request(addr, ip("127.0.0.2")).await {
            Some(s) => held.push(s),
            None => refused += 1,
        }
    }
    assert_eq!(held.len(), 256, "per-client cap; refused {refused}");
    assert_eq!(
        metric(
            admin,
            "gateway_downstream_connections_rejected_total",
            &[("reason", "per_client")]
        )
        .await,
        644.0
    );

    // Another client and the admin listener are still served.
    let other = get_with(addr, Some(ip("127.0.0.3")), "/other", &[]).await;
    assert_eq!(other.status, 200);
    assert_eq!(get(admin, "/metrics").await.status, 200);

    // The idle ones are closed after keepalive_timeout_seconds (3 s), all of them.
    let mut closed = 0;
    for s in held.iter_mut() {
        if closed_by_server(s, Duration::from_secs(15)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 256);
    let admin_copy = admin;
    assert!(
        wait_until(Duration::from_secs(10), || async move {
            metric(admin_copy, "gateway_downstream_connections", &[]).await == 0.0
        })
        .await
    );
    assert!(
        proxy.exit_code(Duration::ZERO).await.is_none(),
        "still running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_closes_the_excess_and_admin_stays_reachable() {
    let backend = Backend::start("a");
    let proxy = Proxy::start(
        &[&backend],
        "[server]\nmax_connections = 20\nmax_connections_per_client = 0\n[rate_limit]\nenabled = false\n",
    )
    .await;
    let mut held = Vec::new();
    for i in 0..30 {
        let from = ip(&format!("127.0.1.{}", i + 1));
        if let Some(s) = idle_after_one_request(proxy.addr, from).await {
            held.push(s);
        }
    }
    assert_eq!(held.len(), 20);
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum(
            "gateway_downstream_connections_rejected_total",
            &[("reason", "max_connections")]
        ),
        10.0
    );
    assert_eq!(m.sum("gateway_downstream_connections", &[]), 20.0);
    drop(held);
    let admin = proxy.admin;
    assert!(
        wait_until(Duration::from_secs(10), || async move {
            metric(admin, "gateway_downstream_connections", &[]).await == 0.0
        })
        .await
    );
    assert_eq!(get(proxy.addr, "/after").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_header_is_cut_at_header_timeout() {
    let backend = Backend::start("a");
    let proxy = Proxy::start(&[&backend], "[server]\nheader_timeout_ms = 1000\n").await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let header = b"GET /slow HTTP/1.1\r\nHost: t\r\nX-Filler: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let started = Instant::now();
    let mut cut = false;
    // One byte every 500 ms: the whole header would take over 30 s.
    for byte in header {
        if stream.write_all(&[*byte]).await.is_err() {
            cut = true;
            break;
        }
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut = true;
                break;
            }
            Ok(Ok(_)) => panic!("a response to an incomplete header"),
            Err(_) => {}
        }
    }
    assert!(cut, "the connection outlived the whole header");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "cut after {:?}",
        started.elapsed()
    );
    let m = proxy.metrics().await;
    assert_eq!(m.sum("gateway_downstream_header_timeouts_total", &[]), 1.0);
    // A normal client is unaffected.
    assert_eq!(get(proxy.addr, "/fine").await.status, 200);
}

/// Starts the proxy expecting it to fail: exit code and output.
async fn start_failing(dir: &Path, config: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let mut args = vec!["-c", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    let mut p = Spawned::start(PROXY_BIN, &args, dir);
    let code = p.exit_code(Duration::from_secs(5)).await;
    (code, p.output())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_failures_exit_1_naming_key_and_address() {
    let dir = TempDir::new("bind");
    let backends = vec!["127.0.0.1:9".to_owned()];

    // The listen port in use.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = held.local_addr().unwrap();
    let w = write_config(
        dir.path(),
        &backends,
        &format!("[server]\nlisten = \"{busy}\"\n"),
    );
    let config = w.path.clone();
    let (code, out) = start_failing(dir.path(), &config, &[]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("server.listen {busy}: address in use")),
        "{out}"
    );

    // The admin port in use.
    let w = write_config(
        dir.path(),
        &backends,
        &format!("[admin]\nlisten = \"{busy}\"\n"),
    );
    let config = w.path.clone();
    let (code, out) = start_failing(dir.path(), &config, &[]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("admin.listen {busy}: address in use")),
        "{out}"
    );

    // An address this host does not have (TEST-NET-1; nothing is sent).
    let w = write_config(
        dir.path(),
        &backends,
        "[server]\nlisten = \"192.0.2.1:8080\"\n",
    );
    let config = w.path.clone();
    let (code, out) = start_failing(dir.path(), &config, &[]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("server.listen 192.0.2.1:8080"), "{out}");

    // The same address twice: refused by -t and at start.
    let hold = PortHold::new();
    let port = hold.addr.port();
    let w = write_config(
        dir.path(),
        &backends,
        &format!("[server]\nlisten = [\"127.0.0.1:{port}\", \"127.0.0.1:{port}\"]\n"),
    );
    let config = w.path.clone();
    for extra in [&["-t"][..], &[][..]] {
        let (code, out) = start_failing(dir.path(), &config, extra).await;
        assert_eq!(code, Some(1), "{extra:?}: {out}");
        assert!(out.contains("server.listen"), "{out}");
        assert!(out.contains(&format!("127.0.0.1:{port}")), "{out}");
    }
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_detaches_at_once_and_keeps_logging() {
    let backend = Backend::start("a");
    let dir = TempDir::new("daemon");
    let w = write_config(dir.path(), &backend_list(&[&backend]), "");
    let (addr, admin, config) = (w.addr, w.admin, w.path.clone());
    let started = Instant::now();
    // Output captured through a pipe: `output()` returns only when every holder of the pipe
    // closed it, so a daemon that kept the caller's stdout would hold this call.
    let out = Command::new(PROXY_BIN)
        .args(["-d", "-c", config.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run -d");
    assert!(out.status.success(), "{out:?}");
    // The pid file exists when `-d` returns; whatever fails below, the daemon is stopped.
    let pid_file = dir.path().join("proxy.pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    struct KillOnDrop(i32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
    let _guard = KillOnDrop(pid);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "-d returned after {:?}",
        started.elapsed()
    );
    assert!(wait_admin(admin, "/ready").await);

    // An upstream error after daemonizing: reaches log.file with its request id.
    let mut b = backend;
    b.kill();
    let r = get_with(
        addr,
        None,
        "/after-fork",
        &[("X-Request-Id", "daemon-err-1")],
    )
    .await;
    assert!(r.status >= 500, "{}", r.status);
    let log = dir.path().join("proxy.log");
    let log_copy = log.clone();
    let logged = wait_until(Duration::from_secs(5), || {
        let log = log_copy.clone();
        async move {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .any(|l| l.contains("daemon-err-1") && l.contains("ERROR"))
        }
    })
    .await;
    assert!(
        logged,
        "log.file:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // A second `-d` on the same ports fails as a foreground start would: exit 1, the reason on
    // the caller's stderr.
    let second = Command::new(PROXY_BIN)
        .args(["-d", "-c", config.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run -d again");
    assert_eq!(second.status.code(), Some(1), "{second:?}");
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(said.contains("address in use"), "{said}");

    // SIGTERM still ends it promptly.
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let gone = wait_until(Duration::from_secs(5), || async move {
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    })
    .await;
    assert!(gone, "daemon still running 5 s after SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_during_start_up_is_queued_not_fatal() {
    let backend = Backend::start("a");
    let dir = TempDir::new("hup");
    let w = write_config(dir.path(), &backend_list(&[&backend]), "");
    let (addr, admin, config) = (w.addr, w.admin, w.path.clone());
    // A parent that keeps SIGHUP blocked across exec, and a HUP sent at once (0 ms): pending
    // when the proxy starts, it must be taken as a reload request, not as the default action.
    // (Rust's Command resets the mask in the child, so a tiny launcher blocks it.)
    let launcher = "import os, signal, sys\n\
                    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGHUP])\n\
                    os.kill(os.getpid(), signal.SIGHUP)\n\
                    os.execv(sys.argv[1], sys.argv[1:])\n";
    let mut proxy = Spawned::start(
        "python3",
        &["-c", launcher, PROXY_BIN, "-c", config.to_str().unwrap()],
        dir.path(),
    );
    assert!(wait_admin(admin, "/ready").await, "{}", proxy.output());
    assert_eq!(get(addr, "/x").await.status, 200);
    let admin_copy = admin;
    assert!(
        wait_until(Duration::from_secs(10), || async move {
            metric(
                admin_copy,
                "gateway_config_reloads_total",
                &[("result", "success")],
            )
            .await
                == 1.0
        })
        .await,
        "the queued SIGHUP was not applied: {}",
        proxy.output()
    );

    // And HUPs at 2 ms steps through the rest of start-up, once main has begun.
    for delay_ms in [2u64, 4, 8, 16] {
        let dir = TempDir::new("hup2");
        let w = write_config(dir.path(), &backend_list(&[&backend]), "");
        let (addr, admin, config) = (w.addr, w.admin, w.path.clone());
        let mut p = Spawned::start(PROXY_BIN, &["-c", config.to_str().unwrap()], dir.path());
        let pid = p.pid();
        // main has begun once its SIGHUP handler shows in /proc (the dynamic loader's work
        // before main, a few ms in a debug build, is outside any program's reach).
        let caught = wait_until(Duration::from_secs(5), || async move {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    let line = s.lines().find(|l| l.starts_with("SigCgt:"))?;
                    u64::from_str_radix(line.split_whitespace().nth(1)?, 16).ok()
                })
                .is_some_and(|mask| mask & 1 == 1)
        })
        .await;
        assert!(caught);
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(wait_admin(admin, "/ready").await, "{}", p.output());
        assert_eq!(get(addr, "/x").await.status, 200, "{delay_ms} ms");
        assert!(p.exit_code(Duration::ZERO).await.is_none());
    }
    assert!(proxy.exit_code(Duration::ZERO).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_delay_keeps_accepting_while_ready_says_503() {
    let backend = Backend::start("a");
    let mut proxy = Proxy::start(
        &[&backend],
        "[server]\ndrain_delay_seconds = 2\ngrace_period_seconds = 5\n",
    )
    .await;
    let to = proxy.addr;
    let in_flight = tokio::spawn(async move { get(to, "/delay/3000").await });
    // The slow request is in flight before the signal.
    let admin = proxy.admin;
    assert!(
        wait_until(Duration::from_secs(5), || async move {
            metric(admin, "gateway_inflight_requests", &[]).await >= 1.0
        })
        .await
    );
    proxy.signal("TERM");
    let signalled = Instant::now();
    // During the delay: a NEW admin connection says 503, a NEW proxy request is served.
    assert!(
        wait_until(Duration::from_secs(1), || async move {
            try_get(admin, "/ready")
                .await
                .is_some_and(|r| r.status == 503)
        })
        .await
    );
    let during = get(proxy.addr, "/during").await;
    assert_eq!(during.status, 200);
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "test too slow"
    );
    // Then the proxy listener closes; the admin one keeps answering.
    let addr = proxy.addr;
    assert!(
        wait_until(Duration::from_secs(5), || async move {
            TcpStream::connect(addr).await.is_err()
        })
        .await,
        "proxy listener still open"
    );
    assert!(signalled.elapsed() >= Duration::from_secs(2));
    assert_eq!(try_get(admin, "/ready").await.map(|r| r.status), Some(503));
    // The in-flight request finishes; then the process exits 0.
    assert_eq!(in_flight.await.unwrap().status, 200);
    let status = proxy.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_faults_are_not_retried_or_blamed_on_backends() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let c = Backend::start("c");
    let proxy = Proxy::start(&[&a, &b, &c], "[rate_limit]\nenabled = false\n").await;

    // A PUT whose client goes away mid-body.
    let mut s = StdStream::connect(proxy.addr).unwrap();
    s.write_all(b"PUT /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n")
        .unwrap();
    s.write_all(&[b'x'; 1000]).unwrap();
    drop(s);
    // `Connection: Host` makes Pingora refuse to forward the request (a client error).
    let r = get_with(proxy.addr, None, "/conn-host", &[("Connection", "Host")]).await;
    assert!((400..500).contains(&r.status), "{}", r.status);

    // Wait until both requests are logged (access log lines), then look at the counters.
    let log = proxy.log_file.clone();
    assert!(
        wait_until(Duration::from_secs(10), || {
            let log = log.clone();
            async move {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                text.contains("\"path\":\"/upload\"") && text.contains("\"path\":\"/conn-host\"")
            }
        })
        .await,
        "{}",
        proxy.log()
    );
    let m = proxy.metrics().await;
    assert_eq!(m.sum("gateway_upstream_retries_total", &[]), 0.0);
    assert_eq!(m.sum("gateway_upstream_errors_total", &[]), 0.0);
    let text = proxy.log();
    let upload = text
        .lines()
        .find(|l| l.contains("\"path\":\"/upload\""))
        .unwrap();
    assert!(upload.contains("\"attempts\":1"), "{upload}");
    assert!(
        !text
            .lines()
            .any(|l| l.contains("retrying on another backend")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_all_answered() {
    let backend = Backend::start("a");
    let proxy = Proxy::start(&[&backend], "").await;
    let mut s = StdStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"GET /p1 HTTP/1.1\r\nHost: t\r\n\r\nGET /p2 HTTP/1.1\r\nHost: t\r\n\r\nGET /p3 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let text = String::from_utf8_lossy(&all);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 3, "{text}");
    for p in ["/p1", "/p2", "/p3"] {
        assert!(text.contains(&format!("\"path\":\"{p}\"")), "{p}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_after_body_timeout() {
    let backend = Backend::start("a");
    let proxy = Proxy::start(&[&backend], "[server]\nbody_timeout_ms = 500\n").await;
    let mut s = StdStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"PUT /stall HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n0123456789")
        .unwrap();
    // Then nothing: the next body read waits longer than body_timeout_ms.
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"status\":408"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let m = proxy.metrics().await;
    assert_eq!(m.sum("gateway_downstream_body_timeouts_total", &[]), 1.0);
    assert_eq!(
        m.sum("gateway_upstream_errors_total", &[]),
        0.0,
        "not the backend's fault"
    );
}

/// A backend that answers `/health` properly and cuts every other response short: it promises
/// 1000 bytes of body, sends 3 and closes.
fn start_truncating_backend() -> (SocketAddr, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        // Bounded: the test makes a handful of requests, health checks a few more.
        for stream in listener.incoming().take(200) {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 4096];
                // Requests on a kept-alive connection, one at a time.
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    let request = String::from_utf8_lossy(&buf[..n]);
                    if request.starts_with("GET /health ") {
                        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                    } else {
                        let _ =
                            stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nabc");
                        return; // closes mid-body
                    }
                }
            });
        }
    });
    (addr, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_errors_are_counted_by_kind() {
    let (cutting, _thread) = start_truncating_backend();
    let proxy = Proxy::start_with(
        vec![cutting.to_string()],
        "[rate_limit]\nenabled = false\n",
        true,
    )
    .await;
    // A response cut off after its header: the client sees a short body, and the metrics say so.
    let mut s = StdStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /cut HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let admin = proxy.admin;
    let label = cutting.to_string();
    let counted = wait_until(Duration::from_secs(5), || {
        let label = label.clone();
        async move {
            metric(
                admin,
                "gateway_upstream_errors_total",
                &[("backend", label.as_str()), ("kind", "truncated")],
            )
            .await
                == 1.0
        }
    })
    .await;
    assert!(counted, "{}", get(admin, "/metrics").await.text());

    // A refused connection: kind "connect". Probes an hour apart, so the killed backend is
    // still in rotation; smooth round robin over two sends one of two requests to it, and the
    // retry takes it to the other.
    let (a, mut b) = (Backend::start("a"), Backend::start("b"));
    let proxy2 = Proxy::start(
        &[&a, &b],
        "[rate_limit]\nenabled = false\n[upstream.health_check]\ninterval_ms = 3600000\n",
    )
    .await;
    let dead = b.addr.to_string();
    b.kill();
    for i in 0..2 {
        assert_eq!(get(proxy2.addr, &format!("/r{i}")).await.status, 200);
    }
    let m = proxy2.metrics().await;
    assert_eq!(
        m.sum(
            "gateway_upstream_errors_total",
            &[("backend", dead.as_str()), ("kind", "connect")]
        ),
        1.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.sum(
            "gateway_upstream_retries_total",
            &[("backend", dead.as_str())]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_requests_closes_the_connection_after_the_last() {
    let backend = Backend::start("a");
    let proxy = Proxy::start(
        &[&backend],
        "[server]\nkeepalive_requests = 3\n[rate_limit]\nenabled = false\n",
    )
    .await;
    let mut conn = Conn::connect(proxy.addr, None).await.unwrap();
    for i in 1..=3 {
        let r = conn.request("GET", &format!("/k{i}"), &[]).await.unwrap();
        assert_eq!(r.status, 200);
        let closes = r
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        assert_eq!(closes, i == 3, "request {i}: {:?}", r.headers);
    }
    assert!(conn.closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_low_a_descriptor_limit_refuses_to_start() {
    let dir = TempDir::new("nofile");
    let w = write_config(
        dir.path(),
        &["127.0.0.1:9".to_owned()],
        "[server]\nmax_connections = 1000\n",
    );
    let mut p = Spawned::start(
        "prlimit",
        &[
            "--nofile=256:256",
            "--",
            PROXY_BIN,
            "-c",
            w.path.to_str().unwrap(),
        ],
        dir.path(),
    );
    let code = p.exit_code(Duration::from_secs(5)).await;
    let out = p.output();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("server.max_connections 1000"), "{out}");
    assert!(out.contains("hard limit is 256"), "{out}");
    assert!(
        try_get(w.admin, "/health").await.is_none(),
        "nothing listens"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_kept_alive_connection_outlives_the_idle_timeout_and_an_idle_one_does_not() {
    let backend = Backend::start("b");
    let proxy = Proxy::start(
        &[&backend],
        "[server]\nkeepalive_timeout_seconds = 2\n[rate_limit]\nexempt = [\"127.0.0.1\"]\n",
    )
    .await;
    // Requests 300 ms apart for 4.5 s, twice the idle timeout: each pushes the deadline on, so
    // the one connection stays (the timer armed for an earlier deadline is armed again).
    let mut client = Client::new(proxy.addr);
    let started = std::time::Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_millis(4500) {
        let r = client.get("/busy").await.expect("request");
        assert_eq!(r.status, 200);
        sent += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(sent >= 10, "{sent} requests");
    assert_eq!(client.connections, 1, "the busy connection was closed");
    assert_eq!(client.stale_retries, 0);
    // Then idle: closed after the timeout (the next request finds it gone and reconnects).
    let closed = wait_until(Duration::from_secs(10), || async {
        proxy
            .metrics()
            .await
            .sum("gateway_downstream_connections", &[])
            == 0.0
    })
    .await;
    assert!(closed, "the idle connection was never closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_at_send_timeout() {
    let backend = Backend::start("a");
    let proxy = Proxy::start(&[&backend], "[server]\nsend_timeout_ms = 1000\n").await;
    // A small receive window, then a 64 MiB answer the client never reads: every buffer on the
    // way fills and the proxy's writes wait on the client.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /bytes/67108864 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let admin = proxy.admin;
    let cut = wait_until(Duration::from_secs(20), || async move {
        metric(admin, "gateway_downstream_send_timeouts_total", &[]).await == 1.0
    })
    .await;
    assert!(
        cut,
        "a client reading nothing still held its connection 20 s later (send_timeout_ms = 1000)"
    );
    // What was buffered before the cut can still be read; then the connection ends, short of
    // the whole body.
    let mut received = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
            received += n;
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection stayed open after the cut");
    assert!(
        received < 64 << 20,
        "the whole body arrived: {received} bytes"
    );
    // The connection has left the count, and the proxy serves on.
    assert!(
        wait_until(Duration::from_secs(10), || async move {
            metric(admin, "gateway_downstream_connections", &[]).await == 0.0
        })
        .await
    );
    assert_eq!(get(proxy.addr, "/after").await.status, 200);
}
