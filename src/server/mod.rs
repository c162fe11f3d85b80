//! The HTTP server: our HTTP/1.1 layer on may (`http`), and the API on top of it.

pub mod api;
pub mod http;
pub mod metrics;
pub mod webhook;
