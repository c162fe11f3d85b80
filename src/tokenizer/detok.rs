//! Streaming detokenization of one sequence: push ids one at a time, get back the text they finish.
//!
//! Works on the per-token bytes of `TokenTable` instead of re-decoding a window of ids the way TGI's
//! prefix/read offsets do: a push appends the token's bytes, emits the longest complete UTF-8
//! prefix and keeps at most 3 bytes of an unfinished character. The work per token is bounded by the
//! token's length, and the concatenated output equals `Tokenizer::decode` of all ids, because both
//! apply the same left-to-right UTF-8 rule (`String::from_utf8_lossy`) and the same leading strip.

use std::sync::Arc;

use super::token_bytes::TokenTable;
use super::Tokenizer;

pub struct IncrementalDecoder {
    table: Arc<TokenTable>,
    /// The start of a character whose remaining bytes have not arrived yet (at most 3 bytes).
    pending: Vec<u8>,
    /// The text finished by the latest push, lent out to avoid an allocation per token.
    finished: String,
    /// No visible token has been pushed yet (a Metaspace decoder treats the first token apart).
    at_first_token: bool,
    /// Leading `strip_char`s still to remove; 0 once any other character has been emitted.
    strip_remaining: usize,
    strip_char: char,
}

impl IncrementalDecoder {
    /// A decoder whose total output equals `tokenizer.decode(ids)`: for SentencePiece tokenizers the
    /// first space of the sequence is stripped, as a one-shot decode does.
    pub fn new(tokenizer: &Tokenizer) -> Self {
        let table = tokenizer.token_table();
        let (strip_char, strip_remaining) = table.strip_rule();
        IncrementalDecoder {
            table,
            pending: Vec::with_capacity(8),
            finished: String::with_capacity(64),
            at_first_token: true,
            strip_remaining,
            strip_char,
        }
    }

    /// A decoder for ids that continue a prompt: nothing is stripped, so a generated `▁Paris` reads
    /// " Paris" and the output equals `decode(prompt + ids)` minus `decode(prompt)`.
    pub fn continuing(tokenizer: &Tokenizer) -> Self {
        IncrementalDecoder { at_first_token: false, strip_remaining: 0, ..Self::new(tokenizer) }
    }

    /// Adds one token and returns the text it completes: empty for special tokens and while a
    /// character split across byte tokens is incomplete. Never returns broken UTF-8.
    pub fn push(&mut self, id: u32) -> &str {
        self.finished.clear();
        let Some(bytes) = self.table.visible_bytes(id, self.at_first_token) else {
            return &self.finished;
        };
        self.at_first_token = false;
        self.pending.extend_from_slice(bytes);
        self.drain_complete_characters();
        self.apply_strip();
        &self.finished
    }

    /// Flushes what is left at the end of the sequence: an unfinished character becomes U+FFFD, as
    /// in `decode`. The decoder can keep going afterwards, as if the sequence had ended there.
    pub fn finish(&mut self) -> &str {
        self.finished.clear();
        if !self.pending.is_empty() {
            // `pending` is always the incomplete start of one character: one U+FFFD.
            self.finished.push_str(&String::from_utf8_lossy(&self.pending));
            self.pending.clear();
        }
        self.apply_strip();
        &self.finished
    }

    /// Moves every decidable byte of `pending` into `finished`: valid UTF-8 as is, each maximal
    /// invalid sequence as one U+FFFD (the rule of `from_utf8_lossy`), and keeps an incomplete tail.
    fn drain_complete_characters(&mut self) {
        let mut start = 0;
        while start < self.pending.len() {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(text) => {
                    self.finished.push_str(text);
                    start = self.pending.len();
                }
                Err(err) => {
                    let valid_end = start + err.valid_up_to();
                    let valid = std::str::from_utf8(&self.pending[start..valid_end])
                        .expect("bytes before valid_up_to() are valid UTF-8");
                    self.finished.push_str(valid);
                    match err.error_len() {
                        Some(invalid_len) => {
                            self.finished.push('\u{FFFD}');
                            start = valid_end + invalid_len;
                        }
                        None => {
                            start = valid_end; // incomplete: wait for the next token
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
    }

    fn apply_strip(&mut self) {
        while self.strip_remaining > 0 && self.finished.starts_with(self.strip_char) {
            self.finished.drain(..self.strip_char.len_utf8());
            self.strip_remaining -= 1;
        }
        if !self.finished.is_empty() {
            self.strip_remaining = 0;
        }
    }
}
