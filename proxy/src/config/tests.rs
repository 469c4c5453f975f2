use super::*;
use std::path::PathBuf;
use std::time::Duration;

const MINIMAL: &str = "[upstream]\nbackends = [\"127.0.0.1:9001\", \"backend2:9000\"]\n";

fn err(text: &str) -> String {
    match parse_config(text, "test.toml") {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn minimal_file_gets_contract_defaults() {
    let s = parse_config(MINIMAL, "test.toml").unwrap();
    assert_eq!(s.server.listen, vec!["127.0.0.1:8080".parse().unwrap()]);
    assert_eq!(s.server.threads, 2);
    assert!(s.server.work_stealing);
    assert_eq!(s.server.grace_period_seconds, 5);
    assert_eq!(
        s.upstream.default_group.connect_timeout,
        Duration::from_millis(1000)
    );
    assert_eq!(
        s.upstream.default_group.read_timeout,
        Duration::from_millis(30_000)
    );
    assert_eq!(s.upstream.default_group.max_retries, 2);
    assert_eq!(s.upstream.default_group.health_check.path, "/health");
    assert_eq!(s.rate_limit.requests.get(), 100);
    assert_eq!(s.rate_limit.window, Duration::from_secs(60));
    assert_eq!(s.rate_limit.max_clients.get(), 100_000);
    assert!(s.rate_limit.enabled);
    assert_eq!(s.admin.listen, "127.0.0.1:9091".parse().unwrap());
    assert_eq!(s.log.level, "info");
    assert_eq!(
        s.upstream.default_group.backends[1],
        BackendAddr {
            host: "backend2".into(),
            port: 9000,
            weight: 1,
        }
    );
}

#[test]
fn listen_takes_a_list() {
    let s = parse_config(
        &format!("[server]\nlisten = [\"127.0.0.1:1\", \"[::1]:2\"]\n{MINIMAL}"),
        "t",
    )
    .unwrap();
    assert_eq!(s.server.listen.len(), 2);
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let e = err(&format!("{MINIMAL}colour = 3\n"));
    assert!(e.starts_with("test.toml:3:"), "{e}");
    assert!(e.contains("colour"), "{e}");
}

#[test]
fn malformed_toml_names_the_line() {
    let e = err("[upstream\nbackends = []\n");
    assert!(e.starts_with("test.toml:1:"), "{e}");
}

#[test]
fn empty_backends_rejected() {
    let e = err("[upstream]\nbackends = []\n");
    assert!(e.starts_with("test.toml:2:"), "{e}");
    assert!(e.contains("upstream.backends"), "{e}");
}

#[test]
fn bad_backend_address_rejected() {
    let e = err("[upstream]\nbackends = [\"127.0.0.1\"]\n");
    assert!(e.contains("upstream.backends"), "{e}");
    assert!(e.contains("127.0.0.1"), "{e}");
    let e = err("[upstream]\nbackends = [\"bad host:80\"]\n");
    assert!(e.contains("upstream.backends"), "{e}");
}

#[test]
fn zero_timeout_rejected_with_its_line() {
    let e = err(&format!(
        "{MINIMAL}read_timeout_ms = 0\n[upstream.health_check]\ninterval_ms = 10\n"
    ));
    assert!(e.starts_with("test.toml:3:"), "{e}");
    assert!(e.contains("upstream.read_timeout_ms"), "{e}");
}

#[test]
fn wrong_type_names_the_key() {
    let e = err(&format!("{MINIMAL}[rate_limit]\nrequests = \"many\"\n"));
    assert!(e.starts_with("test.toml:4:"), "{e}");
    assert!(e.contains("rate_limit.requests"), "{e}");
}

#[test]
fn bad_cidr_and_header_rejected() {
    let e = err(&format!(
        "{MINIMAL}[rate_limit]\ntrusted_proxies = [\"10.0.0.0/33\"]\n"
    ));
    assert!(e.contains("rate_limit.trusted_proxies"), "{e}");
    let e = err(&format!(
        "{MINIMAL}[headers]\nresponse = {{ \"bad name\" = \"x\" }}\n"
    ));
    assert!(e.contains("headers.response"), "{e}");
}

fn log_level(level: &str) -> Result<String, String> {
    let text = format!("{MINIMAL}[log]\nlevel = \"{level}\"\n");
    parse_config(&text, "test.toml")
        .map(|s| s.log.level)
        .map_err(|e| e.to_string())
}

#[test]
fn log_level_takes_levels_in_any_case_and_filter_directives() {
    for level in [
        "error", "warn", "info", "debug", "trace", "off", "INFO", "Warn",
    ] {
        assert_eq!(log_level(level).unwrap(), level);
    }
    for filter in [
        "info,proxy=debug",
        "warn,pingora_core::listeners=off",
        "proxy[request{method=GET}]=trace",
        "[request]=debug",
        "proxy=DEBUG",
    ] {
        assert_eq!(log_level(filter).unwrap(), filter);
    }
    // Blanks that EnvFilter would read into a target name are dropped.
    assert_eq!(
        log_level(" warn , proxy = debug ").unwrap(),
        "warn,proxy=debug"
    );
}

#[test]
fn log_level_rejects_words_that_are_not_levels() {
    for bad in [
        "loud",
        "verbose",
        "",
        "  ",
        "info,",
        "info,,debug",
        "proxy",
        "info,proxy",
        "proxy=loud",
        "proxy=",
        "=debug",
        "proxy[span{a=b}]",
        "3",
    ] {
        let e = log_level(bad).expect_err(bad);
        assert!(e.starts_with("test.toml:4:"), "{bad}: {e}");
        assert!(e.contains("log.level"), "{bad}: {e}");
        assert!(
            e.contains("error, warn, info, debug, trace, off"),
            "{bad}: {e}"
        );
    }
    let e = log_level("proxy=loud").unwrap_err();
    assert!(e.contains("\"loud\" is not a level"), "{e}");
}

#[test]
fn framing_and_hop_by_hop_headers_cannot_be_configured() {
    for table in ["request", "response"] {
        for name in [
            "Host",
            "content-length",
            "Transfer-Encoding",
            "CONNECTION",
            "Upgrade",
            "TE",
            "Keep-Alive",
            "Trailer",
            "Proxy-Authorization",
            "proxy-connection",
        ] {
            let e = err(&format!(
                "{MINIMAL}[headers]\n{table} = {{ \"{name}\" = \"x\" }}\n"
            ));
            assert!(e.starts_with("test.toml:4:"), "{e}");
            assert!(e.contains(&format!("headers.{table}: ")), "{e}");
            assert!(e.contains(&format!("\"{name}\"")), "{e}");
            assert!(
                e.contains("framing/hop-by-hop header managed by the proxy"),
                "{e}"
            );
        }
    }
    // Look-alikes stay allowed.
    let s = parse_config(
        &format!(
            "{MINIMAL}[headers.request]\nX-Host = \"a\"\nTE-Info = \"b\"\nProxied-By = \"c\"\n"
        ),
        "t",
    )
    .unwrap();
    assert_eq!(s.headers.request.len(), 3);
}

fn listen_err(server: &str, admin: &str) -> String {
    err(&format!(
        "[server]\nlisten = {server}\n[admin]\nlisten = \"{admin}\"\n{MINIMAL}"
    ))
}

#[test]
fn listen_address_twice_rejected() {
    let e = listen_err(r#"["127.0.0.1:8080", "127.0.0.1:8080"]"#, "127.0.0.1:9091");
    assert!(e.starts_with("test.toml:2:"), "{e}");
    assert!(
        e.contains(r#"server.listen: "127.0.0.1:8080" is listed twice"#),
        "{e}"
    );
    let e = listen_err(r#""127.0.0.1:8080""#, "127.0.0.1:8080");
    assert!(e.starts_with("test.toml:4:"), "{e}");
    assert!(e.contains("admin.listen: "), "{e}");
    assert!(
        e.contains(r#""127.0.0.1:8080" is also in server.listen"#),
        "{e}"
    );
    // The same socket spelled as an IPv4-mapped IPv6 address.
    let e = listen_err(
        r#"["127.0.0.1:8080", "[::ffff:127.0.0.1]:8080"]"#,
        "127.0.0.1:1",
    );
    assert!(e.contains("server.listen: "), "{e}");
    assert!(e.contains("the same IP and port"), "{e}");
}

#[test]
fn wildcard_listen_overlapping_a_specific_ip_rejected() {
    for (server, admin) in [
        (r#"["0.0.0.0:8080", "127.0.0.1:8080"]"#, "127.0.0.1:1"),
        (r#"["10.0.0.1:8080", "0.0.0.0:8080"]"#, "127.0.0.1:1"),
        (r#"["[::]:8080", "127.0.0.1:8080"]"#, "127.0.0.1:1"),
        (r#"["[::]:8080", "0.0.0.0:8080"]"#, "127.0.0.1:1"),
        (r#"["[::1]:8080", "[::]:8080"]"#, "127.0.0.1:1"),
    ] {
        let e = listen_err(server, admin);
        assert!(e.contains("server.listen: "), "{server}: {e}");
        assert!(e.contains("cannot both be bound"), "{server}: {e}");
        assert!(e.contains("8080"), "{server}: {e}");
    }
    let e = listen_err(r#""0.0.0.0:8080""#, "127.0.0.1:8080");
    assert!(e.contains("admin.listen: "), "{e}");
    assert!(
        e.contains(r#""127.0.0.1:8080" and server.listen "0.0.0.0:8080" cannot both be bound"#),
        "{e}"
    );
    let e = listen_err(r#""127.0.0.1:8080""#, "[::]:8080");
    assert!(e.contains("admin.listen: "), "{e}");
}

#[test]
fn listen_addresses_that_can_coexist_accepted() {
    for (server, admin) in [
        // Different ports, different IPs on one port, IPv4 wildcard next to IPv6.
        (r#"["0.0.0.0:8080", "0.0.0.0:8081"]"#, "0.0.0.0:9091"),
        (r#"["127.0.0.1:8080", "127.0.0.2:8080"]"#, "127.0.0.3:8080"),
        (r#"["0.0.0.0:8080", "[::1]:8080"]"#, "127.0.0.1:9091"),
        // Port 0: any free port, never the same one twice.
        (r#"["127.0.0.1:0", "127.0.0.1:0"]"#, "127.0.0.1:0"),
    ] {
        let text = format!("[server]\nlisten = {server}\n[admin]\nlisten = \"{admin}\"\n{MINIMAL}");
        assert!(parse_config(&text, "t").is_ok(), "{server} {admin}");
    }
}

/// A fresh directory under the system temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "proxy-config-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn log_file_that_cannot_be_opened_names_the_key_and_path() {
    let scratch = Scratch::new("logfile");
    let regular = scratch.0.join("regular");
    std::fs::write(&regular, "").unwrap();
    // Paths that fail for root too: no directory can be made in /proc, a regular file
    // cannot be a directory, a directory cannot be appended to.
    for bad in [
        PathBuf::from("/proc/nonexistent/x.log"),
        regular.join("x.log"),
        scratch.0.clone(),
    ] {
        let e = check_log_file(&bad).expect_err(&bad.display().to_string());
        let prefix = format!("log.file {}: ", bad.display());
        assert!(e.starts_with(&prefix), "{e}");
        assert!(e.len() > prefix.len(), "{e}");
    }
    let e = check_log_file(&regular.join("x.log")).unwrap_err();
    assert!(e.contains("cannot create its directory"), "{e}");
    let e = check_log_file(&scratch.0).unwrap_err();
    assert!(e.contains("cannot open it for append"), "{e}");
}

#[test]
fn log_file_directory_is_created_and_the_file_appended_to() {
    let scratch = Scratch::new("logdir");
    let file = scratch.0.join("a/b/proxy.log");
    check_log_file(&file).unwrap();
    assert!(file.is_file());
    std::fs::write(&file, "kept\n").unwrap();
    check_log_file(&file).unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "kept\n");
}

#[test]
fn start_up_load_checks_the_log_file_where_reload_does_not() {
    let scratch = Scratch::new("startlog");
    let config = scratch.0.join("proxy.toml");
    std::fs::write(
        &config,
        format!("{MINIMAL}[log]\nfile = \"/proc/nonexistent/x.log\"\n"),
    )
    .unwrap();
    let e = load_and_check_config(&config).unwrap_err().to_string();
    let location = format!("{}:4:8: ", config.display());
    assert!(e.starts_with(&location), "{e}");
    assert!(
        e.contains("log.file: \"/proc/nonexistent/x.log\": cannot create its directory"),
        "{e}"
    );
    assert!(load_config(&config).is_ok());
    let fine = scratch.0.join("logs/proxy.log");
    std::fs::write(
        &config,
        format!("{MINIMAL}[log]\nfile = \"{}\"\n", fine.display()),
    )
    .unwrap();
    let (s, warnings) = load_and_check_config(&config).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(s.log.file.as_deref(), Some(fine.as_path()));
    assert!(fine.is_file());
}

#[test]
fn server_connection_keys_get_contract_defaults() {
    let s = parse_config(MINIMAL, "test.toml").unwrap().server;
    assert_eq!(s.keepalive_timeout, Some(Duration::from_secs(60)));
    assert_eq!(s.keepalive_requests.get(), 1000);
    assert_eq!(s.header_timeout, Duration::from_millis(10_000));
    assert_eq!(s.body_timeout, Duration::from_millis(30_000));
    assert_eq!(s.send_timeout, Duration::from_millis(60_000));
    assert_eq!(s.max_connections.get(), 10_000);
    assert_eq!(s.max_connections_per_client, 256);
    assert_eq!(s.drain_delay, Duration::ZERO);
    assert_eq!(s.grace_period_seconds, 5);
    assert_eq!(s.graceful_shutdown_timeout_seconds, 5);
}

fn server(lines: &str) -> Result<ServerSettings, String> {
    parse_config(&format!("[server]\n{lines}\n{MINIMAL}"), "test.toml")
        .map(|s| s.server)
        .map_err(|e| e.to_string())
}

#[test]
fn server_connection_keys_take_their_whole_range() {
    let s = server(
        "keepalive_timeout_seconds = 0\nkeepalive_requests = 1\nheader_timeout_ms = 1\n\
         body_timeout_ms = 3600000\nsend_timeout_ms = 1\nmax_connections = 1000000\n\
         max_connections_per_client = 0\ndrain_delay_seconds = 3600\n\
         grace_period_seconds = 3600\ngraceful_shutdown_timeout_seconds = 0",
    )
    .unwrap();
    assert_eq!(s.keepalive_timeout, None, "0 = keep-alive off");
    assert_eq!(s.keepalive_requests.get(), 1);
    assert_eq!(s.header_timeout, Duration::from_millis(1));
    assert_eq!(s.body_timeout, Duration::from_secs(3600));
    assert_eq!(s.send_timeout, Duration::from_millis(1));
    assert_eq!(s.max_connections.get(), 1_000_000);
    assert_eq!(s.max_connections_per_client, 0, "0 = no cap");
    assert_eq!(s.drain_delay, Duration::from_secs(3600));
    let s = server("keepalive_timeout_seconds = 86400\nkeepalive_requests = 4294967295").unwrap();
    assert_eq!(s.keepalive_timeout, Some(Duration::from_secs(86_400)));
    assert_eq!(s.keepalive_requests.get(), u32::MAX);
}

#[test]
fn server_connection_keys_reject_zero_and_out_of_range() {
    for (line, key, why) in [
        (
            "keepalive_timeout_seconds = 86401",
            "keepalive_timeout_seconds",
            "at most 86400",
        ),
        ("keepalive_requests = 0", "keepalive_requests", "at least 1"),
        (
            "header_timeout_ms = 0",
            "header_timeout_ms",
            "greater than 0",
        ),
        (
            "header_timeout_ms = 3600001",
            "header_timeout_ms",
            "at most 3600000",
        ),
        ("body_timeout_ms = 0", "body_timeout_ms", "greater than 0"),
        ("send_timeout_ms = 0", "send_timeout_ms", "greater than 0"),
        (
            "send_timeout_ms = 3600001",
            "send_timeout_ms",
            "at most 3600000",
        ),
        (
            "body_timeout_ms = 3600001",
            "body_timeout_ms",
            "at most 3600000",
        ),
        (
            "max_connections = 0",
            "max_connections",
            "between 1 and 1000000",
        ),
        (
            "max_connections = 1000001",
            "max_connections",
            "between 1 and 1000000",
        ),
        (
            "drain_delay_seconds = 3601",
            "drain_delay_seconds",
            "at most 3600",
        ),
        (
            "grace_period_seconds = 3601",
            "grace_period_seconds",
            "at most 3600",
        ),
        (
            "graceful_shutdown_timeout_seconds = 3601",
            "graceful_shutdown_timeout_seconds",
            "at most 3600",
        ),
        // Out of the type's range: TOML/serde names the key too.
        ("keepalive_requests = 4294967296", "keepalive_requests", ""),
        (
            "max_connections_per_client = -1",
            "max_connections_per_client",
            "",
        ),
        ("drain_delay_seconds = -5", "drain_delay_seconds", ""),
    ] {
        let e = server(&format!("threads = 2\n{line}")).expect_err(line);
        assert!(e.starts_with("test.toml:3:"), "{line}: {e}");
        assert!(e.contains(&format!("server.{key}: ")), "{line}: {e}");
        assert!(e.contains(why), "{line}: {e}");
    }
}

#[test]
fn cidrs_and_plain_addresses_accepted() {
    let s = parse_config(
        &format!("{MINIMAL}[rate_limit]\ntrusted_proxies = [\"10.0.0.0/8\", \"127.0.0.2\"]\n"),
        "t",
    )
    .unwrap();
    assert_eq!(s.rate_limit.trusted_proxies.len(), 2);
}

const GROUPS: &str = r#"
[upstream]
backends = ["127.0.0.1:9001"]
connect_timeout_ms = 700
max_retries = 3
[upstream.health_check]
interval_ms = 2000

[upstreams.api]
backends = ["127.0.0.1:9002", { address = "backend3:9000", weight = 3 }]
balance = "hash"
hash_key = "header:X-User"
read_timeout_ms = 100
[upstreams.api.health_check]
path = "/ping"

[[routes]]
name = "api"
host = "API.example.com"
path_prefix = "/api/"
methods = ["get", "POST"]
upstream = "api"
strip_prefix = true
rate_limit = { requests = 10, window_seconds = 2, key = "header:X-Api-Key" }
headers = { request = { "X-Route" = "api" }, response = { "X-Served-By" = "api" } }

[[routes]]
name = "rest"
host = "*.example.com"
upstream = "default"
"#;

#[test]
fn groups_inherit_from_upstream_and_routes_compile() {
    let s = parse_config(GROUPS, "t.toml").unwrap();
    let names: Vec<&str> = s.groups.iter().map(|g| &*g.name).collect();
    assert_eq!(names, ["default", "api"]);
    let api = &s.groups[1];
    assert_eq!(api.backends[1].weight, 3);
    assert_eq!(api.backends[0].weight, 1);
    assert_eq!(
        api.balance,
        Balance::Hash(HashKey::Header(http::HeaderName::from_static("x-user")))
    );
    // Left out: [upstream]'s; given: its own.
    assert_eq!(api.connect_timeout, Duration::from_millis(700));
    assert_eq!(api.max_retries, 3);
    assert_eq!(api.read_timeout, Duration::from_millis(100));
    assert_eq!(api.health_check.path, "/ping");
    assert_eq!(api.health_check.interval, Duration::from_millis(2000));
    assert_eq!(s.groups[0].balance, Balance::RoundRobin);

    let route = &s.routes[0];
    assert_eq!(route.host, HostMatch::Exact("api.example.com".into()));
    assert_eq!(
        route.methods.as_ref().unwrap(),
        &[http::Method::GET, http::Method::POST]
    );
    assert!(route.strip_prefix);
    let quota = route.rate_limit.as_ref().unwrap();
    assert_eq!(
        (quota.requests.get(), quota.window),
        (10, Duration::from_secs(2))
    );
    assert_eq!(
        quota.key,
        QuotaKey::Header(http::HeaderName::from_static("x-api-key"))
    );
    assert_eq!(s.routes[1].host, HostMatch::Suffix(".example.com".into()));
    assert_eq!(s.routes[1].path_prefix, "/");
}

#[test]
fn upstream_backends_may_be_left_out_when_routes_cover_the_traffic() {
    let text = "[upstreams.a]\nbackends = [\"127.0.0.1:9002\"]\n[[routes]]\nname = \"a\"\nupstream = \"a\"\n";
    let s = parse_config(text, "t.toml").unwrap();
    assert_eq!(s.groups.len(), 1);
    // Without routes, [upstream] must have backends.
    let e = err("[upstreams.a]\nbackends = [\"127.0.0.1:9002\"]\n");
    assert!(e.contains("upstream.backends: at least one backend"), "{e}");
    // A route cannot send to an empty default group.
    let e = err("[upstreams.a]\nbackends = [\"127.0.0.1:9002\"]\n[[routes]]\nname = \"a\"\nupstream = \"default\"\n");
    assert!(
        e.contains("t.toml:5:12: routes[0].upstream: the group \"default\""),
        "{e}"
    );
}

#[test]
fn bad_references_name_file_line_and_key() {
    let unknown = format!("{MINIMAL}[[routes]]\nname = \"a\"\nupstream = \"nope\"\n");
    let e = err(&unknown);
    assert!(
        e.starts_with("test.toml:5:12: routes[0].upstream: no group \"nope\""),
        "{e}"
    );

    let twice = format!(
        "{MINIMAL}[[routes]]\nname = \"a\"\nupstream = \"default\"\n[[routes]]\nname = \"a\"\nupstream = \"default\"\n"
    );
    let e = err(&twice);
    assert!(
        e.starts_with("test.toml:7:8: routes[1].name: \"a\" names two routes"),
        "{e}"
    );

    let default_twice = format!("{MINIMAL}[upstreams.default]\nbackends = [\"127.0.0.1:9\"]\n");
    let e = err(&default_twice);
    assert!(
        e.contains("upstreams.default: the group \"default\" is [upstream]"),
        "{e}"
    );

    // TOML itself refuses a group defined twice.
    let group_twice = format!(
        "{MINIMAL}[upstreams.a]\nbackends = [\"127.0.0.1:9\"]\n[upstreams.a]\nbackends = [\"127.0.0.1:8\"]\n"
    );
    let e = err(&group_twice);
    assert!(e.starts_with("test.toml:5:"), "{e}");
    assert!(e.contains("upstreams") || e.contains("duplicate"), "{e}");

    let unknown_key =
        format!("{MINIMAL}[[routes]]\nname = \"a\"\nupstream = \"default\"\npath = \"/x\"\n");
    let e = err(&unknown_key);
    assert!(e.contains("unknown field `path`"), "{e}");
    assert!(e.starts_with("test.toml:6:"), "{e}");
}

#[test]
fn route_and_group_values_are_checked() {
    let route =
        |body: &str| format!("{MINIMAL}[[routes]]\nname = \"r\"\nupstream = \"default\"\n{body}");
    for (body, expected) in [
        (
            "path_prefix = \"api\"\n",
            "routes[0].path_prefix: \"api\" is not a path prefix",
        ),
        (
            "host = \"bad host\"\n",
            "routes[0].host: \"bad host\" is not a host name",
        ),
        ("methods = []\n", "routes[0].methods: lists no method"),
        (
            "methods = [\"G T\"]\n",
            "routes[0].methods: \"G T\" is not a method",
        ),
        (
            "rate_limit = { requests = 0, window_seconds = 1 }\n",
            "routes[0].rate_limit.requests: must be at least 1",
        ),
        (
            "rate_limit = { requests = 1, window_seconds = 1, key = \"cookie:x\" }\n",
            "routes[0].rate_limit.key: \"cookie:x\" is not client_ip or header:NAME",
        ),
        (
            "headers = { request = { \"Host\" = \"x\" } }\n",
            "routes[0].headers.request: \"Host\" cannot be set here",
        ),
    ] {
        let e = err(&route(body));
        assert!(e.contains(expected), "{body}: {e}");
    }
    let group =
        |body: &str| format!("{MINIMAL}[upstreams.g]\nbackends = [\"127.0.0.1:9\"]\n{body}");
    for (body, expected) in [
        (
            "balance = \"random\"\n",
            "upstreams.g.balance: \"random\" is not round_robin",
        ),
        (
            "hash_key = \"path\"\n",
            "upstreams.g.hash_key: only used with balance = \"hash\"",
        ),
        (
            "balance = \"hash\"\nhash_key = \"cookie\"\n",
            "upstreams.g.hash_key: \"cookie\" is not client_ip, path or header:NAME",
        ),
        (
            "max_retries = 16\n",
            "upstreams.g.max_retries: must be between 0 and 15",
        ),
        (
            "read_timeout_ms = 0\n",
            "upstreams.g.read_timeout_ms: must be greater than 0",
        ),
        (
            "[upstreams.g.health_check]\npath = \"x\"\n",
            "upstreams.g.health_check.path",
        ),
    ] {
        let e = err(&group(body));
        assert!(e.contains(expected), "{body}: {e}");
    }
    let weight = format!(
        "{MINIMAL}[upstreams.g]\nbackends = [{{ address = \"127.0.0.1:9\", weight = 0 }}]\n"
    );
    assert!(
        err(&weight).contains("upstreams.g.backends: \"127.0.0.1:9\": weight must be between 1")
    );
    let bad_name = format!("{MINIMAL}[upstreams.\"a b\"]\nbackends = [\"127.0.0.1:9\"]\n");
    assert!(err(&bad_name).contains("is not a group name"));
}

#[test]
fn shared_store_and_header_drafts_are_checked() {
    let s = parse_config(MINIMAL, "t.toml").unwrap();
    assert_eq!(s.rate_limit.redis, None);
    assert_eq!(s.rate_limit.headers, RateLimitHeaders::Both);
    let redis = format!(
        "{MINIMAL}[rate_limit]\nstore = \"redis\"\nheaders = \"ietf\"\n[rate_limit.redis]\nurl = \"redis://10.0.0.5:6380/2\"\ntimeout_ms = 15\non_error = \"deny\"\nkey_prefix = \"rl:\"\n"
    );
    let s = parse_config(&redis, "t.toml").unwrap();
    assert_eq!(
        s.rate_limit.redis,
        Some(RedisSettings {
            url: "redis://10.0.0.5:6380/2".into(),
            timeout: Duration::from_millis(15),
            on_error: OnStoreError::Deny,
            key_prefix: "rl:".into(),
        })
    );
    assert_eq!(s.rate_limit.headers, RateLimitHeaders::Ietf);
    let rl = |body: &str| format!("{MINIMAL}[rate_limit]\n{body}");
    for (body, expected) in [
        (
            "store = \"memcached\"\n",
            "rate_limit.store: \"memcached\" is not local or redis",
        ),
        (
            "headers = \"draft\"\n",
            "rate_limit.headers: \"draft\" is not legacy, ietf, both or none",
        ),
        (
            "store = \"redis\"\n[rate_limit.redis]\nurl = \"http://x\"\n",
            "rate_limit.redis.url: \"http://x\" is not a Redis URL",
        ),
        (
            "store = \"redis\"\n[rate_limit.redis]\ntimeout_ms = 0\n",
            "rate_limit.redis.timeout_ms: must be between 1 and 10000",
        ),
        (
            "store = \"redis\"\n[rate_limit.redis]\non_error = \"retry\"\n",
            "rate_limit.redis.on_error: \"retry\" is not local, allow or deny",
        ),
        (
            "store = \"redis\"\n[rate_limit.redis]\nkey_prefix = \"a{b}\"\n",
            "rate_limit.redis.key_prefix: must be 1-64 visible ASCII characters",
        ),
        (
            "store = \"redis\"\nrequests = 1000000000\nwindow_seconds = 86400\n",
            "rate_limit.requests: requests x window_seconds x 1000 must stay below 2^53",
        ),
        ("[rate_limit.redis]\nport = 1\n", "unknown field `port`"),
    ] {
        let e = err(&rl(body));
        assert!(e.contains(expected), "{body}: {e}");
    }
    // Checked even while unused: the typo shows before the store is switched on.
    assert!(
        err(&rl("[rate_limit.redis]\ntimeout_ms = 0\n")).contains("rate_limit.redis.timeout_ms")
    );
}

#[test]
fn upstream_tls_keys_are_checked() {
    let group =
        |body: &str| format!("{MINIMAL}[upstreams.g]\nbackends = [\"127.0.0.1:9\"]\n{body}");
    let s = parse_config(
        &group("tls = true\nsni = \"API.example.test\"\nca_file = \"ca.pem\"\n"),
        "t",
    )
    .unwrap();
    let tls = s.groups[1].tls.as_ref().unwrap();
    assert_eq!(tls.sni.as_deref(), Some("api.example.test"));
    assert_eq!(tls.ca_file.as_deref(), Some(std::path::Path::new("ca.pem")));
    assert!(parse_config(&group(""), "t").unwrap().groups[1]
        .tls
        .is_none());
    for (body, expected) in [
        (
            "sni = \"x.test\"\n",
            "upstreams.g.sni: only used with tls = true",
        ),
        (
            "ca_file = \"ca.pem\"\n",
            "upstreams.g.ca_file: only used with tls = true",
        ),
        (
            "tls = true\nsni = \"not a name\"\n",
            "upstreams.g.sni: \"not a name\" is not a host name",
        ),
    ] {
        let e = err(&group(body));
        assert!(e.contains(expected), "{body}: {e}");
    }
    // The roots are read when the settings are used: a missing file names the key and path.
    let mut s = parse_config(
        &group("tls = true\nca_file = \"/nonexistent/ca.pem\"\n"),
        "t",
    )
    .unwrap();
    let e = load_upstream_roots(&mut s).unwrap_err();
    assert!(
        e.starts_with("upstreams.g.ca_file \"/nonexistent/ca.pem\": cannot read"),
        "{e}"
    );
}

#[test]
fn resilience_tables_default_inherit_and_name_the_bad_key_with_its_line() {
    let text = format!(
        "{MINIMAL}[upstream.outlier]\nconsecutive_failures = 3\n[upstream.retry]\non = [\"gateway-error\"]\n\
         [upstream.limits]\nmax_requests = 7\n\
         [upstreams.api]\nbackends = [\"127.0.0.1:9002\"]\n[upstreams.api.outlier]\nbase_ejection_seconds = 9\n\
         [[routes]]\nname = \"api\"\nupstream = \"api\"\n"
    );
    let s = parse_config(&text, "test.toml").unwrap();
    let d = &s.upstream.default_group;
    assert_eq!(d.outlier.consecutive_failures, 3);
    assert_eq!(d.outlier.max_ejected_percent, 50);
    assert!(d.retry.on.gateway_error && !d.retry.on.reset);
    assert_eq!(d.max_requests, Some(7));
    let api = s.groups.iter().find(|g| &*g.name == "api").unwrap();
    // Outlier and retry keys left out are [upstream]'s; the circuit limit is not inherited.
    assert_eq!(api.outlier.consecutive_failures, 3);
    assert_eq!(api.outlier.base_ejection, Duration::from_secs(9));
    assert!(api.retry.on.gateway_error);
    assert_eq!(api.max_requests, None);

    let e = err(&format!(
        "{MINIMAL}[upstreams.api]\nbackends = [\"127.0.0.1:9002\"]\n[upstreams.api.retry]\non = [\"5xx\"]\n"
    ));
    assert!(
        e.starts_with("test.toml:6:")
            && e.contains("upstreams.api.retry.on: unknown condition \"5xx\""),
        "{e}"
    );
    let e = err(&format!(
        "{MINIMAL}[upstream.outlier]\nmax_ejected_percent = 150\n"
    ));
    assert!(
        e.starts_with("test.toml:4:") && e.contains("upstream.outlier.max_ejected_percent"),
        "{e}"
    );
    let e = err(&format!("{MINIMAL}[upstream.outlier]\nejection = 1\n"));
    assert!(e.contains("unknown field `ejection`"), "{e}");
}
