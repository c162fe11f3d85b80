//! SmolLM2's byte-level BPE vocabulary (tokens, token types and merges of the default model's GGUF)
//! written as vocab-only `gpt2` GGUFs, one per `tokenizer.ggml.pre` name. The pre-tokenizer's split
//! does not depend on the vocabulary, so llama.cpp running its `llama-bpe`, `qwen2` or `tekken`
//! split over this vocabulary is a reference for kiln's rebuild of the same name; the ids it gave
//! are in tests/data/byte_level_gguf_tokenizer.json
//! (tools/reference/make_byte_level_gguf_reference.py).
//!
//! Appended to the vocabulary:
//! - two user-defined tokens, `<think>` and `</think>` (as Qwen's GGUFs carry them), so added
//!   tokens that are not control tokens are compared too;
//! - a few whole words that no merge forms. For SmolLM2's own tokens `ignore_merges` (take a word
//!   that is in the vocabulary whole) changes nothing, as BPE forms each of them anyway; with these,
//!   a pre-type that ignores merges gives the word's id exactly when its split keeps the word in one
//!   piece, which makes a split difference visible in the ids;
//! - for the `default` split only, two digit merges ([`DEFAULT_SPLIT_MERGES`]).
//!
//! The pre-types `llama-bpe` and `smaug-bpe` differ only in `ignore_merges` (and the BOS default).
//! `default` is also what llama.cpp uses for the file without a pre-tokenizer name ([`NO_PRE`]).
//! `tokenizer.ggml.add_bos_token` is left out on purpose: whether BOS is added then depends on the
//! pre-type (llama.cpp adds it for Llama 3 and tekken), which the comparison checks as well.

use std::path::PathBuf;
use std::sync::OnceLock;

use kiln::model::gguf::writer::{string, strings, GgufWriter};
use kiln::model::gguf::{GgufFile, MetaValue};
use serde_json::Value;

use super::{byte_level_string, read_json, repo_root};

/// The `tokenizer.ggml.pre` names compared with llama.cpp, and [`NO_PRE`].
pub const PRE_TYPES: [&str; 8] = ["llama-bpe", "qwen2", "tekken", "gpt-2", "smollm", "smaug-bpe", "default", NO_PRE];
/// Not a name: its file leaves `tokenizer.ggml.pre` out, for which llama.cpp uses `default`.
pub const NO_PRE: &str = "(none)";

/// llama.cpp's token types (`LLAMA_TOKEN_TYPE_*`) of the appended tokens.
const USER_DEFINED: i32 = 4;
const NORMAL: i32 = 1;
pub const USER_DEFINED_TOKENS: [&str; 2] = ["<think>", "</think>"];
/// Whole words appended as normal tokens, without merges: `ÉCOLE` and `getÉtat` are split
/// differently by Mistral-Nemo's tekken regex and llama.cpp's approximation of it; `naïve` is one
/// piece for every split that `ignore_merges` applies to.
pub const WHOLE_WORD_TOKENS: [&str; 5] = ["ÉCOLE", " ÉCOLE", "getÉtat", "naïve", " naïve"];

/// Merges appended for the two files that get llama.cpp's `default` split (`default` and
/// [`NO_PRE`]), with the tokens they form. SmolLM2's merges never join two digits or a space and a
/// digit (its own split cuts every digit apart), so without these the split's last two steps
/// (the space cut off ` 42`; ASCII digits in threes, `1234` as `123` + `4`) would not show in the
/// ids. The other files keep SmolLM2's merges: for `gpt-2`, whose split keeps ` 1234` whole, these
/// would change the ids.
const DEFAULT_SPLIT_MERGES: [(&str, &str); 2] = [(" ", "4"), ("3", "4")];

/// tests/data/cache/byte_level/<pre>.gguf, rewritten whenever its bytes would change.
pub fn byte_level_gguf(pre: &str) -> PathBuf {
    let dir = repo_root().join("tests/data/cache/byte_level");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{pre}.gguf"));
    let bytes = byte_level_gguf_bytes(pre);
    if std::fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
        // Test binaries may write it at the same time: each writes its own file and renames.
        let tmp = dir.join(format!(".{pre}.{}.gguf", std::process::id()));
        std::fs::write(&tmp, &bytes).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }
    path
}

/// The default model's GGUF (pulled into $KILN_HOME when missing, checksum-verified).
fn smollm2_gguf() -> &'static GgufFile {
    static GGUF: OnceLock<GgufFile> = OnceLock::new();
    GGUF.get_or_init(|| {
        let home = kiln::model::pull::kiln_home().unwrap();
        let path = kiln::model::pull::pull_default_gguf_into(&home).expect("the default GGUF can be pulled");
        GgufFile::open(&path).unwrap()
    })
}

fn byte_level_gguf_bytes(pre: &str) -> Vec<u8> {
    let source = smollm2_gguf();
    let mut tokens = source.get_str_array("tokenizer.ggml.tokens").unwrap().unwrap();
    let mut types = source.get_i32_array("tokenizer.ggml.token_type").unwrap().unwrap();
    let mut merges = source.get_str_array("tokenizer.ggml.merges").unwrap().unwrap();
    let mut normal_tokens: Vec<String> = WHOLE_WORD_TOKENS.iter().map(|w| byte_level_string(w.as_bytes())).collect();
    let mut digit_merges = Vec::new();
    if pre == "default" || pre == NO_PRE {
        for (left, right) in DEFAULT_SPLIT_MERGES {
            let (left, right) = (byte_level_string(left.as_bytes()), byte_level_string(right.as_bytes()));
            normal_tokens.push(format!("{left}{right}"));
            digit_merges.push(format!("{left} {right}"));
        }
    }
    merges.extend(digit_merges.iter().map(String::as_str));
    let appended = USER_DEFINED_TOKENS
        .iter()
        .map(|&t| (t, USER_DEFINED))
        .chain(normal_tokens.iter().map(|w| (w.as_str(), NORMAL)));
    for (token, token_type) in appended {
        assert!(!tokens.contains(&token), "{token} is already in SmolLM2's vocabulary");
        tokens.push(token);
        types.push(token_type);
    }
    let id = |key: &str| MetaValue::U32(source.get_u32(key).unwrap().unwrap());
    // No tensors and no hyperparameters: llama.cpp's vocab-only load needs only the architecture.
    let mut writer = GgufWriter::new()
        .kv("general.architecture", string("llama"))
        .kv("general.name", string(&format!("kiln byte-level fixture ({pre})")))
        .kv("tokenizer.ggml.model", string("gpt2"));
    if pre != NO_PRE {
        writer = writer.kv("tokenizer.ggml.pre", string(pre));
    }
    writer
        .kv("tokenizer.ggml.tokens", strings(&tokens))
        .kv("tokenizer.ggml.token_type", MetaValue::Array(types.into_iter().map(MetaValue::I32).collect()))
        .kv("tokenizer.ggml.merges", strings(&merges))
        .kv("tokenizer.ggml.bos_token_id", id("tokenizer.ggml.bos_token_id"))
        .kv("tokenizer.ggml.eos_token_id", id("tokenizer.ggml.eos_token_id"))
        .kv("tokenizer.ggml.unknown_token_id", id("tokenizer.ggml.unknown_token_id"))
        .kv("tokenizer.ggml.padding_token_id", id("tokenizer.ggml.padding_token_id"))
        .to_bytes()
}

/// The llama.cpp reference for the fixtures: `pre_types`, `cases` of `{text, ids: {pre: [..]},
/// decoded, decoded_special}` and `with_special` (see tests/data/README_tokenizer.md).
pub fn byte_level_reference() -> Value {
    read_json("tests/data/byte_level_gguf_tokenizer.json")
}
