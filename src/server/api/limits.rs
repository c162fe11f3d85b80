//! Every bound on what one request may ask for, in one place: the validators enforce them (a 400
//! naming the field, tested at and one past each) and the README's "Security and limits" lists
//! them. Bounds an operator sets (body size, queue, per-key rates) are `kiln serve` flags instead.

/// Completions per prompt (`n`); the native API's `num_responses` allows fewer.
pub const MAX_N: u64 = 4;
pub const MAX_NATIVE_RESPONSES: u64 = 2;
/// Stop sequences per request, and the bytes of each (UTF-8).
pub const MAX_STOP_SEQUENCES: usize = 16;
pub const MAX_STOP_BYTES: usize = 256;
/// Alternatives per token: chat `top_logprobs`, completions `logprobs`.
pub const MAX_TOP_LOGPROBS: u64 = 20;
pub const MAX_COMPLETION_LOGPROBS: u64 = 5;
/// Prompts in one completions request (a list of strings or of token lists).
pub const MAX_PROMPTS: usize = 32;
/// Messages in one chat request.
pub const MAX_MESSAGES: usize = 1024;
/// How deep JSON may nest in a request body. Real requests nest 4 or 5 levels; the bound keeps
/// parsing far from the parser's own recursion limit and the connection's stack.
pub const MAX_JSON_DEPTH: usize = 32;
/// The native API's `max_new_tokens`, before the context bounds it.
pub const MAX_NATIVE_NEW_TOKENS: u64 = 100_000;
/// Tokens in one `logit_bias` (OpenAI's limit; a device sizes its sampling buffers for it), and
/// the most one token's bias may be, either way.
pub const MAX_LOGIT_BIAS: usize = crate::backend::sampling::MAX_LOGIT_BIAS;
pub const MAX_LOGIT_BIAS_VALUE: f32 = 100.0;
/// Functions in one request's `tools` (OpenAI's limit).
pub const MAX_TOOLS: usize = 128;
