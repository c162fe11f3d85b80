//! For tests: the device every CUDA test runs on — the real GPU, or without one kiln's CPU
//! emulator of the driver (cuda/emu/, built with the `cuda` feature), so no CUDA test passes by
//! skipping — and the per-dtype tolerances of kernel comparisons.

use super::device::{Dtype, Gpu};
use super::driver::{self, Driver};
use crate::testing::Tolerance;

/// Chooses the CUDA driver for `test` (`driver::for_tests`: a usable GPU, else the emulator;
/// `KILN_REQUIRE_GPU` demands the GPU) and prints which. Panics with the reason when neither
/// opens: the emulator is built with the `cuda` feature, so that is a failure, not a skip.
pub fn cuda_for_test(test: &str) -> &'static Driver {
    let driver = driver::for_tests().unwrap_or_else(|why| panic!("{test}: no CUDA device to test on: {why}"));
    eprintln!("{test}: on {driver}");
    driver
}

/// Opens the device for `test` on the driver `cuda_for_test` chose; panics when it does not open.
pub fn gpu_for_test(test: &str) -> Gpu {
    let driver = cuda_for_test(test);
    Gpu::new(0).unwrap_or_else(|e| panic!("{test}: {driver} did not open: {e}"))
}

/// Tolerance for outputs rounded to `dtype` after f32 accumulation: a few units of the last place
/// of a value near 1 (f16 has 11 significant bits, bf16 8), plus an absolute floor for sums that
/// cancel.
pub fn tolerance(dtype: Dtype) -> Tolerance {
    match dtype {
        Dtype::F16 => Tolerance { atol: 2e-3, rtol: 4e-3 },
        Dtype::Bf16 => Tolerance { atol: 1.6e-2, rtol: 3e-2 },
        _ => Tolerance { atol: 1e-5, rtol: 1e-5 },
    }
}
