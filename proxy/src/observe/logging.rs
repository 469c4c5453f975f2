//! Log setup: `tracing` to stdout and, when `log.file` is set, to that file, both through
//! non-blocking writers. `RUST_LOG` overrides `log.level`. Pingora's own `log` records are
//! bridged in, and only those the filter can pass are even built. The same writers carry the
//! access log ([`AccessLog`]).

use std::path::Path;

use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};
use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, Layer};

use crate::config::LogSettings;
use crate::observe::access_log::AccessLog;

/// Keeps the background writers alive; dropping it flushes them.
pub struct LogGuards(#[allow(dead_code)] Vec<WorkerGuard>);

/// Installs the global subscriber (the only process-wide state: `tracing` requires it) and
/// returns the writers' guards and the access log over the same writers.
pub fn init(settings: &LogSettings) -> std::io::Result<(LogGuards, AccessLog)> {
    let filter = || match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => EnvFilter::new(v),
        // Our health observer logs transitions once; Pingora's own copy is noise.
        _ => EnvFilter::new(format!("{},pingora_load_balancing=error", settings.level)),
    };
    let mut guards = Vec::new();
    let mut sinks: Vec<NonBlocking> = Vec::new();

    let (stdout, guard) = tracing_appender::non_blocking(std::io::stdout());
    guards.push(guard);
    sinks.push(stdout.clone());
    let stdout_layer = fmt::layer().with_writer(stdout).with_filter(filter());

    let file_layer = match &settings.file {
        Some(path) => {
            let (file, guard) = tracing_appender::non_blocking(open_log_file(path)?);
            guards.push(guard);
            sinks.push(file.clone());
            Some(
                fmt::layer()
                    .with_ansi(false)
                    .with_writer(file)
                    .with_filter(filter()),
            )
        }
        None => None,
    };

    // Every layer carries a level filter, so the `log` bridge gets a max level and Pingora's
    // per-request debug records are not even formatted unless asked for.
    tracing_subscriber::registry()
        .with(stdout_layer)
        .with(file_layer)
        .try_init()
        .map_err(std::io::Error::other)?;
    Ok((LogGuards(guards), AccessLog::new(sinks)))
}

/// Opens `path` for appending, creating its directory; runs once at start-up.
fn open_log_file(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("log.file {}: {e}", path.display())))
}
