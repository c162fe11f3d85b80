//! Who is asking and what their request has used so far: the request's id, the authenticated key
//! (for its limits) and the token counts that the access log reports. Shared with the engine's event sink,
//! which counts generated tokens as they are produced.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::rate_limit::KeyState;

#[derive(Debug, Default)]
pub struct RequestUsage {
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
}

impl RequestUsage {
    pub fn prompt_tokens(&self) -> u64 {
        self.prompt_tokens.load(Ordering::Relaxed)
    }

    pub fn completion_tokens(&self) -> u64 {
        self.completion_tokens.load(Ordering::Relaxed)
    }
}

/// One request's caller: its id (see `request_id`), its key (None when the API is open) and
/// its usage.
#[derive(Clone)]
pub struct Caller {
    pub request_id: Arc<str>,
    pub key: Option<Arc<KeyState>>,
    pub usage: Arc<RequestUsage>,
}

impl Caller {
    pub fn new(request_id: String) -> Caller {
        Caller { request_id: request_id.into(), key: None, usage: Arc::default() }
    }

    pub fn count_prompt_tokens(&self, tokens: u64) {
        self.usage.prompt_tokens.fetch_add(tokens, Ordering::Relaxed);
        if let Some(key) = &self.key {
            key.count_tokens(tokens);
        }
    }

    pub fn count_generated_token(&self) {
        self.usage.completion_tokens.fetch_add(1, Ordering::Relaxed);
        if let Some(key) = &self.key {
            key.count_tokens(1);
        }
    }
}
