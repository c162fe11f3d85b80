//! The server's structured-output constraints: the vocabulary's trie, built once, and every
//! schema compiled so far, kept by its text so that a client sending the same schema with each
//! request compiles it once and finds its token masks already worked out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use super::automaton::SchemaAutomaton;
use super::schema::{CompiledSchema, SchemaError};
use super::token_trie::TokenTrie;
use super::SchemaConstraint;
use crate::engine::request::{ConstraintFactory, TokenConstraint};
use crate::tokenizer::Tokenizer;

/// Schemas kept; past this the least recently used is dropped (each holds its own mask cache,
/// bounded by `automaton`'s limits).
const MAX_SCHEMAS: usize = 32;

pub struct SchemaCache {
    /// Every token's output bytes, special tokens empty (never allowed).
    token_bytes: Arc<Vec<Vec<u8>>>,
    trie: Arc<TokenTrie>,
    /// JSON mode: any JSON object.
    json_object: Arc<SchemaAutomaton>,
    schemas: Mutex<Schemas>,
}

#[derive(Default)]
struct Schemas {
    by_text: HashMap<String, (Arc<SchemaAutomaton>, u64)>,
    clock: u64,
}

impl SchemaCache {
    pub fn new(token_bytes: Vec<Vec<u8>>) -> SchemaCache {
        let trie = Arc::new(TokenTrie::new(&token_bytes));
        let object = CompiledSchema::compile(&json!({"type": "object"})).expect("the schema of any object compiles");
        let json_object = Arc::new(SchemaAutomaton::new(Arc::new(object), trie.clone()));
        SchemaCache { token_bytes: Arc::new(token_bytes), trie, json_object, schemas: Mutex::default() }
    }

    /// Over a tokenizer's vocabulary: every token's output bytes, special tokens never allowed
    /// (their text is not output).
    pub fn for_tokenizer(tokenizer: &Tokenizer) -> SchemaCache {
        SchemaCache::new(
            (0..tokenizer.vocab_size() as u32)
                .map(|id| if tokenizer.is_special(id) { Vec::new() } else { tokenizer.token_bytes(id).to_vec() })
                .collect(),
        )
    }

    /// JSON mode's constraint: the output is one JSON object.
    pub fn json_object(&self) -> ConstraintFactory {
        self.factory(self.json_object.clone())
    }

    /// The constraint of `schema`, compiled now or found compiled; an error names what in the
    /// schema is not supported.
    pub fn json_schema(&self, schema: &Value) -> Result<ConstraintFactory, SchemaError> {
        Ok(self.factory(self.automaton(schema)?))
    }

    fn automaton(&self, schema: &Value) -> Result<Arc<SchemaAutomaton>, SchemaError> {
        let text = schema.to_string();
        {
            let mut schemas = self.schemas.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            schemas.clock += 1;
            let now = schemas.clock;
            if let Some((automaton, used)) = schemas.by_text.get_mut(&text) {
                *used = now;
                return Ok(automaton.clone());
            }
        }
        // Compiled outside the lock: a large pattern can take milliseconds.
        let automaton = Arc::new(SchemaAutomaton::new(Arc::new(CompiledSchema::compile(schema)?), self.trie.clone()));
        let mut schemas = self.schemas.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if schemas.by_text.len() >= MAX_SCHEMAS {
            let oldest = schemas.by_text.iter().min_by_key(|(_, (_, used))| *used).map(|(text, _)| text.clone());
            if let Some(oldest) = oldest {
                schemas.by_text.remove(&oldest);
            }
        }
        let now = schemas.clock;
        schemas.by_text.insert(text, (automaton.clone(), now));
        Ok(automaton)
    }

    fn factory(&self, automaton: Arc<SchemaAutomaton>) -> ConstraintFactory {
        let token_bytes = self.token_bytes.clone();
        Arc::new(move || {
            Box::new(SchemaConstraint::new(automaton.clone(), token_bytes.clone())) as Box<dyn TokenConstraint>
        })
    }

    /// How many schemas are kept (for tests).
    pub fn len(&self) -> usize {
        self.schemas.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).by_text.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_schema_is_compiled_once_and_the_least_recently_used_is_dropped() {
        let cache = SchemaCache::new(vec![b"{".to_vec(), b"}".to_vec(), Vec::new()]);
        let schema = |i: usize| json!({"type": "object", "properties": {format!("p{i}"): {"type": "integer"}}});
        let first = cache.automaton(&schema(0)).unwrap();
        assert!(Arc::ptr_eq(&first, &cache.automaton(&schema(0)).unwrap()));
        for i in 1..MAX_SCHEMAS {
            cache.automaton(&schema(i)).unwrap();
        }
        cache.automaton(&schema(0)).unwrap(); // used again: schema 1 is now the oldest
        cache.automaton(&schema(MAX_SCHEMAS)).unwrap();
        assert_eq!(cache.len(), MAX_SCHEMAS);
        assert!(Arc::ptr_eq(&first, &cache.automaton(&schema(0)).unwrap()), "kept");
        let err = cache.json_schema(&json!({"type": "string", "minimum": 3})).err().unwrap();
        assert!(err.to_string().contains("minimum"), "{err}");
    }

    #[test]
    fn json_mode_allows_only_an_object_and_ends_with_it() {
        let cache = SchemaCache::new(vec![b"{".to_vec(), b"}".to_vec(), b"[".to_vec(), Vec::new(), b" ".to_vec()]);
        let mut constraint = (cache.json_object())();
        let mut mask = [0u32];
        constraint.allowed_tokens(&mut mask);
        assert_eq!(mask[0], 0b10001, "`{{` or leading whitespace");
        constraint.accept(0);
        constraint.accept(1);
        assert!(constraint.is_complete());
    }
}
