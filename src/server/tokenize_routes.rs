//! `POST /tokenize` and `POST /detokenize` (vLLM's shapes): the served model's tokenizer over
//! HTTP, so that a client can count a prompt's tokens, or read ids back as text, the way the
//! server itself would. Nothing reaches the engine.

use serde_json::json;

use super::api::error::ApiError;
use super::api::tokenize::{parse_detokenize, parse_tokenize, TokenizeInput};
use super::app::App;
use super::generation::chat_error;
use super::http::{Request, Responder};
use super::respond::{json_response, send};

/// `{"count", "max_model_len", "tokens"}`: a prompt's ids as a completions request would
/// tokenize it, or a chat's as a chat request would render and tokenize it.
pub fn tokenize(app: &App, request: &Request, responder: &mut Responder<'_>) -> Result<u16, ApiError> {
    let parsed = parse_tokenize(&request.body)?;
    app.check_model(parsed.model.as_deref())?;
    let tokenizer = &app.tokenizer;
    let tokens = match &parsed.input {
        TokenizeInput::Prompt { text, add_special_tokens } => tokenizer.encode(text, *add_special_tokens),
        TokenizeInput::Chat { messages, add_generation_prompt, add_special_tokens } => {
            let text = tokenizer.apply_chat_template(messages, *add_generation_prompt).map_err(chat_error)?;
            tokenizer.encode(&text, *add_special_tokens)
        }
    }
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let body = json!({"count": tokens.len(), "max_model_len": app.engine.max_sequence_tokens(), "tokens": tokens});
    send(responder, json_response(200, &body))
}

/// `{"prompt"}`: the ids' text, special tokens included (as vLLM answers), so that a rendered
/// chat's ids give the rendered chat back.
pub fn detokenize(app: &App, request: &Request, responder: &mut Responder<'_>) -> Result<u16, ApiError> {
    let parsed = parse_detokenize(&request.body)?;
    app.check_model(parsed.model.as_deref())?;
    let vocab = app.tokenizer.vocab_size();
    if let Some(bad) = parsed.tokens.iter().find(|&&id| id as usize >= vocab) {
        return Err(ApiError::invalid_param(
            "tokens",
            format!("Token id {bad} is outside the vocabulary of {vocab} tokens."),
        ));
    }
    // No sequence of this model is longer: a bound on the work and the answer's size that a
    // client can read from /v1/models.
    let context = app.engine.max_sequence_tokens();
    if parsed.tokens.len() > context {
        return Err(ApiError::invalid_param(
            "tokens",
            format!("`tokens` may hold at most {context} ids (max_model_len); got {}.", parsed.tokens.len()),
        ));
    }
    let body = json!({"prompt": app.tokenizer.decode_with_special(&parsed.tokens)});
    send(responder, json_response(200, &body))
}
