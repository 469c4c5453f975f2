//! Adding several headers to a Pingora request or response at the cost of one map insert each.
//!
//! Pingora keeps, next to the `http` header map, a second map with each name's wire spelling,
//! and its `insert_header` parses and copies the name, inserts into both maps and may grow
//! both. For the ten headers the gateway adds to every exchange that was the largest cost it
//! added over bare Pingora (callgrind: ~20k of ~28k extra instructions per request). When header
//! case need not be kept (`headers.preserve_case = false`, what Envoy and HAProxy do), an edit
//! drops the spelling map and writes into the `http` map directly: pre-parsed names, one
//! reservation. Pingora then writes standard names in title case and the others in lower case.
//! With `preserve_case = true` edits go through Pingora's case-keeping inserts.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName};
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::{Error, ErrorType, OrErr, Result};

/// A header name as the map knows it, and as it is spelled on the wire when case is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Name {
    pub key: HeaderName,
    pub spelling: Bytes,
}

impl Name {
    /// `key` must be the lower-case form of `spelling` (checked by a unit test for ours).
    pub const fn from_static(key: &'static str, spelling: &'static str) -> Self {
        Self {
            key: HeaderName::from_static(key),
            spelling: Bytes::from_static(spelling.as_bytes()),
        }
    }

    /// A name given by the user (config), kept in the spelling written.
    pub fn parse(spelling: &str) -> Option<Self> {
        Some(Self {
            key: HeaderName::from_bytes(spelling.as_bytes()).ok()?,
            spelling: Bytes::copy_from_slice(spelling.as_bytes()),
        })
    }
}

/// Pingora's case-keeping header operations, the same on requests and responses.
pub trait CaseKeeping {
    fn insert_cased(&mut self, name: &Name, value: HeaderValue) -> Result<()>;
    fn remove_cased(&mut self, key: &HeaderName);
}

impl CaseKeeping for RequestHeader {
    fn insert_cased(&mut self, name: &Name, value: HeaderValue) -> Result<()> {
        self.insert_header(name.spelling.clone(), value)
    }
    fn remove_cased(&mut self, key: &HeaderName) {
        self.remove_header(key);
    }
}

impl CaseKeeping for ResponseHeader {
    fn insert_cased(&mut self, name: &Name, value: HeaderValue) -> Result<()> {
        self.insert_header(name.spelling.clone(), value)
    }
    fn remove_cased(&mut self, key: &HeaderName) {
        self.remove_header(key);
    }
}

/// Where an edit writes: straight into the `http` map, or through Pingora's inserts.
pub enum Editor<'a, H> {
    Map(&'a mut HeaderMap),
    Cased(&'a mut H),
}

impl<H: CaseKeeping> Editor<'_, H> {
    /// Replaces every value of `name` with `value`.
    pub fn insert(&mut self, name: &Name, value: HeaderValue) -> Result<()> {
        match self {
            Editor::Map(map) => map
                .try_insert(name.key.clone(), value)
                .map(drop)
                .or_err(ErrorType::InvalidHTTPHeader, "too many headers"),
            Editor::Cased(header) => header.insert_cased(name, value),
        }
    }

    pub fn remove(&mut self, key: &HeaderName) {
        match self {
            Editor::Map(map) => drop(map.remove(key)),
            Editor::Cased(header) => header.remove_cased(key),
        }
    }
}

/// Runs `edit` on `req`'s headers with room for `extra` more; see the module doc for `keep_case`.
pub fn edit_request(
    req: &mut RequestHeader,
    keep_case: bool,
    extra: usize,
    edit: impl FnOnce(&mut Editor<'_, RequestHeader>) -> Result<()>,
) -> Result<()> {
    if keep_case {
        return edit(&mut Editor::Cased(req));
    }
    // What `RequestHeader::from(Parts)` cannot carry: a request-target the URI does not
    // reproduce byte for byte (absolute-form, CONNECT, non-UTF-8) and the HTTP/2 end-stream flag.
    let verbatim_target = (!target_round_trips(req)).then(|| req.raw_path().to_vec());
    let send_end_stream = req.send_end_stream();
    let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts: http::request::Parts = std::mem::replace(req, placeholder).into();
    let edited = reserve(&mut parts.headers, extra)
        .and_then(|()| edit(&mut Editor::Map(&mut parts.headers)));
    *req = RequestHeader::from(parts);
    if let Some(target) = verbatim_target {
        req.set_raw_path(&target)?;
    }
    if let Some(flag) = send_end_stream {
        req.set_send_end_stream(flag);
    }
    edited
}

/// Runs `edit` on `resp`'s headers with room for `extra` more; see the module doc for `keep_case`.
pub fn edit_response(
    resp: &mut ResponseHeader,
    keep_case: bool,
    extra: usize,
    edit: impl FnOnce(&mut Editor<'_, ResponseHeader>) -> Result<()>,
) -> Result<()> {
    if keep_case {
        return edit(&mut Editor::Cased(resp));
    }
    // `ResponseHeader::from(Parts)` forgets a non-standard reason phrase; carry it over.
    let custom_reason = resp
        .get_reason_phrase()
        .filter(|r| Some(*r) != resp.status.canonical_reason())
        .map(str::to_owned);
    let placeholder = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts: http::response::Parts = std::mem::replace(resp, placeholder).into();
    let edited = reserve(&mut parts.headers, extra)
        .and_then(|()| edit(&mut Editor::Map(&mut parts.headers)));
    *resp = ResponseHeader::from(parts);
    if custom_reason.is_some() {
        resp.set_reason_phrase(custom_reason.as_deref())?;
    }
    edited
}

fn reserve(map: &mut HeaderMap, extra: usize) -> Result<()> {
    map.try_reserve(extra)
        .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "too many headers"))
}

/// Whether the URI alone reproduces the request-target Pingora would send.
fn target_round_trips(req: &RequestHeader) -> bool {
    req.raw_path_is_utf8()
        && req
            .uri
            .path_and_query()
            .is_some_and(|pq| pq.as_str().as_bytes() == req.raw_path())
}

#[cfg(test)]
mod tests {
    use super::*;

    const X_ONE: Name = Name::from_static("x-one", "X-One");

    fn wire(req: &RequestHeader) -> String {
        let mut buf = Vec::new();
        req.header_to_h1_wire(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }

    fn add_one(h: &mut Editor<'_, impl CaseKeeping>) -> Result<()> {
        h.insert(&X_ONE, HeaderValue::from_static("1"))
    }

    #[test]
    fn without_case_names_go_out_lower_case_and_standard_ones_titled() {
        let mut req = RequestHeader::build("GET", b"/a?b=1", None).unwrap();
        req.append_header("X-Client-Thing", "c").unwrap();
        req.append_header("content-type", "text/plain").unwrap();
        edit_request(&mut req, false, 1, add_one).unwrap();
        assert!(!req.has_case());
        let wire = wire(&req);
        assert!(wire.contains("x-client-thing: c\r\n"), "{wire}");
        assert!(wire.contains("Content-Type: text/plain\r\n"), "{wire}");
        assert!(wire.contains("x-one: 1\r\n"), "{wire}");
        assert_eq!(req.raw_path(), b"/a?b=1");
    }

    #[test]
    fn with_case_every_name_keeps_its_spelling() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("X-Client-Thing", "c").unwrap();
        edit_request(&mut req, true, 1, add_one).unwrap();
        let wire = wire(&req);
        assert!(wire.contains("X-Client-Thing: c\r\n"), "{wire}");
        assert!(wire.contains("X-One: 1\r\n"), "{wire}");
    }

    #[test]
    fn insert_replaces_every_earlier_value() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("x-one", "a").unwrap();
        req.append_header("x-one", "b").unwrap();
        edit_request(&mut req, false, 1, add_one).unwrap();
        let values: Vec<_> = req.headers.get_all("x-one").iter().collect();
        assert_eq!(values, ["1"]);
    }

    #[test]
    fn targets_the_uri_does_not_reproduce_survive_the_edit() {
        for target in [
            &b"http://example.com/a?b"[..],
            b"/caf\xe9?x=\xff",
            b"/plain",
            b"*",
        ] {
            let mut req = RequestHeader::build("GET", target, None).unwrap();
            let before = (req.raw_path().to_vec(), req.raw_path_is_utf8());
            edit_request(&mut req, false, 1, add_one).unwrap();
            assert_eq!((req.raw_path().to_vec(), req.raw_path_is_utf8()), before);
        }
        let mut req = RequestHeader::build("CONNECT", b"example.com:443", None).unwrap();
        edit_request(&mut req, false, 1, add_one).unwrap();
        assert_eq!(req.raw_path(), b"example.com:443");
    }

    #[test]
    fn responses_keep_status_and_a_custom_reason() {
        let mut resp = ResponseHeader::build(404, None).unwrap();
        resp.set_reason_phrase(Some("Nothing Here")).unwrap();
        resp.append_header("X-Backend", "b").unwrap();
        edit_response(&mut resp, false, 1, add_one).unwrap();
        assert_eq!(resp.status, 404);
        assert_eq!(resp.get_reason_phrase(), Some("Nothing Here"));
        assert_eq!(resp.headers["x-backend"], "b");
        assert_eq!(resp.headers["x-one"], "1");

        let mut resp = ResponseHeader::build(200, None).unwrap();
        edit_response(&mut resp, false, 1, add_one).unwrap();
        assert_eq!(resp.get_reason_phrase(), Some("OK"));
    }

    #[test]
    fn config_names_keep_their_spelling_and_bad_ones_are_refused() {
        let n = Name::parse("X-My-Header").unwrap();
        assert_eq!(n.key.as_str(), "x-my-header");
        assert_eq!(&n.spelling[..], b"X-My-Header");
        assert!(Name::parse("bad name").is_none());
    }
}
