//! Chat templates: render a model's Jinja `chat_template` the way transformers' `apply_chat_template`
//! does, with minijinja configured like HF's sandboxed jinja2 environment (trim_blocks,
//! lstrip_blocks, loop controls, Python string methods, `raise_exception`, HF's `tojson`). Where
//! minijinja and jinja2/Python still differ, `pyjinja` has the Python behaviour.

use std::path::Path;

use minijinja::value::Value;
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

use super::pyjinja;
use super::tojson::tojson;
use super::TokenizerError;

const TEMPLATE_NAME: &str = "chat_template";

/// One message of a conversation, as templates see it (`message['role']`, `message['content']`,
/// and for tool use `message['tool_calls']` and `message['tool_call_id']`, present only when set,
/// as templates test `'tool_calls' in message`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// An assistant turn's calls, as transformers passes them: `{"id", "type": "function",
    /// "function": {"name", "arguments": {...}}}` with the arguments as an object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<serde_json::Value>,
    /// A tool result's call id (role `tool`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into(), tool_calls: Vec::new(), tool_call_id: None }
    }
}

/// The special-token strings HF passes to every template (from its special_tokens_map); a token
/// the model does not define is left undefined, as in HF.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChatTemplateTokens {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub unk_token: Option<String>,
    pub pad_token: Option<String>,
}

/// A compiled chat template, ready to render conversations.
pub struct ChatTemplate {
    env: Environment<'static>,
    tokens: ChatTemplateTokens,
    source: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("source", &self.source).finish_non_exhaustive()
    }
}

/// Marks an error as coming from the template's own `raise_exception`, so it can be told apart
/// from a template that is broken.
#[derive(Debug)]
struct RaisedException(String);

impl std::fmt::Display for RaisedException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

fn raise_exception(message: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(RaisedException(message)))
}

impl ChatTemplate {
    /// Compiles `source`; `origin` names the file it came from in a syntax error.
    pub fn new(source: &str, tokens: ChatTemplateTokens, origin: &Path) -> Result<Self, TokenizerError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // jinja2's default, which HF keeps: one trailing newline of the template is dropped.
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(pyjinja::unknown_method_callback);
        env.add_filter("title", pyjinja::jinja2_title);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, pyjinja::without_generation_tags(source))
            .map_err(|e| TokenizerError::ChatTemplateSyntax { path: origin.to_owned(), message: e.to_string() })?;
        Ok(ChatTemplate { env, tokens, source: source.to_owned() })
    }

    /// The template text as the model ships it.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders a conversation to the prompt text; `add_generation_prompt` appends the opening of
    /// an assistant turn where the template supports it.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, TokenizerError> {
        self.render_with_tools(messages, None, add_generation_prompt)
    }

    /// Whether the template renders `tools` itself (else a caller that has tools must describe
    /// them in the conversation: `tool_prompt`).
    pub fn supports_tools(&self) -> bool {
        self.source.contains("tools")
    }

    /// `render` with the request's tools (OpenAI's `{"type": "function", "function": {...}}`
    /// objects), passed as transformers passes them: `tools=` to the template.
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .expect("the template was added under TEMPLATE_NAME when the ChatTemplate was built");
        // Built as minijinja values, not serde_json ones: serde_json's map would sort the keys and
        // `messages | tojson` must keep HF's field order (role, content).
        let mut context: Vec<(&str, Value)> = vec![
            ("messages", Value::from_serialize(messages)),
            // HF passes these two as None when a request has no tools or documents.
            ("tools", tools.map_or(Value::from(()), Value::from_serialize)),
            ("documents", Value::from(())),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
        ];
        let ChatTemplateTokens { bos_token, eos_token, unk_token, pad_token } = &self.tokens;
        for (name, token) in
            [("bos_token", bos_token), ("eos_token", eos_token), ("unk_token", unk_token), ("pad_token", pad_token)]
        {
            if let Some(token) = token {
                context.push((name, Value::from(token.as_str())));
            }
        }
        template.render(Value::from_iter(context)).map_err(|err| match raised_message(&err) {
            Some(message) => TokenizerError::ChatTemplate(message),
            None => TokenizerError::ChatTemplateRender(err.to_string()),
        })
    }
}

fn raised_message(err: &minijinja::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(raised) = e.downcast_ref::<RaisedException>() {
            return Some(raised.0.clone());
        }
        source = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(source: &str) -> ChatTemplate {
        let tokens =
            ChatTemplateTokens { bos_token: Some("<s>".into()), eos_token: Some("</s>".into()), ..Default::default() };
        ChatTemplate::new(source, tokens, Path::new("tokenizer_config.json")).unwrap()
    }

    fn user(content: &str) -> Vec<ChatMessage> {
        vec![ChatMessage::new("user", content)]
    }

    #[test]
    fn trim_and_lstrip_blocks_like_hf() {
        let t = template("{% for m in messages %}\n  {% if true %}\n[{{ m.content }}]\n  {% endif %}\n{% endfor %}\n");
        assert_eq!(t.render(&user("a"), false).unwrap(), "[a]\n");
    }

    #[test]
    fn python_string_methods_and_special_tokens() {
        let t = template("{{ bos_token }}{{ messages[0]['content'].strip() }}|{{ messages[0].content.upper() }}{{ eos_token }}{{ unk_token }}");
        assert_eq!(t.render(&user("  hi \n"), false).unwrap(), "<s>hi|  HI \n</s>");
    }

    #[test]
    fn raise_exception_carries_its_message() {
        let t = template("{% if messages|length > 1 %}{{ raise_exception('only one message, please') }}{% endif %}ok");
        assert_eq!(t.render(&user("a"), false).unwrap(), "ok");
        let two = vec![ChatMessage::new("user", "a"), ChatMessage::new("user", "b")];
        match t.render(&two, false) {
            Err(TokenizerError::ChatTemplate(message)) => assert_eq!(message, "only one message, please"),
            other => panic!("expected ChatTemplate error, got {other:?}"),
        }
    }

    #[test]
    fn other_failures_are_render_errors() {
        let t = template("{{ messages[0].content.no_such_method() }}");
        assert!(matches!(t.render(&user("a"), false), Err(TokenizerError::ChatTemplateRender(_))));
    }

    #[test]
    fn syntax_error_names_the_file() {
        let err = ChatTemplate::new(
            "{% for m in messages %}",
            ChatTemplateTokens::default(),
            Path::new("m/tokenizer_config.json"),
        )
        .unwrap_err();
        assert!(matches!(err, TokenizerError::ChatTemplateSyntax { .. }));
        assert!(err.to_string().starts_with("m/tokenizer_config.json: chat_template does not compile"), "{err}");
    }

    #[test]
    fn loop_controls_and_generation_blocks() {
        let t = template(
            "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}\
             {%- generation -%} {{ m.content }} {%- endgeneration %}{% endfor %}",
        );
        let two = vec![ChatMessage::new("user", "a"), ChatMessage::new("assistant", "b")];
        assert_eq!(t.render(&two, false).unwrap(), "a");
    }

    #[test]
    fn booleans_and_none_print_like_python() {
        let t =
            template("{{ add_generation_prompt }} {{ not add_generation_prompt }} {{ none }} {{ undefined_name }}.");
        assert_eq!(t.render(&user("a"), true).unwrap(), "True False None .");
    }

    #[test]
    fn tools_and_documents_are_defined_as_none() {
        let t =
            template("{{ tools is defined }} {{ tools is none }} {{ documents is none }} {{ add_generation_prompt }}");
        assert_eq!(t.render(&user("a"), true).unwrap(), "True True True True");
    }

    #[test]
    fn messages_tojson_keeps_field_order() {
        let t = template("{{ messages | tojson }}");
        assert_eq!(t.render(&user("<b>\"x\"</b>"), false).unwrap(), r#"[{"role": "user", "content": "<b>\"x\"</b>"}]"#);
    }
}
