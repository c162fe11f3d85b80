//! The engine: step plans, KV blocks, sampling, sequences and generation. Nothing here knows about
//! HTTP; nothing here knows about kernels — backends execute the plans the engine builds.

pub mod batch;
pub mod core;
pub mod json_schema;
pub mod kv_blocks;
pub mod metrics;
pub mod request;
pub mod rng;
pub mod sampler;
pub mod scheduler;
pub mod serving;
pub mod stop;
pub mod text;
