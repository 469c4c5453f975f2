//! Choosing the certificate by the name the client asked for (SNI): an exact name first, then
//! a wildcard, else the first certificate (clients without SNI, unknown names).

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::tls::certs::LoadedCertificate;

#[derive(Debug)]
pub struct SniResolver {
    /// (names, key) in configuration order.
    certs: Vec<(Vec<String>, Arc<CertifiedKey>)>,
}

impl SniResolver {
    /// `certs` must not be empty (validation requires one).
    pub fn new(certs: &[LoadedCertificate]) -> Self {
        Self {
            certs: certs
                .iter()
                .map(|c| (c.names.clone(), c.key.clone()))
                .collect(),
        }
    }

    fn find(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let covers = |names: &[String], host: &str, wildcard: bool| {
            names
                .iter()
                .any(|n| match (wildcard, n.strip_prefix("*.")) {
                    (false, None) => n == host,
                    (true, Some(suffix)) => host
                        .split_once('.')
                        .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
                    _ => false,
                })
        };
        if let Some(host) = name.map(str::to_ascii_lowercase) {
            for wildcard in [false, true] {
                if let Some((_, key)) = self.certs.iter().find(|(n, _)| covers(n, &host, wildcard))
                {
                    return Some(key.clone());
                }
            }
        }
        self.certs.first().map(|(_, key)| key.clone())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.find(client_hello.server_name())
    }
}
