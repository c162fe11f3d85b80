//! Every parameter of OpenAI's chat completions and completions request bodies, and what kiln does
//! with it: honours it, accepts it knowing it changes nothing here, or refuses it with a 400 that
//! names it. Never silently ignored: a field OpenAI adds is decided here, once. Fields OpenAI does
//! not have (kiln's extensions: top_k, min_p, repetition_penalty, ignore_eos) are the parsers'
//! own, and unknown ones are ignored, as OpenAI does.

use serde_json::Value;

use super::error::ApiError;
use super::fields::Fields;

/// What kiln does with one OpenAI field.
pub enum Treatment {
    /// The endpoint's parser reads it and acts on it.
    Honoured,
    /// Accepted when it has OpenAI's type, and changes nothing here (the README's "Accepted fields
    /// that change nothing" lists each with `why`).
    NoEffect { kind: Kind, why: &'static str },
    /// A 400 naming the field, unless `harmless` says its value asks for nothing kiln lacks.
    Refused { harmless: fn(&Value, &Fields) -> bool, message: &'static str },
}

/// The JSON type a field with no effect must still have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    String,
    Bool,
    Object,
}

impl Kind {
    fn matches(self, value: &Value) -> bool {
        match self {
            Kind::String => value.is_string(),
            Kind::Bool => value.is_boolean(),
            Kind::Object => value.is_object(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::String => "a string",
            Kind::Bool => "true or false",
            Kind::Object => "an object",
        }
    }
}

use Treatment::{Honoured, NoEffect, Refused};

const TOOLS: &str =
    "`functions` and `function_call` are OpenAI's deprecated forms of tool calling; use `tools` and `tool_choice`.";

fn never(_: &Value, _: &Fields) -> bool {
    false
}

/// `function_call: "none"` without functions asks for nothing.
fn no_tools_called(value: &Value, f: &Fields) -> bool {
    value.as_str() == Some("none") && f.get("functions").is_none()
}

fn text_only(value: &Value, _: &Fields) -> bool {
    value.as_array().is_some_and(|m| m.iter().all(|m| m.as_str() == Some("text")))
}

/// `medium` is OpenAI's default verbosity: asking for it changes nothing.
fn default_verbosity(value: &Value, _: &Fields) -> bool {
    value.as_str() == Some("medium")
}

fn empty_suffix(value: &Value, _: &Fields) -> bool {
    value.as_str() == Some("")
}

/// `best_of` equal to `n` (default 1) returns every candidate, which is what `n` does.
fn best_of_is_n(value: &Value, f: &Fields) -> bool {
    let n = f.get("n").and_then(Value::as_f64).unwrap_or(1.0);
    value.as_f64() == Some(n)
}

/// `POST /v1/chat/completions`, in OpenAI's API reference order.
pub const CHAT: &[(&str, Treatment)] = &[
    ("messages", Honoured),
    ("model", Honoured),
    ("audio", Refused { harmless: never, message: "Audio output is not supported: this server generates text only." }),
    ("frequency_penalty", Honoured),
    ("function_call", Refused { harmless: no_tools_called, message: TOOLS }),
    ("functions", Refused { harmless: never, message: TOOLS }),
    ("logit_bias", Honoured),
    ("logprobs", Honoured),
    ("max_completion_tokens", Honoured),
    ("max_tokens", Honoured),
    ("metadata", NoEffect { kind: Kind::Object, why: "tags for stored completions; kiln stores none" }),
    (
        "modalities",
        Refused {
            harmless: text_only,
            message: "Only the `text` modality is supported: this server generates text only.",
        },
    ),
    ("n", Honoured),
    ("parallel_tool_calls", Honoured),
    (
        "prediction",
        Refused { harmless: never, message: "Predicted outputs are not supported; send the request without them." },
    ),
    ("presence_penalty", Honoured),
    (
        "prompt_cache_key",
        NoEffect {
            kind: Kind::String,
            why: "a routing hint for caching; kiln reuses cached prompt prefixes by itself",
        },
    ),
    (
        "reasoning_effort",
        NoEffect {
            kind: Kind::String,
            why: "bounds how long a reasoning model thinks; the served models answer without a reasoning phase",
        },
    ),
    ("response_format", Honoured),
    ("safety_identifier", NoEffect { kind: Kind::String, why: "an end-user id for OpenAI's abuse monitoring" }),
    ("seed", Honoured),
    ("service_tier", NoEffect { kind: Kind::String, why: "kiln has one tier" }),
    ("stop", Honoured),
    ("store", NoEffect { kind: Kind::Bool, why: "kiln stores no completions" }),
    ("stream", Honoured),
    ("stream_options", Honoured),
    ("temperature", Honoured),
    ("tool_choice", Honoured),
    ("tools", Honoured),
    ("top_logprobs", Honoured),
    ("top_p", Honoured),
    ("user", NoEffect { kind: Kind::String, why: "an end-user id; kiln's access log names the API key instead" }),
    (
        "verbosity",
        Refused {
            harmless: default_verbosity,
            message: "Only the default `medium` verbosity is supported: kiln cannot steer the length of an answer.",
        },
    ),
    ("web_search_options", Refused { harmless: never, message: "Web search is not supported." }),
];

/// `POST /v1/completions`, in OpenAI's API reference order.
pub const COMPLETIONS: &[(&str, Treatment)] = &[
    ("model", Honoured),
    ("prompt", Honoured),
    (
        "best_of",
        Refused {
            harmless: best_of_is_n,
            message: "`best_of` is supported only equal to `n`: kiln does not rank candidates it does not return.",
        },
    ),
    ("echo", Honoured),
    ("frequency_penalty", Honoured),
    ("logit_bias", Honoured),
    ("logprobs", Honoured),
    ("max_tokens", Honoured),
    ("n", Honoured),
    ("presence_penalty", Honoured),
    ("seed", Honoured),
    ("stop", Honoured),
    ("stream", Honoured),
    ("stream_options", Honoured),
    ("suffix", Refused { harmless: empty_suffix, message: "`suffix` (insertion) is not supported." }),
    ("temperature", Honoured),
    ("top_p", Honoured),
    ("user", NoEffect { kind: Kind::String, why: "an end-user id; kiln's access log names the API key instead" }),
];

/// Refuses the request's fields that `fields` refuses, and fields with no effect that lack
/// OpenAI's type; honoured fields are left to the endpoint's parser. `null` counts as absent.
pub fn check(f: &Fields, fields: &[(&str, Treatment)]) -> Result<(), ApiError> {
    for (name, treatment) in fields {
        let Some(value) = f.get(name) else { continue };
        match treatment {
            Honoured => {}
            NoEffect { kind, .. } if !kind.matches(value) => {
                return Err(ApiError::invalid_param(name, format!("`{name}` must be {}.", kind.name())));
            }
            NoEffect { .. } => {}
            Refused { harmless, message } if !harmless(value, f) => {
                return Err(ApiError::invalid_param(name, format!("{message} (`{name}`)")));
            }
            Refused { .. } => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::openai::{parse_chat, parse_completion};
    use super::super::valid::ValidGeneration;
    use super::*;

    /// OpenAI's request parameters as of this writing (its API reference), to check the lists
    /// against: a field missing from a list would be silently ignored.
    const OPENAI_CHAT: &[&str] = &[
        "messages",
        "model",
        "audio",
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "metadata",
        "modalities",
        "n",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "prompt_cache_key",
        "reasoning_effort",
        "response_format",
        "safety_identifier",
        "seed",
        "service_tier",
        "stop",
        "store",
        "stream",
        "stream_options",
        "temperature",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "user",
        "verbosity",
        "web_search_options",
    ];
    const OPENAI_COMPLETIONS: &[&str] = &[
        "model",
        "prompt",
        "best_of",
        "echo",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "max_tokens",
        "n",
        "presence_penalty",
        "seed",
        "stop",
        "stream",
        "stream_options",
        "suffix",
        "temperature",
        "top_p",
        "user",
    ];

    /// For each honoured field: extra fields that set it, and the same request without it (some
    /// fields need another to be valid). The parse of the two must differ: the field is read.
    fn honoured_example(field: &str, chat: bool) -> Option<(Value, Value)> {
        let plain = |value: Value| Some((json!({ field: value }), json!({})));
        match field {
            "messages" => plain(json!([{"role": "user", "content": "something else"}])),
            "prompt" => plain(json!("something else")),
            "model" => plain(json!("m")),
            "frequency_penalty" | "presence_penalty" => plain(json!(0.5)),
            "logit_bias" => plain(json!({"5": 10})),
            // Chat asks with true, completions with a count of alternatives.
            "logprobs" => plain(if chat { json!(true) } else { json!(2) }),
            "max_completion_tokens" | "max_tokens" => plain(json!(7)),
            "n" => plain(json!(2)),
            "response_format" => plain(json!({"type": "json_object"})),
            "seed" => plain(json!(42)),
            "stop" => plain(json!("x")),
            "stream" => plain(json!(true)),
            "stream_options" => {
                Some((json!({"stream": true, "stream_options": {"include_usage": true}}), json!({"stream": true})))
            }
            "temperature" => plain(json!(0.5)),
            "top_p" => plain(json!(0.5)),
            "top_logprobs" => Some((json!({"logprobs": true, "top_logprobs": 3}), json!({"logprobs": true}))),
            "echo" => plain(json!(true)),
            "tools" => plain(json!([{"type": "function", "function": {"name": "f"}}])),
            "tool_choice" => {
                let tools = json!([{"type": "function", "function": {"name": "f"}}]);
                Some((json!({"tools": tools, "tool_choice": "required"}), json!({"tools": tools})))
            }
            "parallel_tool_calls" => {
                let tools = json!([{"type": "function", "function": {"name": "f"}}]);
                Some((json!({"tools": tools, "parallel_tool_calls": false}), json!({"tools": tools})))
            }
            _ => None,
        }
    }

    /// A value of each refused field that asks for something kiln lacks, and one (if any) that
    /// asks for nothing.
    fn refused_examples(field: &str) -> (Value, Option<Value>) {
        match field {
            "audio" => (json!({"voice": "alloy", "format": "mp3"}), None),
            "function_call" => (json!("auto"), Some(json!("none"))),
            "functions" => (json!([{"name": "f", "parameters": {}}]), None),
            "modalities" => (json!(["text", "audio"]), Some(json!(["text"]))),
            "prediction" => (json!({"type": "content", "content": "x"}), None),
            "verbosity" => (json!("low"), Some(json!("medium"))),
            "web_search_options" => (json!({}), None),
            "best_of" => (json!(3), Some(json!(1))),
            "suffix" => (json!(" and so on"), Some(json!(""))),
            other => panic!("no example for the refused field `{other}`: add one"),
        }
    }

    fn body(base: &Value, extra: &Value) -> Vec<u8> {
        let mut body = base.clone();
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body.to_string().into_bytes()
    }

    fn audit(
        fields: &[(&str, Treatment)],
        openai: &[&str],
        base: Value,
        parse: fn(&[u8]) -> Result<ValidGeneration, ApiError>,
        chat: bool,
    ) {
        let listed: Vec<&str> = fields.iter().map(|(name, _)| *name).collect();
        assert_eq!(listed, openai, "every OpenAI field is listed once, in the reference's order");
        let baseline = parse(&body(&base, &json!({}))).unwrap();
        for (name, treatment) in fields {
            match treatment {
                Honoured => {
                    let (with, without) = honoured_example(name, chat)
                        .unwrap_or_else(|| panic!("no example for the honoured field `{name}`"));
                    let read = parse(&body(&base, &with)).unwrap_or_else(|e| panic!("`{name}`: {e:?}"));
                    let unread = parse(&body(&base, &without)).unwrap_or_else(|e| panic!("`{name}`: {e:?}"));
                    assert_ne!(read, unread, "`{name}` is listed as honoured but the request does not change");
                }
                NoEffect { kind, .. } => {
                    let value = match kind {
                        Kind::String => json!("anything"),
                        Kind::Bool => json!(true),
                        Kind::Object => json!({"key": "value"}),
                    };
                    let parsed = parse(&body(&base, &json!({ *name: value }))).unwrap();
                    assert_eq!(parsed, baseline, "`{name}` changes nothing");
                    let wrong = if *kind == Kind::String { json!(5) } else { json!("x") };
                    let error = parse(&body(&base, &json!({ *name: wrong }))).unwrap_err();
                    assert_eq!((error.status, error.param.as_deref()), (400, Some(*name)));
                }
                Refused { .. } => {
                    let (refused, harmless) = refused_examples(name);
                    let error = parse(&body(&base, &json!({ *name: refused }))).unwrap_err();
                    assert_eq!((error.status, error.param.as_deref()), (400, Some(*name)), "{error:?}");
                    assert!(error.message.contains(&format!("`{name}`")), "{}", error.message);
                    if let Some(harmless) = harmless {
                        let parsed = parse(&body(&base, &json!({ *name: harmless }))).unwrap();
                        assert_eq!(parsed, baseline, "a harmless `{name}` changes nothing");
                    }
                }
            }
        }
    }

    #[test]
    fn every_chat_field_is_honoured_accepted_or_refused() {
        let base = json!({"messages": [{"role": "user", "content": "Hi"}]});
        audit(CHAT, OPENAI_CHAT, base, parse_chat, true);
    }

    #[test]
    fn every_completions_field_is_honoured_accepted_or_refused() {
        audit(COMPLETIONS, OPENAI_COMPLETIONS, json!({"prompt": "Hi"}), parse_completion, false);
    }

    #[test]
    fn tool_fields_name_themselves_and_the_missing_feature() {
        let chat = |extra: Value| parse_chat(&body(&json!({"messages": [{"role": "user", "content": "Hi"}]}), &extra));
        for field in ["functions", "function_call"] {
            let (refused, _) = refused_examples(field);
            let error = chat(json!({ field: refused })).unwrap_err();
            assert_eq!(error.param.as_deref(), Some(field));
            assert!(error.message.contains("use `tools` and `tool_choice`"), "{}", error.message);
        }
        // "none" asks for no function only while no functions are given.
        let error = chat(json!({"function_call": "none", "functions": [{"name": "f"}]})).unwrap_err();
        assert!(matches!(error.param.as_deref(), Some("function_call" | "functions")), "{error:?}");
        assert!(chat(json!({"tool_choice": "none", "function_call": "none"})).is_ok());
        assert!(chat(json!({"parallel_tool_calls": false})).is_ok());
        // best_of must equal the n it comes with.
        let completion = |extra: Value| parse_completion(&body(&json!({"prompt": "Hi"}), &extra));
        assert!(completion(json!({"n": 3, "best_of": 3})).is_ok());
        assert_eq!(completion(json!({"n": 2, "best_of": 3})).unwrap_err().param.as_deref(), Some("best_of"));
    }

    #[test]
    fn the_readme_lists_every_field_that_changes_nothing() {
        let readme = include_str!("../../../README.md");
        let table = readme
            .split("Accepted fields that change nothing")
            .nth(1)
            .expect("the README has the table \"Accepted fields that change nothing\"");
        for (name, treatment) in CHAT.iter().chain(COMPLETIONS) {
            if let NoEffect { .. } = treatment {
                assert!(table.contains(&format!("| `{name}` |")), "README: `{name}` is missing from the table");
            }
        }
    }
}
