"""Builds tests/data/llama2_gguf_tokenizer.json: llama.cpp's token ids for the Llama-2
SentencePiece GGUF fixture (tests/tokenizer_support/llama2_gguf.rs) on 200+ strings.

The fixture is written by the Rust tests (`cargo test --test tokenizer_gguf` writes
tests/data/cache/llama2/llama2-sentencepiece.gguf); run this afterwards in a python that has
llama-cpp-python:
    python tools/reference/make_gguf_tokenizer_reference.py <python with llama_cpp> GGUF OUT.json

Every case is tokenized by llama.cpp with `add_bos=False, special=True` (special-token text such as
`</s>` is the special token, as in a rendered chat prompt) and detokenized with `special=False`.
The strings: hand-picked hard cases (whitespace runs, leading spaces, unicode, digits, characters
that need byte fallback, special-token text), the texts of tests/data/llama2_tokenizer.json, and
seeded random mixes of those ingredients.
"""

import json
import os
import random
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

HAND_PICKED = [
    "", " ", "  ", "   ", "\t", "\n", "\n\n", " \n", "\n ", "\r\n", " \t \n ",
    "Hello", " Hello", "  Hello", "Hello ", "Hello  ", "Hello world", "Hello  world", "Hello\tworld",
    "Hello\nworld", "Hello\n\nworld", "   leading three", "trailing three   ", "a b  c   d    e",
    "0", "7", "42", "123", "2024", "3.14159", "1,000,000", "-17", "+1 (555) 010-9999", "0x1F", "1e-9",
    "v1.2.3", "100%", "$19.99", "12:30pm", "2026-12-05",
    "café", "naïve", "résumé", "Ünïcödé", "e\u0301", "Å", "ß", "İstanbul", "Ελληνικά", "Привет мир",
    "Здравствуй, мир!", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "こんにちは世界", "你好，世界",
    "안녕하세요", "ไทย", "Tiếng Việt", "ⓐⓑⓒ", "①②③", "½ ¾", "™ © ®", "°C", "µs",
    "🦙", "🦙🦙", "I 🦙 you", "👍🏽", "👨‍👩‍👧", "🇫🇷", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𠀋", "𪚥", "\u200b", "\u00a0", "\ufeff",
    "\x00", "\x01", "\x7f", "tab\there", "bell\x07", "esc\x1b[0m",
    "<s>", "</s>", "<unk>", "<s>Hello", "Hello</s>", "<s> Hello", "Hello </s>", "<s></s>", "</s><s>",
    "<s><s>", "a<s>b", "a </s> b", "<s>[INST] Hi [/INST]", "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]",
    "<s >", "< s>", "<s", "s>", "</s", "<unk >", "<0x0A>", "<0x41>", "<|endoftext|>", "<|im_start|>",
    "grabbed", " grabbed", "           grabbed", "The quick brown fox jumps over the lazy dog.",
    "def f(x):\n    return x * 2\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
    "{\"key\": [1, 2, 3], \"b\": null}", "<html><body>Hi</body></html>", "https://example.com/a?b=c&d=e",
    "user@example.com", "C:\\Program Files\\kiln", "~/.cache/kiln", "a--b__c..d", "!!!???", "...",
    "'quoted' \"double\" `back`", "don't can't won't", "It's", "HELLO WORLD", "hELLO wORLD", "CamelCaseWord",
    "snake_case_word", "kebab-case-word", "ALLCAPS123", "x²+y²=z²", "∀x∈ℝ: x≥0", "a→b⇒c", "—–-", "«»„“",
]


def random_mixes(count, seed):
    rng = random.Random(seed)
    pieces = [
        "Hello", "world", "llama", "é", "ñ", "ü", "中", "文", "🦙", "😀", "𠀋", "123", "4", "0.5",
        " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "<s>", "</s>", "<unk>", "[INST]", "[/INST]",
        "the", "of", "Ä", "Ω", "ж", "ы", "ا", "ह", "한", "ア", "!", "?", ",", ".", "'s", "-", "_", "#",
    ]
    mixes = []
    for _ in range(count):
        mixes.append("".join(rng.choice(pieces) for _ in range(rng.randint(1, 8))))
    return mixes


def cases():
    texts = list(HAND_PICKED)
    with open(os.path.join(ROOT, "tests/data/llama2_tokenizer.json"), encoding="utf-8") as f:
        texts += [case["text"] for case in json.load(f)["texts"]]
    texts += random_mixes(90, seed=20261205)
    return list(dict.fromkeys(texts))  # first occurrences, in order


def main():
    llama_python, gguf, out = sys.argv[1:4]
    texts = cases()
    request = {"op": "tokenize", "gguf": os.path.abspath(gguf), "cases": [{"text": t, "special": True} for t in texts]}
    answer = subprocess.run(
        [llama_python, os.path.join(HERE, "llamacpp_ref.py")], input=json.dumps(request),
        capture_output=True, text=True, check=True,
    )
    answer = json.loads(answer.stdout)
    ids = [r["ids"] for r in answer["results"]]
    decode_request = {"op": "detokenize", "gguf": os.path.abspath(gguf), "token_lists": ids}
    decoded = subprocess.run(
        [llama_python, os.path.join(HERE, "llamacpp_ref.py")], input=json.dumps(decode_request),
        capture_output=True, text=True, check=True,
    )
    decoded = json.loads(decoded.stdout)["results"]
    document = {
        "how": (
            "Produced by tools/reference/make_gguf_tokenizer_reference.py with llama-cpp-python "
            f"{answer['llama_cpp_python_version']} (llama.cpp built from its PyPI sources) on "
            "tests/data/cache/llama2/llama2-sentencepiece.gguf, the fixture written by "
            "tests/tokenizer_support/llama2_gguf.rs. ids: Llama.tokenize(text, add_bos=False, special=True). "
            "decoded: Llama.detokenize(ids, special=False)."
        ),
        "cases": [{"text": t, "ids": i, "decoded": d} for t, i, d in zip(texts, ids, decoded)],
    }
    with open(out, "w", encoding="utf-8") as f:
        json.dump(document, f, ensure_ascii=False, indent=0)
        f.write("\n")
    print(f"{len(texts)} cases written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
