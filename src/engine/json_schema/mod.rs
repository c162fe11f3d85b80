//! Structured outputs: decoding constrained by a JSON Schema, so the output always parses and
//! validates. `schema` compiles the schema (refusing what it does not support, by name);
//! `matcher` says which bytes may come next; `token_trie` and `automaton` turn that into which
//! tokens may, cached per schema so that a token costs a table lookup once a state is known;
//! `cache` keeps compiled schemas. JSON mode is the schema of any object.

pub mod automaton;
pub mod cache;
pub mod matcher;
pub mod schema;
pub mod token_trie;

use std::sync::Arc;

pub use automaton::SchemaAutomaton;
pub use cache::SchemaCache;
pub use matcher::SchemaMatcher;
pub use schema::{CompiledSchema, SchemaError};
pub use token_trie::TokenTrie;

use super::request::TokenConstraint;

/// One sequence's constraint: its own matcher state, and the schema's shared automaton.
pub struct SchemaConstraint {
    automaton: Arc<SchemaAutomaton>,
    /// Every token's output bytes, to move the matcher by the chosen token.
    token_bytes: Arc<Vec<Vec<u8>>>,
    matcher: SchemaMatcher,
}

impl SchemaConstraint {
    pub fn new(automaton: Arc<SchemaAutomaton>, token_bytes: Arc<Vec<Vec<u8>>>) -> SchemaConstraint {
        let matcher = SchemaMatcher::new(automaton.schema());
        SchemaConstraint { automaton, token_bytes, matcher }
    }
}

impl TokenConstraint for SchemaConstraint {
    fn allowed_tokens(&mut self, mask: &mut [u32]) {
        self.automaton.allowed_tokens(&self.matcher, mask);
    }

    fn accept(&mut self, token: u32) -> bool {
        match self.token_bytes.get(token as usize) {
            Some(bytes) if !bytes.is_empty() => self.matcher.feed(self.automaton.schema(), bytes),
            _ => false,
        }
    }

    fn is_complete(&self) -> bool {
        self.matcher.is_complete()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn compile(schema: Value) -> CompiledSchema {
        CompiledSchema::compile(&schema).unwrap_or_else(|e| panic!("{schema}: {e}"))
    }

    /// Some(complete) when `text` is accepted whole, None when refused somewhere.
    fn run(schema: &CompiledSchema, text: &str) -> Option<bool> {
        let mut matcher = SchemaMatcher::new(schema);
        matcher.feed(schema, text.as_bytes()).then(|| matcher.is_complete())
    }

    /// Valid documents are accepted whole, complete, and through every byte prefix.
    fn assert_accepts(schema: &CompiledSchema, text: &str) {
        assert_eq!(run(schema, text), Some(true), "{text}");
        let mut matcher = SchemaMatcher::new(schema);
        for (i, byte) in text.bytes().enumerate() {
            assert!(matcher.feed(schema, &[byte]), "{text:?} refused at byte {i}");
        }
        assert!(matcher.is_complete());
    }

    fn assert_refuses(schema: &CompiledSchema, text: &str) {
        assert_ne!(run(schema, text), Some(true), "{text} was accepted");
    }

    fn person() -> Value {
        json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer"},
                "height": {"type": "number"},
                "admin": {"type": "boolean"},
                "nick": {"type": ["string", "null"]},
                "role": {"enum": ["user", "admin", 3]},
                "kind": {"const": "person"},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2},
                "address": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                            "additionalProperties": false}
            },
            "required": ["name", "age"],
            "additionalProperties": false
        })
    }

    #[test]
    fn objects_with_required_and_optional_properties_and_every_scalar() {
        let schema = compile(person());
        for text in [
            r#"{"name": "Ada", "age": 36}"#,
            r#"{"age":-3,"name":"A\"\u00e9 \n","height":1.5e-3,"admin":false,"nick":null}"#,
            "{\n  \"name\": \"Zoë 😀\",\n  \"age\": 0,\n  \"role\": 3,\n  \"kind\": \"person\"\n}",
            r#"{"tags": ["a"], "name": "x", "age": 1, "address": {"city": "Rome"}}"#,
            r#"{"name": "x", "age": 1, "tags": ["a", "b"], "nick": "n", "role": "admin"}"#,
        ] {
            assert_accepts(&schema, text);
            serde_json::from_str::<Value>(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        }
        for text in [
            r#"{"name": "Ada"}"#,                                  // age is required
            r#"{"name": "Ada", "age": 1.5}"#,                      // an integer
            r#"{"name": "Ada", "age": 1, "extra": 1}"#,            // no other properties
            r#"{"name": "Ada", "age": 1, "age": 2}"#,              // each once
            r#"{"name": "Ada", "age": 1, "tags": []}"#,            // minItems
            r#"{"name": "Ada", "age": 1, "tags": ["a","b","c"]}"#, // maxItems
            r#"{"name": "Ada", "age": 1, "role": "root"}"#,
            r#"{"name": "Ada", "age": 1, "kind": "robot"}"#,
            r#"{"name": "Ada", "age": 1, "address": {}}"#,
            r#"{"name": 1, "age": 1}"#,
            r#"{"name": "Ada", "age": 01}"#,
            r#"{"name": "Ada", "age": 1,}"#,
            r#"{"name": "a\ud800", "age": 1}"#,               // a lone surrogate
            "{\"name\": \"tab\there\", \"age\": 1}",          // a raw control character
            r#"{"name": "Ada", "age": 1234567890123456789}"#, // beyond 18 digits: past an i64
            r#"{"name": "Ada", "age": 1} "#,                  // nothing after the document
        ] {
            assert_refuses(&schema, text);
        }
        assert_eq!(run(&schema, r#"{"name": "Ada", "age": 12"#), Some(false), "a prefix is not complete");
    }

    /// A seeded random walk through what the matcher allows, byte by byte, from an alphabet that
    /// has every structural byte and a multi-byte character; past `close_after` bytes it prefers
    /// bytes that close things. Returns the document once complete.
    fn random_document(schema: &CompiledSchema, seed: u64, close_after: usize) -> String {
        let alphabet: Vec<u8> = b" \n\"\\{}[],:-.0123456789eE+tfnarulsxyz".iter().copied().chain("é".bytes()).collect();
        let closing = b"\"}]0,";
        let mut rng = crate::engine::rng::Rng::seeded(seed);
        let mut matcher = SchemaMatcher::new(schema);
        let mut out = Vec::new();
        while !matcher.is_complete() {
            assert!(out.len() < 4000, "seed {seed}: no end in sight: {}", String::from_utf8_lossy(&out));
            let allowed: Vec<u8> = alphabet.iter().copied().filter(|b| matcher.can_feed(schema, &[*b])).collect();
            let preferred: Vec<u8> = allowed.iter().copied().filter(|b| closing.contains(b)).collect();
            let pool = if out.len() > close_after && !preferred.is_empty() { &preferred } else { &allowed };
            // Where the alphabet has no allowed byte (a key's next letter, a character's
            // continuation), any allowed byte; none at all is a dead end the matcher let in.
            let byte = if pool.is_empty() {
                let any: Vec<u8> = (0..=255).filter(|b| matcher.can_feed(schema, &[*b])).collect();
                assert!(!any.is_empty(), "seed {seed}: stuck after {}", String::from_utf8_lossy(&out));
                any[(rng.next_u64() % any.len() as u64) as usize]
            } else {
                pool[(rng.next_u64() % pool.len() as u64) as usize]
            };
            assert!(matcher.feed(schema, &[byte]));
            out.push(byte);
        }
        String::from_utf8(out).expect("the matcher only lets whole UTF-8 through")
    }

    #[test]
    fn random_walks_through_the_matcher_are_valid_documents() {
        let schema = compile(person());
        let declared = ["name", "age", "height", "admin", "nick", "role", "kind", "tags", "address"];
        let seed = crate::testing::test_seed();
        for walk in 0..200 {
            let text = random_document(&schema, seed.wrapping_add(walk), 40);
            let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
            let object = value.as_object().unwrap_or_else(|| panic!("not an object: {text}"));
            assert!(object.keys().all(|k| declared.contains(&k.as_str())), "{text}");
            // An integer (`-0` included, which serde_json reads as a float).
            let whole = object["age"].as_f64().is_some_and(|f| f.fract() == 0.0 && f.abs() < 1e18);
            assert!(object["name"].is_string() && whole, "{text}");
            if let Some(tags) = object.get("tags") {
                let tags = tags.as_array().unwrap();
                assert!((1..=2).contains(&tags.len()) && tags.iter().all(Value::is_string), "{text}");
            }
            if let Some(role) = object.get("role") {
                assert!([json!("user"), json!("admin"), json!(3)].contains(role), "{text}");
            }
            if let Some(nick) = object.get("nick") {
                assert!(nick.is_string() || nick.is_null(), "{text}");
            }
            if let Some(address) = object.get("address") {
                let address = address.as_object().unwrap();
                assert!(address.len() == 1 && address["city"].is_string(), "{text}");
            }
        }
    }

    #[test]
    fn any_of_refs_and_recursion() {
        let schema = compile(json!({
            "$defs": {
                "node": {"type": "object", "properties": {
                    "value": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}
                }, "required": ["value"]}
            },
            "$ref": "#/$defs/node"
        }));
        assert_accepts(&schema, r#"{"value": 1, "children": [{"value": "a"}, {"value": 2, "children": []}]}"#);
        assert_refuses(&schema, r#"{"value": true}"#);
        assert_refuses(&schema, r#"{"children": []}"#);
        // A number may end where the object goes on.
        assert_accepts(&schema, r#"{"value":12}"#);
    }

    #[test]
    fn free_objects_and_any_values() {
        let schema = compile(json!({"type": "object"}));
        assert_accepts(&schema, r#"{"a": [1, {"b": null}], "c": "d", "e": -0.5E+2}"#);
        let schema = compile(json!({"type": "object", "additionalProperties": {"type": "integer"}}));
        assert_accepts(&schema, r#"{"x": 1, "y": 2}"#);
        assert_refuses(&schema, r#"{"x": "1"}"#);
        let schema = compile(json!(true));
        assert_accepts(&schema, r#"[1, "2", [true]]"#);
        assert_accepts(&schema, "17");
    }

    #[test]
    fn an_enum_yields_only_its_values() {
        let schema = compile(json!({"enum": ["red", "green"]}));
        // From `"` only r and g continue; nothing after a whole value.
        let mut matcher = SchemaMatcher::new(&schema);
        assert!(matcher.feed(&schema, b"\""));
        let next: Vec<u8> = (0..=255u8).filter(|b| matcher.can_feed(&schema, &[*b])).collect();
        assert_eq!(next, b"gr");
        assert_accepts(&schema, "\"green\"");
        assert_refuses(&schema, "\"blue\"");
    }

    #[test]
    fn unsupported_keywords_are_refused_by_name() {
        for (schema, named) in [
            (json!({"type": "string", "pattern": "^a+$", "format": "date"}), "together"),
            (json!({"type": "string", "format": "hostname"}), "hostname"),
            (json!({"type": "string", "pattern": "(?<=a)b"}), "(?<=a)b"),
            (json!({"type": "integer", "minimum": 0}), "minimum"),
            (json!({"oneOf": [{"type": "string"}]}), "oneOf"),
            (json!({"type": "string", "items": {}}), "items"),
            (json!({"type": "object", "required": ["a"]}), "`a`"),
            (json!({"$ref": "#/$defs/missing"}), "#/$defs/missing"),
            (json!({"type": "array", "minItems": 3, "maxItems": 2}), "maxItems"),
            (json!({"type": "date"}), "date"),
            (
                json!({"$defs": {"a": {"anyOf": [{"$ref": "#/$defs/b"}]}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}),
                "refers to itself",
            ),
        ] {
            let error = CompiledSchema::compile(&schema).unwrap_err().to_string();
            assert!(error.contains(named), "{schema}: {error}");
        }
    }

    #[test]
    fn string_patterns_and_formats_hold_for_every_prefix() {
        let schema = compile(json!({"type": "object", "properties": {
            "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
            "note": {"type": "string", "pattern": "ok"},
            "day": {"type": "string", "format": "date"},
            "at": {"type": "string", "format": "date-time"},
            "id": {"type": "string", "format": "uuid"},
            "mail": {"type": "string", "format": "email"}
        }, "additionalProperties": false}));
        assert_accepts(
            &schema,
            concat!(
                r#"{"code": "AB-123", "note": "it is ok\n", "day": "2026-12-04", "at": "2026-12-04T22:30:00.5Z", "#,
                r#""id": "123e4567-e89b-12d3-a456-426614174000", "mail": "ada@example.org"}"#
            ),
        );
        for text in [
            r#"{"code": "AB-1234"}"#,
            r#"{"code": "ab-123"}"#,
            r#"{"note": "o k"}"#,
            r#"{"day": "2026-13-01"}"#,
            r#"{"day": "2022-02-29"}"#, // not a leap year
            r#"{"day": "1900-02-29"}"#, // a century not divisible by 400
            r#"{"day": "2026-04-31"}"#,
            r#"{"day": "0000-01-01"}"#,
            r#"{"at": "2026-12-04 22:30:00Z"}"#,
            r#"{"id": "123e4567"}"#,
            r#"{"mail": "ada@"}"#,
            r#"{"code": "\u0041B-123"}"#,
        ] {
            assert_refuses(&schema, text);
        }
        for day in ["2024-02-29", "2000-02-29", "2026-01-31", "2026-11-30", "0004-02-29"] {
            assert_accepts(&schema, &format!(r#"{{"day": "{day}", "at": "{day}T00:00:00+01:00"}}"#));
        }
        // Patterns no JSON string can match are refused at once, not met as a dead end later:
        // found by the json_schema fuzz target (a `^` in the middle) and by reasoning (a control
        // character only a `\u` escape can write, which patterned strings do not use).
        for pattern in ["a-^[c]{1,3}$", "^\\x01$", "^a\\x02+b$"] {
            let error = CompiledSchema::compile(&json!({"type": "string", "pattern": pattern})).unwrap_err();
            assert!(error.to_string().contains("matches no string"), "{pattern}: {error}");
        }
        let tabbed = compile(json!({"type": "string", "pattern": "^a\\x01?\tb$"}));
        assert_accepts(&tabbed, "\"a\\tb\"");
        // A prefix that can no longer match dies at once, not at the closing quote.
        let mut matcher = SchemaMatcher::new(&schema);
        assert!(matcher.feed(&schema, br#"{"code": "A"#));
        assert!(!matcher.can_feed(&schema, b"1"));
    }

    #[test]
    fn whitespace_runs_are_capped() {
        let schema = compile(json!({"type": "object"}));
        assert_accepts(&schema, "{        }");
        assert_refuses(&schema, "{                 }");
    }

    /// The tokens a constraint allows next, through the mask interface the engine uses.
    fn allowed(constraint: &mut dyn TokenConstraint, vocab: usize) -> Vec<u32> {
        let mut mask = vec![0u32; vocab.div_ceil(32)];
        constraint.allowed_tokens(&mut mask);
        (0..vocab as u32).filter(|&t| mask[t as usize / 32] >> (t % 32) & 1 == 1).collect()
    }

    fn constraint(schema: Value, vocabulary: &[&str]) -> SchemaConstraint {
        let vocabulary: Vec<Vec<u8>> = vocabulary.iter().map(|t| t.as_bytes().to_vec()).collect();
        let trie = Arc::new(TokenTrie::new(&vocabulary));
        let automaton = Arc::new(SchemaAutomaton::new(Arc::new(compile(schema)), trie));
        SchemaConstraint::new(automaton, Arc::new(vocabulary))
    }

    #[test]
    fn tokens_spanning_several_characters_are_masked_by_their_bytes() {
        let mut constraint = constraint(
            json!({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}),
            &["{\"", "ok", "\":", " true", "}", "{", "\"o", "k\"", ":", "false", "", "é"],
        );
        assert_eq!(allowed(&mut constraint, 12), vec![0, 5], "the object's start, alone or with the key's quote");
        for token in [0, 1, 2, 3] {
            assert!(allowed(&mut constraint, 12).contains(&token));
            constraint.accept(token);
        }
        assert_eq!(allowed(&mut constraint, 12), vec![4]);
        constraint.accept(4);
        assert!(constraint.is_complete());
    }

    /// The cached walk of the trie gives, for every state met, exactly the tokens whose bytes
    /// the matcher accepts (the definition), over a vocabulary with shared prefixes, multi-byte
    /// characters split across tokens and lone continuation bytes.
    #[test]
    fn cached_masks_equal_feeding_every_token() {
        let schema = json!({"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 3},
            "n": {"type": "array", "items": {"type": "integer"}, "maxItems": 2},
            "when": {"format": "date", "type": "string"}}, "required": ["name"]});
        let mut vocabulary: Vec<String> = [
            "{",
            "}",
            "\"",
            "\":",
            "\",",
            ",",
            ":",
            " ",
            "[",
            "]",
            "1",
            "12",
            "-",
            "0",
            "name",
            "\"name\":",
            "n",
            "when",
            "é",
            "ab",
            "abc",
            "\\",
            "\\n",
            "\"}",
            "2024-",
            "01",
            "-0",
            "\n",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        vocabulary.extend((' '..='~').map(String::from));
        let mut bytes: Vec<Vec<u8>> = vocabulary.iter().map(|t| t.as_bytes().to_vec()).collect();
        bytes.extend([vec![0xc3], vec![0xa9], vec![0xe2, 0x82], vec![0xac], Vec::new()]);
        let vocab = bytes.len();
        let compiled = Arc::new(compile(schema));
        let automaton = Arc::new(SchemaAutomaton::new(compiled.clone(), Arc::new(TokenTrie::new(&bytes))));
        let bytes = Arc::new(bytes);
        let mut rng = crate::engine::rng::Rng::seeded(7);
        for _ in 0..50 {
            let mut constraint = SchemaConstraint::new(automaton.clone(), bytes.clone());
            for _ in 0..40 {
                let expected: Vec<u32> = (0..vocab as u32)
                    .filter(|&t| {
                        !bytes[t as usize].is_empty() && constraint.matcher.can_feed(&compiled, &bytes[t as usize])
                    })
                    .collect();
                let got = allowed(&mut constraint, vocab);
                assert_eq!(got, expected, "state {:?}", constraint.matcher);
                if constraint.is_complete() {
                    break;
                }
                assert!(!got.is_empty(), "a dead end: {:?}", constraint.matcher);
                let pick = got[(rng.next_f64() * got.len() as f64) as usize % got.len()];
                assert!(constraint.accept(pick));
            }
        }
        let stats = automaton.cache_stats();
        assert!(stats.masks > 10 && stats.states >= stats.masks, "{stats:?}");
    }

    /// Every prefix the constraint lets through can be finished: walks that prefer the risky
    /// bytes (escapes, quotes, closing brackets, multi-byte characters) at every step never
    /// reach a state that allows nothing. A `\\` at a patterned string's last allowed
    /// character used to be such a dead end.
    #[test]
    fn no_prefix_allowed_is_a_dead_end() {
        let bytes: Vec<Vec<u8>> =
            (0..=255u8).map(|b| vec![b]).chain(["é", "😀", "\\n", "\\u00e9"].map(|s| s.as_bytes().to_vec())).collect();
        let vocab = bytes.len();
        let trie = Arc::new(TokenTrie::new(&bytes));
        let bytes = Arc::new(bytes);
        let risky: &[u8] = b"\\\"]},:0123456789.eE-";
        for schema in [
            json!({"type": "object", "properties": {"s": {"type": "string", "maxLength": 3}, "p": {"type": "string", "pattern": "^[a-c\\\\]{1,2}$"},
                   "d": {"type": "string", "format": "date-time"}, "n": {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 2}},
                   "required": ["s", "p", "d", "n"], "additionalProperties": false}),
            json!({"anyOf": [{"type": "string", "minLength": 2, "maxLength": 2}, {"type": "integer"}, {"enum": ["ab", "a\"b"]}]}),
            json!({"type": "array", "items": {"type": "object", "properties": {"k": {"const": 1}}}, "maxItems": 3}),
        ] {
            let automaton = Arc::new(SchemaAutomaton::new(Arc::new(compile(schema.clone())), trie.clone()));
            let mut rng = crate::engine::rng::Rng::seeded(11);
            for walk in 0..300 {
                let mut constraint = SchemaConstraint::new(automaton.clone(), bytes.clone());
                for _ in 0..200 {
                    if constraint.is_complete() {
                        break;
                    }
                    let got = allowed(&mut constraint, vocab);
                    assert!(!got.is_empty(), "{schema}, walk {walk}: a dead end at {:?}", constraint.matcher);
                    let risky_ones: Vec<u32> = got
                        .iter()
                        .copied()
                        // Multi-byte pieces, or risky ASCII.
                        .filter(|&t| t >= 128 || risky.contains(&(t as u8)))
                        .collect();
                    let from = if !risky_ones.is_empty() && rng.next_f64() < 0.6 { &risky_ones } else { &got };
                    let pick = from[(rng.next_f64() * from.len() as f64) as usize % from.len()];
                    assert!(constraint.accept(pick));
                }
            }
        }
    }
}
