//! The Llama-2 tokenizer (SentencePiece-style BPE with byte fallback, 32000 tokens) against
//! reference ids recorded from llama-tokenizer-js (tests/data/llama2_tokenizer.json). The fixture
//! tokenizer.json is built by tools/fetch-test-data, which the first test to need it runs.

mod tokenizer_support;

use kiln::tokenizer::{ChatMessage, TokenizerError};
use serde_json::Value;
use tokenizer_support::{llama2, llama2_hf, read_json, stream};

fn ids(value: &Value) -> Vec<u32> {
    value.as_array().expect("ids is a list").iter().map(|v| v.as_u64().expect("an id") as u32).collect()
}

fn reference() -> Value {
    read_json("tests/data/llama2_tokenizer.json")
}

#[test]
fn encodes_reference_texts_with_bos() {
    let reference = reference();
    let texts = reference["texts"].as_array().unwrap();
    assert!(texts.len() >= 30, "the reference file lists {} texts", texts.len());
    for case in texts {
        let text = case["text"].as_str().unwrap();
        let expected = ids(&case["ids"]);
        assert_eq!(llama2().encode(text, true).unwrap(), expected, "encode({text:?}, true)");
        assert_eq!(llama2().encode(text, false).unwrap(), expected[1..], "encode({text:?}, false)");
    }
}

#[test]
fn decodes_reference_ids_back_to_the_text_like_hf() {
    for case in reference()["texts"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids = ids(&case["ids"]);
        assert_eq!(llama2().decode(&ids), text, "decode of {text:?}");
        assert_eq!(llama2_hf().decode(&ids, true).unwrap(), text, "HF decode of {text:?} (fixture check)");
    }
}

#[test]
fn streams_reference_ids_to_the_same_text() {
    for case in reference()["texts"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids = ids(&case["ids"]);
        let deltas = stream(&mut llama2().incremental_decoder(), &ids);
        assert_eq!(deltas.concat(), text, "streamed {text:?}: {deltas:?}");
        // Complete characters are never replaced: an emoji split over byte tokens waits for its last byte.
        assert!(deltas.iter().all(|d| !d.contains('\u{FFFD}')), "{text:?}: {deltas:?}");
    }
}

#[test]
fn byte_fallback_characters_are_held_until_complete() {
    // 🦙 is not in the vocabulary: four byte tokens <0xF0> <0x9F> <0xA6> <0x99>.
    let ids = llama2().encode("🦙!", false).unwrap();
    assert_eq!(ids.len(), 6, "▁, four bytes, !: {ids:?}");
    let deltas = stream(&mut llama2().incremental_decoder(), &ids);
    assert_eq!(deltas, ["", "", "", "", "🦙", "!", ""], "the leading ▁ is stripped, the bytes wait");
}

#[test]
fn chat_prompts_tokenize_like_hf_apply_chat_template() {
    let tokenizer = llama2();
    let templates = read_json("tests/data/chat_templates.json");
    let cases = templates["cases"].as_array().unwrap();
    let prompts = reference()["chat_prompts"].as_array().unwrap().clone();
    assert!(prompts.len() >= 5);
    for prompt in &prompts {
        let text = prompt["text"].as_str().unwrap();
        let expected = ids(&prompt["ids"]);
        assert_eq!(expected[0], 1, "the template writes <s> itself");
        assert_eq!(tokenizer.encode(text, false).unwrap(), expected, "{}", prompt["name"]);
        assert_eq!(tokenizer.encode(text, true).unwrap(), expected, "{}: BOS must not be doubled", prompt["name"]);

        // The same conversation through the fixture's tokenizer_config.json template.
        let case = cases
            .iter()
            .find(|c| {
                c["template"] == "llama2_chat" && c["name"] == prompt["name"] && c["add_generation_prompt"] == false
            })
            .unwrap();
        let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
        assert_eq!(tokenizer.apply_chat_template(&messages, false).unwrap(), text);
        assert_eq!(tokenizer.encode_chat(&messages, true).unwrap(), expected);
    }
}

#[test]
fn bad_role_order_is_the_templates_error() {
    let messages = [ChatMessage::new("user", "a"), ChatMessage::new("user", "b")];
    match llama2().encode_chat(&messages, true) {
        Err(TokenizerError::ChatTemplate(message)) => {
            assert_eq!(message, "Conversation roles must alternate user/assistant/user/assistant/...")
        }
        other => panic!("expected the template's exception, got {other:?}"),
    }
}

#[test]
fn special_tokens_and_vocabulary() {
    let t = llama2();
    assert_eq!(t.vocab_size(), 32000);
    assert_eq!((t.bos_token(), t.bos_token_id()), (Some("<s>"), Some(1)));
    assert_eq!((t.eos_token(), t.eos_token_id()), (Some("</s>"), Some(2)));
    assert!(t.adds_bos_token());
    assert!(t.is_special(0) && t.is_special(1) && t.is_special(2) && !t.is_special(3) && !t.is_special(15043));
    assert!(!t.is_special(32000), "out of range ids are not special, and do not panic");
    assert_eq!(t.token_to_id("▁Hello"), Some(15043));
    assert_eq!(t.id_to_token(13).as_deref(), Some("<0x0A>"));
    assert_eq!(t.id_to_token(32000), None);
    assert_eq!(t.decode(&[1, 15043, 2, 0, 3186, 40000]), "Hello world", "specials and unknown ids are skipped");
    assert_eq!(t.encode("<s>Hello", true).unwrap(), [1, 15043], "a spelled-out <s> is the BOS");
    assert_eq!(t.encode("", true).unwrap(), [1]);
    assert_eq!(t.encode("", false).unwrap(), Vec::<u32>::new());
}

#[test]
fn token_bytes_undo_sentencepiece_markers() {
    let t = llama2();
    assert_eq!(t.token_bytes(15043), b" Hello");
    assert_eq!(t.token_bytes(29871), b" ");
    assert_eq!(t.token_bytes(259), b"  ");
    assert_eq!(t.token_bytes(13), b"\n", "<0x0A>");
    assert_eq!(t.token_bytes(3 + 0xF0), [0xF0], "<0xF0>");
    assert_eq!(t.token_bytes(30411), "镇".as_bytes());
    assert_eq!(t.token_bytes(1), b"<s>", "special tokens keep their text; decode skips them");
    assert_eq!(t.token_bytes(99_999), b"");
    let all = t.all_token_bytes();
    assert_eq!(all.len(), 32000);
    // Every non-special token's bytes are what HF's decoder makes of it after a prefix token
    // (the prefix absorbs the Strip of the first space).
    let hf = llama2_hf();
    let prefix = 29874; // "a"
    for id in 3..32000u32 {
        let Ok(text) = hf.decode(&[prefix, id], true) else { panic!("HF cannot decode {id}") };
        let text = text.strip_prefix('a').unwrap();
        if !text.contains('\u{FFFD}') {
            assert_eq!(all[id as usize], text.as_bytes(), "token {id} {:?}", t.id_to_token(id));
        }
    }
}

#[test]
fn without_tokenizer_config_the_post_processor_gives_bos() {
    let t = kiln::tokenizer::Tokenizer::from_files(&tokenizer_support::llama2_dir().join("tokenizer.json"), None, None)
        .unwrap();
    assert_eq!((t.bos_token(), t.bos_token_id()), (Some("<s>"), Some(1)));
    assert_eq!(t.eos_token_id(), None, "the post-processor adds no EOS, and nothing else names one");
    assert!(t.adds_bos_token());
    assert_eq!(t.encode("Hello world!", true).unwrap(), [1, 15043, 3186, 29991]);
    assert!(t.chat_template().is_none());
}
