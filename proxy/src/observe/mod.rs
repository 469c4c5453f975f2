//! What the gateway tells operators: Prometheus metrics, the JSON access log, the process log.

pub mod access_log;
pub mod logging;
pub mod metrics;
