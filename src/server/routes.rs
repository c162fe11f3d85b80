//! Routing: which handler answers which method and path, authentication, and the one place an
//! `ApiError` becomes a response.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use serde_json::json;

use super::api::error::ApiError;
use super::app::App;
use super::http::{Handler, Request, Responder, Response};
use super::respond::{error_response, json_response, send};
use super::{native_routes, openai_routes};

/// Handles every request of the server. The server listens while the model loads; until the app
/// is set, every route answers 503 (so `/health` tells a load balancer to wait).
pub struct Routes(pub Arc<OnceLock<Arc<App>>>);

impl Handler for Routes {
    fn handle(&self, request: Request, responder: &mut Responder<'_>) {
        let Some(app) = self.0.get() else {
            let _ = responder.send(error_response(&ApiError::not_ready()));
            return;
        };
        let route = route_name(&request.path);
        let status = match dispatch(app, &request, responder) {
            Ok(status) => status,
            Err(error) => {
                let status = error.status;
                // The client may be gone already; then there is nobody to tell.
                let _ = responder.send(error_response(&error));
                status
            }
        };
        app.metrics.count_response(route, status);
    }
}

/// The route label for metrics: fixed strings, so a client cannot grow the label set.
fn route_name(path: &str) -> &'static str {
    match path {
        "/health" => "/health",
        "/metrics" => "/metrics",
        "/v1/models" | "/v1/openai/models" => "/v1/models",
        "/v1/chat/completions" | "/v1/openai/chat/completions" => "/v1/chat/completions",
        "/v1/completions" | "/v1/openai/completions" => "/v1/completions",
        p if p.starts_with("/v1/inference/") => "/v1/inference",
        _ => "other",
    }
}

/// Runs the handler for the request; returns the status it answered with.
fn dispatch(app: &App, request: &Request, responder: &mut Responder<'_>) -> Result<u16, ApiError> {
    // HEAD is answered like GET; the HTTP layer drops the body.
    let method = if request.method == "HEAD" { "GET" } else { request.method.as_str() };
    let path = request.path.as_str();
    match (method, path) {
        ("GET", "/health") => {
            check_ready(app)?;
            send(responder, Response::json(200, br#"{"status":"ok"}"#.to_vec()))
        }
        ("GET", "/metrics") => {
            let text = super::metrics::render(&app.engine.metrics, &app.metrics);
            send(
                responder,
                Response::text(200, text).header("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
            )
        }
        (_, "/health" | "/metrics") => Err(ApiError::method_not_allowed(&request.method, path)),
        _ if path.starts_with("/v1/") => {
            authenticate(app, request)?;
            check_ready(app)?;
            match (method, path) {
                ("GET", "/v1/models" | "/v1/openai/models") => {
                    let body = json!({"object": "list", "data": [{
                        "id": app.model_name, "object": "model", "created": app.started_unix, "owned_by": "kiln",
                        "max_model_len": app.engine.max_position_embeddings(),
                    }]});
                    send(responder, json_response(200, &body))
                }
                ("POST", "/v1/chat/completions" | "/v1/openai/chat/completions") => {
                    openai_routes::chat(app, request, responder)
                }
                ("POST", "/v1/completions" | "/v1/openai/completions") => {
                    openai_routes::completions(app, request, responder)
                }
                ("POST", p) if p.starts_with("/v1/inference/") => {
                    let model = &p["/v1/inference/".len()..];
                    native_routes::inference(app, model, request, responder)
                }
                (
                    _,
                    "/v1/models"
                    | "/v1/openai/models"
                    | "/v1/chat/completions"
                    | "/v1/openai/chat/completions"
                    | "/v1/completions"
                    | "/v1/openai/completions",
                ) => Err(ApiError::method_not_allowed(&request.method, path)),
                _ => Err(ApiError::route_not_found(&request.method, path)),
            }
        }
        _ => Err(ApiError::route_not_found(&request.method, path)),
    }
}

/// Ready: the model is loaded and the engine has not failed.
fn check_ready(app: &App) -> Result<(), ApiError> {
    if let Some(cause) = app.engine.failure() {
        return Err(ApiError::engine_failed(cause));
    }
    if !app.ready.load(Ordering::SeqCst) {
        return Err(ApiError::not_ready());
    }
    Ok(())
}

/// With keys configured, `/v1/*` needs `Authorization: Bearer <key>` (or `X-API-Key: <key>`).
fn authenticate(app: &App, request: &Request) -> Result<(), ApiError> {
    if app.api_keys.is_empty() {
        return Ok(());
    }
    let presented = request
        .headers
        .get("authorization")
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .or_else(|| request.headers.get("x-api-key").map(str::trim));
    match presented {
        Some(key) if app.api_keys.iter().any(|k| constant_time_eq(k.as_bytes(), key.as_bytes())) => Ok(()),
        _ => Err(ApiError::unauthorized()),
    }
}

/// Compares keys without leaking through timing how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
