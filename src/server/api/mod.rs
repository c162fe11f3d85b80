//! The HTTP API: OpenAI-compatible and native request types, their validation, and the JSON and
//! SSE bodies of the responses. Handlers in `routes` tie them to the engine.

pub mod error;
pub mod fields;
pub mod limits;
pub mod logit_bias;
pub mod native;
pub mod openai;
pub mod openai_params;
pub mod pricing;
pub mod responses;
pub mod tokenize;
pub mod tools;
pub mod valid;
