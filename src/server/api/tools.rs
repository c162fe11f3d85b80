//! OpenAI's tool calling fields: `tools` (function definitions with JSON-schema parameters),
//! `tool_choice` and `parallel_tool_calls`, and in `messages` the assistant's `tool_calls` and
//! the `tool` role's results.

use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::fields::Fields;
use super::limits::MAX_TOOLS;
use crate::tokenizer::chat::ChatMessage;

/// Which tool the model may or must call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model decides: text, or calls.
    Auto,
    /// At least one call; the output is constrained to a call.
    Required,
    /// A call of `tools[index]`; constrained likewise.
    Named(usize),
}

/// A request's tools, when it may call any (`tool_choice` other than "none").
#[derive(Debug, Clone, PartialEq)]
pub struct ToolUse {
    /// As the template receives them: `{"type": "function", "function": {"name", "description",
    /// "parameters"}}`, parameters defaulting to an object without properties.
    pub tools: Vec<Value>,
    pub choice: ToolChoice,
    /// Several calls in one answer; a constrained answer makes one call either way.
    pub parallel: bool,
}

impl ToolUse {
    pub fn name(&self, index: usize) -> &str {
        self.tools[index]["function"]["name"].as_str().unwrap_or_default()
    }

    pub fn parameters(&self, index: usize) -> &Value {
        &self.tools[index]["function"]["parameters"]
    }
}

/// Reads `tools`, `tool_choice` and `parallel_tool_calls`; None when there are no tools or the
/// choice is "none" (the model is then not told about them).
pub fn parse_tool_use(f: &Fields) -> Result<Option<ToolUse>, ApiError> {
    let tools = match f.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(ApiError::invalid_param("tools", "`tools` must not be empty; leave it out for no tools."))
        }
        Some(Value::Array(items)) if items.len() > MAX_TOOLS => {
            return Err(ApiError::invalid_param("tools", format!("`tools` may hold at most {MAX_TOOLS} functions.")))
        }
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, tool)| parse_tool(tool, &format!("tools[{i}]")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(ApiError::invalid_param("tools", "`tools` must be a list of functions.")),
    };
    let names: Vec<&str> = tools.iter().map(|t: &Value| t["function"]["name"].as_str().unwrap_or_default()).collect();
    if let Some((i, name)) = names.iter().enumerate().find(|(i, name)| names[..*i].contains(name)) {
        return Err(ApiError::invalid_param(
            &format!("tools[{i}].function.name"),
            format!("The function name `{name}` is given twice."),
        ));
    }
    let choice = match f.get("tool_choice") {
        None | Some(Value::Null) => Some(ToolChoice::Auto),
        Some(Value::String(s)) => match s.as_str() {
            "none" => None,
            "auto" => Some(ToolChoice::Auto),
            "required" => Some(ToolChoice::Required),
            other => {
                return Err(ApiError::invalid_param(
                    "tool_choice",
                    format!("`tool_choice` `{other}` is not one of none, auto, required or a named function."),
                ))
            }
        },
        Some(Value::Object(named)) => {
            let name = named.get("function").and_then(|f| f.get("name")).and_then(Value::as_str);
            let name =
                name.filter(|_| named.get("type").and_then(Value::as_str) == Some("function")).ok_or_else(|| {
                    ApiError::invalid_param(
                        "tool_choice",
                        "A named `tool_choice` is {\"type\": \"function\", \"function\": {\"name\": \"...\"}}.",
                    )
                })?;
            let index = names.iter().position(|n| *n == name).ok_or_else(|| {
                ApiError::invalid_param(
                    "tool_choice",
                    format!("`tool_choice` names `{name}`, which `tools` does not define."),
                )
            })?;
            Some(ToolChoice::Named(index))
        }
        Some(_) => {
            return Err(ApiError::invalid_param("tool_choice", "`tool_choice` must be a string or a named function."))
        }
    };
    let parallel = f.bool("parallel_tool_calls")?.unwrap_or(true);
    match choice {
        Some(ToolChoice::Required) if tools.is_empty() => {
            Err(ApiError::invalid_param("tool_choice", "`tool_choice` `required` needs `tools`."))
        }
        Some(choice) if !tools.is_empty() => Ok(Some(ToolUse { tools, choice, parallel })),
        _ => Ok(None),
    }
}

/// One `{"type": "function", "function": {"name", "description"?, "parameters"?, "strict"?}}`,
/// normalised (parameters present).
fn parse_tool(tool: &Value, param: &str) -> Result<Value, ApiError> {
    let shape = || {
        ApiError::invalid_param(
            param,
            "Each tool is {\"type\": \"function\", \"function\": {\"name\": \"...\", \"parameters\": {...}}}.",
        )
    };
    let object = tool.as_object().ok_or_else(shape)?;
    if object.get("type").and_then(Value::as_str) != Some("function") {
        return Err(ApiError::invalid_param(&format!("{param}.type"), "Only tools of type `function` are supported."));
    }
    let function = object.get("function").and_then(Value::as_object).ok_or_else(shape)?;
    let name = function.get("name").and_then(Value::as_str).unwrap_or_default();
    let valid_name = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid_name {
        return Err(ApiError::invalid_param(
            &format!("{param}.function.name"),
            "A function name is 1 to 64 letters, digits, underscores or dashes.",
        ));
    }
    let mut normalised = Map::new();
    normalised.insert("name".into(), json!(name));
    match function.get("description") {
        None | Some(Value::Null) => {}
        Some(Value::String(d)) => {
            normalised.insert("description".into(), json!(d));
        }
        Some(_) => {
            return Err(ApiError::invalid_param(&format!("{param}.function.description"), "A description is a string."))
        }
    }
    let parameters = match function.get("parameters") {
        None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => {
            return Err(ApiError::invalid_param(
                &format!("{param}.function.parameters"),
                "`parameters` is a JSON Schema object.",
            ))
        }
    };
    normalised.insert("parameters".into(), parameters);
    Ok(json!({"type": "function", "function": normalised}))
}

/// An assistant message's `tool_calls`, with each call's `arguments` (a JSON string, as OpenAI
/// sends it) parsed into the object templates expect.
pub fn parse_assistant_calls(calls: &Value, param: &str) -> Result<Vec<Value>, ApiError> {
    let calls = calls.as_array().ok_or_else(|| ApiError::invalid_param(param, "`tool_calls` must be a list."))?;
    calls
        .iter()
        .enumerate()
        .map(|(i, call)| {
            let param = format!("{param}[{i}]");
            let bad = || {
                ApiError::invalid_param(
                    &param,
                    "A tool call is {\"id\": \"...\", \"type\": \"function\", \"function\": {\"name\": \"...\", \"arguments\": \"{...}\"}}.",
                )
            };
            let id = call.get("id").and_then(Value::as_str).ok_or_else(bad)?;
            let function = call.get("function").ok_or_else(bad)?;
            let name = function.get("name").and_then(Value::as_str).ok_or_else(bad)?;
            let arguments = match function.get("arguments") {
                Some(Value::String(text)) => serde_json::from_str::<Value>(text)
                    .ok()
                    .filter(Value::is_object)
                    .ok_or_else(|| {
                        ApiError::invalid_param(
                            &format!("{param}.function.arguments"),
                            "`arguments` must be a JSON object written as a string.",
                        )
                    })?,
                Some(object @ Value::Object(_)) => object.clone(),
                _ => return Err(bad()),
            };
            Ok(json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}))
        })
        .collect()
}

/// A `tool` message: its result and the call it answers.
pub fn tool_result(object: &Map<String, Value>, content: String, param: &str) -> Result<ChatMessage, ApiError> {
    let id = object.get("tool_call_id").and_then(Value::as_str).ok_or_else(|| {
        ApiError::invalid_param(
            &format!("{param}.tool_call_id"),
            "A `tool` message needs the `tool_call_id` it answers.",
        )
    })?;
    let mut message = ChatMessage::new("tool", content);
    message.tool_call_id = Some(id.to_string());
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool_use(body: Value) -> Result<Option<ToolUse>, ApiError> {
        parse_tool_use(&Fields::parse(body.to_string().as_bytes()).unwrap())
    }

    fn weather() -> Value {
        json!({"type": "function", "function": {"name": "weather", "description": "Now.",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}})
    }

    #[test]
    fn choices_and_defaults() {
        let auto = tool_use(json!({"tools": [weather()]})).unwrap().unwrap();
        assert_eq!((auto.choice, auto.parallel), (ToolChoice::Auto, true));
        assert_eq!(auto.name(0), "weather");
        assert!(tool_use(json!({"tools": [weather()], "tool_choice": "none"})).unwrap().is_none());
        assert!(tool_use(json!({})).unwrap().is_none());
        let named = tool_use(json!({"tools": [weather()], "parallel_tool_calls": false,
                                    "tool_choice": {"type": "function", "function": {"name": "weather"}}}))
        .unwrap()
        .unwrap();
        assert_eq!((named.choice, named.parallel), (ToolChoice::Named(0), false));
        let bare =
            tool_use(json!({"tools": [{"type": "function", "function": {"name": "now"}}], "tool_choice": "required"}))
                .unwrap()
                .unwrap();
        assert_eq!(bare.parameters(0), &json!({"type": "object", "properties": {}}));
    }

    #[test]
    fn mistakes_name_their_field() {
        for (body, param) in [
            (json!({"tools": {}}), "tools"),
            (json!({"tools": []}), "tools"),
            (json!({"tools": [{"type": "retrieval"}]}), "tools[0].type"),
            (json!({"tools": [{"type": "function", "function": {"name": "a b"}}]}), "tools[0].function.name"),
            (json!({"tools": [weather(), weather()]}), "tools[1].function.name"),
            (
                json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": 3}}]}),
                "tools[0].function.parameters",
            ),
            (json!({"tools": [weather()], "tool_choice": "sometimes"}), "tool_choice"),
            (
                json!({"tools": [weather()], "tool_choice": {"type": "function", "function": {"name": "other"}}}),
                "tool_choice",
            ),
            (json!({"tool_choice": "required"}), "tool_choice"),
            (json!({"tools": [weather()], "parallel_tool_calls": "yes"}), "parallel_tool_calls"),
        ] {
            let error = tool_use(body.clone()).unwrap_err();
            assert_eq!(error.param.as_deref(), Some(param), "{body}");
        }
    }

    #[test]
    fn assistant_calls_carry_parsed_arguments() {
        let calls = json!([{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}}]);
        let parsed = parse_assistant_calls(&calls, "messages[1].tool_calls").unwrap();
        assert_eq!(parsed[0]["function"]["arguments"], json!({"city": "Paris"}));
        let bad = json!([{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "[1]"}}]);
        let error = parse_assistant_calls(&bad, "m").unwrap_err();
        assert_eq!(error.param.as_deref(), Some("m[0].function.arguments"));
    }
}
