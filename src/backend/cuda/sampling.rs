//! Launcher of cuda/sampling.cu: logit bias, penalties, mask, greedy or seeded top-k / top-p / min-p draws and
//! log-probabilities on the GPU, so only token ids (and asked-for log-probabilities) come back
//! (reference: engine::sampler::Sampler and ops::logits::log_softmax). `GpuSampler` is the
//! executor's sampling step: pinned staging and device buffers for a step's rows, penalty
//! entries and masks, sized once for the most rows; each step uploads them, runs sample_f32 over
//! the logits already on the device, and reads back only the ids.

use super::device::{DeviceArray, DeviceBuffer, Dtype, Gpu, Kernel, Launch, PinnedBuffer};
use super::params::{PenaltyEntry, SampleParams, SampleRow, TopLogprob, KILN_NONE, MAX_TOP_LOGPROBS};
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
            bias: entry.bias,
            raw_logit: 0.0,
        }
    }
}

/// Device buffers of the sampling step, sized once for the most rows of a step.
#[derive(Debug, Clone, Copy)]
pub struct SampleBuffers {
    pub rows: DeviceArray,         // [n_rows] SampleRow, as bytes
    pub penalties: DeviceArray,    // [entries] PenaltyEntry (biased and penalised tokens), as bytes
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

#[derive(Debug, Clone, Copy)]
struct Capacity {
    rows: usize,
    penalties: usize,
    mask_words: usize,
}

/// What a sampling step returns: per row its token, and when asked its log-probability and
/// `MAX_TOP_LOGPROBS` alternatives (row-major; rows that asked for fewer have unused entries).
pub struct SampleOutput<'a> {
    pub tokens: &'a [u32],
    pub logprobs: &'a [f32],
    pub top: &'a [TopLogprob],
}

pub struct GpuSampler {
    capacity: Capacity,
    host: PinnedBuffer,
    buffers: SampleBuffers,
    /// Owners of the memory `buffers` views: inputs, outputs, f64 scratch.
    _inputs: DeviceBuffer,
    _outputs: DeviceBuffer,
    _weights: DeviceBuffer,
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    top: Vec<TopLogprob>,
}

impl GpuSampler {
    /// Room for `rows` rows of `vocab` logits with `penalties` entries (biased and penalised
    /// tokens) in all.
    pub fn new(gpu: &Gpu, rows: usize, penalties: usize, vocab: usize) -> Result<GpuSampler, CudaError> {
        let capacity = Capacity { rows, penalties, mask_words: rows * vocab.div_ceil(32) };
        let row_bytes = rows * std::mem::size_of::<SampleRow>();
        let penalty_bytes = penalties * std::mem::size_of::<PenaltyEntry>();
        let mask_bytes = capacity.mask_words * 4;
        let input_bytes = row_bytes + penalty_bytes + mask_bytes;
        let host = gpu.alloc_pinned(input_bytes)?;
        let inputs = gpu.alloc(Dtype::U8, input_bytes)?;
        let outputs = gpu.alloc(Dtype::U32, rows * 2 + rows * MAX_TOP_LOGPROBS * 2)?;
        let weights = gpu.alloc(Dtype::F64, rows * vocab)?;
        let (i, o) = (inputs.array(), outputs.array());
        let buffers = SampleBuffers {
            rows: i.slice(0, row_bytes),
            penalties: i.slice(row_bytes, penalty_bytes),
            mask: i.slice(row_bytes + penalty_bytes, mask_bytes).reinterpret(Dtype::U32),
            tokens_out: o.slice(0, rows),
            logprobs_out: o.slice(rows, rows).reinterpret(Dtype::F32),
            top_out: o.slice(2 * rows, rows * MAX_TOP_LOGPROBS * 2).reinterpret(Dtype::U8),
            weights: weights.array(),
        };
        Ok(GpuSampler {
            capacity,
            host,
            buffers,
            _inputs: inputs,
            _outputs: outputs,
            _weights: weights,
            tokens: vec![0; rows],
            logprobs: vec![0.0; rows],
            top: vec![TopLogprob::default(); rows * MAX_TOP_LOGPROBS],
        })
    }

    /// Samples one token for each of the first `rows.len()` rows of `logits` (`[rows, vocab]` f32,
    /// modified in place). `penalties` are the rows' history entries (each row's `penalty_start`
    /// indexes them, one entry per distinct token), `mask` the allowed-token bitmask rows. Only
    /// the ids (and log-probabilities) come back; the call synchronises.
    #[allow(clippy::too_many_arguments)]
    pub fn sample(
        &mut self,
        gpu: &Gpu,
        kernel: &Kernel,
        logits: DeviceArray,
        vocab: usize,
        rows: &[SampleRow],
        penalties: &[PenaltyEntry],
        mask: &[u32],
    ) -> Result<SampleOutput<'_>, CudaError> {
        let cap = self.capacity;
        if rows.len() > cap.rows || penalties.len() > cap.penalties || mask.len() > cap.mask_words {
            return Err(CudaError::Shape(format!(
                "sampling {} rows with {} penalty entries and {} mask words exceeds {cap:?}",
                rows.len(),
                penalties.len(),
                mask.len()
            )));
        }
        let n = rows.len();
        if n == 0 {
            // Still the step's synchronisation: the next step rewrites the pinned plan buffer.
            gpu.synchronize()?;
            return Ok(SampleOutput { tokens: &[], logprobs: &[], top: &[] });
        }
        let b = self.buffers;
        let parts: [(&[u8], DeviceArray, usize); 3] = [
            (bytemuck::cast_slice(rows), b.rows, 0),
            (bytemuck::cast_slice(penalties), b.penalties, b.rows.len),
            (bytemuck::cast_slice(mask), b.mask, b.rows.len + b.penalties.len),
        ];
        let host = self.host.as_mut_bytes();
        for (bytes, _, at) in parts {
            host[at..at + bytes.len()].copy_from_slice(bytes);
        }
        let host = self.host.as_bytes();
        for (bytes, device, at) in parts {
            if !bytes.is_empty() {
                gpu.copy_to_device(device, &host[at..at + bytes.len()])?;
            }
        }
        gpu.launch(&sample(kernel, logits.slice(0, n * vocab), vocab, n, &b)?)?;
        gpu.copy_to_host(bytemuck::cast_slice_mut(&mut self.tokens[..n]), b.tokens_out)?;
        let want_logprobs = rows.iter().any(|r| r.want_logprobs != 0 || r.top_logprobs != 0);
        if want_logprobs {
            gpu.copy_to_host(bytemuck::cast_slice_mut(&mut self.logprobs[..n]), b.logprobs_out)?;
            gpu.copy_to_host(bytemuck::cast_slice_mut(&mut self.top[..n * MAX_TOP_LOGPROBS]), b.top_out)?;
        }
        gpu.synchronize()?;
        Ok(SampleOutput {
            tokens: &self.tokens[..n],
            logprobs: if want_logprobs { &self.logprobs[..n] } else { &[] },
            top: if want_logprobs { &self.top[..n * MAX_TOP_LOGPROBS] } else { &[] },
        })
    }
}
