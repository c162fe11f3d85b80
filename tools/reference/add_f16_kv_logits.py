#!/usr/bin/env python3
"""Adds `first_step_top_logits_f16_weights_f16_kv` to an existing tests/data/smollm2_greedy.json:
for each case, the numpy reference's first-step logits of the same 20 ids with f16-rounded weights
and an f16 KV cache (what kiln's CPU backend computes), so the file need not be regenerated whole
(make_greedy.py writes the same field with the same function when it is).

    python tools/reference/add_f16_kv_logits.py SmolLM2-135M-Instruct.Q4_1.gguf [tests/data/smollm2_greedy.json]
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama_numpy import LlamaModel, first_step_logits  # noqa: E402


def main(argv):
    gguf_path = argv[1]
    path = argv[2] if len(argv) > 2 else os.path.join(os.path.dirname(__file__), "../../tests/data/smollm2_greedy.json")
    with open(path) as f:
        golden = json.load(f)
    model = LlamaModel(gguf_path, "f16", "interleaved", kv_dtype="f16")
    for case in golden["cases"]:
        ids = [pair[0] for pair in case["first_step_top_logits"]]
        case["first_step_top_logits_f16_weights_f16_kv"] = first_step_logits(model, case["prompt_ids"], ids)
        worst = max(abs(a[1] - b[1]) for a, b in zip(case["first_step_top_logits_f16_weights_f16_kv"],
                                                     case["first_step_top_logits_f16_weights"]))
        print(f"{case['name']}: max |f16 KV - f32 KV| over the top ids {worst:.4f}", file=sys.stderr)
    with open(path, "w") as f:
        json.dump(golden, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv)
