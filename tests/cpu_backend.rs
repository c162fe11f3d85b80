//! The CPU forward pass over the paged KV cache: incremental decoding equals recomputing from
//! scratch, and batching (other sequences, chunked prefill, block placement) changes nothing.

use kiln::backend::cpu::CpuBackend;
use kiln::backend::{Backend, KvLayout};
use std::sync::Arc;

use kiln::backend::plan::{PlanLimits, StepPlan};
use kiln::engine::batch::run_batch;
use kiln::engine::core::{Engine, EngineConfig};
use kiln::engine::request::RequestParams;
use kiln::engine::text::NoText;
use kiln::model::random::{random_llama_weights, tiny_test_config};
use kiln::model::safetensors_dir::WeightDtype;
use kiln::testing::{assert_close, Tolerance};

const LAYOUT: KvLayout = KvLayout { block_size: 4, num_blocks: 64 };

fn backend(seed: u64, dtype: WeightDtype) -> CpuBackend {
    let config = tiny_test_config();
    let weights = random_llama_weights(&config, seed, dtype);
    CpuBackend::new(config, weights, LAYOUT, PlanLimits { max_batch_tokens: 64, max_seqs: 16, max_blocks_per_seq: 32 })
}

fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32).map(|i| (i * 37 + seed * 101 + 11) % 250).collect()
}

/// Logits of the last token of `tokens`, computed in one prefill step with blocks `blocks`.
fn prefill_logits(b: &mut CpuBackend, tokens: &[u32], blocks: &[u32]) -> Vec<f32> {
    let mut plan =
        StepPlan::new(PlanLimits { max_batch_tokens: 64, max_seqs: 16, max_blocks_per_seq: 32 }, LAYOUT.block_size);
    plan.push_sequence(tokens, 0, blocks, true).unwrap();
    let mut logits = vec![f32::NAN; 256];
    b.execute(&plan, &mut logits).unwrap();
    logits
}

#[test]
fn decoding_token_by_token_equals_one_prefill() {
    for dtype in [WeightDtype::F32, WeightDtype::F16, WeightDtype::Bf16] {
        let mut b = backend(3, dtype);
        let tokens = prompt(1, 13);
        let blocks: Vec<u32> = vec![9, 2, 40, 7];
        let full = prefill_logits(&mut b, &tokens, &blocks);
        assert!(full.iter().all(|v| v.is_finite()));
        let mut plan = StepPlan::new(PlanLimits { max_batch_tokens: 64, max_seqs: 16, max_blocks_per_seq: 32 }, 4);
        let mut logits = vec![f32::NAN; 256];
        // Different blocks, filled one token at a time.
        let other_blocks: Vec<u32> = vec![1, 30, 31, 5];
        for (position, &token) in tokens.iter().enumerate() {
            plan.clear();
            plan.push_sequence(&[token], position, &other_blocks, true).unwrap();
            b.execute(&plan, &mut logits).unwrap();
        }
        assert_close(&logits, &full, Tolerance { atol: 1e-4, rtol: 1e-4 });
    }
}

#[test]
fn a_sequence_in_a_mixed_batch_gets_the_same_logits_as_alone() {
    let mut b = backend(5, WeightDtype::F16);
    let target = prompt(2, 10);
    let alone = prefill_logits(&mut b, &target, &[0, 1, 2]);
    // Prefill of another sequence, a decode step of a third, then the target, all in one step.
    let other = prompt(3, 7);
    prefill_logits(&mut b, &prompt(4, 5), &[20, 21]);
    let mut plan = StepPlan::new(PlanLimits { max_batch_tokens: 64, max_seqs: 16, max_blocks_per_seq: 32 }, 4);
    plan.push_sequence(&other, 0, &[10, 11], true).unwrap();
    plan.push_sequence(&[77], 5, &[20, 21], true).unwrap();
    let row = plan.push_sequence(&target, 0, &[12, 13, 14], true).unwrap().unwrap();
    let mut logits = vec![f32::NAN; 3 * 256];
    b.execute(&plan, &mut logits).unwrap();
    assert_close(&logits[row * 256..(row + 1) * 256], &alone, Tolerance { atol: 1e-5, rtol: 1e-5 });
}

fn engine_config(max_batch_tokens: usize) -> EngineConfig {
    EngineConfig {
        max_batch_tokens,
        max_seqs: 16,
        max_prefill_chunk: max_batch_tokens,
        max_waiting: 16,
        prefix_caching: false,
        host_sampling: false,
    }
}

#[test]
fn greedy_generation_is_unchanged_by_batching_and_chunked_prefill() {
    let requests: Vec<(Vec<u32>, RequestParams)> =
        (0..6).map(|i| (prompt(i, 3 + 5 * i as usize), RequestParams::greedy(12, vec![]))).collect();
    let config = tiny_test_config();
    let make = |max_batch_tokens| {
        let weights = random_llama_weights(&config, 11, WeightDtype::F16);
        let limits = PlanLimits { max_batch_tokens, max_seqs: 16, max_blocks_per_seq: 32 };
        let backend = CpuBackend::new(config.clone(), weights, LAYOUT, limits);
        Engine::new(Box::new(backend), Arc::new(NoText), engine_config(max_batch_tokens))
    };
    let alone: Vec<Vec<u32>> = requests
        .iter()
        .map(|r| run_batch(&mut make(64), std::slice::from_ref(r)).unwrap().remove(0).remove(0).token_ids)
        .collect();
    for max_batch_tokens in [64, 7] {
        let together = run_batch(&mut make(max_batch_tokens), &requests).unwrap();
        for (i, output) in together.iter().enumerate() {
            assert_eq!(output[0].token_ids, alone[i], "request {i}, max_batch_tokens {max_batch_tokens}");
        }
    }
}

#[test]
fn generation_errors_instead_of_panicking() {
    let config = tiny_test_config();
    let limits = PlanLimits { max_batch_tokens: 16, max_seqs: 4, max_blocks_per_seq: 32 };
    let weights = random_llama_weights(&config, 1, WeightDtype::F32);
    let backend = CpuBackend::new(config, weights, KvLayout { block_size: 4, num_blocks: 4 }, limits);
    let mut engine = Engine::new(Box::new(backend), Arc::new(NoText), engine_config(16));
    let request = |len: usize, new: usize| (vec![1; len], RequestParams::greedy(new, vec![]));
    let err = run_batch(&mut engine, &[request(0, 4)]).unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    // The context is the model's 512 positions, cut to what the KV cache holds (16 tokens).
    let err = run_batch(&mut engine, &[request(500, 100)]).unwrap_err();
    assert!(err.to_string().contains("exceeds the context length of 16"), "{err}");
    let err = run_batch(&mut engine, &[request(10, 10)]).unwrap_err();
    assert!(err.to_string().contains("exceeds the context length of 16"), "{err}");
    // Nothing leaked: a fitting request still runs.
    assert_eq!(run_batch(&mut engine, &[request(8, 8)]).unwrap()[0][0].token_ids.len(), 8);
}
