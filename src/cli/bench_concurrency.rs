//! `kiln bench --concurrency N`: aggregate generation throughput of N concurrent requests through
//! the serving engine (continuous batching), against one request alone on the same engine.

use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use crate::backend::cpu::kernels::peak::Peak;
use crate::backend::Backend;
use crate::engine::core::EngineConfig;
use crate::engine::metrics::EngineMetrics;
use crate::engine::request::{ConstraintFactory, EngineEvent, EngineRequest, RequestParams};
use crate::engine::sampler::SamplingParams;
use crate::engine::serving::start_engine;
use crate::engine::text::NoText;

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ConcurrencyReport {
    pub concurrency: usize,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    /// One request alone: generated tokens per second.
    pub single_tokens_per_s: f64,
    /// All requests at once: generated tokens of all of them per second of wall time.
    pub aggregate_tokens_per_s: f64,
    pub speedup: f64,
    /// Arithmetic per generated token (matrix products and attention at the average context),
    /// and what the concurrent run achieved of the machine's measured peaks (CPU runs only).
    pub flops_per_token: f64,
    pub peak: Option<Peak>,
    pub share_of_f32_peak: Option<f64>,
    pub share_of_int8_peak: Option<f64>,
}

/// What constrained decoding costs (`--json-schema`): the same N requests again, each constrained
/// by the schema and sampled (temperature 1, seeded), with the engine's own timing of the masks.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ConstraintReport {
    /// Engine steps of the constrained run, and wall time per step.
    pub steps: u64,
    pub step_ms: f64,
    /// Time spent working out allowed tokens, per step (all sequences of the step together),
    /// on the first run of the schema (masks worked out) and on a second (masks cached).
    pub first_run_mask_ms_per_step: f64,
    pub mask_ms_per_step: f64,
    /// `mask_ms_per_step` against the rest of the step.
    pub overhead: f64,
    pub generated_tokens: usize,
}

pub fn run(
    backend: Box<dyn Backend>,
    concurrency: usize,
    prompt_tokens: usize,
    new_tokens: usize,
    max_batch_tokens: usize,
    constraint: Option<ConstraintFactory>,
    peak: Option<Peak>,
) -> anyhow::Result<(ConcurrencyReport, Option<ConstraintReport>)> {
    let vocab = backend.config().vocab_size as u32;
    let flops_per_token = flops_per_token(backend.config(), prompt_tokens + new_tokens / 2);
    let config = EngineConfig {
        max_batch_tokens,
        max_seqs: concurrency.max(1),
        max_prefill_chunk: max_batch_tokens,
        max_waiting: concurrency.max(1),
        prefix_caching: false,
        host_sampling: false,
    };
    let (engine, _thread) = start_engine(backend, Arc::new(NoText), config);
    // Distinct prompts (no shared prefix), and no stop tokens: exactly `new_tokens` each.
    let prompt =
        |r: usize| -> Vec<u32> { (0..prompt_tokens).map(|i| ((i * 7919 + r * 104_729 + 11) as u32) % vocab).collect() };
    let greedy = RequestParams::greedy(new_tokens, Vec::new());
    // Generated tokens, and seconds of wall time.
    let timed = |requests: &[Vec<u32>], params: &RequestParams| -> anyhow::Result<(usize, f64)> {
        let started = Instant::now();
        let receivers: Vec<mpsc::Receiver<EngineEvent>> = requests
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (sender, receiver) = mpsc::channel();
                let mut params = params.clone();
                params.sampling.seed = params.sampling.seed.map(|seed| seed + i as u64);
                let request = EngineRequest {
                    prompt_ids: p.clone(),
                    params,
                    sink: Box::new(sender),
                    cancel: Arc::new(AtomicBool::new(false)),
                };
                engine.submit(request).map(|_| receiver)
            })
            .collect::<Result<_, _>>()?;
        let mut generated = 0usize;
        for receiver in receivers {
            loop {
                match receiver.recv()? {
                    EngineEvent::Token { .. } => generated += 1,
                    EngineEvent::Finished { .. } => break,
                    EngineEvent::Error { message } => anyhow::bail!("{message}"),
                }
            }
        }
        Ok((generated, started.elapsed().as_secs_f64()))
    };
    let rate = |(generated, seconds): (usize, f64)| generated as f64 / seconds;
    // A warm-up request first, so page faults of the weights are not measured.
    timed(&[prompt(concurrency + 1)], &greedy)?;
    let single = rate(timed(&[prompt(0)], &greedy)?);
    let batch: Vec<Vec<u32>> = (1..=concurrency).map(prompt).collect();
    let aggregate = rate(timed(&batch, &greedy)?);
    let report = ConcurrencyReport {
        concurrency,
        prompt_tokens,
        new_tokens,
        single_tokens_per_s: single,
        aggregate_tokens_per_s: aggregate,
        speedup: aggregate / single,
        flops_per_token,
        peak,
        share_of_f32_peak: peak.map(|p| aggregate * flops_per_token / p.f32_flops),
        share_of_int8_peak: peak.map(|p| aggregate * flops_per_token / p.batched_int8_ops()),
    };
    let Some(constraint) = constraint else { return Ok((report, None)) };
    let params = RequestParams {
        sampling: SamplingParams { temperature: 1.0, seed: Some(1), ..SamplingParams::greedy() },
        constraint: Some(constraint),
        ..greedy
    };
    let metrics = engine.metrics.clone();
    // (steps, mask seconds) so far.
    let counters = || (EngineMetrics::get(&metrics.steps_total), metrics.constraint_mask_time.snapshot().2);
    let before = counters();
    timed(&batch, &params)?;
    let first = counters();
    let (generated, seconds) = timed(&batch, &params)?;
    let second = counters();
    let per_step = |(steps0, mask0): (u64, f64), (steps1, mask1): (u64, f64)| {
        (steps1 - steps0, (mask1 - mask0) * 1e3 / (steps1 - steps0).max(1) as f64)
    };
    let (_, first_run_mask_ms_per_step) = per_step(before, first);
    let (steps, mask_ms_per_step) = per_step(first, second);
    let step_ms = seconds * 1e3 / steps.max(1) as f64;
    Ok((
        report,
        Some(ConstraintReport {
            steps,
            step_ms,
            first_run_mask_ms_per_step,
            mask_ms_per_step,
            overhead: mask_ms_per_step / (step_ms - mask_ms_per_step),
            generated_tokens: generated,
        }),
    ))
}

/// Multiply-adds (counted as two operations) of one token's forward pass: every weight matrix
/// once, and attention's two products over `context` positions.
fn flops_per_token(config: &crate::model::ModelConfig, context: usize) -> f64 {
    let (hidden, q, kv, ffn) = (config.hidden_size, config.q_dim(), config.kv_dim(), config.intermediate_size);
    let per_layer = hidden * (q + 2 * kv) + q * hidden + 3 * hidden * ffn + 2 * q * context;
    2.0 * (config.num_layers * per_layer + config.vocab_size * hidden) as f64
}
