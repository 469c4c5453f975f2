//! Configuration in two layers: serde structs that mirror the TOML file (defaults, unknown keys
//! rejected), validated once into runtime types ([`Settings`]) that the rest of the proxy uses.
//!
//! Every error names the file, the line and column where they can be found, and the key.

pub mod locate;

use std::path::Path;
use std::sync::Arc;

use crate::config::file::FileConfig;
use crate::config::locate::{key_at, line_col, span_of};
use crate::config::validate::{invalid, validate, Invalid};

pub mod file;
pub mod resilience;
pub mod runtime;
pub mod validate;

pub use runtime::*;

/// Why a config file was rejected. `Display` is the one line an operator reads.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {key}{message}")]
    Invalid {
        path: String,
        line: usize,
        column: usize,
        /// `key: ` prefix, empty when TOML itself is malformed.
        key: String,
        message: String,
    },
}

/// Reads, parses and validates `path`. Runs at start-up and on reload, never inside a request.
pub fn load_config(path: &Path) -> Result<Settings, ConfigError> {
    parse_config(&read_config(path)?, &path.display().to_string())
}

fn read_config(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Parses and validates config text; `origin` names the file in errors.
pub fn parse_config(text: &str, origin: &str) -> Result<Settings, ConfigError> {
    let file: FileConfig = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let (line, column) = line_col(text, span.start);
        let key = key_at(text, span.start)
            .map(|k| format!("{k}: "))
            .unwrap_or_default();
        ConfigError::Invalid {
            path: origin.to_owned(),
            line,
            column,
            key,
            message: e.message().trim().replace('\n', "; "),
        }
    })?;
    validate(file).map_err(|e| located(text, origin, e))
}

/// [`load_config`], then what only the running system can tell, as `nginx -t` does: that
/// `log.file` can be opened for append (its directory is created when missing). For `-t` and
/// start-up, not for reload (`log.file` is not reloaded, and a reload must not touch files).
/// Also loads every TLS certificate and key (the checks of reload too); what is only worth a
/// warning (an expired certificate, a route's host no certificate covers) comes back with the
/// settings.
pub fn load_and_check_config(path: &Path) -> Result<(Settings, Vec<String>), ConfigError> {
    let text = read_config(path)?;
    let origin = path.display().to_string();
    let settings = parse_config(&text, &origin)?;
    if let Some(file) = &settings.log.file {
        open_log_file(file).map_err(|why| {
            let message = format!("\"{}\": {why}", file.display());
            located(&text, &origin, invalid("log.file", message))
        })?;
    }
    let mut settings = settings;
    load_upstream_roots(&mut settings).map_err(|why| located(&text, &origin, split_key(&why)))?;
    let mut warnings = Vec::new();
    if let Some(tls) = &settings.tls {
        let (certs, expired) = crate::tls::certs::load_all(&tls.certificates)
            .map_err(|why| located(&text, &origin, split_key(&why)))?;
        warnings.extend(expired);
        for (i, route) in settings.routes.iter().enumerate() {
            if let HostMatch::Exact(host) = &route.host {
                if !certs.iter().any(|c| c.covers(host)) {
                    let why = format!(
                        "\"{host}\" is covered by no tls.certificates entry (HTTPS clients asking for it get the first certificate)"
                    );
                    if tls.redirect_http {
                        return Err(located(
                            &text,
                            &origin,
                            invalid(&format!("routes[{i}].host"), why),
                        ));
                    }
                    warnings.push(format!("routes[{i}].host: {why}"));
                }
            }
        }
    }
    Ok((settings, warnings))
}

/// Reads the `ca_file` of every TLS group into the settings (DER roots, each parsed once to be
/// sure it is a certificate). Start, `-t` and reload call it; the error names the key and path.
pub fn load_upstream_roots(settings: &mut Settings) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    use x509_parser::prelude::{FromDer, X509Certificate};
    for group in settings.groups.iter_mut() {
        let Some(path) = group.tls.as_ref().and_then(|t| t.ca_file.clone()) else {
            continue;
        };
        let key = format!("{}.ca_file \"{}\"", group.key, path.display());
        let pem = std::fs::read(&path).map_err(|e| format!("{key}: cannot read: {e}"))?;
        let ders: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(&pem)
            .map(|c| c.map(|c| c.as_ref().to_vec()))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{key}: not PEM certificates: {e}"))?;
        if ders.is_empty() {
            return Err(format!("{key}: no certificate in the file"));
        }
        for der in &ders {
            X509Certificate::from_der(der)
                .map_err(|e| format!("{key}: a certificate does not parse: {e}"))?;
        }
        if let Some(tls) = Arc::make_mut(group).tls.as_mut() {
            tls.ca_der = Some(Arc::new(ders));
        }
    }
    if let Some(default) = settings.groups.iter().find(|g| *g.name == *DEFAULT_GROUP) {
        settings.upstream.default_group = default.clone();
    }
    Ok(())
}

/// `"tls.certificates[0].cert \"path\": why"` as the key and the rest.
fn split_key(message: &str) -> Invalid {
    match message.split_once(' ') {
        Some((key, rest)) if key.starts_with("tls.") || key.ends_with(".ca_file") => {
            (key.to_owned(), rest.to_owned())
        }
        _ => ("tls.certificates".to_owned(), message.to_owned()),
    }
}

/// Whether `path` can be the log file: creates its directory when missing and opens it for
/// append (nothing is written). The error reads "log.file PATH: why".
#[cfg(test)]
pub fn check_log_file(path: &Path) -> Result<(), String> {
    open_log_file(path).map_err(|why| format!("log.file {}: {why}", path.display()))
}

fn open_log_file(path: &Path) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create its directory {}: {e}", dir.display()))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(drop)
        .map_err(|e| format!("cannot open it for append: {e}"))
}

/// A validation failure placed at its key's line and column in `text`.
fn located(text: &str, origin: &str, (key, message): Invalid) -> ConfigError {
    let (line, column) = span_of(text, &key)
        .map(|span| line_col(text, span.start))
        .unwrap_or((1, 1));
    ConfigError::Invalid {
        path: origin.to_owned(),
        line,
        column,
        key: format!("{key}: "),
        message,
    }
}

#[cfg(test)]
mod tests;
