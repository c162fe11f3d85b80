//! The tokenizer as the engine's `TokenText`: one streaming decoder per generated sequence.

use super::detok::IncrementalDecoder;
use super::Tokenizer;
use crate::engine::text::{StreamDecoder, TokenText};

impl StreamDecoder for IncrementalDecoder {
    fn push(&mut self, token: u32) -> String {
        IncrementalDecoder::push(self, token).to_owned()
    }

    fn finish(&mut self) -> String {
        IncrementalDecoder::finish(self).to_owned()
    }
}

impl TokenText for Tokenizer {
    fn stream_decoder(&self, continues_prompt: bool) -> Box<dyn StreamDecoder> {
        if continues_prompt {
            Box::new(IncrementalDecoder::continuing(self))
        } else {
            Box::new(IncrementalDecoder::new(self))
        }
    }
}
