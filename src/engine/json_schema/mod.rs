//! Structured outputs: decoding constrained by a JSON Schema, so the output always parses and
//! validates. `schema` compiles the schema (refusing what it does not support, by name);
//! `matcher` says which bytes may come next; `SchemaConstraint` turns that into which tokens may.
//!
//! Not yet here (issue 13, next steps): string `pattern` and `format`, the API's
//! `response_format: json_schema`, a token trie so masking does not feed every token's bytes.

pub mod matcher;
pub mod schema;

use std::sync::Arc;

pub use matcher::SchemaMatcher;
pub use schema::{CompiledSchema, SchemaError};

use super::request::TokenConstraint;

/// One sequence's constraint: the matcher over the compiled schema, and every token's bytes.
pub struct SchemaConstraint {
    schema: Arc<CompiledSchema>,
    /// Every token's output bytes; special tokens have none and are never allowed.
    token_bytes: Arc<Vec<Vec<u8>>>,
    matcher: SchemaMatcher,
}

impl SchemaConstraint {
    pub fn new(schema: Arc<CompiledSchema>, token_bytes: Arc<Vec<Vec<u8>>>) -> SchemaConstraint {
        let matcher = SchemaMatcher::new(&schema);
        SchemaConstraint { schema, token_bytes, matcher }
    }
}

impl TokenConstraint for SchemaConstraint {
    fn allows(&self, token: u32) -> bool {
        match self.token_bytes.get(token as usize) {
            Some(bytes) if !bytes.is_empty() => self.matcher.can_feed(&self.schema, bytes),
            _ => false,
        }
    }

    fn accept(&mut self, token: u32) {
        if let Some(bytes) = self.token_bytes.get(token as usize) {
            let fed = self.matcher.feed(&self.schema, bytes);
            debug_assert!(fed, "only allowed tokens are accepted");
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
            r#"{"name": "a\ud800", "age": 1}"#,      // a lone surrogate
            "{\"name\": \"tab\there\", \"age\": 1}", // a raw control character
            r#"{"name": "Ada", "age": 1} "#,         // nothing after the document
        ] {
            assert_refuses(&schema, text);
        }
        assert_eq!(run(&schema, r#"{"name": "Ada", "age": 12"#), Some(false), "a prefix is not complete");
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
            (json!({"type": "string", "pattern": "^a+$"}), "pattern"),
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
    fn whitespace_runs_are_capped() {
        let schema = compile(json!({"type": "object"}));
        assert_accepts(&schema, "{        }");
        assert_refuses(&schema, "{                 }");
    }

    #[test]
    fn tokens_spanning_several_characters_are_masked_by_their_bytes() {
        let schema = Arc::new(compile(json!({"type": "object", "properties": {"ok": {"type": "boolean"}},
                                              "required": ["ok"]})));
        let vocabulary: Vec<Vec<u8>> = ["{\"", "ok", "\":", " true", "}", "{", "\"o", "k\"", ":", "false", "", "é"]
            .iter()
            .map(|t| t.as_bytes().to_vec())
            .collect();
        let mut constraint = SchemaConstraint::new(schema, Arc::new(vocabulary));
        let allowed = |c: &SchemaConstraint| (0..12).filter(|&t| c.allows(t)).collect::<Vec<u32>>();
        assert_eq!(allowed(&constraint), vec![0, 5], "the object's start, alone or with the key's quote");
        for token in [0, 1, 2, 3] {
            assert!(constraint.allows(token));
            constraint.accept(token);
        }
        assert_eq!(allowed(&constraint), vec![4]);
        constraint.accept(4);
        assert!(constraint.is_complete());
    }
}
