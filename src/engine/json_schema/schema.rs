//! A JSON Schema compiled into the nodes the matcher walks. Every keyword is either understood,
//! an annotation that does not constrain (title, description, ...), or refused with an error
//! naming it: a schema is never silently half-applied.
//!
//! The compiled schema may allow fewer documents than the schema (never more): objects are
//! generated with their declared properties only, and `enum`/`const` values in their compact
//! serialization. Every output therefore validates, which is the guarantee structured outputs give.

use std::collections::HashMap;

use regex_automata::dfa::{dense, Automaton, StartKind};
use regex_automata::util::primitives::StateID;
use regex_automata::{Anchored, Input};
use serde_json::{Map, Value};

pub type NodeId = usize;

/// The most properties one object schema may declare (the matcher keeps a bit per property).
pub const MAX_PROPERTIES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// One of these exact byte strings (indices into `CompiledSchema::literals`): null, true,
    /// false, and `enum`/`const` values in compact JSON.
    Literals(Vec<usize>),
    Number {
        integer: bool,
    },
    /// A string; with `pattern`, its content (decoded) must match `patterns[pattern]`.
    String {
        pattern: Option<usize>,
    },
    Object {
        /// (name as the literal of its key, without the opening quote; value node)
        properties: Vec<(usize, NodeId)>,
        /// A bit per property in `properties` order.
        required: u64,
        /// Keys of any name, with values of this node (an object schema without properties).
        extra: Option<NodeId>,
    },
    Array {
        items: NodeId,
        min_items: u32,
        max_items: Option<u32>,
    },
    AnyOf(Vec<NodeId>),
    /// A node not yet compiled (a `$ref` being resolved); never left in a finished schema.
    Pending,
}

#[derive(Debug, Clone)]
pub struct CompiledSchema {
    pub nodes: Vec<Node>,
    pub literals: Vec<Vec<u8>>,
    pub patterns: Vec<StringPattern>,
    pub root: NodeId,
}

/// A string's `pattern` (or `format`) as a DFA over the string's decoded UTF-8 bytes, anchored
/// at its start and searching anywhere in it, as JSON Schema patterns do. Minimised, so a state
/// from which no match can be reached is the dead state: a prefix that cannot match dies at once.
#[derive(Debug, Clone)]
pub struct StringPattern {
    pub source: String,
    pub dfa: dense::DFA<Vec<u32>>,
    pub start: u32,
    /// The states from which a match can still be reached by characters a JSON string can
    /// hold: a control character other than \b \f \n \r \t needs a `\u` escape, which patterned
    /// strings do not use, so a state that needs one is as dead as the DFA's dead state.
    live: std::collections::HashSet<u32>,
}

impl StringPattern {
    /// Largest DFA a pattern may compile to: a hostile pattern is refused, not built.
    const MAX_DFA_BYTES: usize = 4 << 20;

    fn compile(source: &str, path: &str) -> Result<StringPattern, SchemaError> {
        // Unanchored in JSON Schema: the pattern may match anywhere, so the DFA (anchored at the
        // string's start) reads any prefix first and anything after.
        let wrapped = format!("(?s:.*?)(?:{source})(?s:.*)");
        let dfa = dense::Builder::new()
            .configure(
                dense::Config::new()
                    .start_kind(StartKind::Anchored)
                    .minimize(true)
                    .dfa_size_limit(Some(Self::MAX_DFA_BYTES))
                    .determinize_size_limit(Some(Self::MAX_DFA_BYTES)),
            )
            .build(&wrapped)
            .map_err(|e| error(path, format!("`pattern` `{source}` is not supported: {e}")))?;
        let start = dfa
            .start_state_forward(&Input::new("").anchored(Anchored::Yes))
            .map_err(|e| error(path, format!("`pattern` `{source}`: {e}")))?;
        let mut pattern =
            StringPattern { source: source.to_string(), dfa, start: start.as_u32(), live: Default::default() };
        pattern.live = pattern.live_states();
        if !pattern.live.contains(&pattern.start) {
            return Err(error(path, format!("`pattern` `{source}` matches no string a JSON output can write")));
        }
        Ok(pattern)
    }

    /// A byte a patterned string can hold: written as itself, or as a one-character escape.
    fn writable(byte: u8) -> bool {
        byte >= 0x20 || matches!(byte, 0x08 | 0x0c | b'\n' | b'\r' | b'\t')
    }

    /// Every state reachable from the start by writable bytes, then those of them from which a
    /// match is reachable (backwards from the states a string may end in).
    fn live_states(&self) -> std::collections::HashSet<u32> {
        let step = |state: u32, byte: u8| {
            let next = self.dfa.next_state(StateID::new_unchecked(state as usize), byte);
            (!self.dfa.is_dead_state(next)).then(|| next.as_u32())
        };
        let mut seen = std::collections::HashSet::from([self.start]);
        let mut queue = vec![self.start];
        let mut predecessors: HashMap<u32, Vec<u32>> = HashMap::new();
        while let Some(state) = queue.pop() {
            for byte in (0..=255u8).filter(|&b| Self::writable(b)) {
                if let Some(next) = step(state, byte) {
                    predecessors.entry(next).or_default().push(state);
                    if seen.insert(next) {
                        queue.push(next);
                    }
                }
            }
        }
        let mut live: std::collections::HashSet<u32> =
            seen.iter().copied().filter(|&state| self.matches_at_end(state)).collect();
        let mut queue: Vec<u32> = live.iter().copied().collect();
        while let Some(state) = queue.pop() {
            for &before in predecessors.get(&state).into_iter().flatten() {
                if live.insert(before) {
                    queue.push(before);
                }
            }
        }
        live
    }

    pub fn next(&self, state: u32, byte: u8) -> Option<u32> {
        let next = self.dfa.next_state(StateID::new_unchecked(state as usize), byte);
        let next = next.as_u32();
        self.live.contains(&next).then_some(next)
    }

    /// Whether the string may end in `state`.
    pub fn matches_at_end(&self, state: u32) -> bool {
        self.dfa.is_match_state(self.dfa.next_eoi_state(StateID::new_unchecked(state as usize)))
    }
}

/// A calendar date: years 0001 to 9999 (year 0 is valid RFC 3339 but refused by common parsers,
/// Python's among them), days within their month, 29 February in leap years only (every fourth
/// year, except centuries not divisible by 400).
const DATE: &str = concat!(
    "(([0-9]{3}[1-9]|[0-9]{2}[1-9][0-9]|[0-9][1-9][0-9]{2}|[1-9][0-9]{3})-((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|(0[469]|11)-(0[1-9]|[12][0-9]|30)|02-(0[1-9]|1[0-9]|2[0-8]))",
    "|([0-9]{2}(0[48]|[2468][048]|[13579][26])|(0[48]|[2468][048]|[13579][26])00)-02-29)"
);
const TIME: &str = r"([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])";

/// The `format`s supported, as patterns (anchored: the whole string).
fn format_pattern(format: &str) -> Option<String> {
    Some(match format {
        "date" => format!("^{DATE}$"),
        "time" => format!("^{TIME}$"),
        "date-time" => format!("^{DATE}T{TIME}$"),
        "uuid" => r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$".to_string(),
        "email" => r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$".to_string(),
        _ => return None,
    })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at {path})")]
pub struct SchemaError {
    /// A JSON pointer to the offending part of the schema.
    pub path: String,
    pub message: String,
}

/// Keywords that describe but do not constrain.
const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "$schema",
    "$id",
    "$comment",
    "default",
    "examples",
    "deprecated",
    "readOnly",
    "writeOnly",
    "$defs",
    "definitions",
];

/// The deepest `$ref` chain or nesting compiled, so a hostile schema cannot exhaust the stack.
const MAX_SCHEMA_DEPTH: usize = 64;

impl CompiledSchema {
    pub fn compile(schema: &Value) -> Result<CompiledSchema, SchemaError> {
        let mut compiler = Compiler {
            root: schema,
            nodes: Vec::new(),
            literals: Vec::new(),
            patterns: Vec::new(),
            refs: HashMap::new(),
            any: None,
        };
        let root = compiler.node(schema, "#", 0)?;
        let compiled =
            CompiledSchema { nodes: compiler.nodes, literals: compiler.literals, patterns: compiler.patterns, root };
        compiled.check_choices_consume()?;
        Ok(compiled)
    }

    /// Refuses a cycle of choices that reads nothing (`A = anyOf[$ref B]`, `B = $ref A`): the
    /// matcher would expand it forever.
    fn check_choices_consume(&self) -> Result<(), SchemaError> {
        // 0 unvisited, 1 on the current path, 2 done.
        let mut mark = vec![0u8; self.nodes.len()];
        fn visit(nodes: &[Node], node: NodeId, mark: &mut [u8]) -> bool {
            match mark[node] {
                1 => return false,
                2 => return true,
                _ => {}
            }
            mark[node] = 1;
            if let Node::AnyOf(alternatives) = &nodes[node] {
                if !alternatives.iter().all(|&a| visit(nodes, a, mark)) {
                    return false;
                }
            }
            mark[node] = 2;
            true
        }
        for node in 0..self.nodes.len() {
            if !visit(&self.nodes, node, &mut mark) {
                return Err(error("#", "the schema refers to itself without anything in between"));
            }
        }
        Ok(())
    }
}

struct Compiler<'a> {
    root: &'a Value,
    nodes: Vec<Node>,
    literals: Vec<Vec<u8>>,
    patterns: Vec<StringPattern>,
    /// `$ref` target pointer → its node, so recursive schemas compile to cycles.
    refs: HashMap<String, NodeId>,
    /// The node of "any value", made once.
    any: Option<NodeId>,
}

fn error(path: &str, message: impl Into<String>) -> SchemaError {
    SchemaError { path: path.to_string(), message: message.into() }
}

impl<'a> Compiler<'a> {
    fn add(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn literal(&mut self, bytes: Vec<u8>) -> usize {
        if let Some(i) = self.literals.iter().position(|l| *l == bytes) {
            return i;
        }
        self.literals.push(bytes);
        self.literals.len() - 1
    }

    fn literals_of(&mut self, values: &[Value]) -> Node {
        let ids =
            values.iter().map(|v| self.literal(serde_json::to_vec(v).expect("a JSON value serialises"))).collect();
        Node::Literals(ids)
    }

    /// Any JSON value: the schema `{}` or `true`.
    fn any(&mut self) -> NodeId {
        if let Some(any) = self.any {
            return any;
        }
        let any = self.add(Node::Pending);
        self.any = Some(any);
        let scalars = self.literals_of(&[Value::Null, Value::Bool(true), Value::Bool(false)]);
        let scalars = self.add(scalars);
        let number = self.add(Node::Number { integer: false });
        let string = self.add(Node::String { pattern: None });
        let object = self.add(Node::Object { properties: Vec::new(), required: 0, extra: Some(any) });
        let array = self.add(Node::Array { items: any, min_items: 0, max_items: None });
        self.nodes[any] = Node::AnyOf(vec![scalars, number, string, object, array]);
        any
    }

    fn node(&mut self, schema: &'a Value, path: &str, depth: usize) -> Result<NodeId, SchemaError> {
        if depth > MAX_SCHEMA_DEPTH {
            return Err(error(path, format!("the schema nests deeper than {MAX_SCHEMA_DEPTH} levels")));
        }
        let object = match schema {
            Value::Bool(true) => return Ok(self.any()),
            Value::Bool(false) => return Err(error(path, "the schema `false` allows no value")),
            Value::Object(object) => object,
            _ => return Err(error(path, "a schema must be an object or a boolean")),
        };
        if let Some(reference) = object.get("$ref") {
            return self.reference(object, reference, path, depth);
        }
        for keyword in object.keys() {
            if !ANNOTATIONS.contains(&keyword.as_str()) && !KNOWN.contains(&keyword.as_str()) {
                return Err(error(path, format!("the keyword `{keyword}` is not supported")));
            }
        }
        if let Some(value) = object.get("const") {
            let node = self.literals_of(std::slice::from_ref(value));
            return Ok(self.add(node));
        }
        if let Some(values) = object.get("enum") {
            let values = values.as_array().filter(|v| !v.is_empty());
            let values = values.ok_or_else(|| error(path, "`enum` must be a non-empty list"))?;
            let node = self.literals_of(values);
            return Ok(self.add(node));
        }
        if let Some(alternatives) = object.get("anyOf") {
            return self.alternatives(alternatives, &format!("{path}/anyOf"), depth);
        }
        if let Some(all) = object.get("allOf") {
            // One schema wrapped in allOf is how generators attach a description to a $ref.
            return match all.as_array().map(Vec::as_slice) {
                Some([single]) => self.node(single, &format!("{path}/allOf/0"), depth + 1),
                _ => Err(error(path, "`allOf` is supported with a single schema only")),
            };
        }
        match object.get("type") {
            None if object.contains_key("properties") => self.typed(object, "object", path, depth),
            None if object.contains_key("items") => self.typed(object, "array", path, depth),
            None => self.untyped(object, path),
            Some(Value::String(name)) => {
                check_keywords_apply(object, &[name.as_str()], path)?;
                self.typed(object, name, path, depth)
            }
            Some(Value::Array(names)) if !names.is_empty() => {
                let names: Vec<&str> = names
                    .iter()
                    .map(|n| n.as_str().ok_or_else(|| error(path, "`type` lists type names")))
                    .collect::<Result<_, _>>()?;
                check_keywords_apply(object, &names, path)?;
                let mut alternatives = Vec::new();
                for name in names {
                    alternatives.push(self.typed(object, name, path, depth)?);
                }
                Ok(self.add(Node::AnyOf(alternatives)))
            }
            Some(_) => Err(error(path, "`type` must be a type name or a list of them")),
        }
    }

    /// A schema with no type and no other constraint: any value.
    fn untyped(&mut self, object: &Map<String, Value>, path: &str) -> Result<NodeId, SchemaError> {
        match object.keys().find(|k| !ANNOTATIONS.contains(&k.as_str())) {
            Some(keyword) => Err(error(path, format!("`{keyword}` needs a `type` to apply to"))),
            None => Ok(self.any()),
        }
    }

    fn alternatives(&mut self, list: &'a Value, path: &str, depth: usize) -> Result<NodeId, SchemaError> {
        let list = list.as_array().filter(|l| !l.is_empty()).ok_or_else(|| error(path, "must be a non-empty list"))?;
        let mut nodes = Vec::new();
        for (i, alternative) in list.iter().enumerate() {
            nodes.push(self.node(alternative, &format!("{path}/{i}"), depth + 1)?);
        }
        Ok(self.add(Node::AnyOf(nodes)))
    }

    fn reference(
        &mut self,
        object: &Map<String, Value>,
        reference: &Value,
        path: &str,
        depth: usize,
    ) -> Result<NodeId, SchemaError> {
        if let Some(extra) = object.keys().find(|k| *k != "$ref" && !ANNOTATIONS.contains(&k.as_str())) {
            return Err(error(path, format!("`{extra}` beside `$ref` is not supported")));
        }
        let pointer = reference.as_str().ok_or_else(|| error(path, "`$ref` must be a string"))?;
        if let Some(&node) = self.refs.get(pointer) {
            return Ok(node);
        }
        let target = pointer
            .strip_prefix('#')
            .filter(|p| p.is_empty() || p.starts_with('/'))
            .and_then(|p| self.root.pointer(p))
            .ok_or_else(|| error(path, format!("`$ref` `{pointer}` is not a reference into this schema")))?;
        // Placeholder first: a reference back to this node while compiling it finds it.
        let placeholder = self.add(Node::Pending);
        self.refs.insert(pointer.to_string(), placeholder);
        let compiled = self.node(target, pointer, depth + 1)?;
        self.nodes[placeholder] = Node::AnyOf(vec![compiled]);
        Ok(placeholder)
    }

    fn typed(
        &mut self,
        object: &'a Map<String, Value>,
        type_name: &str,
        path: &str,
        depth: usize,
    ) -> Result<NodeId, SchemaError> {
        if !matches!(type_name, "string" | "integer" | "number" | "boolean" | "null" | "object" | "array") {
            return Err(error(path, format!("unknown type `{type_name}`")));
        }
        let node = match type_name {
            "string" => self.string(object, path)?,
            "integer" => Node::Number { integer: true },
            "number" => Node::Number { integer: false },
            "boolean" => self.literals_of(&[Value::Bool(true), Value::Bool(false)]),
            "null" => self.literals_of(&[Value::Null]),
            "object" => self.object(object, path, depth)?,
            _ => self.array(object, path, depth)?,
        };
        Ok(self.add(node))
    }

    fn string(&mut self, object: &Map<String, Value>, path: &str) -> Result<Node, SchemaError> {
        let length = string_length_pattern(object, path)?;
        let source = match (object.get("pattern"), object.get("format")) {
            (None, None) => match length {
                None => return Ok(Node::String { pattern: None }),
                Some(length) => length,
            },
            _ if length.is_some() => {
                return Err(error(
                    path,
                    "`minLength`/`maxLength` together with `pattern` or `format` are not supported",
                ))
            }
            (Some(_), Some(_)) => return Err(error(path, "`pattern` and `format` together are not supported")),
            (Some(Value::String(pattern)), None) => pattern.clone(),
            (Some(_), None) => return Err(error(path, "`pattern` must be a string")),
            (None, Some(format)) => {
                let name = format.as_str().unwrap_or_default();
                format_pattern(name).ok_or_else(|| {
                    error(path, format!("`format` `{name}` is not supported (date, time, date-time, uuid, email are)"))
                })?
            }
        };
        if self.patterns.len() >= u16::MAX as usize {
            return Err(error(path, "too many string patterns in one schema"));
        }
        self.patterns.push(StringPattern::compile(&source, path)?);
        Ok(Node::String { pattern: Some(self.patterns.len() - 1) })
    }

    fn object(&mut self, object: &'a Map<String, Value>, path: &str, depth: usize) -> Result<Node, SchemaError> {
        let properties: Option<&'a Map<String, Value>> = match object.get("properties") {
            None => None,
            Some(Value::Object(properties)) => Some(properties),
            Some(_) => return Err(error(path, "`properties` must be an object")),
        };
        let declared = properties.map_or(0, Map::len);
        if declared > MAX_PROPERTIES {
            return Err(error(path, format!("an object may declare at most {MAX_PROPERTIES} properties")));
        }
        let required: Vec<&str> = match object.get("required") {
            None => Vec::new(),
            Some(Value::Array(names)) => names
                .iter()
                .map(|n| n.as_str().ok_or_else(|| error(path, "`required` lists property names")))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(error(path, "`required` must be a list of names")),
        };
        let mut compiled = Vec::new();
        let mut required_bits = 0u64;
        for (i, (name, schema)) in properties.into_iter().flatten().enumerate() {
            let value = self.node(schema, &format!("{path}/properties/{name}"), depth + 1)?;
            // The key as it must be written after its opening quote: escaped, closing quote.
            let mut key = serde_json::to_vec(name).expect("a string serialises");
            key.remove(0);
            compiled.push((self.literal(key), value));
            if required.contains(&name.as_str()) {
                required_bits |= 1 << i;
            }
        }
        if let Some(missing) = required.iter().find(|n| !properties.is_some_and(|p| p.contains_key(**n))) {
            return Err(error(path, format!("`required` names `{missing}`, which `properties` does not declare")));
        }
        // With declared properties, only they are generated (allowed whatever additionalProperties
        // says); without, keys are free and values follow additionalProperties.
        let extra = if declared == 0 {
            match object.get("additionalProperties") {
                None | Some(Value::Bool(true)) => Some(self.any()),
                Some(Value::Bool(false)) => None,
                Some(schema) => Some(self.node(schema, &format!("{path}/additionalProperties"), depth + 1)?),
            }
        } else {
            None
        };
        Ok(Node::Object { properties: compiled, required: required_bits, extra })
    }

    fn array(&mut self, object: &'a Map<String, Value>, path: &str, depth: usize) -> Result<Node, SchemaError> {
        let items = match object.get("items") {
            None => self.any(),
            Some(schema) => self.node(schema, &format!("{path}/items"), depth + 1)?,
        };
        let count = |name: &str| -> Result<Option<u32>, SchemaError> {
            match object.get(name) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .map(Some)
                    .ok_or_else(|| error(path, format!("`{name}` must be a non-negative integer"))),
            }
        };
        let min_items = count("minItems")?.unwrap_or(0);
        let max_items = count("maxItems")?;
        if max_items.is_some_and(|max| max < min_items) {
            return Err(error(path, "`maxItems` is below `minItems`: no array fits"));
        }
        Ok(Node::Array { items, min_items, max_items })
    }
}

/// `minLength`/`maxLength` as a pattern over the string's characters (code points, as JSON
/// Schema counts them), or None when neither is given.
fn string_length_pattern(object: &Map<String, Value>, path: &str) -> Result<Option<String>, SchemaError> {
    let bound = |name: &str| -> Result<Option<u64>, SchemaError> {
        match object.get(name) {
            None => Ok(None),
            Some(v) => {
                v.as_u64().map(Some).ok_or_else(|| error(path, format!("`{name}` must be a non-negative integer")))
            }
        }
    };
    let (min, max) = (bound("minLength")?, bound("maxLength")?);
    if min.is_none() && max.is_none() {
        return Ok(None);
    }
    let min = min.unwrap_or(0);
    if max.is_some_and(|max| max < min) {
        return Err(error(path, "`maxLength` is below `minLength`: no string fits"));
    }
    // The DFA grows with the bound; the regex compiler refuses repetitions past 1000 and the
    // DFA size limit refuses what would be too large.
    let max = max.map(|m| m.to_string()).unwrap_or_default();
    Ok(Some(format!("^(?s:.){{{min},{max}}}$")))
}

/// Every keyword this compiler understands somewhere.
const KNOWN: &[&str] = &[
    "type",
    "const",
    "enum",
    "anyOf",
    "allOf",
    "$ref",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "pattern",
    "format",
    "minLength",
    "maxLength",
];

/// Refuses an object or array keyword where no listed type uses it (`items` on a string): the
/// schema's author meant something this schema does not say.
fn check_keywords_apply(object: &Map<String, Value>, types: &[&str], path: &str) -> Result<(), SchemaError> {
    for keyword in object.keys() {
        let owner = match keyword.as_str() {
            "properties" | "required" | "additionalProperties" => "object",
            "items" | "minItems" | "maxItems" => "array",
            "pattern" | "format" | "minLength" | "maxLength" => "string",
            _ => continue,
        };
        if !types.contains(&owner) {
            return Err(error(path, format!("`{keyword}` applies to type `{owner}`, which `type` does not list")));
        }
    }
    Ok(())
}
