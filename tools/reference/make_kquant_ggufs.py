"""Writes the default model's K-quant GGUFs with llama.cpp's own quantizer.

The default model ships as a Q4_1 GGUF; its f16 copy (benches/write_f16_gguf.py: every tensor
dequantized, so the same values kiln's converted directory holds) is quantized by
`llama_model_quantize` (llama-cpp-python's binding of llama.cpp's quantizer, the code behind
`llama-quantize`) to Q4_K_M, Q5_K_M, Q6_K and Q8_0, as a user would. Files already present are
kept (each appears by rename, so a present file is complete).

usage (in a python that has llama-cpp-python and gguf, tools/setup-llama-cpp makes one):
    python tools/reference/make_kquant_ggufs.py SOURCE.gguf OUT_DIR
prints one line per file: `<type> <path>`.
"""

import os
import sys

import llama_cpp

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "benches"))
import write_f16_gguf  # noqa: E402

TYPES = {
    "Q4_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    "Q5_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M,
    "Q6_K": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K,
    "Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
}


def quantize(f16_path: str, out_path: str, ftype: int) -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 2
    partial = out_path + f".{os.getpid()}.partial"
    status = llama_cpp.llama_model_quantize(f16_path.encode(), partial.encode(), params)
    if status != 0:
        raise SystemExit(f"llama_model_quantize to {out_path} failed with status {status}")
    os.replace(partial, out_path)


def main(source: str, out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.basename(source).split(".")[0]
    f16_path = os.path.join(out_dir, f"{stem}.F16.gguf")
    if not os.path.exists(f16_path):
        write_f16_gguf.main(source, f16_path)
    for name, ftype in TYPES.items():
        out_path = os.path.join(out_dir, f"{stem}.{name}.gguf")
        if not os.path.exists(out_path):
            quantize(f16_path, out_path, ftype)
        print(name, out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
