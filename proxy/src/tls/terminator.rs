//! The rustls server config of the TLS listeners, swapped whole on reload (new handshakes take
//! the new certificates; open connections keep theirs), and the handshake itself.
//!
//! The handshake runs in the gateway's own connection handler rather than in Pingora's TLS
//! listener, whose settings fix the protocol versions (`min_version = "1.3"` could not be
//! honoured) and cannot be swapped.

use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::listeners::tls::Acceptor;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use rustls::ServerConfig;

use crate::config::{TlsSettings, TlsVersion};
use crate::tls::certs::load_all;
use crate::tls::sni::SniResolver;

pub struct TlsTerminator {
    config: ArcSwap<ServerConfig>,
}

impl TlsTerminator {
    /// Loads the certificates and builds the config; the warnings (expired certificates) are
    /// for the caller to log.
    pub fn new(settings: &TlsSettings) -> Result<(Self, Vec<String>), String> {
        let (config, warnings) = build(settings)?;
        Ok((
            Self {
                config: ArcSwap::from(config),
            },
            warnings,
        ))
    }

    /// Reads the certificates again and swaps the config in; on any error the old one stays.
    pub fn reload(&self, settings: &TlsSettings) -> Result<Vec<String>, String> {
        let (config, warnings) = build(settings)?;
        self.config.store(config);
        Ok(warnings)
    }

    /// The TLS handshake on an accepted connection, with the current certificates.
    pub async fn accept(&self, stream: Stream) -> pingora::Result<Stream> {
        // The TLS listeners are plain TCP listeners: what they accept is a TCP stream.
        let tcp = stream.into_any().downcast::<L4Stream>().map_err(|_| {
            pingora::Error::explain(
                pingora::ErrorType::InternalError,
                "TLS over a non-TCP stream",
            )
        })?;
        let acceptor = Acceptor::from_server_config(self.config.load_full());
        let tls = acceptor.tls_handshake(*tcp).await?;
        Ok(Box::new(tls))
    }
}

/// The server config for `settings`: its certificates chosen by SNI, the versions from
/// `min_version` up, ALPN `h2` (with `http2`) and `http/1.1`.
pub fn build(settings: &TlsSettings) -> Result<(Arc<ServerConfig>, Vec<String>), String> {
    let (certs, warnings) = load_all(&settings.certificates)?;
    let versions: &[&'static rustls::SupportedProtocolVersion] = match settings.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver::new(&certs)));
    config.alpn_protocols = if settings.http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok((Arc::new(config), warnings))
}
