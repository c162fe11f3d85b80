//! What counts as one tool call, for every format: a JSON object with a non-empty string `name`
//! and exactly one of `arguments`/`parameters` holding an object, or a string that holds a JSON
//! object (some fine-tunes double-encode). Anything else is not a call, and its text stays content.

use serde_json::{Map, Value};

use super::json_text::{minify, object_members};
use super::ParsedToolCall;

/// The call `json` spells, or `None` when it is not exactly one well-formed call object.
pub(super) fn parse_call(json: &str) -> Option<ParsedToolCall> {
    // serde_json decides validity (one object, nothing after it); the raw member texts are then
    // read from `json` itself so that the arguments keep the model's key order and spelling.
    serde_json::from_str::<Map<String, Value>>(json).ok()?;
    let mut name = None;
    let mut arguments: Option<(String, &str)> = None;
    for (raw_key, value) in object_members(json)? {
        // Keys may carry escapes (`"n\u0061me"`); serde_json's last-one-wins for duplicates is
        // kept by overwriting.
        let key: String = serde_json::from_str(raw_key).ok()?;
        match key.as_str() {
            "name" => name = Some(value),
            "arguments" | "parameters" => {
                if arguments.as_ref().is_some_and(|(seen, _)| *seen != key) {
                    // Both spellings at once: no way to tell which the model meant.
                    return None;
                }
                arguments = Some((key, value));
            }
            _ => {}
        }
    }
    let name: String = serde_json::from_str(name?).ok()?;
    if name.is_empty() {
        return None;
    }
    let arguments = compact_arguments(arguments?.1)?;
    Some(ParsedToolCall { name, arguments })
}

/// The arguments as compact JSON object text, from an object or a string holding one.
fn compact_arguments(value: &str) -> Option<String> {
    match value.as_bytes().first()? {
        // Already validated as part of the call object.
        b'{' => Some(minify(value)),
        b'"' => {
            let inner: String = serde_json::from_str(value).ok()?;
            serde_json::from_str::<Map<String, Value>>(&inner).ok()?;
            Some(minify(&inner))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, arguments: &str) -> Option<ParsedToolCall> {
        Some(ParsedToolCall { name: name.into(), arguments: arguments.into() })
    }

    #[test]
    fn accepts_both_argument_keys_and_double_encoded_arguments() {
        assert_eq!(parse_call(r#"{"name": "f", "arguments": {"b": 1, "a": 2}}"#), call("f", r#"{"b":1,"a":2}"#));
        assert_eq!(parse_call(r#"{"parameters": {"x": [1, 2.50]}, "name": "g"}"#), call("g", r#"{"x":[1,2.50]}"#));
        assert_eq!(parse_call(r#"{"name": "f", "arguments": "{\"q\": \"a b\"}"}"#), call("f", r#"{"q":"a b"}"#));
        assert_eq!(parse_call(r#"{"type": "function", "name": "f", "parameters": {}}"#), call("f", "{}"));
        assert_eq!(parse_call(r#"{"n\u0061me": "f", "arguments": {}}"#), call("f", "{}"));
    }

    #[test]
    fn rejects_what_is_not_one_call() {
        for bad in [
            r#"{"arguments": {}}"#,
            r#"{"name": "", "arguments": {}}"#,
            r#"{"name": 3, "arguments": {}}"#,
            r#"{"name": "f"}"#,
            r#"{"name": "f", "arguments": [1]}"#,
            r#"{"name": "f", "arguments": "[1]"}"#,
            r#"{"name": "f", "arguments": "not json"}"#,
            r#"{"name": "f", "arguments": null}"#,
            r#"{"name": "f", "arguments": {}, "parameters": {}}"#,
            r#"{"name": "f", "arguments": {}}}"#,
            r#"{"name": "f", "arguments": {}} {"name": "g", "arguments": {}}"#,
            r#"[{"name": "f", "arguments": {}}]"#,
            "",
        ] {
            assert_eq!(parse_call(bad), None, "{bad}");
        }
    }
}
