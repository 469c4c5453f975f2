//! `mock-backend`: a small multi-threaded hyper 1.x server to proxy to.
//!
//! Routes (any method):
//! - `/health`        200 `ok`
//! - `/delay/{ms}`    echo, answered after `ms` milliseconds
//! - `/status/{code}` echo with that status code
//! - `/bytes/{n}`     `n` bytes of body
//! - `/stats`         JSON counters (see `routes::Stats`): `connections`, `traffic_connections`,
//!   `requests` (all but `/health`, `/stats` and `/_mock/*`), `in_flight`, `faulted` (requests
//!   answered by the fault), `paths` (per path, `/health` included), and `fault` (as below)
//! - anything else    200 echo: `{"backend", "method", "path", "headers"}`
//!
//! Fault injection (`/health`, `/stats` and `/_mock/*` are never faulted, so health checks keep
//! passing):
//! - `PUT /_mock/fault` with `{"status": 500, "rate": 1.0, "delay_ms": 0}`, every field optional
//!   (defaults as shown; an empty body counts as `{}`; other fields are refused): from now on each
//!   other request, with probability `rate`, waits `delay_ms` and then answers `status` with
//!   `{"backend": NAME, "fault": true, "status": N}` (no body for 1xx, 204 and 304; hyper cannot
//!   send a final 1xx and answers those 500) and the header `x-mock-fault: true`. `status` must
//!   be within 100..=599 (200 with a delay makes a slow but healthy backend), `rate` within
//!   0.0..=1.0, `delay_ms` at most 600000. Answers 200 with the fault now in force; bad JSON or
//!   values get 400 `{"error": ...}` and leave the fault as it was.
//! - `GET /_mock/fault`    200, the fault in force or `null`.
//! - `DELETE /_mock/fault` 200 `null`: no fault any more.
//! - `--fault-status CODE`, `--fault-rate SHARE`, `--fault-delay-ms MS`: start with a fault; any
//!   of them turns it on, with the defaults above for the rest.
//!
//! Faulted requests count in `requests` and `paths` like any other.
//!
//! On SIGTERM or SIGINT it stops accepting, lets in-flight requests finish (bounded), and exits.
#![forbid(unsafe_code)]

mod fault;
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

use fault::Fault;
use routes::{handle, Connection, State, MAX_DELAY_MS};

/// How long in-flight requests may take to finish after SIGTERM.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Parser, Debug)]
#[command(
    version,
    about = "A mock HTTP backend for the gateway's tests and demos",
    after_help = "Fault injection at run time: PUT /_mock/fault with \
{\"status\": 500, \"rate\": 1.0, \"delay_ms\": 0} (every field optional, defaults as shown) \
makes that share of requests answer `status` after `delay_ms`; GET /_mock/fault shows the fault \
in force (or null), DELETE /_mock/fault clears it. /health, /stats and /_mock/* are never faulted."
)]
struct Cli {
    /// Address to listen on (port 0 picks a free port; the real one is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// Name reported in echo bodies (defaults to the listen address).
    #[arg(long)]
    name: Option<String>,
    /// Start with a fault answering this status (100-599) [fault default: 500].
    /// Any --fault-* flag turns the fault on, the others taking their defaults; the fault can
    /// then be changed or cleared with PUT / DELETE /_mock/fault.
    #[arg(long, value_name = "CODE", value_parser = clap::value_parser!(u16).range(100..=599))]
    fault_status: Option<u16>,
    /// Start with a fault hitting this share of requests (0.0-1.0) [fault default: 1.0].
    #[arg(long, value_name = "SHARE", value_parser = fault::parse_rate)]
    fault_rate: Option<f64>,
    /// Start with a fault answering after this many milliseconds (at most 600000) [fault
    /// default: 0].
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(..=MAX_DELAY_MS))]
    fault_delay_ms: Option<u64>,
}

impl Cli {
    /// The fault to start with: none unless a `--fault-*` flag was given.
    fn fault(&self) -> Result<Option<Fault>, String> {
        if self.fault_status.is_none() && self.fault_rate.is_none() && self.fault_delay_ms.is_none()
        {
            return Ok(None);
        }
        Fault::with_defaults(self.fault_status, self.fault_rate, self.fault_delay_ms).map(Some)
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let fault = match cli.fault() {
        Ok(fault) => fault,
        Err(e) => {
            eprintln!("mock-backend: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(cli, fault).await {
        eprintln!("mock-backend: {e}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli, fault: Option<Fault>) -> std::io::Result<()> {
    let listener = TcpListener::bind(cli.listen).await?;
    let local = listener.local_addr()?;
    let name = cli.name.unwrap_or_else(|| local.to_string());
    // Tests read this line to learn the port the OS handed out.
    println!("mock-backend {name} listening on {local}");
    if let Some(fault) = fault {
        println!("mock-backend {name} fault: {}", fault.to_json());
    }

    let state = Arc::new(State::new(name, fault));
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
                state.connection_accepted();
                let state = state.clone();
                let per_conn = Arc::new(Connection::default());
                let service = service_fn(move |req| handle(req, state.clone(), per_conn.clone()));
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
