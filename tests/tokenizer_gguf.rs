//! GGUF tokenizers against llama.cpp on the same file. The Llama-2 tokenizer fixture written as a
//! SentencePiece GGUF (tests/tokenizer_support/llama2_gguf.rs) must tokenize 200+ strings exactly
//! as llama.cpp does (ids recorded in tests/data/llama2_gguf_tokenizer.json, see
//! tests/data/README_tokenizer.md), and the file must load and generate through the CLI.

mod tokenizer_support;

use std::path::Path;
use std::process::Command;

use kiln::model::gguf::GgufFile;
use kiln::model::gguf_tokenizer::tokenizer_files_from_gguf;
use kiln::tokenizer::Tokenizer;
use serde_json::Value;
use tokenizer_support::llama2_gguf::{llama2_sentencepiece_gguf, llama_cpp_reference};
use tokenizer_support::{llama2, read_json};

/// kiln's tokenizer rebuilt from a GGUF's metadata, loaded from a temporary directory as the
/// converter writes it.
fn tokenizer_from_gguf(path: &Path) -> Tokenizer {
    let gguf = GgufFile::open(path).unwrap();
    let files = tokenizer_files_from_gguf(&gguf, 4096).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), files.tokenizer_json.to_string()).unwrap();
    std::fs::write(dir.path().join("tokenizer_config.json"), files.tokenizer_config.to_string()).unwrap();
    Tokenizer::from_dir(dir.path()).unwrap()
}

fn ids(value: &Value) -> Vec<u32> {
    value.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
}

#[test]
fn sentencepiece_gguf_tokenizes_like_llama_cpp() {
    let tokenizer = tokenizer_from_gguf(llama2_sentencepiece_gguf());
    let reference = llama_cpp_reference();
    let cases = reference["cases"].as_array().unwrap();
    assert!(cases.len() >= 200, "the reference has {} strings", cases.len());
    let mut mismatches = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let expected = ids(&case["ids"]);
        let got = tokenizer.encode(text, false).unwrap();
        if got != expected {
            mismatches.push(format!("{text:?}: kiln {got:?}, llama.cpp {expected:?}"));
            continue;
        }
        // With special tokens on, BOS comes first (add_bos_token is true in the file), once: a
        // text that starts with `<s>` keeps its own (llama.cpp would double it, and warns).
        let with_bos = tokenizer.encode(text, true).unwrap();
        let bos_added = if expected.first() == Some(&1) { expected.clone() } else { [&[1], &expected[..]].concat() };
        assert_eq!(with_bos, bos_added, "{text:?}");
        // Decoding: llama-cpp-python's `detokenize` joins the pieces as they are; kiln, like
        // Hugging Face and llama.cpp's own `llama_detokenize`, then removes the one space the
        // tokenizer added in front. Compared where no special token is involved (those are not
        // printed, and where the space goes around them is each library's own rule).
        if !expected.iter().any(|&id| id <= 2) {
            let pieces = case["decoded"].as_str().unwrap();
            let llama_cpp = pieces.strip_prefix(' ').unwrap_or(pieces);
            assert_eq!(tokenizer.decode(&expected), llama_cpp, "decode of {text:?}");
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} strings differ:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
}

#[test]
fn sentencepiece_gguf_agrees_with_the_hugging_face_fixture() {
    // The GGUF's scores come from the fixture's merge ranks, so kiln's rebuilt tokenizer must give
    // the same ids as the original tokenizer.json on its reference texts and chat prompts.
    let tokenizer = tokenizer_from_gguf(llama2_sentencepiece_gguf());
    let reference = read_json("tests/data/llama2_tokenizer.json");
    for section in ["texts", "chat_prompts"] {
        for case in reference[section].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            assert_eq!(
                tokenizer.encode(text, true).unwrap(),
                llama2().encode(text, true).unwrap(),
                "{section}: {text:?}"
            );
        }
    }
    assert_eq!(tokenizer.eos_token_id(), Some(2));
    assert_eq!(tokenizer.bos_token(), Some("<s>"));
    assert!(tokenizer.chat_template().is_some(), "tokenizer.chat_template is read");
}

#[test]
fn sentencepiece_gguf_model_loads_and_generates() {
    let gguf = llama2_sentencepiece_gguf();
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .env("KILN_HOME", home.path())
        .env("KILN_LOG", "warn")
        .args(["generate", "--model"])
        .arg(gguf)
        .args(["--chat", "--prompt", "Hello there", "--max-tokens", "6"])
        .output()
        .expect("running kiln");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Random weights: any text, but some text, and no special token spelled out.
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.trim().is_empty() && !text.contains("</s>"), "{text:?}");
}
