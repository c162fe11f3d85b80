//! The server's shared state, built once at start-up and read by every connection.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::api::error::ApiError;
use super::api::pricing::Prices;
use super::keys::ApiKeys;
use super::metrics::ServerMetrics;
use super::webhook::WebhookPolicy;
use crate::engine::json_schema::SchemaCache;
use crate::engine::serving::EngineHandle;
use crate::tokenizer::tool_calls::ToolCallFormat;
use crate::tokenizer::Tokenizer;

pub struct App {
    pub engine: EngineHandle,
    pub tokenizer: Arc<Tokenizer>,
    /// The id clients name in `model`; requests naming another get 404.
    pub model_name: String,
    /// Accepted bearer keys and their limits; empty means no authentication.
    pub api_keys: ApiKeys,
    pub prices: Prices,
    pub webhooks: WebhookPolicy,
    /// Token ids that end a completion (the model's EOS ids).
    pub stop_token_ids: Vec<u32>,
    /// How the model writes tool calls (`--tool-call-parser`, else from its chat template).
    pub tool_call_format: ToolCallFormat,
    /// JSON mode's and every JSON schema's token constraints, over this tokenizer.
    pub schemas: SchemaCache,
    /// False until the model is loaded and the engine runs: `/health` answers 503 until then.
    pub ready: AtomicBool,
    pub metrics: ServerMetrics,
    /// Unix time of start-up, reported as the model's `created`.
    pub started_unix: u64,
    /// Longest the engine loop may stay inside one step before liveness answers 503.
    pub liveness_timeout: std::time::Duration,
}

impl App {
    /// Checks a request's `model` (absent: the served one) against the served model.
    pub fn check_model(&self, requested: Option<&str>) -> Result<(), ApiError> {
        match requested {
            Some(name) if name != self.model_name => Err(ApiError::model_not_found(name, &self.model_name)),
            _ => Ok(()),
        }
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
