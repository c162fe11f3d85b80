//! Errors from loading a tokenizer, encoding text and rendering chat templates. Load errors name
//! the file they are about so a user can fix it; render errors say whether the conversation (a
//! client's fault) or the template (the model's fault) is to blame.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file exists but cannot be used: bad JSON, an unknown field type, a decoder kiln does
    /// not implement, a special token missing from the vocabulary.
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// `chat_template` does not compile; caught at load time so a broken model fails at start-up.
    #[error("{path}: chat_template does not compile: {message}")]
    ChatTemplateSyntax { path: PathBuf, message: String },
    /// The template itself rejected the conversation through `raise_exception(message)`, e.g.
    /// "Conversation roles must alternate user/assistant/user/assistant/...". A client error.
    #[error("the chat template rejected the conversation: {0}")]
    ChatTemplate(String),
    /// The template failed for any other reason (an unsupported filter or method, a type error).
    #[error("rendering the chat template failed: {0}")]
    ChatTemplateRender(String),
    #[error("this model has no chat template (no `chat_template` in tokenizer_config.json and no chat_template.jinja); send a raw prompt to the completions endpoint instead")]
    NoChatTemplate,
    #[error("encoding the text failed: {0}")]
    Encode(String),
}

impl TokenizerError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TokenizerError::Io { path: path.into(), source }
    }
    pub(crate) fn invalid(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        TokenizerError::Invalid { path: path.into(), message: message.into() }
    }
}
