//! Launchers of cuda/gemv.cu, cuda/gemm.cu and cuda/gemm_sm90.cu: `out = x · wᵀ` against a
//! weight matrix (reference: ops::matmul). 1..8 rows go to the bandwidth-bound GEMV, more to the
//! mma.sync GEMM, whose small tile keeps enough blocks in flight for batched decode; large
//! products go to the wgmma GEMM on Hopper.

use super::device::{DeviceArray, Dtype, Gpu, Kernel, Launch};
use super::params::GemmParams;
use super::CudaError;

const GEMM_STAGES: u32 = 3;
const GEMM_ROW_BYTES: u32 = 80; // 32 k-elements of 2 bytes, padded by 16
const LARGE: (u32, u32, u32) = (128, 128, 256); // (BM, BN, threads)
const SMALL: (u32, u32, u32) = (64, 32, 128);
const WGMMA: (u32, u32, u32) = (128, 128, 256);
const WGMMA_SHARED_BYTES: u32 = 4 * 32 * 1024 + 1024; // 4 stages of two 16 KiB tiles, 1 KiB to align

fn shared_bytes((bm, bn, _): (u32, u32, u32)) -> u32 {
    GEMM_STAGES * (bm + bn) * GEMM_ROW_BYTES
}

/// Which kernel computes a product; `Auto` picks by shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmVariant {
    Auto,
    Gemv,
    TensorCoreSmall,
    TensorCoreLarge,
    /// Hopper only (`GemmKernels::has_wgmma`).
    Wgmma,
}

pub struct GemmKernels {
    gemv: Vec<Kernel>, // [8]: rows 1..=8
    small: Kernel,
    large: Kernel,
    wgmma: Option<Kernel>,
    multiprocessors: u32,
}

/// The GEMM kernels of `dtype`, each allowed the dynamic shared memory its tiles need (over
/// the default 48 KiB, which a kernel gets only when asked; asking again is harmless).
pub fn kernels(gpu: &Gpu, dtype: Dtype) -> Result<GemmKernels, CudaError> {
    let s = dtype.kernel_suffix();
    gpu.set_dynamic_shared(&format!("gemm_128x128_{s}"), shared_bytes(LARGE))?;
    gpu.set_dynamic_shared(&format!("gemm_64x32_{s}"), shared_bytes(SMALL))?;
    if gpu.info.wgmma {
        gpu.set_dynamic_shared(&format!("gemm_wgmma_{s}"), WGMMA_SHARED_BYTES)?;
    }
    Ok(GemmKernels {
        gemv: (1..=8).map(|m| gpu.kernel(&format!("gemv_m{m}_{s}"))).collect::<Result<_, _>>()?,
        small: gpu.kernel(&format!("gemm_64x32_{s}"))?,
        large: gpu.kernel(&format!("gemm_128x128_{s}"))?,
        wgmma: if gpu.info.wgmma { Some(gpu.kernel(&format!("gemm_wgmma_{s}"))?) } else { None },
        multiprocessors: gpu.info.multiprocessors,
    })
}

impl GemmKernels {
    pub fn has_wgmma(&self) -> bool {
        self.wgmma.is_some()
    }

    pub fn choose(&self, m: usize, n: usize) -> GemmVariant {
        if m <= 8 {
            return GemmVariant::Gemv;
        }
        // Large tiles pay once they fill the GPU: wgmma runs one 128x128 block per SM, so about
        // half a wave is enough; the mma.sync kernel wants two waves.
        let large_tiles = m.div_ceil(LARGE.0 as usize) * n.div_ceil(LARGE.1 as usize);
        let sms = self.multiprocessors as usize;
        if m > 64 && self.wgmma.is_some() && 2 * large_tiles >= sms {
            GemmVariant::Wgmma
        } else if m <= 64 || large_tiles < 2 * sms {
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
    // Rows of x and w are read 16 bytes at a time; any n works (odd ones, like a 32001-token
    // vocabulary, store their columns one at a time).
    if !k.is_multiple_of(8) {
        return Err(CudaError::Unsupported(format!("matrix products need k divisible by 8, got k {k} (n {n})")));
    }
    if !matches!(x.dtype, Dtype::F16 | Dtype::Bf16) {
        return Err(CudaError::Shape(format!("matrix product inputs must be f16 or bf16, got {:?}", x.dtype)));
    }
    x.expect("matmul input", x.dtype, m * k)?;
    w.expect("matmul weight", x.dtype, n * k)?;
    out.expect("matmul output", if out_f32 { Dtype::F32 } else { x.dtype }, m * n)?;
    let params =
        GemmParams { x: x.ptr, w: w.ptr, out: out.ptr, m: m as u32, n: n as u32, k: k as u32, out_f32: out_f32 as u32 };
    let variant = if variant == GemmVariant::Auto { kernels.choose(m, n) } else { variant };
    let launch = match variant {
        GemmVariant::Gemv => {
            if !(1..=8).contains(&m) {
                return Err(CudaError::Unsupported(format!("the GEMV takes 1 to 8 rows, got {m}")));
            }
            Launch::new(&kernels.gemv[m - 1], (n.div_ceil(8) as u32, 1, 1), (256, 1, 1), 0, &params)
        }
        GemmVariant::TensorCoreSmall | GemmVariant::TensorCoreLarge => {
            let (tile, kernel) =
                if variant == GemmVariant::TensorCoreSmall { (SMALL, &kernels.small) } else { (LARGE, &kernels.large) };
            let grid = (n.div_ceil(tile.1 as usize) as u32, m.max(1).div_ceil(tile.0 as usize) as u32, 1);
            Launch::new(kernel, grid, (tile.2, 1, 1), shared_bytes(tile), &params)
        }
        GemmVariant::Wgmma => {
            let kernel = kernels
                .wgmma
                .as_ref()
                .ok_or_else(|| CudaError::Unsupported("the wgmma GEMM needs a compute capability 9.0 GPU".into()))?;
            let grid = (n.div_ceil(WGMMA.1 as usize) as u32, m.max(1).div_ceil(WGMMA.0 as usize) as u32, 1);
            Launch::new(kernel, grid, (WGMMA.2, 1, 1), WGMMA_SHARED_BYTES, &params)
        }
        GemmVariant::Auto => unreachable!("Auto was resolved above"),
    };
    Ok(launch)
}
