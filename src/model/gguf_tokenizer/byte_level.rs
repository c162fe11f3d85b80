//! Byte-level BPE vocabularies (`tokenizer.ggml.model == "gpt2"`): GPT-2, SmolLM, Llama 3, Qwen2,
//! Mistral-Nemo, and files that name no pre-tokenizer (llama.cpp's `default`). The merges are in
//! the file; the pre-tokenizer is only named (`tokenizer.ggml.pre`), so each supported name maps
//! to the split llama.cpp applies for it (llama-vocab.cpp), written as the Hugging Face
//! pre-tokenizer that does the same.
//! tests/tokenizer_gguf.rs compares each with llama.cpp on the same file.

use serde_json::{json, Map, Value};

use super::{GgufVocab, ModelError};
use crate::model::gguf::GgufFile;

/// GPT-2's split, which the `ByteLevel` pre-tokenizer also applies with `use_regex`; written out so
/// that its classes can be pinned to Unicode 15.1 like the others (see [`pinned_to_unicode_15_1`]).
const GPT2_SPLIT: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// The split regex of Llama 3's tokenizer (llama.cpp's `llama3` pre-type): numbers in runs of up
/// to three digits. Contractions are spelled out in ASCII cases, as llama.cpp writes them, rather
/// than as the original's `(?i:'s|...)`, whose Unicode case folding also takes `'ſ` (U+017F).
const LLAMA3_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's (llama.cpp's `qwen2` pre-type): as Llama 3's, but every digit on its own.
const QWEN2_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Mistral-Nemo's "tekken" split, as its tokenizer.json writes it (quoted in llama-vocab.cpp):
/// words cut at case changes, no English contractions, every digit on its own, `/` kept with
/// the punctuation before it. llama.cpp runs an approximation of it (any letter outside `a-z`
/// counts as upper case and any outside `A-Z` as lower case; combining marks are no letters),
/// which differs on non-ASCII words that change case (`ÉCOLE`, `getÉtat`) and on combining marks;
/// kiln keeps the model's own definition (the strings are listed in tests/tokenizer_gguf.rs).
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// llama.cpp's `default` split (the `default:` branch of `llm_tokenizer_bpe` in llama-vocab.cpp),
/// for a file whose `tokenizer.ggml.pre` is `default` or missing. Four regexes, each splitting the
/// pieces of the one before: runs of punctuation and of the ASCII symbols `$+<=>^~|` (not the
/// backtick); GPT-2's split (llama.cpp recognizes that regex and runs its hand-written GPT-2 code
/// in unicode.cpp, which ends in `\s+` as [`GPT2_SPLIT`] does); digit runs, which cuts the space off
/// ` 42`; ASCII digits in threes from the left. GPT-2's contractions never apply: the first regex
/// has already made the apostrophe a piece of its own.
const DEFAULT_SPLITS: [&str; 4] = [r"[\p{P}\$\+<=>\^~\|]+", GPT2_SPLIT, r"\p{N}+", r"[0-9]{3}"];

/// The `tokenizer.ggml.pre` names kiln rebuilds, for error messages.
const SUPPORTED_PRE: &str =
    "default (also when the key is missing), gpt-2, smollm, llama3 (llama-bpe, llama-v3), smaug-bpe, qwen2 (deepseek-r1-qwen), tekken";

/// What a `tokenizer.ggml.pre` name stands for, as llama.cpp's vocabulary loader sets it up.
pub(super) struct PreType {
    /// The Hugging Face pre-tokenizer that splits the text as llama.cpp does for this name.
    pre_tokenizer: Value,
    /// Whether a word that is already in the vocabulary is taken whole, before any merge
    /// (llama.cpp's `ignore_merges`; Llama 3's and tekken's tokenizer.json say so too).
    ignore_merges: bool,
    /// Whether BOS is added when the file has no `tokenizer.ggml.add_bos_token`: llama.cpp
    /// defaults to yes for Llama 3 and tekken, whose early GGUFs left the key out.
    pub(super) add_bos_default: bool,
}

impl PreType {
    /// The pre-type the file names, or `default` when it names none: llama.cpp falls back to its
    /// `default` split there (and warns that generation quality will suffer).
    pub(super) fn read(gguf: &GgufFile) -> Result<PreType, ModelError> {
        let pre = gguf.get_str("tokenizer.ggml.pre")?.unwrap_or("default");
        pre_type(pre).ok_or_else(|| {
            ModelError::invalid(
                gguf.path(),
                format!("tokenizer.ggml.pre is `{pre}`, which kiln cannot rebuild yet (supported: {SUPPORTED_PRE})"),
            )
        })
    }
}

/// The tokenizer.json of a byte-level BPE vocabulary.
pub(super) fn tokenizer_json(gguf: &GgufFile, vocab: &GgufVocab, pre: &PreType) -> Result<Value, ModelError> {
    let invalid = |message: String| ModelError::invalid(gguf.path(), message);
    let merges = gguf
        .get_str_array("tokenizer.ggml.merges")?
        .ok_or_else(|| invalid("metadata `tokenizer.ggml.merges` is missing (a BPE vocabulary needs it)".into()))?;

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
        "pre_tokenizer": pre.pre_tokenizer,
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
            "ignore_merges": pre.ignore_merges,
            "vocab": token_ids,
            "merges": merges,
        },
    }))
}

/// The pre-type of a `tokenizer.ggml.pre` name, or `None` for names kiln does not rebuild.
fn pre_type(pre: &str) -> Option<PreType> {
    let split = |pattern: &str| {
        let pattern = pinned_to_unicode_15_1(pattern);
        json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false})
    };
    // The split is done by the regexes; ByteLevel only maps the pieces' bytes to characters.
    let bytes = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false});
    let splits = |patterns: &[&str]| {
        let mut steps: Vec<Value> = patterns.iter().map(|p| split(p)).collect();
        steps.push(bytes.clone());
        json!({"type": "Sequence", "pretokenizers": steps})
    };
    let (pre_tokenizer, ignore_merges, add_bos_default) = match pre {
        // SmolLM's tokenizer: every digit its own piece (its `Digits` step), then GPT-2's split.
        "smollm" => (splits(&[r"\p{N}", GPT2_SPLIT]), false, false),
        "gpt-2" => (splits(&[GPT2_SPLIT]), false, false),
        // No merges ignored and no BOS by default: llama.cpp's loader sets neither for it.
        "default" => (splits(&DEFAULT_SPLITS), false, false),
        "llama-bpe" | "llama3" | "llama-v3" => (splits(&[LLAMA3_SPLIT]), true, true),
        // Smaug keeps Llama 3's split but none of its other settings in llama.cpp.
        "smaug-bpe" => (splits(&[LLAMA3_SPLIT]), false, false),
        "qwen2" | "deepseek-r1-qwen" => (splits(&[QWEN2_SPLIT]), false, false),
        "tekken" => (splits(&[TEKKEN_SPLIT]), true, true),
        _ => return None,
    };
    Some(PreType { pre_tokenizer, ignore_merges, add_bos_default })
}

/// `pattern` with every Unicode class `\p{X}` narrowed to the characters Unicode 15.1 assigns.
///
/// llama.cpp classifies characters with Unicode 15.1 tables (unicode-data.cpp); the regex crate
/// under kiln's tokenizer knows Unicode 16.0. The families here were released before 16.0
/// (September 2024), so to their tokenizers too a letter or digit new in 16.0 (U+1C89 CYRILLIC
/// CAPITAL LETTER TJE) is an unassigned character: it falls in the "anything else" class
/// `[^\s\p{L}\p{N}]` and takes a following apostrophe with it, where an unpinned class would read
/// a word and then a contraction. A nested class is valid inside a class too: `[^\s\p{L}]` becomes
/// `[^\s[\p{L}&&\p{Age=15.1}]]` (regex-crate syntax, which fancy-regex passes through).
pub(super) fn pinned_to_unicode_15_1(pattern: &str) -> String {
    let mut pinned = String::with_capacity(pattern.len() * 2);
    let mut rest = pattern;
    while let Some(start) = rest.find(r"\p{") {
        let end = start + rest[start..].find('}').expect("every \\p{ in the split patterns is closed") + 1;
        pinned.push_str(&rest[..start]);
        pinned.push('[');
        pinned.push_str(&rest[start..end]);
        pinned.push_str(r"&&\p{Age=15.1}]");
        rest = &rest[end..];
    }
    pinned.push_str(rest);
    pinned
}
