//! Config text for test proxies: the base config and TOML overrides merged into it.

use std::net::SocketAddr;
use std::path::Path;

use super::Backend;

/// The config every test proxy starts from: frequent health checks, logs in the temp dir.
/// A probe gets far longer than a loaded machine needs, so a slow probe never takes a live
/// backend out of rotation (one failed probe does); a killed backend is refused at once.
pub fn base_config(
    listen: SocketAddr,
    admin: SocketAddr,
    backends: &[String],
    dir: &Path,
) -> toml::Table {
    let text = format!(
        r#"
[server]
listen = "{listen}"
threads = 2
grace_period_seconds = 1
graceful_shutdown_timeout_seconds = 1
upgrade_sock = "{dir}/upgrade.sock"
pid_file = "{dir}/proxy.pid"

[upstream]
backends = {backends:?}
connect_timeout_ms = 500
read_timeout_ms = 5000
max_retries = 2

[upstream.health_check]
path = "/health"
interval_ms = 300
timeout_ms = 2000

[rate_limit]
enabled = true
exempt = []

[headers]
response = {{ "X-Test-Gateway" = "yes" }}

[admin]
listen = "{admin}"

[log]
level = "info"
file = "{dir}/proxy.log"
access_log = true
"#,
        dir = dir.display()
    );
    text.parse().expect("base config parses")
}

/// Deep-merges `overrides` (TOML text) into `base`.
pub fn merge(base: &mut toml::Table, overrides: &str) {
    let over: toml::Table = overrides.parse().expect("override TOML parses");
    merge_tables(base, over);
}

fn merge_tables(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_tables(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

pub fn backend_list(backends: &[&Backend]) -> Vec<String> {
    backends.iter().map(|b| b.addr.to_string()).collect()
}
