//! Which byte strings are prefixes of a JSON document valid under a compiled schema: a
//! pushdown automaton run over bytes, with a set of configurations where the schema leaves a
//! choice open (`anyOf`, which property a key starts, whether a number has ended).
//!
//! A configuration is a stack of frames: the object or array being filled and where in it, and
//! on top the value being read. A byte moves every configuration; those it cannot move die.

use super::schema::{CompiledSchema, Node, NodeId};

/// Longest run of whitespace between tokens: a model cannot pad forever with newlines.
const MAX_WHITESPACE_RUN: u8 = 8;
/// Deepest nesting of objects and arrays in the output.
const MAX_DEPTH: usize = 32;
/// More open alternatives than this and the document is refused: no real schema branches so far.
const MAX_CONFIGS: usize = 256;
/// Digits in a number's integer part and in its fraction, and in its exponent: every number
/// generated fits an i64 (integers) or a finite f64, which JSON parsers (serde_json, JavaScript)
/// refuse or round beyond. Narrower than JSON allows, so every output still validates.
const MAX_NUMBER_DIGITS: u8 = 18;
const MAX_EXPONENT_DIGITS: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum NumberAt {
    Minus,
    Zero,
    Int,
    Dot,
    Fraction,
    Exponent,
    ExponentSign,
    ExponentDigits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum StringAt {
    Plain,
    Escape,
    /// `\u` with this many hex digits left; `surrogate_risk`: the first digit was d/D.
    Unicode {
        left: u8,
        surrogate_risk: bool,
    },
    /// Inside a multi-byte UTF-8 character: continuation bytes left and the range of the next.
    Utf8 {
        left: u8,
        low: u8,
        high: u8,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ObjectAt {
    /// After `{`: a key or `}`.
    Start,
    /// After `,`: a key.
    Key,
    /// Reading the key of declared property `p` (its literal is the frame above).
    InKey(u8),
    /// Reading a free key (a string frame above).
    InFreeKey,
    Colon(u8),
    FreeColon,
    /// A value is the frame above: of property `p`, or free.
    Value(u8),
    FreeValue,
    /// After a value: `,` or `}`.
    Next,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ArrayAt {
    Start,
    Item,
    InItem,
    Next,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Frame {
    /// Before a value of this node (whitespace allowed).
    Value(NodeId),
    Literal {
        literal: usize,
        at: usize,
    },
    String(StringAt),
    /// A string whose decoded content must match `CompiledSchema::patterns[pattern]`, whose DFA
    /// is in `state`.
    PatternString {
        at: StringAt,
        pattern: u16,
        state: u32,
    },
    /// `digits`: how many digits the current part (integer, fraction, exponent) has.
    Number {
        integer: bool,
        at: NumberAt,
        digits: u8,
    },
    Object {
        node: NodeId,
        seen: u64,
        at: ObjectAt,
    },
    Array {
        node: NodeId,
        count: u32,
        at: ArrayAt,
    },
    /// The document is complete.
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Config {
    stack: Vec<Frame>,
    whitespace_run: u8,
}

/// The state of one output: every configuration still alive.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SchemaMatcher {
    configs: Vec<Config>,
}

fn is_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\n' | b'\r' | b'\t')
}

impl SchemaMatcher {
    pub fn new(schema: &CompiledSchema) -> SchemaMatcher {
        SchemaMatcher { configs: vec![Config { stack: vec![Frame::Value(schema.root)], whitespace_run: 0 }] }
    }

    /// Feeds `bytes`; false (and the matcher unchanged) if they cannot continue a valid document.
    pub fn feed(&mut self, schema: &CompiledSchema, bytes: &[u8]) -> bool {
        let mut configs = self.configs.clone();
        for &byte in bytes {
            let mut next = Vec::new();
            for config in configs {
                step(schema, config, byte, &mut next);
                if next.len() > MAX_CONFIGS {
                    return false;
                }
            }
            if next.is_empty() {
                return false;
            }
            configs = next;
        }
        self.configs = configs;
        true
    }

    /// Whether the bytes so far could continue into a valid document.
    pub fn can_feed(&self, schema: &CompiledSchema, bytes: &[u8]) -> bool {
        self.clone().feed(schema, bytes)
    }

    /// The bytes so far are a whole valid document. (A document that is a bare number could go
    /// on with more digits; it counts as complete where it may end.)
    pub fn is_complete(&self) -> bool {
        self.configs.iter().any(|c| match c.stack.as_slice() {
            [Frame::Done] => true,
            [Frame::Number { at, .. }] => number_may_end(*at),
            _ => false,
        })
    }
}

/// Moves `config` by `byte` into `out` (zero, one or several configurations).
fn step(schema: &CompiledSchema, mut config: Config, byte: u8, out: &mut Vec<Config>) {
    let Some(&top) = config.stack.last() else { return };
    if is_whitespace(byte) && allows_whitespace(top) {
        if config.whitespace_run < MAX_WHITESPACE_RUN {
            config.whitespace_run += 1;
            push_unique(out, config);
        }
        return;
    }
    if !matches!(top, Frame::String(_) | Frame::PatternString { .. } | Frame::Literal { .. }) {
        config.whitespace_run = 0;
    }
    match top {
        Frame::Done => {}
        Frame::Value(node) => start_value(schema, config, node, byte, out),
        Frame::Literal { literal, at } => {
            let bytes = &schema.literals[literal];
            if bytes.get(at) == Some(&byte) {
                if at + 1 == bytes.len() {
                    finish_top(schema, config, out);
                } else {
                    set_top(&mut config, Frame::Literal { literal, at: at + 1 });
                    push_unique(out, config);
                }
            }
        }
        Frame::String(at) => {
            if let Some(next) = string_step(at, byte) {
                match next {
                    None => finish_top(schema, config, out),
                    Some(at) => {
                        set_top(&mut config, Frame::String(at));
                        push_unique(out, config);
                    }
                }
            }
        }
        Frame::PatternString { at, pattern, state } => {
            let compiled = &schema.patterns[pattern as usize];
            if at == StringAt::Plain && byte == b'"' {
                if compiled.matches_at_end(state) {
                    finish_top(schema, config, out);
                }
                return;
            }
            // A pattern reads the decoded text: the byte itself, or what an escape stands for.
            // `\u` escapes are not generated here (the character itself can be).
            let decoded = match (at, byte) {
                // An escape opens only where some escaped character may come: a `\` the pattern
                // can never get past would leave the output with no way to go on.
                (StringAt::Plain, b'\\') if !ESCAPED.iter().any(|&e| compiled.next(state, unescape(e)).is_some()) => {
                    return
                }
                (StringAt::Plain, b'\\') => None,
                (StringAt::Escape, b'u') => return,
                (StringAt::Escape, _) => Some(unescape(byte)),
                _ => Some(byte),
            };
            let Some(Some(next)) = string_step(at, byte) else { return };
            let state = match decoded {
                Some(decoded) => match compiled.next(state, decoded) {
                    Some(state) => state,
                    None => return,
                },
                None => state,
            };
            set_top(&mut config, Frame::PatternString { at: next, pattern, state });
            push_unique(out, config);
        }
        Frame::Number { integer, at, digits } => match number_step(integer, at, digits, byte) {
            Some((at, digits)) => {
                set_top(&mut config, Frame::Number { integer, at, digits });
                push_unique(out, config);
            }
            // The byte does not continue the number: if it may end here, the byte belongs to
            // what holds the number.
            None if number_may_end(at) => {
                let mut ended = Vec::new();
                finish_top(schema, config, &mut ended);
                for config in ended {
                    step(schema, config, byte, out);
                }
            }
            None => {}
        },
        Frame::Object { node, seen, at } => object_step(schema, config, node, seen, at, byte, out),
        Frame::Array { node, count, at } => array_step(schema, config, node, count, at, byte, out),
    }
}

fn allows_whitespace(frame: Frame) -> bool {
    match frame {
        Frame::Value(_) => true,
        Frame::Object { at, .. } => !matches!(at, ObjectAt::InKey(_) | ObjectAt::InFreeKey),
        Frame::Array { at, .. } => at != ArrayAt::InItem,
        _ => false,
    }
}

fn push_unique(out: &mut Vec<Config>, config: Config) {
    if !out.contains(&config) {
        out.push(config);
    }
}

fn set_top(config: &mut Config, frame: Frame) {
    if let Some(top) = config.stack.last_mut() {
        *top = frame;
    }
}

/// The first byte of a value of `node`.
fn start_value(schema: &CompiledSchema, mut config: Config, node: NodeId, byte: u8, out: &mut Vec<Config>) {
    match &schema.nodes[node] {
        Node::AnyOf(alternatives) => {
            for &alternative in alternatives {
                let mut branch = config.clone();
                set_top(&mut branch, Frame::Value(alternative));
                step(schema, branch, byte, out);
            }
        }
        Node::Literals(literals) => {
            for &literal in literals {
                let mut branch = config.clone();
                set_top(&mut branch, Frame::Literal { literal, at: 0 });
                step(schema, branch, byte, out);
            }
        }
        Node::Number { integer } => {
            // A number starts with `-` or a digit (what may follow a leading `-`).
            let at =
                if byte == b'-' { Some((NumberAt::Minus, 0)) } else { number_step(*integer, NumberAt::Minus, 0, byte) };
            if let Some((at, digits)) = at {
                set_top(&mut config, Frame::Number { integer: *integer, at, digits });
                push_unique(out, config);
            }
        }
        Node::String { pattern } => {
            if byte == b'"' {
                let frame = match pattern {
                    None => Frame::String(StringAt::Plain),
                    Some(p) => Frame::PatternString {
                        at: StringAt::Plain,
                        pattern: *p as u16,
                        state: schema.patterns[*p].start,
                    },
                };
                set_top(&mut config, frame);
                push_unique(out, config);
            }
        }
        Node::Object { .. } => {
            if byte == b'{' && config.stack.len() < 2 * MAX_DEPTH {
                set_top(&mut config, Frame::Object { node, seen: 0, at: ObjectAt::Start });
                push_unique(out, config);
            }
        }
        Node::Array { .. } => {
            if byte == b'[' && config.stack.len() < 2 * MAX_DEPTH {
                set_top(&mut config, Frame::Array { node, count: 0, at: ArrayAt::Start });
                push_unique(out, config);
            }
        }
        Node::Pending => {}
    }
}

/// The value on top is complete: pop it and tell what held it.
fn finish_top(schema: &CompiledSchema, mut config: Config, out: &mut Vec<Config>) {
    config.stack.pop();
    let parent = match config.stack.last_mut() {
        None => {
            config.stack.push(Frame::Done);
            push_unique(out, config);
            return;
        }
        Some(parent) => parent,
    };
    match parent {
        Frame::Object { seen, at, .. } => {
            *at = match *at {
                ObjectAt::InKey(p) => ObjectAt::Colon(p),
                ObjectAt::InFreeKey => ObjectAt::FreeColon,
                ObjectAt::Value(p) => {
                    *seen |= 1 << p;
                    ObjectAt::Next
                }
                ObjectAt::FreeValue => ObjectAt::Next,
                _ => return,
            };
        }
        Frame::Array { node, count, at } if *at == ArrayAt::InItem => {
            // Beyond the larger bound the count no longer matters: arrays of any longer length
            // share one state, which keeps the set of states (and the mask cache) finite.
            let relevant = match &schema.nodes[*node] {
                Node::Array { min_items, max_items, .. } => (*min_items).max(max_items.unwrap_or(0)),
                _ => u32::MAX,
            };
            *count = (*count + 1).min(relevant);
            *at = ArrayAt::Next;
        }
        _ => return,
    }
    push_unique(out, config);
}

fn object_step(
    schema: &CompiledSchema,
    mut config: Config,
    node: NodeId,
    seen: u64,
    at: ObjectAt,
    byte: u8,
    out: &mut Vec<Config>,
) {
    let Node::Object { properties, required, extra } = &schema.nodes[node] else { return };
    let close_ok = seen & required == *required;
    let unseen = (0..properties.len()).filter(|&p| seen & (1 << p) == 0);
    let set = |config: &mut Config, at: ObjectAt| set_top(config, Frame::Object { node, seen, at });
    match (at, byte) {
        (ObjectAt::Start | ObjectAt::Next, b'}') if close_ok => finish_top(schema, config, out),
        (ObjectAt::Next, b',') if unseen.clone().next().is_some() || extra.is_some() => {
            set(&mut config, ObjectAt::Key);
            push_unique(out, config);
        }
        (ObjectAt::Start | ObjectAt::Key, b'"') => {
            for p in unseen {
                let mut branch = config.clone();
                set(&mut branch, ObjectAt::InKey(p as u8));
                branch.stack.push(Frame::Literal { literal: properties[p].0, at: 0 });
                push_unique(out, branch);
            }
            if extra.is_some() {
                set(&mut config, ObjectAt::InFreeKey);
                config.stack.push(Frame::String(StringAt::Plain));
                push_unique(out, config);
            }
        }
        (ObjectAt::Colon(p), b':') => {
            set(&mut config, ObjectAt::Value(p));
            config.stack.push(Frame::Value(properties[p as usize].1));
            push_unique(out, config);
        }
        (ObjectAt::FreeColon, b':') => {
            if let Some(extra) = extra {
                set(&mut config, ObjectAt::FreeValue);
                config.stack.push(Frame::Value(*extra));
                push_unique(out, config);
            }
        }
        _ => {}
    }
}

fn array_step(
    schema: &CompiledSchema,
    mut config: Config,
    node: NodeId,
    count: u32,
    at: ArrayAt,
    byte: u8,
    out: &mut Vec<Config>,
) {
    let Node::Array { items, min_items, max_items } = &schema.nodes[node] else { return };
    let room = max_items.is_none_or(|max| count < max);
    match (at, byte) {
        (ArrayAt::Start | ArrayAt::Next, b']') if count >= *min_items => finish_top(schema, config, out),
        (ArrayAt::Next, b',') if room => {
            set_top(&mut config, Frame::Array { node, count, at: ArrayAt::Item });
            push_unique(out, config);
        }
        (ArrayAt::Start | ArrayAt::Item, _) if room => {
            set_top(&mut config, Frame::Array { node, count, at: ArrayAt::InItem });
            config.stack.push(Frame::Value(*items));
            step(schema, config, byte, out);
        }
        _ => {}
    }
}

/// The next state of a number after `byte` and the digits of its current part, None if `byte`
/// does not continue it.
fn number_step(integer: bool, at: NumberAt, digits: u8, byte: u8) -> Option<(NumberAt, u8)> {
    use NumberAt::*;
    let next = match (at, byte) {
        (Minus, b'0') => Zero,
        (Minus, b'1'..=b'9') => Int,
        (Int, b'0'..=b'9') => Int,
        (Zero | Int, b'.') if !integer => Dot,
        (Zero | Int | Fraction, b'e' | b'E') if !integer => Exponent,
        (Dot | Fraction, b'0'..=b'9') => Fraction,
        (Exponent, b'+' | b'-') => ExponentSign,
        (Exponent | ExponentSign | ExponentDigits, b'0'..=b'9') => ExponentDigits,
        _ => return None,
    };
    let digits = if byte.is_ascii_digit() { digits + 1 } else { 0 };
    let limit = if next == ExponentDigits { MAX_EXPONENT_DIGITS } else { MAX_NUMBER_DIGITS };
    (digits <= limit).then_some((next, digits))
}

/// The one-character escapes (after `\\`) a patterned string may use.
const ESCAPED: [u8; 8] = [b'"', b'\\', b'/', b'b', b'f', b'n', b'r', b't'];

/// The byte a one-character escape (after `\\`) stands for.
fn unescape(byte: u8) -> u8 {
    match byte {
        b'b' => 0x08,
        b'f' => 0x0c,
        b'n' => b'\n',
        b'r' => b'\r',
        b't' => b'\t',
        other => other,
    }
}

fn number_may_end(at: NumberAt) -> bool {
    matches!(at, NumberAt::Zero | NumberAt::Int | NumberAt::Fraction | NumberAt::ExponentDigits)
}

/// The next state inside a string after `byte`: Some(None) when it closes the string, None when
/// the byte cannot be there.
#[allow(clippy::option_option)]
fn string_step(at: StringAt, byte: u8) -> Option<Option<StringAt>> {
    use StringAt::*;
    let next = match at {
        Plain => match byte {
            b'"' => return Some(None),
            b'\\' => Escape,
            0x00..=0x1f => return None,
            0x20..=0x7f => Plain,
            0xc2..=0xdf => Utf8 { left: 1, low: 0x80, high: 0xbf },
            0xe0 => Utf8 { left: 2, low: 0xa0, high: 0xbf },
            0xed => Utf8 { left: 2, low: 0x80, high: 0x9f },
            0xe1..=0xef => Utf8 { left: 2, low: 0x80, high: 0xbf },
            0xf0 => Utf8 { left: 3, low: 0x90, high: 0xbf },
            0xf4 => Utf8 { left: 3, low: 0x80, high: 0x8f },
            0xf1..=0xf3 => Utf8 { left: 3, low: 0x80, high: 0xbf },
            _ => return None,
        },
        Escape => match byte {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Plain,
            b'u' => Unicode { left: 4, surrogate_risk: false },
            _ => return None,
        },
        Unicode { left, surrogate_risk } => {
            if !byte.is_ascii_hexdigit() {
                return None;
            }
            // \uD800-\uDFFF alone is not a character; serde_json and most parsers refuse it.
            if left == 3 && surrogate_risk && matches!(byte, b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F') {
                return None;
            }
            match left {
                1 => Plain,
                _ => Unicode { left: left - 1, surrogate_risk: left == 4 && matches!(byte, b'd' | b'D') },
            }
        }
        Utf8 { left, low, high } => {
            if !(low..=high).contains(&byte) {
                return None;
            }
            match left {
                1 => Plain,
                _ => Utf8 { left: left - 1, low: 0x80, high: 0xbf },
            }
        }
    };
    Some(Some(next))
}
