//! Hermes / ChatML tool calls (Qwen2 and Qwen2.5, Hermes fine-tunes; SmolLM2 with
//! `--tool-call-parser hermes`, as its template names no format):
//! `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`, several in a row, possibly after
//! text. A block whose body is not one call, or that never closes, stays in the content as written.
//! The tags must be in the decoded text: Qwen2.5's tokenizer marks them `special: false`.

use super::call::parse_call;
use super::stream::Emitter;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

#[derive(Debug, Default)]
pub(super) struct HermesStream {
    /// Text received but not released.
    held: String,
    state: State,
}

#[derive(Debug, Clone, Copy, Default)]
enum State {
    /// Ordinary text. `held` is trailing whitespace (dropped if a call follows) and the start of a
    /// possible `<tool_call>`.
    #[default]
    Text,
    /// Just after a call: whitespace here is dropped, as content is trimmed where it meets a call.
    AfterCall,
    /// Inside a block: `held` is the whitespace before `<tool_call>`, the tag and the body so far.
    /// `</tool_call>` has been looked for in `held[..searched_to]`.
    InCall { body_start: usize, searched_to: usize },
}

impl HermesStream {
    pub(super) fn push(&mut self, delta: &str, out: &mut Emitter) {
        self.held.push_str(delta);
        self.advance(false, out);
    }

    pub(super) fn finish(&mut self, out: &mut Emitter) {
        self.advance(true, out);
    }

    fn advance(&mut self, at_end: bool, out: &mut Emitter) {
        loop {
            match self.state {
                State::AfterCall => {
                    let space = self.held.len() - self.held.trim_start().len();
                    self.held.drain(..space);
                    if self.held.is_empty() {
                        return;
                    }
                    self.state = State::Text;
                }
                State::Text => {
                    if let Some(tag_at) = self.held.find(OPEN) {
                        let text_end = self.held[..tag_at].trim_end().len();
                        out.content(&self.held[..text_end]);
                        self.held.drain(..text_end);
                        let body_start = tag_at - text_end + OPEN.len();
                        self.state = State::InCall { body_start, searched_to: body_start };
                        continue;
                    }
                    let release = if at_end {
                        self.held.len()
                    } else {
                        let tag_prefix = longest_suffix_starting(&self.held, OPEN);
                        self.held[..self.held.len() - tag_prefix].trim_end().len()
                    };
                    out.content(&self.held[..release]);
                    self.held.drain(..release);
                    return;
                }
                State::InCall { body_start, searched_to } => {
                    let Some(found) = self.held[searched_to..].find(CLOSE) else {
                        if at_end {
                            // Never closed (e.g. cut by max_tokens): the block is text.
                            out.content(&self.held);
                            self.held.clear();
                            self.state = State::Text;
                            return;
                        }
                        // Only the last few bytes can begin a `</tool_call>` that is still arriving.
                        let mut searched_to = self.held.len().saturating_sub(CLOSE.len() - 1).max(body_start);
                        while !self.held.is_char_boundary(searched_to) {
                            searched_to -= 1;
                        }
                        self.state = State::InCall { body_start, searched_to };
                        return;
                    };
                    let close_at = searched_to + found;
                    let block_end = close_at + CLOSE.len();
                    // The newlines around the JSON are JSON whitespace, which `parse_call` allows.
                    match parse_call(&self.held[body_start..close_at]) {
                        Some(call) => {
                            out.call(call);
                            self.state = State::AfterCall;
                        }
                        None => {
                            out.content(&self.held[..block_end]);
                            self.state = State::Text;
                        }
                    }
                    self.held.drain(..block_end);
                }
            }
        }
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `tag`.
fn longest_suffix_starting(text: &str, tag: &str) -> usize {
    (1..tag.len().min(text.len() + 1)).rev().find(|&len| text.ends_with(&tag[..len])).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::tool_calls::tests::{call, content_only};
    use crate::tokenizer::tool_calls::{parse, ParsedOutput, StreamEvent, ToolCallFormat, ToolCallStream};

    fn hermes(text: &str) -> ParsedOutput {
        parse(ToolCallFormat::Hermes, text)
    }

    // Outputs in the shape Qwen2.5-Instruct writes them: its chat template asks for
    // `<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>`, and
    // renders past calls the same way. Written by hand in that shape, not captured from a model run.

    #[test]
    fn single_call() {
        let out = hermes(
            "<tool_call>\n{\"name\": \"get_current_weather\", \"arguments\": {\"location\": \"Boston, MA\", \"unit\": \"fahrenheit\"}}\n</tool_call>",
        );
        assert_eq!(out.content, "");
        assert_eq!(
            out.tool_calls,
            vec![call("get_current_weather", r#"{"location":"Boston, MA","unit":"fahrenheit"}"#)]
        );
    }

    #[test]
    fn two_parallel_calls() {
        let out = hermes(concat!(
            "<tool_call>\n{\"name\": \"get_current_temperature\", \"arguments\": {\"location\": \"San Francisco, CA, USA\"}}\n</tool_call>\n",
            "<tool_call>\n{\"name\": \"get_temperature_date\", \"arguments\": {\"location\": \"San Francisco, CA, USA\", \"date\": \"2024-10-01\"}}\n</tool_call>",
        ));
        assert_eq!(out.content, "");
        assert_eq!(
            out.tool_calls,
            vec![
                call("get_current_temperature", r#"{"location":"San Francisco, CA, USA"}"#),
                call("get_temperature_date", r#"{"location":"San Francisco, CA, USA","date":"2024-10-01"}"#),
            ]
        );
    }

    #[test]
    fn text_before_and_between_calls() {
        let out = hermes(concat!(
            "I'll check the weather in both cities.\n\n",
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n",
            "And the second one:\n",
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Lyon\"}}\n</tool_call>\n",
        ));
        assert_eq!(out.content, "I'll check the weather in both cities.\nAnd the second one:");
        assert_eq!(
            out.tool_calls,
            vec![call("get_weather", r#"{"city":"Paris"}"#), call("get_weather", r#"{"city":"Lyon"}"#)]
        );
    }

    #[test]
    fn nested_arguments_keep_their_order() {
        let out = hermes(concat!(
            "<tool_call>\n",
            "{\"name\": \"create_event\", \"arguments\": {\"title\": \"Team sync\", \"attendees\": [\"ana@example.com\", \"bo@example.com\"], ",
            "\"time\": {\"start\": \"2024-06-03T10:00:00\", \"duration_minutes\": 30}, \"recurring\": false, \"reminder\": null, \"priority\": 1.50}}\n",
            "</tool_call>",
        ));
        assert_eq!(
            out.tool_calls,
            vec![call(
                "create_event",
                r#"{"title":"Team sync","attendees":["ana@example.com","bo@example.com"],"time":{"start":"2024-06-03T10:00:00","duration_minutes":30},"recurring":false,"reminder":null,"priority":1.50}"#
            )]
        );
    }

    #[test]
    fn unicode_and_escapes_are_kept_as_written() {
        let out = hermes(
            "<tool_call>\n{\"name\": \"search_notes\", \"arguments\": {\"query\": \"caf\\u00e9 \\\"Le Procope\\\" 東京 🍣\", \"path\": \"C:\\\\notes\\\\\", \"sep\": \"a\\nb\"}}\n</tool_call>",
        );
        assert_eq!(
            out.tool_calls,
            vec![call(
                "search_notes",
                r#"{"query":"caf\u00e9 \"Le Procope\" 東京 🍣","path":"C:\\notes\\","sep":"a\nb"}"#
            )]
        );
        let arguments: serde_json::Value = serde_json::from_str(&out.tool_calls[0].arguments).unwrap();
        assert_eq!(arguments["query"], "café \"Le Procope\" 東京 🍣");
    }

    #[test]
    fn arguments_given_as_a_json_string() {
        let out = hermes("<tool_call>\n{\"name\": \"get_time\", \"arguments\": \"{\\\"timezone\\\": \\\"Europe/Berlin\\\"}\"}\n</tool_call>");
        assert_eq!(out.tool_calls, vec![call("get_time", r#"{"timezone":"Europe/Berlin"}"#)]);
    }

    #[test]
    fn malformed_blocks_stay_content() {
        for text in [
            // Cut off by max_tokens.
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Par",
            // Complete JSON but no closing tag.
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n",
            // A stray brace, a slip small models make.
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}}\n</tool_call>",
            "<tool_call>\n{\"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": [\"Paris\"]}\n</tool_call>",
            "<tool_call>\nget_weather(city=\"Paris\")\n</tool_call>",
            "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {city: Paris}}\n</tool_call>\n",
        ] {
            assert_eq!(hermes(text), content_only(text), "{text}");
        }
    }

    #[test]
    fn a_malformed_block_next_to_a_good_one() {
        let out = hermes(concat!(
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n",
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Lyon\"}\n</tool_call>",
        ));
        assert_eq!(out.tool_calls, vec![call("get_weather", r#"{"city":"Paris"}"#)]);
        assert_eq!(
            out.content,
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Lyon\"}\n</tool_call>"
        );
    }

    #[test]
    fn closing_tag_inside_an_argument_string_ends_the_block() {
        // As in vLLM: the first `</tool_call>` closes the block, whatever JSON it sits in.
        let text = "<tool_call>\n{\"name\": \"echo\", \"arguments\": {\"text\": \"</tool_call>\"}}\n</tool_call>";
        let out = hermes(text);
        assert!(out.tool_calls.is_empty());
        assert_eq!(out.content, text);
    }

    #[test]
    fn plain_text_is_kept_exactly() {
        for text in [
            "The capital of France is Paris.",
            "  Use the <tool> element, or <tool_calls> in plural.\n\n",
            "A literal </tool_call> on its own is text.\n",
            "",
        ] {
            assert_eq!(hermes(text), content_only(text), "{text:?}");
        }
    }

    #[test]
    fn content_is_released_as_soon_as_it_cannot_start_a_call() {
        let mut stream = ToolCallStream::new(ToolCallFormat::Hermes);
        assert_eq!(stream.push("I'll check"), vec![StreamEvent::Content("I'll check".into())]);
        assert_eq!(stream.push(" the weather.\n\n<tool"), vec![StreamEvent::Content(" the weather.".into())]);
        assert_eq!(stream.push("_call>\n{\"name\": \"get_weather\", "), vec![]);
        assert_eq!(stream.push("\"arguments\": {\"city\": \"Paris\"}}\n</tool_"), vec![]);
        assert_eq!(
            stream.push("call>\n"),
            vec![
                StreamEvent::ToolCallStart { index: 0, name: "get_weather".into() },
                StreamEvent::ToolCallArguments { index: 0, fragment: r#"{"city":"Paris"}"#.into() },
            ]
        );
        assert_eq!(stream.tool_call_count(), 1);
        assert_eq!(stream.finish(), vec![]);
        assert_eq!(stream.push("more"), vec![], "nothing after finish");

        let mut stream = ToolCallStream::new(ToolCallFormat::Hermes);
        assert_eq!(stream.push("a <"), vec![StreamEvent::Content("a".into())]);
        assert_eq!(stream.push("b>"), vec![StreamEvent::Content(" <b>".into())]);
        assert_eq!(stream.push("\n"), vec![]);
        assert_eq!(stream.finish(), vec![StreamEvent::Content("\n".into())]);
    }

    #[test]
    fn suffix_that_starts_the_tag() {
        assert_eq!(longest_suffix_starting("abc <tool_c", OPEN), 7);
        assert_eq!(longest_suffix_starting("<", OPEN), 1);
        assert_eq!(longest_suffix_starting("<tool_call", OPEN), 10);
        assert_eq!(longest_suffix_starting("abc", OPEN), 0);
        assert_eq!(longest_suffix_starting("", OPEN), 0);
        assert_eq!(longest_suffix_starting("é<tool", OPEN), 5);
    }
}
