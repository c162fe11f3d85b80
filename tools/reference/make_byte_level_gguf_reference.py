"""Builds tests/data/byte_level_gguf_tokenizer.json: llama.cpp's token ids for SmolLM2's byte-level
BPE vocabulary written as one `gpt2` GGUF per pre-tokenizer name (tests/tokenizer_support/
byte_level_gguf.rs), on 300+ strings, so tests/tokenizer_gguf.rs can check kiln's rebuild of each
`tokenizer.ggml.pre` split against llama.cpp's.

The GGUFs are written by the Rust tests (`cargo test --test tokenizer_gguf` writes
tests/data/cache/byte_level/<pre>.gguf); run this afterwards with a python that has llama-cpp-python:
    python tools/reference/make_byte_level_gguf_reference.py <python with llama_cpp> \\
        tests/data/cache/byte_level tests/data/byte_level_gguf_tokenizer.json

Every string is tokenized with `add_bos=False, special=True` (special-token text is the special
token, as in a rendered chat prompt); a few also with `add_bos=True`. Decoding is each token's piece
(llama_token_to_piece) joined, with special=False and special=True; it does not depend on how the
text was split, so the script checks that every pre-type gives the same text and stores it once.
"""

import json
import os
import random
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from make_gguf_tokenizer_reference import HAND_PICKED  # noqa: E402  (generic hard cases, shared)

# "(none)" is no name: its file (written as "(none).gguf") leaves tokenizer.ggml.pre out, for which
# llama.cpp uses its `default` split.
PRE_TYPES = ["llama-bpe", "qwen2", "tekken", "gpt-2", "smollm", "smaug-bpe", "default", "(none)"]

WHITESPACE = [
    "a  b", "a   b", "a\t\tb", "a \tb", "a\t b", "\t\tindented", "    four", "        eight spaces",
    "x\n\n\ny", "x \n y", "x\n  \n  y", "x  \n\n  y", "x\r\n\r\ny", "x\r\ry", "end\n", "end \n",
    "end\n\n\n", "  \n\n  ", " \t\n\t ", "word\n    indented", "word  \nnext", "a\u00a0b", "a\u00a0\u00a0b",
    "a\u2003b", "a\u3000b", "a\u0085b", "a\u2028b", "a\u2029b", "a\x0bb", "a\x0cb", "a\x1cb", "a \u00a0 b",
    "\u00a0leading nbsp", "trailing nbsp\u00a0", "\u200bzero\u200bwidth", "a\u180eb", "  \u3000  x",
]

CONTRACTIONS = [
    "it's", "IT'S", "It'S", "don't", "DON'T", "we're", "WE'RE", "We'Re", "we'rE", "I've", "I'VE", "I'm",
    "I'M", "we'll", "WE'LL", "We'lL", "he'd", "HE'D", "'s", "'S", " 's", "''s", "'sss", "'tis",
    "rock'n'roll", "y'all", "o'clock", "O'Neil", "l'été", "it\u2019s", "'ſ", "'ſt", "'K", "'ll've",
    "shouldn't've", "'d'd'd", "x'", "'", "'re'", " 'Ve", "5's", "ä's", "'ll\n", "Jones' book",
]

DIGITS = [
    "1", "12", "123", "1234", "12345", "123456", "1234567", "12345678901234567890",
    "3141592653589793238462643383279502884197", "0000", "1,234,567", "1.5e10", "v2.0.1", "x1y22z333",
    " 42", "  42", "42 ", "abc123def", "ABC123", "\u0663\u0664\u0665", "\uff11\uff12\uff13", "²³", "½¾",
    "①②", "ⅫⅣ", "\u0967\u0968\u0969", "12½", "1st 2nd 3rd", "$1,000.00", "10:30",
    "2026-12-05T10:30:00Z", "+49 30 1234567", "a 1 b 22 c 333 d 4444",
]

PUNCTUATION = [
    "!!!", "?!?!", "…", "---", "***", "!!!\n", "?\n\n", ".\r\n", " !!", " ...\n", "a.b", "a,b", "(a)",
    "[b]", "{c}", "<d>", "a/b", "a//b", "://", "http://x.y/z", "!//", ".\n/", "),\n", "¡Hola!", "¿Qué?",
    "「引用」", "—dash—", "a—b", "#include <stdio.h>", "@user #tag", "$$$ %% ^^ ~~ `` || &&", "\"\"\"",
    ";;\n\n", " /* c */", "<!-- x -->", "=>", "->", "::", "!=", "<=>", "...\n\n...",
]

CODE = [
    "import os\n\n\ndef main():\n    print(os.getcwd())  # cwd\n",
    "fn main() {\n    let x: Vec<u32> = (0..10).collect();\n    println!(\"{:?}\", x);\n}\n",
    "if (a && b || !c) { return -1; }\n\telse { x += 2; }",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;",
    "const f = async (x) => { await g(x?.y ?? 0); };",
    "<div class=\"a\">\n  <p>Hi &amp; bye</p>\n</div>",
    "$ ls -la /tmp | grep '.log' > out.txt 2>&1",
    "re.compile(r'^\\s*(\\d+)\\.(\\w+)$')",
    "{\n  \"key\": \"value\",\n  \"list\": [1, 2.5, -3e4, true, null]\n}",
    "#define MAX(a, b) ((a) > (b) ? (a) : (b))\n",
    "x = [i**2 for i in range(100) if i % 3 == 0]",
    "\tindented_with_tab = True\n\t\treturn None",
    "# Title\n\n- item one\n- item two\n\n```python\nprint('hi')\n```\n",
]

UNICODE = [
    "e\u0301cole", "nai\u0308ve", "Åström", "A\u030angstrom", "한국어 텍스트", "ภาษาไทย", "हिन्दी भाषा",
    "বাংলা", "தமிழ்", "ქართული", "Հայերեն", "עִבְרִית", "العَرَبِيَّة", "Ελληνικά", "ÉCOLE", " ÉCOLE",
    "École", "getÉtat", "naïve", " naïve", "NAÏVE", "ÜBER", "Über", "DÉJA", "helloÉcole", "camelCase",
    "HTTPServer", "XMLHttpRequest", "iPhone", "McDonald's", "ǅemal", "ᾈ", "ʰʲ", "々", "ラーメン",
    "🦙🦙🦙", "👍🏽👍🏿", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇯🇵🇺🇸", "1️⃣", "©️", "😀 😀", "a😀b", "𝔘𝔫𝔦", "𝟘𝟙𝟚", "\U0001FAE8",
    "δ\u0302're", "你\u0302're", "x\u0327's", "\u00ad\u0301't", "ा'd", "\uE000", "\u0378", "\uFFFD",
    "\x00\x01", "\x7f\x80\x9f", "\u1c89", "\u1c89've", "x\u1c89y", "\U00011F00", "\U0001E5D0\U0001E5D1",
]

SPECIAL = [
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "<think>\nreasoning\n</think>\n\nanswer",
    " <think>", "<think> ", "a<think>b", "<think><think>", "<|im_start|><think>", "<|im_start",
    "im_start|>", "<|im_start |>", "<|IM_START|>", "<think", "think>", "</think", "<thinking>",
    "<file_sep>", "<repo_name>x", "<|endoftext|><|endoftext|>", "text<|endoftext|>more", "<|im_end|>\n",
    "\n<|im_start|>", "<|im_start|> Hello", "Hello <|im_end|>",
]

# Also tokenized with add_bos=True: llama.cpp adds BOS for llama-bpe and tekken when the file does
# not say (the fixtures leave tokenizer.ggml.add_bos_token out).
WITH_SPECIAL = ["", "Hello world", " leading", "<think>x", "\n", "<|im_end|>", "<|im_start|>user"]


def random_mixes(count, seed):
    rng = random.Random(seed)
    pieces = [
        "Hello", "world", "THE", "camel", "Case", "é", "É", "ß", "ü", "中", "文", "あ", "ア", "한", "🦙", "😀",
        "\u0301", "\u0308", "\u200d", "1", "23", "456", "7890", "٣", "²", " ", "  ", "   ", "\t", "\n", "\n\n",
        "\r\n", "\u00a0", "'s", "'T", "'re", "'LL", "'d", "'", "!", "?", "...", ",", ".", "/", "-", "_", "#",
        "(", ")", "{", "}", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<|endoftext|>",
    ]
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 10))) for _ in range(count)]


def texts():
    every = HAND_PICKED + WHITESPACE + CONTRACTIONS + DIGITS + PUNCTUATION + CODE + UNICODE + SPECIAL
    every += random_mixes(80, seed=20261205)
    return list(dict.fromkeys(every))  # first occurrences, in order


def llama_cpp(llama_python, request):
    answer = subprocess.run(
        [llama_python, os.path.join(HERE, "llamacpp_ref.py")], input=json.dumps(request),
        capture_output=True, text=True, check=True,
    )
    return json.loads(answer.stdout)


def main():
    llama_python, gguf_dir, out = sys.argv[1:4]
    cases = texts()
    ids, decoded, decoded_special, with_special = {}, {}, {}, {}
    version = None
    for pre in PRE_TYPES:
        gguf = os.path.abspath(os.path.join(gguf_dir, f"{pre}.gguf"))
        answer = llama_cpp(llama_python, {"op": "tokenize", "gguf": gguf,
                                          "cases": [{"text": t, "special": True} for t in cases]})
        version = answer["llama_cpp_python_version"]
        results = answer["results"]
        ids[pre] = [r["ids"] for r in results]
        decoded[pre] = [r["joined_pieces"] for r in results]
        decoded_special[pre] = [r["joined_pieces_special"] for r in results]
        answer = llama_cpp(llama_python, {"op": "tokenize", "gguf": gguf,
                                          "cases": [{"text": t, "special": True, "add_bos": True} for t in WITH_SPECIAL]})
        with_special[pre] = [r["ids"] for r in answer["results"]]
    for pre in PRE_TYPES[1:]:
        if decoded[pre] != decoded[PRE_TYPES[0]] or decoded_special[pre] != decoded_special[PRE_TYPES[0]]:
            sys.exit(f"llama.cpp decodes {pre}'s ids to other text than {PRE_TYPES[0]}'s: store decoding per pre-type")

    document = {
        "how": (
            "Produced by tools/reference/make_byte_level_gguf_reference.py with llama-cpp-python "
            f"{version} (llama.cpp built from its PyPI sources) on tests/data/cache/byte_level/<pre>.gguf, "
            "written by tests/tokenizer_support/byte_level_gguf.rs (SmolLM2's vocabulary, one file per "
            "tokenizer.ggml.pre; the one for \"(none)\" leaves the key out). ids[pre]: "
            "Llama.tokenize(text, add_bos=False, special=True). decoded / "
            "decoded_special: each token's piece (llama_token_to_piece, special=False / True) joined, the same "
            "for every pre-type. with_special: Llama.tokenize(text, add_bos=True, special=True)."
        ),
        "pre_types": PRE_TYPES,
        "with_special": {"texts": WITH_SPECIAL, "ids": with_special},
        "cases": [
            {"text": text, "decoded": decoded[PRE_TYPES[0]][i], "decoded_special": decoded_special[PRE_TYPES[0]][i],
             "ids": {pre: ids[pre][i] for pre in PRE_TYPES}}
            for i, text in enumerate(cases)
        ],
    }
    # One case per line: small, and a regenerated file diffs line by line.
    with open(out, "w", encoding="utf-8") as f:
        f.write("{\n")
        for key in ["how", "pre_types", "with_special"]:
            f.write(f"{json.dumps(key)}: {json.dumps(document[key], ensure_ascii=False)},\n")
        f.write('"cases": [\n')
        f.write(",\n".join(json.dumps(case, ensure_ascii=False) for case in document["cases"]))
        f.write("\n]\n}\n")
    print(f"{len(cases)} cases x {len(PRE_TYPES)} pre-types written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
