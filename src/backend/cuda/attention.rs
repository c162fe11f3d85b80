//! Launchers of cuda/attention.cu: paged causal GQA attention, the flash-attention style prefill
//! kernel and the split (flash-decoding) decode kernel with its reduction (reference:
//! ops::attention).

use super::device::{DeviceArray, Dtype, Gpu, Kernel, Launch};
use super::params::AttentionParams;
use super::rope::{DevicePlan, KvGeometry};
use super::CudaError;

pub const HEAD_DIMS: [usize; 2] = [64, 128];
const PREFILL_QUERIES: usize = 16;

pub struct AttentionKernels {
    prefill: Kernel,
    decode: Kernel,
    reduce: Kernel,
    head_dim: usize,
}

pub fn kernels(gpu: &Gpu, dtype: Dtype, head_dim: usize) -> Result<AttentionKernels, CudaError> {
    if !HEAD_DIMS.contains(&head_dim) {
        return Err(CudaError::Unsupported(format!(
            "attention kernels exist for head_dim {HEAD_DIMS:?}, the model has {head_dim}"
        )));
    }
    let s = dtype.kernel_suffix();
    Ok(AttentionKernels {
        prefill: gpu.kernel(&format!("attention_prefill_hd{head_dim}_{s}"))?,
        decode: gpu.kernel(&format!("attention_decode_hd{head_dim}_{s}"))?,
        reduce: gpu.kernel(&format!("attention_reduce_hd{head_dim}_{s}"))?,
        head_dim,
    })
}

/// Splits per decode token: enough warps to cover the GPU about four times over, at most 32.
pub fn decode_splits(n_tokens: usize, num_heads: usize, multiprocessors: u32) -> usize {
    let warps = n_tokens * num_heads;
    (4 * 4 * multiprocessors as usize).div_ceil(warps.max(1)).clamp(1, 32)
}

/// f32 elements of the decode scratch: `[n_splits, n_tokens, num_heads, head_dim + 2]`.
pub fn partial_len(n_splits: usize, n_tokens: usize, num_heads: usize, head_dim: usize) -> usize {
    n_splits * n_tokens * num_heads * (head_dim + 2)
}

#[allow(clippy::too_many_arguments)]
fn params(
    kernels: &AttentionKernels,
    g: KvGeometry,
    q: DeviceArray,
    k_cache: DeviceArray,
    v_cache: DeviceArray,
    out: DeviceArray,
    plan: &DevicePlan,
    n_tokens: usize,
    sliding_window: Option<usize>,
) -> Result<AttentionParams, CudaError> {
    if g.head_dim != kernels.head_dim || g.num_kv_heads == 0 || !g.num_heads.is_multiple_of(g.num_kv_heads) {
        return Err(CudaError::Shape(format!(
            "attention geometry {g:?} does not fit kernels for head_dim {}",
            kernels.head_dim
        )));
    }
    let q_dim = g.num_heads * g.head_dim;
    q.expect("attention q", q.dtype, n_tokens * q_dim)?;
    out.expect("attention output", q.dtype, n_tokens * q_dim)?;
    k_cache.expect("K cache", q.dtype, g.cache_len())?;
    v_cache.expect("V cache", q.dtype, g.cache_len())?;
    plan.positions.expect("positions", Dtype::U32, n_tokens)?;
    plan.token_seq.expect("token_seq", Dtype::U32, n_tokens)?;
    Ok(AttentionParams {
        q: q.ptr,
        k_cache: k_cache.ptr,
        v_cache: v_cache.ptr,
        out: out.ptr,
        partial: 0,
        positions: plan.positions.ptr,
        token_seq: plan.token_seq.ptr,
        block_tables: plan.block_tables.ptr,
        seq_token_start: plan.seq_token_start.ptr,
        seq_token_count: plan.seq_token_count.ptr,
        unused: 0,
        n_tokens: n_tokens as u32,
        num_heads: g.num_heads as u32,
        num_kv_heads: g.num_kv_heads as u32,
        head_dim: g.head_dim as u32,
        block_size: g.block_size as u32,
        max_blocks_per_seq: g.max_blocks_per_seq as u32,
        n_splits: 1,
        sliding_window: sliding_window.unwrap_or(0) as u32,
        scale: 1.0 / (g.head_dim as f32).sqrt(),
        pad: 0,
    })
}

/// Attention for every token of a step whose sequences are described by the plan's
/// seq_token_start / seq_token_count (`n_seqs` of them, at most `max_seq_tokens` tokens each).
#[allow(clippy::too_many_arguments)]
pub fn prefill(
    kernels: &AttentionKernels,
    g: KvGeometry,
    q: DeviceArray,
    k_cache: DeviceArray,
    v_cache: DeviceArray,
    out: DeviceArray,
    plan: &DevicePlan,
    n_tokens: usize,
    n_seqs: usize,
    max_seq_tokens: usize,
    sliding_window: Option<usize>,
) -> Result<Launch, CudaError> {
    let p = params(kernels, g, q, k_cache, v_cache, out, plan, n_tokens, sliding_window)?;
    plan.seq_token_start.expect("seq_token_start", Dtype::U32, n_seqs)?;
    plan.seq_token_count.expect("seq_token_count", Dtype::U32, n_seqs)?;
    let grid = (max_seq_tokens.div_ceil(PREFILL_QUERIES).max(1) as u32, n_seqs.max(1) as u32, g.num_heads as u32);
    Ok(Launch::new(&kernels.prefill, grid, (128, 1, 1), 0, &p))
}

/// Attention for `n_tokens` single-token decode rows (token_seq KILN_NONE marks padding):
/// the split kernel, and the reduction when `n_splits > 1`.
#[allow(clippy::too_many_arguments)]
pub fn decode(
    kernels: &AttentionKernels,
    g: KvGeometry,
    q: DeviceArray,
    k_cache: DeviceArray,
    v_cache: DeviceArray,
    out: DeviceArray,
    partial: DeviceArray,
    plan: &DevicePlan,
    n_tokens: usize,
    n_splits: usize,
    sliding_window: Option<usize>,
) -> Result<Vec<Launch>, CudaError> {
    let mut p = params(kernels, g, q, k_cache, v_cache, out, plan, n_tokens, sliding_window)?;
    p.n_splits = n_splits.max(1) as u32;
    if n_splits > 1 {
        partial.expect("attention partials", Dtype::F32, partial_len(n_splits, n_tokens, g.num_heads, g.head_dim))?;
        p.partial = partial.ptr;
    }
    let grid = (n_tokens.max(1) as u32, g.num_heads.div_ceil(4) as u32, p.n_splits);
    let mut launches = vec![Launch::new(&kernels.decode, grid, (128, 1, 1), 0, &p)];
    if n_splits > 1 {
        launches.push(Launch::new(
            &kernels.reduce,
            (n_tokens.max(1) as u32, g.num_heads as u32, 1),
            (g.head_dim as u32, 1, 1),
            0,
            &p,
        ));
    }
    Ok(launches)
}
