#!/usr/bin/env python3
"""kiln against llama.cpp on the same model files, the same threads, in one run.

For the default model (SmolLM2-135M-Instruct) as the GGUF files people run: an f16 GGUF (written
once from the original file by write_f16_gguf.py, the same values as kiln's converted directory),
the original Q4_1 GGUF, and the f16 file quantized by llama.cpp's own quantizer to Q4_K_M, Q5_K_M,
Q6_K and Q8_0 (tools/reference/make_kquant_ggufs.py), it runs `kiln bench` and
benches/llama_cpp_bench.py alternately (the order flips every round, so drift in machine load hits
both), takes the median of each metric over the rounds, and prints a markdown table with the
ratios kiln / llama.cpp.

llama.cpp comes from the `llama-cpp-python` package, built by pip from source for this CPU into
.venv-llama/ by tools/setup-llama-cpp on first use (minutes; pip caches the wheel).

usage: python3 benches/compare_llama_cpp.py [--threads N] [--rounds R] [--models f16,q4_k_m,...] [--json OUT]
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-llama"
MODELS = ["f16", "q4_1", "q4_k_m", "q5_k_m", "q6_k", "q8_0"]


def log(message: str) -> None:
    print(f"[compare] {message}", file=sys.stderr, flush=True)


def venv_python() -> Path:
    result = subprocess.run([str(ROOT / "tools" / "setup-llama-cpp")], check=True, stdout=subprocess.PIPE, text=True)
    return Path(result.stdout.strip().splitlines()[-1])


def kiln_home() -> Path:
    home = os.environ.get("KILN_HOME")
    return Path(home) if home else Path.home() / ".cache" / "kiln"


def build_kiln() -> Path:
    log("building kiln (release)")
    result = subprocess.run(
        ["cargo", "build", "--release", "--message-format=json-render-diagnostics"],
        cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True,
    )
    for line in result.stdout.splitlines():
        message = json.loads(line)
        if message.get("reason") == "compiler-artifact" and message.get("executable") and message["target"]["name"] == "kiln":
            # A copy, so another build into a shared target directory cannot swap it mid-run.
            snapshot = VENV / "kiln"
            shutil.copy2(message["executable"], snapshot)
            return snapshot
    raise SystemExit("cargo did not report the kiln binary")


def models(kiln: Path, python: Path, wanted: list[str]) -> list[tuple[str, Path]]:
    # `kiln bench --default-gguf` pulls the original file when it is missing; a tiny run does it.
    q4_1 = kiln_home() / "gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not q4_1.exists():
        log("pulling the default model's GGUF")
        subprocess.run([str(kiln), "bench", "--default-gguf", "--prompt-tokens", "1", "--decode-tokens", "1"],
                       check=True, stdout=subprocess.DEVNULL)
    # The f16 copy and llama.cpp's quantizations of it (kept: the tests use the same files).
    made = subprocess.run(
        [str(python), str(ROOT / "tools" / "reference" / "make_kquant_ggufs.py"), str(q4_1),
         str(kiln_home() / "gguf" / "quantized")],
        check=True, stdout=subprocess.PIPE, text=True,
    ).stdout
    files = {"q4_1": q4_1}
    for line in made.splitlines():
        name, path = line.split(" ", 1)
        files[name.lower()] = Path(path)
    files["f16"] = files["q4_k_m"].with_name("SmolLM2-135M-Instruct.F16.gguf")
    return [(name, files[name]) for name in wanted]


def run_json(command: list[str]) -> dict:
    result = subprocess.run(command, check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--models", default=",".join(MODELS), help=f"which files, of {','.join(MODELS)}")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    args = parser.parse_args()

    python = venv_python()
    kiln = build_kiln()
    wanted = [m.strip().lower() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {MODELS}")
    cases = models(kiln, python, wanted)
    runs = {(precision, engine): [] for precision, _ in cases for engine in ("kiln", "llama.cpp")}
    loads = [load()]
    for round_index in range(args.rounds):
        for precision, path in cases:
            commands = {
                "kiln": [str(kiln), "--threads", str(args.threads), "bench", "--model", str(path), "--json"],
                "llama.cpp": [str(python), str(ROOT / "benches" / "llama_cpp_bench.py"), str(path), str(args.threads)],
            }
            order = ["kiln", "llama.cpp"] if round_index % 2 == 0 else ["llama.cpp", "kiln"]
            for engine in order:
                result = run_json(commands[engine])
                runs[(precision, engine)].append(result)
                log(f"round {round_index + 1} {precision:6} {engine:9} prefill {result['prefill_tok_s']:8.1f} tok/s"
                    f"  decode {result['decode_tok_s']:7.1f} tok/s")
        loads.append(load())

    def median(precision: str, engine: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[(precision, engine)] if r.get(key) is not None)

    date = datetime.date.today().isoformat()
    print(f"{date}, {machine()}, {args.threads} threads, {args.rounds} alternating rounds (median), "
          f"load averages (1/5/15 min) before {loads[0]}, after {loads[-1]}")
    print()
    print("| model | kiln prefill tok/s | llama.cpp prefill tok/s | ratio | kiln decode tok/s | "
          "llama.cpp decode tok/s | ratio | kiln peak MiB | llama.cpp peak MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for precision, path in cases:
        k_pre, l_pre = median(precision, "kiln", "prefill_tok_s"), median(precision, "llama.cpp", "prefill_tok_s")
        k_dec, l_dec = median(precision, "kiln", "decode_tok_s"), median(precision, "llama.cpp", "decode_tok_s")
        k_mem, l_mem = median(precision, "kiln", "peak_rss_mib"), median(precision, "llama.cpp", "peak_rss_mib")
        print(f"| SmolLM2-135M {precision} ({path.name}) | {k_pre:.0f} | {l_pre:.0f} | {k_pre / l_pre:.2f} | "
              f"{k_dec:.1f} | {l_dec:.1f} | {k_dec / l_dec:.2f} | {k_mem:.0f} | {l_mem:.0f} |")
    if args.json:
        args.json.write_text(json.dumps({f"{p}/{e}": r for (p, e), r in runs.items()}, indent=1))


if __name__ == "__main__":
    main()
