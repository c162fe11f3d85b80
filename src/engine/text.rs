//! What the engine needs from a tokenizer while generating: a streaming decoder per sequence.
//! A trait so the engine (and its tests) do not depend on one tokenizer implementation.

use crate::tokenizer::detok::IncrementalDecoder;
use crate::tokenizer::Tokenizer;

/// Turns one sequence's token ids into text as they arrive, never splitting a character.
pub trait StreamDecoder: Send {
    /// Text completed by this token (possibly empty while a character is incomplete).
    fn push(&mut self, token: u32) -> String;
    /// Whatever is left at the end of the sequence.
    fn finish(&mut self) -> String;
}

pub trait TokenText: Send + Sync {
    /// `continues_prompt`: the output continues the prompt's text (completions), so a leading
    /// space is kept; otherwise it starts a new text (a chat answer), decoded as on its own.
    fn stream_decoder(&self, continues_prompt: bool) -> Box<dyn StreamDecoder>;
}

/// The tokenizer's streaming detokenizer, one per generated sequence.
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

/// Token ids without text, for work that only counts tokens (benchmarks, engine tests).
pub struct NoText;

struct NoDecoder;

impl StreamDecoder for NoDecoder {
    fn push(&mut self, _: u32) -> String {
        String::new()
    }

    fn finish(&mut self) -> String {
        String::new()
    }
}

impl TokenText for NoText {
    fn stream_decoder(&self, _: bool) -> Box<dyn StreamDecoder> {
        Box::new(NoDecoder)
    }
}
