//! The CUDA backend end to end against the CPU backend on seeded random weights: the same plans
//! (prefill of several sequences, chunked prefill, decode steps through the captured graphs)
//! give the same logits within the activation dtype's tolerance; graphs and plain launches agree;
//! device-generated weights equal the host ones; GPU greedy sampling returns the argmax.
//! Skips with a message where there is no GPU.
#![cfg(feature = "cuda")]

use kiln::backend::cpu::CpuBackend;
use kiln::backend::cuda::backend::WeightSource;
use kiln::backend::cuda::sampling;
use kiln::backend::cuda::testing::gpu_or_skip;
use kiln::backend::cuda::{CudaBackend, CudaOptions, Dtype};
use kiln::backend::{Backend, KvLayout};
use kiln::engine::plan::{PlanLimits, StepPlan};
use kiln::engine::sampler::{argmax, SamplingParams};
use kiln::model::config::ModelConfig;
use kiln::model::random::random_llama_weights;
use kiln::model::safetensors_dir::WeightDtype;

const LAYOUT: KvLayout = KvLayout { block_size: 16, num_blocks: 64 };
const LIMITS: PlanLimits = PlanLimits { max_batch_tokens: 128, max_seqs: 8, max_blocks_per_seq: 16 };

/// Small, but with the kernels' real constraints: GQA, head_dim 64 or 128, sizes multiples of 8.
fn config(head_dim: usize) -> ModelConfig {
    config_with_layers(head_dim, 3)
}

fn config_with_layers(head_dim: usize, layers: usize) -> ModelConfig {
    let json = format!(
        r#"{{"architectures":["LlamaForCausalLM"],"hidden_size":256,"intermediate_size":688,"num_hidden_layers":{layers},
        "num_attention_heads":{},"num_key_value_heads":2,"head_dim":{head_dim},"vocab_size":1000,"rms_norm_eps":1e-5,
        "max_position_embeddings":256,"rope_theta":10000.0,"tie_word_embeddings":false}}"#,
        512 / head_dim
    );
    ModelConfig::from_json(&json, std::path::Path::new("cuda_backend_test")).unwrap()
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

/// Runs the same sequence of plans on both backends and compares every step's logits.
fn compare_steps(cpu: &mut CpuBackend, gpu: &mut CudaBackend, plans: &[StepPlan], dtype: Dtype, label: &str) {
    let vocab = 1000;
    for (i, plan) in plans.iter().enumerate() {
        let rows = plan.num_logits();
        let mut expected = vec![f32::NAN; rows * vocab];
        let mut got = vec![f32::NAN; rows * vocab];
        cpu.execute(plan, &mut expected).unwrap();
        gpu.execute(plan, &mut got).unwrap();
        let (relative, max) = errors(&got, &expected);
        eprintln!(
            "{label} step {i}: {} tokens, {rows} logit rows, relative error {relative:.2e}, max abs {max:.3e}",
            plan.num_tokens()
        );
        assert!(relative < model_tolerance(dtype), "{label} step {i}: relative error {relative:.3e}");
    }
}

/// Prefill of three prompts, a chunked prefill continuing one of them, then decode steps of all.
fn plans() -> Vec<StepPlan> {
    let tables: Vec<Vec<u32>> = vec![(0..16).collect(), (16..32).collect(), (40..56).collect()];
    let prompts = [prompt(1, 37), prompt(2, 5), prompt(3, 70)];
    let mut plans = Vec::new();
    let mut plan = StepPlan::new(LIMITS, LAYOUT.block_size);
    plan.push_sequence(&prompts[0], 0, &tables[0], true).unwrap();
    plan.push_sequence(&prompts[1], 0, &tables[1], true).unwrap();
    plan.push_sequence(&prompts[2][..40], 0, &tables[2], false).unwrap();
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
    if gpu_or_skip("gpu_logits_match_cpu_backend").is_none() {
        return;
    }
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
fn copied_kv_blocks_match_the_cpu_backend() {
    if gpu_or_skip("copied_kv_blocks_match_the_cpu_backend").is_none() {
        return;
    }
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
    if gpu_or_skip("graphs_launches_and_device_weights_agree").is_none() {
        return;
    }
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
    if gpu_or_skip("gpu_greedy_sampling_returns_the_argmax").is_none() {
        return;
    }
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
        let rows: Vec<_> =
            (0..plan.num_logits()).map(|_| sampling::sample_row(&greedy, 0.0, 0, 0, None, None)).collect();
        let tokens = gpu.execute_and_sample(&plan, &rows, &[], &[]).unwrap().tokens.to_vec();
        let expected: Vec<u32> = logits.chunks(1000).map(argmax).collect();
        assert_eq!(tokens, expected);
    }
}

#[test]
fn a_model_too_large_for_the_gpu_is_a_clear_error() {
    if gpu_or_skip("a_model_too_large_for_the_gpu_is_a_clear_error").is_none() {
        return;
    }
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
fn without_a_gpu_the_backend_reports_why() {
    if kiln::backend::cuda::cuda_available().is_ok() {
        eprintln!("skipped without_a_gpu_the_backend_reports_why: a GPU is present");
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
    .expect("no GPU here");
    assert!(err.to_string().starts_with("CUDA is not available"), "{err}");
}
