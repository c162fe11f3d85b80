//! Tensor parallelism on CPU ranks (threads meeting in the CPU collective): the sharding is
//! proven without GPUs. Split N ways, a model gives the same greedy tokens as on one rank and its
//! first-step logits within the tolerance rule (the partial sums of o and down are added in
//! another order), and the engine's batching, prefix caching, preemption and `n` > 1 behave the
//! same.

mod golden_support;

use std::sync::Arc;

use golden_support::assert_greedy_cases_match;
use kiln::backend::cpu::CpuBackend;
use kiln::backend::plan::{PlanLimits, StepPlan};
use kiln::backend::{Backend, KvLayout};
use kiln::engine::batch::run_batch;
use kiln::engine::core::{Engine, EngineConfig};
use kiln::engine::metrics::EngineMetrics;
use kiln::engine::request::RequestParams;
use kiln::engine::sampler::SamplingParams;
use kiln::engine::text::NoText;
use kiln::launch::{load_cpu_backend_tensor_parallel, CpuLimits};
use kiln::model::random::random_llama_weights;
use kiln::model::safetensors_dir::WeightDtype;
use kiln::model::ModelConfig;
use kiln::testing::{assert_close, Tolerance};

const LIMITS: PlanLimits = PlanLimits { max_batch_tokens: 64, max_seqs: 16, max_blocks_per_seq: 64 };

#[test]
fn the_default_model_on_three_ranks_generates_the_golden_tokens() {
    // SmolLM2-135M: 9 heads, 3 KV heads, 1536 intermediate features: three ranks of 3 heads, 1 KV
    // head, 512 features.
    let dir = kiln::model::pull::pull_default_model().expect("the default model can be pulled");
    let limits = CpuLimits { kv_memory_bytes: 256 << 20, kv_max_tokens: None, max_batch_tokens: 256, max_seqs: 8 };
    let (backend, plan_limits) = load_cpu_backend_tensor_parallel(&dir, limits, 3).unwrap();
    assert_eq!(backend.tensor_parallel_ranks(), 3);
    assert_greedy_cases_match(Box::new(backend), plan_limits);
}

#[test]
fn the_default_model_refuses_a_split_that_does_not_divide_its_heads() {
    let dir = kiln::model::pull::pull_default_model().expect("the default model can be pulled");
    let limits = CpuLimits { kv_memory_bytes: 64 << 20, kv_max_tokens: None, max_batch_tokens: 64, max_seqs: 4 };
    let err = load_cpu_backend_tensor_parallel(&dir, limits, 2).err().expect("9 heads do not split 2 ways");
    assert_eq!(
        err.to_string(),
        "--tensor-parallel 2 does not divide the model's attention heads (9); choose a divisor of 9"
    );
}

/// A random-weight Llama of its own geometry (8 heads, 4 KV heads, 128 intermediate features).
fn geometry() -> ModelConfig {
    let json = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":64,"intermediate_size":128,"num_hidden_layers":3,
        "num_attention_heads":8,"num_key_value_heads":4,"vocab_size":300,"rms_norm_eps":1e-5,"rope_theta":10000.0,
        "max_position_embeddings":256,"tie_word_embeddings":false,"bos_token_id":1,"eos_token_id":2}"#;
    ModelConfig::from_json(json, std::path::Path::new("geometry.json")).unwrap()
}

fn backend(ranks: usize, num_blocks: usize) -> CpuBackend {
    let config = geometry();
    let weights = random_llama_weights(&config, 5, WeightDtype::F16);
    CpuBackend::tensor_parallel(config, weights, KvLayout { block_size: 4, num_blocks }, LIMITS, ranks).unwrap()
}

fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32).map(|i| (i * 41 + seed * 97 + 3) % 290).collect()
}

#[test]
fn first_step_logits_agree_on_two_and_four_ranks() {
    let tokens = prompt(1, 11);
    let logits = |ranks: usize| {
        let mut b = backend(ranks, 32);
        let mut plan = StepPlan::new(LIMITS, 4);
        plan.push_sequence(&tokens, 0, &[3, 0, 9], true).unwrap();
        let mut logits = vec![f32::NAN; 300];
        b.execute(&plan, &mut logits).unwrap();
        logits
    };
    let one = logits(1);
    assert!(one.iter().all(|v| v.is_finite()));
    for ranks in [2, 4] {
        assert_close(&logits(ranks), &one, Tolerance { atol: 1e-4, rtol: 1e-4 });
    }
}

fn engine_config(max_prefill_chunk: usize) -> EngineConfig {
    EngineConfig {
        max_batch_tokens: 64,
        max_seqs: 16,
        max_prefill_chunk,
        max_waiting: 64,
        prefix_caching: true,
        host_sampling: false,
    }
}

/// Greedy tokens and seeded samples (`n` = 2) of 18 requests sharing an 8-token prefix, run
/// together (more than one step's tokens, so later ones find the prefix cached); with
/// `num_blocks` small the engine must preempt.
fn generate(ranks: usize, num_blocks: usize) -> (Vec<Vec<Vec<u32>>>, u64, u64) {
    let mut engine = Engine::new(Box::new(backend(ranks, num_blocks)), Arc::new(NoText), engine_config(5));
    let requests: Vec<_> = (0..18u32)
        .map(|i| {
            let mut p = prompt(0, 8);
            p.extend(prompt(i + 1, 2 + i as usize % 4));
            let params = if i % 3 == 0 {
                RequestParams {
                    n: 2,
                    sampling: SamplingParams { temperature: 0.8, seed: Some(i as u64), ..SamplingParams::greedy() },
                    ..RequestParams::greedy(10, vec![])
                }
            } else {
                RequestParams::greedy(10, vec![])
            };
            (p, params)
        })
        .collect();
    let outputs = run_batch(&mut engine, &requests).unwrap();
    let tokens = outputs.into_iter().map(|choices| choices.into_iter().map(|c| c.token_ids).collect()).collect();
    let metrics = engine.metrics();
    (tokens, EngineMetrics::get(&metrics.preemptions_total), EngineMetrics::get(&metrics.prefix_cache_hit_tokens_total))
}

#[test]
fn batching_prefix_caching_preemption_and_n_are_unchanged_on_two_and_four_ranks() {
    for num_blocks in [128, 20] {
        let (one, preempted, cached) = generate(1, num_blocks);
        assert!(cached > 0, "the shared prefix is found in the cache");
        if num_blocks == 20 {
            assert!(preempted > 0, "an 80-token cache cannot hold 18 growing sequences");
        }
        for ranks in [2, 4] {
            let (split, split_preempted, split_cached) = generate(ranks, num_blocks);
            assert_eq!(split, one, "{ranks} ranks, {num_blocks} blocks");
            assert_eq!((split_preempted, split_cached), (preempted, cached), "the same schedule on {ranks} ranks");
        }
    }
}
