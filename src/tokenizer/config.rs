//! The parts of a Hugging Face `tokenizer_config.json` that kiln uses: the special-token strings,
//! whether to add BOS/EOS to a raw prompt, and the chat template. Parsed from a JSON value rather
//! than a serde struct because each field comes in several shapes across transformers versions.

use std::path::Path;

use serde_json::Value;

use super::TokenizerError;

#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct TokenizerConfig {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub unk_token: Option<String>,
    pub pad_token: Option<String>,
    /// `None` when the file does not say; the tokenizer.json post-processor decides then.
    pub add_bos_token: Option<bool>,
    pub add_eos_token: Option<bool>,
    pub chat_template: Option<String>,
}

impl TokenizerConfig {
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        let text = std::fs::read_to_string(path).map_err(|e| TokenizerError::io(path, e))?;
        Self::from_json(&text, path)
    }

    /// `path` only names the file in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self, TokenizerError> {
        let root: Value =
            serde_json::from_str(text).map_err(|e| TokenizerError::invalid(path, format!("not valid JSON: {e}")))?;
        let Value::Object(fields) = &root else {
            return Err(TokenizerError::invalid(path, "expected a JSON object at the top level"));
        };
        let token = |key: &str| special_token(fields.get(key), key, path);
        let flag = |key: &str| match fields.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(TokenizerError::invalid(path, format!("`{key}` must be true or false, found {other}"))),
        };
        Ok(TokenizerConfig {
            bos_token: token("bos_token")?,
            eos_token: token("eos_token")?,
            unk_token: token("unk_token")?,
            pad_token: token("pad_token")?,
            add_bos_token: flag("add_bos_token")?,
            add_eos_token: flag("add_eos_token")?,
            chat_template: chat_template(fields.get("chat_template"), path)?,
        })
    }
}

/// A special token is written as a plain string, as null, or (older transformers) as an
/// `AddedToken` object whose `content` is the string.
fn special_token(value: Option<&Value>, key: &str, path: &Path) -> Result<Option<String>, TokenizerError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(obj)) => match obj.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(TokenizerError::invalid(path, format!("`{key}` is an object without a string `content`"))),
        },
        Some(other) => Err(TokenizerError::invalid(
            path,
            format!("`{key}` must be a string or an object with `content`, found {other}"),
        )),
    }
}

/// `chat_template` is one template string, or a list of `{name, template}` of which transformers
/// uses the one named "default" unless told otherwise; kiln has no way to be told otherwise.
fn chat_template(value: Option<&Value>, path: &Path) -> Result<Option<String>, TokenizerError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(items)) => {
            let mut names = Vec::new();
            for item in items {
                let name = item.get("name").and_then(Value::as_str);
                let template = item.get("template").and_then(Value::as_str);
                match (name, template) {
                    (Some("default"), Some(t)) => return Ok(Some(t.to_owned())),
                    (Some(n), Some(_)) => names.push(n.to_owned()),
                    _ => {
                        return Err(TokenizerError::invalid(
                            path,
                            "every entry of the `chat_template` list needs a string `name` and `template`",
                        ))
                    }
                }
            }
            Err(TokenizerError::invalid(
                path,
                format!(
                    "`chat_template` lists templates {names:?} but none named \"default\", which is the one kiln uses"
                ),
            ))
        }
        Some(other) => Err(TokenizerError::invalid(
            path,
            format!("`chat_template` must be a string or a list of named templates, found {}", kind(other)),
        )),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TokenizerConfig, TokenizerError> {
        TokenizerConfig::from_json(text, Path::new("tokenizer_config.json"))
    }

    #[test]
    fn tokens_as_strings_objects_and_null() {
        let config = parse(
            r#"{"bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": false},
                "eos_token": "</s>", "unk_token": null, "add_bos_token": true, "add_eos_token": false}"#,
        )
        .unwrap();
        assert_eq!(config.bos_token.as_deref(), Some("<s>"));
        assert_eq!(config.eos_token.as_deref(), Some("</s>"));
        assert_eq!(config.unk_token, None);
        assert_eq!(config.pad_token, None);
        assert_eq!(config.add_bos_token, Some(true));
        assert_eq!(config.add_eos_token, Some(false));
        assert_eq!(config.chat_template, None);
    }

    #[test]
    fn chat_template_list_picks_default() {
        let config = parse(
            r#"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#,
        )
        .unwrap();
        assert_eq!(config.chat_template.as_deref(), Some("D"));
    }

    #[test]
    fn chat_template_list_without_default_names_the_choices() {
        let err = parse(r#"{"chat_template": [{"name": "rag", "template": "R"}]}"#).unwrap_err();
        let message = err.to_string();
        assert!(message.starts_with("tokenizer_config.json: "), "{message}");
        assert!(message.contains("\"rag\"") && message.contains("default"), "{message}");
    }

    #[test]
    fn wrong_shapes_are_errors_naming_the_field() {
        for (text, field) in [
            (r#"{"bos_token": 1}"#, "bos_token"),
            (r#"{"eos_token": {"id": 2}}"#, "eos_token"),
            (r#"{"add_bos_token": "yes"}"#, "add_bos_token"),
            (r#"{"chat_template": 3}"#, "chat_template"),
        ] {
            let message = parse(text).unwrap_err().to_string();
            assert!(message.contains(field), "{text}: {message}");
        }
        assert!(parse("[1, 2]").unwrap_err().to_string().contains("object"));
        assert!(parse("{not json").unwrap_err().to_string().contains("not valid JSON"));
    }
}
