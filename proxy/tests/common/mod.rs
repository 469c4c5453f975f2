//! Test fixtures: the real `proxy` and `mock-backend` binaries on loopback ports, and a small
//! HTTP/1.1 client that can choose its source address (distinct clients are distinct addresses
//! in 127.0.0.0/8). Children are killed and reaped on drop; readiness is polled, never slept.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::{TcpSocket, TcpStream};

pub const PROXY_BIN: &str = env!("CARGO_BIN_EXE_proxy");

/// The mock backend binary, built by cargo as part of the workspace.
pub fn backend_bin() -> PathBuf {
    let bin = Path::new(PROXY_BIN).with_file_name("mock-backend");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace` before the tests",
        bin.display()
    );
    bin
}

/// A loopback port held out of other tests' way: a socket bound to it with SO_REUSEADDR that
/// never listens. Linux does not hand a port with a bound socket to anyone binding port 0 (mock
/// backends, other tests' holds), yet a listener that sets SO_REUSEADDR itself (Pingora, tokio
/// and std all do) may still bind it while this socket is not listening. Nothing listens on it
/// otherwise, so connecting is refused: it doubles as a backend that is and stays down.
pub struct PortHold {
    pub addr: SocketAddr,
    _socket: TcpSocket,
}

impl PortHold {
    /// Holds a port the OS picks.
    pub fn new() -> Self {
        Self::at("127.0.0.1:0".parse().expect("loopback address")).expect("hold a free port")
    }

    /// Holds `addr` (e.g. a killed backend's, so it can come back on it).
    pub fn at(addr: SocketAddr) -> std::io::Result<Self> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let addr = socket.local_addr()?;
        Ok(PortHold {
            addr,
            _socket: socket,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "gateway-test-{tag}-{}-{n}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `check` every 25 ms until it is true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

// ---------------------------------------------------------------------------------------------
// mock-backend

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

    /// Starts a mock backend on `addr` (e.g. to bring a killed one back on its port).
    pub fn start_at(name: &str, addr: SocketAddr) -> Self {
        let mut child = Command::new(backend_bin())
            .args(["--listen", &addr.to_string(), "--name", name])
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

// ---------------------------------------------------------------------------------------------
// proxy

/// Starts of one proxy tried before giving up; each retry is on new ports.
const START_ATTEMPTS: usize = 3;
/// How long one start may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running proxy with its own config file and log files in a temp dir.
pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    pub log_file: PathBuf,
    pub stdout_file: PathBuf,
    child: Option<Child>,
    pub dir: TempDir,
    /// The listen and admin ports, held for the proxy's whole life (see [`PortHold`]): no other
    /// test is handed them, not even while this proxy restarts on them.
    holds: [PortHold; 2],
}

/// The config every test proxy starts from: frequent health checks, logs in the temp dir.
/// A probe gets far longer than a loaded machine needs, so a slow probe never takes a live
/// backend out of rotation (one failed probe does); a killed backend is refused at once.
pub fn base_config(
    listen: SocketAddr,
    admin: SocketAddr,
    backends: &[String],
    dir: &Path,
) -> toml::Table {
    let text = format!(
        r#"
[server]
listen = "{listen}"
threads = 2
grace_period_seconds = 1
graceful_shutdown_timeout_seconds = 1
upgrade_sock = "{dir}/upgrade.sock"
pid_file = "{dir}/proxy.pid"

[upstream]
backends = {backends:?}
connect_timeout_ms = 500
read_timeout_ms = 5000
max_retries = 2

[upstream.health_check]
path = "/health"
interval_ms = 300
timeout_ms = 2000

[rate_limit]
enabled = true
exempt = []

[headers]
response = {{ "X-Test-Gateway" = "yes" }}

[admin]
listen = "{admin}"

[log]
level = "info"
file = "{dir}/proxy.log"
access_log = true
"#,
        dir = dir.display()
    );
    text.parse().expect("base config parses")
}

/// Deep-merges `overrides` (TOML text) into `base`.
pub fn merge(base: &mut toml::Table, overrides: &str) {
    let over: toml::Table = overrides.parse().expect("override TOML parses");
    merge_tables(base, over);
}

fn merge_tables(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_tables(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

pub fn backend_list(backends: &[&Backend]) -> Vec<String> {
    backends.iter().map(|b| b.addr.to_string()).collect()
}

impl Proxy {
    /// Starts a proxy in front of `backends` with `overrides` merged into the base config and
    /// waits until it answers on both listeners.
    pub async fn start(backends: &[&Backend], overrides: &str) -> Proxy {
        Self::start_with(backend_list(backends), overrides, true).await
    }

    /// As `start`, but with backend addresses given as strings; `wait_ready` = wait for
    /// `/ready` (a healthy backend), else only for `/health`.
    pub async fn start_with(backends: Vec<String>, overrides: &str, wait_ready: bool) -> Proxy {
        let dir = TempDir::new("proxy");
        let holds = [PortHold::new(), PortHold::new()];
        let (addr, admin) = (holds[0].addr, holds[1].addr);
        let mut config = base_config(addr, admin, &backends, dir.path());
        merge(&mut config, overrides);
        let config_path = dir.path().join("proxy.toml");
        std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
        let mut proxy = Proxy {
            addr,
            admin,
            log_file: dir.path().join("proxy.log"),
            stdout_file: dir.path().join("stdout.log"),
            config_path,
            child: None,
            dir,
            holds,
        };
        proxy.launch(None, wait_ready).await;
        proxy
    }

    /// Stops the process and starts it again with `RUST_LOG` set to `filter`.
    pub async fn restart_with_rust_log(&mut self, filter: &str) {
        self.stop();
        self.launch(Some(filter), true).await;
    }

    /// Starts the process and waits until it is up. A start that fails (the process exits, says
    /// a port is in use, or does not come up in time) is retried on new ports, a bounded number
    /// of times: a port can still be taken by a process that binds it by number.
    async fn launch(&mut self, rust_log: Option<&str>, ready: bool) {
        let mut failures = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            if attempt > 1 {
                self.move_to_new_ports();
            }
            let output_from = std::fs::metadata(&self.stdout_file).map_or(0, |m| m.len());
            self.spawn_env(&[], rust_log);
            match self.come_up(ready, output_from).await {
                Ok(()) => return,
                Err(why) => {
                    self.stop();
                    failures.push(format!(
                        "attempt {attempt} (listen {}, admin {}): {why}",
                        self.addr, self.admin
                    ));
                }
            }
        }
        panic!(
            "proxy did not come up:\n{}\noutput:\n{}",
            failures.join("\n"),
            self.output()
        );
    }

    /// Waits until the current process is up, or has clearly failed to come up.
    async fn come_up(&mut self, ready: bool, output_from: u64) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(None)) => {}
                Some(Ok(Some(status))) => return Err(format!("exited early with {status}")),
                Some(Err(e)) => return Err(format!("cannot wait for it: {e}")),
                None => return Err("not running".into()),
            }
            if port_in_use(&self.output_since(output_from)) {
                return Err("a port is in use".into());
            }
            if self.is_up(ready).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("not up within {START_TIMEOUT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// New held ports, written into the config file (listen and admin.listen).
    fn move_to_new_ports(&mut self) {
        self.holds = [PortHold::new(), PortHold::new()];
        self.addr = self.holds[0].addr;
        self.admin = self.holds[1].addr;
        self.rewrite_config(&format!(
            "[server]\nlisten = \"{}\"\n[admin]\nlisten = \"{}\"\n",
            self.addr, self.admin
        ));
    }

    /// SIGKILL and reap the current process, if any.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the binary with this proxy's config and `extra` arguments.
    pub fn spawn(&mut self, extra: &[&str]) {
        self.spawn_env(extra, None);
    }

    fn spawn_env(&mut self, extra: &[&str], rust_log: Option<&str>) {
        let stdout = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stdout_file)
            .unwrap();
        let stderr = stdout.try_clone().unwrap();
        let mut command = Command::new(PROXY_BIN);
        command
            .arg("-c")
            .arg(&self.config_path)
            .args(extra)
            .stdout(stdout)
            .stderr(stderr);
        match rust_log {
            Some(filter) => command.env("RUST_LOG", filter),
            None => command.env_remove("RUST_LOG"),
        };
        let child = command.spawn().expect("spawn proxy");
        self.child = Some(child);
    }

    /// Starts a second process with `-u` that takes the listeners over; returns the old child.
    pub fn spawn_upgrade(&mut self) -> Child {
        let old = self.child.take().expect("a running proxy");
        self.spawn(&["-u"]);
        old
    }

    /// Zero-downtime upgrade: starts a process with `-u`, waits until it listens on the upgrade
    /// socket, sends SIGQUIT to the running one and waits (bounded) for it to hand over, drain
    /// and exit. Returns the old process's exit status (`None`: it did not exit in time).
    pub async fn upgrade(&mut self) -> Option<ExitStatus> {
        let sock = self.dir.path().join("upgrade.sock");
        let _ = std::fs::remove_file(&sock);
        let mut old = self.spawn_upgrade();
        let waiting = wait_until(Duration::from_secs(10), || {
            let sock = sock.clone();
            async move { sock.exists() }
        })
        .await;
        assert!(
            waiting,
            "new process never opened the upgrade socket:\n{}",
            self.output()
        );
        send_signal(old.id(), "QUIT");
        // The hand-over window is 5 s, then the drain.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = old.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = old.kill();
                let _ = old.wait();
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Up: this process listens on both ports itself (not some other process that got there
    /// first), the admin answers `/ready` (or `/health`) with 200 and the proxy port accepts.
    async fn is_up(&self, ready: bool) -> bool {
        let Some(pid) = self.child.as_ref().map(Child::id) else {
            return false;
        };
        if !listens_on(pid, &[self.addr.port(), self.admin.port()]) {
            return false;
        }
        let path = if ready { "/ready" } else { "/health" };
        try_get(self.admin, path)
            .await
            .is_some_and(|r| r.status == 200)
            && TcpStream::connect(self.addr).await.is_ok()
    }

    /// Polls (bounded) until the running process is up; see `is_up`.
    pub async fn wait_listening(&self, ready: bool) {
        let up = wait_until(START_TIMEOUT, || self.is_up(ready)).await;
        assert!(up, "proxy did not come up; output:\n{}", self.output());
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn signal(&self, signal: &str) {
        send_signal(self.pid(), signal);
    }

    /// Waits (bounded) for the process to exit and returns its status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                self.child = Some(child);
                return None;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Rewrites the config file with `overrides` merged into what it holds now.
    pub fn rewrite_config(&self, overrides: &str) {
        let text = std::fs::read_to_string(&self.config_path).unwrap();
        let mut config: toml::Table = text.parse().unwrap();
        merge(&mut config, overrides);
        std::fs::write(&self.config_path, toml::to_string(&config).unwrap()).unwrap();
    }

    /// Everything the process printed (stdout and stderr).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.stdout_file).unwrap_or_default()
    }

    /// What was printed from byte `from` of the output on.
    fn output_since(&self, from: u64) -> String {
        let bytes = std::fs::read(&self.stdout_file).unwrap_or_default();
        let from = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
        String::from_utf8_lossy(&bytes[from..]).into_owned()
    }

    /// The `log.file` contents.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    pub async fn metrics(&self) -> Metrics {
        let r = get(self.admin, "/metrics").await;
        assert_eq!(r.status, 200);
        Metrics::parse(&r.text())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether output says a listen or admin port was taken: Pingora logs "... is in use, will try
/// again" and keeps trying; a failed bind reports "address in use" / "Address already in use".
fn port_in_use(output: &str) -> bool {
    let output = output.to_ascii_lowercase();
    ["is in use", "address in use", "already in use"]
        .iter()
        .any(|m| output.contains(m))
}

/// Whether process `pid` has TCP sockets listening on every one of `ports` (Linux: its socket
/// inodes in /proc/PID/fd, matched against /proc/PID/net/tcp*). Without /proc, assumed true.
fn listens_on(pid: u32, ports: &[u16]) -> bool {
    if !Path::new("/proc/self/net/tcp").exists() {
        return true;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let inodes: std::collections::HashSet<String> = fds
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_str()?;
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let mut listening = std::collections::HashSet::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 9 && fields[3] == "0A" && inodes.contains(fields[9]) {
                if let Some(port) = fields[1]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                {
                    listening.insert(port);
                }
            }
        }
    }
    ports.iter().all(|p| listening.contains(p))
}

// ---------------------------------------------------------------------------------------------
// metrics text

/// Label pairs of one sample.
pub type Labels = Vec<(String, String)>;

/// Samples of a Prometheus text scrape: (name, labels, value).
pub struct Metrics {
    pub text: String,
    pub samples: Vec<(String, Labels, f64)>,
}

impl Metrics {
    pub fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let value: f64 = value.parse().expect("sample value");
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, parse_labels(rest.trim_end_matches('}'))),
                None => (series, Vec::new()),
            };
            samples.push((name.to_owned(), labels, value));
        }
        Metrics {
            text: text.to_owned(),
            samples,
        }
    }

    /// Sum of `name` over samples whose labels include every pair in `filter`.
    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, labels, _)| {
                n == name
                    && filter
                        .iter()
                        .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    /// Every sample of `name`.
    pub fn series(&self, name: &str) -> Vec<(Labels, f64)> {
        self.samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, l, v)| (l.clone(), *v))
            .collect()
    }
}

fn parse_labels(s: &str) -> Labels {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some((k, after)) = rest.split_once("=\"") {
        let end = after.find('"').expect("closing quote");
        out.push((
            k.trim_start_matches(',').to_owned(),
            after[..end].to_owned(),
        ));
        rest = &after[end + 1..];
    }
    out
}

// ---------------------------------------------------------------------------------------------
// HTTP client

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// One HTTP/1.1 connection, optionally from a chosen source address.
pub struct Conn {
    stream: AsyncBufReader<TcpStream>,
    pub closed: bool,
}

impl Conn {
    pub async fn connect(to: SocketAddr, from: Option<IpAddr>) -> std::io::Result<Conn> {
        let socket = TcpSocket::new_v4()?;
        if let Some(ip) = from {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = socket.connect(to).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream: AsyncBufReader::new(stream),
            closed: false,
        })
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<Response> {
        self.send_body(method, path, headers, b"").await
    }

    /// A request with `body` after the header (the caller gives its `Content-Length`).
    pub async fn send_body(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        // `Host: gateway.test` unless the caller names its own.
        let own_host = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host"));
        let mut req = format!("{method} {path} HTTP/1.1\r\n");
        if !own_host {
            req.push_str("Host: gateway.test\r\n");
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let mut wire = req.into_bytes();
        wire.extend_from_slice(body);
        let io = async {
            if let Err(e) = self.stream.get_mut().write_all(&wire).await {
                return Err(not_answered(e.to_string()));
            }
            read_response(&mut self.stream, method == "HEAD").await
        };
        let resp = tokio::time::timeout(Duration::from_secs(20), io)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "response timeout"))??;
        if resp.closes() {
            self.closed = true;
        }
        Ok(resp)
    }
}

async fn read_response(
    stream: &mut AsyncBufReader<TcpStream>,
    head_only: bool,
) -> std::io::Result<Response> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let mut line = String::new();
    match stream.read_line(&mut line).await {
        Ok(0) => return Err(not_answered("connection closed before a response".into())),
        Err(e) => return Err(not_answered(e.to_string())),
        Ok(_) => {}
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(&format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        stream.read_line(&mut line).await?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').ok_or_else(|| bad("bad header"))?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let resp = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let mut body = Vec::new();
    if head_only || status == 204 || status == 304 {
        // no body
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len.parse().map_err(|_| bad("bad content-length"))?;
        body.resize(len, 0);
        stream.read_exact(&mut body).await?;
    } else if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            line.clear();
            stream.read_line(&mut line).await?;
            let size = usize::from_str_radix(line.trim(), 16).map_err(|_| bad("bad chunk"))?;
            let mut chunk = vec![0; size + 2];
            stream.read_exact(&mut chunk).await?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        stream.read_to_end(&mut body).await?;
    }
    Ok(Response { body, ..resp })
}

/// A keep-alive client that reconnects when the server closed the connection.
pub struct Client {
    pub to: SocketAddr,
    pub from: Option<IpAddr>,
    conn: Option<Conn>,
    /// TCP connections opened so far.
    pub connections: usize,
    /// Requests re-sent because an idle kept-alive connection had been closed.
    pub stale_retries: usize,
}

/// The connection failed before any byte of a response arrived.
fn not_answered(why: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionAborted, why)
}

fn closed_before_answer(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::ConnectionAborted
}

impl Client {
    pub fn new(to: SocketAddr) -> Self {
        Self::from_addr(to, None)
    }
    pub fn from_addr(to: SocketAddr, from: Option<IpAddr>) -> Self {
        Client {
            to,
            from,
            conn: None,
            connections: 0,
            stale_retries: 0,
        }
    }

    pub async fn get(&mut self, path: &str) -> std::io::Result<Response> {
        self.request("GET", path, &[]).await
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<Response> {
        let reusing = self.conn.as_ref().is_some_and(|c| !c.closed);
        let result = self.request_once(method, path, headers).await;
        // Like browsers, curl and hyper: a kept-alive connection the server closed while idle
        // (before answering anything) is retried once on a fresh connection.
        match result {
            Err(e) if reusing && closed_before_answer(&e) => {
                self.stale_retries += 1;
                self.request_once(method, path, headers).await
            }
            other => other,
        }
    }

    async fn request_once(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<Response> {
        if self.conn.as_ref().is_none_or(|c| c.closed) {
            self.conn = Some(Conn::connect(self.to, self.from).await?);
            self.connections += 1;
        }
        let conn = self.conn.as_mut().expect("connected");
        let result = conn.request(method, path, headers).await;
        if result.is_err() {
            self.conn = None;
        }
        result
    }
}

/// `PUT path` with a JSON body on a fresh connection (the mock backend's `/_mock/fault`).
pub async fn put_json(to: SocketAddr, path: &str, json: &str) -> Response {
    let len = json.len().to_string();
    let mut conn = Conn::connect(to, None)
        .await
        .unwrap_or_else(|e| panic!("connect to {to}: {e}"));
    conn.send_body(
        "PUT",
        path,
        &[
            ("Content-Type", "application/json"),
            ("Content-Length", &len),
            ("Connection", "close"),
        ],
        json.as_bytes(),
    )
    .await
    .unwrap_or_else(|e| panic!("PUT {path} via {to}: {e}"))
}

/// One request on a fresh connection; `None` when it could not be made.
pub async fn try_get(to: SocketAddr, path: &str) -> Option<Response> {
    let mut conn = Conn::connect(to, None).await.ok()?;
    conn.request("GET", path, &[("Connection", "close")])
        .await
        .ok()
}

/// One request on a fresh connection; panics when it cannot be made.
pub async fn get(to: SocketAddr, path: &str) -> Response {
    get_with(to, None, path, &[]).await
}

pub async fn get_with(
    to: SocketAddr,
    from: Option<IpAddr>,
    path: &str,
    headers: &[(&str, &str)],
) -> Response {
    let mut conn = Conn::connect(to, from)
        .await
        .unwrap_or_else(|e| panic!("connect to {to}: {e}"));
    conn.request("GET", path, headers)
        .await
        .unwrap_or_else(|e| panic!("GET {path} via {to}: {e}"))
}

/// Outcome counts of a load run.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub ok: usize,
    pub non_2xx: Vec<u16>,
    pub errors: Vec<String>,
    pub by_upstream: std::collections::BTreeMap<String, usize>,
    /// Idle kept-alive connections found closed and retried (as any HTTP client does).
    pub stale_retries: usize,
}

impl Tally {
    pub fn total(&self) -> usize {
        self.ok + self.non_2xx.len() + self.errors.len()
    }
    pub fn add(&mut self, other: Tally) {
        self.ok += other.ok;
        self.non_2xx.extend(other.non_2xx);
        self.errors.extend(other.errors);
        self.stale_retries += other.stale_retries;
        for (k, v) in other.by_upstream {
            *self.by_upstream.entry(k).or_default() += v;
        }
    }
}

/// `concurrency` keep-alive clients send `total` GETs of `path` between them, stopping early
/// when `stop` says so. Bounded by `total` and a 120 s deadline.
pub async fn load(
    to: SocketAddr,
    path: &'static str,
    total: usize,
    concurrency: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Tally {
    let next = std::sync::Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let next = next.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = Client::new(to);
            let mut tally = Tally::default();
            while next.fetch_add(1, Ordering::Relaxed) < total
                && Instant::now() < deadline
                && !stop.load(Ordering::Relaxed)
            {
                match client.get(path).await {
                    Ok(r) if (200..300).contains(&r.status) => {
                        tally.ok += 1;
                        let up = r.header("x-upstream").unwrap_or("-").to_owned();
                        *tally.by_upstream.entry(up).or_default() += 1;
                    }
                    Ok(r) => tally.non_2xx.push(r.status),
                    Err(e) => tally.errors.push(e.to_string()),
                }
            }
            tally.stale_retries = client.stale_retries;
            tally
        }));
    }
    let mut tally = Tally::default();
    for t in tasks {
        tally.add(t.await.expect("load task"));
    }
    tally
}
