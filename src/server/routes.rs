//! Routing: which handler answers which method and path, authentication, and the one place an
//! `ApiError` becomes a response.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use serde_json::json;

use super::api::error::ApiError;
use super::app::App;
use super::caller::Caller;
use super::http::{Handler, Request, Responder, Response};
use super::rate_limit::KeyState;
use super::request_id::request_id;
use super::respond::{error_response, json_response, send};
use super::{native_routes, openai_routes, tokenize_routes};

/// Handles every request of the server. The server listens while the model loads; until the app
/// is set, every route but liveness answers 503 (so `/health` tells a load balancer to wait).
pub struct Routes(pub Arc<OnceLock<Arc<App>>>);

impl Handler for Routes {
    fn handle(&self, request: Request, responder: &mut Responder<'_>) {
        let started = Instant::now();
        let mut caller = Caller::new(request_id(&request.headers));
        // On every answer, errors and streams included.
        responder.add_header("X-Request-Id", caller.request_id.to_string());
        let status = match self.0.get() {
            Some(app) => {
                let status = match dispatch(app, &mut caller, &request, responder) {
                    Ok(status) => status,
                    Err(error) => {
                        // The client may be gone already; then there is nobody to tell.
                        let _ = responder.send(error_response(&error));
                        error.status
                    }
                };
                app.metrics.count_response(route_name(&request.path), status);
                status
            }
            None if is_liveness(&request) => {
                // Loading is alive: a liveness probe must not restart a server that is loading.
                let _ = responder.send(Response::json(200, br#"{"status":"alive"}"#.to_vec()));
                200
            }
            None => {
                let error = ApiError::not_ready();
                let _ = responder.send(error_response(&error));
                error.status
            }
        };
        access_log(&request, status, started, &caller);
    }
}

fn is_liveness(request: &Request) -> bool {
    matches!(request.method.as_str(), "GET" | "HEAD") && request.path == "/health/live"
}

/// The route label for metrics: fixed strings, so a client cannot grow the label set.
fn route_name(path: &str) -> &'static str {
    match path {
        "/health" | "/health/ready" => "/health",
        "/health/live" => "/health/live",
        "/metrics" => "/metrics",
        "/openapi.json" => "/openapi.json",
        "/v1/models" | "/v1/openai/models" => "/v1/models",
        p if model_path(p).is_some() => "/v1/models/{model}",
        "/tokenize" => "/tokenize",
        "/detokenize" => "/detokenize",
        "/v1/chat/completions" | "/v1/openai/chat/completions" => "/v1/chat/completions",
        "/v1/completions" | "/v1/openai/completions" => "/v1/completions",
        p if p.starts_with("/v1/inference/") => "/v1/inference",
        _ => "other",
    }
}

/// Runs the handler for the request; returns the status it answered with.
fn dispatch(app: &App, caller: &mut Caller, request: &Request, responder: &mut Responder<'_>) -> Result<u16, ApiError> {
    // HEAD is answered like GET; the HTTP layer drops the body.
    let method = if request.method == "HEAD" { "GET" } else { request.method.as_str() };
    let path = request.path.as_str();
    match (method, path) {
        ("GET", "/health/live") => {
            check_live(app)?;
            send(responder, Response::json(200, br#"{"status":"alive"}"#.to_vec()))
        }
        ("GET", "/health" | "/health/ready") => {
            check_ready(app, responder)?;
            send(responder, Response::json(200, br#"{"status":"ok"}"#.to_vec()))
        }
        ("GET", "/metrics") => {
            let text = super::metrics::render(&app.engine.metrics, &app.metrics, &app.model_name);
            send(
                responder,
                Response::text(200, text).header("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
            )
        }
        ("GET", "/openapi.json") => send(responder, Response::json(200, include_bytes!("openapi.json").to_vec())),
        (_, "/health" | "/health/ready" | "/health/live" | "/metrics" | "/openapi.json") => {
            Err(ApiError::method_not_allowed(&request.method, path))
        }
        _ if path.starts_with("/v1/") || matches!(path, "/tokenize" | "/detokenize") => {
            caller.key = authenticate(app, request)?;
            let caller = &*caller;
            check_ready(app, responder)?;
            // Held until the answer is complete: the key's concurrency limit counts it meanwhile.
            let _admitted = caller.key.as_ref().map(|key| key.admit()).transpose()?;
            match (method, path) {
                ("GET", "/v1/models" | "/v1/openai/models") => {
                    send(responder, json_response(200, &json!({"object": "list", "data": [model_object(app)]})))
                }
                ("GET", p) if model_path(p).is_some() => {
                    app.check_model(model_path(p))?;
                    send(responder, json_response(200, &model_object(app)))
                }
                ("POST", "/tokenize") => tokenize_routes::tokenize(app, request, responder),
                ("POST", "/detokenize") => tokenize_routes::detokenize(app, request, responder),
                ("POST", "/v1/chat/completions" | "/v1/openai/chat/completions") => {
                    openai_routes::chat(app, caller, request, responder)
                }
                ("POST", "/v1/completions" | "/v1/openai/completions") => {
                    openai_routes::completions(app, caller, request, responder)
                }
                ("POST", p) if p.starts_with("/v1/inference/") => {
                    let model = &p["/v1/inference/".len()..];
                    native_routes::inference(app, caller, model, request, responder)
                }
                (
                    _,
                    "/v1/models"
                    | "/v1/openai/models"
                    | "/v1/chat/completions"
                    | "/v1/openai/chat/completions"
                    | "/v1/completions"
                    | "/v1/openai/completions"
                    | "/tokenize"
                    | "/detokenize",
                ) => Err(ApiError::method_not_allowed(&request.method, path)),
                (_, p) if model_path(p).is_some() => Err(ApiError::method_not_allowed(&request.method, path)),
                _ => Err(ApiError::route_not_found(&request.method, path)),
            }
        }
        _ => Err(ApiError::route_not_found(&request.method, path)),
    }
}

/// The model id of `/v1/models/{model}` (also under `/v1/openai/`).
fn model_path(path: &str) -> Option<&str> {
    path.strip_prefix("/v1/models/")
        .or_else(|| path.strip_prefix("/v1/openai/models/"))
        .filter(|model| !model.is_empty())
}

/// The served model as OpenAI's model object.
fn model_object(app: &App) -> serde_json::Value {
    json!({
        "id": app.model_name, "object": "model", "created": app.started_unix, "owned_by": "kiln",
        // What a request can use: the model's context, or less when the KV cache is smaller.
        "max_model_len": app.engine.max_sequence_tokens(),
    })
}

/// Live: the engine loop goes round (it has not failed, and no step has run longer than the
/// liveness limit). A supervisor restarts a server that is not.
fn check_live(app: &App) -> Result<(), ApiError> {
    if let Some(cause) = app.engine.failure() {
        return Err(ApiError::engine_failed(cause));
    }
    let stalled = app.engine.heartbeat_age();
    if stalled > app.liveness_timeout {
        return Err(ApiError::engine_stalled(stalled, app.liveness_timeout));
    }
    Ok(())
}

/// Ready: the model is loaded, the engine has not failed and the server is not draining.
fn check_ready(app: &App, responder: &Responder<'_>) -> Result<(), ApiError> {
    if let Some(cause) = app.engine.failure() {
        return Err(ApiError::engine_failed(cause));
    }
    if !app.ready.load(Ordering::SeqCst) {
        return Err(ApiError::not_ready());
    }
    if responder.draining() {
        return Err(ApiError::shutting_down());
    }
    Ok(())
}

/// With keys configured, `/v1/*` needs `Authorization: Bearer <key>` (or `X-API-Key: <key>`);
/// returns the key's state, for its limits.
fn authenticate(app: &App, request: &Request) -> Result<Option<Arc<KeyState>>, ApiError> {
    if app.api_keys.is_empty() {
        return Ok(None);
    }
    let presented = request
        .headers
        .get("authorization")
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .or_else(|| request.headers.get("x-api-key").map(str::trim));
    match presented.and_then(|key| app.api_keys.find(key)) {
        Some(key) => Ok(Some(key)),
        None => Err(ApiError::unauthorized()),
    }
}

/// The longest path the access log prints; longer ones are cut (a client chooses the path).
const LOGGED_PATH_BYTES: usize = 200;

/// One line per request, at info level under the `access` target: never the key, the prompt or
/// the query string.
fn access_log(request: &Request, status: u16, started: Instant, caller: &Caller) {
    let mut path = request.path.as_str();
    if path.len() > LOGGED_PATH_BYTES {
        let mut end = LOGGED_PATH_BYTES;
        while !path.is_char_boundary(end) {
            end -= 1;
        }
        path = &path[..end];
    }
    let usage = &caller.usage;
    tracing::info!(
        target: "access",
        "{} {:?} {status} {:.1}ms tokens_in={} tokens_out={} id={} key={} peer={}",
        request.method,
        path,
        started.elapsed().as_secs_f64() * 1e3,
        usage.prompt_tokens(),
        usage.completion_tokens(),
        caller.request_id,
        caller.key.as_ref().map(|key| key.label.as_str()).unwrap_or("-"),
        request.peer_addr,
    );
}
