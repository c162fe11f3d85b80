//! kiln: a kernel-first LLM inference server for Llama-family models.
//!
//! One request reads top to bottom: `server` (HTTP, API types) → `engine` (requests, scheduling,
//! sampling) → `backend` (the forward pass over a step plan) → `ops` (the CPU reference of every op).
//! `model` loads weights and configs; `tokenizer` turns text into ids and back.

pub mod backend;
pub mod cli;
pub mod engine;
#[doc(hidden)]
pub mod fuzzing;
pub mod launch;
pub mod model;
pub mod ops;
pub mod server;
pub mod testing;
pub mod tokenizer;
