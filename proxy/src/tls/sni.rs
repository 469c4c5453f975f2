//! Choosing the certificate by the name the client asked for (SNI): an exact name first, then
//! a wildcard, else the first certificate (clients without SNI, unknown names).

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::tls::certs::{name_matches, LoadedCertificate};

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

    /// An exact name first, then a wildcard, else the first certificate.
    fn find(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(host) = name.map(str::to_ascii_lowercase) {
            for wildcard in [false, true] {
                let hit = self.certs.iter().find(|(names, _)| {
                    names
                        .iter()
                        .any(|n| n.starts_with("*.") == wildcard && name_matches(n, &host))
                });
                if let Some((_, key)) = hit {
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
