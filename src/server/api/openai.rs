//! OpenAI's `/v1/chat/completions` and `/v1/completions` requests: parsing and validation into a
//! `ValidGeneration`. OpenAI's fields kiln does not honour are refused or accepted by
//! `openai_params`; unknown fields are ignored, as OpenAI does.

use serde_json::Value;

use super::error::ApiError;
use super::fields::{whole_number, Fields};
use super::logit_bias::parse_logit_bias;
use super::openai_params;
use super::tools::{parse_assistant_calls, parse_tool_use, tool_result};
use super::valid::{Message, PromptInput, ValidGeneration};
use crate::engine::sampler::SamplingParams;

use super::limits::{MAX_COMPLETION_LOGPROBS, MAX_MESSAGES, MAX_PROMPTS};
pub use super::limits::{MAX_N, MAX_STOP_SEQUENCES, MAX_TOP_LOGPROBS};
/// OpenAI's default `max_tokens` for the legacy completions endpoint.
pub const COMPLETIONS_DEFAULT_MAX_TOKENS: usize = 16;

pub fn parse_chat(body: &[u8]) -> Result<ValidGeneration, ApiError> {
    let f = Fields::parse(body)?;
    openai_params::check(&f, openai_params::CHAT)?;
    let messages = parse_messages(&f)?;
    let mut valid = common(&f)?;
    valid.prompt = PromptInput::Chat(messages);
    valid.tools = parse_tool_use(&f)?;
    valid.prompt_field = "messages";
    // Chat logprobs: `logprobs: true` plus optional `top_logprobs`.
    let logprobs = f.bool("logprobs")?.unwrap_or(false);
    let top = f.u64_in("top_logprobs", 0, MAX_TOP_LOGPROBS)?;
    if top.is_some() && !logprobs {
        return Err(ApiError::invalid_param("top_logprobs", "`top_logprobs` requires `logprobs` to be true."));
    }
    valid.logprobs = logprobs.then(|| top.unwrap_or(0) as usize);
    Ok(valid)
}

pub fn parse_completion(body: &[u8]) -> Result<ValidGeneration, ApiError> {
    let f = Fields::parse(body)?;
    openai_params::check(&f, openai_params::COMPLETIONS)?;
    let mut valid = common(&f)?;
    valid.prompt = parse_prompt(&f)?;
    valid.prompt_field = "prompt";
    // Completions logprobs: an integer count of alternatives.
    valid.logprobs = f.u64_in("logprobs", 0, MAX_COMPLETION_LOGPROBS)?.map(|k| k as usize);
    valid.echo = f.bool("echo")?.unwrap_or(false);
    if valid.echo && valid.stream {
        return Err(ApiError::invalid_param("echo", "`echo` cannot be combined with `stream`."));
    }
    valid.max_tokens = Some(valid.max_tokens.unwrap_or(COMPLETIONS_DEFAULT_MAX_TOKENS));
    Ok(valid)
}

/// The fields both endpoints share.
fn common(f: &Fields) -> Result<ValidGeneration, ApiError> {
    let (max_tokens, max_tokens_field) = match f.u64_in("max_completion_tokens", 1, u32::MAX as u64)? {
        Some(v) => (Some(v), "max_completion_tokens"),
        None => (f.u64_in("max_tokens", 1, u32::MAX as u64)?, "max_tokens"),
    };
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = match f.get("stream_options") {
        None => false,
        Some(Value::Object(options)) => {
            if !stream {
                return Err(ApiError::invalid_param(
                    "stream_options",
                    "`stream_options` is only allowed when `stream` is true.",
                ));
            }
            match options.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(ApiError::invalid_param(
                        "stream_options",
                        "`stream_options.include_usage` must be true or false.",
                    ))
                }
            }
        }
        Some(_) => return Err(ApiError::invalid_param("stream_options", "`stream_options` must be an object.")),
    };
    let sampling = SamplingParams {
        temperature: f.f32_in("temperature", 0.0, 2.0)?.unwrap_or(1.0),
        top_p: f.positive_f32("top_p", 1.0)?.unwrap_or(1.0),
        top_k: f.u64_in("top_k", 0, 100_000)?.unwrap_or(0) as usize,
        min_p: f.f32_in("min_p", 0.0, 1.0)?.unwrap_or(0.0),
        repetition_penalty: f.f32_in("repetition_penalty", 0.01, 5.0)?.unwrap_or(1.0),
        presence_penalty: f.f32_in("presence_penalty", -2.0, 2.0)?.unwrap_or(0.0),
        frequency_penalty: f.f32_in("frequency_penalty", -2.0, 2.0)?.unwrap_or(0.0),
        seed: f.seed("seed")?,
        logit_bias: parse_logit_bias(f)?,
    };
    Ok(ValidGeneration {
        model: f.string("model")?,
        prompt: PromptInput::Text(Vec::new()),
        prompt_field: "prompt",
        max_tokens: max_tokens.map(|v| v as usize),
        max_tokens_field,
        cap_max_tokens_to_context: false,
        sampling,
        stop: f.stop("stop", MAX_STOP_SEQUENCES)?,
        n: f.u64_in("n", 1, MAX_N)?.unwrap_or(1) as usize,
        stream,
        include_usage,
        logprobs: None,
        echo: false,
        response_format: f.response_format("response_format")?,
        // vLLM's extension: generate past the end-of-sequence tokens, up to the token limit.
        ignore_eos: f.bool("ignore_eos")?.unwrap_or(false),
        tools: None,
    })
}

pub(super) fn parse_messages(f: &Fields) -> Result<Vec<Message>, ApiError> {
    let items = match f.get("messages") {
        Some(Value::Array(items)) if items.len() > MAX_MESSAGES => {
            return Err(ApiError::invalid_param(
                "messages",
                format!("`messages` may hold at most {MAX_MESSAGES} messages; got {}.", items.len()),
            ))
        }
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(Value::Array(_)) => return Err(ApiError::invalid_param("messages", "`messages` must not be empty.")),
        Some(_) => return Err(ApiError::invalid_param("messages", "`messages` must be a list of messages.")),
        None => return Err(ApiError::invalid_param("messages", "`messages` is required.")),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let param = format!("messages[{i}]");
            let object = item.as_object().ok_or_else(|| {
                ApiError::invalid_param(&param, "Each message must be an object with `role` and `content`.")
            })?;
            let role = object.get("role").and_then(Value::as_str).ok_or_else(|| {
                ApiError::invalid_param(&format!("{param}.role"), "`role` is required and must be a string.")
            })?;
            if !matches!(role, "system" | "user" | "assistant" | "developer" | "tool") {
                return Err(ApiError::invalid_param(
                    &format!("{param}.role"),
                    format!("Unsupported role `{role}`; use system, user, assistant or tool."),
                ));
            }
            // OpenAI's newer "developer" role is the system role under another name.
            let role = if role == "developer" { "system" } else { role };
            let calls = object.get("tool_calls").filter(|c| !c.is_null() && role == "assistant");
            // An assistant turn that only calls tools has no content.
            let content = match (object.get("content"), calls) {
                (None | Some(Value::Null), Some(_)) => String::new(),
                (content, _) => message_content(content, &format!("{param}.content"))?,
            };
            if role == "tool" {
                return tool_result(object, content, &param);
            }
            let mut message = Message::new(role, content);
            if let Some(calls) = calls {
                message.tool_calls = parse_assistant_calls(calls, &format!("{param}.tool_calls"))?;
            }
            Ok(message)
        })
        .collect()
}

/// Content is a string or a list of `{"type":"text","text":...}` parts, joined.
fn message_content(content: Option<&Value>, param: &str) -> Result<String, ApiError> {
    match content {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for part in parts {
                match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    (Some(other), _) if other != "text" => {
                        return Err(ApiError::invalid_param(
                            param,
                            format!("Content parts of type `{other}` are not supported; this model reads text."),
                        ))
                    }
                    _ => {
                        return Err(ApiError::invalid_param(
                            param,
                            "Each content part must be {\"type\": \"text\", \"text\": \"...\"}.",
                        ))
                    }
                }
            }
            Ok(text)
        }
        None | Some(Value::Null) => Err(ApiError::invalid_param(param, "`content` is required.")),
        Some(_) => Err(ApiError::invalid_param(param, "`content` must be a string or a list of text parts.")),
    }
}

/// `prompt`: a string, a list of strings, a list of token ids, or a list of such lists.
fn parse_prompt(f: &Fields) -> Result<PromptInput, ApiError> {
    let invalid = || ApiError::invalid_param("prompt", "`prompt` must be a string, a list of strings, or token ids.");
    match f.get("prompt") {
        None => Err(ApiError::invalid_param("prompt", "`prompt` is required.")),
        Some(Value::String(s)) => Ok(PromptInput::Text(vec![s.clone()])),
        Some(Value::Array(items)) if items.is_empty() => {
            Err(ApiError::invalid_param("prompt", "`prompt` must not be empty."))
        }
        Some(Value::Array(items)) if items.len() > MAX_PROMPTS && !items.iter().all(is_token_id) => {
            Err(ApiError::invalid_param(
                "prompt",
                format!("`prompt` may hold at most {MAX_PROMPTS} prompts; got {}.", items.len()),
            ))
        }
        Some(Value::Array(items)) => {
            if items.iter().all(Value::is_string) {
                Ok(PromptInput::Text(items.iter().map(|s| s.as_str().unwrap_or_default().to_string()).collect()))
            } else if items.iter().all(is_token_id) {
                Ok(PromptInput::Tokens(vec![token_ids(items).ok_or_else(invalid)?]))
            } else if items.iter().all(Value::is_array) {
                items
                    .iter()
                    .map(|list| list.as_array().and_then(|l| token_ids(l)))
                    .collect::<Option<Vec<_>>>()
                    .map(PromptInput::Tokens)
                    .ok_or_else(invalid)
            } else {
                Err(invalid())
            }
        }
        Some(_) => Err(invalid()),
    }
}

/// A token id: a non-negative integer, also written as a whole float (`5.0`).
pub(super) fn is_token_id(value: &Value) -> bool {
    value.is_u64() || whole_number(value).is_some_and(|f| f >= 0.0)
}

pub(super) fn token_ids(items: &[Value]) -> Option<Vec<u32>> {
    items
        .iter()
        .map(|v| v.as_u64().or_else(|| whole_number(v).filter(|f| *f >= 0.0).map(|f| f as u64)))
        .map(|id| id.and_then(|id| u32::try_from(id).ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(json: &str) -> Result<ValidGeneration, ApiError> {
        parse_chat(json.as_bytes())
    }

    #[test]
    fn chat_defaults_and_content_parts() {
        let v = chat(r#"{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Hi "},{"type":"text","text":"there"}]}],"future_field":1}"#).unwrap();
        assert_eq!(
            v.prompt,
            PromptInput::Chat(vec![Message::new("system", "Be brief."), Message::new("user", "Hi there"),])
        );
        assert_eq!((v.n, v.stream, v.max_tokens, v.logprobs), (1, false, None, None));
        assert_eq!(v.response_format, super::super::valid::ResponseFormat::Text);
        assert_eq!(v.sampling.temperature, 1.0);
    }

    #[test]
    fn every_bad_parameter_is_named() {
        let cases = [
            (r#"{"messages":[]}"#, "messages"),
            (r#"{"messages":[{"role":"user","content":"x"}],"temperature":2.5}"#, "temperature"),
            (r#"{"messages":[{"role":"user","content":"x"}],"top_p":0}"#, "top_p"),
            (r#"{"messages":[{"role":"user","content":"x"}],"n":5}"#, "n"),
            (r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":0}"#, "max_tokens"),
            (r#"{"messages":[{"role":"user","content":"x"}],"presence_penalty":-3}"#, "presence_penalty"),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"stop":["a","b","c","d","e","f","g","h","i","j","k","l","m","n","o","p","q"]}"#,
                "stop",
            ),
            (r#"{"messages":[{"role":"user","content":"x"}],"top_logprobs":3}"#, "top_logprobs"),
            (r#"{"messages":[{"role":"tool","content":"x"}]}"#, "messages[0].tool_call_id"),
            (r#"{"messages":[{"role":"robot","content":"x"}]}"#, "messages[0].role"),
            (r#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#, "messages[0].content"),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":true}}"#,
                "stream_options",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema"}}"#,
                "response_format.json_schema",
            ),
            (r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"xml"}}"#, "response_format"),
            (r#"{"messages":[{"role":"user","content":"x"}],"logit_bias":{"x":1}}"#, "logit_bias"),
            (r#"{"messages":[{"role":"user","content":"x"}],"ignore_eos":1}"#, "ignore_eos"),
            (r#"{"messages":[{"role":"user","content":"x"}],"tools":[]}"#, "tools"),
        ];
        for (body, param) in cases {
            let err = chat(body).unwrap_err();
            assert_eq!((err.status, err.param.as_deref()), (400, Some(param)), "{body}: {err:?}");
        }
    }

    #[test]
    fn completions_prompt_forms_and_defaults() {
        let v = parse_completion(br#"{"prompt":"Once","logprobs":2,"echo":true}"#).unwrap();
        assert_eq!(v.prompt, PromptInput::Text(vec!["Once".into()]));
        assert_eq!((v.max_tokens, v.logprobs, v.echo), (Some(16), Some(2), true));
        let v = parse_completion(br#"{"prompt":[[1,2],[3]],"max_tokens":5}"#).unwrap();
        assert_eq!(v.prompt, PromptInput::Tokens(vec![vec![1, 2], vec![3]]));
        assert!(parse_completion(br#"{"prompt":[1,"a"]}"#).is_err());
        // Whole numbers written as floats, as Python clients send them (found by schemathesis).
        let v = parse_completion(br#"{"prompt":[1.0,2.0],"seed":5.0,"top_p":1e-300}"#).unwrap();
        assert_eq!((v.prompt, v.sampling.seed), (PromptInput::Tokens(vec![vec![1, 2]]), Some(5)));
        assert!(v.sampling.top_p > 0.0, "a positive top_p too small for an f32 is not 0");
        assert!(parse_completion(br#"{"prompt":[1.5]}"#).is_err());
        assert!(parse_completion(br#"{}"#).is_err());
        let v = parse_chat(br#"{"messages":[{"role":"user","content":"x"}],"logprobs":true,"top_logprobs":3,"stream":true,"stream_options":{"include_usage":true}}"#).unwrap();
        assert_eq!((v.logprobs, v.include_usage), (Some(3), true));
        // kiln's extensions, on both endpoints.
        for v in [
            parse_chat(
                br#"{"messages":[{"role":"user","content":"x"}],"ignore_eos":true,"logit_bias":{"9":-100,"2":5}}"#,
            ),
            parse_completion(br#"{"prompt":"x","ignore_eos":true,"logit_bias":{"9":-100,"2":5}}"#),
        ] {
            let v = v.unwrap();
            assert!(v.ignore_eos);
            assert_eq!(v.sampling.logit_bias, vec![(2, 5.0), (9, -100.0)]);
        }
    }
}
