//! Errors from reading model files. Every variant names the file it is about, so a user can act on it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its contents are not what they must be (corrupt, truncated, bad JSON).
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path}: missing tensor `{name}`")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {got:?}, expected {expected:?}")]
    WrongShape { path: PathBuf, name: String, got: Vec<usize>, expected: Vec<usize> },
    #[error("{path}: unsupported architecture `{architecture}`; kiln runs LlamaForCausalLM and MistralForCausalLM")]
    UnsupportedArchitecture { path: PathBuf, architecture: String },
    /// Fetching the default model failed (pip missing, no network, checksum mismatch).
    #[error("pulling the default model failed: {0}")]
    Pull(String),
}

impl ModelError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io { path: path.into(), source }
    }
    pub fn invalid(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        ModelError::Invalid { path: path.into(), message: message.into() }
    }
}
