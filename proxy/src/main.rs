//! `proxy`: an HTTP reverse proxy / API gateway on Pingora. This file only wires things together.
#![forbid(unsafe_code)]

mod access_log;
mod admin;
mod balance;
mod cli;
mod client_ip;
mod config;
mod config_locate;
mod context;
mod gateway;
mod header_edit;
mod headers;
mod lifecycle;
mod logging;
mod metrics;
mod panic_guard;
mod rate_limit;
mod reload;
mod responses;
mod server;
mod state;
mod upstream;

use std::sync::{Arc, Mutex};

use clap::Parser;
use pingora::server::RunArgs;

/// mimalloc: markedly fewer instructions per allocation than glibc's malloc on the request path
/// (Pingora allocates per header); see README "Performance".
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = cli::Cli::parse();
    let settings = match config::load_config(&cli.config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("proxy: configuration error: {e}");
            std::process::exit(1);
        }
    };
    if cli.test {
        println!("{}: configuration OK", cli.config.display());
        return;
    }
    let (guards, access_log) = match logging::init(&settings.log) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("proxy: cannot set up logging: {e}");
            std::process::exit(1);
        }
    };
    let listen: Vec<String> = settings
        .server
        .listen
        .iter()
        .map(|a| a.to_string())
        .collect();
    let admin = settings.admin.listen;
    let guards = Arc::new(Mutex::new(Some(guards)));
    let run = server::RunOptions {
        upgrade: cli.upgrade,
        daemon: cli.daemon,
        log_guards: guards.clone(),
        access_log: access_log.clone(),
    };
    let server = match server::build(settings, &cli.config, run) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            drop(guards);
            std::process::exit(1);
        }
    };
    tracing::info!(listen = ?listen, admin = %admin, config = %cli.config.display(), "proxy starting");
    server.run(RunArgs::default());
    tracing::info!("proxy stopped");
    access_log.flush();
    drop(guards);
}
