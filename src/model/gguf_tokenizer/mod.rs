//! Rebuilds a Hugging Face `tokenizer.json` and `tokenizer_config.json` from a GGUF's tokenizer
//! metadata (llama.cpp's `tokenizer.ggml.*` keys), so a GGUF model runs through the same tokenizer
//! code as a Hugging Face directory. Two vocabulary kinds are rebuilt, each in its own file:
//! - `gpt2`: byte-level BPE ([`byte_level`]); the pre-tokenizer is chosen from
//!   `tokenizer.ggml.pre` (llama.cpp's `default` where it is missing), because the GGUF stores
//!   only a name for it, not its definition;
//! - `llama`: SentencePiece BPE with byte fallback, as Llama-2 and Mistral ship ([`sentencepiece`]).
//!
//! The reference is llama.cpp's own tokenizer on the same file; tests/tokenizer_gguf.rs compares.

mod byte_level;
mod sentencepiece;
#[cfg(test)]
mod tests;

use serde_json::{json, Map, Value};

use super::gguf::GgufFile;
use super::ModelError;

/// llama.cpp's token types (`llama_token_type`).
const TOKEN_TYPE_NORMAL: i32 = 1;
const TOKEN_TYPE_UNKNOWN: i32 = 2;
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// The two JSON documents of a Hugging Face tokenizer.
#[derive(Debug, Clone)]
pub struct TokenizerFiles {
    pub tokenizer_json: Value,
    pub tokenizer_config: Value,
}

/// The special-token ids llama.cpp records.
struct SpecialIds {
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
}

/// What every GGUF vocabulary records, whatever its kind.
struct GgufVocab<'a> {
    tokens: Vec<&'a str>,
    /// One `TOKEN_TYPE_*` per token; empty when the file has none.
    token_types: Vec<i32>,
    special: SpecialIds,
    add_bos: bool,
    add_eos: bool,
}

impl<'a> GgufVocab<'a> {
    /// Reads the shared keys; `defaults` are llama.cpp's values for this vocabulary kind when the
    /// file leaves a key out.
    fn read(gguf: &'a GgufFile, defaults: &KindDefaults) -> Result<GgufVocab<'a>, ModelError> {
        let invalid = |message: String| ModelError::invalid(gguf.path(), message);
        let tokens = gguf
            .get_str_array("tokenizer.ggml.tokens")?
            .ok_or_else(|| invalid("metadata `tokenizer.ggml.tokens` is missing".into()))?;
        let token_types = gguf.get_i32_array("tokenizer.ggml.token_type")?.unwrap_or_default();
        if !token_types.is_empty() && token_types.len() != tokens.len() {
            return Err(invalid(format!(
                "tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {}",
                token_types.len(),
                tokens.len()
            )));
        }
        let special_id = |key: &str, default: Option<u32>| -> Result<Option<u32>, ModelError> {
            match gguf.get_u32(key)? {
                Some(id) if id as usize >= tokens.len() => {
                    Err(invalid(format!("{key} = {id} but the vocabulary has only {} tokens", tokens.len())))
                }
                Some(id) => Ok(Some(id)),
                None => Ok(default.filter(|&id| (id as usize) < tokens.len())),
            }
        };
        let special = SpecialIds {
            bos: special_id("tokenizer.ggml.bos_token_id", defaults.bos)?,
            eos: special_id("tokenizer.ggml.eos_token_id", defaults.eos)?,
            unk: special_id("tokenizer.ggml.unknown_token_id", defaults.unk)?,
            pad: special_id("tokenizer.ggml.padding_token_id", None)?,
        };
        let add_bos = gguf.get_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(defaults.add_bos);
        let add_eos = gguf.get_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(defaults.add_eos);
        Ok(GgufVocab { tokens, token_types, special, add_bos, add_eos })
    }

    fn token_type(&self, id: usize) -> i32 {
        self.token_types.get(id).copied().unwrap_or(TOKEN_TYPE_NORMAL)
    }

    fn is_special_id(&self, id: usize) -> bool {
        let s = &self.special;
        [s.bos, s.eos, s.unk, s.pad].contains(&Some(id as u32))
    }

    /// Tokens that must be matched in the text before the model sees it: control and unknown
    /// tokens (and the special ids) as special tokens, user-defined ones as plain added tokens, as
    /// llama.cpp partitions its input when it parses special tokens.
    fn added_tokens(&self) -> Vec<Value> {
        self.tokens
            .iter()
            .enumerate()
            .filter_map(|(id, token)| {
                let token_type = self.token_type(id);
                let special = matches!(token_type, TOKEN_TYPE_CONTROL | TOKEN_TYPE_UNKNOWN) || self.is_special_id(id);
                if !special && token_type != TOKEN_TYPE_USER_DEFINED {
                    return None;
                }
                Some(json!({
                    "id": id, "content": token, "single_word": false, "lstrip": false, "rstrip": false,
                    "normalized": false, "special": special,
                }))
            })
            .collect()
    }

    fn token_of(&self, id: Option<u32>) -> Option<&'a str> {
        id.map(|id| self.tokens[id as usize])
    }

    /// A TemplateProcessing post-processor that adds BOS and/or EOS around each sequence as the
    /// file asks, or `None` when neither is added.
    fn bos_eos_processor(&self) -> Option<Value> {
        let with_token = |id: Option<u32>| id.map(|id| (self.tokens[id as usize], id));
        let bos = with_token(self.special.bos).filter(|_| self.add_bos);
        let eos = with_token(self.special.eos).filter(|_| self.add_eos);
        template_processing(bos, eos)
    }
}

/// llama.cpp's defaults for one vocabulary kind (llama-vocab.cpp, `load`).
struct KindDefaults {
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    add_bos: bool,
    add_eos: bool,
}

/// Builds both tokenizer files; `model_max_length` is the context length to advertise.
pub fn tokenizer_files_from_gguf(gguf: &GgufFile, model_max_length: usize) -> Result<TokenizerFiles, ModelError> {
    let model = gguf.require_str("tokenizer.ggml.model")?;
    let (vocab, tokenizer_json) = match model {
        "gpt2" => {
            let pre = byte_level::PreType::read(gguf)?;
            let defaults =
                KindDefaults { bos: None, eos: None, unk: None, add_bos: pre.add_bos_default, add_eos: false };
            let vocab = GgufVocab::read(gguf, &defaults)?;
            let json = byte_level::tokenizer_json(gguf, &vocab, &pre)?;
            (vocab, json)
        }
        "llama" => {
            let defaults = KindDefaults { bos: Some(1), eos: Some(2), unk: Some(0), add_bos: true, add_eos: false };
            let vocab = GgufVocab::read(gguf, &defaults)?;
            let json = sentencepiece::tokenizer_json(gguf, &vocab)?;
            (vocab, json)
        }
        other => {
            return Err(ModelError::invalid(
                gguf.path(),
                format!(
                    "tokenizer.ggml.model is `{other}`; kiln rebuilds byte-level BPE (`gpt2`) and SentencePiece \
                     (`llama`) tokenizers"
                ),
            ))
        }
    };

    let mut config = Map::new();
    config.insert("add_bos_token".into(), json!(vocab.add_bos));
    config.insert("add_eos_token".into(), json!(vocab.add_eos));
    config.insert("bos_token".into(), json!(vocab.token_of(vocab.special.bos)));
    config.insert("eos_token".into(), json!(vocab.token_of(vocab.special.eos)));
    config.insert("unk_token".into(), json!(vocab.token_of(vocab.special.unk)));
    config.insert("pad_token".into(), json!(vocab.token_of(vocab.special.pad)));
    if let Some(template) = gguf.get_str("tokenizer.chat_template")? {
        config.insert("chat_template".into(), json!(template));
    }
    config.insert("model_max_length".into(), json!(model_max_length));
    config.insert("clean_up_tokenization_spaces".into(), json!(false));
    config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));

    Ok(TokenizerFiles { tokenizer_json, tokenizer_config: Value::Object(config) })
}

/// A TemplateProcessing post-processor that adds BOS and/or EOS around each sequence, or `None`
/// when neither is added.
fn template_processing(bos: Option<(&str, u32)>, eos: Option<(&str, u32)>) -> Option<Value> {
    if bos.is_none() && eos.is_none() {
        return None;
    }
    let wrapped = |sequence: &str, type_id: u32| {
        let special = |token: &str| json!({"SpecialToken": {"id": token, "type_id": type_id}});
        let mut pieces = Vec::new();
        pieces.extend(bos.map(|(token, _)| special(token)));
        pieces.push(json!({"Sequence": {"id": sequence, "type_id": type_id}}));
        pieces.extend(eos.map(|(token, _)| special(token)));
        pieces
    };
    let single = wrapped("A", 0);
    let pair: Vec<Value> = wrapped("A", 0).into_iter().chain(wrapped("B", 1)).collect();
    let mut special_tokens = Map::new();
    for (token, id) in bos.into_iter().chain(eos) {
        special_tokens.insert(token.into(), json!({"id": token, "ids": [id], "tokens": [token]}));
    }
    Some(json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special_tokens}))
}
