"""Times llama.cpp (through llama-cpp-python) the way `kiln bench` times kiln: prefill of a
512-token prompt, then 128 greedy decode steps after a short prompt. Prints one JSON line.

Times are wall-clock around the calls, like kiln's: each decode step feeds a token and reads back
the logits to pick the next one (about 30 µs of Python per step). Token ids are the same synthetic ones kiln bench uses: speed does not depend on them.

usage: python llama_cpp_bench.py MODEL.gguf THREADS [PREFILL_TOKENS DECODE_TOKENS]
"""

import json
import resource
import sys
import time

import llama_cpp
import numpy as np


def prompt_ids(n: int, vocab: int) -> list[int]:
    # The same formula as kiln's bench: spread over the vocabulary, no special tokens at 0..16.
    return [17 + (i * 7919) % (vocab - 17) for i in range(n)]


def cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return "amx_tile" in f.read()
    except OSError:
        return False


def turn_off_extra_buffer_types() -> None:
    # On some Intel machines with AMX, llama.cpp's AMX buffer type crashes on quantized files; its
    # server has --no-repack for that. The Python binding does not expose `use_extra_bufts`, so
    # the default model parameters it starts from are patched.
    defaults = llama_cpp.llama_cpp.llama_model_default_params

    def without_extra_bufts():
        params = defaults()
        params.use_extra_bufts = False
        return params

    llama_cpp.llama_cpp.llama_model_default_params = without_extra_bufts


def main() -> None:
    model, threads = sys.argv[1], int(sys.argv[2])
    extra_bufts = not cpu_has_amx()
    if not extra_bufts:
        turn_off_extra_buffer_types()
    prefill_tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 512
    decode_tokens = int(sys.argv[4]) if len(sys.argv) > 4 else 128
    llm = llama_cpp.Llama(
        model_path=model,
        n_ctx=prefill_tokens + decode_tokens + 64,
        n_batch=prefill_tokens,
        n_ubatch=prefill_tokens,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    vocab = llm.n_vocab()

    # Warm-up: one small prefill and a few decode steps, as kiln bench does.
    llm.reset()
    llm.eval(prompt_ids(16, vocab))
    for _ in range(4):
        llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])

    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt_ids(prefill_tokens, vocab))
    prefill_s = time.perf_counter() - start

    llm.reset()
    llm.eval(prompt_ids(8, vocab))
    start = time.perf_counter()
    for _ in range(decode_tokens):
        llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
    decode_s = time.perf_counter() - start

    print(json.dumps({
        "engine": "llama.cpp",
        "model": model,
        "threads": threads,
        "extra_buffer_types": extra_bufts,
        "prefill_tokens": prefill_tokens,
        "prefill_tok_s": prefill_tokens / prefill_s,
        "decode_tokens": decode_tokens,
        "decode_tok_s": decode_tokens / decode_s,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }))


if __name__ == "__main__":
    main()
