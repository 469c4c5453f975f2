//! Backends: the `mock-backend` binary, and an in-test backend that holds requests.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as AsyncBufReader};

use super::process::send_signal;
use super::{backend_bin, get, wait_until, PortHold};

pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    child: Option<Child>,
    /// Taken when the backend is killed: its port stays down and out of other tests' way, and
    /// `start_at` can still bring a backend back on it.
    hold: Option<PortHold>,
}

impl Backend {
    /// Starts a mock backend on a port the OS picks.
    pub fn start(name: &str) -> Self {
        Self::start_at(name, "127.0.0.1:0".parse().unwrap())
    }

    /// Starts three mock backends named `a`, `b` and `c`: the usual set of a balancing test.
    pub fn start_abc() -> (Self, Self, Self) {
        (Self::start("a"), Self::start("b"), Self::start("c"))
    }

    /// Starts a mock backend on `addr` (e.g. to bring a killed one back on its port).
    pub fn start_at(name: &str, addr: SocketAddr) -> Self {
        Self::start_with(name, addr, &[])
    }

    /// Starts a mock backend with `extra` arguments (e.g. `--tls-cert`, `--tls-key`). Its
    /// `stats()` and the like speak plain HTTP, so they are for plain backends only.
    pub fn start_with(name: &str, addr: SocketAddr, extra: &[&str]) -> Self {
        let mut child = Command::new(backend_bin())
            .args(["--listen", &addr.to_string(), "--name", name])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn mock-backend");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = lines
            .next()
            .and_then(|l| l.ok())
            .unwrap_or_else(|| panic!("mock-backend {name} exited before listening"));
        let addr: SocketAddr = first
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from mock-backend: {first}"));
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Backend {
            addr,
            name: name.to_owned(),
            child: Some(child),
            hold: None,
        }
    }

    /// SIGKILL: the backend vanishes mid-flight, as a crashed process would. Its port is held
    /// (see [`PortHold`]) for as long as this value lives.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.hold = PortHold::at(self.addr).ok();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        send_signal(child.id(), "TERM");
        child.wait().ok()
    }

    /// `/stats` of the backend: connections, requests, in flight, requests per path.
    pub async fn stats(&self) -> serde_json::Value {
        get(self.addr, "/stats").await.json()
    }

    /// Requests served so far, health probes and `/stats` calls left out: only what tests sent.
    pub async fn requests(&self) -> u64 {
        self.stats().await["requests"].as_u64().unwrap_or(0)
    }

    /// Requests served so far for exactly `path` (without the query).
    pub async fn path_count(&self, path: &str) -> u64 {
        self.stats().await["paths"][path].as_u64().unwrap_or(0)
    }

    /// Connections that carried a request other than a health probe or `/stats`.
    pub async fn traffic_connections(&self) -> u64 {
        self.stats().await["traffic_connections"]
            .as_u64()
            .unwrap_or(0)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// held backend

/// An in-test backend that answers `/health` at once and holds every other request until
/// `release`: a test that needs requests in flight keeps them there for as long as it checks
/// something, with no delay to outlast and no window to miss.
pub struct HeldBackend {
    pub addr: SocketAddr,
    arrived: std::sync::Arc<AtomicUsize>,
    release: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl HeldBackend {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind held backend");
        let addr = listener.local_addr().expect("local addr");
        let arrived = std::sync::Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let counter = arrived.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counter = counter.clone();
                let mut released = released.clone();
                tokio::spawn(async move {
                    let mut stream = AsyncBufReader::new(stream);
                    loop {
                        // A request head (these GETs have no body).
                        let mut first = String::new();
                        let mut line = String::new();
                        loop {
                            line.clear();
                            match stream.read_line(&mut line).await {
                                Ok(0) | Err(_) => return,
                                Ok(_) => {}
                            }
                            if first.is_empty() {
                                first = line.clone();
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        if !first.starts_with("GET /health ") {
                            counter.fetch_add(1, Ordering::SeqCst);
                            if released.wait_for(|r| *r).await.is_err() {
                                return;
                            }
                        }
                        let answer = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
                        if stream.get_mut().write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        HeldBackend {
            addr,
            arrived,
            release,
            task,
        }
    }

    /// Requests (other than `/health`) that have arrived so far, held or answered.
    pub fn arrived(&self) -> usize {
        self.arrived.load(Ordering::SeqCst)
    }

    /// Polls (bounded) until `n` requests have arrived.
    pub async fn wait_arrived(&self, n: usize) -> bool {
        wait_until(
            Duration::from_secs(10),
            || async move { self.arrived() >= n },
        )
        .await
    }

    /// Answers every held request, and every later one at once.
    pub fn release(&self) {
        let _ = self.release.send(true);
    }
}

impl Drop for HeldBackend {
    fn drop(&mut self) {
        self.release();
        self.task.abort();
    }
}
