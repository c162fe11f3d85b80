//! The CUDA backend end to end against the CPU backend on seeded random weights: the same plans
//! (prefill of several sequences, chunked prefill, decode steps through the captured graphs)
//! give the same logits within the activation dtype's tolerance; graphs and plain launches agree;
//! device-generated weights equal the host ones; GPU greedy sampling returns the argmax.
//! Skips with a message where there is no GPU.
#![cfg(feature = "cuda")]

mod sampling_support;

use kiln::backend::cpu::CpuBackend;
use kiln::backend::cuda::backend::WeightSource;
use kiln::backend::cuda::testing::cuda_for_test;
use kiln::backend::cuda::{CudaBackend, CudaOptions, Dtype};
use kiln::backend::plan::{PlanLimits, StepPlan};
use kiln::backend::{Backend, KvLayout};
use kiln::engine::sampler::{argmax, SamplingParams};
use kiln::model::config::ModelConfig;
use kiln::model::random::random_llama_weights;
use kiln::model::safetensors_dir::WeightDtype;
use sampling_support::sample_row;

const LAYOUT: KvLayout = KvLayout { block_size: 16, num_blocks: 64 };
const LIMITS: PlanLimits = PlanLimits { max_batch_tokens: 128, max_seqs: 8, max_blocks_per_seq: 16 };

/// Small, but with the kernels' real constraints: GQA, head_dim 64 or 128, sizes multiples of 8.
fn config(head_dim: usize) -> ModelConfig {
    config_with_layers(head_dim, 3)
}

fn config_with_layers(head_dim: usize, layers: usize) -> ModelConfig {
    config_with(head_dim, layers, 1000)
}

/// `layers` may be 0 (embedding, final norm and head alone), which config.json cannot say.
fn config_with(head_dim: usize, layers: usize, vocab: usize) -> ModelConfig {
    let json = format!(
        r#"{{"architectures":["LlamaForCausalLM"],"hidden_size":256,"intermediate_size":688,"num_hidden_layers":{},
        "num_attention_heads":{},"num_key_value_heads":2,"head_dim":{head_dim},"vocab_size":{vocab},"rms_norm_eps":1e-5,
        "max_position_embeddings":256,"rope_theta":10000.0,"tie_word_embeddings":false}}"#,
        layers.max(1),
        512 / head_dim
    );
    let mut config = ModelConfig::from_json(&json, std::path::Path::new("cuda_backend_test")).unwrap();
    config.num_layers = layers;
    config
}

fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32).map(|i| (i * 37 + seed * 101 + 11) % 1000).collect()
}

/// ‖gpu − cpu‖ / ‖cpu‖ and the largest absolute difference.
fn errors(gpu: &[f32], cpu: &[f32]) -> (f64, f32) {
    assert!(gpu.iter().all(|v| v.is_finite()), "GPU logits contain NaN or infinity");
    let diff: f64 = gpu.iter().zip(cpu).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt();
    let norm: f64 = cpu.iter().map(|b| (*b as f64).powi(2)).sum::<f64>().sqrt();
    let max = gpu.iter().zip(cpu).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    (diff / norm, max)
}

/// Relative error bound of whole-model logits with activations rounded to the dtype each layer.
fn model_tolerance(dtype: Dtype) -> f64 {
    if dtype == Dtype::F16 {
        1e-2
    } else {
        4e-2
    }
}

/// Runs the same sequence of plans on both backends and compares every step's logits (a step
/// without logit rows still runs: later steps read the KV cache it wrote).
fn compare_steps(cpu: &mut CpuBackend, gpu: &mut CudaBackend, plans: &[StepPlan], dtype: Dtype, label: &str) {
    let vocab = cpu.config().vocab_size;
    for (i, plan) in plans.iter().enumerate() {
        let rows = plan.num_logits();
        let mut expected = vec![f32::NAN; rows * vocab];
        let mut got = vec![f32::NAN; rows * vocab];
        cpu.execute(plan, &mut expected).unwrap();
        gpu.execute(plan, &mut got).unwrap();
        if rows == 0 {
            eprintln!("{label} step {i}: {} tokens, no logit rows", plan.num_tokens());
            continue;
        }
        let (relative, max) = errors(&got, &expected);
        eprintln!(
            "{label} step {i}: {} tokens, {rows} logit rows, relative error {relative:.2e}, max abs {max:.3e}",
            plan.num_tokens()
        );
        assert!(relative < model_tolerance(dtype), "{label} step {i}: relative error {relative:.3e}");
    }
}

/// Prefill of three prompts, a chunked prefill continuing one of them (first a chunk that alone
/// makes a step without logit rows, as a long prompt on an idle server does), then decode steps.
fn plans() -> Vec<StepPlan> {
    let tables: Vec<Vec<u32>> = vec![(0..16).collect(), (16..32).collect(), (40..56).collect()];
    let prompts = [prompt(1, 37), prompt(2, 5), prompt(3, 70)];
    let mut plans = Vec::new();
    let mut plan = StepPlan::new(LIMITS, LAYOUT.block_size);
    plan.push_sequence(&prompts[0], 0, &tables[0], true).unwrap();
    plan.push_sequence(&prompts[1], 0, &tables[1], true).unwrap();
    plan.push_sequence(&prompts[2][..30], 0, &tables[2], false).unwrap();
    plans.push(plan.clone());
    plan.clear();
    plan.push_sequence(&prompts[2][30..40], 30, &tables[2], false).unwrap();
    plans.push(plan.clone());
    plan.clear();
    plan.push_sequence(&prompts[2][40..], 40, &tables[2], true).unwrap();
    plans.push(plan.clone());
    let mut lengths = [37usize, 5, 70];
    for step in 0..5 {
        plan.clear();
        // Decode batches of 3, then 2 (padding inside a bucket), in a rotating order.
        let active = if step < 3 { 3 } else { 2 };
        for s in 0..active {
            let s = (s + step) % 3;
            plan.push_sequence(&[(step * 7 + s) as u32 % 1000], lengths[s], &tables[s], true).unwrap();
            lengths[s] += 1;
        }
        plans.push(plan.clone());
    }
    plans
}

#[test]
fn gpu_logits_match_cpu_backend() {
    cuda_for_test("gpu_logits_match_cpu_backend");
    // 0 layers checks embedding, final norm and head alone; 1 layer adds one attention and MLP
    // block: when the 3-layer model fails, the first failing depth says where to look.
    for layers in [0, 1, 3] {
        for head_dim in [64, 128] {
            for (dtype, weight_dtype) in [(Dtype::F16, WeightDtype::F16), (Dtype::Bf16, WeightDtype::Bf16)] {
                let config = config_with_layers(head_dim, layers);
                let weights = random_llama_weights(&config, 11, weight_dtype);
                let options = CudaOptions { dtype, graphs: true };
                let mut gpu =
                    CudaBackend::new(config.clone(), WeightSource::Host(&weights), LAYOUT, LIMITS, options).unwrap();
                let mut cpu = CpuBackend::new(config, weights, LAYOUT, LIMITS);
                let label = format!("{dtype:?} head_dim {head_dim} layers {layers}");
                compare_steps(&mut cpu, &mut gpu, &plans(), dtype, &label);
            }
        }
    }
}

#[test]
fn an_odd_vocabulary_matches_the_cpu_backend() {
    cuda_for_test("an_odd_vocabulary_matches_the_cpu_backend");
    // 32001-token fine-tunes exist: the head's GEMM stores its last column alone.
    let config = config_with(64, 1, 1001);
    let weights = random_llama_weights(&config, 17, WeightDtype::F16);
    let options = CudaOptions { dtype: Dtype::F16, graphs: true };
    let mut gpu = CudaBackend::new(config.clone(), WeightSource::Host(&weights), LAYOUT, LIMITS, options).unwrap();
    let mut cpu = CpuBackend::new(config, weights, LAYOUT, LIMITS);
    compare_steps(&mut cpu, &mut gpu, &plans(), Dtype::F16, "vocabulary 1001");
}

#[test]
fn copied_kv_blocks_match_the_cpu_backend() {
    cuda_for_test("copied_kv_blocks_match_the_cpu_backend");
    // Sequence A fills blocks 0 and 1 (21 tokens); B shares them, and before B writes into the
    // half-full block 1 the step copies it to block 7 (the scheduler's copy-on-write).
    let config = config(64);
    let weights = random_llama_weights(&config, 13, WeightDtype::F16);
    let options = CudaOptions { dtype: Dtype::F16, graphs: true };
    let mut gpu = CudaBackend::new(config.clone(), WeightSource::Host(&weights), LAYOUT, LIMITS, options).unwrap();
    let mut cpu = CpuBackend::new(config, weights, LAYOUT, LIMITS);
    let mut prefill = StepPlan::new(LIMITS, LAYOUT.block_size);
    prefill.push_sequence(&prompt(4, 21), 0, &[0, 1], true).unwrap();
    let mut fork = StepPlan::new(LIMITS, LAYOUT.block_size);
    fork.block_copies.push((1, 7));
    fork.push_sequence(&[42], 21, &[0, 7], true).unwrap();
    fork.push_sequence(&[43], 21, &[0, 1], true).unwrap();
    compare_steps(&mut cpu, &mut gpu, &[prefill, fork], Dtype::F16, "copy-on-write");
}

#[test]
fn graphs_launches_and_device_weights_agree() {
    cuda_for_test("graphs_launches_and_device_weights_agree");
    let config = config(128);
    let dtype = Dtype::F16;
    let host = random_llama_weights(&config, 5, WeightDtype::F16);
    let mut uploaded = CudaBackend::new(
        config.clone(),
        WeightSource::Host(&host),
        LAYOUT,
        LIMITS,
        CudaOptions { dtype, graphs: true },
    )
    .unwrap();
    let mut generated = CudaBackend::new(
        config.clone(),
        WeightSource::RandomSeed(5),
        LAYOUT,
        LIMITS,
        CudaOptions { dtype, graphs: false },
    )
    .unwrap();
    for (i, plan) in plans().iter().enumerate() {
        let mut a = vec![f32::NAN; plan.num_logits() * 1000];
        let mut b = vec![f32::NAN; plan.num_logits() * 1000];
        uploaded.execute(plan, &mut a).unwrap();
        generated.execute(plan, &mut b).unwrap();
        // Same weights bit for bit and the same kernels: a captured graph replays exactly what
        // plain launches compute.
        assert_eq!(a, b, "step {i}: graph replay on uploaded weights vs launches on device-generated weights");
    }
}

#[test]
fn gpu_greedy_sampling_returns_the_argmax() {
    cuda_for_test("gpu_greedy_sampling_returns_the_argmax");
    let config = config(64);
    let weights = random_llama_weights(&config, 3, WeightDtype::F16);
    let mut gpu = CudaBackend::new(
        config,
        WeightSource::Host(&weights),
        LAYOUT,
        LIMITS,
        CudaOptions { dtype: Dtype::F16, graphs: true },
    )
    .unwrap();
    let greedy = SamplingParams::greedy();
    for plan in plans() {
        let mut logits = vec![f32::NAN; plan.num_logits() * 1000];
        gpu.execute(&plan, &mut logits).unwrap();
        let rows: Vec<_> = (0..plan.num_logits()).map(|_| sample_row(&greedy, 0.0, 0, 0, None, None)).collect();
        let tokens = gpu.execute_and_sample_rows(&plan, &rows, &[], &[]).unwrap().tokens.to_vec();
        let expected: Vec<u32> = logits.chunks(1000).map(argmax).collect();
        assert_eq!(tokens, expected);
    }
}

#[test]
fn a_model_too_large_for_the_gpu_is_a_clear_error() {
    cuda_for_test("a_model_too_large_for_the_gpu_is_a_clear_error");
    let huge = ModelConfig::from_json(
        r#"{"architectures":["LlamaForCausalLM"],"hidden_size":65536,"intermediate_size":262144,"num_hidden_layers":200,
        "num_attention_heads":512,"vocab_size":32000}"#,
        std::path::Path::new("huge"),
    )
    .unwrap();
    let err = CudaBackend::new(
        huge,
        WeightSource::RandomSeed(1),
        LAYOUT,
        LIMITS,
        CudaOptions { dtype: Dtype::F16, graphs: true },
    )
    .err()
    .expect("does not fit");
    assert!(err.to_string().contains("GiB of GPU memory"), "{err}");
}

#[test]
fn without_a_driver_the_backend_reports_why() {
    // The driver is chosen once per process, so the check runs in a child of this test binary
    // whose only driver is a library that does not exist.
    const CHILD: &str = "KILN_TEST_CHILD_WITHOUT_DRIVER";
    if std::env::var_os(CHILD).is_none() {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "without_a_driver_the_backend_reports_why", "--nocapture"])
            .env(CHILD, "1")
            .env("KILN_CUDA_DRIVER", "emulator")
            .env("KILN_CUDA_EMULATOR_LIB", "/nonexistent/libkiln_cuda_emu.so")
            .env_remove("KILN_REQUIRE_GPU")
            .status()
            .unwrap();
        assert!(status.success(), "the child process failed: {status}");
        return;
    }
    let config = config(64);
    let err = CudaBackend::new(
        config,
        WeightSource::RandomSeed(1),
        LAYOUT,
        LIMITS,
        CudaOptions { dtype: Dtype::F16, graphs: true },
    )
    .err()
    .expect("no driver here");
    assert!(err.to_string().starts_with("CUDA is not available"), "{err}");
    assert!(err.to_string().contains("/nonexistent/libkiln_cuda_emu.so"), "{err}");
}
