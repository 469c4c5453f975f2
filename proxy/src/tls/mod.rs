//! TLS termination: certificates from PEM files chosen by SNI, the rustls server config built
//! from them (versions, ALPN), swapped whole on reload, and the handshake each TLS connection
//! makes before its first request.

pub mod certs;
pub mod sni;
pub mod terminator;
