//! From a validated request to engine requests and back: tokenizing prompts, checking the context,
//! submitting one engine request per prompt, and collecting the events of every choice.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

use super::api::error::ApiError;
use super::api::logit_bias;
use super::api::responses::sse_event;
use super::api::responses::{ChoiceResult, PromptTokens};
use super::api::tools::{ToolChoice, ToolUse};
use super::api::valid::{PromptInput, ResponseFormat, ValidGeneration};
use super::app::App;
use super::caller::Caller;
use super::http::{BodyStream, Responder, WaitError};
use crate::engine::json_schema::{CompiledSchema, SchemaError};
use crate::engine::request::{ConstraintFactory, EngineEvent, EngineRequest, EventSink, RequestParams, TokenLogprob};
use crate::tokenizer::TokenizerError;

/// Said with every refused schema, so a client learns what it can write instead.
const SUPPORTED_SCHEMA_FEATURES: &str = "Supported: type, properties, required, additionalProperties, items, \
minItems, maxItems, enum, const, anyOf, allOf with one schema, $ref to $defs, pattern, format (date, time, \
date-time, uuid, email), minLength, maxLength.";

/// Prompts ready for the engine.
pub struct PreparedPrompts {
    pub prompt_ids: Vec<Vec<u32>>,
    /// Each prompt as text, for `echo`.
    pub prompt_texts: Vec<String>,
    pub max_tokens: usize,
    pub continues_prompt: bool,
}

impl PreparedPrompts {
    pub fn prompt_tokens(&self) -> usize {
        self.prompt_ids.iter().map(Vec::len).sum()
    }
}

pub fn prepare(app: &App, valid: &ValidGeneration) -> Result<PreparedPrompts, ApiError> {
    let tokenizer = &app.tokenizer;
    let (prompt_ids, prompt_texts, continues_prompt) = match &valid.prompt {
        PromptInput::Chat(messages) => {
            let text = match &valid.tools {
                Some(tool_use) => tokenizer.apply_chat_template_with_tools(messages, &tool_use.tools, true),
                None => tokenizer.apply_chat_template(messages, true),
            }
            .map_err(chat_error)?;
            let ids = tokenizer.encode(&text, false).map_err(|e| ApiError::internal(e.to_string()))?;
            (vec![ids], vec![text], false)
        }
        PromptInput::Text(texts) => {
            let ids = texts
                .iter()
                .map(|t| tokenizer.encode(t, true).map_err(|e| ApiError::internal(e.to_string())))
                .collect::<Result<Vec<_>, _>>()?;
            (ids, texts.clone(), true)
        }
        PromptInput::Tokens(lists) => {
            let vocab = tokenizer.vocab_size() as u32;
            if let Some(bad) = lists.iter().flatten().find(|&&id| id >= vocab) {
                return Err(ApiError::invalid_param(
                    "prompt",
                    format!("Token id {bad} is outside the vocabulary of {vocab} tokens."),
                ));
            }
            let texts = lists.iter().map(|ids| tokenizer.decode(ids)).collect();
            (lists.clone(), texts, true)
        }
    };
    logit_bias::check_vocabulary(&valid.sampling.logit_bias, tokenizer.vocab_size())?;
    if let Some(empty) = prompt_ids.iter().position(Vec::is_empty) {
        return Err(ApiError::invalid_param(
            "prompt",
            format!("Prompt {empty} is empty: there is nothing to continue."),
        ));
    }
    let context = app.engine.max_sequence_tokens();
    let longest = prompt_ids.iter().map(Vec::len).max().unwrap_or(0);
    let room = context.saturating_sub(longest);
    // A prompt that leaves no room names the prompt; one that leaves too little for what was
    // asked names the length asked for.
    let exceeded = |requested: usize| {
        let field = if room == 0 { valid.prompt_field } else { valid.max_tokens_field };
        ApiError::context_length_exceeded(longest, requested, context).for_param(field)
    };
    let max_tokens = match valid.max_tokens {
        Some(requested) if requested > room => {
            if valid.cap_max_tokens_to_context && room > 0 {
                room
            } else {
                return Err(exceeded(requested));
            }
        }
        Some(requested) => requested,
        None if room == 0 => return Err(exceeded(1)),
        None => room,
    };
    Ok(PreparedPrompts { prompt_ids, prompt_texts, max_tokens, continues_prompt })
}

/// A chat the template refuses names `messages`; a model without a template is the request's problem.
pub fn chat_error(error: TokenizerError) -> ApiError {
    match error {
        TokenizerError::ChatTemplate(message) => ApiError::invalid_param("messages", message),
        TokenizerError::NoChatTemplate => ApiError::bad_request(error.to_string()),
        other => ApiError::internal(other.to_string()),
    }
}

/// The events of every prompt's engine request, tagged with the prompt's index.
pub type TaggedEvent = (usize, EngineEvent);

struct MaySink {
    prompt: usize,
    sender: may::sync::mpsc::Sender<TaggedEvent>,
    /// Generated tokens count against the caller's key as they are produced.
    caller: Caller,
}

impl EventSink for MaySink {
    fn send(&mut self, event: EngineEvent) -> bool {
        if let EngineEvent::Token { .. } = event {
            self.caller.count_generated_token();
        }
        self.sender.send((self.prompt, event)).is_ok()
    }
}

/// Submitted work: its events arrive on `events`; `cancel()` stops every part of it.
pub struct Submitted {
    pub events: may::sync::mpsc::Receiver<TaggedEvent>,
    cancel_flags: Vec<Arc<AtomicBool>>,
}

impl Submitted {
    pub fn cancel(&self) {
        for flag in &self.cancel_flags {
            flag.store(true, Ordering::Relaxed);
        }
    }
}

pub fn submit(
    app: &App,
    caller: &Caller,
    valid: &ValidGeneration,
    prepared: &PreparedPrompts,
) -> Result<Submitted, ApiError> {
    let (sender, events) = may::sync::mpsc::channel();
    let constraint: Option<ConstraintFactory> = match (&valid.response_format, &valid.tools) {
        (_, Some(tool_use)) if tool_use.choice != ToolChoice::Auto => Some(tool_call_constraint(app, tool_use)?),
        (ResponseFormat::Text, _) => None,
        (ResponseFormat::JsonObject, _) => Some(app.schemas.json_object()),
        (ResponseFormat::JsonSchema { schema, param }, _) => Some(app.schemas.json_schema(schema).map_err(|e| {
            ApiError::invalid_param(param, format!("`{param}` cannot be used: {e}. {SUPPORTED_SCHEMA_FEATURES}"))
        })?),
    };
    let params = RequestParams {
        max_new_tokens: prepared.max_tokens,
        sampling: valid.sampling.clone(),
        stop_strings: valid.stop.clone(),
        stop_token_ids: if valid.ignore_eos { Vec::new() } else { app.stop_token_ids.clone() },
        n: valid.n,
        top_logprobs: valid.logprobs,
        constraint,
        continues_prompt: prepared.continues_prompt,
    };
    let submitted = Submitted { events, cancel_flags: Vec::new() };
    let mut submitted = submitted;
    for (prompt, ids) in prepared.prompt_ids.iter().enumerate() {
        let cancel = Arc::new(AtomicBool::new(false));
        let request = EngineRequest {
            prompt_ids: ids.clone(),
            params: params.clone(),
            sink: Box::new(MaySink { prompt, sender: sender.clone(), caller: caller.clone() }),
            cancel: cancel.clone(),
        };
        if let Err(error) = app.engine.submit(request) {
            // Parts already queued must not run for nobody.
            submitted.cancel();
            return Err(error.into());
        }
        submitted.cancel_flags.push(cancel);
    }
    caller.count_prompt_tokens(prepared.prompt_tokens() as u64);
    Ok(submitted)
}

/// The output of a request that must call a tool, as vLLM constrains it whatever the model's
/// own call format: a named function's arguments object, or for `required` a JSON list of
/// `{"name", "arguments"}` calls (one when `parallel_tool_calls` is false). Both are read back by
/// `tool_output`.
fn tool_call_constraint(app: &App, tool_use: &ToolUse) -> Result<ConstraintFactory, ApiError> {
    let refused = |index: usize, e: SchemaError| {
        let param = format!("tools[{index}].function.parameters");
        ApiError::invalid_param(
            &param,
            format!("`{param}` cannot constrain a call (tool_choice asks for one): {e}. {SUPPORTED_SCHEMA_FEATURES}"),
        )
    };
    match tool_use.choice {
        ToolChoice::Named(index) => app.schemas.json_schema(tool_use.parameters(index)).map_err(|e| refused(index, e)),
        _ => {
            let calls: Vec<Value> = (0..tool_use.tools.len())
                .map(|index| {
                    json!({"type": "object", "properties": {"name": {"const": tool_use.name(index)},
                           "arguments": tool_use.parameters(index)},
                           "required": ["name", "arguments"], "additionalProperties": false})
                })
                .collect();
            let mut list = json!({"type": "array", "items": {"anyOf": calls}, "minItems": 1});
            if !tool_use.parallel {
                list["maxItems"] = json!(1);
            }
            app.schemas.json_schema(&list).map_err(|e| {
                // Only on a refusal is each function compiled alone, to name the one at fault.
                (0..tool_use.tools.len())
                    .find_map(|index| {
                        CompiledSchema::compile(tool_use.parameters(index)).err().map(|e| refused(index, e))
                    })
                    .unwrap_or_else(|| ApiError::invalid_param("tools", e.to_string()))
            })
        }
    }
}

/// How waiting for a whole answer ended.
pub enum Waited {
    /// Every choice finished.
    Complete,
    /// The client disconnected; the generation was cancelled and nobody is left to answer.
    ClientGone,
}

/// How often a waiting handler checks whether its client is still there: well under one step.
pub const DISCONNECT_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// Collects every event of a non-streamed request, cancelling it if the client leaves.
pub fn wait_for_all(
    responder: &Responder<'_>,
    submitted: &Submitted,
    collector: &mut Collector,
) -> Result<Waited, ApiError> {
    while !collector.is_done() {
        match responder.wait_for(&submitted.events, DISCONNECT_POLL) {
            Ok(event) => {
                if let Progress::Failed(message) = collector.apply(event) {
                    submitted.cancel();
                    return Err(ApiError::internal(message));
                }
            }
            Err(WaitError::ClientGone) => {
                submitted.cancel();
                return Ok(Waited::ClientGone);
            }
            Err(interrupted) => {
                submitted.cancel();
                return Err(interruption_error(interrupted));
            }
        }
    }
    Ok(Waited::Complete)
}

/// The error a request gets when waiting for its engine events ends without one (other than by
/// the client leaving).
fn interruption_error(error: WaitError) -> ApiError {
    match error {
        WaitError::ShutdownTimeout => ApiError::shutdown_timeout(),
        WaitError::ChannelClosed | WaitError::ClientGone => ApiError::internal("the engine stopped before finishing"),
    }
}

/// Ends a stream whose wait for the next event failed: the work is cancelled and, unless the
/// client left, the stream closes with an error event (never `[DONE]`). Returns the status to
/// log.
pub fn end_interrupted_stream(body: BodyStream<'_, '_>, submitted: &Submitted, error: WaitError) -> u16 {
    submitted.cancel();
    if error == WaitError::ClientGone {
        return CLIENT_CLOSED;
    }
    end_stream_with_error(body, &interruption_error(error))
}

/// Closes a started stream with `error` as its last event; returns the status to log.
pub fn end_stream_with_error(mut body: BodyStream<'_, '_>, error: &ApiError) -> u16 {
    let _ = body.send(&sse_event(&error.body()));
    let _ = body.finish();
    error.status
}

/// The status logged for a request whose client left: nginx's "client closed request".
pub const CLIENT_CLOSED: u16 = 499;

/// What one event did to the collected results.
pub enum Progress {
    /// Choice `index` got a token with this text (and its log-probabilities when asked).
    Token {
        index: usize,
        text: String,
        token_id: u32,
        logprob: Option<TokenLogprob>,
    },
    /// Choice `index` finished; `text` is its last released text.
    Finished {
        index: usize,
        text: String,
    },
    Failed(String),
}

/// The results of every choice, indexed `prompt * n + choice` as OpenAI numbers them.
pub struct Collector {
    pub choices: Vec<ChoiceResult>,
    n: usize,
    open: usize,
    /// Per prompt: its tokens the prefix cache held (every choice of a prompt reports the same).
    cached_prompt_tokens: Vec<usize>,
}

impl Collector {
    pub fn new(prompts: usize, n: usize) -> Collector {
        Collector {
            choices: vec![ChoiceResult::default(); prompts * n],
            n,
            open: prompts * n,
            cached_prompt_tokens: vec![0; prompts],
        }
    }

    /// The request's prompt tokens, and how many of them came from the prefix cache.
    pub fn prompt_tokens(&self, prepared: &PreparedPrompts) -> PromptTokens {
        PromptTokens { total: prepared.prompt_tokens(), cached: self.cached_prompt_tokens.iter().sum() }
    }

    pub fn is_done(&self) -> bool {
        self.open == 0
    }

    pub fn completion_tokens(&self) -> usize {
        self.choices.iter().map(|c| c.token_ids.len()).sum()
    }

    pub fn apply(&mut self, (prompt, event): TaggedEvent) -> Progress {
        match event {
            EngineEvent::Token { choice, token_id, text, logprob } => {
                let index = prompt * self.n + choice;
                let c = &mut self.choices[index];
                c.text.push_str(&text);
                c.token_ids.push(token_id);
                c.token_texts.push(text.clone());
                if let Some(lp) = &logprob {
                    c.logprobs.push(lp.clone());
                }
                Progress::Token { index, text, token_id, logprob }
            }
            EngineEvent::Finished { choice, reason, text, cached_prompt_tokens, .. } => {
                if let Some(cached) = self.cached_prompt_tokens.get_mut(prompt) {
                    *cached = (*cached).max(cached_prompt_tokens);
                }
                let index = prompt * self.n + choice;
                let c = &mut self.choices[index];
                c.text.push_str(&text);
                if c.finish_reason.is_none() {
                    c.finish_reason = Some(reason);
                    self.open -= 1;
                }
                Progress::Finished { index, text }
            }
            EngineEvent::Error { message } => Progress::Failed(message),
        }
    }
}
