//! Rebuilds a Hugging Face `tokenizer.json` and `tokenizer_config.json` from a GGUF's tokenizer
//! metadata (llama.cpp's `tokenizer.ggml.*` keys). Only byte-level BPE (`tokenizer.ggml.model ==
//! "gpt2"`) is supported; the pre-tokenizer is chosen from `tokenizer.ggml.pre`, because the GGUF
//! stores only a name for it, not its definition.

use serde_json::{json, Map, Value};

use super::gguf::GgufFile;
use super::ModelError;

/// llama.cpp's token types (`llama_token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// The split regex of Llama 3's tokenizer (and llama.cpp's `llama-bpe` pre-type).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

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

/// Builds both tokenizer files; `model_max_length` is the context length to advertise.
pub fn tokenizer_files_from_gguf(gguf: &GgufFile, model_max_length: usize) -> Result<TokenizerFiles, ModelError> {
    let invalid = |message: String| ModelError::invalid(gguf.path(), message);
    let model = gguf.require_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        let hint = if model == "llama" { " (SentencePiece vocabularies are not supported yet)" } else { "" };
        return Err(invalid(format!(
            "tokenizer.ggml.model is `{model}`; kiln can only rebuild byte-level BPE (`gpt2`) tokenizers{hint}"
        )));
    }
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
    let merges = gguf
        .get_str_array("tokenizer.ggml.merges")?
        .ok_or_else(|| invalid("metadata `tokenizer.ggml.merges` is missing (a BPE vocabulary needs it)".into()))?;

    let special_id = |key: &str| -> Result<Option<u32>, ModelError> {
        match gguf.get_u32(key)? {
            Some(id) if id as usize >= tokens.len() => {
                Err(invalid(format!("{key} = {id} but the vocabulary has only {} tokens", tokens.len())))
            }
            id => Ok(id),
        }
    };
    let special = SpecialIds {
        bos: special_id("tokenizer.ggml.bos_token_id")?,
        eos: special_id("tokenizer.ggml.eos_token_id")?,
        unk: special_id("tokenizer.ggml.unknown_token_id")?,
        pad: special_id("tokenizer.ggml.padding_token_id")?,
    };
    let add_bos = gguf.get_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false);
    let add_eos = gguf.get_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    let pre = gguf.get_str("tokenizer.ggml.pre")?.unwrap_or("gpt-2");
    let (pre_tokenizer, ignore_merges) = pre_tokenizer(pre).ok_or_else(|| {
        invalid(format!(
            "tokenizer.ggml.pre is `{pre}`, which kiln cannot rebuild yet (supported: smollm, gpt-2, llama-bpe)"
        ))
    })?;

    let mut vocab = Map::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        // A repeated token cannot be represented in a map; the first id wins, as in llama.cpp's
        // text-to-token lookup.
        vocab.entry(token.to_string()).or_insert(json!(id));
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

    let is_special_id = |id: usize| [special.bos, special.eos, special.unk, special.pad].contains(&Some(id as u32));
    let added_tokens: Vec<Value> = tokens
        .iter()
        .enumerate()
        .filter_map(|(id, token)| {
            let token_type = token_types.get(id).copied();
            let special = token_type == Some(TOKEN_TYPE_CONTROL) || is_special_id(id);
            if !special && token_type != Some(TOKEN_TYPE_USER_DEFINED) {
                return None;
            }
            Some(json!({
                "id": id, "content": token, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": special,
            }))
        })
        .collect();

    let token_of = |id: Option<u32>| id.map(|id| tokens[id as usize]);
    let with_token = |id: Option<u32>| id.map(|id| (tokens[id as usize], id));
    let byte_level_post =
        json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true});
    let bos_added = with_token(special.bos).filter(|_| add_bos);
    let eos_added = with_token(special.eos).filter(|_| add_eos);
    let post_processor = match template_processing(bos_added, eos_added) {
        None => byte_level_post,
        Some(template) => json!({"type": "Sequence", "processors": [byte_level_post, template]}),
    };

    let tokenizer_json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
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
            "vocab": vocab,
            "merges": merges,
        },
    });

    let mut config = Map::new();
    config.insert("add_bos_token".into(), json!(add_bos));
    config.insert("add_eos_token".into(), json!(add_eos));
    config.insert("bos_token".into(), json!(token_of(special.bos)));
    config.insert("eos_token".into(), json!(token_of(special.eos)));
    config.insert("unk_token".into(), json!(token_of(special.unk)));
    config.insert("pad_token".into(), json!(token_of(special.pad)));
    if let Some(template) = gguf.get_str("tokenizer.chat_template")? {
        config.insert("chat_template".into(), json!(template));
    }
    config.insert("model_max_length".into(), json!(model_max_length));
    config.insert("clean_up_tokenization_spaces".into(), json!(false));
    config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));

    Ok(TokenizerFiles { tokenizer_json, tokenizer_config: Value::Object(config) })
}

/// The Hugging Face pre-tokenizer for a llama.cpp pre-type, and whether its BPE model takes a
/// word that is already in the vocabulary whole (`ignore_merges`, as Llama 3 does).
fn pre_tokenizer(pre: &str) -> Option<(Value, bool)> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
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
        "llama-bpe" | "llama3" | "llama-v3" | "smaug-bpe" => Some((
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
                byte_level(false),
            ]}),
            true,
        )),
        _ => None,
    }
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

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::str::FromStr;

    use super::*;
    use crate::model::gguf::writer::{string, strings, GgufWriter};
    use crate::model::gguf::MetaValue;

    /// GPT-2's byte-to-character table: printable bytes stand for themselves, the rest are moved
    /// to 256 and up, so every byte string is spelled in visible characters.
    fn byte_alphabet() -> Vec<char> {
        let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let mut shifted = 0;
        (0..256u32)
            .map(|b| {
                if printable(b) {
                    char::from_u32(b).unwrap()
                } else {
                    shifted += 1;
                    char::from_u32(255 + shifted).unwrap()
                }
            })
            .collect()
    }

    /// A tiny byte-level vocabulary: three control tokens, the 256 bytes, then merged tokens.
    fn tiny_gguf(pre: &str, add_bos: bool) -> GgufFile {
        let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from).to_vec();
        tokens.extend(byte_alphabet().iter().map(|c| c.to_string()));
        tokens.extend(["Hi", "\u{120}w", "12"].map(String::from));
        let types: Vec<MetaValue> =
            (0..tokens.len()).map(|i| MetaValue::I32(if i < 3 { TOKEN_TYPE_CONTROL } else { 1 })).collect();
        let token_refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let bytes = GgufWriter::new()
            .kv("tokenizer.ggml.model", string("gpt2"))
            .kv("tokenizer.ggml.pre", string(pre))
            .kv("tokenizer.ggml.tokens", strings(&token_refs))
            .kv("tokenizer.ggml.token_type", MetaValue::Array(types))
            .kv("tokenizer.ggml.merges", strings(&["H i", "\u{120} w", "1 2"]))
            .kv("tokenizer.ggml.bos_token_id", MetaValue::U32(1))
            .kv("tokenizer.ggml.eos_token_id", MetaValue::U32(2))
            .kv("tokenizer.ggml.unknown_token_id", MetaValue::U32(0))
            .kv("tokenizer.ggml.add_bos_token", MetaValue::Bool(add_bos))
            .kv("tokenizer.chat_template", string("{{ messages }}"))
            .to_bytes();
        GgufFile::from_bytes(Path::new("tiny.gguf"), bytes).unwrap()
    }

    fn load(files: &TokenizerFiles) -> tokenizers::Tokenizer {
        tokenizers::Tokenizer::from_str(&files.tokenizer_json.to_string()).unwrap()
    }

    fn tokens(tokenizer: &tokenizers::Tokenizer, text: &str) -> Vec<String> {
        tokenizer.encode(text, true).unwrap().get_tokens().to_vec()
    }

    #[test]
    fn smollm_splits_every_digit_and_keeps_control_tokens_whole() {
        let files = tokenizer_files_from_gguf(&tiny_gguf("smollm", false), 8192).unwrap();
        let tokenizer = load(&files);
        assert_eq!(tokens(&tokenizer, "<|im_start|>Hi w12"), ["<|im_start|>", "Hi", "\u{120}w", "1", "2"]);
        let ids = tokenizer.encode("<|im_start|>Hi w12", true).unwrap().get_ids().to_vec();
        assert_eq!(ids[0], 1);
        assert_eq!(tokenizer.decode(&ids, false).unwrap(), "<|im_start|>Hi w12");
        assert_eq!(tokenizer.decode(&ids, true).unwrap(), "Hi w12", "control tokens are special");
        // Bytes outside ASCII go through the byte alphabet and come back intact.
        let ids = tokenizer.encode("é\n", false).unwrap().get_ids().to_vec();
        assert_eq!(ids.len(), 3);
        assert_eq!(tokenizer.decode(&ids, false).unwrap(), "é\n");

        let config = &files.tokenizer_config;
        assert_eq!(config["bos_token"], "<|im_start|>");
        assert_eq!(config["eos_token"], "<|im_end|>");
        assert_eq!(config["unk_token"], "<|endoftext|>");
        assert_eq!(config["pad_token"], Value::Null);
        assert_eq!(config["add_bos_token"], false);
        assert_eq!(config["chat_template"], "{{ messages }}");
        assert_eq!(config["model_max_length"], 8192);
    }

    #[test]
    fn gpt2_merges_digits_and_llama_bpe_adds_bos() {
        // Without the Digits step the "1 2" merge applies: the SmolLM test above is not vacuous.
        let tokenizer = load(&tokenizer_files_from_gguf(&tiny_gguf("gpt-2", false), 16).unwrap());
        assert_eq!(tokens(&tokenizer, "Hi w12"), ["Hi", "\u{120}w", "12"]);

        let files = tokenizer_files_from_gguf(&tiny_gguf("llama-bpe", true), 16).unwrap();
        assert_eq!(files.tokenizer_json["model"]["ignore_merges"], true);
        let tokenizer = load(&files);
        assert_eq!(tokens(&tokenizer, "Hi w12"), ["<|im_start|>", "Hi", "\u{120}w", "12"]);
        assert_eq!(tokenizer.encode("Hi", false).unwrap().get_ids().len(), 1, "no BOS without special tokens");
    }

    #[test]
    fn rejects_what_it_cannot_rebuild() {
        let message = |gguf: &GgufFile| tokenizer_files_from_gguf(gguf, 16).unwrap_err().to_string();
        let llama = GgufWriter::new().kv("tokenizer.ggml.model", string("llama")).to_bytes();
        let llama = GgufFile::from_bytes(Path::new("sp.gguf"), llama).unwrap();
        assert!(message(&llama).starts_with("sp.gguf: tokenizer.ggml.model is `llama`"), "{}", message(&llama));
        assert!(message(&llama).contains("SentencePiece"));
        assert!(message(&tiny_gguf("qwen2", false)).contains("tokenizer.ggml.pre is `qwen2`"));

        let bad_bos = GgufWriter::new()
            .kv("tokenizer.ggml.model", string("gpt2"))
            .kv("tokenizer.ggml.tokens", strings(&["a"]))
            .kv("tokenizer.ggml.merges", strings(&[]))
            .kv("tokenizer.ggml.bos_token_id", MetaValue::U32(5))
            .to_bytes();
        let bad_bos = GgufFile::from_bytes(Path::new("b.gguf"), bad_bos).unwrap();
        assert!(message(&bad_bos).contains("bos_token_id = 5 but the vocabulary has only 1 tokens"));

        let bad_merge = GgufWriter::new()
            .kv("tokenizer.ggml.model", string("gpt2"))
            .kv("tokenizer.ggml.tokens", strings(&["a", "b"]))
            .kv("tokenizer.ggml.merges", strings(&["ab"]))
            .to_bytes();
        let bad_merge = GgufFile::from_bytes(Path::new("m.gguf"), bad_merge).unwrap();
        assert!(message(&bad_merge).contains("entry \"ab\" is not two tokens"));
    }
}
