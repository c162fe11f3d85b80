//! Loading models: Hugging Face directories (config.json + safetensors), GGUF files, and the
//! default model that `kiln pull` fetches and converts.

pub mod config;
pub mod convert;
pub mod error;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod gguf_weights;
pub mod packed_groups;
pub mod packed_quant;
pub mod pull;
pub mod quant;
pub mod random;
pub mod safetensors_dir;
mod staged;
pub mod weight_arena;
pub mod weights;

pub use config::ModelConfig;
pub use error::ModelError;
