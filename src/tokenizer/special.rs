//! Which ids are BOS/EOS/UNK/PAD and whether a raw prompt gets BOS/EOS: tokenizer_config.json says
//! so when it can, and tokenizer.json's post-processor fills in what it leaves out (transformers
//! follows the post-processor too; without a config file it is all there is).

use std::path::Path;

use super::config::TokenizerConfig;
use super::TokenizerError;

/// A special token's text and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialToken {
    pub text: String,
    pub id: u32,
}

pub(crate) struct SpecialTokens {
    pub bos: Option<SpecialToken>,
    pub eos: Option<SpecialToken>,
    pub unk: Option<SpecialToken>,
    pub pad: Option<SpecialToken>,
    pub add_bos: bool,
    pub add_eos: bool,
}

impl SpecialTokens {
    /// `json_path` and `config_path` name the two files in errors.
    pub fn resolve(
        inner: &tokenizers::Tokenizer,
        config: &TokenizerConfig,
        json_path: &Path,
        config_path: &Path,
    ) -> Result<Self, TokenizerError> {
        let resolve = |key: &str, text: &Option<String>| -> Result<Option<SpecialToken>, TokenizerError> {
            let Some(text) = text else { return Ok(None) };
            match inner.token_to_id(text) {
                Some(id) => Ok(Some(SpecialToken { text: text.clone(), id })),
                None => Err(TokenizerError::invalid(
                    config_path,
                    format!("{key} `{text}` is not a token of {}", json_path.display()),
                )),
            }
        };
        let mut bos = resolve("bos_token", &config.bos_token)?;
        let mut eos = resolve("eos_token", &config.eos_token)?;
        // unk/pad only matter for skipping in decode; a pad token that a training script meant to
        // add may be missing from the vocabulary, which is harmless.
        let unk = resolve("unk_token", &config.unk_token).ok().flatten();
        let pad = resolve("pad_token", &config.pad_token).ok().flatten();

        // What the post-processor puts around a probe text shows which BOS/EOS it adds.
        let probe = |add_special_tokens: bool| {
            inner
                .encode_fast("a", add_special_tokens)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| TokenizerError::invalid(json_path, format!("cannot encode a probe text: {e}")))
        };
        let (plain, with_special) = (probe(false)?, probe(true)?);
        let grew = with_special.len() > plain.len();
        let post_bos = with_special.first().copied().filter(|_| grew && with_special.ends_with(&plain));
        let post_eos = with_special.last().copied().filter(|_| grew && with_special.starts_with(&plain));
        let as_special = |id: u32| inner.id_to_token(id).map(|text| SpecialToken { text, id });
        if bos.is_none() {
            bos = post_bos.and_then(as_special);
        }
        if eos.is_none() {
            eos = post_eos.and_then(as_special);
        }
        let add_bos = config.add_bos_token.unwrap_or(post_bos.is_some() && post_bos == bos.as_ref().map(|t| t.id));
        let add_eos = config.add_eos_token.unwrap_or(post_eos.is_some() && post_eos == eos.as_ref().map(|t| t.id));
        if add_bos && bos.is_none() {
            return Err(TokenizerError::invalid(config_path, "add_bos_token is true but no bos_token is set"));
        }
        if add_eos && eos.is_none() {
            return Err(TokenizerError::invalid(config_path, "add_eos_token is true but no eos_token is set"));
        }
        Ok(SpecialTokens { bos, eos, unk, pad, add_bos, add_eos })
    }
}
