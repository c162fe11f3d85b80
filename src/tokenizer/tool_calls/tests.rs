//! The streaming property: however a reply is split into deltas, the events add up to `parse` of
//! the whole reply, for every format. Checked on the sample replies (every split point, one
//! character at a time, random multi-splits) and on random replies built from markup pieces.

use super::*;
use crate::testing::test_seed;

/// splitmix64: the engine's generator is a layer above the tokenizer, and any well-mixed stream
/// does for choosing cuts.
struct Rng(u64);

impl Rng {
    fn seeded(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Replies in both formats, well-formed and not, in the shapes of the per-format tests (Qwen2.5
/// and Llama 3.1 style, written by hand). Every sample runs through both parsers.
const SAMPLES: &[&str] = &[
    // Hermes
    "<tool_call>\n{\"name\": \"get_current_weather\", \"arguments\": {\"location\": \"Boston, MA\", \"unit\": \"fahrenheit\"}}\n</tool_call>",
    "<tool_call>\n{\"name\": \"get_current_temperature\", \"arguments\": {\"location\": \"San Francisco, CA, USA\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_temperature_date\", \"arguments\": {\"location\": \"San Francisco, CA, USA\", \"date\": \"2024-10-01\"}}\n</tool_call>",
    "I'll check the weather in both cities.\n\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\nAnd the second one:\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Lyon\"}}\n</tool_call>\n",
    "<tool_call>\n{\"name\": \"create_event\", \"arguments\": {\"title\": \"Team sync\", \"attendees\": [\"ana@example.com\", \"bo@example.com\"], \"time\": {\"start\": \"2024-06-03T10:00:00\", \"duration_minutes\": 30}, \"recurring\": false}}\n</tool_call>",
    "<tool_call>\n{\"name\": \"search_notes\", \"arguments\": {\"query\": \"caf\\u00e9 \\\"Le Procope\\\" 東京 🍣\", \"path\": \"C:\\\\notes\\\\\"}}\n</tool_call>",
    "<tool_call>\n{\"name\": \"get_time\", \"arguments\": \"{\\\"timezone\\\": \\\"Europe/Berlin\\\"}\"}\n</tool_call>",
    "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Par",
    "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}}\n</tool_call>",
    "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Lyon\"}\n</tool_call>  \nDone. ",
    "  Use the <tool> element, or <tool_calls> in plural; </tool_call> alone is text.\n\n",
    "<tool_call><tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>\t<tool_call>{\"name\": \"g\", \"arguments\": {}}</tool_call>é",
    // Llama 3.1 JSON
    "{\"name\": \"get_current_weather\", \"parameters\": {\"location\": \"San Francisco, CA\", \"unit\": \"celsius\"}}",
    "<|python_tag|>{\"name\": \"get_stock_price\", \"parameters\": {\"ticker\": \"NVDA\"}}\n",
    "\n\n <|python_tag|> {\"name\": \"get_stock_price\", \"arguments\": {\"ticker\": \"NVDA\"}}",
    "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}; {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Tokyo\"}};\n{\"name\": \"get_time\", \"parameters\": {\"timezone\": \"Asia/Tokyo\"}};",
    "{\"name\": \"send_message\", \"parameters\": {\"to\": [\"Zoë\", \"李雷\"], \"body\": \"He said \\\"ok\\\" \\\\o/ ✓\", \"meta\": {\"urgent\": true}}}",
    "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}\n\nI have asked for the weather.",
    "{\"name\": \"a\", \"parameters\": {}}; {\"name\": \"b\"} trailing",
    "I'm sorry, I can't check live weather, but Paris is usually mild in May.",
    "{\"answer\": 42}",
    "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Par",
    "<|python_tag|>brave_search.call(query=\"weather in Menlo Park\")",
    "<|python_tag|>",
    "{\"a\": [}",
    "",
];

/// Feeds `deltas`, checks that the events are well-formed (calls numbered from 0 in order, each
/// start followed by its arguments, no empty content) and adds them up.
/// A call as the per-format tests expect it.
pub(super) fn call(name: &str, arguments: &str) -> ParsedToolCall {
    ParsedToolCall { name: name.into(), arguments: arguments.into() }
}

/// A reply read as content only.
pub(super) fn content_only(text: &str) -> ParsedOutput {
    ParsedOutput { content: text.into(), tool_calls: vec![] }
}

fn streamed(format: ToolCallFormat, deltas: &[&str]) -> ParsedOutput {
    let mut stream = ToolCallStream::new(format);
    let mut events: Vec<StreamEvent> = deltas.iter().flat_map(|delta| stream.push(delta)).collect();
    events.extend(stream.finish());
    let mut starts = 0;
    for (i, event) in events.iter().enumerate() {
        match event {
            StreamEvent::Content(text) => assert!(!text.is_empty(), "empty content event in {events:?}"),
            StreamEvent::ToolCallStart { index, .. } => {
                assert_eq!(*index, starts, "calls numbered in order: {events:?}");
                starts += 1;
            }
            StreamEvent::ToolCallArguments { index, .. } => assert!(
                matches!(events[..i].last(), Some(StreamEvent::ToolCallStart { index: started, .. }) if started == index),
                "arguments right after their call's start: {events:?}"
            ),
        }
    }
    assert_eq!(stream.tool_call_count(), starts);
    ParsedOutput::from_events(events)
}

/// `text` cut at `cuts` (sorted char boundaries).
fn split_at<'a>(text: &'a str, cuts: &[usize]) -> Vec<&'a str> {
    let mut pieces = Vec::with_capacity(cuts.len() + 1);
    let mut from = 0;
    for &cut in cuts {
        pieces.push(&text[from..cut]);
        from = cut;
    }
    pieces.push(&text[from..]);
    pieces
}

fn char_boundaries(text: &str) -> Vec<usize> {
    text.char_indices().map(|(i, _)| i).chain([text.len()]).collect()
}

/// Cuts between every two characters.
fn every_char(text: &str) -> Vec<usize> {
    text.char_indices().map(|(i, _)| i).skip(1).collect()
}

fn assert_split_invariant(format: ToolCallFormat, text: &str, cuts: &[usize]) {
    let whole = parse(format, text);
    let got = streamed(format, &split_at(text, cuts));
    assert_eq!(got, whole, "{format} reply {text:?} cut at {cuts:?}");
}

#[test]
fn samples_find_calls_so_the_properties_are_not_vacuous() {
    let calls = |format| SAMPLES.iter().filter(|text| !parse(format, text).tool_calls.is_empty()).count();
    assert_eq!(calls(ToolCallFormat::Hermes), 8);
    assert_eq!(calls(ToolCallFormat::Llama3Json), 7);
}

#[test]
fn every_single_split_point_adds_up_to_the_whole_parse() {
    for format in ToolCallFormat::ALL {
        for text in SAMPLES {
            for cut in char_boundaries(text) {
                assert_split_invariant(format, text, &[cut]);
            }
        }
    }
}

#[test]
fn one_character_at_a_time_adds_up_to_the_whole_parse() {
    for format in ToolCallFormat::ALL {
        for text in SAMPLES {
            assert_split_invariant(format, text, &every_char(text));
        }
    }
}

/// Random cut points; about one in `spacing` boundaries.
fn random_cuts(rng: &mut Rng, text: &str, spacing: u64) -> Vec<usize> {
    char_boundaries(text).into_iter().filter(|_| rng.next_u64().is_multiple_of(spacing)).collect()
}

#[test]
fn random_multi_splits_add_up_to_the_whole_parse() {
    let mut rng = Rng::seeded(test_seed());
    for format in ToolCallFormat::ALL {
        for text in SAMPLES {
            for round in 0..200 {
                let cuts = random_cuts(&mut rng, text, 2 + round % 12);
                assert_split_invariant(format, text, &cuts);
            }
        }
    }
}

/// Markup fragments, whole calls in both formats and plain text, to build replies no model was
/// asked for: boundary cases the samples miss.
const PIECES: &[&str] = &[
    "<tool_call>",
    "</tool_call>",
    "<tool_",
    "call>",
    "</tool",
    "<",
    "<|python_tag|>",
    "<|python",
    "\n",
    " ",
    "\t",
    ";",
    "{",
    "}",
    "[",
    "]",
    "\"",
    "\\",
    ":",
    ",",
    "\"name\"",
    "\"arguments\"",
    "\"parameters\"",
    "\"f\"",
    "{}",
    "é",
    "東",
    "🍣",
    "text",
    "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": [1, \"}\"]}}\n</tool_call>",
    "{\"name\": \"g\", \"parameters\": {\"b\": \"\\\"q\\\" <tool_call>\"}}",
    "{\"name\": \"h\", \"arguments\": \"{\\\"c\\\": 2}\"}",
];

#[test]
fn random_replies_are_split_invariant_and_kept_whole_without_calls() {
    let mut rng = Rng::seeded(test_seed());
    for _ in 0..3000 {
        let len = rng.next_u64() % 24;
        let text: String = (0..len).map(|_| PIECES[(rng.next_u64() % PIECES.len() as u64) as usize]).collect();
        for format in ToolCallFormat::ALL {
            let whole = parse(format, &text);
            if whole.tool_calls.is_empty() {
                assert_eq!(whole.content, text, "{format}: without calls the content is the reply");
            }
            assert_split_invariant(format, &text, &every_char(&text));
            for spacing in [2, 5] {
                let cuts = random_cuts(&mut rng, &text, spacing);
                assert_split_invariant(format, &text, &cuts);
            }
        }
    }
}
