"""llama.cpp side of the reference data: tokenization, detokenization and greedy generation.

Runs in a python that has llama-cpp-python (no gguf/transformers needed). Reads a JSON request on
stdin, writes a JSON answer on stdout; make_greedy.py and make_tokenizer.py drive it.
  {"op": "tokenize", "gguf": PATH, "cases": [{"text": str, "special": bool, "add_bos": bool (default false)}, ...]}
  {"op": "detokenize", "gguf": PATH, "token_lists": [[id, ...], ...]}   (special tokens skipped)
  {"op": "greedy", "gguf": PATH, "max_new_tokens": N, "stop_ids": [...], "logits_dir": DIR (optional),
   "f32_kv_cache": bool (default false: llama.cpp's default f16 KV cache), "cases": [{"name": str, "text": str, "special": bool}, ...]}
"greedy" answers each step's top-1 minus top-2 logit (`step_margins`) and, with a logits_dir, also
saves each case's per-step logits as DIR/<name>.npy ([n_steps, vocab], float32).
"""

import json
import os
import sys

import llama_cpp
import numpy as np


def tokenize_cases(request):
    llm = llama_cpp.Llama(request["gguf"], vocab_only=True, verbose=False)
    results = []
    for case in request["cases"]:
        ids = llm.tokenize(case["text"].encode("utf-8"), add_bos=case.get("add_bos", False), special=case["special"])
        # special=True renders control tokens as their text, so the round trip is exact.
        decoded = llm.detokenize(ids, special=case["special"])
        results.append({
            "ids": ids,
            "decoded": decoded.decode("utf-8", errors="replace"),
            "decoded_is_utf8": _is_utf8(decoded),
            "pieces": [llm.detokenize([i], special=True).decode("utf-8", errors="replace") for i in ids],
            # Each token's piece (llama_token_to_piece) joined as bytes, with special=False and
            # special=True: what llama.cpp streams. Llama.detokenize of a whole list also drops a
            # leading space after BOS, a llama-cpp-python rule that llama.cpp does not have.
            "joined_pieces": _joined_pieces(llm, ids, special=False),
            "joined_pieces_special": _joined_pieces(llm, ids, special=True),
        })
    return results


def _joined_pieces(llm, ids, special):
    return b"".join(llm.detokenize([i], special=special) for i in ids).decode("utf-8", errors="replace")


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def detokenize_lists(request):
    llm = llama_cpp.Llama(request["gguf"], vocab_only=True, verbose=False)
    return [llm.detokenize(ids, special=False).decode("utf-8", errors="replace") for ids in request["token_lists"]]


def greedy_cases(request):
    kv_types = {"type_k": 0, "type_v": 0} if request.get("f32_kv_cache") else {}  # 0 = GGML_TYPE_F32
    llm = llama_cpp.Llama(
        request["gguf"], n_ctx=512, n_batch=512, n_threads=2, n_threads_batch=2,
        logits_all=True, verbose=False, **kv_types,
    )
    stop_ids = set(request["stop_ids"])
    if request.get("logits_dir"):
        os.makedirs(request["logits_dir"], exist_ok=True)
    results = []
    for case in request["cases"]:
        prompt_ids = llm.tokenize(case["text"].encode("utf-8"), add_bos=False, special=case["special"])
        llm.reset()
        llm.eval(prompt_ids)
        generated, step_logits, margins = [], [], []
        for _ in range(request["max_new_tokens"]):
            logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            next_id = int(np.argmax(logits))
            generated.append(next_id)
            step_logits.append(logits)
            top2 = np.partition(logits, -2)[-2:]
            margins.append(float(top2[1] - top2[0]))
            if next_id in stop_ids:
                break
            llm.eval([next_id])
        if request.get("logits_dir"):
            np.save(os.path.join(request["logits_dir"], case["name"] + ".npy"), np.stack(step_logits))
        results.append({
            "prompt_ids": prompt_ids,
            "generated_ids": generated,
            "step_margins": margins,
            "generated_text": llm.detokenize(generated, special=False).decode("utf-8", errors="replace"),
        })
    return results


def main():
    request = json.load(sys.stdin)
    ops = {"tokenize": tokenize_cases, "detokenize": detokenize_lists, "greedy": greedy_cases}
    answer = {
        "llama_cpp_python_version": llama_cpp.__version__,
        "results": ops[request["op"]](request),
    }
    json.dump(answer, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
