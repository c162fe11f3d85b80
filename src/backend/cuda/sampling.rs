//! Launcher of cuda/sampling.cu: penalties, mask, greedy or seeded top-k / top-p / min-p draws and
//! log-probabilities on the GPU, so only token ids (and asked-for log-probabilities) come back
//! (reference: engine::sampler::Sampler and ops::logits::log_softmax).

use super::device::{DeviceArray, Dtype, Gpu, Kernel, Launch};
use super::params::{PenaltyEntry, SampleParams, SampleRow, KILN_NONE, MAX_TOP_LOGPROBS};
use super::CudaError;
use crate::backend::sampling::{HistoryEntry, RowSampling};

pub fn kernel(gpu: &Gpu) -> Result<Kernel, CudaError> {
    gpu.kernel("sample_f32")
}

/// A backend-level row (`Backend::execute_and_sample`) as the kernel reads it; the history
/// range indexes the step's penalty entries, the mask row the step's mask.
impl From<&RowSampling> for SampleRow {
    fn from(row: &RowSampling) -> SampleRow {
        SampleRow {
            uniform: row.uniform,
            temperature: row.temperature,
            top_p: row.top_p,
            min_p: row.min_p,
            repetition_penalty: row.repetition_penalty,
            presence_penalty: row.presence_penalty,
            frequency_penalty: row.frequency_penalty,
            top_k: row.top_k.min(u32::MAX as usize) as u32,
            penalty_start: row.history_start as u32,
            penalty_count: row.history_len as u32,
            mask_row: row.mask_row.map_or(KILN_NONE, |r| r as u32),
            top_logprobs: row.top_logprobs.min(MAX_TOP_LOGPROBS) as u32,
            want_logprobs: row.want_logprob as u32,
        }
    }
}

impl From<&HistoryEntry> for PenaltyEntry {
    fn from(entry: &HistoryEntry) -> PenaltyEntry {
        PenaltyEntry {
            token: entry.token,
            generated_count: entry.generated_count,
            seen: entry.seen as u32,
            raw_logit: 0.0,
        }
    }
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
