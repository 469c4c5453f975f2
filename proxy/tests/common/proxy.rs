//! The `proxy` binary: started on held ports from a generated config, controlled, watched.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::process::send_signal;
use super::{
    backend_list, base_config, get, merge, try_get, wait_until, Backend, Metrics, PortHold,
    TempDir, PROXY_BIN,
};

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

    /// `gateway_backend_up` of the backend labelled `backend` (its address as configured),
    /// from a fresh scrape: 1 while health checks pass, 0 once they have marked it down.
    pub async fn backend_up(&self, backend: &str) -> f64 {
        self.metrics()
            .await
            .sum("gateway_backend_up", &[("backend", backend)])
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
