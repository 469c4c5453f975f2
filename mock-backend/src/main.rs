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
//! - `PUT /_mock/fault` with `{"status": 500, "rate": 1.0, "delay_ms": 0, "reset": false}` and
//!   optionally `"seed": N`, every field optional (defaults as shown; an empty body counts as
//!   `{}`; other fields are refused):
//!   from now on each other request, with probability `rate`, waits `delay_ms` and then answers
//!   `status` with `{"backend": NAME, "fault": true, "status": N}` (no body for 1xx, 204 and 304;
//!   hyper cannot send a final 1xx and answers those 500) and the header `x-mock-fault: true`.
//!   `status` must be within 100..=599 (200 with a delay makes a slow but healthy backend),
//!   `rate` within 0.0..=1.0, `delay_ms` at most 600000, `reset` a bool, `seed` an unsigned
//!   integer: with it, which requests are hit is the same sequence each time the fault is set
//!   (a replayable pattern for tests and demos; without it, random). Answers 200 with the
//!   fault now in force; bad JSON or values get 400 `{"error": ...}` and leave the fault as it
//!   was.
//! - With `"reset": true` a faulted request gets no answer at all: after `delay_ms` its
//!   connection is closed with a TCP RST (SO_LINGER 0), so the client reads "connection reset"
//!   (over TLS too, without a TLS close_notify), as from a crashed backend. `status` is then
//!   unused (still validated and shown). Other requests pipelined on that connection are lost
//!   with it.
//! - `GET /_mock/fault`    200, the fault in force or `null`.
//! - `DELETE /_mock/fault` 200 `null`: no fault any more.
//! - `--fault-status CODE`, `--fault-rate SHARE`, `--fault-delay-ms MS`, `--fault-reset`,
//!   `--fault-seed N`: start with a fault; any of them turns it on, with the defaults above for
//!   the rest.
//!
//! Faulted requests, resets included, count in `requests`, `faulted` and `paths` like any other.
//!
//! HTTPS: `--tls-cert CHAIN.pem --tls-key KEY.pem` (both or neither) serves HTTP/1.1 over TLS
//! (1.2 or 1.3, ALPN `http/1.1`) with everything above unchanged. The key may be PKCS#8, PKCS#1
//! (RSA) or SEC1 (EC) PEM and must belong to the chain's first certificate; a bad file or a
//! key that does not match exits 2 before listening. A failed or stalled handshake (bounded by
//! `tls::HANDSHAKE_TIMEOUT`) is logged on stderr and closes that connection only. `connections`
//! on `/stats` counts TCP connections, so a failed handshake counts there too.
//!
//! Stdout: the first line is always `mock-backend NAME listening on ADDR` (scripts and tests
//! read the address from it; with TLS it is unchanged), followed with TLS by
//! `mock-backend NAME tls: HTTPS with certificate PATH`.
//!
//! On SIGTERM or SIGINT it stops accepting, lets in-flight requests finish (bounded), and exits.
#![forbid(unsafe_code)]

mod fault;
mod routes;
mod tls;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use clap::Parser;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio_rustls::TlsAcceptor;

use fault::Fault;
use routes::{handle, Connection, State, MAX_DELAY_MS};

/// How long in-flight requests may take to finish after SIGTERM.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Parser, Debug)]
#[command(
    version,
    about = "A mock HTTP backend for the gateway's tests and demos",
    after_help = "Fault injection at run time: PUT /_mock/fault with \
{\"status\": 500, \"rate\": 1.0, \"delay_ms\": 0, \"reset\": false} (every field optional, \
defaults as shown) makes that share of requests answer `status` after `delay_ms`; with \
\"reset\": true they get no answer but a connection reset instead. GET /_mock/fault shows the \
fault in force (or null), DELETE /_mock/fault clears it. /health, /stats and /_mock/* are never faulted."
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
    /// Start with a fault that answers nothing and resets the connection (TCP RST) instead; the
    /// status is then unused.
    #[arg(long)]
    fault_reset: bool,
    /// Start with a fault whose hits follow the fixed sequence of this seed (replayable) rather
    /// than a random one.
    #[arg(long, value_name = "N")]
    fault_seed: Option<u64>,
    /// Serve HTTPS with this PEM certificate chain (leaf first). Needs --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1). Needs --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl Cli {
    /// The fault to start with: none unless a `--fault-*` flag was given.
    fn fault(&self) -> Result<Option<Fault>, String> {
        if self.fault_status.is_none()
            && self.fault_rate.is_none()
            && self.fault_delay_ms.is_none()
            && !self.fault_reset
            && self.fault_seed.is_none()
        {
            return Ok(None);
        }
        Fault::with_defaults(
            self.fault_status,
            self.fault_rate,
            self.fault_delay_ms,
            Some(self.fault_reset),
        )
        .map(|fault| Some(fault.with_seed(self.fault_seed)))
    }

    /// The TLS acceptor for `--tls-cert`/`--tls-key`: none without them (clap has already
    /// refused one without the other).
    fn tls(&self) -> Result<Option<TlsAcceptor>, String> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => tls::acceptor(cert, key).map(Some),
            _ => Ok(None),
        }
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let (fault, tls) = match cli.fault().and_then(|fault| Ok((fault, cli.tls()?))) {
        Ok(setup) => setup,
        Err(e) => {
            eprintln!("mock-backend: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(cli, fault, tls).await {
        eprintln!("mock-backend: {e}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli, fault: Option<Fault>, acceptor: Option<TlsAcceptor>) -> std::io::Result<()> {
    let listener = TcpListener::bind(cli.listen).await?;
    let local = listener.local_addr()?;
    let name = cli.name.unwrap_or_else(|| local.to_string());
    // Tests read this line to learn the port the OS handed out.
    println!("mock-backend {name} listening on {local}");
    if let (Some(cert), Some(_)) = (&cli.tls_cert, &acceptor) {
        println!(
            "mock-backend {name} tls: HTTPS with certificate {}",
            cert.display()
        );
    }
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
                let (stream, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        eprintln!("mock-backend: accept failed: {e}");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                state.connection_accepted();
                // Watched from the accept on, so a drain also waits for (bounded) handshakes.
                let watcher = graceful.watcher();
                let state = state.clone();
                match &acceptor {
                    None => {
                        tokio::spawn(serve(stream, state, watcher));
                    }
                    Some(acceptor) => {
                        let handshake = acceptor.accept(stream);
                        tokio::spawn(async move {
                            match tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, handshake).await {
                                Ok(Ok(stream)) => serve(stream, state, watcher).await,
                                // Only this connection is lost; the server carries on.
                                Ok(Err(e)) => {
                                    eprintln!("mock-backend: TLS handshake with {peer} failed: {e}");
                                }
                                Err(_) => eprintln!(
                                    "mock-backend: TLS handshake with {peer} timed out after {:?}",
                                    tls::HANDSHAKE_TIMEOUT
                                ),
                            }
                        });
                    }
                }
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

/// Serves HTTP/1.1 keep-alive on one connection (plain TCP or TLS) until it closes or, once a
/// drain starts, its in-flight request is answered. A `reset` fault ends it early, unanswered
/// and with a TCP RST.
async fn serve<I>(io: I, state: Arc<State>, watcher: Watcher)
where
    I: TcpSocket + AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let per_conn = Arc::new(Connection::default());
    let io = ResetOnDrop {
        io,
        conn: per_conn.clone(),
    };
    let service = service_fn(move |req| handle(req, state.clone(), per_conn.clone()));
    let conn = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service);
    // A client that goes away mid-request is normal, and a reset fault fails the connection
    // on purpose; nothing to report.
    let _ = watcher.watch(conn).await;
}

/// The TCP socket under a connection's stream, for the socket option a reset needs.
trait TcpSocket {
    fn tcp(&self) -> &TcpStream;
}

impl TcpSocket for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl TcpSocket for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// A connection's stream that, once a `reset` fault has hit the connection, closes with a TCP
/// RST instead of a FIN: SO_LINGER 0 is set just before the socket is closed, so only faulted
/// connections are aborted (a drain or an idle close stays clean).
struct ResetOnDrop<I: TcpSocket> {
    io: I,
    conn: Arc<Connection>,
}

impl<I: TcpSocket> Drop for ResetOnDrop<I> {
    fn drop(&mut self) {
        if self.conn.reset_requested() {
            // Should this fail, the close is a FIN: still no answer, just not an abort.
            let _ = self.io.tcp().set_zero_linger();
        }
    }
}

impl<I: TcpSocket + AsyncRead + Unpin> AsyncRead for ResetOnDrop<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<I: TcpSocket + AsyncWrite + Unpin> AsyncWrite for ResetOnDrop<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
