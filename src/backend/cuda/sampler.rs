//! The GPU sampling step: pinned staging and device buffers for a step's sampling rows, penalty
//! entries and masks, sized once for the most rows; each step uploads them, runs sample_f32
//! over the logits already on the device, and reads back only the ids (and asked-for
//! log-probabilities).

use super::device::{DeviceArray, DeviceBuffer, Dtype, Gpu, Kernel, PinnedBuffer};
use super::params::{PenaltyEntry, SampleRow, TopLogprob, MAX_TOP_LOGPROBS};
use super::sampling::{self, SampleBuffers};
use super::CudaError;

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
    /// Room for `rows` rows of `vocab` logits with `penalties` history entries in all.
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
        gpu.launch(&sampling::sample(kernel, logits.slice(0, n * vocab), vocab, n, &b)?)?;
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
