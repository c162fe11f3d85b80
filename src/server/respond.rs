//! Turning results into responses: the helpers every route uses, kept apart from the dispatcher
//! so that route files import them without importing the router.

use super::api::error::ApiError;
use super::http::{Responder, Response};

/// The one place an `ApiError` becomes a response.
pub fn error_response(error: &ApiError) -> Response {
    let response = Response::json(error.status, error.body_bytes());
    match error.retry_after_secs {
        Some(seconds) => response.header("Retry-After", seconds.to_string()),
        None => response,
    }
}

pub fn json_response(status: u16, body: &serde_json::Value) -> Response {
    Response::json(status, serde_json::to_vec(body).expect("a JSON value always serialises"))
}

/// Sends `response` and returns its status for the metrics. A failed send means the client
/// left; nothing more to do, and the status is still counted.
pub fn send(responder: &mut Responder<'_>, response: Response) -> Result<u16, ApiError> {
    let status = response.status;
    let _ = responder.send(response);
    Ok(status)
}
