//! Launcher of cuda/rmsnorm.cu: RMSNorm fused with the residual add (reference: ops::rmsnorm).

use super::device::{DeviceArray, Dtype, Gpu, Kernel, Launch};
use super::params::RmsNormParams;
use super::CudaError;

pub fn kernel(gpu: &Gpu, dtype: Dtype) -> Result<Kernel, CudaError> {
    gpu.kernel(&format!("rmsnorm_residual_{}", dtype.kernel_suffix()))
}

/// `residual += delta` (if given), then `out = rmsnorm(residual) * weight`; with `row_index`,
/// output row r normalises residual row `row_index[r]` (+ its delta) and residual is left as is.
/// residual, delta: `[rows, dim]` f32; weight: `[dim]` f32; out: `[n_rows, dim]` in the kernel's dtype.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_residual(
    kernel: &Kernel,
    residual: DeviceArray,
    delta: Option<DeviceArray>,
    weight: DeviceArray,
    out: DeviceArray,
    row_index: Option<DeviceArray>,
    n_rows: usize,
    eps: f32,
) -> Result<Launch, CudaError> {
    let dim = weight.len;
    if !dim.is_multiple_of(4) {
        return Err(CudaError::Unsupported(format!("rmsnorm needs a dimension divisible by 4, got {dim}")));
    }
    weight.expect("rmsnorm weight", Dtype::F32, dim)?;
    let residual_rows = if row_index.is_some() { residual.len / dim } else { n_rows };
    residual.expect("rmsnorm residual", Dtype::F32, residual_rows * dim)?;
    if let Some(delta) = delta {
        delta.expect("rmsnorm delta", Dtype::F32, residual_rows * dim)?;
    }
    if let Some(rows) = row_index {
        rows.expect("rmsnorm row index", Dtype::U32, n_rows)?;
    }
    out.expect("rmsnorm output", out.dtype, n_rows * dim)?;
    let params = RmsNormParams {
        residual: residual.ptr,
        delta: delta.map_or(0, |d| d.ptr),
        weight: weight.ptr,
        out: out.ptr,
        row_index: row_index.map_or(0, |r| r.ptr),
        n_rows: n_rows as u32,
        dim: dim as u32,
        eps,
        pad: 0,
    };
    Ok(Launch::new(kernel, (n_rows.max(1) as u32, 1, 1), (256, 1, 1), 0, &params))
}
