//! SentencePiece BPE vocabularies (`tokenizer.ggml.model == "llama"`: Llama-2, Mistral 7B,
//! CodeLlama, TinyLlama), rebuilt as the BPE-with-byte-fallback tokenizer.json that Hugging Face
//! ships for the same models.
//!
//! A SentencePiece GGUF has no merges, only a score per token. llama.cpp tokenizes by starting
//! from the text's characters and repeatedly joining the adjacent pair whose concatenation is a
//! token with the highest score (the leftmost on a tie), then spelling characters that are no
//! token as their `<0xAB>` byte tokens. A BPE model whose merge list holds every pair that
//! concatenates to a token, ranked by that token's score, joins the same pairs in the same order,
//! so the merges are derived here from the scores. Ties between different tokens of equal score
//! are ranked by token id (llama.cpp would take the leftmost); SentencePiece BPE vocabularies give
//! every merged piece its own score, so no tie arises on them.
//!
//! Text is prepared as llama.cpp does: spaces become `▁`, and each piece of text between special
//! tokens gets a leading `▁` when `tokenizer.ggml.add_space_prefix` is true (the default).

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use super::{GgufVocab, ModelError, TOKEN_TYPE_CONTROL, TOKEN_TYPE_UNKNOWN};
use crate::model::gguf::GgufFile;

/// SentencePiece's stand-in for a space.
const SPACE: &str = "\u{2581}";

/// The tokenizer.json of a SentencePiece vocabulary.
pub(super) fn tokenizer_json(gguf: &GgufFile, vocab: &GgufVocab) -> Result<Value, ModelError> {
    let invalid = |message: String| ModelError::invalid(gguf.path(), message);
    let scores = gguf.get_f32_array("tokenizer.ggml.scores")?.ok_or_else(|| {
        invalid("metadata `tokenizer.ggml.scores` is missing (a SentencePiece vocabulary needs it)".into())
    })?;
    if scores.len() != vocab.tokens.len() {
        return Err(invalid(format!(
            "tokenizer.ggml.scores has {} entries but tokenizer.ggml.tokens has {}",
            scores.len(),
            vocab.tokens.len()
        )));
    }
    if let Some(id) = scores.iter().position(|score| score.is_nan()) {
        return Err(invalid(format!("tokenizer.ggml.scores[{id}] is NaN")));
    }
    if gguf.get_bool("tokenizer.ggml.treat_whitespace_as_suffix")?.unwrap_or(false) {
        return Err(invalid("tokenizer.ggml.treat_whitespace_as_suffix is true, which kiln does not support".into()));
    }
    let add_space_prefix = gguf.get_bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(true);

    let mut token_ids: HashMap<&str, usize> = HashMap::with_capacity(vocab.tokens.len());
    for (id, token) in vocab.tokens.iter().enumerate() {
        // llama.cpp's text-to-token map keeps the last id of a repeated token.
        token_ids.insert(token, id);
    }
    if let Some(missing) = (0..=255u8).map(|b| format!("<0x{b:02X}>")).find(|t| !token_ids.contains_key(t.as_str())) {
        return Err(invalid(format!(
            "the SentencePiece vocabulary has no byte token {missing}; kiln supports byte-fallback vocabularies \
             (Llama-2, Mistral), which have all 256"
        )));
    }
    let merges = merges_from_scores(vocab, &scores, &token_ids);
    let mut vocab_json = Map::with_capacity(token_ids.len());
    for (id, token) in vocab.tokens.iter().enumerate() {
        if token_ids[token] == id {
            vocab_json.insert(token.to_string(), json!(id));
        }
    }

    let replace_spaces = json!({"type": "Replace", "pattern": {"String": " "}, "content": SPACE});
    let normalizer = if add_space_prefix {
        json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": SPACE}, replace_spaces]})
    } else {
        replace_spaces
    };
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": SPACE}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_space_prefix {
        // llama.cpp removes the space it added in front of the first piece, once.
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let unk_token = vocab.token_of(vocab.special.unk);
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": vocab.added_tokens(),
        "normalizer": normalizer,
        "pre_tokenizer": null,
        "post_processor": vocab.bos_eos_processor(),
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": unk_token,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": true,
            "byte_fallback": true,
            "ignore_merges": false,
            "vocab": vocab_json,
            "merges": merges,
        },
    }))
}

/// Every split of a token into two tokens, as `[left, right]` merges ranked by the joined token's
/// score (highest first), then by its id.
fn merges_from_scores(vocab: &GgufVocab, scores: &[f32], token_ids: &HashMap<&str, usize>) -> Vec<Value> {
    let mut ranked: Vec<(f32, usize, &str, &str)> = Vec::new();
    for (id, &token) in vocab.tokens.iter().enumerate() {
        // Special tokens are matched in the text before the model runs; a merge never forms them.
        if token_ids[token] != id || matches!(vocab.token_type(id), TOKEN_TYPE_CONTROL | TOKEN_TYPE_UNKNOWN) {
            continue;
        }
        for (at, _) in token.char_indices().skip(1) {
            let (left, right) = token.split_at(at);
            if token_ids.contains_key(left) && token_ids.contains_key(right) {
                ranked.push((scores[id], id, left, right));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    ranked.into_iter().map(|(_, _, left, right)| json!([left, right])).collect()
}
