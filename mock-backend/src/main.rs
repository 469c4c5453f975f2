//! `mock-backend`: a small multi-threaded hyper 1.x server to proxy to.
//!
//! Routes (any method):
//! - `/health`        200 `ok`
//! - `/delay/{ms}`    echo, answered after `ms` milliseconds
//! - `/status/{code}` echo with that status code
//! - `/bytes/{n}`     `n` bytes of body
//! - `/stats`         JSON counters (see `routes::Stats`): `connections`, `traffic_connections`,
//!   `requests` (all but `/health` and `/stats`), `in_flight`, `paths` (per path)
//! - anything else    200 echo: `{"backend", "method", "path", "headers"}`
//!
//! On SIGTERM or SIGINT it stops accepting, lets in-flight requests finish (bounded), and exits.
#![forbid(unsafe_code)]

mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use routes::{handle, Connection, Stats};

/// How long in-flight requests may take to finish after SIGTERM.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Parser, Debug)]
#[command(
    version,
    about = "A mock HTTP backend for the gateway's tests and demos"
)]
struct Cli {
    /// Address to listen on (port 0 picks a free port; the real one is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// Name reported in echo bodies (defaults to the listen address).
    #[arg(long)]
    name: Option<String>,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("mock-backend: {e}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> std::io::Result<()> {
    let listener = TcpListener::bind(cli.listen).await?;
    let local = listener.local_addr()?;
    let name = cli.name.unwrap_or_else(|| local.to_string());
    // Tests read this line to learn the port the OS handed out.
    println!("mock-backend {name} listening on {local}");

    let stats = Arc::new(Stats::new(name));
    let graceful = GracefulShutdown::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;

    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        eprintln!("mock-backend: accept failed: {e}");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                stats.connection_accepted();
                let stats = stats.clone();
                let per_conn = Arc::new(Connection::default());
                let service = service_fn(move |req| handle(req, stats.clone(), per_conn.clone()));
                let conn = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    // A client that goes away mid-request is normal; nothing to report.
                    let _ = conn.await;
                });
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }

    drop(listener);
    println!("mock-backend {local} draining");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        eprintln!("mock-backend: drain timed out after {DRAIN_TIMEOUT:?}");
    }
    println!("mock-backend {local} stopped");
    Ok(())
}
