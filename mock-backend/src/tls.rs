//! HTTPS for the mock backend: a rustls server configuration (ring provider, TLS 1.2 and 1.3,
//! ALPN `http/1.1`) built from a PEM certificate chain and a PEM private key.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// How long a client may take to complete the TLS handshake before the connection is dropped.
/// Shorter than the drain timeout, so a stalled handshake cannot hold up a SIGTERM drain.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The acceptor for `--tls-cert CERT --tls-key KEY`. `cert` holds the chain, leaf first; `key`
/// one private key (PKCS#8, PKCS#1 RSA or SEC1 EC), which must belong to the leaf. Errors are
/// one line, naming the flag and the file.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    Ok(TlsAcceptor::from(Arc::new(server_config(cert, key)?)))
}

fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "--tls-cert {}: no PEM certificate in the file",
            cert.display()
        ));
    }
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| match e {
        pem::Error::NoItemsFound => format!(
            "--tls-key {}: no PEM private key (PKCS#8, RSA or EC) in the file",
            key.display()
        ),
        e => format!("--tls-key {}: {e}", key.display()),
    })?;
    // The provider is named here rather than taken from a process-wide default, so another
    // crate in the build enabling a second provider cannot make this ambiguous.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, private_key)
        .map_err(|e| {
            format!(
                "--tls-cert {} / --tls-key {}: {e}",
                cert.display(),
                key.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
