//! Text to token ids and back: the tokenizer, the incremental detokenizer and chat templates.
//!
//! Encoding is the Hugging Face `tokenizers` crate reading the model's `tokenizer.json`; decoding is
//! kiln's own table of per-token bytes (see `token_bytes`), so that one-shot and streaming decodes
//! agree exactly and a grammar can see each token's bytes.

pub mod chat;
mod config;
pub mod detok;
mod error;
mod pyjinja;
mod special;
mod tojson;
mod token_bytes;
pub mod tool_calls;
pub mod tool_prompt;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use chat::{ChatMessage, ChatTemplate, ChatTemplateTokens};
pub use detok::IncrementalDecoder;
pub use error::TokenizerError;

use config::TokenizerConfig;
pub use special::SpecialToken;
use special::SpecialTokens;
use token_bytes::TokenTable;

/// A model's tokenizer: `tokenizer.json` plus what `tokenizer_config.json` says about it.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    table: Arc<TokenTable>,
    bos: Option<SpecialToken>,
    eos: Option<SpecialToken>,
    add_bos: bool,
    add_eos: bool,
    chat_template: Option<ChatTemplate>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .field("chat_template", &self.chat_template.is_some())
            .finish()
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json` from a Hugging Face model directory, with `tokenizer_config.json` and
    /// `chat_template.jinja` when present (newer transformers save the template in the latter).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let dir = dir.as_ref();
        let config_path = dir.join("tokenizer_config.json");
        let jinja_path = dir.join("chat_template.jinja");
        Self::from_files(
            &dir.join("tokenizer.json"),
            config_path.is_file().then_some(config_path.as_path()),
            jinja_path.is_file().then_some(jinja_path.as_path()),
        )
    }

    /// Loads from explicit files; `chat_template_jinja` is used only when the config has no
    /// `chat_template`.
    pub fn from_files(
        tokenizer_json: &Path,
        tokenizer_config: Option<&Path>,
        chat_template_jinja: Option<&Path>,
    ) -> Result<Self, TokenizerError> {
        let text = std::fs::read_to_string(tokenizer_json).map_err(|e| TokenizerError::io(tokenizer_json, e))?;
        let config = match tokenizer_config {
            Some(path) => TokenizerConfig::from_file(path)?,
            None => TokenizerConfig::default(),
        };
        let template = match (&config.chat_template, tokenizer_config, chat_template_jinja) {
            (Some(source), Some(path), _) => Some((source.clone(), path.to_owned())),
            (None, _, Some(path)) => {
                Some((std::fs::read_to_string(path).map_err(|e| TokenizerError::io(path, e))?, path.to_owned()))
            }
            _ => None,
        };
        let config_path =
            tokenizer_config.map(Path::to_owned).unwrap_or_else(|| PathBuf::from("tokenizer_config.json"));
        Self::build(&text, tokenizer_json, config, &config_path, template)
    }

    fn build(
        tokenizer_json: &str,
        json_path: &Path,
        config: TokenizerConfig,
        config_path: &Path,
        template: Option<(String, PathBuf)>,
    ) -> Result<Self, TokenizerError> {
        let invalid = |message: String| TokenizerError::invalid(json_path, message);
        let raw: serde_json::Value =
            serde_json::from_str(tokenizer_json).map_err(|e| invalid(format!("not valid JSON: {e}")))?;
        let mut inner: tokenizers::Tokenizer = tokenizer_json
            .parse()
            .map_err(|e| invalid(format!("not a tokenizer the `tokenizers` library can load: {e}")))?;
        // Some tokenizer.json files carry training-time truncation or padding; kiln must see every
        // token of a prompt and decides context limits itself.
        inner.with_truncation(None).map_err(|e| invalid(format!("cannot disable truncation: {e}")))?;
        inner.with_padding(None);

        let specials = SpecialTokens::resolve(&inner, &config, json_path, config_path)?;
        let SpecialTokens { bos, eos, unk, pad, add_bos, add_eos } = specials;

        let added = inner.get_added_tokens_decoder();
        let max_id = added.keys().copied().max().map_or(0, |id| id as usize + 1);
        let table_len = inner.get_vocab_size(true).max(max_id);
        let tokens: Vec<Option<String>> = (0..table_len as u32).map(|id| inner.id_to_token(id)).collect();
        let special_ids = added
            .iter()
            .filter(|(_, token)| token.special)
            .map(|(id, _)| *id)
            .chain([&bos, &eos, &unk, &pad].into_iter().flatten().map(|t| t.id));
        let table = TokenTable::new(&tokens, special_ids, raw.get("decoder"), json_path)?;

        let template_tokens = ChatTemplateTokens {
            bos_token: bos.as_ref().map(|t| t.text.clone()),
            eos_token: eos.as_ref().map(|t| t.text.clone()),
            unk_token: config.unk_token.clone(),
            pad_token: config.pad_token.clone(),
        };
        let chat_template = match template {
            Some((source, path)) => Some(ChatTemplate::new(&source, template_tokens, &path)?),
            None => None,
        };
        Ok(Tokenizer { inner, table: Arc::new(table), bos, eos, add_bos, add_eos, chat_template })
    }

    /// Text to ids. Special-token strings in `text` (`<|im_start|>`, `<s>`) become their ids; this is
    /// how a rendered chat prompt is tokenized, with `add_special_tokens = false` as HF's
    /// `apply_chat_template(tokenize=True)` does. With `add_special_tokens = true` the model's BOS
    /// (and EOS, where the config asks for it) is added unless the text already starts (ends) with
    /// it, so a prompt that spells out `<s>` never gets two.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self.inner.encode_fast(text, false).map_err(|e| TokenizerError::Encode(e.to_string()))?;
        let ids = encoding.get_ids();
        let bos = self.bos.as_ref().filter(|t| add_special_tokens && self.add_bos && ids.first() != Some(&t.id));
        let eos = self.eos.as_ref().filter(|t| add_special_tokens && self.add_eos && ids.last() != Some(&t.id));
        let mut out = Vec::with_capacity(ids.len() + 2);
        out.extend(bos.map(|t| t.id));
        out.extend_from_slice(ids);
        out.extend(eos.map(|t| t.id));
        Ok(out)
    }

    /// Ids to text, skipping special tokens. Equal to HF's `decode(ids, skip_special_tokens=True)`
    /// whenever the bytes are valid UTF-8; see `TokenTable::decode` for the one difference.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.table.decode(ids)
    }

    /// Ids to text keeping special tokens as their text (`<|im_start|>`), as HF's
    /// `decode(ids, skip_special_tokens=False)`: a rendered chat prompt's ids give its text back.
    pub fn decode_with_special(&self, ids: &[u32]) -> String {
        self.table.decode_with_special(ids)
    }

    /// A streaming decoder for one sequence, equal to `decode` of everything pushed.
    pub fn incremental_decoder(&self) -> IncrementalDecoder {
        IncrementalDecoder::new(self)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token's vocabulary string (`▁Hello`, `ĠHello`, `<0x0A>`), not its decoded text.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The number of ids, i.e. one more than the highest id of the vocabulary or added tokens.
    pub fn vocab_size(&self) -> usize {
        self.table.len()
    }

    /// Special tokens are left out of decoded text: added tokens marked special in tokenizer.json
    /// and the bos/eos/unk/pad tokens of tokenizer_config.json.
    pub fn is_special(&self, id: u32) -> bool {
        self.table.is_special(id)
    }

    /// The raw bytes `id` contributes to output text: byte-level tokens mapped back through the
    /// GPT-2 byte table, SentencePiece `▁` as a space and `<0xAB>` as the byte 0xAB, added tokens as
    /// their text. Empty for ids no token has. Special tokens keep their text here although
    /// `decode` skips them (check `is_special`). The start-of-text rules of `decode` (stripping the
    /// first space) are not applied.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.table.bytes(id)
    }

    /// `token_bytes` of every id, indexed by id, for building per-token tables (e.g. a grammar).
    pub fn all_token_bytes(&self) -> &[Vec<u8>] {
        self.table.all_bytes()
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos.as_ref().map(|t| t.text.as_str())
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos.as_ref().map(|t| t.id)
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos.as_ref().map(|t| t.text.as_str())
    }

    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos.as_ref().map(|t| t.id)
    }

    /// Whether `encode(text, true)` starts the ids with BOS.
    pub fn adds_bos_token(&self) -> bool {
        self.add_bos
    }

    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// Renders a conversation with the model's chat template (HF `apply_chat_template`,
    /// `tokenize=False`).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        self.apply_chat_template_with_tools(messages, &[], add_generation_prompt)
    }

    /// `apply_chat_template` with tools: rendered by the template when it knows `tools`, else
    /// described in the conversation in the Hermes format (`tool_prompt`), earlier calls and
    /// results included (also when no tools are given).
    pub fn apply_chat_template_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: &[serde_json::Value],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let template = self.chat_template.as_ref().ok_or(TokenizerError::NoChatTemplate)?;
        let tool_turns = messages.iter().any(|m| m.role == "tool" || !m.tool_calls.is_empty());
        if template.supports_tools() {
            let tools = (!tools.is_empty()).then_some(tools);
            return template.render_with_tools(messages, tools, add_generation_prompt);
        }
        if tools.is_empty() && !tool_turns {
            return template.render(messages, add_generation_prompt);
        }
        template.render(&tool_prompt::describe_tools(messages, tools), add_generation_prompt)
    }

    /// Renders and tokenizes a conversation the way HF's `apply_chat_template(tokenize=True)` does:
    /// the template writes any BOS itself, so no special tokens are added.
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        let prompt = self.apply_chat_template(messages, add_generation_prompt)?;
        self.encode(&prompt, false)
    }

    pub(crate) fn token_table(&self) -> Arc<TokenTable> {
        Arc::clone(&self.table)
    }
}
