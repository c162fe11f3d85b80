//! Which tool-call format a model writes: named by `--tool-call-parser`, or recognised from the
//! instructions its chat template gives the model.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ToolCallFormat {
    /// `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks (Qwen2, Hermes, ChatML).
    Hermes,
    /// A bare `{"name": ..., "parameters": {...}}` reply (Llama 3.1 and later).
    Llama3Json,
}

/// A `--tool-call-parser` name kiln does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown tool-call parser `{name}`; valid names are: {}", valid_names())]
pub struct UnknownToolCallFormat {
    pub name: String,
}

/// Llama 3.1's template tells the model, for custom tools: `Respond in the format {"name":
/// function name, "parameters": dictionary of argument name and its value}.` (Llama 3.2 and 3.3
/// keep the sentence.)
const LLAMA3_JSON_INSTRUCTION: &str = r#""parameters": dictionary of argument name and its value"#;

fn valid_names() -> String {
    ToolCallFormat::ALL.map(ToolCallFormat::name).join(", ")
}

impl ToolCallFormat {
    pub const ALL: [ToolCallFormat; 2] = [ToolCallFormat::Hermes, ToolCallFormat::Llama3Json];

    /// The `--tool-call-parser` name, the same as vLLM's.
    pub fn name(self) -> &'static str {
        match self {
            ToolCallFormat::Hermes => "hermes",
            ToolCallFormat::Llama3Json => "llama3_json",
        }
    }

    pub fn from_name(name: &str) -> Result<ToolCallFormat, UnknownToolCallFormat> {
        ToolCallFormat::ALL
            .into_iter()
            .find(|format| format.name() == name)
            .ok_or_else(|| UnknownToolCallFormat { name: name.to_string() })
    }

    /// The format a chat template's source asks the model to write, if it names one. Templates
    /// show the format to the model (and render past calls in it), so its markers are in the
    /// source: Qwen2.5's `<tool_call>` block, Llama 3.1's `<|python_tag|>` and JSON instruction.
    pub fn detect(template_source: &str) -> Option<ToolCallFormat> {
        if template_source.contains("<tool_call>") {
            Some(ToolCallFormat::Hermes)
        } else if template_source.contains("<|python_tag|>") || template_source.contains(LLAMA3_JSON_INSTRUCTION) {
            Some(ToolCallFormat::Llama3Json)
        } else {
            None
        }
    }
}

impl FromStr for ToolCallFormat {
    type Err = UnknownToolCallFormat;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        ToolCallFormat::from_name(name)
    }
}

impl fmt::Display for ToolCallFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The tool parts of the real templates, as they read after tokenizer_config.json is decoded.
    const QWEN25_INSTRUCT_TOOLS: &str = r#"{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- endif %}"#;

    const LLAMA31_INSTRUCT_TOOLS: &str = r#"{%- if tools_in_user_message and not tools is none %}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
{%- endif %}
{%- if builtin_tools is defined and tool_call.name in builtin_tools %}
    {{- "<|python_tag|>" + tool_call.name + ".call(" }}
{%- endif %}"#;

    // Llama 3.2 1B/3B: the instruction without `<|python_tag|>`.
    const LLAMA32_INSTRUCT_TOOLS: &str = r#"{{- "Given the following functions, please respond with a JSON for a function call " }}
{{- "with its proper arguments that best answers the given prompt.\n\n" }}
{{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
{{- '{"name": "' + tool_call.name + '", ' }}
{{- '"parameters": ' }}"#;

    const SMOLLM2_CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn detects_the_format_from_real_templates() {
        assert_eq!(ToolCallFormat::detect(QWEN25_INSTRUCT_TOOLS), Some(ToolCallFormat::Hermes));
        assert_eq!(ToolCallFormat::detect(LLAMA31_INSTRUCT_TOOLS), Some(ToolCallFormat::Llama3Json));
        assert_eq!(ToolCallFormat::detect(LLAMA32_INSTRUCT_TOOLS), Some(ToolCallFormat::Llama3Json));
        assert_eq!(ToolCallFormat::detect(SMOLLM2_CHATML), None, "SmolLM2's template has no tool format");
    }

    #[test]
    fn names_round_trip_and_unknown_names_list_the_valid_ones() {
        for format in ToolCallFormat::ALL {
            assert_eq!(ToolCallFormat::from_name(format.name()), Ok(format));
            assert_eq!(format.to_string().parse::<ToolCallFormat>(), Ok(format));
        }
        let err = ToolCallFormat::from_name("mistral").unwrap_err();
        assert_eq!(err.to_string(), "unknown tool-call parser `mistral`; valid names are: hermes, llama3_json");
        assert!(ToolCallFormat::from_name("Hermes").is_err(), "names are exact, as on vLLM's command line");
    }
}
