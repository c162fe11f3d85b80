//! Launcher of cuda/rope.cu: RoPE fused with the paged KV-cache write (references:
//! ops::rope::apply_rope and the CPU backend's KV write).

use super::device::{DeviceArray, Dtype, Gpu, Kernel, Launch};
use super::params::RopeKvParams;
use super::CudaError;

pub fn kernel(gpu: &Gpu, dtype: Dtype) -> Result<Kernel, CudaError> {
    gpu.kernel(&format!("rope_kv_write_{}", dtype.kernel_suffix()))
}

/// Head geometry and cache geometry of one layer.
#[derive(Debug, Clone, Copy)]
pub struct KvGeometry {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    pub num_blocks: usize,
    pub max_blocks_per_seq: usize,
}

impl KvGeometry {
    /// Elements of one layer's K (or V) cache: `[num_blocks, num_kv_heads, block_size, head_dim]`.
    pub fn cache_len(&self) -> usize {
        self.num_blocks * self.num_kv_heads * self.block_size * self.head_dim
    }
}

/// The step's token arrays on the device (engine::plan::StepPlan, copied as-is).
#[derive(Debug, Clone, Copy)]
pub struct DevicePlan {
    pub token_ids: DeviceArray,
    pub positions: DeviceArray,
    pub token_seq: DeviceArray,
    pub seq_token_start: DeviceArray,
    pub seq_token_count: DeviceArray,
    pub block_tables: DeviceArray,
    pub logit_tokens: DeviceArray,
}

#[allow(clippy::too_many_arguments)]
pub fn rope_kv_write(
    kernel: &Kernel,
    geometry: KvGeometry,
    qkv: DeviceArray,
    q_out: DeviceArray,
    k_cache: DeviceArray,
    v_cache: DeviceArray,
    inv_freq: DeviceArray,
    plan: &DevicePlan,
    n_tokens: usize,
) -> Result<Launch, CudaError> {
    let g = geometry;
    let (q_dim, kv_dim) = (g.num_heads * g.head_dim, g.num_kv_heads * g.head_dim);
    qkv.expect("qkv", qkv.dtype, n_tokens * (q_dim + 2 * kv_dim))?;
    q_out.expect("roped q", qkv.dtype, n_tokens * q_dim)?;
    k_cache.expect("K cache", qkv.dtype, g.cache_len())?;
    v_cache.expect("V cache", qkv.dtype, g.cache_len())?;
    inv_freq.expect("inv_freq", Dtype::F32, g.head_dim / 2)?;
    plan.positions.expect("positions", Dtype::U32, n_tokens)?;
    plan.token_seq.expect("token_seq", Dtype::U32, n_tokens)?;
    let params = RopeKvParams {
        qkv: qkv.ptr,
        q_out: q_out.ptr,
        k_cache: k_cache.ptr,
        v_cache: v_cache.ptr,
        inv_freq: inv_freq.ptr,
        positions: plan.positions.ptr,
        token_seq: plan.token_seq.ptr,
        block_tables: plan.block_tables.ptr,
        n_tokens: n_tokens as u32,
        num_heads: g.num_heads as u32,
        num_kv_heads: g.num_kv_heads as u32,
        head_dim: g.head_dim as u32,
        block_size: g.block_size as u32,
        max_blocks_per_seq: g.max_blocks_per_seq as u32,
    };
    Ok(Launch::new(kernel, (n_tokens.max(1) as u32, 1, 1), (128, 1, 1), 0, &params))
}
