//! `POST /v1/chat/completions` and `POST /v1/completions` (also under `/v1/openai/`): validated
//! requests go to the engine; the answer is one JSON object or a stream of Server-Sent Events.

use super::api::error::ApiError;
use super::api::openai::{parse_chat, parse_completion};
use serde_json::Value;

use super::api::responses::{
    chat_logprobs, completion_logprobs, full_response, sse_event, stream_chunk, tool_call_chunk,
    tool_calls_finish_chunk, usage_chunk, Flavor, ResponseMeta, SSE_DONE,
};
use super::api::valid::ValidGeneration;
use super::app::{unix_now, App};
use super::caller::Caller;
use super::generation::{
    end_interrupted_stream, end_stream_with_error, prepare, submit, wait_for_all, Collector, PreparedPrompts, Progress,
    Submitted, Waited, CLIENT_CLOSED, DISCONNECT_POLL,
};
use super::http::{BodyStream, Request, Responder, Response};
use super::respond::{json_response, send};
use super::tool_output::{read_calls, CallReading, CallStream, StreamDelta};

pub fn chat(app: &App, caller: &Caller, request: &Request, responder: &mut Responder<'_>) -> Result<u16, ApiError> {
    let valid = parse_chat(&request.body)?;
    generate(app, caller, Flavor::Chat, valid, responder)
}

pub fn completions(
    app: &App,
    caller: &Caller,
    request: &Request,
    responder: &mut Responder<'_>,
) -> Result<u16, ApiError> {
    let valid = parse_completion(&request.body)?;
    generate(app, caller, Flavor::Completion, valid, responder)
}

fn generate(
    app: &App,
    caller: &Caller,
    flavor: Flavor,
    valid: ValidGeneration,
    responder: &mut Responder<'_>,
) -> Result<u16, ApiError> {
    app.check_model(valid.model.as_deref())?;
    let prepared = prepare(app, &valid)?;
    let submitted = submit(app, caller, &valid, &prepared)?;
    // The object's id is the request's (the client's `X-Request-Id` when it sent one) behind
    // OpenAI's prefix, so a client can find its request in the server's log.
    let prefix = match flavor {
        Flavor::Chat => "chatcmpl-",
        Flavor::Completion => "cmpl-",
    };
    let id = format!("{prefix}{}", caller.request_id);
    let meta = ResponseMeta { id: &id, created: unix_now(), model: &app.model_name, prices: app.prices };
    let running = Running { app, flavor, valid: &valid, prepared: &prepared, submitted: &submitted, meta: &meta };
    if valid.stream {
        stream(&running, responder)
    } else {
        whole(&running, responder)
    }
}

/// A submitted request and everything its answer is built from.
struct Running<'a> {
    app: &'a App,
    flavor: Flavor,
    valid: &'a ValidGeneration,
    prepared: &'a PreparedPrompts,
    submitted: &'a Submitted,
    meta: &'a ResponseMeta<'a>,
}

/// A token's text in log-probability lists: special tokens are empty there as in `text` (an
/// echoed prompt of token ids may hold them), so the tokens always add up to the text.
fn token_text(app: &App) -> impl Fn(u32) -> String + '_ {
    move |id| {
        if app.tokenizer.is_special(id) {
            String::new()
        } else {
            String::from_utf8_lossy(app.tokenizer.token_bytes(id)).into_owned()
        }
    }
}

/// Waits for every choice, then answers with one JSON object.
fn whole(running: &Running, responder: &mut Responder<'_>) -> Result<u16, ApiError> {
    let Running { app, flavor, valid, prepared, submitted, meta } = *running;
    let mut collector = Collector::new(prepared.prompt_ids.len(), valid.n);
    if let Waited::ClientGone = wait_for_all(responder, submitted, &mut collector)? {
        return Ok(CLIENT_CLOSED);
    }
    if let Some(tool_use) = &valid.tools {
        let reading = CallReading::for_request(tool_use, app.tool_call_format);
        for choice in &mut collector.choices {
            let (content, calls) = read_calls(&reading, &choice.text);
            choice.text = content;
            choice.tool_calls = calls;
        }
    }
    let echo = valid.echo.then_some(prepared.prompt_texts.as_slice());
    let body = full_response(
        flavor,
        meta,
        &collector.choices,
        echo,
        valid.n,
        valid.logprobs.is_some(),
        collector.prompt_tokens(prepared),
        &token_text(app),
    );
    send(responder, json_response(200, &body))
}

/// Streams chunks as tokens arrive: the role first (chat), content deltas, a chunk with the
/// finish reason per choice, the usage chunk when asked, then `[DONE]`.
fn stream(running: &Running, responder: &mut Responder<'_>) -> Result<u16, ApiError> {
    let Running { app, flavor, valid, prepared, submitted, meta } = *running;
    let head = Response::new(200)
        .header("Content-Type", "text/event-stream")
        .header("Cache-Control", "no-cache")
        .header("X-Accel-Buffering", "no");
    let Ok(mut body) = responder.stream(head) else {
        submitted.cancel();
        return Ok(CLIENT_CLOSED);
    };
    let mut collector = Collector::new(prepared.prompt_ids.len(), valid.n);
    if flavor == Flavor::Chat {
        for index in 0..collector.choices.len() {
            if body.send(&sse_event(&stream_chunk(flavor, meta, index, true, None, None, None))).is_err() {
                submitted.cancel();
                return Ok(CLIENT_CLOSED);
            }
        }
    }
    let token_text = token_text(app);
    // Each choice's calls, read as its text streams (chat with tools only).
    let mut calls: Vec<Option<CallStream>> = (0..collector.choices.len())
        .map(|_| valid.tools.as_ref().map(|t| CallStream::new(CallReading::for_request(t, app.tool_call_format))))
        .collect();
    while !collector.is_done() {
        let event = match body.wait_for(&submitted.events, DISCONNECT_POLL) {
            Ok(event) => event,
            Err(error) => return Ok(end_interrupted_stream(body, submitted, error)),
        };
        let chunk = match collector.apply(event) {
            Progress::Token { index, text, logprob, .. } => {
                let logprobs = valid.logprobs.map(|_| {
                    let entry: Vec<_> = logprob.into_iter().collect();
                    match flavor {
                        Flavor::Chat => chat_logprobs(&entry, &token_text),
                        Flavor::Completion => completion_logprobs(&entry, &token_text, 0),
                    }
                });
                if let Some(reader) = calls[index].as_mut() {
                    let deltas = reader.push(&text);
                    if send_deltas(&mut body, meta, index, deltas, logprobs).is_err() {
                        submitted.cancel();
                        return Ok(CLIENT_CLOSED);
                    }
                    continue;
                }
                // Held-back text (a partial character or a possible stop string) sends nothing yet.
                if text.is_empty() && logprobs.is_none() {
                    continue;
                }
                stream_chunk(flavor, meta, index, false, Some(&text), logprobs, None)
            }
            Progress::Finished { index, text } => {
                let reason = collector.choices[index].finish_reason;
                if let Some(reader) = calls[index].as_mut() {
                    let mut deltas = reader.push(&text);
                    deltas.extend(reader.finish());
                    if send_deltas(&mut body, meta, index, deltas, None).is_err() {
                        submitted.cancel();
                        return Ok(CLIENT_CLOSED);
                    }
                    if reader.made_calls() {
                        tool_calls_finish_chunk(meta, index, reason)
                    } else {
                        stream_chunk(flavor, meta, index, false, None, None, reason)
                    }
                } else {
                    if !text.is_empty() {
                        let tail = stream_chunk(flavor, meta, index, false, Some(&text), None, None);
                        if body.send(&sse_event(&tail)).is_err() {
                            submitted.cancel();
                            return Ok(CLIENT_CLOSED);
                        }
                    }
                    let empty = match flavor {
                        Flavor::Chat => None,
                        Flavor::Completion => Some(""),
                    };
                    stream_chunk(flavor, meta, index, false, empty, None, reason)
                }
            }
            Progress::Failed(message) => {
                submitted.cancel();
                return Ok(end_stream_with_error(body, &ApiError::internal(message)));
            }
        };
        if body.send(&sse_event(&chunk)).is_err() {
            submitted.cancel();
            return Ok(CLIENT_CLOSED);
        }
    }
    if valid.include_usage {
        let usage = usage_chunk(flavor, meta, collector.prompt_tokens(prepared), collector.completion_tokens());
        if body.send(&sse_event(&usage)).is_err() {
            return Ok(CLIENT_CLOSED);
        }
    }
    let _ = body.send(SSE_DONE);
    let _ = body.finish();
    Ok(200)
}

/// Sends a streamed chat choice's content and call deltas; a token's log-probabilities go with
/// its first chunk (or alone in an empty content chunk when the text is held back).
fn send_deltas(
    body: &mut BodyStream<'_, '_>,
    meta: &ResponseMeta,
    index: usize,
    deltas: Vec<StreamDelta>,
    mut logprobs: Option<Value>,
) -> Result<(), ()> {
    for delta in deltas {
        let chunk = match delta {
            StreamDelta::Content(text) => {
                stream_chunk(Flavor::Chat, meta, index, false, Some(&text), logprobs.take(), None)
            }
            StreamDelta::Call { index: call, id, name, arguments } => {
                tool_call_chunk(meta, index, call, id.as_deref(), name.as_deref(), &arguments)
            }
        };
        body.send(&sse_event(&chunk)).map_err(|_| ())?;
    }
    if let Some(logprobs) = logprobs {
        let chunk = stream_chunk(Flavor::Chat, meta, index, false, Some(""), Some(logprobs), None);
        body.send(&sse_event(&chunk)).map_err(|_| ())?;
    }
    Ok(())
}
