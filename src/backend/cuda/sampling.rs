//! Launcher of cuda/sampling.cu: penalties, mask, greedy or seeded top-k / top-p / min-p draws and
//! log-probabilities on the GPU, so only token ids (and asked-for log-probabilities) come back
//! (reference: engine::sampler::Sampler and ops::logits::log_softmax).

use std::collections::BTreeMap;

use super::device::{DeviceArray, Dtype, Gpu, Kernel, Launch};
use super::params::{PenaltyEntry, SampleParams, SampleRow, KILN_NONE, MAX_TOP_LOGPROBS};
use super::CudaError;
use crate::engine::sampler::SamplingParams;

pub fn kernel(gpu: &Gpu) -> Result<Kernel, CudaError> {
    gpu.kernel("sample_f32")
}

/// The flattened settings of one row. `uniform` is the row's draw from its sequence's seeded
/// generator (`Rng::next_f64`), taken only when the row is not greedy, as the CPU sampler does.
pub fn sample_row(
    params: &SamplingParams,
    uniform: f64,
    penalty_start: usize,
    penalty_count: usize,
    mask_row: Option<usize>,
    top_logprobs: Option<usize>,
) -> SampleRow {
    SampleRow {
        uniform,
        temperature: params.temperature,
        top_p: params.top_p,
        min_p: params.min_p,
        repetition_penalty: params.repetition_penalty,
        presence_penalty: params.presence_penalty,
        frequency_penalty: params.frequency_penalty,
        top_k: params.top_k.min(u32::MAX as usize) as u32,
        penalty_start: penalty_start as u32,
        penalty_count: penalty_count as u32,
        mask_row: mask_row.map_or(KILN_NONE, |r| r as u32),
        top_logprobs: top_logprobs.unwrap_or(0).min(MAX_TOP_LOGPROBS) as u32,
        want_logprobs: top_logprobs.is_some() as u32,
    }
}

/// One entry per distinct token of the history, as the CPU sampler counts it: generated tokens
/// get their count (presence / frequency penalties); with a repetition penalty, prompt and
/// generated tokens are marked seen.
pub fn penalty_entries(params: &SamplingParams, prompt: &[u32], generated: &[u32]) -> Vec<PenaltyEntry> {
    let mut entries: BTreeMap<u32, PenaltyEntry> = BTreeMap::new();
    let repetition = params.repetition_penalty != 1.0;
    for &token in prompt {
        if repetition {
            entries.entry(token).or_insert(PenaltyEntry { token, ..PenaltyEntry::default() }).seen = 1;
        }
    }
    for &token in generated {
        let e = entries.entry(token).or_insert(PenaltyEntry { token, ..PenaltyEntry::default() });
        e.generated_count += 1;
        if repetition {
            e.seen = 1;
        }
    }
    entries.into_values().collect()
}

/// Device buffers of the sampling step, sized once for the most rows of a step.
#[derive(Debug, Clone, Copy)]
pub struct SampleBuffers {
    pub rows: DeviceArray,         // [n_rows] SampleRow, as bytes
    pub penalties: DeviceArray,    // [entries] PenaltyEntry, as bytes
    pub mask: DeviceArray,         // [mask rows, ceil(vocab / 32)] u32
    pub tokens_out: DeviceArray,   // [n_rows] u32
    pub logprobs_out: DeviceArray, // [n_rows] f32
    pub top_out: DeviceArray,      // [n_rows, MAX_TOP_LOGPROBS] TopLogprob, as bytes
    pub weights: DeviceArray,      // [n_rows, vocab] f64 scratch
}

/// Samples one token per row of `logits` (`[n_rows, vocab]` f32, modified in place).
pub fn sample(
    kernel: &Kernel,
    logits: DeviceArray,
    vocab: usize,
    n_rows: usize,
    buffers: &SampleBuffers,
) -> Result<Launch, CudaError> {
    logits.expect("logits", Dtype::F32, n_rows * vocab)?;
    buffers.rows.expect("sample rows", Dtype::U8, n_rows * std::mem::size_of::<SampleRow>())?;
    buffers.tokens_out.expect("sampled tokens", Dtype::U32, n_rows)?;
    buffers.logprobs_out.expect("logprobs", Dtype::F32, n_rows)?;
    buffers.top_out.expect("top logprobs", Dtype::U8, n_rows * MAX_TOP_LOGPROBS * 8)?;
    buffers.weights.expect("sampling weights", Dtype::F64, n_rows * vocab)?;
    let params = SampleParams {
        logits: logits.ptr,
        rows: buffers.rows.ptr,
        penalties: buffers.penalties.ptr,
        mask: buffers.mask.ptr,
        tokens_out: buffers.tokens_out.ptr,
        logprobs_out: buffers.logprobs_out.ptr,
        top_out: buffers.top_out.ptr,
        weights: buffers.weights.ptr,
        n_rows: n_rows as u32,
        vocab: vocab as u32,
    };
    Ok(Launch::new(kernel, (n_rows.max(1) as u32, 1, 1), (1024, 1, 1), 0, &params))
}
