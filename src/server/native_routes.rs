//! `POST /v1/inference/{model}`: the native API. Answers with the generated texts and an
//! `inference_status` (runtime, cost, token counts); streams tokens as SSE; or, with a webhook,
//! answers `queued` at once and POSTs the same result body to the webhook when done.

use std::time::Instant;

use serde_json::{json, Value};

use super::api::error::ApiError;
use super::api::native::parse_native;
use super::api::pricing::Prices;
use super::api::responses::{finish_reason_str, sse_event, SSE_DONE};
use super::app::App;
use super::caller::Caller;
use super::generation::{
    end_interrupted_stream, end_stream_with_error, prepare, submit, wait_for_all, Collector, Progress, Submitted,
    TaggedEvent, Waited, CLIENT_CLOSED, DISCONNECT_POLL,
};
use super::http::{Request, Responder, Response};
use super::respond::{json_response, send};

pub fn inference(
    app: &App,
    caller: &Caller,
    model: &str,
    request: &Request,
    responder: &mut Responder<'_>,
) -> Result<u16, ApiError> {
    app.check_model(Some(model))?;
    let native = parse_native(&request.body)?;
    let valid = native.generation;
    let webhook = match &native.webhook {
        Some(url) => Some(app.webhooks.check(url).map_err(|e| ApiError::invalid_param("webhook", e.to_string()))?),
        None => None,
    };
    let prepared = prepare(app, &valid)?;
    let started = Instant::now();
    let submitted = submit(app, caller, &valid, &prepared)?;
    let id = caller.request_id.to_string();
    let input_tokens = prepared.prompt_tokens();
    let status = |state: &str, runtime_ms: u128, generated: usize| {
        json!({
            "status": state,
            "runtime_ms": runtime_ms,
            "cost": app.prices.cost_usd(input_tokens, generated),
            "tokens_generated": generated,
            "tokens_input": input_tokens,
        })
    };
    let prices = app.prices;
    let result_body =
        |collector: &Collector, runtime_ms: u128| result_json(collector, input_tokens, &id, runtime_ms, prices);

    if let Some(target) = webhook {
        // Reply now; a thread waits for the result and delivers it (retries and timeouts included).
        let queued = json!({"request_id": id, "inference_status": status("queued", 0, 0)});
        let policy = app.webhooks.clone();
        let (events, n) = (submitted, valid.n);
        let request_id = id.clone();
        std::thread::Builder::new()
            .name("kiln-webhook".into())
            .spawn(move || {
                let mut collector = Collector::new(1, n);
                let outcome = collect_blocking(&events, &mut collector);
                let runtime_ms = started.elapsed().as_millis();
                let body = match outcome {
                    Ok(()) => result_json(&collector, input_tokens, &request_id, runtime_ms, prices),
                    Err(message) => json!({"request_id": request_id, "inference_status": {"status": "failed", "runtime_ms": runtime_ms}, "error": message}),
                };
                let bytes = serde_json::to_vec(&body).expect("a JSON value always serialises");
                if let Err(e) = policy.deliver(&target, &bytes) {
                    tracing::warn!("webhook for request {request_id}: {e}");
                }
            })
            .map_err(|e| ApiError::internal(format!("starting the webhook delivery: {e}")))?;
        return send(responder, json_response(200, &queued));
    }

    let mut collector = Collector::new(1, valid.n);
    if !valid.stream {
        if let Waited::ClientGone = wait_for_all(responder, &submitted, &mut collector)? {
            return Ok(CLIENT_CLOSED);
        }
        return send(responder, json_response(200, &result_body(&collector, started.elapsed().as_millis())));
    }

    let head = Response::new(200).header("Content-Type", "text/event-stream").header("Cache-Control", "no-cache");
    let Ok(mut body) = responder.stream(head) else {
        submitted.cancel();
        return Ok(CLIENT_CLOSED);
    };
    while !collector.is_done() {
        let event = match body.wait_for(&submitted.events, DISCONNECT_POLL) {
            Ok(event) => event,
            Err(error) => return Ok(end_interrupted_stream(body, &submitted, error)),
        };
        let message: Value = match collector.apply(event) {
            Progress::Token { text, token_id, logprob, .. } => json!({
                "token": {"id": token_id, "text": text, "logprob": logprob.map(|l| l.logprob), "special": false},
                "generated_text": null,
                "details": null,
            }),
            Progress::Finished { text, .. } => {
                let choice = &collector.choices[0];
                let generated = collector.completion_tokens();
                json!({
                    "token": {"id": null, "text": text, "logprob": null, "special": false},
                    "generated_text": choice.text,
                    "details": {"finish_reason": finish_reason_str(choice.finish_reason), "input_length": input_tokens, "output_length": generated},
                    "num_output_tokens": generated,
                    "num_input_tokens": input_tokens,
                    "request_id": id,
                    "inference_status": status("succeeded", started.elapsed().as_millis(), generated),
                })
            }
            Progress::Failed(message) => {
                submitted.cancel();
                return Ok(end_stream_with_error(body, &ApiError::internal(message)));
            }
        };
        if body.send(&sse_event(&message)).is_err() {
            submitted.cancel();
            return Ok(CLIENT_CLOSED);
        }
    }
    let _ = body.send(SSE_DONE);
    let _ = body.finish();
    Ok(200)
}

/// The native API's answer: the texts, the token counts and the priced status.
fn result_json(
    collector: &Collector,
    input_tokens: usize,
    request_id: &str,
    runtime_ms: u128,
    prices: Prices,
) -> Value {
    let generated = collector.completion_tokens();
    json!({
        "results": collector.choices.iter().map(|c| json!({"generated_text": c.text})).collect::<Vec<_>>(),
        "num_tokens": generated,
        "num_input_tokens": input_tokens,
        "request_id": request_id,
        "inference_status": {
            "status": "succeeded",
            "runtime_ms": runtime_ms,
            "cost": prices.cost_usd(input_tokens, generated),
            "tokens_generated": generated,
            "tokens_input": input_tokens,
        },
    })
}

/// Collects every event on a plain thread (webhook deliveries run outside the may scheduler).
fn collect_blocking(submitted: &Submitted, collector: &mut Collector) -> Result<(), String> {
    while !collector.is_done() {
        let event: TaggedEvent =
            submitted.events.recv().map_err(|_| "the engine stopped before finishing".to_string())?;
        if let Progress::Failed(message) = collector.apply(event) {
            return Err(message);
        }
    }
    Ok(())
}
