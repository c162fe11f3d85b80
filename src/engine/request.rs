//! The engine's typed messages: what a request asks for, and the events it gets back.
//! The server builds these from validated API requests; nothing here knows about HTTP.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::sampler::SamplingParams;

/// Restricts which tokens may come next (JSON mode, a JSON schema); one instance per sequence.
pub trait TokenConstraint: Send {
    /// Sets bit `t % 32` of word `t / 32` of `mask` (zeroed by the caller, a bit per token of
    /// the vocabulary) for every token `t` that may come next; at least one is allowed while
    /// the output is incomplete.
    fn allowed_tokens(&mut self, mask: &mut [u32]);
    /// Moves past `token`; false if it was not allowed (the state is then unchanged).
    fn accept(&mut self, token: u32) -> bool;
    /// The constrained output is complete (a JSON object closed): the sequence stops here.
    fn is_complete(&self) -> bool;
}

pub type ConstraintFactory = Arc<dyn Fn() -> Box<dyn TokenConstraint> + Send + Sync>;

#[derive(Clone)]
pub struct RequestParams {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Text that ends a completion; never part of the returned text.
    pub stop_strings: Vec<String>,
    /// Tokens that end a completion (the model's EOS ids); never part of the text.
    pub stop_token_ids: Vec<u32>,
    /// Completions of the same prompt, each its own sequence.
    pub n: usize,
    /// `Some(k)`: report each chosen token's log-probability and the k most likely alternatives.
    pub top_logprobs: Option<usize>,
    pub constraint: Option<ConstraintFactory>,
    /// The output continues the prompt's text (completions) rather than starting a new one (chat).
    pub continues_prompt: bool,
}

impl RequestParams {
    pub fn greedy(max_new_tokens: usize, stop_token_ids: Vec<u32>) -> RequestParams {
        RequestParams {
            max_new_tokens,
            sampling: SamplingParams::greedy(),
            stop_strings: Vec::new(),
            stop_token_ids,
            n: 1,
            top_logprobs: None,
            constraint: None,
            continues_prompt: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token, a stop string, or a completed JSON object.
    Stop,
    /// `max_new_tokens` were generated.
    Length,
    /// The client went away or cancelled.
    Cancelled,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token_id: u32,
    pub logprob: f32,
    /// The most likely tokens at this position, best first.
    pub top: Vec<(u32, f32)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EngineEvent {
    /// One generated token of completion `choice` and the text it released (maybe empty while
    /// a character or a possible stop string is incomplete).
    Token { choice: usize, token_id: u32, text: String, logprob: Option<TokenLogprob> },
    /// Completion `choice` ended; `text` is what was still held back. `cached_prompt_tokens`:
    /// the prompt tokens taken from the prefix cache instead of computed (the same for every
    /// choice of the request; 0 when it never started).
    Finished { choice: usize, reason: FinishReason, text: String, generated_tokens: usize, cached_prompt_tokens: usize },
    /// The request failed inside the engine.
    Error { message: String },
}

/// Where a request's events go. `send` returns false once nobody listens: the engine then
/// cancels the request and frees its memory.
pub trait EventSink: Send {
    fn send(&mut self, event: EngineEvent) -> bool;
}

impl EventSink for std::sync::mpsc::Sender<EngineEvent> {
    fn send(&mut self, event: EngineEvent) -> bool {
        std::sync::mpsc::Sender::send(self, event).is_ok()
    }
}

pub struct EngineRequest {
    pub prompt_ids: Vec<u32>,
    pub params: RequestParams,
    pub sink: Box<dyn EventSink>,
    /// Set by the server when the client disconnects; checked before every step.
    pub cancel: Arc<AtomicBool>,
}
