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
            Flavor::Chat => json!({
                "index": index,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": if want_logprobs { chat_logprobs(&c.logprobs, token_text) } else { Value::Null },
                "finish_reason": finish_reason_str(c.finish_reason),
            }),
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
