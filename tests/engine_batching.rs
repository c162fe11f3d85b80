//! Batching changes nothing: every sequence's greedy output is the same whether it ran alone or
//! among 1, 4 or 16 others at different positions, with and without chunked prefill, preemption
//! (a KV cache too small for everyone) and prefix caching; seeded sampling likewise.

use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::sync::Arc;

use kiln::backend::cpu::CpuBackend;
use kiln::backend::plan::PlanLimits;
use kiln::backend::KvLayout;
use kiln::engine::batch::run_batch;
use kiln::engine::core::{Engine, EngineConfig};
use kiln::engine::metrics::EngineMetrics;
use kiln::engine::request::{EngineEvent, EngineRequest, RequestParams};
use kiln::engine::sampler::SamplingParams;
use kiln::engine::serving::{start_engine, EngineHandle};
use kiln::engine::text::NoText;
use kiln::model::random::{random_llama_weights, tiny_test_config};
use kiln::model::safetensors_dir::WeightDtype;

const NEW_TOKENS: usize = 12;

fn backend(num_blocks: usize) -> CpuBackend {
    let config = tiny_test_config();
    let weights = random_llama_weights(&config, 77, WeightDtype::F16);
    let layout = KvLayout { block_size: 4, num_blocks };
    CpuBackend::new(config, weights, layout, PlanLimits { max_batch_tokens: 64, max_seqs: 16, max_blocks_per_seq: 128 })
}

/// Prompts that share an 8-token prefix (a "system prompt" the prefix cache can find), then
/// differ in content and length (so sequences sit at different positions).
fn prompts(count: usize) -> Vec<Vec<u32>> {
    (0..count)
        .map(|i| {
            let mut p: Vec<u32> = (0..8).map(|t| (t * 7 + 5) % 240).collect();
            p.extend((0..(i % 5) as u32 + 2).map(|t| (t * 13 + i as u32 * 17 + 1) % 240));
            p
        })
        .collect()
}

/// The sequence's tokens when it runs by itself on a fresh engine (stepped on this thread).
fn alone(prompt: &[u32], sampling: SamplingParams) -> Vec<u32> {
    let mut engine = Engine::new(Box::new(backend(128)), Arc::new(NoText), config(8, true));
    let params = RequestParams { sampling, ..RequestParams::greedy(NEW_TOKENS, vec![]) };
    run_batch(&mut engine, &[(prompt.to_vec(), params)]).unwrap().remove(0).remove(0).token_ids
}

fn config(max_prefill_chunk: usize, prefix_caching: bool) -> EngineConfig {
    EngineConfig {
        max_batch_tokens: 64,
        max_seqs: 16,
        max_prefill_chunk,
        max_waiting: 64,
        prefix_caching,
        host_sampling: false,
    }
}

fn engine(num_blocks: usize, max_prefill_chunk: usize, prefix_caching: bool) -> EngineHandle {
    start_engine(Box::new(backend(num_blocks)), Arc::new(NoText), config(max_prefill_chunk, prefix_caching)).0
}

fn submit(engine: &EngineHandle, prompt: &[u32], params: RequestParams) -> mpsc::Receiver<EngineEvent> {
    let (sender, receiver) = mpsc::channel();
    let request = EngineRequest {
        prompt_ids: prompt.to_vec(),
        params,
        sink: Box::new(sender),
        cancel: Arc::new(AtomicBool::new(false)),
    };
    engine.submit(request).unwrap();
    receiver
}

/// Token ids of each choice, in order, once every choice has finished.
fn tokens(receiver: &mpsc::Receiver<EngineEvent>, n: usize) -> Vec<Vec<u32>> {
    let mut out = vec![Vec::new(); n];
    let mut open = n;
    while open > 0 {
        match receiver.recv().unwrap() {
            EngineEvent::Token { choice, token_id, .. } => out[choice].push(token_id),
            EngineEvent::Finished { .. } => open -= 1,
            EngineEvent::Error { message } => panic!("{message}"),
        }
    }
    out
}

fn assert_idle(engine: &EngineHandle) {
    let s = engine.snapshot().unwrap();
    assert_eq!((s.running_sequences, s.waiting_sequences, s.active_requests, s.kv_blocks_used), (0, 0, 0, 0), "{s:?}");
}

#[test]
fn greedy_outputs_are_identical_alone_and_in_batches_of_2_5_and_17() {
    let all = prompts(17);
    let reference: Vec<Vec<u32>> = all.iter().map(|p| alone(p, SamplingParams::greedy())).collect();
    // (KV blocks, prefill chunk, prefix caching): roomy; chunked; so small that sequences are
    // preempted and recomputed; and without the prefix cache.
    for (blocks, chunk, caching) in [(256, 64, true), (256, 3, true), (24, 5, true), (24, 64, false)] {
        for batch in [2, 5, 17] {
            let engine = engine(blocks, chunk, caching);
            let receivers: Vec<_> =
                all[..batch].iter().map(|p| submit(&engine, p, RequestParams::greedy(NEW_TOKENS, vec![]))).collect();
            for (i, receiver) in receivers.iter().enumerate() {
                assert_eq!(
                    tokens(receiver, 1)[0],
                    reference[i],
                    "sequence {i} of {batch}, {blocks} blocks, chunk {chunk}, caching {caching}"
                );
            }
            assert_idle(&engine);
            let preempted = EngineMetrics::get(&engine.metrics.preemptions_total);
            let cached = EngineMetrics::get(&engine.metrics.prefix_cache_hit_tokens_total);
            if blocks == 24 && batch == 17 {
                assert!(
                    preempted > 0,
                    "a 96-token cache cannot hold 17 sequences of 22 tokens: some must be preempted"
                );
            }
            if caching && batch == 17 {
                assert!(cached > 0, "prompts sharing an 8-token prefix must hit the prefix cache");
            }
            if !caching {
                assert_eq!(cached, 0);
            }
        }
    }
}

#[test]
fn requests_joining_mid_generation_get_their_own_tokens() {
    let all = prompts(6);
    let reference: Vec<Vec<u32>> = all.iter().map(|p| alone(p, SamplingParams::greedy())).collect();
    let engine = engine(256, 4, true);
    // Each request arrives once the previous one is generating: all at different positions.
    let mut receivers = Vec::new();
    for p in &all {
        let receiver = submit(&engine, p, RequestParams::greedy(NEW_TOKENS, vec![]));
        let first = match receiver.recv().unwrap() {
            EngineEvent::Token { token_id, .. } => token_id,
            other => panic!("{other:?}"),
        };
        receivers.push((first, receiver));
    }
    for (i, (first, receiver)) in receivers.iter().enumerate() {
        let mut got = vec![*first];
        got.extend(tokens(receiver, 1).remove(0));
        assert_eq!(got, reference[i], "sequence {i}");
    }
    assert_idle(&engine);
}

#[test]
fn n_completions_share_the_prompt_and_match_single_runs() {
    let prompt = &prompts(1)[0];
    let engine = engine(256, 64, true);
    let greedy =
        tokens(&submit(&engine, prompt, RequestParams { n: 3, ..RequestParams::greedy(NEW_TOKENS, vec![]) }), 3);
    let reference = alone(prompt, SamplingParams::greedy());
    assert_eq!(greedy, vec![reference.clone(), reference.clone(), reference]);
    // Seeded choices equal single requests seeded like them (choice c uses seed + c), even with
    // copy-on-write of the shared last prompt block and other requests in the batch.
    let sampling = |seed| SamplingParams { temperature: 1.3, top_k: 40, seed: Some(seed), ..SamplingParams::greedy() };
    let params = RequestParams { n: 3, sampling: sampling(500), ..RequestParams::greedy(NEW_TOKENS, vec![]) };
    let others: Vec<_> =
        prompts(5).iter().map(|p| submit(&engine, p, RequestParams::greedy(NEW_TOKENS, vec![]))).collect();
    let sampled = tokens(&submit(&engine, prompt, params), 3);
    for receiver in &others {
        tokens(receiver, 1);
    }
    for (choice, got) in sampled.iter().enumerate() {
        assert_eq!(got, &alone(prompt, sampling(500 + choice as u64)), "choice {choice}");
    }
    assert_idle(&engine);
}

#[test]
fn the_concurrency_benchmark_runs_every_request_to_the_end() {
    let (report, constrained) =
        kiln::cli::bench_concurrency::run(Box::new(backend(256)), 4, 6, 5, 64, None, None).unwrap();
    assert_eq!((report.concurrency, report.prompt_tokens, report.new_tokens), (4, 6, 5));
    assert!(report.single_tokens_per_s > 0.0 && report.aggregate_tokens_per_s > 0.0);
    assert!((report.speedup - report.aggregate_tokens_per_s / report.single_tokens_per_s).abs() < 1e-9);
    assert!(constrained.is_none());
}

/// With a schema the benchmark runs the requests constrained and times the masks: every token
/// generated needed one, so mask time and steps are both counted.
#[test]
fn the_concurrency_benchmark_times_constrained_decoding() {
    // Byte-valued tokens: any JSON can be spelled.
    let bytes: Vec<Vec<u8>> = (0..256u32).map(|b| if b < 128 { vec![b as u8] } else { Vec::new() }).collect();
    let schema =
        serde_json::json!({"type": "object", "properties": {"a": {"type": "array", "items": {"type": "integer"}}}});
    let constraint = kiln::engine::json_schema::SchemaCache::new(bytes).json_schema(&schema).unwrap();
    let (_, constrained) =
        kiln::cli::bench_concurrency::run(Box::new(backend(256)), 4, 6, 12, 64, Some(constraint), None).unwrap();
    let c = constrained.unwrap();
    assert!(c.steps > 0 && c.generated_tokens > 0 && c.step_ms > 0.0, "{c:?}");
    assert!(c.mask_ms_per_step > 0.0 && c.first_run_mask_ms_per_step > 0.0, "{c:?}");
}
