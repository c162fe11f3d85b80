//! A generation request after validation, whatever endpoint it came from: what the rest of the
//! server works with. Built only by the `parse_*` functions of `openai` and `native`.

use super::tools::ToolUse;
use crate::engine::sampler::SamplingParams;
/// A chat message as the template receives it (tool calls and results included).
pub use crate::tokenizer::chat::ChatMessage as Message;

#[derive(Debug, Clone, PartialEq)]
pub enum PromptInput {
    /// A conversation, rendered through the model's chat template.
    Chat(Vec<Message>),
    /// Raw prompts to continue (completions accept a list; each gets its own choices).
    Text(Vec<String>),
    /// Prompts given as token ids.
    Tokens(Vec<Vec<u32>>),
}

/// What the output must be.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    Text,
    /// A JSON object (JSON mode).
    JsonObject,
    /// A JSON document valid under `schema`; `param` names where it came from, for errors
    /// about the schema (which is compiled when the request is submitted).
    JsonSchema {
        schema: serde_json::Value,
        param: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ValidGeneration {
    pub model: Option<String>,
    pub prompt: PromptInput,
    /// The request field the prompt came from, named by errors about its length.
    pub prompt_field: &'static str,
    /// None: as many as the context allows (chat) — the caller fills in the endpoint's default.
    pub max_tokens: Option<usize>,
    /// The request field `max_tokens` came from (`max_tokens`, `max_completion_tokens`,
    /// `max_new_tokens`), named by errors about it.
    pub max_tokens_field: &'static str,
    /// true: `max_tokens` beyond the context is cut to fit (native API); false: it is an error.
    pub cap_max_tokens_to_context: bool,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    /// `Some(k)`: return the chosen tokens' log-probabilities and k alternatives.
    pub logprobs: Option<usize>,
    pub echo: bool,
    pub response_format: ResponseFormat,
    /// Functions the model may call (chat only).
    pub tools: Option<ToolUse>,
    /// Generate past the model's end-of-sequence tokens (vLLM's `ignore_eos`): only the token
    /// limit, stop strings or JSON mode end a choice.
    pub ignore_eos: bool,
}
