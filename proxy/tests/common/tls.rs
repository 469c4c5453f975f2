//! TLS to the proxy under test: certificates from `test_support`'s CA (made at test time, so
//! nothing committed expires), connections through a client that trusts only it, and what the
//! server presented.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

pub use test_support::TestCa;

/// A TLS connection to `addr` asking for `sni`.
pub async fn tls_connect(
    config: Arc<ClientConfig>,
    addr: std::net::SocketAddr,
    sni: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).map_err(std::io::Error::other)?;
    TlsConnector::from(config).connect(name, tcp).await
}

/// The DER of the certificate the server presented on `stream`.
pub fn presented(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default()
}

/// The DER of the first certificate in a PEM file.
pub fn der_of(pem_path: &Path) -> Vec<u8> {
    let pem = std::fs::read(pem_path).expect("read PEM");
    CertificateDer::pem_slice_iter(&pem)
        .next()
        .expect("a certificate")
        .expect("PEM")
        .as_ref()
        .to_vec()
}
