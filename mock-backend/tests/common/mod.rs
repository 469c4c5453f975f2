//! Fixtures shared by the `mock-backend` integration tests: the real binary on a loopback port
//! the OS picks, killed and reaped on drop, and the HTTP/1.1 framing of the tests' small
//! clients (the plain one in `fault.rs`, the TLS one in `tls.rs`; only the I/O differs).
// Each test binary uses a subset of these.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Bound on anything a test waits for (start-up, a handshake, one response, an exit).
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Polls `done` every 10 ms until it holds or `TIMEOUT` passes; whether it held.
pub fn poll_until(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running `mock-backend`, killed when dropped. Its stdout and stderr are read to their end
/// by threads (so the pipes never fill) and kept for the test to look at.
pub struct Backend {
    child: Child,
    pub addr: SocketAddr,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Backend {
    /// Starts `mock-backend --name name` on 127.0.0.1 with `extra_args`, and waits (bounded)
    /// for the port the OS handed out: the first "listening on" line, printed once bound.
    pub fn start(name: &str, extra_args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mock-backend"))
            .args(["--listen", "127.0.0.1:0", "--name", name])
            .args(extra_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mock-backend");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let out = BufReader::new(child.stdout.take().expect("stdout piped"));
        let lines = stdout.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in out.lines() {
                let Ok(line) = line else { break };
                let addr = line
                    .split_once(" listening on ")
                    .map(|(_, a)| a.trim().to_owned());
                lines.lock().unwrap().push(line);
                if let Some(addr) = addr {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
            }
        });
        let err = BufReader::new(child.stderr.take().expect("stderr piped"));
        let lines = stderr.clone();
        std::thread::spawn(move || {
            for line in err.lines() {
                let Ok(line) = line else { break };
                eprintln!("[mock-backend] {line}");
                lines.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(TIMEOUT) {
            Ok(addr) => addr.parse().expect("listen address"),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("mock-backend did not report its address: {e}");
            }
        };
        Self {
            child,
            addr,
            stdout,
            stderr,
        }
    }

    /// Every stdout line so far.
    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits (bounded) for a stdout line equal to `line`.
    pub fn wait_stdout(&self, line: &str) -> bool {
        poll_until(|| self.stdout.lock().unwrap().iter().any(|l| l == line))
    }

    /// Waits (bounded) for a stderr line containing `needle`.
    pub fn wait_stderr(&self, needle: &str) -> bool {
        poll_until(|| {
            self.stderr
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(needle))
        })
    }

    /// SIGTERM, then waits (bounded) for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let mut exit = None;
        let exited = poll_until(|| {
            exit = self.child.try_wait().expect("wait");
            exit.is_some()
        });
        assert!(exited, "mock-backend did not exit after SIGTERM");
        exit.unwrap()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `mock-backend --listen 127.0.0.1:0` with `args`, expected to refuse to start: its exit
/// status and output, or `None` when it did not exit within `TIMEOUT` (it is killed then).
pub fn run_expecting_exit(args: &[&str]) -> Option<Output> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mock-backend"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mock-backend");
    if !poll_until(|| child.try_wait().expect("wait").is_some()) {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    }
    Some(child.wait_with_output().expect("collect output"))
}

pub use test_support::Response;

/// The bytes of an HTTP/1.1 request with `Host: host`, and a JSON `body` when there is one.
pub fn request_bytes(method: &str, path: &str, host: &str, body: Option<&str>) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    if let Some(body) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    req.into_bytes()
}

/// Takes the response to a `method` request off the front of `buf`, or `None` while `buf` does
/// not hold all of it yet. Responses are framed by Content-Length, which is all `mock-backend`
/// sends (HEAD, 204 and 304 answers have no body).
pub fn take_response(buf: &mut Vec<u8>, method: &str) -> Option<Response> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..head_end]).expect("UTF-8 head");
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let no_body = method == "HEAD" || status == 204 || status == 304;
    let len = if no_body {
        0
    } else {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_else(|| panic!("no Content-Length in {head:?}"))
    };
    let body_start = head_end + 4;
    if buf.len() < body_start + len {
        return None;
    }
    let body = buf[body_start..body_start + len].to_vec();
    buf.drain(..body_start + len);
    Some(Response {
        status,
        headers,
        body,
    })
}
