//! For tests: the GPU, or a printed reason to skip (so `cargo test --features cuda` passes on
//! machines without one), and the per-dtype tolerances of kernel comparisons.

use super::device::{Dtype, Gpu};
use crate::ops::compare::Tolerance;

/// Opens the GPU, or prints why a GPU test is skipped and returns None.
pub fn gpu_or_skip(test: &str) -> Option<Gpu> {
    if std::env::var_os("KILN_REQUIRE_GPU").is_some() {
        // tools/gpu-check sets this: there a missing GPU is a failure, not a skip.
        return Some(Gpu::new().unwrap_or_else(|e| panic!("{test}: KILN_REQUIRE_GPU is set but {e}")));
    }
    match Gpu::new() {
        Ok(gpu) => Some(gpu),
        Err(e) => {
            eprintln!("skipped {test}: {e}");
            None
        }
    }
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
