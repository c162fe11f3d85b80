//! Every error the API returns, and the one place they become an HTTP status and OpenAI's error
//! body `{"error":{"message","type","param","code"}}`.

use serde_json::json;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds after which a retry may succeed, sent as `Retry-After` (429 and 503).
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    /// A parameter out of range or malformed: 400 naming the parameter.
    pub fn invalid_param(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.to_string()),
            code: Some("invalid_value"),
            retry_after_secs: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
            retry_after_secs: None,
        }
    }

    pub fn invalid_json(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_json"),
            retry_after_secs: None,
        }
    }

    pub fn context_length_exceeded(prompt_tokens: usize, requested: usize, context: usize) -> ApiError {
        ApiError {
            status: 400,
            message: format!(
                "This model's maximum context length is {context} tokens. However, you requested {} tokens ({prompt_tokens} in the messages, {requested} in the completion). Please reduce the length of the messages or completion.",
                prompt_tokens + requested
            ),
            kind: "invalid_request_error",
            param: Some("messages".into()),
            code: Some("context_length_exceeded"),
            retry_after_secs: None,
        }
    }

    pub fn unauthorized() -> ApiError {
        ApiError {
            status: 401,
            message: "Incorrect or missing API key. Send it as `Authorization: Bearer <key>`.".into(),
            kind: "authentication_error",
            param: None,
            code: Some("invalid_api_key"),
            retry_after_secs: None,
        }
    }

    pub fn model_not_found(requested: &str, served: &str) -> ApiError {
        ApiError {
            status: 404,
            message: format!("The model `{requested}` does not exist; this server serves `{served}`."),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
            retry_after_secs: None,
        }
    }

    pub fn route_not_found(method: &str, path: &str) -> ApiError {
        ApiError {
            status: 404,
            message: format!("No route for {method} {path}."),
            kind: "invalid_request_error",
            param: None,
            code: Some("not_found"),
            retry_after_secs: None,
        }
    }

    pub fn method_not_allowed(method: &str, path: &str) -> ApiError {
        ApiError {
            status: 405,
            message: format!("{method} is not allowed on {path}."),
            kind: "invalid_request_error",
            param: None,
            code: None,
            retry_after_secs: None,
        }
    }

    pub fn overloaded(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 429,
            message: message.into(),
            kind: "rate_limit_error",
            param: None,
            code: Some("server_overloaded"),
            retry_after_secs: Some(1),
        }
    }

    /// The engine stopped (a device failure or a panic): kiln is shutting down for its
    /// supervisor to restart it.
    pub fn engine_failed(cause: &str) -> ApiError {
        ApiError {
            status: 503,
            message: format!("The engine failed and the server is restarting ({cause}); retry shortly."),
            kind: "server_error",
            param: None,
            code: Some("engine_failed"),
            retry_after_secs: Some(5),
        }
    }

    pub fn not_ready() -> ApiError {
        ApiError {
            status: 503,
            message: "The model is still loading; retry shortly.".into(),
            kind: "server_error",
            param: None,
            code: Some("not_ready"),
            retry_after_secs: Some(5),
        }
    }

    /// The engine loop has not gone round for longer than the liveness limit (a step that does not
    /// return): a supervisor should restart the server.
    pub fn engine_stalled(stalled: std::time::Duration, limit: std::time::Duration) -> ApiError {
        ApiError {
            status: 503,
            message: format!(
                "The engine has been inside one step for {:.1} s, longer than the liveness limit of {:.1} s.",
                stalled.as_secs_f64(),
                limit.as_secs_f64()
            ),
            kind: "server_error",
            param: None,
            code: Some("engine_stalled"),
            retry_after_secs: None,
        }
    }

    /// The server is draining after SIGTERM: it finishes what it runs and takes no new work, so
    /// that a load balancer sends the request to another replica.
    pub fn shutting_down() -> ApiError {
        ApiError {
            status: 503,
            message: "The server is shutting down and takes no new requests; retry (another replica may answer)."
                .into(),
            kind: "server_error",
            param: None,
            code: Some("shutting_down"),
            retry_after_secs: Some(1),
        }
    }

    /// The drain after SIGTERM ran past `--shutdown-timeout` with this request unfinished.
    pub fn shutdown_timeout() -> ApiError {
        ApiError {
            status: 503,
            message: "The server shut down before this request finished (its --shutdown-timeout passed); retry.".into(),
            kind: "server_error",
            param: None,
            code: Some("shutting_down"),
            retry_after_secs: Some(1),
        }
    }

    /// A per-key limit (requests or tokens per minute, concurrent streams) is reached.
    pub fn rate_limited(message: impl Into<String>, retry_after_secs: u64) -> ApiError {
        ApiError {
            status: 429,
            message: message.into(),
            kind: "rate_limit_error",
            param: None,
            code: Some("rate_limit_exceeded"),
            retry_after_secs: Some(retry_after_secs.max(1)),
        }
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 500,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
            retry_after_secs: None,
        }
    }

    /// The same error naming another request field.
    pub fn for_param(mut self, param: &str) -> ApiError {
        self.param = Some(param.to_string());
        self
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }

    pub fn body_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.body()).expect("a JSON value always serialises")
    }
}

impl From<crate::engine::core::SubmitError> for ApiError {
    fn from(error: crate::engine::core::SubmitError) -> ApiError {
        use crate::engine::core::SubmitError;
        match error {
            SubmitError::Overloaded(_) => ApiError::overloaded(error.to_string()),
            SubmitError::ContextLengthExceeded { prompt, new, context } => {
                ApiError::context_length_exceeded(prompt, new, context)
            }
            SubmitError::EmptyPrompt => ApiError::invalid_param("prompt", "The prompt is empty."),
            SubmitError::TooManyChoices { .. } => ApiError::invalid_param("n", error.to_string()),
            SubmitError::LogitBias(_) => ApiError::invalid_param("logit_bias", error.to_string()),
            SubmitError::Stopped => ApiError::internal(error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_error_shape() {
        let body = ApiError::invalid_param("temperature", "temperature must be between 0 and 2").body();
        assert_eq!(body["error"]["param"], "temperature");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["message"], "temperature must be between 0 and 2");
        let body = ApiError::unauthorized().body();
        assert_eq!(body["error"]["param"], serde_json::Value::Null);
        assert_eq!(ApiError::context_length_exceeded(10, 20, 16).code, Some("context_length_exceeded"));
    }

    #[test]
    fn engine_refusals_map_to_statuses() {
        use crate::engine::core::SubmitError;
        assert_eq!(ApiError::from(SubmitError::Overloaded(5)).status, 429);
        let context = ApiError::from(SubmitError::ContextLengthExceeded { prompt: 10, new: 10, context: 16 });
        assert_eq!((context.status, context.code), (400, Some("context_length_exceeded")));
        assert_eq!(ApiError::from(SubmitError::TooManyChoices { n: 9, max: 4 }).param.as_deref(), Some("n"));
        let bias = ApiError::from(SubmitError::LogitBias("token 9 is outside the vocabulary of 8 tokens".into()));
        assert_eq!((bias.status, bias.param.as_deref()), (400, Some("logit_bias")));
    }
}
