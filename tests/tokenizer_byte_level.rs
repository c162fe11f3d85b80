//! Loading and encoding with a tiny hand-written byte-level BPE tokenizer (SmolLM2's layout: GPT-2
//! byte table, ByteLevel pre-tokenizer and decoder, ChatML special tokens, no BOS added), and the
//! load-time errors for broken model files.

mod tokenizer_support;

use kiln::tokenizer::{Tokenizer, TokenizerError};
use serde_json::json;
use tokenizer_support::{byte_level_string, smollm2_like_config, write_tiny_byte_level};

fn load(config: Option<serde_json::Value>) -> (tempfile::TempDir, Result<Tokenizer, TokenizerError>) {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_byte_level(dir.path(), config);
    let tokenizer = Tokenizer::from_dir(dir.path());
    (dir, tokenizer)
}

#[test]
fn encodes_with_merges_and_special_tokens() {
    let (_dir, t) = load(Some(smollm2_like_config()));
    let t = t.unwrap();
    let id = |s: &str| t.token_to_id(s).unwrap_or_else(|| panic!("{s:?} in vocab"));
    assert_eq!(t.encode("hello the", false).unwrap(), [id("hello"), id("Ġthe")]);
    assert_eq!(
        t.encode("你🦙", false).unwrap(),
        [id(&byte_level_string("你".as_bytes())), id(&byte_level_string("🦙".as_bytes()))]
    );
    // Special tokens inside text are one id each; nothing is added around the text by this model.
    assert_eq!(t.encode("<|im_start|>hello<|im_end|>", true).unwrap(), [1, id("hello"), 2]);
    assert!(!t.adds_bos_token());
    assert_eq!((t.bos_token_id(), t.eos_token_id()), (Some(1), Some(2)));
    assert!(t.is_special(0) && t.is_special(1) && t.is_special(2) && !t.is_special(3));
    assert_eq!(t.vocab_size(), 3 + 256 + 12);
}

#[test]
fn truncation_in_tokenizer_json_is_ignored() {
    let (_dir, t) = load(None);
    let text = "a b c d e f g h i j";
    assert_eq!(t.unwrap().encode(text, false).unwrap().len(), text.len(), "one byte token per character, none dropped");
}

#[test]
fn token_bytes_map_back_through_the_byte_table() {
    let (_dir, t) = load(None);
    let t = t.unwrap();
    for b in 0..=255u8 {
        let id = t.token_to_id(&byte_level_string(&[b])).unwrap();
        assert_eq!(t.token_bytes(id), [b], "byte {b:#04x}");
    }
    assert_eq!(t.token_bytes(t.token_to_id("Ġthe").unwrap()), b" the");
    assert_eq!(t.token_bytes(t.token_to_id(&byte_level_string(&[0xF0, 0x9F, 0xA6])).unwrap()), [0xF0, 0x9F, 0xA6]);
    assert_eq!(t.token_bytes(1), b"<|im_start|>");
}

#[test]
fn bos_is_added_once_when_the_config_asks() {
    let mut config = smollm2_like_config();
    config["add_bos_token"] = json!(true);
    let (_dir, t) = load(Some(config));
    let t = t.unwrap();
    let hello = t.token_to_id("hello").unwrap();
    assert_eq!(t.encode("hello", true).unwrap(), [1, hello]);
    assert_eq!(t.encode("<|im_start|>hello", true).unwrap(), [1, hello], "never a doubled BOS");
    assert_eq!(t.encode("hello", false).unwrap(), [hello]);
}

#[test]
fn eos_is_appended_once_when_the_config_asks() {
    let mut config = smollm2_like_config();
    config["add_eos_token"] = json!(true);
    let (_dir, t) = load(Some(config));
    let t = t.unwrap();
    let hello = t.token_to_id("hello").unwrap();
    assert_eq!(t.encode("hello", true).unwrap(), [hello, 2]);
    assert_eq!(t.encode("hello<|im_end|>", true).unwrap(), [hello, 2]);
}

#[test]
fn broken_files_are_errors_that_name_them() {
    let (dir, t) = load(Some(json!({"bos_token": "<nope>"})));
    let message = t.unwrap_err().to_string();
    assert!(message.contains("tokenizer_config.json") && message.contains("bos_token `<nope>`"), "{message}");

    write_tiny_byte_level(dir.path(), Some(json!({"add_bos_token": true})));
    let message = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(message.contains("add_bos_token is true but no bos_token"), "{message}");

    std::fs::write(dir.path().join("tokenizer_config.json"), "{ not json").unwrap();
    let message = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(message.contains("tokenizer_config.json: not valid JSON"), "{message}");

    std::fs::remove_file(dir.path().join("tokenizer_config.json")).unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), r#"{"model": {"type": "Nope"}}"#).unwrap();
    let message = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(message.contains("tokenizer.json: not a tokenizer"), "{message}");

    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let err = Tokenizer::from_dir(dir.path()).unwrap_err();
    assert!(matches!(err, TokenizerError::Io { .. }) && err.to_string().contains("tokenizer.json"), "{err}");
}

#[test]
fn unsupported_decoder_is_a_load_error() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_byte_level(dir.path(), None);
    let path = dir.path().join("tokenizer.json");
    let mut tokenizer: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    tokenizer["decoder"] = json!({"type": "WordPiece", "prefix": "##", "cleanup": true});
    std::fs::write(&path, tokenizer.to_string()).unwrap();
    let message = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(message.contains("tokenizer.json") && message.contains("WordPiece"), "{message}");
}
