//! `proxy`: an HTTP reverse proxy / API gateway on Pingora, as a library; `main.rs` wires it.
//!
//! One folder per concern: `config` (file layer, runtime settings, validation), `routing`,
//! `upstream` (groups, discovery, health, balancing, retry), `limits` (rate limiting, client
//! identity), `gateway` (the Pingora phases and the per-request state), `observe` (metrics,
//! access log, logging), `ops` (admin listener, reload, signals, start-up and shutdown).
#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod config;
pub mod gateway;
pub mod limits;
pub mod observe;
pub mod ops;
pub mod routing;
pub mod tls;
pub mod upstream;
