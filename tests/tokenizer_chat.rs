//! Chat templates against transformers' apply_chat_template: every rendering recorded in
//! tests/data/chat_templates.json (ChatML from SmolLM2-135M-Instruct, Llama-2-chat) must match
//! byte for byte, and role-order violations must surface the template's own message.

mod tokenizer_support;

use std::path::Path;

use kiln::tokenizer::{ChatMessage, ChatTemplate, ChatTemplateTokens, Tokenizer, TokenizerError};
use serde_json::{json, Value};
use tokenizer_support::{read_json, smollm2_like_config, write_tiny_byte_level};

fn compile(template: &Value) -> ChatTemplate {
    let tokens = ChatTemplateTokens {
        bos_token: template["bos_token"].as_str().map(str::to_owned),
        eos_token: template["eos_token"].as_str().map(str::to_owned),
        ..Default::default()
    };
    ChatTemplate::new(template["template"].as_str().unwrap(), tokens, Path::new("tests/data/chat_templates.json"))
        .unwrap()
}

#[test]
fn renders_like_transformers() {
    let data = read_json("tests/data/chat_templates.json");
    let cases = data["cases"].as_array().unwrap();
    let (mut rendered, mut raised) = (0, 0);
    for case in cases {
        let template = compile(&data["templates"][case["template"].as_str().unwrap()]);
        let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
        let add_generation_prompt = case["add_generation_prompt"].as_bool().unwrap();
        let label = format!("{} / {} / add_generation_prompt={add_generation_prompt}", case["template"], case["name"]);
        let result = template.render(&messages, add_generation_prompt);
        match (&case["expected"], &case["error"]) {
            (Value::String(expected), _) => {
                assert_eq!(result.unwrap_or_else(|e| panic!("{label}: {e}")), *expected, "{label}");
                rendered += 1;
            }
            (_, Value::String(error)) => {
                match result {
                    Err(TokenizerError::ChatTemplate(message)) => assert_eq!(message, *error, "{label}"),
                    other => panic!("{label}: expected the exception {error:?}, got {other:?}"),
                }
                raised += 1;
            }
            _ => panic!("{label}: a case needs `expected` or `error`"),
        }
    }
    assert!(rendered >= 30 && raised >= 3, "{rendered} renderings, {raised} exceptions");
}

#[test]
fn from_dir_reads_the_template_and_tokenizes_chat_prompts_with_their_special_tokens() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_byte_level(dir.path(), Some(smollm2_like_config()));
    let tokenizer = Tokenizer::from_dir(dir.path()).unwrap();
    let messages = [ChatMessage::new("user", "hello")];
    let prompt = tokenizer.apply_chat_template(&messages, true).unwrap();
    assert!(prompt.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"), "{prompt}");
    assert!(prompt.ends_with("<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"), "{prompt}");
    let ids = tokenizer.encode_chat(&messages, true).unwrap();
    assert_eq!(ids.iter().filter(|&&id| id == 1).count(), 3, "<|im_start|> is one id each time: {ids:?}");
    assert_eq!(ids.iter().filter(|&&id| id == 2).count(), 2, "<|im_end|> too: {ids:?}");
    assert_eq!(tokenizer.decode(&ids), prompt.replace("<|im_start|>", "").replace("<|im_end|>", ""));
}

#[test]
fn chat_template_jinja_file_is_used_when_the_config_has_none() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_byte_level(dir.path(), Some(json!({"eos_token": "<|im_end|>"})));
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "{% for m in messages %}[{{ m.role }}]{{ m.content }}{{ eos_token }}{% endfor %}\n",
    )
    .unwrap();
    let tokenizer = Tokenizer::from_dir(dir.path()).unwrap();
    let rendered = tokenizer.apply_chat_template(&[ChatMessage::new("user", "hi")], false).unwrap();
    assert_eq!(rendered, "[user]hi<|im_end|>", "the template's trailing newline is dropped, as jinja2 does");
}

#[test]
fn no_template_and_broken_template() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_byte_level(dir.path(), None);
    let tokenizer = Tokenizer::from_dir(dir.path()).unwrap();
    assert!(tokenizer.chat_template().is_none());
    let err = tokenizer.apply_chat_template(&[ChatMessage::new("user", "hi")], true).unwrap_err();
    assert!(matches!(err, TokenizerError::NoChatTemplate), "{err}");

    write_tiny_byte_level(dir.path(), Some(json!({"chat_template": "{% for m in messages %}{{ m.content }"})));
    let err = Tokenizer::from_dir(dir.path()).unwrap_err();
    assert!(matches!(err, TokenizerError::ChatTemplateSyntax { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("tokenizer_config.json: chat_template does not compile"), "{message}");
}
