//! Tools for a chat template that does not render them (SmolLM2's, for one): the conversation is
//! rewritten in the Hermes format the way Qwen2.5's template writes it, so the model is told
//! which functions exist and how to call them (`<tool_call>` JSON, which the Hermes parser then
//! reads back), and earlier calls and their results appear as text it can follow.

use serde_json::Value;

use super::chat::ChatMessage;

/// The instructions and signatures, as Qwen2.5's template states them.
fn tools_block(tools: &[Value]) -> String {
    let mut text = String::from(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for tool in tools {
        text.push('\n');
        text.push_str(&tool.to_string());
    }
    text.push_str(
        "\n</tools>\n\nFor each function call, return a json object with function name and arguments \
         within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \
         \"arguments\": <args-json-object>}\n</tool_call>",
    );
    text
}

/// The conversation with the tools described in its system message, assistant calls written as
/// `<tool_call>` blocks and tool results as `<tool_response>` blocks in a user turn (consecutive
/// results share one turn).
/// Without tools (a later turn with `tool_choice: "none"`) only the calls and results are
/// rewritten.
pub fn describe_tools(messages: &[ChatMessage], tools: &[Value]) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len() + 1);
    let mut skip = 0;
    if !tools.is_empty() {
        let block = tools_block(tools);
        match messages.first() {
            Some(first) if first.role == "system" => {
                out.push(ChatMessage::new("system", format!("{}\n\n{block}", first.content)));
                skip = 1;
            }
            _ => out.push(ChatMessage::new("system", block)),
        }
    }
    let mut previous_was_tool = false;
    for message in &messages[skip..] {
        match message.role.as_str() {
            "tool" => {
                let response = format!("<tool_response>\n{}\n</tool_response>", message.content);
                match out.last_mut() {
                    Some(last) if previous_was_tool => {
                        last.content.push('\n');
                        last.content.push_str(&response);
                    }
                    _ => out.push(ChatMessage::new("user", response)),
                }
                previous_was_tool = true;
                continue;
            }
            "assistant" if !message.tool_calls.is_empty() => {
                let mut content = message.content.clone();
                for call in &message.tool_calls {
                    let function = &call["function"];
                    // Written by hand: serde_json's maps sort keys, and the format puts the name first.
                    let written = format!("{{\"name\":{},\"arguments\":{}}}", function["name"], function["arguments"]);
                    if !content.is_empty() {
                        content.push('\n');
                    }
                    content.push_str(&format!("<tool_call>\n{written}\n</tool_call>"));
                }
                out.push(ChatMessage::new("assistant", content));
            }
            _ => out.push(ChatMessage::new(message.role.as_str(), message.content.as_str())),
        }
        previous_was_tool = false;
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_two_turn_tool_conversation_in_the_hermes_format() {
        let tools = [json!({"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}})];
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls = vec![json!({"id": "c1", "type": "function",
                                      "function": {"name": "weather", "arguments": {"city": "Paris"}}})];
        let mut result = ChatMessage::new("tool", "18 C");
        result.tool_call_id = Some("c1".into());
        let mut second = result.clone();
        second.content = "sunny".into();
        let messages = vec![ChatMessage::new("user", "Weather in Paris?"), call, result, second];
        let out = describe_tools(&messages, &tools);
        let roles: Vec<&str> = out.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert!(out[0].content.starts_with("# Tools") && out[0].content.contains(r#""name":"weather""#));
        assert_eq!(
            out[2].content,
            "<tool_call>\n{\"name\":\"weather\",\"arguments\":{\"city\":\"Paris\"}}\n</tool_call>"
        );
        assert_eq!(out[3].content, "<tool_response>\n18 C\n</tool_response>\n<tool_response>\nsunny\n</tool_response>");
        // A system message of the caller's keeps its text first.
        let out = describe_tools(&[ChatMessage::new("system", "Be brief."), ChatMessage::new("user", "Hi")], &tools);
        assert!(out[0].content.starts_with("Be brief.\n\n# Tools"));
        assert_eq!(out.len(), 2);
        // Without tools, only the calls and results are rewritten.
        let out = describe_tools(&messages, &[]);
        let roles: Vec<&str> = out.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["user", "assistant", "user"]);
    }
}
