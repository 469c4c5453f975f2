use super::*;
use crate::config::parse_config;
use crate::observe::metrics::Metrics;

fn router(routes_toml: &str) -> Router {
    let text = format!(
        "[upstream]\nbackends = [\"127.0.0.1:9001\"]\n[upstreams.b]\nbackends = [\"127.0.0.1:9002\"]\n{routes_toml}"
    );
    let settings = parse_config(&text, "t.toml").unwrap();
    let metrics = Metrics::new().unwrap();
    Router::new(
        settings
            .routes
            .iter()
            .map(|r| {
                (
                    Route::new(r, 0, None, metrics.route(&r.name)),
                    r.host.clone(),
                )
            })
            .collect(),
    )
}

fn find<'a>(r: &'a Router, host: &str, path: &str, method: &str) -> Option<&'a str> {
    let mut buf = host_buffer();
    let host = host_key(host.as_bytes(), &mut buf);
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    r.find(host, path, &method)
        .map(|i| &*r.route(i).unwrap().name)
}

const ROUTES: &str = r#"
[[routes]]
name = "catch-all"
upstream = "b"
[[routes]]
name = "api"
path_prefix = "/api/"
upstream = "default"
[[routes]]
name = "api-v2"
path_prefix = "/api/v2/"
upstream = "default"
[[routes]]
name = "wild"
host = "*.example.com"
upstream = "b"
[[routes]]
name = "wild-deeper"
host = "*.eu.example.com"
upstream = "b"
[[routes]]
name = "exact"
host = "api.example.com"
path_prefix = "/orders/"
methods = ["GET", "post"]
upstream = "default"
[[routes]]
name = "exact-twin"
host = "api.example.com"
path_prefix = "/orders/"
upstream = "b"
"#;

#[test]
fn most_specific_host_then_longest_prefix_then_file_order() {
    let r = router(ROUTES);
    assert_eq!(find(&r, "other.org", "/", "GET"), Some("catch-all"));
    assert_eq!(find(&r, "other.org", "/api/x", "GET"), Some("api"));
    assert_eq!(find(&r, "other.org", "/api/v2/x", "GET"), Some("api-v2"));
    assert_eq!(find(&r, "www.example.com", "/api/x", "GET"), Some("wild"));
    assert_eq!(
        find(&r, "a.eu.example.com", "/", "GET"),
        Some("wild-deeper")
    );
    // The bare domain is not covered by its wildcard.
    assert_eq!(find(&r, "example.com", "/", "GET"), Some("catch-all"));
    assert_eq!(
        find(&r, "API.Example.com:8080", "/orders/1", "GET"),
        Some("exact")
    );
    assert_eq!(
        find(&r, "api.example.com.", "/orders/1", "POST"),
        Some("exact")
    );
    // Same host and prefix: file order decides, unless the methods rule the first out.
    assert_eq!(
        find(&r, "api.example.com", "/orders/1", "DELETE"),
        Some("exact-twin")
    );
    // The exact host's routes do not take the path: the wildcard's do.
    assert_eq!(find(&r, "api.example.com", "/other", "GET"), Some("wild"));
}

#[test]
fn nothing_matches_without_a_catch_all() {
    let r = router(
        r#"
[[routes]]
name = "api"
host = "api.example.com"
path_prefix = "/api/"
methods = ["GET"]
upstream = "b"
"#,
    );
    assert_eq!(find(&r, "api.example.com", "/api/x", "GET"), Some("api"));
    assert_eq!(find(&r, "api.example.com", "/api/x", "POST"), None);
    assert_eq!(find(&r, "api.example.com", "/", "GET"), None);
    assert_eq!(find(&r, "else.example.com", "/api/x", "GET"), None);
}

#[test]
fn host_keys_drop_port_case_and_trailing_dot() {
    let mut buf = host_buffer();
    assert_eq!(
        host_key(b"API.Example.COM:8080", &mut buf),
        Some("api.example.com")
    );
    assert_eq!(host_key(b"[::1]:8080", &mut buf), Some("[::1]"));
    assert_eq!(host_key(b"example.com.", &mut buf), Some("example.com"));
    assert_eq!(host_key(b"", &mut buf), None);
    assert_eq!(host_key(&[b'a'; 300], &mut buf), None);
}

#[test]
fn strip_prefix_keeps_a_leading_slash() {
    let r = router(
        r#"
[[routes]]
name = "api"
path_prefix = "/api/"
strip_prefix = true
upstream = "b"
[[routes]]
name = "bare"
path_prefix = "/v1"
strip_prefix = true
upstream = "b"
[[routes]]
name = "kept"
path_prefix = "/kept/"
upstream = "b"
"#,
    );
    let route = |name: &str| r.routes().iter().find(|x| &*x.name == name).unwrap();
    assert_eq!(
        route("api").stripped_path("/api/orders?x=1").as_deref(),
        Some("/orders?x=1")
    );
    assert_eq!(route("api").stripped_path("/api/").as_deref(), Some("/"));
    assert_eq!(route("bare").stripped_path("/v1").as_deref(), Some("/"));
    assert_eq!(route("bare").stripped_path("/v1/a").as_deref(), Some("/a"));
    assert_eq!(route("bare").stripped_path("/v1?q").as_deref(), Some("/?q"));
    assert_eq!(route("api").forwarded_prefix.as_ref().unwrap(), "/api");
    assert!(route("kept").stripped_path("/kept/x").is_none());
}

#[test]
fn prefixes_shorter_and_longer_than_a_word_match_exactly() {
    let r = router(
        r#"
[[routes]]
name = "eight"
path_prefix = "/abcdefg"
upstream = "b"
[[routes]]
name = "ten"
path_prefix = "/abcdefgh/"
upstream = "b"
[[routes]]
name = "long"
path_prefix = "/abcdefgh/ijklmnop/q"
upstream = "b"
[[routes]]
name = "one"
path_prefix = "/"
upstream = "b"
"#,
    );
    assert_eq!(find(&r, "h", "/abcdefgh/ijklmnop/qr", "GET"), Some("long"));
    assert_eq!(find(&r, "h", "/abcdefgh/ijklmnop/", "GET"), Some("ten"));
    assert_eq!(find(&r, "h", "/abcdefgh/", "GET"), Some("ten"));
    assert_eq!(find(&r, "h", "/abcdefgh", "GET"), Some("eight"));
    assert_eq!(find(&r, "h", "/abcdefgX/", "GET"), Some("eight"));
    assert_eq!(find(&r, "h", "/abcdef", "GET"), Some("one"));
    assert_eq!(find(&r, "h", "/", "GET"), Some("one"));
    assert_eq!(find(&r, "h", "/abcdefgh/ijklmnoX/q", "GET"), Some("ten"));
}
