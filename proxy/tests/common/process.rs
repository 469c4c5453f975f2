//! The binaries under test, and signals to processes.

use std::path::{Path, PathBuf};
use std::process::Command;

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
