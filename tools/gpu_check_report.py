"""Turns gpu_bench's JSON lines into the markdown table of docs/perf.md's GPU section, measuring
cuBLAS (through the machine's PyTorch) on the same matrix shapes for comparison.

usage: python3 tools/gpu_check_report.py OUT_DIR TESTS_FAILED
"""
import datetime
import json
import re
import subprocess
import sys


def read(path):
    try:
        return [json.loads(line) for line in open(path) if line.startswith("{")]
    except FileNotFoundError:
        return []


def cublas_ms(m, n, k):
    """Median of three means of 20 torch.matmul calls (f16 in, f16 out), after warm-up."""
    import torch

    a = torch.randn(m, k, device="cuda", dtype=torch.float16)
    b = torch.randn(n, k, device="cuda", dtype=torch.float16)
    for _ in range(3):
        torch.matmul(a, b.t())
    means = []
    for _ in range(3):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(20):
            torch.matmul(a, b.t())
        stop.record()
        torch.cuda.synchronize()
        means.append(start.elapsed_time(stop) / 20)
    return sorted(means)[1]


def main():
    out, failed = sys.argv[1], sys.argv[2] != "0"
    kernels = read(f"{out}/kernels.jsonl")
    decode = read(f"{out}/decode.jsonl")
    device = next((k for k in kernels if k["kind"] == "device"), {"name": "unknown GPU"})
    copy = next((k["gbs"] for k in kernels + decode if k["kind"] == "copy"), None)
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    except OSError:
        driver = "?"
    print(f"### {datetime.date.today()}: {device['name']} (driver {driver}), `tools/gpu-check run`")
    print()
    print(f"Tests: {'FAILED' if failed else 'passed'}. Device-to-device copy: {copy} GB/s (read + write).")
    print()
    print("| kernel | shape | time µs | GB/s | TFLOP/s | of copy BW | cuBLAS TFLOP/s | of cuBLAS |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for k in kernels:
        if k["kind"] != "kernel":
            continue
        cublas = frac_cublas = ""
        shape = re.search(r"m=(\d+) n=(\d+) k=(\d+)", k["shape"])
        if shape:
            m, n, kk = map(int, shape.groups())
            try:
                ms = cublas_ms(m, n, kk)
                tflops = 2 * m * n * kk / ms / 1e9
                cublas = f"{tflops:.1f}"
                frac_cublas = f"{ms / k['ms']:.2f}"
            except Exception as error:  # no torch or no GPU: leave the column empty
                cublas = f"n/a ({type(error).__name__})"
        of_copy = f"{k['gbs'] / copy:.2f}" if copy else ""
        print(f"| {k['kernel']} | {k['shape']} | {k['ms'] * 1e3:.1f} | {k['gbs']:.0f} | {k['tflops']:.1f} | {of_copy} | {cublas} | {frac_cublas} |")
    print()
    print("Decode, Llama-2-7B geometry, f16, seeded device-side weights, context 512, greedy sampling on the GPU:")
    print()
    print("| batch | ms/step | tokens/s | floor ms (weights / copy BW) | fraction of floor |")
    print("|---:|---:|---:|---:|---:|")
    for d in decode:
        if d["kind"] == "decode":
            print(f"| {d['batch']} | {d['ms_per_step']:.2f} | {d['tokens_per_s']:.0f} | {d['floor_ms']:.2f} | {d['fraction']:.2f} |")
    prefill = [d for d in decode if d["kind"] == "prefill"]
    if prefill:
        print()
        print("Prefill, one prompt per step, same model (matrix-product TFLOP/s; attention not counted):")
        print()
        print("| tokens | ms | tokens/s | TFLOP/s |")
        print("|---:|---:|---:|---:|")
        for d in prefill:
            print(f"| {d['tokens']} | {d['ms']:.1f} | {d['tokens_per_s']:.0f} | {d['tflops']:.1f} |")


if __name__ == "__main__":
    main()
