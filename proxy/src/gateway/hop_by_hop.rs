//! The hop-by-hop fields of a request, kept off the upstream hop (RFC 9110 §7.6.1).
//!
//! Pingora 0.9 does this itself under its standard upstream request policy
//! (`pingora_proxy::proxy_common::sanitize_h1_upstream_request`), but unconditionally: thirteen
//! header removals and a `Connection` parse on every request (3.5k instructions in bare
//! Pingora's callgrind profile), although almost no request carries any such field. The
//! gateway sets that policy to `preserve` on its peers ([`crate::upstream::group::Group::peer`])
//! and applies the same rules here, at the same point (each attempt's copy of the request,
//! before anything else edits it), after one pass over the field names that finds nothing to do
//! for most requests. (The policy also governs Pingora's HTTP/2 upstream requests; the
//! gateway's peers offer no ALPN `h2`, so every upstream request is HTTP/1.1 and goes through
//! here.)
//!
//! The rules, as Pingora's standard policy has them:
//! - each field the client's `Connection` nominates is removed; a nomination that is not an
//!   HTTP token, a pseudo-header, `Host` or an `X-Forwarded-{For,Host,Proto}`, or a tenth
//!   nomination, makes the request a bad one (`InvalidHTTPHeader`, downstream: a 400).
//!   One difference: a field the gateway itself sets on the request (`X-Request-Id`,
//!   `X-Forwarded-Prefix`, `[headers.request]`, the route's headers) stays. The client's own
//!   value of it never reaches the backend anyway, and under Pingora's policy, which runs after
//!   the gateway has added them, `Connection: X-Request-Id` or the name of an injected header
//!   removed the gateway's value;
//! - `Keep-Alive`, `Proxy-Connection`, `Proxy-Authenticate`, `Proxy-Authorization`, `TE`,
//!   `Trailer`, `Transfer-Encoding`, `Connection`, `Upgrade` and `HTTP2-Settings` are removed
//!   (Pingora frames a body again after the filters: chunked when it has no length);
//! - an HTTP/1.1 WebSocket handshake (`Upgrade: websocket`) goes on with exactly
//!   `Connection: Upgrade` and `Upgrade: websocket`; any other upgrade is not passed on.

use http::header::{self, HeaderName};
use pingora::http::RequestHeader;
use pingora::{Error, ErrorType::InvalidHTTPHeader, Result};

/// Pingora's limit: the tenth nomination is refused.
const MAX_NOMINATIONS: usize = 10;

/// The fields removed from every upstream request, whatever `Connection` says.
const HOP_BY_HOP: [&str; 10] = [
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "connection",
    "upgrade",
    "http2-settings",
];

/// Removes what must not go past this hop from `req`, the copy of the client's request about
/// to go upstream. `downstream_http11`: the client spoke HTTP/1.1 (a WebSocket handshake is
/// only passed on then). `set_by_gateway`: the fields the gateway has set on it, which a
/// nomination does not remove. An error is the client's: its `Connection` header is refused.
pub fn strip(
    req: &mut RequestHeader,
    downstream_http11: bool,
    set_by_gateway: impl Fn(&HeaderName) -> bool,
) -> Result<()> {
    if !req.headers.keys().any(is_hop_by_hop) {
        // No `Connection` (so nothing nominated), no `Upgrade`, nothing to remove.
        return Ok(());
    }
    let nominated = nominations(req)?;
    let websocket = downstream_http11
        && req
            .headers
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    for name in nominated.iter().flatten().filter(|n| !set_by_gateway(n)) {
        req.remove_header(name);
    }
    for name in HOP_BY_HOP {
        req.remove_header(name);
    }
    if websocket {
        req.insert_header(header::CONNECTION, "Upgrade")?;
        req.insert_header(header::UPGRADE, "websocket")?;
    }
    Ok(())
}

/// One of [`HOP_BY_HOP`] (a `match`: a length switch, not ten comparisons per field).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "connection"
            | "upgrade"
            | "http2-settings"
    )
}

/// The fields `Connection` nominates (at most nine), or the client's error.
fn nominations(req: &RequestHeader) -> Result<[Option<HeaderName>; MAX_NOMINATIONS]> {
    let mut names: [Option<HeaderName>; MAX_NOMINATIONS] = Default::default();
    let tokens = req
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty());
    for (i, token) in tokens.enumerate() {
        if i + 1 >= MAX_NOMINATIONS {
            return refuse("too many Connection header nominations");
        }
        if token.starts_with(b":") {
            return refuse("protected header cannot be nominated by the Connection header");
        }
        if !token.iter().all(|b| is_tchar(*b)) {
            return refuse("invalid token nominated by the Connection header");
        }
        let Ok(name) = HeaderName::from_bytes(token) else {
            return refuse("invalid token nominated by the Connection header");
        };
        if matches!(
            name.as_str(),
            "host" | "x-forwarded-for" | "x-forwarded-host" | "x-forwarded-proto"
        ) {
            return refuse("protected header cannot be nominated by the Connection header");
        }
        names[i] = Some(name);
    }
    Ok(names)
}

fn refuse<T>(why: &'static str) -> Result<T> {
    Err(Error::explain(InvalidHTTPHeader, why).into_down())
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).unwrap();
        }
        req
    }

    fn names(req: &RequestHeader) -> Vec<String> {
        let mut v: Vec<String> = req.headers.keys().map(|k| k.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn the_quick_check_knows_every_hop_by_hop_field() {
        for name in HOP_BY_HOP {
            assert!(is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
        for name in ["host", "accept", "x-forwarded-for", "proxy", "t"] {
            assert!(!is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
    }

    #[test]
    fn a_request_without_hop_by_hop_fields_is_left_as_it_is() {
        let mut req = request(&[("Host", "a"), ("X-One", "1"), ("Accept", "*/*")]);
        strip(&mut req, true, |_| false).unwrap();
        assert_eq!(names(&req), ["accept", "host", "x-one"]);
    }

    #[test]
    fn hop_by_hop_and_nominated_fields_go() {
        let mut req = request(&[
            ("Host", "a"),
            ("Connection", "keep-alive, X-A"),
            ("Connection", "x-b"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Transfer-Encoding", "chunked"),
            ("X-A", "1"),
            ("X-B", "2"),
            ("X-C", "3"),
        ]);
        strip(&mut req, true, |_| false).unwrap();
        assert_eq!(names(&req), ["host", "x-c"]);
    }

    #[test]
    fn a_nomination_does_not_remove_what_the_gateway_set() {
        let mut req = request(&[
            ("Connection", "x-request-id, x-client"),
            ("X-Request-Id", "gw-1"),
            ("X-Client", "c"),
        ]);
        strip(&mut req, true, |n| n == "x-request-id").unwrap();
        assert_eq!(names(&req), ["x-request-id"]);
    }

    #[test]
    fn only_a_websocket_upgrade_goes_on_and_only_from_http11() {
        let ws = [
            ("Connection", "Upgrade, keep-alive"),
            ("Upgrade", "WebSocket"),
        ];
        let mut req = request(&ws);
        strip(&mut req, true, |_| false).unwrap();
        assert_eq!(req.headers["connection"], "Upgrade");
        assert_eq!(req.headers["upgrade"], "websocket");
        let mut req = request(&ws);
        strip(&mut req, false, |_| false).unwrap();
        assert!(names(&req).is_empty(), "{:?}", names(&req));
        let mut req = request(&[("Connection", "Upgrade"), ("Upgrade", "h2c")]);
        strip(&mut req, true, |_| false).unwrap();
        assert!(names(&req).is_empty(), "{:?}", names(&req));
    }

    #[test]
    fn bad_nominations_are_the_clients_error() {
        let nine = "a, b, c, d, e, f, g, h, i";
        assert!(strip(&mut request(&[("Connection", nine)]), true, |_| false).is_ok());
        for bad in [
            format!("{nine}, j"),
            "Host".into(),
            "X-Forwarded-For".into(),
            ":authority".into(),
            "\"x\"".into(),
            "a b".into(),
        ] {
            let e = strip(&mut request(&[("Connection", &bad)]), true, |_| false).unwrap_err();
            assert_eq!(e.etype(), &InvalidHTTPHeader, "{bad}");
            assert_eq!(e.esource(), &pingora::ErrorSource::Downstream, "{bad}");
        }
    }
}
