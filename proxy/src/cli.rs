//! Command line: `proxy [-c FILE]`, `proxy -t [-c FILE]`, `proxy -u [-c FILE]`.

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "proxy",
    version,
    about = "HTTP reverse proxy / API gateway on Pingora"
)]
pub struct Cli {
    /// Config file (TOML).
    #[arg(short = 'c', long = "config", default_value = "config/proxy.toml")]
    pub config: PathBuf,
    /// Validate the config file, print what is wrong or "configuration OK", exit 1 or 0.
    #[arg(short = 't', long = "test")]
    pub test: bool,
    /// Start as the upgrade of a running instance: take its listening sockets over
    /// `server.upgrade_sock` (then send SIGQUIT to the old process).
    #[arg(short = 'u', long = "upgrade")]
    pub upgrade: bool,
    /// Run in the background (writes `server.pid_file`).
    #[arg(short = 'd', long = "daemon")]
    pub daemon: bool,
}
