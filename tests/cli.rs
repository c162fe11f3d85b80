//! The `kiln` binary as a user runs it: pull, generate (raw and chat), help, and a clear error
//! for a bad model path. Only generated text goes to stdout.

use std::process::Command;

fn kiln(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).env("KILN_LOG", "warn").output().expect("running kiln")
}

#[test]
fn pull_prints_the_model_directory_last() {
    let out = kiln(&["pull"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let dir = stdout.lines().last().expect("a line");
    assert!(std::path::Path::new(dir).join("config.json").exists(), "{dir}");
}

#[test]
fn generate_prints_only_the_answer() {
    let out = kiln(&[
        "generate",
        "--chat",
        "--prompt",
        "What is the capital of France? Answer in one sentence.",
        "--max-tokens",
        "30",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "The capital of France is Paris.\n");
    let out = kiln(&["generate", "--prompt", "The capital of France is", "--max-tokens", "5"]);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), " Paris.\n\nThe\n");
    // Stop strings end the text as they do in the API, and are not printed.
    let out = kiln(&["generate", "--prompt", "The capital of France is", "--max-tokens", "5", "--stop", "."]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), " Paris\n");
    // The original quantized GGUF, run directly (issue 6), gives the same answer here.
    let out = kiln(&[
        "--original-weights",
        "generate",
        "--chat",
        "--prompt",
        "What is the capital of France? Answer in one sentence.",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "The capital of France is Paris.\n");
    // Sampled output is reproducible with a seed.
    let sampled = |seed: &str| {
        kiln(&[
            "generate",
            "--prompt",
            "Once upon a time",
            "--max-tokens",
            "12",
            "--temperature",
            "0.9",
            "--seed",
            seed,
        ])
        .stdout
    };
    assert_eq!(sampled("5"), sampled("5"));
}

#[test]
fn help_and_errors() {
    let help = String::from_utf8(kiln(&["--help"]).stdout).unwrap();
    for command in ["pull", "generate", "serve"] {
        assert!(help.contains(command), "{help}");
    }
    let out = kiln(&["generate", "--model", "/nonexistent/model", "--prompt", "x"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("/nonexistent/model") && !stderr.contains("panicked"), "{stderr}");
    // Without a GPU (or a CUDA build), asking for CUDA is a clear error, never a panic.
    let out = kiln(&["generate", "--backend", "cuda", "--prompt", "x", "--max-tokens", "1"]);
    if !out.status.success() {
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.contains("--backend cuda:") && !stderr.contains("panicked"), "{stderr}");
    }
    let out = kiln(&["generate", "--prompt", "x", "--temperature=-1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("--temperature"));
}

#[test]
fn bench_says_it_measures_the_cpu_only() {
    let out = kiln(&["--backend", "cuda", "bench"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("measures the CPU backend only") && stderr.contains("gpu_bench"), "{stderr}");
}

#[test]
fn bench_concurrency_reports_its_share_of_the_measured_peak() {
    let out = kiln(&[
        "bench",
        "--random-weights",
        "--model-geometry",
        "smollm2-135m",
        "--concurrency",
        "2",
        "--decode-tokens",
        "4",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let concurrency = &report["concurrency"];
    // SmolLM2-135M: about 2 × 135M multiply-adds per token, plus attention.
    let flops = concurrency["flops_per_token"].as_f64().unwrap();
    assert!((0.25e9..0.30e9).contains(&flops), "{flops}");
    let f32_share = concurrency["share_of_f32_peak"].as_f64().unwrap();
    let int8_share = concurrency["share_of_int8_peak"].as_f64().unwrap();
    assert!(f32_share > 0.0 && f32_share < 1.0 && int8_share < f32_share, "{concurrency}");
    let peak = &concurrency["peak"];
    assert!(peak["int8_ops"].as_f64().unwrap() > peak["f32_flops"].as_f64().unwrap(), "{peak}");
}

#[test]
fn tensor_parallel_ranks_give_the_same_answer_or_a_clear_refusal() {
    let question = "What is the capital of France? Answer in one sentence.";
    let out = kiln(&["--backend", "cpu", "--tensor-parallel", "3", "generate", "--chat", "--prompt", question]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "The capital of France is Paris.\n");
    let out = kiln(&["--backend", "cpu", "--tensor-parallel", "2", "generate", "--prompt", "Hi"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--tensor-parallel 2 does not divide the model's attention heads (9)"), "{stderr}");
    let out = kiln(&["--tensor-parallel", "2", "bench"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("`kiln bench` measures one rank"));
    // `--backend cuda` takes the NCCL path, whose start-up checks count GPUs: the emulator has one.
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["--backend", "cuda", "--tensor-parallel", "3", "generate", "--prompt", "Hi", "--max-tokens", "1"])
        .env("KILN_LOG", "warn")
        .env("KILN_CUDA_DRIVER", "emulator")
        .output()
        .expect("running kiln");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = if cfg!(feature = "cuda") {
        "--tensor-parallel 3 puts each rank on a GPU of its own, and the CUDA driver counts 1"
    } else {
        "built without CUDA"
    };
    assert!(stderr.contains(expected) && !stderr.contains("panicked"), "{stderr}");
}
