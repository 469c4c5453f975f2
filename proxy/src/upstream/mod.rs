//! Upstream groups: each its own backends (discovery), health checks, balancer and the loop
//! that keeps them current; how a backend is chosen for an attempt, and when to retry.

pub mod consistent_hash;
pub mod discovery;
pub mod group;
pub mod health;
pub mod least_requests;
pub mod load;
pub mod outlier;
pub mod retry;
pub mod round_robin;
pub mod service;
pub mod supervisor;

pub use discovery::{info, BackendInfo};
