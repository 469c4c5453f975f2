//! Config validation through the real binary: `-t`, and bad files at start-up.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// Runs `proxy -t -c FILE` on `text`; returns (exit code, stdout + stderr, file path).
fn check(text: &str) -> (i32, String, PathBuf, TempDir) {
    let dir = TempDir::new("config");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(PROXY_BIN)
        .arg("-t")
        .arg("-c")
        .arg(&path)
        .output()
        .expect("run proxy -t");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), all, path, dir)
}

fn assert_rejected(text: &str, key: &str, line: usize) {
    let (code, out, path, _dir) = check(text);
    assert_eq!(code, 1, "expected exit 1 for:\n{text}\noutput: {out}");
    let location = format!("{}:{line}:", path.display());
    assert!(out.contains(&location), "no {location} in: {out}");
    assert!(out.contains(key), "no key {key} in: {out}");
    assert_eq!(out.trim().lines().count(), 1, "one clear line: {out}");
}

const OK_UPSTREAM: &str = "[upstream]\nbackends = [\"127.0.0.1:9001\"]\n";

#[test]
fn shipped_configs_pass() {
    // config/docker.toml names its certificates as the container sees them (/certs, made by
    // compose's certs service): checked here with certificates of a test CA in their place.
    let dir = TempDir::new("shipped");
    let ca = TestCa::new("shipped-config CA");
    ca.write_leaf(dir.path(), "localhost", &["localhost"]);
    let docker = std::fs::read_to_string(repo_file("config/docker.toml"))
        .unwrap()
        .replace("/certs/", &format!("{}/", dir.path().display()));
    assert!(
        docker.contains("[tls]"),
        "config/docker.toml has no [tls] any more"
    );
    let docker_path = dir.path().join("docker.toml");
    std::fs::write(&docker_path, docker).unwrap();
    for (rel, path) in [
        ("config/proxy.toml", repo_file("config/proxy.toml")),
        ("config/docker.toml", docker_path),
    ] {
        let out = Command::new(PROXY_BIN)
            .arg("-t")
            .arg("-c")
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{rel}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("configuration OK"), "{text}");
    }
}

#[test]
fn malformed_toml() {
    assert_rejected("[upstream\nbackends = []\n", "", 1);
}

#[test]
fn unknown_key() {
    assert_rejected(&format!("{OK_UPSTREAM}retries = 3\n"), "retries", 3);
    assert_rejected(
        &format!("[server]\nthreads = 2\nworkers = 4\n{OK_UPSTREAM}"),
        "workers",
        3,
    );
}

#[test]
fn empty_backends() {
    assert_rejected(
        "[server]\nthreads = 1\n[upstream]\nbackends = []\n",
        "upstream.backends",
        4,
    );
}

#[test]
fn missing_backends() {
    let (code, out, _, _dir) = check("[server]\nthreads = 1\n");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("upstream"), "{out}");
}

#[test]
fn bad_backend_address() {
    assert_rejected(
        "[upstream]\nbackends = [\"127.0.0.1:9001\", \"no-port\"]\n",
        "upstream.backends",
        2,
    );
    assert_rejected(
        "[upstream]\nbackends = [\"127.0.0.1:99999\"]\n",
        "upstream.backends",
        2,
    );
}

#[test]
fn bad_listen_address() {
    assert_rejected(
        &format!("[server]\nlisten = \"localhost\"\n{OK_UPSTREAM}"),
        "server.listen",
        2,
    );
    assert_rejected(
        &format!("{OK_UPSTREAM}[admin]\nlisten = \"999.0.0.1:1\"\n"),
        "admin.listen",
        4,
    );
}

#[test]
fn zero_timeout() {
    assert_rejected(
        &format!("{OK_UPSTREAM}connect_timeout_ms = 0\n"),
        "upstream.connect_timeout_ms",
        3,
    );
    assert_rejected(
        &format!("{OK_UPSTREAM}[upstream.health_check]\ninterval_ms = 0\n"),
        "upstream.health_check.interval_ms",
        4,
    );
}

#[test]
fn wrong_type() {
    assert_rejected(
        &format!("{OK_UPSTREAM}[rate_limit]\nwindow_seconds = \"60s\"\n"),
        "rate_limit.window_seconds",
        4,
    );
}

#[test]
fn bad_cidr() {
    assert_rejected(
        &format!("{OK_UPSTREAM}[rate_limit]\nexempt = [\"10.0.0.0/40\"]\n"),
        "rate_limit.exempt",
        4,
    );
}

#[test]
fn missing_file_is_named() {
    let out = Command::new(PROXY_BIN)
        .args(["-t", "-c", "/nonexistent/gateway.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/gateway.toml"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_at_start_exits_1_before_listening() {
    let dir = TempDir::new("badstart");
    let path = dir.path().join("proxy.toml");
    let hold = PortHold::new();
    let port = hold.port();
    std::fs::write(
        &path,
        format!("[server]\nlisten = \"127.0.0.1:{port}\"\n[upstream]\nbackends = []\n"),
    )
    .unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(PROXY_BIN)
            .arg("-c")
            .arg(&path)
            .output(),
    )
    .await
    .expect("exits promptly")
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&path.display().to_string()) && err.contains("upstream.backends"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
    // Nothing started: no server or service start-up was logged. (Probing the port after the
    // exit would prove nothing, and another test may be listening on it by then.)
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("Starting service") && !stdout.contains("Server starting"),
        "{stdout}"
    );
}

#[test]
fn log_level_that_is_not_a_level() {
    for bad in ["loud", "verbose", "", "info,proxy=loud"] {
        assert_rejected(
            &format!("{OK_UPSTREAM}[log]\nlevel = \"{bad}\"\n"),
            "log.level",
            4,
        );
    }
    let (code, out, _, _dir) = check(&format!("{OK_UPSTREAM}[log]\nlevel = \"loud\"\n"));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("error, warn, info, debug, trace, off"),
        "{out}"
    );
    let (code, out, _, _dir) = check(&format!(
        "{OK_UPSTREAM}[log]\nlevel = \"WARN,proxy=debug\"\n"
    ));
    assert_eq!(code, 0, "{out}");
}

#[test]
fn framing_header_in_headers_tables() {
    assert_rejected(
        &format!("{OK_UPSTREAM}[headers.request]\nX-Env = \"prod\"\ncontent-length = \"0\"\n"),
        "headers.request",
        3,
    );
    assert_rejected(
        &format!("{OK_UPSTREAM}[headers]\nresponse = {{ Proxy-Connection = \"close\" }}\n"),
        "headers.response",
        4,
    );
    let (_, out, _, _dir) = check(&format!(
        "{OK_UPSTREAM}[headers.response]\nTransfer-Encoding = \"chunked\"\n"
    ));
    assert!(
        out.contains("\"Transfer-Encoding\"") && out.contains("hop-by-hop"),
        "{out}"
    );
}

#[test]
fn duplicate_listen_addresses() {
    assert_rejected(
        &format!("[server]\nlisten = [\"127.0.0.1:8080\", \"127.0.0.1:8080\"]\n{OK_UPSTREAM}"),
        "server.listen",
        2,
    );
    assert_rejected(
        &format!("[server]\nlisten = [\"0.0.0.0:8080\", \"127.0.0.1:8080\"]\n{OK_UPSTREAM}"),
        "server.listen",
        2,
    );
    assert_rejected(
        &format!("{OK_UPSTREAM}[admin]\nlisten = \"127.0.0.1:8080\"\n"),
        "admin.listen",
        4,
    );
    let (_, out, _, _dir) = check(&format!(
        "[server]\nlisten = \"[::]:8080\"\n{OK_UPSTREAM}[admin]\nlisten = \"127.0.0.1:8080\"\n"
    ));
    assert!(
        out.contains("admin.listen") && out.contains("127.0.0.1:8080") && out.contains("[::]:8080"),
        "{out}"
    );
}

#[test]
fn server_connection_keys_out_of_range() {
    for (line, key) in [
        ("header_timeout_ms = 0", "server.header_timeout_ms"),
        ("body_timeout_ms = 3600001", "server.body_timeout_ms"),
        ("max_connections = 0", "server.max_connections"),
        ("max_connections = 1000001", "server.max_connections"),
        ("keepalive_requests = 0", "server.keepalive_requests"),
        ("drain_delay_seconds = 3601", "server.drain_delay_seconds"),
    ] {
        assert_rejected(
            &format!("[server]\nthreads = 2\n{line}\n{OK_UPSTREAM}"),
            key,
            3,
        );
    }
}

#[test]
fn unwritable_log_file_names_key_and_path() {
    // Paths that fail for root too: /proc cannot hold new directories, and a regular file
    // cannot be a directory.
    let scratch = TempDir::new("logfile");
    let regular = scratch.path().join("plain");
    std::fs::write(&regular, "x").unwrap();
    let under_file = regular.join("proxy.log");
    for bad in [PathBuf::from("/proc/nonexistent/proxy.log"), under_file] {
        let text = format!("{OK_UPSTREAM}[log]\nfile = \"{}\"\n", bad.display());
        assert_rejected(&text, "log.file", 4);
        let (_, out, _, _dir) = check(&text);
        assert!(out.contains(&bad.display().to_string()), "{out}");
    }
}
