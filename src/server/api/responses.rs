//! The bodies kiln answers with: OpenAI chat and completion objects, their streamed chunks, and
//! the native API's result. Built from the engine's events, collected per choice.

use serde_json::{json, Value};

use super::pricing::Prices;
use crate::engine::request::{FinishReason, TokenLogprob};

/// Which OpenAI object family a response belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Chat,
    Completion,
}

/// Everything one choice produced.
#[derive(Debug, Clone, Default)]
pub struct ChoiceResult {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub logprobs: Vec<TokenLogprob>,
    /// The text each token released, for logprob entries and offsets.
    pub token_texts: Vec<String>,
    pub finish_reason: Option<FinishReason>,
    /// Calls read from the text (which then holds only what was not a call).
    pub tool_calls: Vec<OutputToolCall>,
}

/// One function call of an answer, as OpenAI returns it; `arguments` is JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

impl OutputToolCall {
    pub fn to_json(&self) -> Value {
        json!({"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}})
    }
}

/// A choice that called tools and then stopped finishes with `tool_calls`.
pub fn chat_finish_reason(reason: Option<FinishReason>, called_tools: bool) -> Value {
    match reason {
        Some(FinishReason::Stop) if called_tools => json!("tool_calls"),
        other => finish_reason_str(other),
    }
}

pub fn finish_reason_str(reason: Option<FinishReason>) -> Value {
    match reason {
        Some(FinishReason::Stop) => json!("stop"),
        Some(FinishReason::Length) => json!("length"),
        Some(FinishReason::Cancelled) | None => Value::Null,
    }
}

pub struct ResponseMeta<'a> {
    pub id: &'a str,
    pub created: u64,
    pub model: &'a str,
    pub prices: Prices,
}

/// A request's prompt tokens, all its prompts together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PromptTokens {
    pub total: usize,
    /// Served from the prefix cache instead of computed (OpenAI's `cached_tokens`).
    pub cached: usize,
}

pub fn usage(meta: &ResponseMeta, prompt: PromptTokens, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt.total,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt.total + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": prompt.cached},
        "estimated_cost": meta.prices.cost_usd(prompt.total, completion_tokens),
    })
}

/// `token_text(id)` gives a token's text for logprob entries.
pub fn chat_logprobs(entries: &[TokenLogprob], token_text: &dyn Fn(u32) -> String) -> Value {
    let item = |id: u32, logprob: f32| {
        let text = token_text(id);
        json!({"token": text, "logprob": logprob, "bytes": text.as_bytes()})
    };
    let content: Vec<Value> = entries
        .iter()
        .map(|e| {
            let mut entry = item(e.token_id, e.logprob);
            entry["top_logprobs"] = Value::Array(e.top.iter().map(|&(id, lp)| item(id, lp)).collect());
            entry
        })
        .collect();
    json!({ "content": content })
}

pub fn completion_logprobs(
    entries: &[TokenLogprob],
    token_text: &dyn Fn(u32) -> String,
    text_offset_start: usize,
) -> Value {
    let mut offset = text_offset_start;
    let mut tokens = Vec::new();
    let mut token_logprobs = Vec::new();
    let mut top_logprobs = Vec::new();
    let mut text_offset = Vec::new();
    for e in entries {
        let text = token_text(e.token_id);
        text_offset.push(offset);
        offset += text.len();
        tokens.push(Value::String(text));
        token_logprobs.push(json!(e.logprob));
        let top: serde_json::Map<String, Value> = e.top.iter().map(|&(id, lp)| (token_text(id), json!(lp))).collect();
        top_logprobs.push(Value::Object(top));
    }
    json!({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs, "text_offset": text_offset})
}

/// The whole (non-streamed) OpenAI response.
#[allow(clippy::too_many_arguments)]
pub fn full_response(
    flavor: Flavor,
    meta: &ResponseMeta,
    choices: &[ChoiceResult],
    echo_prefix: Option<&[String]>,
    choices_per_prompt: usize,
    want_logprobs: bool,
    prompt: PromptTokens,
    token_text: &dyn Fn(u32) -> String,
) -> Value {
    let completion_tokens: usize = choices.iter().map(|c| c.token_ids.len()).sum();
    let choices: Vec<Value> = choices
        .iter()
        .enumerate()
        .map(|(index, c)| match flavor {
            Flavor::Chat => {
                let mut message = json!({"role": "assistant", "content": c.text});
                if !c.tool_calls.is_empty() {
                    // OpenAI's content is null when an answer only calls tools.
                    if c.text.trim().is_empty() {
                        message["content"] = Value::Null;
                    }
                    message["tool_calls"] = Value::Array(c.tool_calls.iter().map(OutputToolCall::to_json).collect());
                }
                json!({
                    "index": index,
                    "message": message,
                    "logprobs": if want_logprobs { chat_logprobs(&c.logprobs, token_text) } else { Value::Null },
                    "finish_reason": chat_finish_reason(c.finish_reason, !c.tool_calls.is_empty()),
                })
            }
            Flavor::Completion => {
                let prefix = echo_prefix.map(|p| p[index / choices_per_prompt.max(1)].as_str()).unwrap_or("");
                json!({
                    "index": index,
                    "text": format!("{prefix}{}", c.text),
                    "logprobs": if want_logprobs { completion_logprobs(&c.logprobs, token_text, prefix.len()) } else { Value::Null },
                    "finish_reason": finish_reason_str(c.finish_reason),
                })
            }
        })
        .collect();
    json!({
        "id": meta.id,
        "object": match flavor { Flavor::Chat => "chat.completion", Flavor::Completion => "text_completion" },
        "created": meta.created,
        "model": meta.model,
        "choices": choices,
        "usage": usage(meta, prompt, completion_tokens),
    })
}

/// One streamed chunk for one choice. `delta_text: None` with `role` is the opening chunk.
pub fn stream_chunk(
    flavor: Flavor,
    meta: &ResponseMeta,
    index: usize,
    role: bool,
    delta_text: Option<&str>,
    logprobs: Option<Value>,
    finish_reason: Option<FinishReason>,
) -> Value {
    let choice = match flavor {
        Flavor::Chat => {
            let mut delta = serde_json::Map::new();
            if role {
                delta.insert("role".into(), json!("assistant"));
                delta.insert("content".into(), json!(""));
            }
            if let Some(text) = delta_text {
                delta.insert("content".into(), json!(text));
            }
            json!({"index": index, "delta": delta, "logprobs": logprobs.unwrap_or(Value::Null), "finish_reason": finish_reason_str(finish_reason)})
        }
        Flavor::Completion => json!({
            "index": index,
            "text": delta_text.unwrap_or(""),
            "logprobs": logprobs.unwrap_or(Value::Null),
            "finish_reason": finish_reason_str(finish_reason),
        }),
    };
    json!({
        "id": meta.id,
        "object": match flavor { Flavor::Chat => "chat.completion.chunk", Flavor::Completion => "text_completion" },
        "created": meta.created,
        "model": meta.model,
        "choices": [choice],
    })
}

/// A streamed chat chunk carrying part of a call: the first of a call has its id and name, later
/// ones argument text only, as OpenAI streams `delta.tool_calls`.
pub fn tool_call_chunk(
    meta: &ResponseMeta,
    index: usize,
    call_index: usize,
    id: Option<&str>,
    name: Option<&str>,
    arguments: &str,
) -> Value {
    let mut call = json!({"index": call_index, "function": {"arguments": arguments}});
    if let Some(id) = id {
        call["id"] = json!(id);
        call["type"] = json!("function");
    }
    if let Some(name) = name {
        call["function"]["name"] = json!(name);
    }
    chat_chunk(meta, index, json!({"tool_calls": [call]}), Value::Null)
}

/// The last chunk of a chat choice that called tools.
pub fn tool_calls_finish_chunk(meta: &ResponseMeta, index: usize, reason: Option<FinishReason>) -> Value {
    chat_chunk(meta, index, json!({}), chat_finish_reason(reason, true))
}

fn chat_chunk(meta: &ResponseMeta, index: usize, delta: Value, finish_reason: Value) -> Value {
    json!({
        "id": meta.id,
        "object": "chat.completion.chunk",
        "created": meta.created,
        "model": meta.model,
        "choices": [{"index": index, "delta": delta, "logprobs": Value::Null, "finish_reason": finish_reason}],
    })
}

/// The final usage chunk of a stream (`stream_options.include_usage`): no choices.
pub fn usage_chunk(flavor: Flavor, meta: &ResponseMeta, prompt: PromptTokens, completion_tokens: usize) -> Value {
    json!({
        "id": meta.id,
        "object": match flavor { Flavor::Chat => "chat.completion.chunk", Flavor::Completion => "text_completion" },
        "created": meta.created,
        "model": meta.model,
        "choices": [],
        "usage": usage(meta, prompt, completion_tokens),
    })
}

/// One Server-Sent Event carrying a JSON value.
pub fn sse_event(value: &Value) -> Vec<u8> {
    let mut bytes = b"data: ".to_vec();
    serde_json::to_writer(&mut bytes, value).expect("a JSON value always serialises");
    bytes.extend_from_slice(b"\n\n");
    bytes
}

pub const SSE_DONE: &[u8] = b"data: [DONE]\n\n";

#[cfg(test)]
mod tests {
    use super::super::pricing::DEFAULT_PRICES;
    use super::*;

    fn meta() -> ResponseMeta<'static> {
        ResponseMeta { id: "chatcmpl-1", created: 7, model: "m", prices: DEFAULT_PRICES }
    }

    #[test]
    fn chat_response_shape() {
        let choice = ChoiceResult {
            text: "Paris.".into(),
            token_ids: vec![5, 6],
            finish_reason: Some(FinishReason::Stop),
            ..Default::default()
        };
        let prompt = PromptTokens { total: 10, cached: 4 };
        let v = full_response(Flavor::Chat, &meta(), &[choice], None, 1, false, prompt, &|id| id.to_string());
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["usage"]["prompt_tokens_details"], json!({"cached_tokens": 4}));
        assert_eq!(v["choices"][0]["message"]["content"], "Paris.");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["total_tokens"], 12);
        assert!((v["usage"]["estimated_cost"].as_f64().unwrap() - (10.0 * 0.64 + 2.0 * 0.8) / 1e6).abs() < 1e-15);
    }

    #[test]
    fn tool_calls_shape() {
        let call =
            OutputToolCall { id: "call_1".into(), name: "weather".into(), arguments: "{\"city\":\"Paris\"}".into() };
        let choice = ChoiceResult {
            text: "\n".into(),
            finish_reason: Some(FinishReason::Stop),
            tool_calls: vec![call.clone()],
            ..Default::default()
        };
        let v = full_response(Flavor::Chat, &meta(), &[choice], None, 1, false, PromptTokens::default(), &|id| {
            id.to_string()
        });
        let message = &v["choices"][0]["message"];
        assert_eq!(message["content"], Value::Null);
        assert_eq!(
            message["tool_calls"][0],
            json!({"id": "call_1", "type": "function",
                   "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}})
        );
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        let first = tool_call_chunk(&meta(), 0, 1, Some("call_1"), Some("weather"), "");
        assert_eq!(
            first["choices"][0]["delta"]["tool_calls"][0],
            json!({"index": 1, "id": "call_1", "type": "function", "function": {"name": "weather", "arguments": ""}})
        );
        let more = tool_call_chunk(&meta(), 0, 1, None, None, "{}");
        assert_eq!(more["choices"][0]["delta"]["tool_calls"][0], json!({"index": 1, "function": {"arguments": "{}"}}));
        let last = tool_calls_finish_chunk(&meta(), 0, Some(FinishReason::Length));
        assert_eq!(last["choices"][0]["finish_reason"], "length", "a cut call says so");
    }

    #[test]
    fn completion_echo_and_logprobs() {
        let lp = |id, logprob| TokenLogprob { token_id: id, logprob, top: vec![(id, logprob)] };
        let choice = ChoiceResult {
            text: "ab".into(),
            token_ids: vec![1, 2],
            logprobs: vec![lp(1, -0.5), lp(2, -1.0)],
            finish_reason: Some(FinishReason::Length),
            ..Default::default()
        };
        let names = |id: u32| ["", "a", "b"][id as usize].to_string();
        let prompt = PromptTokens { total: 3, cached: 0 };
        let v =
            full_response(Flavor::Completion, &meta(), &[choice], Some(&["Q: ".to_string()]), 1, true, prompt, &names);
        assert_eq!(v["choices"][0]["text"], "Q: ab");
        assert_eq!(v["choices"][0]["logprobs"]["text_offset"], json!([3, 4]));
        assert_eq!(v["choices"][0]["logprobs"]["top_logprobs"][1]["b"], json!(-1.0));
        assert_eq!(v["choices"][0]["finish_reason"], "length");
    }

    #[test]
    fn stream_chunks() {
        let first = stream_chunk(Flavor::Chat, &meta(), 0, true, None, None, None);
        assert_eq!(first["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
        assert_eq!(first["choices"][0]["finish_reason"], Value::Null);
        let last = stream_chunk(Flavor::Chat, &meta(), 1, false, None, None, Some(FinishReason::Length));
        assert_eq!(last["choices"][0]["delta"], json!({}));
        assert_eq!(last["choices"][0]["index"], 1);
        assert_eq!(sse_event(&json!({"a": 1})), b"data: {\"a\":1}\n\n");
        let usage = usage_chunk(Flavor::Chat, &meta(), PromptTokens { total: 1, cached: 1 }, 2);
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["prompt_tokens_details"]["cached_tokens"], 1);
    }
}
