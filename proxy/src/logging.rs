//! Log setup: `tracing` to stdout and, when `log.file` is set, to that file, both through
//! non-blocking writers. `RUST_LOG` overrides `log.level`. Access log lines (target `access`)
//! are written bare, one JSON object per line; everything else in the usual text format.
//! Pingora's own `log` records are bridged in.

use std::path::Path;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, Layer};

use crate::access_log;
use crate::config::LogSettings;

/// Keeps the background writers alive; dropping it flushes them.
pub struct LogGuards(#[allow(dead_code)] Vec<WorkerGuard>);

/// Installs the global subscriber (the only process-wide state: `tracing` requires it).
pub fn init(settings: &LogSettings) -> std::io::Result<LogGuards> {
    let filter = || match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => EnvFilter::new(v),
        // Our health observer logs transitions once; Pingora's own copy is noise.
        _ => EnvFilter::new(format!("{},pingora_load_balancing=error", settings.level)),
    };
    let mut guards = Vec::new();

    let (stdout, guard) = tracing_appender::non_blocking(std::io::stdout());
    guards.push(guard);
    let stdout_events = fmt::layer()
        .with_writer(stdout.clone())
        .with_filter(filter_fn(|m| m.target() != access_log::TARGET))
        .with_filter(filter());
    let stdout_access = fmt::layer()
        .with_writer(stdout)
        .without_time()
        .with_level(false)
        .with_target(false)
        .with_filter(filter_fn(|m| m.target() == access_log::TARGET));

    let (file_events, file_access) = match &settings.file {
        Some(path) => {
            let file = open_log_file(path)?;
            let (file, guard) = tracing_appender::non_blocking(file);
            guards.push(guard);
            let events = fmt::layer()
                .with_ansi(false)
                .with_writer(file.clone())
                .with_filter(filter_fn(|m| m.target() != access_log::TARGET))
                .with_filter(filter());
            let access = fmt::layer()
                .with_ansi(false)
                .with_writer(file)
                .without_time()
                .with_level(false)
                .with_target(false)
                .with_filter(filter_fn(|m| m.target() == access_log::TARGET));
            (Some(events), Some(access))
        }
        None => (None, None),
    };

    tracing_subscriber::registry()
        .with(stdout_events)
        .with(stdout_access)
        .with(file_events)
        .with(file_access)
        .try_init()
        .map_err(std::io::Error::other)?;
    Ok(LogGuards(guards))
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
