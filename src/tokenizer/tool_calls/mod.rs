//! Tool calls in generated text: splitting a reply into content and `tool_calls` (name plus
//! arguments as a JSON string), whole or while it streams, for the formats kiln's model families
//! write (`ToolCallFormat`).
//!
//! Rules common to every format:
//! - Malformed call markup (a block that never closes, invalid JSON, no `name`, arguments that are
//!   not an object) is not an error: its text stays in the content as written, so nothing is lost.
//! - `arguments` is the model's own JSON object text without insignificant whitespace: key order,
//!   number spelling and escapes are kept (a double-encoded string is decoded first).
//! - Content is the text outside calls. Without calls it is the reply exactly; with calls,
//!   whitespace where text meets a call is dropped and pieces of text that a call separated are
//!   joined by one newline.
//!
//! Streaming: each call is released when it is complete and valid, as a `ToolCallStart` followed by
//! one `ToolCallArguments` holding all of its arguments. Releasing fragments as they arrive would
//! start a call before knowing it is one: a reply cut off by `max_tokens` or ending in invalid JSON
//! would have sent a call that `parse` turns into content, and an event cannot be taken back. So a
//! call costs the latency of its own tokens and no more; content is released as soon as it cannot
//! be part of a call, and the events of any split of a reply add up to `parse` of the whole.

mod call;
mod format;
mod hermes;
mod json_text;
mod llama3_json;
mod stream;
#[cfg(test)]
mod tests;

pub use format::{ToolCallFormat, UnknownToolCallFormat};
pub use stream::{StreamEvent, ToolCallStream};

/// One call: `choices[].message.tool_calls[].function`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedToolCall {
    pub name: String,
    /// Compact JSON text of an object, e.g. `{"city":"Paris"}`.
    pub arguments: String,
}

/// A whole reply split into content and calls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedOutput {
    /// Text outside calls; empty when there is none.
    pub content: String,
    pub tool_calls: Vec<ParsedToolCall>,
}

impl ParsedOutput {
    /// Adds up streamed events as an OpenAI client does: content concatenated, each call's
    /// argument fragments concatenated.
    pub fn from_events(events: impl IntoIterator<Item = StreamEvent>) -> ParsedOutput {
        let mut out = ParsedOutput::default();
        for event in events {
            match event {
                StreamEvent::Content(text) => out.content.push_str(&text),
                StreamEvent::ToolCallStart { name, .. } => {
                    out.tool_calls.push(ParsedToolCall { name, arguments: String::new() })
                }
                StreamEvent::ToolCallArguments { index, fragment } => {
                    if let Some(call) = out.tool_calls.get_mut(index) {
                        call.arguments.push_str(&fragment);
                    }
                }
            }
        }
        out
    }
}

/// Splits a whole reply. This is `ToolCallStream` fed the reply in one piece.
pub fn parse(format: ToolCallFormat, text: &str) -> ParsedOutput {
    let mut stream = ToolCallStream::new(format);
    let mut events = stream.push(text);
    events.extend(stream.finish());
    ParsedOutput::from_events(events)
}
