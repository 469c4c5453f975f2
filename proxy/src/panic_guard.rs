//! Turns a panic inside a request phase into an internal error (answered 500 with the JSON
//! body, logged with the request id) instead of a dropped connection.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use pingora::prelude::*;

/// Runs `phase`; a panic becomes `InternalError` naming the phase and the panic message.
pub async fn guard<T>(
    phase: &'static str,
    request_id: impl Fn() -> String,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(result) => result,
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            let request_id = request_id();
            tracing::error!(request_id, phase, panic = %message, "panic in a request phase; answering 500");
            Error::e_explain(InternalError, format!("panic in {phase}: {message}"))
        }
    }
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
