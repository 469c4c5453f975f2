//! The binaries under test, signals, and processes a test starts and watches itself.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

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

pub(super) fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// A process a test starts itself, with no readiness wait (under a wrapper, expected to fail, or
/// watched from its first moment): stdout and stderr in `DIR/spawned.out`, stdin /dev/null;
/// killed and reaped on drop.
pub struct Spawned {
    child: Option<Child>,
    output: PathBuf,
}

impl Spawned {
    pub fn start(program: &str, args: &[&str], dir: &Path) -> Spawned {
        let output = dir.join("spawned.out");
        let out = std::fs::File::create(&output).unwrap();
        let child = Command::new(program)
            .args(args)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .env_remove("RUST_LOG")
            .spawn()
            .expect("spawn");
        Spawned {
            child: Some(child),
            output,
        }
    }

    /// The process id; panics once it has been reaped.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Everything the process printed (stdout and stderr).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    /// The exit status if the process has exited (it is reaped then); `None` while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// Waits (bounded) for the exit code.
    pub async fn exit_code(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return status.code();
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
