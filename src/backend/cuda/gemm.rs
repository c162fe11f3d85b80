//! Launchers of cuda/gemv.cu and cuda/gemm.cu: `out = x · wᵀ` against a weight matrix
//! (reference: ops::matmul). 1..8 rows go to the bandwidth-bound GEMV, more to the tensor-core
//! GEMM, whose small tile keeps enough blocks in flight for batched decode.

use super::device::{DeviceArray, Dtype, Gpu, Kernel, Launch};
use super::params::GemmParams;
use super::CudaError;

const GEMM_STAGES: u32 = 3;
const GEMM_ROW_BYTES: u32 = 80; // 32 k-elements of 2 bytes, padded by 16
const LARGE: (u32, u32, u32) = (128, 128, 256); // (BM, BN, threads)
const SMALL: (u32, u32, u32) = (64, 32, 128);

fn shared_bytes((bm, bn, _): (u32, u32, u32)) -> u32 {
    GEMM_STAGES * (bm + bn) * GEMM_ROW_BYTES
}

/// Raises the dynamic shared-memory limit of the GEMM kernels above the default 48 KiB.
pub(crate) fn configure(gpu: &Gpu) -> Result<(), CudaError> {
    for dtype in ["f16", "bf16"] {
        gpu.set_dynamic_shared(&format!("gemm_128x128_{dtype}"), shared_bytes(LARGE))?;
        gpu.set_dynamic_shared(&format!("gemm_64x32_{dtype}"), shared_bytes(SMALL))?;
    }
    Ok(())
}

/// Which kernel computes a product; `Auto` picks by shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmVariant {
    Auto,
    Gemv,
    TensorCoreSmall,
    TensorCoreLarge,
}

pub struct GemmKernels {
    gemv: Vec<Kernel>, // [8]: rows 1..=8
    small: Kernel,
    large: Kernel,
    multiprocessors: u32,
}

pub fn kernels(gpu: &Gpu, dtype: Dtype) -> Result<GemmKernels, CudaError> {
    let s = dtype.kernel_suffix();
    Ok(GemmKernels {
        gemv: (1..=8).map(|m| gpu.kernel(&format!("gemv_m{m}_{s}"))).collect::<Result<_, _>>()?,
        small: gpu.kernel(&format!("gemm_64x32_{s}"))?,
        large: gpu.kernel(&format!("gemm_128x128_{s}"))?,
        multiprocessors: gpu.info.multiprocessors,
    })
}

impl GemmKernels {
    pub fn choose(&self, m: usize, n: usize) -> GemmVariant {
        if m <= 8 {
            return GemmVariant::Gemv;
        }
        let large_tiles = m.div_ceil(LARGE.0 as usize) * n.div_ceil(LARGE.1 as usize);
        if m <= 64 || large_tiles < 2 * self.multiprocessors as usize {
            GemmVariant::TensorCoreSmall
        } else {
            GemmVariant::TensorCoreLarge
        }
    }
}

/// `out[m, n] = Σ_k x[m, k] · w[n, k]`: x `[m, k]` and w `[n, k]` in one dtype, out in that dtype
/// or f32 (`out_f32`).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    kernels: &GemmKernels,
    variant: GemmVariant,
    x: DeviceArray,
    w: DeviceArray,
    out: DeviceArray,
    m: usize,
    n: usize,
    k: usize,
    out_f32: bool,
) -> Result<Launch, CudaError> {
    if k % 8 != 0 || n % 2 != 0 {
        return Err(CudaError::Unsupported(format!("matrix products need k divisible by 8 and n even, got n {n}, k {k}")));
    }
    if !matches!(x.dtype, Dtype::F16 | Dtype::Bf16) {
        return Err(CudaError::Shape(format!("matrix product inputs must be f16 or bf16, got {:?}", x.dtype)));
    }
    x.expect("matmul input", x.dtype, m * k)?;
    w.expect("matmul weight", x.dtype, n * k)?;
    out.expect("matmul output", if out_f32 { Dtype::F32 } else { x.dtype }, m * n)?;
    let params = GemmParams { x: x.ptr, w: w.ptr, out: out.ptr, m: m as u32, n: n as u32, k: k as u32, out_f32: out_f32 as u32 };
    let variant = if variant == GemmVariant::Auto { kernels.choose(m, n) } else { variant };
    let launch = match variant {
        GemmVariant::Gemv => {
            if !(1..=8).contains(&m) {
                return Err(CudaError::Unsupported(format!("the GEMV takes 1 to 8 rows, got {m}")));
            }
            Launch::new(&kernels.gemv[m - 1], (n.div_ceil(8) as u32, 1, 1), (256, 1, 1), 0, &params)
        }
        GemmVariant::TensorCoreSmall | GemmVariant::TensorCoreLarge => {
            let (tile, kernel) = if variant == GemmVariant::TensorCoreSmall { (SMALL, &kernels.small) } else { (LARGE, &kernels.large) };
            let grid = (n.div_ceil(tile.1 as usize) as u32, m.max(1).div_ceil(tile.0 as usize) as u32, 1);
            Launch::new(kernel, grid, (tile.2, 1, 1), shared_bytes(tile), &params)
        }
        GemmVariant::Auto => unreachable!("Auto was resolved above"),
    };
    Ok(launch)
}
