//! What a compiled schema allows over a tokenizer's vocabulary, worked out lazily and kept: the
//! matcher states met so far, the byte transitions between them and each state's token mask.
//! Together these are a DFA over bytes built on demand (the matcher's depth and counts are
//! bounded, so its states are finite), and a token mask is a walk of the token trie through it.
//!
//! Everything here is a cache: a sequence carries its own `SchemaMatcher`, so the tables can be
//! dropped whenever they grow past their bounds without changing any output.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::matcher::SchemaMatcher;
use super::schema::CompiledSchema;
use super::token_trie::TokenTrie;

/// Bounds on the tables of one schema; past either, they start again empty.
const MAX_STATES: usize = 8192;
const MAX_MASK_BYTES: usize = 8 << 20;

const UNKNOWN: u32 = u32::MAX;
const DEAD: u32 = u32::MAX - 1;

/// One schema over one vocabulary, shared by every sequence constrained by that schema.
pub struct SchemaAutomaton {
    schema: Arc<CompiledSchema>,
    trie: Arc<TokenTrie>,
    tables: Mutex<Tables>,
}

#[derive(Default)]
struct Tables {
    states: Vec<SchemaMatcher>,
    ids: HashMap<SchemaMatcher, u32>,
    /// `transitions[s][b]`: the state after byte b from state s, `DEAD` or `UNKNOWN`.
    transitions: Vec<[u32; 256]>,
    masks: HashMap<u32, Arc<[u32]>>,
    mask_bytes: usize,
    /// Scratch for a walk: the state at each depth of the trie path.
    path: Vec<u32>,
}

/// How much of the cache one mask request found (for tests and the benchmark).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    pub states: usize,
    pub masks: usize,
}

impl SchemaAutomaton {
    pub fn new(schema: Arc<CompiledSchema>, trie: Arc<TokenTrie>) -> SchemaAutomaton {
        SchemaAutomaton { schema, trie, tables: Mutex::new(Tables::default()) }
    }

    pub fn schema(&self) -> &Arc<CompiledSchema> {
        &self.schema
    }

    pub fn vocab_size(&self) -> usize {
        self.trie.vocab_size()
    }

    /// Sets bit `t % 32` of word `t / 32` of `mask` for every token that may follow `matcher`.
    pub fn allowed_tokens(&self, matcher: &SchemaMatcher, mask: &mut [u32]) {
        let mut tables = self.tables.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if tables.states.len() >= MAX_STATES || tables.mask_bytes >= MAX_MASK_BYTES {
            *tables = Tables::default();
        }
        let state = tables.intern(matcher);
        let words = match tables.masks.get(&state) {
            Some(words) => words.clone(),
            None => {
                let words: Arc<[u32]> = tables.walk(&self.schema, &self.trie, state).into();
                tables.mask_bytes += words.len() * 4;
                tables.masks.insert(state, words.clone());
                words
            }
        };
        for (out, word) in mask.iter_mut().zip(words.iter()) {
            *out |= word;
        }
    }

    pub fn cache_stats(&self) -> CacheStats {
        let tables = self.tables.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        CacheStats { states: tables.states.len(), masks: tables.masks.len() }
    }
}

impl Tables {
    fn intern(&mut self, matcher: &SchemaMatcher) -> u32 {
        if let Some(&id) = self.ids.get(matcher) {
            return id;
        }
        let id = self.states.len() as u32;
        self.states.push(matcher.clone());
        self.ids.insert(matcher.clone(), id);
        self.transitions.push([UNKNOWN; 256]);
        id
    }

    fn next(&mut self, schema: &CompiledSchema, state: u32, byte: u8) -> u32 {
        let known = self.transitions[state as usize][byte as usize];
        if known != UNKNOWN {
            return known;
        }
        let mut matcher = self.states[state as usize].clone();
        let next = if matcher.feed(schema, &[byte]) { self.intern(&matcher) } else { DEAD };
        self.transitions[state as usize][byte as usize] = next;
        next
    }

    /// The mask of `state`: a preorder walk of the trie, where a refused prefix skips its subtree.
    fn walk(&mut self, schema: &CompiledSchema, trie: &TokenTrie, state: u32) -> Vec<u32> {
        let mut words = vec![0u32; trie.vocab_size().div_ceil(32)];
        let mut path = std::mem::take(&mut self.path);
        path.clear();
        path.resize(trie.max_depth() + 1, DEAD);
        path[0] = state;
        let mut node = 1;
        while node < trie.node_count() {
            let depth = trie.depth(node);
            let next = self.next(schema, path[depth - 1], trie.byte(node));
            if next == DEAD {
                node = trie.subtree_end(node);
                continue;
            }
            path[depth] = next;
            for &token in trie.tokens_at(node) {
                words[token as usize / 32] |= 1 << (token % 32);
            }
            node += 1;
        }
        self.path = path;
        words
    }
}
