//! Llama 3.1/3.2/3.3 JSON tool calls: the whole reply is `{"name": ..., "parameters": {...}}`
//! (some replies say "arguments"), perhaps after `<|python_tag|>` (a special token, so usually
//! already gone from decoded text), with further calls after `;` or whitespace. A reply that does
//! not start that way is plain content, verbatim; text after the last call is content too.

use super::call::parse_call;
use super::json_text::{Scan, ValueEnd};
use super::stream::Emitter;

const PYTHON_TAG: &str = "<|python_tag|>";

#[derive(Debug, Default)]
pub(super) struct Llama3JsonStream {
    /// Text received but not released.
    held: String,
    state: State,
}

#[derive(Debug, Default)]
enum State {
    /// Nothing decided: `held` is all output so far, whitespace and perhaps `<|python_tag|>`.
    #[default]
    Start,
    /// In a JSON object that may be a call, which starts at `held[object_start]`. `held` begins
    /// at the start of the output (`first`) or just after the previous call.
    InObject { first: bool, object_start: usize, end: ValueEnd, scanned_to: usize },
    /// After a call: whitespace and one `;` may lead to the next call.
    AfterCall,
    /// Everything from here on is content.
    Content,
}

impl Llama3JsonStream {
    pub(super) fn push(&mut self, delta: &str, out: &mut Emitter) {
        self.held.push_str(delta);
        self.advance(false, out);
    }

    pub(super) fn finish(&mut self, out: &mut Emitter) {
        self.advance(true, out);
    }

    fn advance(&mut self, at_end: bool, out: &mut Emitter) {
        loop {
            match &mut self.state {
                State::Content => {
                    out.content(&self.held);
                    self.held.clear();
                    return;
                }
                State::Start => {
                    let rest = self.held.trim_start();
                    let after_tag = match rest.strip_prefix(PYTHON_TAG) {
                        Some(after) => after.trim_start(),
                        // Empty, or the tag still arriving.
                        None if PYTHON_TAG.starts_with(rest) => "",
                        None => rest,
                    };
                    if after_tag.starts_with('{') {
                        let object_start = self.held.len() - after_tag.len();
                        self.state = State::InObject {
                            first: true,
                            object_start,
                            end: ValueEnd::default(),
                            scanned_to: object_start,
                        };
                    } else if !after_tag.is_empty() || at_end {
                        self.state = State::Content;
                    } else {
                        return;
                    }
                }
                State::InObject { first, object_start, end, scanned_to } => {
                    let scan = end.feed(&self.held.as_bytes()[*scanned_to..]);
                    *scanned_to = self.held.len();
                    let (first, object_start) = (*first, *object_start);
                    let call = match scan {
                        Scan::Open if !at_end => return,
                        Scan::Closed(len) => {
                            let object_end = object_start + len;
                            parse_call(&self.held[object_start..object_end]).map(|call| (call, object_end))
                        }
                        Scan::Open | Scan::Failed => None,
                    };
                    if let Some((call, object_end)) = call {
                        out.call(call);
                        self.held.drain(..object_end);
                        self.state = State::AfterCall;
                    } else {
                        // Not a call. The first object decides for the whole reply, which is then
                        // content as written; a later one only ends the calls.
                        out.content(if first { &self.held } else { self.held.trim_start() });
                        self.held.clear();
                        self.state = State::Content;
                    }
                }
                State::AfterCall => {
                    let rest = self.held.trim_start();
                    let next = rest.strip_prefix(';').unwrap_or(rest).trim_start();
                    if next.starts_with('{') {
                        let object_start = self.held.len() - next.len();
                        self.state = State::InObject {
                            first: false,
                            object_start,
                            end: ValueEnd::default(),
                            scanned_to: object_start,
                        };
                    } else if !next.is_empty() {
                        out.content(self.held.trim_start());
                        self.held.clear();
                        self.state = State::Content;
                    } else {
                        if at_end {
                            // Whitespace or a `;` after the last call: separators, not content.
                            self.held.clear();
                        }
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::tokenizer::tool_calls::tests::{call, content_only};
    use crate::tokenizer::tool_calls::{parse, ParsedOutput, StreamEvent, ToolCallFormat, ToolCallStream};

    fn llama(text: &str) -> ParsedOutput {
        parse(ToolCallFormat::Llama3Json, text)
    }

    // Replies in the shape Llama-3.1-8B-Instruct writes for custom tools: its chat template asks
    // for `{"name": function name, "parameters": dictionary of argument name and its value}` and
    // renders past calls as `{"name": "...", "parameters": {...}}`. Written by hand in that shape,
    // not captured from a model run.

    #[test]
    fn single_call() {
        let out = llama(
            r#"{"name": "get_current_weather", "parameters": {"location": "San Francisco, CA", "unit": "celsius"}}"#,
        );
        assert_eq!(out.content, "");
        assert_eq!(
            out.tool_calls,
            vec![call("get_current_weather", r#"{"location":"San Francisco, CA","unit":"celsius"}"#)]
        );
    }

    #[test]
    fn python_tag_prefix_and_surrounding_whitespace() {
        let out = llama("<|python_tag|>{\"name\": \"get_stock_price\", \"parameters\": {\"ticker\": \"NVDA\"}}\n");
        assert_eq!(
            out,
            ParsedOutput { content: String::new(), tool_calls: vec![call("get_stock_price", r#"{"ticker":"NVDA"}"#)] }
        );
        let out = llama("\n\n <|python_tag|> {\"name\": \"get_stock_price\", \"arguments\": {\"ticker\": \"NVDA\"}}");
        assert_eq!(out.tool_calls, vec![call("get_stock_price", r#"{"ticker":"NVDA"}"#)]);
    }

    #[test]
    fn calls_separated_by_semicolons_or_newlines() {
        let out = llama(concat!(
            r#"{"name": "get_weather", "parameters": {"city": "Paris"}}; "#,
            r#"{"name": "get_weather", "parameters": {"city": "Tokyo"}};"#,
            "\n{\"name\": \"get_time\", \"parameters\": {\"timezone\": \"Asia/Tokyo\"}};",
        ));
        assert_eq!(out.content, "");
        assert_eq!(
            out.tool_calls,
            vec![
                call("get_weather", r#"{"city":"Paris"}"#),
                call("get_weather", r#"{"city":"Tokyo"}"#),
                call("get_time", r#"{"timezone":"Asia/Tokyo"}"#),
            ]
        );
    }

    #[test]
    fn nested_unicode_and_escaped_arguments() {
        let out = llama(
            r#"{"name": "send_message", "parameters": {"to": ["Zoë", "李雷"], "body": "He said \"ok\" \\o/ ✓", "meta": {"urgent": true, "retries": 0}}}"#,
        );
        assert_eq!(
            out.tool_calls,
            vec![call(
                "send_message",
                r#"{"to":["Zoë","李雷"],"body":"He said \"ok\" \\o/ ✓","meta":{"urgent":true,"retries":0}}"#
            )]
        );
    }

    #[test]
    fn text_after_the_last_call_is_content() {
        let out = llama(
            "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}\n\nI have asked for the weather.",
        );
        assert_eq!(out.content, "I have asked for the weather.");
        assert_eq!(out.tool_calls.len(), 1);
        // A second object that is not a call ends the calls; it and everything after it is content.
        let out = llama(r#"{"name": "a", "parameters": {}}; {"name": "b"} trailing"#);
        assert_eq!(out.tool_calls, vec![call("a", "{}")]);
        assert_eq!(out.content, r#"; {"name": "b"} trailing"#);
        // So is a stray closing brace: the call before it is complete.
        let out = llama(r#"{"name": "get_weather", "parameters": {"city": "Paris"}}}"#);
        assert_eq!(out.tool_calls, vec![call("get_weather", r#"{"city":"Paris"}"#)]);
        assert_eq!(out.content, "}");
    }

    #[test]
    fn replies_that_are_not_calls_stay_content_verbatim() {
        for text in [
            "I'm sorry, I can't check live weather, but Paris is usually mild in May.",
            "  The JSON format looks like {\"name\": \"f\", \"parameters\": {}}.",
            "{\"answer\": 42}",
            "{\"name\": \"Ada Lovelace\", \"born\": 1815}\n",
            // Cut off by max_tokens.
            "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Par",
            "{\"name\": \"get_weather\", \"parameters\": [\"Paris\"]}",
            "{\"a\": [}",
            // A built-in tool call, Python syntax rather than JSON.
            "<|python_tag|>brave_search.call(query=\"weather in Menlo Park\")",
            "<|python_tag|>",
            "\n\n",
            "",
        ] {
            assert_eq!(llama(text), content_only(text), "{text:?}");
        }
    }

    #[test]
    fn text_is_released_at_once_and_a_call_when_its_object_closes() {
        let mut stream = ToolCallStream::new(ToolCallFormat::Llama3Json);
        assert_eq!(stream.push("\n"), vec![]);
        assert_eq!(stream.push("The"), vec![StreamEvent::Content("\nThe".into())]);
        assert_eq!(stream.push(" answer"), vec![StreamEvent::Content(" answer".into())]);

        let mut stream = ToolCallStream::new(ToolCallFormat::Llama3Json);
        assert_eq!(stream.push("<|python"), vec![]);
        assert_eq!(stream.push("_tag|>{\"name\": \"f\", \"parameters\": {\"x\": {}"), vec![]);
        assert_eq!(
            stream.push("}}; "),
            vec![
                StreamEvent::ToolCallStart { index: 0, name: "f".into() },
                StreamEvent::ToolCallArguments { index: 0, fragment: r#"{"x":{}}"#.into() },
            ]
        );
        assert_eq!(stream.push("{\"name\": \"g\", \"parameters\": {}}").len(), 2);
        assert_eq!(stream.tool_call_count(), 2);
        assert_eq!(stream.finish(), vec![]);
    }
}
