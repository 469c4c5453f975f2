//! Test fixtures: the real `proxy` and `mock-backend` binaries on loopback ports, and a small
//! HTTP/1.1 client that can choose its source address (distinct clients are distinct addresses
//! in 127.0.0.0/8). Children are killed and reaped on drop; readiness is polled, never slept.
#![allow(dead_code)]

mod backend;
mod config;
mod http;
mod load;
mod metrics;
mod ports;
mod process;
mod proxy;
mod redis;
mod temp_dir;
mod tls;
mod wait;

// Each test binary uses a subset of these.
#[allow(unused_imports)]
pub use {
    backend::{Backend, HeldBackend},
    config::{backend_list, base_config, merge},
    http::{get, get_with, put_json, try_get, Client, Conn, Response},
    load::{load, Tally},
    metrics::{Labels, Metrics},
    ports::PortHold,
    process::{backend_bin, Spawned, PROXY_BIN},
    proxy::Proxy,
    redis::Redis,
    temp_dir::TempDir,
    tls::{der_of, presented, tls_connect, TestCa},
    wait::wait_until,
};
