//! Turns a panic inside a request phase into an internal error (answered 500 with the JSON
//! body, logged with the request id) instead of a dropped connection.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use pingora::prelude::*;

/// Runs `fut`; a panic comes back as `Err` with its message, for [`panicked`] once the future's
/// borrows (of the request context, say) have ended.
pub async fn catch<T>(fut: impl Future<Output = T>) -> std::result::Result<T, String> {
    AssertUnwindSafe(fut)
        .catch_unwind()
        .await
        .map_err(|payload| panic_message(payload.as_ref()))
}

/// Logs a caught panic with the request id and turns it into `InternalError` naming the phase.
pub fn panicked(phase: &'static str, request_id: &str, message: &str) -> Box<Error> {
    tracing::error!(request_id, phase, panic = %message, "panic in a request phase; answering 500");
    Error::explain(InternalError, format!("panic in {phase}: {message}"))
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Debug builds only: `x-gateway-test-panic: <phase>` panics in that phase, so tests can
/// prove the guard. Release builds contain no trigger.
#[cfg(debug_assertions)]
pub fn injected(req: &pingora::http::RequestHeader, phase: &str) {
    if req
        .headers
        .get("x-gateway-test-panic")
        .is_some_and(|v| v.as_bytes() == phase.as_bytes())
    {
        panic!("injected test panic in {phase}");
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn injected(_req: &pingora::http::RequestHeader, _phase: &str) {}
