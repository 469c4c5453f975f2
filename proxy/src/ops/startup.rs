//! What is checked and prepared before anything listens: the file descriptor budget, that every
//! listen address can be bound, and running in the background (`-d`).
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
    for addr in settings.tls.iter().flat_map(|t| &t.listen) {
        probe_bind(*addr).map_err(|e| format!("tls.listen {addr}: {}", describe(&e)))?;
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

/// Set in the environment of the background process `-d` starts.
const DAEMON_CHILD: &str = "GATEWAY_DAEMON_CHILD";
/// The last thing the background process writes to the caller: it is up.
const DAEMON_READY: &str = "proxy: running in the background";

/// Whether this process is the background process started by `-d`.
pub fn is_daemon_child() -> bool {
    std::env::var_os(DAEMON_CHILD).is_some()
}

/// `-d`, in the caller: starts this same command again as the background process (its own
/// session, stdin and stdout on `/dev/null`) and waits until it is up or has failed: its
/// start-up errors reach the caller's stderr and exit status, as a foreground start's would.
/// A fork would do without the re-exec, but forking needs `unsafe` here, and a re-exec starts
/// the background process with no inherited threads or locks by construction.
pub fn daemonize_and_wait() -> ! {
    use std::io::Read;
    let run = || -> Result<i32, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
        let mut child = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env(DAEMON_CHILD, "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the background process: {e}"))?;
        let mut said = String::new();
        if let Some(mut err) = child.stderr.take() {
            // Until the background process says it is up (and lets go of stderr) or exits.
            let _ = err.read_to_string(&mut said);
        }
        match said.strip_suffix(&format!("{DAEMON_READY}\n")) {
            Some(before) => {
                eprint!("{before}");
                Ok(0)
            }
            None => {
                eprint!("{said}");
                let status = child
                    .wait()
                    .map_err(|e| format!("background process: {e}"))?;
                Ok(status.code().unwrap_or(1).max(1))
            }
        }
    };
    match run() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("proxy: {e}");
            std::process::exit(1);
        }
    }
}

/// In the background process: leaves the caller's session, so closing its terminal sends no
/// SIGHUP here. Call first thing.
pub fn detach_session() -> Result<(), String> {
    nix::unistd::setsid()
        .map(drop)
        .map_err(|e| format!("cannot start a new session: {e}"))
}

/// In the background process, once it is up: writes `pid_file`, tells the caller, and lets go
/// of the caller's stderr.
pub fn daemon_ready(pid_file: &str) -> Result<(), String> {
    write_pid_file(Path::new(pid_file))?;
    eprintln!("{DAEMON_READY}");
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("/dev/null: {e}"))?;
    nix::unistd::dup2_stderr(&null).map_err(|e| format!("cannot detach stderr: {e}"))
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
