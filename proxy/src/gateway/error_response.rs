//! Answers the gateway writes itself (429, 502, 503, 504, 4xx/500): the contract's JSON body,
//! and the one place where errors are mapped to status codes.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use crate::gateway::proxy_headers::add_downstream_headers;
use crate::gateway::request_ctx::RequestCtx;

/// The message (and error context) of a 503 for a group at its `limits.max_requests`.
pub const OVERLOADED: &str = "upstream overloaded";

/// The message of a client that stopped reading (a downstream write timeout): nothing is sent,
/// and `fail_to_proxy` counts it by this message.
pub const CLIENT_STOPPED_READING: &str = "client stopped reading";

/// Status and short message for a failed proxy attempt, by the error's type and source.
pub fn classify(e: &Error) -> (u16, &'static str) {
    use pingora::ErrorSource;
    match e.etype() {
        HTTPStatus(503) if e.context.as_ref().is_some_and(|c| c.as_str() == OVERLOADED) => {
            (503, OVERLOADED)
        }
        HTTPStatus(503) => (503, "no healthy backend"),
        HTTPStatus(502) => (502, "no backend could be reached"),
        HTTPStatus(429) => (429, "rate limited"),
        HTTPStatus(code) if (400..600).contains(code) => (*code, "request failed"),
        ReadTimedout | WriteTimedout if *e.esource() == ErrorSource::Upstream => {
            (504, "upstream timeout")
        }
        _ => match e.esource() {
            ErrorSource::Upstream => (502, "no backend could be reached"),
            // The client went away or sent garbage.
            ErrorSource::Downstream => match e.etype() {
                ReadError | WriteError | ConnectionClosed => (0, "client closed the connection"),
                // The client stopped reading: nothing more can reach it.
                WriteTimedout => (0, CLIENT_STOPPED_READING),
                ReadTimedout => (408, "client timeout"),
                _ => (400, "bad request"),
            },
            _ => (500, "internal error"),
        },
    }
}

/// `{"error": ..., "status": N, "request_id": ...}`.
pub fn error_body(message: &str, status: u16, request_id: &str) -> Bytes {
    let body = serde_json::json!({
        "error": message,
        "status": status,
        "request_id": request_id,
    });
    let mut text = body.to_string();
    text.push('\n');
    Bytes::from(text)
}

/// Writes a JSON error answer with all the headers every response carries.
pub async fn write_error(
    session: &mut Session,
    ctx: &RequestCtx,
    status: u16,
    message: &str,
    keepalive: bool,
) -> Result<()> {
    let body = error_body(message, status, ctx.request_id());
    let mut resp = ResponseHeader::build(status, Some(8))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    if !keepalive {
        resp.insert_header(http::header::CONNECTION, "close")?;
    }
    add_downstream_headers(&mut resp, ctx, None)?;
    if !keepalive {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_the_contract_fields() {
        let b = error_body("rate limited", 429, "abc");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"], "rate limited");
        assert_eq!(v["status"], 429);
        assert_eq!(v["request_id"], "abc");
    }

    #[test]
    fn statuses_map_by_type_and_source() {
        let e = Error::explain(HTTPStatus(503), "none");
        assert_eq!(classify(&e).0, 503);
        // Raised by upstream_peer when every backend tried has failed.
        let e = Error::explain(HTTPStatus(502), "every backend tried failed");
        assert_eq!(classify(&e), (502, "no backend could be reached"));
        let mut e = Error::new(ReadTimedout);
        e.as_up();
        assert_eq!(classify(&e).0, 504);
        let mut e = Error::new(ConnectRefused);
        e.as_up();
        assert_eq!(classify(&e).0, 502);
        let mut e = Error::new(ConnectionClosed);
        e.as_down();
        assert_eq!(classify(&e).0, 0);
        let mut e = Error::new(InvalidHTTPHeader);
        e.as_down();
        assert_eq!(classify(&e).0, 400);
    }
}
