//! Tool calls from text that arrives in pieces: each push returns what is settled, holding back only
//! text whose meaning (content or part of a call) depends on what comes next. `parse` is this same
//! machine fed the whole text at once, so streamed and one-shot results cannot drift apart.

use super::hermes::HermesStream;
use super::llama3_json::Llama3JsonStream;
use super::{ParsedToolCall, ToolCallFormat};

/// What one push or finish releases, in output order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// Text outside tool calls, ready for `delta.content`.
    Content(String),
    /// A call begins: `delta.tool_calls[{index, id, type: "function", function: {name}}]`.
    ToolCallStart { index: usize, name: String },
    /// More of call `index`'s arguments: `delta.tool_calls[{index, function: {arguments}}]`. The
    /// fragments of one call concatenate to its compact JSON arguments.
    ToolCallArguments { index: usize, fragment: String },
}

/// The streaming parser for one generated sequence.
#[derive(Debug)]
pub struct ToolCallStream {
    format: FormatStream,
    out: Emitter,
    finished: bool,
}

#[derive(Debug)]
enum FormatStream {
    Hermes(HermesStream),
    Llama3Json(Llama3JsonStream),
}

impl ToolCallStream {
    pub fn new(format: ToolCallFormat) -> ToolCallStream {
        let format = match format {
            ToolCallFormat::Hermes => FormatStream::Hermes(HermesStream::default()),
            ToolCallFormat::Llama3Json => FormatStream::Llama3Json(Llama3JsonStream::default()),
        };
        ToolCallStream { format, out: Emitter::default(), finished: false }
    }

    /// Adds newly decoded text; returns what is settled. Ignored after `finish`.
    pub fn push(&mut self, delta: &str) -> Vec<StreamEvent> {
        if self.finished || delta.is_empty() {
            return Vec::new();
        }
        match &mut self.format {
            FormatStream::Hermes(parser) => parser.push(delta, &mut self.out),
            FormatStream::Llama3Json(parser) => parser.push(delta, &mut self.out),
        }
        self.out.take()
    }

    /// The sequence ended: everything held is settled, a call that never completed as content.
    /// Returns nothing the second time.
    pub fn finish(&mut self) -> Vec<StreamEvent> {
        if std::mem::replace(&mut self.finished, true) {
            return Vec::new();
        }
        match &mut self.format {
            FormatStream::Hermes(parser) => parser.finish(&mut self.out),
            FormatStream::Llama3Json(parser) => parser.finish(&mut self.out),
        }
        self.out.take()
    }

    /// How many calls have been released so far; non-zero at the end means
    /// `finish_reason: "tool_calls"`.
    pub fn tool_call_count(&self) -> usize {
        self.out.calls
    }
}

/// Collects events for the format parsers, so that call numbering and the joining of content
/// pieces are the same for every format.
#[derive(Debug, Default)]
pub(super) struct Emitter {
    events: Vec<StreamEvent>,
    calls: usize,
    content_written: bool,
    /// Content was written, then a call: the next content starts a new piece of text, and the
    /// whitespace around the call is gone, so a newline keeps the pieces apart.
    separator_pending: bool,
}

impl Emitter {
    /// Text outside calls; the parsers have already trimmed it where it touches a call.
    pub(super) fn content(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        let separator = if std::mem::take(&mut self.separator_pending) { "\n" } else { "" };
        self.content_written = true;
        if let Some(StreamEvent::Content(last)) = self.events.last_mut() {
            last.push_str(separator);
            last.push_str(text);
        } else {
            self.events.push(StreamEvent::Content(format!("{separator}{text}")));
        }
    }

    /// A complete, valid call. Its arguments go out as one fragment: see the module docs for why.
    pub(super) fn call(&mut self, call: ParsedToolCall) {
        let index = self.calls;
        self.calls += 1;
        self.separator_pending |= self.content_written;
        self.events.push(StreamEvent::ToolCallStart { index, name: call.name });
        self.events.push(StreamEvent::ToolCallArguments { index, fragment: call.arguments });
    }

    fn take(&mut self) -> Vec<StreamEvent> {
        std::mem::take(&mut self.events)
    }
}
