//! `kiln bench --concurrency N`: aggregate generation throughput of N concurrent requests through
//! the serving engine (continuous batching), against one request alone on the same engine.

use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use crate::backend::Backend;
use crate::engine::core::EngineConfig;
use crate::engine::request::{EngineEvent, EngineRequest, RequestParams};
use crate::engine::serving::{start_engine, EngineHandle};
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
}

pub fn run(
    backend: Box<dyn Backend>,
    concurrency: usize,
    prompt_tokens: usize,
    new_tokens: usize,
    max_batch_tokens: usize,
) -> anyhow::Result<ConcurrencyReport> {
    let vocab = backend.config().vocab_size as u32;
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
    let timed = |requests: &[Vec<u32>], engine: &EngineHandle| -> anyhow::Result<f64> {
        let started = Instant::now();
        let receivers: Vec<mpsc::Receiver<EngineEvent>> = requests
            .iter()
            .map(|p| {
                let (sender, receiver) = mpsc::channel();
                let request = EngineRequest {
                    prompt_ids: p.clone(),
                    params: RequestParams::greedy(new_tokens, Vec::new()),
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
        Ok(generated as f64 / started.elapsed().as_secs_f64())
    };
    // A warm-up request first, so page faults of the weights are not measured.
    timed(&[prompt(concurrency + 1)], &engine)?;
    let single = timed(&[prompt(0)], &engine)?;
    let batch: Vec<Vec<u32>> = (1..=concurrency).map(prompt).collect();
    let aggregate = timed(&batch, &engine)?;
    Ok(ConcurrencyReport {
        concurrency,
        prompt_tokens,
        new_tokens,
        single_tokens_per_s: single,
        aggregate_tokens_per_s: aggregate,
        speedup: aggregate / single,
    })
}
