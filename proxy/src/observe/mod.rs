//! What the gateway tells operators: Prometheus metrics, the JSON access log, the process log.

pub mod access_log;
mod json_line;
pub mod logging;
pub mod metrics;
