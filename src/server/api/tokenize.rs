//! vLLM's `POST /tokenize` and `POST /detokenize` requests: text or a chat to token ids, token ids
//! to text, with the served model's tokenizer. Parsed here; the ids are checked against the
//! vocabulary and the context by the route, which knows them.

use serde_json::Value;

use super::error::ApiError;
use super::fields::Fields;
use super::openai::{is_token_id, parse_messages, token_ids};
use super::valid::Message;

#[derive(Debug, Clone, PartialEq)]
pub enum TokenizeInput {
    /// Raw text; `add_special_tokens` adds the model's BOS as a completions prompt gets it.
    Prompt { text: String, add_special_tokens: bool },
    /// A conversation rendered through the chat template, as a chat request's prompt is.
    Chat { messages: Vec<Message>, add_generation_prompt: bool, add_special_tokens: bool },
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenizeRequest {
    pub model: Option<String>,
    pub input: TokenizeInput,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DetokenizeRequest {
    pub model: Option<String>,
    pub tokens: Vec<u32>,
}

/// `{"model"?, "prompt", "add_special_tokens"?}` or `{"model"?, "messages",
/// "add_generation_prompt"?, "add_special_tokens"?}`, with vLLM's defaults.
pub fn parse_tokenize(body: &[u8]) -> Result<TokenizeRequest, ApiError> {
    let f = Fields::parse(body)?;
    let model = f.string("model")?;
    let input = match (f.get("prompt"), f.get("messages")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_param("messages", "Give either `prompt` or `messages`, not both."))
        }
        (Some(Value::String(text)), None) => TokenizeInput::Prompt {
            text: text.clone(),
            add_special_tokens: f.bool("add_special_tokens")?.unwrap_or(true),
        },
        (Some(_), None) => return Err(ApiError::invalid_param("prompt", "`prompt` must be a string.")),
        (None, Some(_)) => TokenizeInput::Chat {
            messages: parse_messages(&f)?,
            add_generation_prompt: f.bool("add_generation_prompt")?.unwrap_or(true),
            // The chat template writes any BOS itself.
            add_special_tokens: f.bool("add_special_tokens")?.unwrap_or(false),
        },
        (None, None) => {
            return Err(ApiError::invalid_param("prompt", "`prompt` (text) or `messages` (a chat) is required."))
        }
    };
    Ok(TokenizeRequest { model, input })
}

/// `{"model"?, "tokens": [ids]}`.
pub fn parse_detokenize(body: &[u8]) -> Result<DetokenizeRequest, ApiError> {
    let f = Fields::parse(body)?;
    let model = f.string("model")?;
    let invalid = || ApiError::invalid_param("tokens", "`tokens` must be a list of token ids (non-negative integers).");
    let tokens = match f.get("tokens") {
        None => return Err(ApiError::invalid_param("tokens", "`tokens` is required.")),
        Some(Value::Array(items)) if items.iter().all(is_token_id) => token_ids(items).ok_or_else(invalid)?,
        Some(_) => return Err(invalid()),
    };
    Ok(DetokenizeRequest { model, tokens })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenize_takes_a_prompt_or_a_chat_with_vllms_defaults() {
        let r = parse_tokenize(br#"{"model":"m","prompt":"Hello"}"#).unwrap();
        assert_eq!(r.model.as_deref(), Some("m"));
        assert_eq!(r.input, TokenizeInput::Prompt { text: "Hello".into(), add_special_tokens: true });
        let r = parse_tokenize(br#"{"prompt":"Hello","add_special_tokens":false}"#).unwrap();
        assert_eq!(r.input, TokenizeInput::Prompt { text: "Hello".into(), add_special_tokens: false });
        let r =
            parse_tokenize(br#"{"messages":[{"role":"user","content":"Hi"}],"add_generation_prompt":false}"#).unwrap();
        assert_eq!(
            r.input,
            TokenizeInput::Chat {
                messages: vec![Message::new("user", "Hi")],
                add_generation_prompt: false,
                add_special_tokens: false,
            }
        );
    }

    #[test]
    fn bad_requests_name_the_field() {
        for (body, param) in [
            (r#"{}"#, "prompt"),
            (r#"{"prompt":5}"#, "prompt"),
            (r#"{"prompt":"a","messages":[{"role":"user","content":"b"}]}"#, "messages"),
            (r#"{"messages":[]}"#, "messages"),
            (r#"{"messages":[{"role":"robot","content":"b"}]}"#, "messages[0].role"),
            (r#"{"prompt":"a","add_special_tokens":"yes"}"#, "add_special_tokens"),
            (r#"{"prompt":"a","model":7}"#, "model"),
        ] {
            let error = parse_tokenize(body.as_bytes()).unwrap_err();
            assert_eq!((error.status, error.param.as_deref()), (400, Some(param)), "{body}");
        }
        for body in [
            r#"{}"#,
            r#"{"tokens":"1 2"}"#,
            r#"{"tokens":[1,-2]}"#,
            r#"{"tokens":[1.5]}"#,
            r#"{"tokens":[4294967296]}"#,
        ] {
            let error = parse_detokenize(body.as_bytes()).unwrap_err();
            assert_eq!((error.status, error.param.as_deref()), (400, Some("tokens")), "{body}");
        }
        assert_eq!(parse_detokenize(br#"{"tokens":[1,2.0,3]}"#).unwrap().tokens, vec![1, 2, 3]);
        assert_eq!(parse_detokenize(br#"{"tokens":[]}"#).unwrap().tokens, Vec::<u32>::new());
    }
}
