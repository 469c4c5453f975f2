//! `proxy`: an HTTP reverse proxy / API gateway on Pingora. This file only wires things together.
#![forbid(unsafe_code)]

use proxy::observe::logging;
use proxy::ops::{admin, signals, startup};
use proxy::{app, cli, config};

use std::sync::Arc;

use parking_lot::Mutex;

use clap::Parser;

/// mimalloc: markedly fewer instructions per allocation than glibc's malloc on the request path
/// (Pingora allocates per header); see README "Performance".
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // First, before anything else can take time: a SIGHUP during start-up must not kill us.
    let pending_reload = match signals::PendingReload::install() {
        Ok(p) => p,
        Err(e) => fail(&format!("cannot install the SIGHUP handler: {e}")),
    };
    let daemon_child = startup::is_daemon_child();
    if daemon_child {
        if let Err(e) = startup::detach_session() {
            fail(&e);
        }
    }
    let cli = cli::Cli::parse();
    let (settings, config_warnings) = match config::load_and_check_config(&cli.config) {
        Ok(s) => s,
        Err(e) => fail(&format!("configuration error: {e}")),
    };
    let fd_warning = match startup::raise_fd_limit(&settings) {
        Ok(w) => w,
        Err(e) => fail(&e),
    };
    if cli.test {
        for w in &config_warnings {
            eprintln!("proxy: warning: {}: {w}", cli.config.display());
        }
        println!("{}: configuration OK", cli.config.display());
        return;
    }
    if cli.daemon && !daemon_child {
        // Everything below runs again in the background process; its errors come back here.
        startup::daemonize_and_wait();
    }
    // An upgrade takes the listening sockets over from the running process instead.
    if !cli.upgrade {
        if let Err(e) = startup::check_listen(&settings) {
            fail(&e);
        }
    }
    let admin = settings.admin.listen;
    let admin_listener = match admin::bind(admin, cli.upgrade) {
        Ok(l) => l,
        Err(e) => fail(&format!("admin.listen {admin}: {}", startup::describe(&e))),
    };
    startup::exit_on_listener_failure();
    let (guards, access_log) = match logging::init(&settings.log) {
        Ok(g) => g,
        Err(e) => fail(&format!("cannot set up logging: {e}")),
    };
    if let Some(warning) = fd_warning {
        tracing::warn!("{warning}");
    }
    for w in &config_warnings {
        tracing::warn!(config = %cli.config.display(), "{w}");
    }
    let listen: Vec<String> = settings
        .server
        .listen
        .iter()
        .map(|a| a.to_string())
        .collect();
    let guards = Arc::new(Mutex::new(Some(guards)));
    let run = app::RunOptions {
        upgrade: cli.upgrade,
        admin_listener,
        pending_reload,
        log_guards: guards.clone(),
        access_log: access_log.clone(),
    };
    let pid_file = settings.server.pid_file.clone();
    let (server, run_args) = match app::build(settings, &cli.config, run) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("proxy: cannot start: {e}");
            drop(guards);
            std::process::exit(1);
        }
    };
    tracing::info!(listen = ?listen, admin = %admin, config = %cli.config.display(), "proxy starting");
    if daemon_child {
        if let Err(e) = startup::daemon_ready(&pid_file) {
            tracing::error!(error = %e, "cannot finish daemonizing");
            fail(&e);
        }
    }
    server.run(run_args);
    tracing::info!("proxy stopped");
    access_log.flush();
    drop(guards);
}

/// One line on stderr and exit 1: nothing has started yet.
fn fail(message: &str) -> ! {
    eprintln!("proxy: {message}");
    std::process::exit(1);
}
