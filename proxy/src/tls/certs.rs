//! Loading and checking certificates: a PEM chain (leaf first) and its private key, the names
//! the leaf is valid for, and when it expires. Used by `-t`, at start and on every reload.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::config::CertificateFiles;

/// A certificate ready to present.
pub struct LoadedCertificate {
    pub key: Arc<CertifiedKey>,
    /// DNS names of the leaf (subjectAltName, else the common name), lower case; `*.x` kept.
    pub names: Vec<String>,
    pub not_after: SystemTime,
}

impl LoadedCertificate {
    /// Whether the leaf covers `host` (lower case): an exact name or a one-label wildcard.
    pub fn covers(&self, host: &str) -> bool {
        self.names.iter().any(|n| name_matches(n, host))
    }
}

/// Whether the certificate name `pattern` covers `host` (both lower case): the same name, or
/// `*.suffix` for a host of exactly one more label.
pub fn name_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == host,
    }
}

/// Loads `files`; errors name the key (`tls.certificates[i].cert`) and the path.
pub fn load(files: &CertificateFiles, index: usize) -> Result<LoadedCertificate, String> {
    let key_of = |field: &str, path: &Path| {
        format!("tls.certificates[{index}].{field} \"{}\"", path.display())
    };
    let cert_key = key_of("cert", &files.cert);
    let key_key = key_of("key", &files.key);
    let cert_pem =
        std::fs::read(&files.cert).map_err(|e| format!("{cert_key}: cannot read: {e}"))?;
    let key_pem = std::fs::read(&files.key).map_err(|e| format!("{key_key}: cannot read: {e}"))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{cert_key}: not PEM certificates: {e}"))?;
    let Some(leaf) = chain.first() else {
        return Err(format!("{cert_key}: no certificate in the file"));
    };
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("{key_key}: no private key in the file ({e})"))?;
    let provider = rustls::crypto::ring::default_provider();
    let (names, not_after) = leaf_names_and_expiry(leaf).map_err(|e| format!("{cert_key}: {e}"))?;
    let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
        format!(
            "{key_key}: does not fit the certificate {}: {e}",
            files.cert.display()
        )
    })?;
    Ok(LoadedCertificate {
        key: Arc::new(certified),
        names,
        not_after,
    })
}

/// The leaf's DNS names and its expiry.
fn leaf_names_and_expiry(leaf: &CertificateDer<'_>) -> Result<(Vec<String>, SystemTime), String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(leaf.as_ref())
        .map_err(|e| format!("the first certificate does not parse: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    let secs = cert.validity().not_after.timestamp().max(0) as u64;
    Ok((names, SystemTime::UNIX_EPOCH + Duration::from_secs(secs)))
}

/// Loads every certificate of `[tls]`; the warnings (an expired certificate) come back for the
/// caller to log.
pub fn load_all(
    files: &[CertificateFiles],
) -> Result<(Vec<LoadedCertificate>, Vec<String>), String> {
    let mut loaded = Vec::with_capacity(files.len());
    let mut warnings = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let cert = load(f, i)?;
        if cert.not_after <= SystemTime::now() {
            warnings.push(format!(
                "tls.certificates[{i}].cert \"{}\": expired at {}",
                f.cert.display(),
                humantime::format_rfc3339_seconds(cert.not_after)
            ));
        }
        loaded.push(cert);
    }
    Ok((loaded, warnings))
}

#[cfg(test)]
mod tests {
    use super::name_matches;

    #[test]
    fn wildcards_cover_exactly_one_more_label() {
        assert!(name_matches("api.example.test", "api.example.test"));
        assert!(!name_matches("api.example.test", "www.example.test"));
        assert!(name_matches("*.example.test", "api.example.test"));
        assert!(!name_matches("*.example.test", "example.test"));
        assert!(!name_matches("*.example.test", "a.b.example.test"));
        assert!(!name_matches("*.example.test", ".example.test"));
    }
}
