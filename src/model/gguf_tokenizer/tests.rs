//! Unit tests of the rebuilt tokenizers on tiny vocabularies; tests/tokenizer_gguf.rs compares
//! real-size ones with llama.cpp.

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

/// A tiny byte-level vocabulary: three control tokens, the 256 bytes, then merged tokens, with
/// `tokenizer.ggml.pre` set to `pre`. `add_bos: None` leaves `tokenizer.ggml.add_bos_token` out.
fn tiny_gguf(pre: &str, add_bos: Option<bool>) -> GgufFile {
    let bytes = tiny_gguf_writer(add_bos).kv("tokenizer.ggml.pre", string(pre)).to_bytes();
    GgufFile::from_bytes(Path::new("tiny.gguf"), bytes).unwrap()
}

/// [`tiny_gguf`] without `tokenizer.ggml.pre`.
fn tiny_gguf_writer(add_bos: Option<bool>) -> GgufWriter {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from).to_vec();
    tokens.extend(byte_alphabet().iter().map(|c| c.to_string()));
    tokens.extend(["Hi", "\u{120}w", "12"].map(String::from));
    let types: Vec<MetaValue> =
        (0..tokens.len()).map(|i| MetaValue::I32(if i < 3 { TOKEN_TYPE_CONTROL } else { 1 })).collect();
    let token_refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let mut writer = GgufWriter::new()
        .kv("tokenizer.ggml.model", string("gpt2"))
        .kv("tokenizer.ggml.tokens", strings(&token_refs))
        .kv("tokenizer.ggml.token_type", MetaValue::Array(types))
        .kv("tokenizer.ggml.merges", strings(&["H i", "\u{120} w", "1 2"]))
        .kv("tokenizer.ggml.bos_token_id", MetaValue::U32(1))
        .kv("tokenizer.ggml.eos_token_id", MetaValue::U32(2))
        .kv("tokenizer.ggml.unknown_token_id", MetaValue::U32(0))
        .kv("tokenizer.chat_template", string("{{ messages }}"));
    if let Some(add_bos) = add_bos {
        writer = writer.kv("tokenizer.ggml.add_bos_token", MetaValue::Bool(add_bos));
    }
    writer
}

fn load(files: &TokenizerFiles) -> tokenizers::Tokenizer {
    tokenizers::Tokenizer::from_str(&files.tokenizer_json.to_string()).unwrap()
}

fn tokens(tokenizer: &tokenizers::Tokenizer, text: &str) -> Vec<String> {
    tokenizer.encode(text, true).unwrap().get_tokens().to_vec()
}

/// The pieces the pre-tokenizer cuts `text` into, in the byte alphabet.
fn pieces(tokenizer: &tokenizers::Tokenizer, text: &str) -> Vec<String> {
    let mut pieces = tokenizers::PreTokenizedString::from(text);
    tokenizers::PreTokenizer::pre_tokenize(tokenizer.get_pre_tokenizer().unwrap(), &mut pieces).unwrap();
    pieces
        .get_splits(tokenizers::OffsetReferential::Original, tokenizers::OffsetType::Char)
        .into_iter()
        .map(|(piece, _, _)| piece.to_string())
        .collect()
}

#[test]
fn smollm_splits_every_digit_and_keeps_control_tokens_whole() {
    let files = tokenizer_files_from_gguf(&tiny_gguf("smollm", Some(false)), 8192).unwrap();
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
    // Without the digit split the "1 2" merge applies: the SmolLM test above is not vacuous.
    let tokenizer = load(&tokenizer_files_from_gguf(&tiny_gguf("gpt-2", Some(false)), 16).unwrap());
    assert_eq!(tokens(&tokenizer, "Hi w12"), ["Hi", "\u{120}w", "12"]);

    let files = tokenizer_files_from_gguf(&tiny_gguf("llama-bpe", Some(true)), 16).unwrap();
    assert_eq!(files.tokenizer_json["model"]["ignore_merges"], true);
    let tokenizer = load(&files);
    assert_eq!(tokens(&tokenizer, "Hi w12"), ["<|im_start|>", "Hi", "\u{120}w", "12"]);
    assert_eq!(tokenizer.encode("Hi", false).unwrap().get_ids().len(), 1, "no BOS without special tokens");
}

#[test]
fn rejects_what_it_cannot_rebuild() {
    let message = |gguf: &GgufFile| tokenizer_files_from_gguf(gguf, 16).unwrap_err().to_string();
    let bert = GgufWriter::new().kv("tokenizer.ggml.model", string("bert")).to_bytes();
    let bert = GgufFile::from_bytes(Path::new("wp.gguf"), bert).unwrap();
    assert!(message(&bert).starts_with("wp.gguf: tokenizer.ggml.model is `bert`"), "{}", message(&bert));
    assert!(message(&bert).contains("SentencePiece (`llama`)"));
    let qwen35 = message(&tiny_gguf("qwen35", Some(false)));
    assert!(qwen35.contains("tokenizer.ggml.pre is `qwen35`, which kiln cannot rebuild yet (supported: "), "{qwen35}");

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

/// A tiny SentencePiece vocabulary: `<unk>`, `<s>`, `</s>`, the 256 byte tokens, then `pieces`
/// with their scores.
fn tiny_sentencepiece(pieces: &[(&str, f32)], extra: &[(&str, MetaValue)]) -> GgufFile {
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
    let mut types = vec![2, 3, 3];
    let mut scores = vec![0.0; 3];
    tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    types.extend([6; 256]);
    scores.extend([0.0; 256]);
    for &(piece, score) in pieces {
        tokens.push(piece.to_string());
        types.push(1);
        scores.push(score);
    }
    let token_refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let mut writer = GgufWriter::new()
        .kv("tokenizer.ggml.model", string("llama"))
        .kv("tokenizer.ggml.tokens", strings(&token_refs))
        .kv("tokenizer.ggml.token_type", MetaValue::Array(types.into_iter().map(MetaValue::I32).collect()))
        .kv("tokenizer.ggml.scores", MetaValue::Array(scores.into_iter().map(MetaValue::F32).collect()));
    for (key, value) in extra {
        writer = writer.kv(key, value.clone());
    }
    GgufFile::from_bytes(Path::new("sp.gguf"), writer.to_bytes()).unwrap()
}

/// The id of `piece` in a [`tiny_sentencepiece`] vocabulary built from `pieces`.
fn piece_id(pieces: &[(&str, f32)], piece: &str) -> u32 {
    259 + pieces.iter().position(|(p, _)| *p == piece).unwrap() as u32
}

#[test]
fn sentencepiece_joins_the_highest_scoring_pair_first() {
    // "▁ab" is no token: which of "▁a" and "ab" forms first decides the split.
    for (a_first, expected) in [(true, ["▁a", "b"]), (false, ["▁", "ab"])] {
        let (high, low) = (-1.0, -2.0);
        let pieces = [
            ("▁", -10.0),
            ("a", -11.0),
            ("b", -12.0),
            ("▁a", if a_first { high } else { low }),
            ("ab", if a_first { low } else { high }),
        ];
        let tokenizer = load(&tokenizer_files_from_gguf(&tiny_sentencepiece(&pieces, &[]), 64).unwrap());
        let encoding = tokenizer.encode("ab", false).unwrap();
        assert_eq!(encoding.get_tokens(), expected, "▁a scored higher: {a_first}");
        assert_eq!(encoding.get_ids(), expected.map(|p| piece_id(&pieces, p)));
    }
}

#[test]
fn sentencepiece_spaces_bytes_and_special_tokens_follow_llama_cpp() {
    let pieces = [("▁", -1.0), ("a", -2.0), ("▁a", -3.0), ("▁▁", -4.0)];
    let files = tokenizer_files_from_gguf(&tiny_sentencepiece(&pieces, &[]), 64).unwrap();
    let tokenizer = load(&files);
    // BOS by default (add_bos_token absent means true for SentencePiece, as in llama.cpp).
    assert_eq!(tokens(&tokenizer, "a"), ["<s>", "▁a"]);
    // Spaces become ▁ and the leading ▁ is added once per piece of text.
    assert_eq!(tokens(&tokenizer, "  a"), ["<s>", "▁▁", "▁a"]);
    // é is no token: its UTF-8 bytes.
    assert_eq!(tokens(&tokenizer, "é"), ["<s>", "▁", "<0xC3>", "<0xA9>"]);
    // Special-token text is the special token, and the text after it gets its own leading ▁.
    assert_eq!(tokens(&tokenizer, "a</s>a"), ["<s>", "▁a", "</s>", "▁a"]);
    let ids = tokenizer.encode("a é", true).unwrap().get_ids().to_vec();
    assert_eq!(tokenizer.decode(&ids, true).unwrap(), "a é", "the added space is stripped, bytes are fused");

    let config = &files.tokenizer_config;
    assert_eq!((config["bos_token"].as_str(), config["eos_token"].as_str()), (Some("<s>"), Some("</s>")));
    assert_eq!(config["unk_token"], "<unk>");
    assert_eq!(config["add_bos_token"], true);

    // Without the space prefix and without BOS.
    let extra = [
        ("tokenizer.ggml.add_space_prefix", MetaValue::Bool(false)),
        ("tokenizer.ggml.add_bos_token", MetaValue::Bool(false)),
    ];
    let tokenizer = load(&tokenizer_files_from_gguf(&tiny_sentencepiece(&pieces, &extra), 64).unwrap());
    assert_eq!(tokens(&tokenizer, "a a"), ["a", "▁a"]);
    assert_eq!(tokenizer.decode(tokenizer.encode(" a", true).unwrap().get_ids(), true).unwrap(), " a");
}

#[test]
fn sentencepiece_rejects_what_it_cannot_rebuild() {
    let message = |gguf: &GgufFile| tokenizer_files_from_gguf(gguf, 16).unwrap_err().to_string();
    let no_scores = GgufWriter::new()
        .kv("tokenizer.ggml.model", string("llama"))
        .kv("tokenizer.ggml.tokens", strings(&["<unk>", "<s>", "</s>"]))
        .to_bytes();
    let no_scores = GgufFile::from_bytes(Path::new("sp.gguf"), no_scores).unwrap();
    assert!(message(&no_scores).contains("`tokenizer.ggml.scores` is missing"), "{}", message(&no_scores));

    let no_bytes = GgufWriter::new()
        .kv("tokenizer.ggml.model", string("llama"))
        .kv("tokenizer.ggml.tokens", strings(&["<unk>", "<s>", "</s>"]))
        .kv("tokenizer.ggml.scores", MetaValue::Array(vec![MetaValue::F32(0.0); 3]))
        .to_bytes();
    let no_bytes = GgufFile::from_bytes(Path::new("sp.gguf"), no_bytes).unwrap();
    assert!(message(&no_bytes).contains("no byte token <0x00>"), "{}", message(&no_bytes));

    let suffix = tiny_sentencepiece(&[], &[("tokenizer.ggml.treat_whitespace_as_suffix", MetaValue::Bool(true))]);
    assert!(message(&suffix).contains("treat_whitespace_as_suffix"));
}

#[test]
fn qwen2_and_tekken_split_digits_one_by_one() {
    let tokenizer = load(&tokenizer_files_from_gguf(&tiny_gguf("qwen2", Some(false)), 16).unwrap());
    assert_eq!(tokens(&tokenizer, "Hi w12"), ["Hi", "\u{120}w", "1", "2"]);
    let files = tokenizer_files_from_gguf(&tiny_gguf("tekken", Some(false)), 16).unwrap();
    assert_eq!(files.tokenizer_json["model"]["ignore_merges"], true);
    assert_eq!(tokens(&load(&files), "Hi w12"), ["Hi", "\u{120}w", "1", "2"]);
    // Llama 3 keeps runs of up to three digits: the "1 2" merge applies.
    assert_eq!(
        tokens(&load(&tokenizer_files_from_gguf(&tiny_gguf("llama3", Some(false)), 16).unwrap()), "Hi w12"),
        ["Hi", "\u{120}w", "12"]
    );
}

#[test]
fn llama3_and_tekken_add_bos_unless_the_file_says_otherwise() {
    // llama.cpp's defaults when tokenizer.ggml.add_bos_token is missing (llama-vocab.cpp).
    for (pre, default) in [
        ("llama-bpe", true),
        ("llama3", true),
        ("tekken", true),
        ("qwen2", false),
        ("smaug-bpe", false),
        ("gpt-2", false),
        ("default", false),
    ] {
        let files = tokenizer_files_from_gguf(&tiny_gguf(pre, None), 16).unwrap();
        assert_eq!(files.tokenizer_config["add_bos_token"], default, "{pre}");
        let tokenizer = load(&files);
        let with_bos = tokens(&tokenizer, "Hi").first().map(String::as_str) == Some("<|im_start|>");
        assert_eq!(with_bos, default, "{pre}: the post-processor adds BOS as the config says");
        for add_bos in [false, true] {
            let files = tokenizer_files_from_gguf(&tiny_gguf(pre, Some(add_bos)), 16).unwrap();
            assert_eq!(files.tokenizer_config["add_bos_token"], add_bos, "{pre}: the file's key wins");
        }
    }
    // Smaug shares Llama 3's split but not its `ignore_merges`.
    let smaug = tokenizer_files_from_gguf(&tiny_gguf("smaug-bpe", None), 16).unwrap();
    assert_eq!(smaug.tokenizer_json["model"]["ignore_merges"], false);
}

#[test]
fn split_classes_are_pinned_to_unicode_15_1() {
    assert_eq!(
        byte_level::pinned_to_unicode_15_1(r"\p{L}+| ?[^\s\p{L}\p{N}]+"),
        r"[\p{L}&&\p{Age=15.1}]+| ?[^\s[\p{L}&&\p{Age=15.1}][\p{N}&&\p{Age=15.1}]]+"
    );
    // U+1C89 CYRILLIC CAPITAL LETTER TJE is new in Unicode 16.0: to llama.cpp it is an unassigned
    // character, which takes the apostrophe with it, so `'ve` is no contraction.
    for pre in ["gpt-2", "smollm", "llama-bpe", "qwen2", "tekken"] {
        let tokenizer = load(&tokenizer_files_from_gguf(&tiny_gguf(pre, Some(false)), 16).unwrap());
        assert_eq!(
            pieces(&tokenizer, "\u{1c89}'ve"),
            ["\u{e1}\u{b2}\u{12b}'", "ve"],
            "{pre}: the bytes of U+1C89 and the apostrophe, then `ve`"
        );
    }
}

#[test]
fn a_file_without_a_pre_tokenizer_gets_llama_cpps_default_split() {
    let unnamed = GgufFile::from_bytes(Path::new("tiny.gguf"), tiny_gguf_writer(None).to_bytes()).unwrap();
    for (what, gguf) in [("no tokenizer.ggml.pre", unnamed), ("`default`", tiny_gguf("default", None))] {
        let files = tokenizer_files_from_gguf(&gguf, 16).unwrap();
        assert_eq!(files.tokenizer_config["add_bos_token"], false, "{what}");
        assert_eq!(files.tokenizer_json["model"]["ignore_merges"], false, "{what}");
        // Punctuation and `+=` first (so `'s` is no contraction), then GPT-2's split, then the
        // space cut off the digits, then ASCII digits in threes. GPT-2's split alone would give
        // `it`, `'s`, ` `, ` 1234`, ` x`, `+=`, `y`, ` 42`.
        let tokenizer = load(&files);
        assert_eq!(
            pieces(&tokenizer, "it's  1234 x+=y 42"),
            ["it", "'", "s", "\u{120}", "\u{120}", "123", "4", "\u{120}x", "+=", "y", "\u{120}", "42"],
            "{what}"
        );
    }
}
