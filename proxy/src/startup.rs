//! What is checked and prepared before anything listens: the file descriptor budget, that every
//! listen address can be bound, and detaching into the background (`-d`).
//!
//! Each failure is one line naming the key, so the process exits 1 before it has served or
//! reported anything (Pingora alone retries a busy port for 30 s while the rest runs, then
//! panics in a service thread and the process lives on).

use std::net::{SocketAddr, TcpListener};
use std::path::Path;

use nix::sys::resource::{getrlimit, setrlimit, Resource};

use crate::config::Settings;

/// Descriptors the process needs beyond connections: listeners, admin connections, log files,
/// health checks, DNS, the upgrade socket.
const RESERVED_FDS: u64 = 64;

/// Descriptors for `settings`: `(required, wanted)`. Required: each downstream connection, the
/// idle upstream pool and the reserve. Wanted: also one upstream connection per in-flight
/// request (at most one per HTTP/1 downstream connection), so a full house never runs out.
pub fn fds_needed(settings: &Settings) -> (u64, u64) {
    let connections = settings.server.max_connections.get() as u64;
    let pool = (settings.upstream.keepalive_pool_size * settings.server.threads) as u64;
    let required = connections + pool + RESERVED_FDS;
    (required, required + connections)
}

/// Raises the soft `RLIMIT_NOFILE` toward what `settings` want (never above the hard limit).
/// `Err` when even the required number cannot fit; `Ok(Some(warning))` when only the required
/// number fits.
pub fn raise_fd_limit(settings: &Settings) -> Result<Option<String>, String> {
    let (required, wanted) = fds_needed(settings);
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(|e| format!("cannot read the file descriptor limit: {e}"))?;
    if hard < required {
        let fits = hard.saturating_sub(required - settings.server.max_connections.get() as u64);
        return Err(format!(
            "server.max_connections {}: needs {required} file descriptors (the connections, the \
             upstream pool and {RESERVED_FDS} reserved) but the hard limit is {hard}; raise it \
             (ulimit -Hn, systemd LimitNOFILE=) or set server.max_connections to at most {fits}",
            settings.server.max_connections
        ));
    }
    let target = wanted.min(hard);
    if soft < target {
        setrlimit(Resource::RLIMIT_NOFILE, target, hard)
            .map_err(|e| format!("cannot raise the file descriptor limit to {target}: {e}"))?;
    }
    Ok((target < wanted).then(|| {
        format!(
            "file descriptor limit {target} is below {wanted} (2 per connection at \
             server.max_connections {}); under full load upstream connections may fail",
            settings.server.max_connections
        )
    }))
}

/// Checks that every proxy listen address can be bound now. Pingora binds them itself when it
/// starts; this catches a busy port or an address this host does not have first.
pub fn check_listen(settings: &Settings) -> Result<(), String> {
    for addr in &settings.server.listen {
        probe_bind(*addr).map_err(|e| format!("server.listen {addr}: {}", describe(&e)))?;
    }
    Ok(())
}

/// Binds and releases `addr` (with `SO_REUSEADDR`, as Pingora binds it).
fn probe_bind(addr: SocketAddr) -> std::io::Result<()> {
    TcpListener::bind(addr).map(drop)
}

/// A bind error in the words an operator searches for.
pub fn describe(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => "address in use".into(),
        std::io::ErrorKind::AddrNotAvailable => "address not available on this host".into(),
        std::io::ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)".into()
        }
        _ => e.to_string(),
    }
}

/// Detaches into the background: forks (the caller gets its exit status 0 at once), starts a
/// new session, and points stdin/stdout/stderr at /dev/null so the caller's terminal or pipe is
/// not held open. Must run while the process has a single thread, before logging starts its
/// writer threads; the working directory is kept so relative paths in the config still hold.
pub fn daemonize(pid_file: &str) -> Result<(), String> {
    nix::unistd::daemon(true, false).map_err(|e| format!("cannot daemonize: {e}"))?;
    write_pid_file(Path::new(pid_file))
}

fn write_pid_file(path: &Path) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("server.pid_file {}: {e}", path.display()))?;
    }
    std::fs::write(path, format!("{}\n", std::process::id()))
        .map_err(|e| format!("server.pid_file {}: {e}", path.display()))
}

/// Ends the process when Pingora fails to build a listener after start (a port taken between
/// the check and Pingora's bind): Pingora panics in the service thread and the process would
/// otherwise live on without its listener.
pub fn exit_on_listener_failure() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        if message.contains("Failed to build listeners") {
            eprintln!("proxy: server.listen: cannot bind a listen address; exiting");
            std::process::exit(1);
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_config;

    #[test]
    fn busy_and_foreign_addresses_are_named() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[upstream]\nbackends = [\"127.0.0.1:9\"]\n"
        );
        let settings = parse_config(&text, "t.toml").unwrap();
        let e = check_listen(&settings).unwrap_err();
        assert_eq!(e, format!("server.listen 127.0.0.1:{port}: address in use"));

        let text =
            "[server]\nlisten = \"192.0.2.1:8080\"\n[upstream]\nbackends = [\"127.0.0.1:9\"]\n";
        let e = check_listen(&parse_config(text, "t.toml").unwrap()).unwrap_err();
        assert!(e.contains("192.0.2.1:8080: address not available"), "{e}");
    }

    #[test]
    fn fd_budget_counts_both_sides_and_the_pool() {
        let text = "[server]\nmax_connections = 300\nthreads = 2\n[upstream]\nbackends = [\"127.0.0.1:9\"]\nkeepalive_pool_size = 64\n";
        let settings = parse_config(text, "t.toml").unwrap();
        assert_eq!(fds_needed(&settings), (300 + 128 + 64, 600 + 128 + 64));
    }
}
