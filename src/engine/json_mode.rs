//! JSON mode: a byte-level JSON acceptor used as a token mask, so the output is always a JSON
//! object. Each candidate token is tried on a copy of the acceptor state; the state is `Copy`
//! (a bit stack instead of a Vec) so trying all of a 50k vocabulary costs no allocation.

use std::sync::Arc;

use super::request::TokenConstraint;

/// Nesting deeper than this is refused: it is never needed and keeps the state fixed-size.
const MAX_DEPTH: u32 = 64;
/// Longest run of whitespace allowed, so a model cannot pad forever with newlines.
const MAX_WHITESPACE_RUN: u8 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Before the top-level object.
    Start,
    Value,
    /// Right after `{`: a key or `}`.
    KeyOrClose,
    Key,
    Colon,
    /// After a value inside a container: `,` or the closing bracket.
    CommaOrClose,
    /// Right after `[`: a value or `]`.
    ValueOrClose,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lexeme {
    None,
    /// Inside a string; `escape` counts where we are in an escape (0 none, 1 after `\`,
    /// 2..=5 reading the hex digits of `\u`).
    String {
        key: bool,
        escape: u8,
    },
    Number(NumberPart),
    /// Inside `true`, `false` or `null`: the literal and how many bytes are matched.
    Literal {
        word: &'static [u8],
        matched: u8,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumberPart {
    Minus,
    Zero,
    Integer,
    Point,
    Fraction,
    Exponent,
    ExponentSign,
    ExponentDigits,
}

impl NumberPart {
    /// A number may end here.
    fn complete(self) -> bool {
        matches!(self, NumberPart::Zero | NumberPart::Integer | NumberPart::Fraction | NumberPart::ExponentDigits)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonState {
    expect: Expect,
    lexeme: Lexeme,
    /// Bit i set: container i is an array (else an object).
    stack: u64,
    depth: u32,
    whitespace_run: u8,
}

impl Default for JsonState {
    fn default() -> Self {
        JsonState { expect: Expect::Start, lexeme: Lexeme::None, stack: 0, depth: 0, whitespace_run: 0 }
    }
}

impl JsonState {
    pub fn is_complete(&self) -> bool {
        self.expect == Expect::Done
    }

    /// Feeds all bytes; false (and a state to discard) when any is not valid JSON here.
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        bytes.iter().all(|&b| self.feed_byte(b))
    }

    fn feed_byte(&mut self, byte: u8) -> bool {
        match self.lexeme {
            Lexeme::String { key, escape } => return self.string_byte(key, escape, byte),
            Lexeme::Literal { word, matched } => {
                if word[matched as usize] != byte {
                    return false;
                }
                self.lexeme = if matched as usize + 1 == word.len() {
                    self.value_done();
                    Lexeme::None
                } else {
                    Lexeme::Literal { word, matched: matched + 1 }
                };
                return true;
            }
            Lexeme::Number(part) => {
                if let Some(next) = number_next(part, byte) {
                    self.lexeme = Lexeme::Number(next);
                    return true;
                }
                if !part.complete() {
                    return false;
                }
                // The byte ends the number and is then read as structure.
                self.lexeme = Lexeme::None;
                self.value_done();
            }
            Lexeme::None => {}
        }
        if matches!(byte, b' ' | b'\n' | b'\t' | b'\r') {
            if self.expect == Expect::Done || self.whitespace_run >= MAX_WHITESPACE_RUN {
                return false;
            }
            self.whitespace_run += 1;
            return true;
        }
        self.whitespace_run = 0;
        match (self.expect, byte) {
            (Expect::Start, b'{') => self.open(false),
            (Expect::Value | Expect::ValueOrClose, b'{') => self.open(false),
            (Expect::Value | Expect::ValueOrClose, b'[') => self.open(true),
            (Expect::Value | Expect::ValueOrClose, b'"') => {
                self.lexeme = Lexeme::String { key: false, escape: 0 };
                true
            }
            (Expect::Value | Expect::ValueOrClose, b'-') => self.start_number(NumberPart::Minus),
            (Expect::Value | Expect::ValueOrClose, b'0') => self.start_number(NumberPart::Zero),
            (Expect::Value | Expect::ValueOrClose, b'1'..=b'9') => self.start_number(NumberPart::Integer),
            (Expect::Value | Expect::ValueOrClose, b't') => self.start_literal(b"true"),
            (Expect::Value | Expect::ValueOrClose, b'f') => self.start_literal(b"false"),
            (Expect::Value | Expect::ValueOrClose, b'n') => self.start_literal(b"null"),
            (Expect::ValueOrClose, b']') => self.close(true),
            (Expect::KeyOrClose, b'}') => self.close(false),
            (Expect::KeyOrClose | Expect::Key, b'"') => {
                self.lexeme = Lexeme::String { key: true, escape: 0 };
                true
            }
            (Expect::Colon, b':') => {
                self.expect = Expect::Value;
                true
            }
            (Expect::CommaOrClose, b',') => {
                self.expect = if self.in_array() { Expect::Value } else { Expect::Key };
                true
            }
            (Expect::CommaOrClose, b']') if self.in_array() => self.close(true),
            (Expect::CommaOrClose, b'}') if !self.in_array() => self.close(false),
            _ => false,
        }
    }

    fn string_byte(&mut self, key: bool, escape: u8, byte: u8) -> bool {
        let next_escape = match escape {
            0 => match byte {
                b'"' => {
                    self.lexeme = Lexeme::None;
                    if key {
                        self.expect = Expect::Colon;
                    } else {
                        self.value_done();
                    }
                    return true;
                }
                b'\\' => 1,
                0x00..=0x1f => return false,
                _ => 0,
            },
            1 => match byte {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 0,
                b'u' => 2,
                _ => return false,
            },
            _ if byte.is_ascii_hexdigit() => {
                if escape == 5 {
                    0
                } else {
                    escape + 1
                }
            }
            _ => return false,
        };
        self.lexeme = Lexeme::String { key, escape: next_escape };
        true
    }

    fn start_number(&mut self, part: NumberPart) -> bool {
        self.lexeme = Lexeme::Number(part);
        true
    }

    fn start_literal(&mut self, word: &'static [u8]) -> bool {
        self.lexeme = Lexeme::Literal { word, matched: 1 };
        true
    }

    fn in_array(&self) -> bool {
        self.depth > 0 && self.stack & (1 << (self.depth - 1)) != 0
    }

    fn open(&mut self, array: bool) -> bool {
        if self.depth == MAX_DEPTH {
            return false;
        }
        if array {
            self.stack |= 1 << self.depth;
        } else {
            self.stack &= !(1 << self.depth);
        }
        self.depth += 1;
        self.expect = if array { Expect::ValueOrClose } else { Expect::KeyOrClose };
        true
    }

    fn close(&mut self, array: bool) -> bool {
        if self.depth == 0 || self.in_array() != array {
            return false;
        }
        self.depth -= 1;
        self.value_done();
        true
    }

    /// A complete value was read: what may follow depends on the enclosing container.
    fn value_done(&mut self) {
        self.expect = if self.depth == 0 { Expect::Done } else { Expect::CommaOrClose };
    }
}

fn number_next(part: NumberPart, byte: u8) -> Option<NumberPart> {
    use NumberPart::*;
    match (part, byte) {
        (Minus, b'0') => Some(Zero),
        (Minus, b'1'..=b'9') => Some(Integer),
        (Integer, b'0'..=b'9') => Some(Integer),
        (Zero | Integer, b'.') => Some(Point),
        (Point | Fraction, b'0'..=b'9') => Some(Fraction),
        (Zero | Integer | Fraction, b'e' | b'E') => Some(Exponent),
        (Exponent, b'+' | b'-') => Some(ExponentSign),
        (Exponent | ExponentSign | ExponentDigits, b'0'..=b'9') => Some(ExponentDigits),
        _ => None,
    }
}

/// JSON mode for one sequence: which tokens keep the output a valid JSON object prefix.
pub struct JsonObjectConstraint {
    /// Every token's output bytes; special tokens have none and are never allowed.
    token_bytes: Arc<Vec<Vec<u8>>>,
    state: JsonState,
}

impl JsonObjectConstraint {
    pub fn new(token_bytes: Arc<Vec<Vec<u8>>>) -> JsonObjectConstraint {
        JsonObjectConstraint { token_bytes, state: JsonState::default() }
    }
}

impl TokenConstraint for JsonObjectConstraint {
    fn allows(&self, token: u32) -> bool {
        match self.token_bytes.get(token as usize) {
            Some(bytes) if !bytes.is_empty() => self.state.clone().feed(bytes),
            _ => false,
        }
    }

    fn accept(&mut self, token: u32) {
        if let Some(bytes) = self.token_bytes.get(token as usize) {
            let fed = self.state.feed(bytes);
            debug_assert!(fed, "only allowed tokens are accepted");
        }
    }

    fn is_complete(&self) -> bool {
        self.state.is_complete()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(text: &str) -> Option<bool> {
        let mut s = JsonState::default();
        s.feed(text.as_bytes()).then_some(s.is_complete())
    }

    #[test]
    fn accepts_objects_and_their_prefixes() {
        for text in [
            r#"{}"#,
            r#"{"a": 1}"#,
            r#" {"a": [1, -2.5e+3, 0, true, false, null, "x\"\u00e9"], "b": {"c": {}}}"#,
            "{\"emoji\": \"😀\", \"n\": 0.5}",
        ] {
            assert_eq!(accepts(text), Some(true), "{text}");
            assert!(serde_json::from_str::<serde_json::Value>(text).unwrap().is_object());
            for cut in 0..text.len() {
                // Every byte prefix, even one ending inside a UTF-8 character of a string.
                let mut s = JsonState::default();
                assert!(s.feed(&text.as_bytes()[..cut]), "prefix of {text:?} cut at {cut}");
            }
        }
        assert_eq!(accepts(r#"{"a": 1"#), Some(false), "a prefix is not complete");
    }

    #[test]
    fn refuses_what_is_not_a_json_object() {
        for text in [
            "[1]",
            "\"s\"",
            "1",
            "{a: 1}",
            "{\"a\" 1}",
            "{\"a\": 01}",
            "{\"a\": 1,}",
            "{\"a\": [1,]}",
            "{\"a\": tru }",
            "{\"a\": 1}}",
            "{\"a\": 1} x",
            "{\"a\": \"\n\"}",
            "{\"a\": \"\\x\"}",
            "{\"a\": -}",
            "{\"a\": 1.}",
            "{\"a\": 1]",
            "{\"a\": [1}",
        ] {
            assert_eq!(accepts(text), None, "{text}");
        }
        assert_eq!(accepts("{                 }"), None, "whitespace runs are capped");
        let deep = "{\"a\":".to_string() + &"[".repeat(64);
        assert_eq!(accepts(&deep), None, "nesting is capped");
    }

    #[test]
    fn masks_tokens_by_their_bytes() {
        let vocab: Vec<Vec<u8>> =
            ["{", "}", "\"k\"", ":", " 1", "x", "", "{\"", "1}"].iter().map(|t| t.as_bytes().to_vec()).collect();
        let mut c = JsonObjectConstraint::new(Arc::new(vocab));
        let allowed = |c: &JsonObjectConstraint| (0..9).filter(|&t| c.allows(t)).collect::<Vec<u32>>();
        assert_eq!(allowed(&c), vec![0, 7], "only an opening brace starts the output; empty tokens never");
        c.accept(0);
        assert_eq!(allowed(&c), vec![1, 2]);
        c.accept(2);
        c.accept(3);
        // A value: an object, a string, a number, or a number that closes the object at once.
        assert_eq!(allowed(&c), vec![0, 2, 4, 7, 8]);
        c.accept(4);
        assert!(!c.is_complete());
        // After ` 1` the number may go on (`1}` continues it as "11}") or the object may close.
        assert_eq!(allowed(&c), vec![1, 8]);
        c.accept(1);
        assert!(c.is_complete());
        assert!(allowed(&c).is_empty());
    }
}
