//! The HTTP server: our HTTP/1.1 layer on may (`http`), and the API on top of it.

pub mod api;
pub mod app;
pub mod caller;
pub mod generation;
pub mod http;
pub mod keys;
pub mod metrics;
mod metrics_aliases;
mod native_routes;
mod openai_routes;
pub mod rate_limit;
pub mod request_id;
pub mod respond;
pub mod routes;
mod tokenize_routes;
pub mod tool_output;
pub mod webhook;
pub mod webhook_destination;
