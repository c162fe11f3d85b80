//! A choice's tool calls, read back from its text: in the model's own call format when it chose
//! to call (`tool_choice` "auto"), or from the JSON kiln constrained it to write (a named
//! function's arguments; for "required" a list of calls). Whole outputs and streamed ones give
//! the same calls.

use serde_json::Value;

use super::api::responses::OutputToolCall;
use super::api::tools::{ToolChoice, ToolUse};
use super::request_id::new_id;
use crate::tokenizer::tool_calls::{parse, StreamEvent, ToolCallFormat, ToolCallStream};

/// How a request's output holds its calls.
#[derive(Debug, Clone)]
pub enum CallReading {
    /// The model's own format, calls among text.
    Format(ToolCallFormat),
    /// The whole output is the arguments of this function.
    Named(String),
    /// The whole output is a JSON list of `{"name", "arguments"}`.
    List,
}

impl CallReading {
    pub fn for_request(tool_use: &ToolUse, format: ToolCallFormat) -> CallReading {
        match tool_use.choice {
            ToolChoice::Auto => CallReading::Format(format),
            ToolChoice::Named(index) => CallReading::Named(tool_use.name(index).to_string()),
            ToolChoice::Required => CallReading::List,
        }
    }
}

fn call_id() -> String {
    format!("call_{}", new_id())
}

/// The text left as content and the calls, from a whole output.
pub fn read_calls(reading: &CallReading, text: &str) -> (String, Vec<OutputToolCall>) {
    match reading {
        CallReading::Format(format) => {
            let parsed = parse(*format, text);
            let calls = parsed
                .tool_calls
                .into_iter()
                .map(|call| OutputToolCall { id: call_id(), name: call.name, arguments: call.arguments })
                .collect();
            (parsed.content, calls)
        }
        CallReading::Named(name) => {
            (String::new(), vec![OutputToolCall { id: call_id(), name: name.clone(), arguments: text.to_string() }])
        }
        CallReading::List => match listed_calls(text) {
            Some(calls) => (String::new(), calls),
            // Cut short by the token limit: not a list yet, so the text stays as it is.
            None => (text.to_string(), Vec::new()),
        },
    }
}

fn listed_calls(text: &str) -> Option<Vec<OutputToolCall>> {
    let list: Vec<Value> = serde_json::from_str(text).ok()?;
    list.iter()
        .map(|call| {
            Some(OutputToolCall {
                id: call_id(),
                name: call.get("name")?.as_str()?.to_string(),
                arguments: call.get("arguments").filter(|a| a.is_object())?.to_string(),
            })
        })
        .collect()
}

/// What a streamed choice sends next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamDelta {
    Content(String),
    /// A call's first chunk carries its id and name; later ones only argument text.
    Call {
        index: usize,
        id: Option<String>,
        name: Option<String>,
        arguments: String,
    },
}

/// One streamed choice's reading of its calls.
pub struct CallStream {
    reading: CallReading,
    parser: Option<ToolCallStream>,
    /// A required list, complete only at the end.
    held: String,
    named_started: bool,
    calls: usize,
}

impl CallStream {
    pub fn new(reading: CallReading) -> CallStream {
        let parser = match &reading {
            CallReading::Format(format) => Some(ToolCallStream::new(*format)),
            _ => None,
        };
        CallStream { reading, parser, held: String::new(), named_started: false, calls: 0 }
    }

    /// Whether any call was sent (the finish reason is then `tool_calls`).
    pub fn made_calls(&self) -> bool {
        self.calls > 0
    }

    pub fn push(&mut self, text: &str) -> Vec<StreamDelta> {
        if let Some(parser) = self.parser.as_mut() {
            let events = parser.push(text);
            return self.deltas_of(events);
        }
        match &self.reading {
            CallReading::Named(name) => {
                if text.is_empty() {
                    return Vec::new();
                }
                let first = !self.named_started;
                self.named_started = true;
                self.calls = 1;
                vec![StreamDelta::Call {
                    index: 0,
                    id: first.then(call_id),
                    name: first.then(|| name.clone()),
                    arguments: text.to_string(),
                }]
            }
            _ => {
                self.held.push_str(text);
                Vec::new()
            }
        }
    }

    pub fn finish(&mut self) -> Vec<StreamDelta> {
        if let Some(parser) = self.parser.as_mut() {
            let events = parser.finish();
            return self.deltas_of(events);
        }
        match &self.reading {
            CallReading::List => {
                let held = std::mem::take(&mut self.held);
                match listed_calls(&held) {
                    Some(calls) => {
                        self.calls = calls.len();
                        calls
                            .into_iter()
                            .enumerate()
                            .map(|(index, call)| StreamDelta::Call {
                                index,
                                id: Some(call.id),
                                name: Some(call.name),
                                arguments: call.arguments,
                            })
                            .collect()
                    }
                    None if held.is_empty() => Vec::new(),
                    None => vec![StreamDelta::Content(held)],
                }
            }
            _ => Vec::new(),
        }
    }

    fn deltas_of(&mut self, events: Vec<StreamEvent>) -> Vec<StreamDelta> {
        events
            .into_iter()
            .map(|event| match event {
                StreamEvent::Content(text) => StreamDelta::Content(text),
                StreamEvent::ToolCallStart { index, name } => {
                    self.calls = self.calls.max(index + 1);
                    StreamDelta::Call { index, id: Some(call_id()), name: Some(name), arguments: String::new() }
                }
                StreamEvent::ToolCallArguments { index, fragment } => {
                    StreamDelta::Call { index, id: None, name: None, arguments: fragment }
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constrained_outputs_read_back_as_calls() {
        let (content, calls) = read_calls(&CallReading::Named("weather".into()), r#"{"city": "Paris"}"#);
        assert_eq!((content.as_str(), calls.len()), ("", 1));
        assert_eq!((calls[0].name.as_str(), calls[0].arguments.as_str()), ("weather", r#"{"city": "Paris"}"#));
        assert!(calls[0].id.starts_with("call_"));
        let (_, calls) =
            read_calls(&CallReading::List, r#"[{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]"#);
        let named: Vec<(&str, &str)> = calls.iter().map(|c| (c.name.as_str(), c.arguments.as_str())).collect();
        assert_eq!(named, [("a", r#"{"x":1}"#), ("b", "{}")]);
        let (content, calls) = read_calls(&CallReading::List, r#"[{"name": "a", "argu"#);
        assert_eq!((content.as_str(), calls.len()), (r#"[{"name": "a", "argu"#, 0), "a cut list stays text");
    }

    #[test]
    fn streamed_constrained_calls_add_up_to_the_whole_ones() {
        let mut named = CallStream::new(CallReading::Named("weather".into()));
        let mut deltas = named.push("{\"city\":");
        deltas.extend(named.push(" \"Paris\"}"));
        deltas.extend(named.finish());
        let arguments: String = deltas
            .iter()
            .map(|d| match d {
                StreamDelta::Call { arguments, .. } => arguments.as_str(),
                StreamDelta::Content(_) => panic!("no content"),
            })
            .collect();
        assert_eq!(arguments, r#"{"city": "Paris"}"#);
        assert!(matches!(&deltas[0], StreamDelta::Call { id: Some(_), name: Some(n), .. } if n == "weather"));
        assert!(matches!(&deltas[1], StreamDelta::Call { id: None, name: None, .. }));
        assert!(named.made_calls());

        let mut list = CallStream::new(CallReading::List);
        assert!(list.push(r#"[{"name": "a", "#).is_empty());
        assert!(list.push(r#""arguments": {}}]"#).is_empty());
        let deltas = list.finish();
        assert!(
            matches!(&deltas[..], [StreamDelta::Call { index: 0, name: Some(n), arguments, .. }] if n == "a" && arguments == "{}")
        );
    }

    /// The model's own calls (tool_choice "auto"), streamed in any pieces, give the calls a whole
    /// read gives, each with a fresh id.
    #[test]
    fn calls_in_the_model_format_read_the_same_streamed_and_whole() {
        let reply = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
        let reading = CallReading::Format(ToolCallFormat::Hermes);
        let (content, whole) = read_calls(&reading, reply);
        assert_eq!(content, "Let me check.");
        assert_eq!((whole[0].name.as_str(), whole[0].arguments.as_str()), ("get_weather", r#"{"city":"Paris"}"#));
        let mut stream = CallStream::new(reading);
        let mut deltas = Vec::new();
        for piece in reply.as_bytes().chunks(7) {
            deltas.extend(stream.push(std::str::from_utf8(piece).unwrap()));
        }
        deltas.extend(stream.finish());
        let (mut text, mut arguments, mut ids) = (String::new(), String::new(), Vec::new());
        for delta in deltas {
            match delta {
                StreamDelta::Content(t) => text.push_str(&t),
                StreamDelta::Call { index, id, arguments: a, .. } => {
                    assert_eq!(index, 0);
                    ids.extend(id);
                    arguments.push_str(&a);
                }
            }
        }
        assert_eq!((text.as_str(), arguments.as_str()), ("Let me check.", r#"{"city":"Paris"}"#));
        assert_eq!(ids.len(), 1);
        assert!(stream.made_calls());
    }
}
