//! Launcher of cuda/embedding.cu: token embedding gather (reference: ops::embedding).

use super::device::{DeviceArray, Dtype, Gpu, Kernel, Launch};
use super::params::EmbeddingParams;
use super::CudaError;

pub fn kernel(gpu: &Gpu, dtype: Dtype) -> Result<Kernel, CudaError> {
    gpu.kernel(&format!("embedding_{}", dtype.kernel_suffix()))
}

/// `out[t] = table[token_ids[t]]`: table `[vocab, hidden]`, out `[n_tokens, hidden]` f32.
/// Token ids must be below vocab (the backend checks plans before a step).
pub fn embedding(
    kernel: &Kernel,
    table: DeviceArray,
    hidden: usize,
    token_ids: DeviceArray,
    out: DeviceArray,
    n_tokens: usize,
) -> Result<Launch, CudaError> {
    if !hidden.is_multiple_of(8) {
        return Err(CudaError::Unsupported(format!("embedding needs a hidden size divisible by 8, got {hidden}")));
    }
    token_ids.expect("token ids", Dtype::U32, n_tokens)?;
    out.expect("embedding output", Dtype::F32, n_tokens * hidden)?;
    let params = EmbeddingParams {
        table: table.ptr,
        token_ids: token_ids.ptr,
        out: out.ptr,
        n_tokens: n_tokens as u32,
        hidden: hidden as u32,
    };
    Ok(Launch::new(kernel, (n_tokens.max(1) as u32, 1, 1), (128, 1, 1), 0, &params))
}
