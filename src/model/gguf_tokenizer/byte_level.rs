//! Byte-level BPE vocabularies (`tokenizer.ggml.model == "gpt2"`): GPT-2, SmolLM, Llama 3, Qwen2,
//! Mistral-Nemo. The merges are in the file; the pre-tokenizer is only named
//! (`tokenizer.ggml.pre`), so each supported name maps to the split llama.cpp applies for it
//! (llama-vocab.cpp), written as the Hugging Face pre-tokenizer that does the same.

use serde_json::{json, Map, Value};

use super::{GgufVocab, ModelError};
use crate::model::gguf::GgufFile;

/// The split regex of Llama 3's tokenizer (llama.cpp's `llama3` pre-type): numbers in runs of up
/// to three digits. Contractions are spelled out in ASCII cases, as llama.cpp writes them, rather
/// than as the original's `(?i:'s|...)`, whose Unicode case folding also takes `'ſ` and `'K`.
const LLAMA3_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's (llama.cpp's `qwen2` pre-type): as Llama 3's, but every digit on its own.
const QWEN2_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Mistral-Nemo's "tekken" split, as its tokenizer.json writes it: words cut at case changes, no
/// English contractions, every digit on its own, `/` kept with the punctuation before it.
/// llama.cpp runs an approximation of it (a letter that is not `a-z` for the upper-case classes),
/// which differs on non-ASCII words that change case and on combining marks; kiln keeps the
/// model's own definition (see tests/tokenizer_gguf.rs).
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizer.ggml.pre` names kiln rebuilds, for error messages.
const SUPPORTED_PRE: &str = "gpt-2, smollm, llama3 (llama-bpe, llama-v3), qwen2, tekken";

/// The tokenizer.json of a byte-level BPE vocabulary.
pub(super) fn tokenizer_json(gguf: &GgufFile, vocab: &GgufVocab) -> Result<Value, ModelError> {
    let invalid = |message: String| ModelError::invalid(gguf.path(), message);
    let merges = gguf
        .get_str_array("tokenizer.ggml.merges")?
        .ok_or_else(|| invalid("metadata `tokenizer.ggml.merges` is missing (a BPE vocabulary needs it)".into()))?;
    let pre = gguf.get_str("tokenizer.ggml.pre")?.unwrap_or("gpt-2");
    let (pre_tokenizer, ignore_merges) = pre_tokenizer(pre).ok_or_else(|| {
        invalid(format!("tokenizer.ggml.pre is `{pre}`, which kiln cannot rebuild yet (supported: {SUPPORTED_PRE})"))
    })?;

    let mut token_ids = Map::with_capacity(vocab.tokens.len());
    for (id, token) in vocab.tokens.iter().enumerate() {
        // A repeated token cannot be represented in a map; the first id wins, as in llama.cpp's
        // text-to-token lookup.
        token_ids.entry(token.to_string()).or_insert(json!(id));
    }
    let merges = merges
        .iter()
        .map(|merge| {
            // llama.cpp splits at the first space after the first character.
            match merge.char_indices().skip(1).find(|&(_, c)| c == ' ') {
                Some((at, _)) => Ok(json!([&merge[..at], &merge[at + 1..]])),
                None => Err(invalid(format!(
                    "tokenizer.ggml.merges entry {merge:?} is not two tokens separated by a space"
                ))),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;

    let byte_level_post =
        json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true});
    let post_processor = match vocab.bos_eos_processor() {
        None => byte_level_post,
        Some(template) => json!({"type": "Sequence", "processors": [byte_level_post, template]}),
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": vocab.added_tokens(),
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": ignore_merges,
            "vocab": token_ids,
            "merges": merges,
        },
    }))
}

/// The Hugging Face pre-tokenizer for a llama.cpp pre-type, and whether its BPE model takes a
/// word that is already in the vocabulary whole (`ignore_merges`, as llama.cpp sets for Llama 3
/// and tekken).
fn pre_tokenizer(pre: &str) -> Option<(Value, bool)> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split_then_bytes = |pattern: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false},
            byte_level(false),
        ]})
    };
    match pre {
        // SmolLM's tokenizer: every digit its own token, then GPT-2's byte-level split.
        "smollm" => Some((
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(true),
            ]}),
            false,
        )),
        "gpt-2" => Some((byte_level(true), false)),
        "llama-bpe" | "llama3" | "llama-v3" | "smaug-bpe" => Some((split_then_bytes(LLAMA3_SPLIT), true)),
        "qwen2" | "deepseek-r1-qwen" => Some((split_then_bytes(QWEN2_SPLIT), false)),
        "tekken" => Some((split_then_bytes(TEKKEN_SPLIT), true)),
        _ => None,
    }
}
