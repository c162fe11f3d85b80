//! Launcher of cuda/silu_mul.cu: SwiGLU over the fused gate/up projection (reference:
//! ops::silu_mul::silu_mul).

use super::device::{DeviceArray, Dtype, Gpu, Kernel, Launch};
use super::params::SiluMulParams;
use super::CudaError;

pub fn kernel(gpu: &Gpu, dtype: Dtype) -> Result<Kernel, CudaError> {
    gpu.kernel(&format!("silu_mul_{}", dtype.kernel_suffix()))
}

/// gate_up `[n_tokens, 2 * ffn]` (gate columns, then up columns) → out `[n_tokens, ffn]`.
pub fn silu_mul(
    kernel: &Kernel,
    gate_up: DeviceArray,
    out: DeviceArray,
    n_tokens: usize,
    ffn: usize,
) -> Result<Launch, CudaError> {
    if !ffn.is_multiple_of(8) {
        return Err(CudaError::Unsupported(format!("silu_mul needs an intermediate size divisible by 8, got {ffn}")));
    }
    gate_up.expect("gate_up", gate_up.dtype, n_tokens * 2 * ffn)?;
    out.expect("silu_mul output", gate_up.dtype, n_tokens * ffn)?;
    let params = SiluMulParams { gate_up: gate_up.ptr, out: out.ptr, n_tokens: n_tokens as u32, ffn: ffn as u32 };
    let vectors = (n_tokens * ffn / 8).max(1);
    Ok(Launch::new(kernel, (vectors.div_ceil(256).min(4096) as u32, 1, 1), (256, 1, 1), 0, &params))
}
