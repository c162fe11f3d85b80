"""Records reference renderings of the two chat templates kiln must match byte for byte, made with
transformers' apply_chat_template (tokenize=False), into tests/data/chat_templates.json.

Templates:
- chatml_smollm2: read from SmolLM2-135M-Instruct's GGUF (metadata `tokenizer.chat_template`).
- llama2_chat: meta-llama/Llama-2-7b-chat-hf's tokenizer_config.json `chat_template`, as quoted
  verbatim for meta-llama/Llama-2-13b-chat-hf (same template) in huggingface/text-generation-inference
  router/src/infer/chat_template.rs (test_chat_templates) and other public copies.

usage: python tools/reference/tokenizer_chat_templates.py <SmolLM2 .gguf> <out json>
needs: transformers, tokenizers, jinja2, gguf (a dev venv; not needed by the tests)
"""

import json
import sys

import gguf
import transformers
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

LLAMA2_CHAT = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)


# Not a model's template: written for kiln to exercise what the two real ones do not (indented
# multi-line blocks under trim_blocks/lstrip_blocks, `{%-`/`-%}`, HF's tojson, loop controls,
# namespace, Python string methods, how True/None print, a trailing newline).
FEATURES = """{%- set ns = namespace(users=0) -%}
{{ bos_token }}
{% for message in messages %}
    {% if message['role'] == 'user' %}
        {% set ns.users = ns.users + 1 %}
    {% endif %}
    {% if loop.index0 > 4 %}{% break %}{% endif %}
    <{{ message['role'] | upper }} n={{ loop.index }} last={{ loop.last }}>
        {{- message['content'].strip().title() }} | {{ message['content'].split() | length }} words
        {{ message | tojson }}
    {%- if not loop.last %}

    {% endif %}
{% endfor %}
users={{ ns.users }} tools={{ tools }} gen={{ add_generation_prompt }}
{% if add_generation_prompt %}
    {{- '<ASSISTANT>' + eos_token | tojson(indent=2) }}
{% endif %}
"""


def smollm2_template(gguf_path):
    reader = gguf.GGUFReader(gguf_path)
    field = reader.fields["tokenizer.chat_template"]
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def m(role, content):
    return {"role": role, "content": content}


SYSTEM = "You are a terse assistant.\nAnswer in one line."
CONVERSATIONS = [
    ("system_user", [m("system", SYSTEM), m("user", "What is the capital of France?")]),
    ("user_only", [m("user", "Hello!")]),
    ("multi_turn", [m("user", "Hi"), m("assistant", "Hello! How can I help?"), m("user", "Tell me a joke.")]),
    (
        "system_multi_turn",
        [m("system", SYSTEM), m("user", "2+2?"), m("assistant", "4"), m("user", "And 3+3?"), m("assistant", "6")],
    ),
    ("whitespace", [m("system", "  padded system \n"), m("user", "\n\n  leading and trailing  \n\t"), m("assistant", "  spaced reply  "), m("user", "line one\nline two\n\n")]),
    ("unicode", [m("user", "Größe? 日本語 🦙 — «quotes» \"double\" 'single' <tag> {{ not jinja }}")]),
    ("empty_content", [m("user", "")]),
    ("system_only", [m("system", "Only a system message.")]),
]
BAD_ORDER = [
    ("user_user", [m("user", "one"), m("user", "two")]),
    ("assistant_first", [m("assistant", "I speak first"), m("user", "hi")]),
    ("system_assistant", [m("system", SYSTEM), m("assistant", "no user turn")]),
]


def hf_tokenizer(template, bos, eos):
    # Any tokenizer will do for tokenize=False: only the template and the special-token strings matter.
    vocab = {"<unk>": 0, bos: 1, eos: 2}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos, unk_token="<unk>")
    tok.chat_template = template
    return tok


def main():
    gguf_path, out_path = sys.argv[1], sys.argv[2]
    templates = {
        "chatml_smollm2": {
            "source": "SmolLM2-135M-Instruct.Q4_1.gguf metadata tokenizer.chat_template",
            "template": smollm2_template(gguf_path),
            "bos_token": "<|im_start|>",
            "eos_token": "<|im_end|>",
        },
        "llama2_chat": {
            "source": "meta-llama/Llama-2-7b-chat-hf tokenizer_config.json chat_template",
            "template": LLAMA2_CHAT,
            "bos_token": "<s>",
            "eos_token": "</s>",
        },
        "features_probe": {
            "source": "written for kiln's tests (tools/reference/tokenizer_chat_templates.py), not a model's",
            "template": FEATURES,
            "bos_token": "<s>",
            "eos_token": "</s>",
        },
    }
    cases = []
    for template_name, t in templates.items():
        tok = hf_tokenizer(t["template"], t["bos_token"], t["eos_token"])
        for name, messages in CONVERSATIONS:
            for add_generation_prompt in (False, True):
                rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
                cases.append({
                    "template": template_name,
                    "name": name,
                    "messages": messages,
                    "add_generation_prompt": add_generation_prompt,
                    "expected": rendered,
                })
        if template_name == "llama2_chat":
            for name, messages in BAD_ORDER:
                try:
                    tok.apply_chat_template(messages, tokenize=False)
                except Exception as err:  # jinja2.exceptions.TemplateError from raise_exception
                    cases.append({"template": template_name, "name": name, "messages": messages, "add_generation_prompt": False, "error": str(err)})
                else:
                    raise SystemExit(f"{name}: expected raise_exception")
    doc = {
        "how": (
            "Produced by tools/reference/tokenizer_chat_templates.py with transformers "
            f"{transformers.__version__}: PreTrainedTokenizerFast with the template and bos/eos set, "
            "apply_chat_template(messages, tokenize=False, add_generation_prompt=...). `error` is the "
            "message of the exception raise_exception threw."
        ),
        "templates": templates,
        "cases": cases,
    }
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
