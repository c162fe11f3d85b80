//! A register-blocked outer product over k-major panels: the inner kernel of attention's two
//! matrix products, run in place on the paged KV cache (scores = Q·Kᵀ with each KV block's keys
//! stored k-major, out = P·V over the value rows).
//!
//! A panel is a k-major block (`panel[kk * stride + c]`, c < NR) of up to NR f16 columns (the KV
//! cache's keys or values, widened to f32 as they are loaded). The
//! microkernel computes an MR×NR block of the output, `out[t][c] = Σ_kk x[t][kk] · panel[kk][c]`,
//! keeping the MR×NR sums in registers: each k step loads NR/16 vectors of the panel, broadcasts
//! MR activations and issues MR·NR/16 FMAs, with no horizontal sums. AVX-512: MR = 8, NR = 32
//! (16 accumulators); AVX2: MR = 6, NR = 16 (12 accumulators). Panel loads are masked to the
//! columns asked for, so a panel may be narrower than NR (a KV block of 16 positions) and end at
//! the end of its memory; a call may continue the sums already in `out`, so a product over a
//! sequence's KV blocks is one chain of FMAs per output, block after block, the same bits as one
//! call over all of them.

// Index loops over fixed-size register arrays read as the math does.
#![allow(clippy::needless_range_loop)]

/// Panel width (weight rows per panel) for a level.
pub fn panel_rows(isa: super::Isa) -> usize {
    match isa {
        super::Isa::Avx512 => 32,
        _ => 16,
    }
}

/// Tokens per microkernel call for a level.
pub fn block_tokens(isa: super::Isa) -> usize {
    match isa {
        super::Isa::Avx512 => 8,
        _ => 6,
    }
}

/// `out[t][c] = Σ_kk x_t[kk] · f32(panel[kk * panel_stride + c])` for `t < tokens`, `c < cols`
/// (`cols ≤ panel_rows(isa)`), each sum taken in order of kk with one FMA per step, starting from
/// 0, or with `accumulate` from the value in `out`: so a row's results do not depend on the other
/// rows of the call, and a sum split over several calls is the same bits as one call.
///
/// # Safety
/// `x[t]` must point to `k` readable f32 for every t < `block_tokens(isa)` (repeat the last row
/// for ragged blocks), `panel` to `(k - 1) * panel_stride + cols` f16, and `out[t]` must be
/// writable (and, to accumulate, readable) at `c` for t < tokens, c < cols. (Rows are pointers so
/// that a block can mix rows of different heads: attention stacks a KV head's query heads into
/// one call.)
#[allow(clippy::too_many_arguments)]
pub unsafe fn microkernel(
    isa: super::Isa,
    x: &[*const f32; 8],
    k: usize,
    panel: *const half::f16,
    panel_stride: usize,
    out: &[*mut f32; 8],
    tokens: usize,
    cols: usize,
    accumulate: bool,
) {
    debug_assert!(cols >= 1 && cols <= panel_rows(isa), "a panel is 1..=NR columns");
    // Fewer rows than the block compile to a kernel with fewer accumulators; each row's sums are
    // the same instructions in the same order whatever the row count.
    macro_rules! rows {
        ($kernel:ident, $($mr:literal)*) => {
            match tokens {
                $($mr => x86::$kernel::<$mr>(x, k, panel, panel_stride, out, cols, accumulate),)*
                _ => unreachable!("at most block_tokens rows"),
            }
        };
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        super::Isa::Avx512 => rows!(kernel_x32, 1 2 3 4 5 6 7 8),
        #[cfg(target_arch = "x86_64")]
        super::Isa::Avx2 => rows!(kernel_x16, 1 2 3 4 5 6),
        _ => unreachable!("the portable level multiplies with dot_tile"),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use half::f16;
    use std::arch::x86_64::*;

    /// The f16 values under `mask` at `at`, widened (lanes outside the mask are 0 and not read).
    #[inline(always)]
    unsafe fn widen16(mask: __mmask16, at: *const f16) -> __m512 {
        _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, at as *const i16))
    }

    /// The first `n` (0..) of 8 f16 values at `at`, widened, the rest 0. AVX2 has no masked 16-bit
    /// load, and a full one could read past the cache's end; a partial panel goes through a copy.
    #[inline(always)]
    unsafe fn widen8(at: *const f16, n: usize) -> __m256 {
        if n >= 8 {
            _mm256_cvtph_ps(_mm_loadu_si128(at as *const __m128i))
        } else {
            let mut part = [0u16; 8];
            std::ptr::copy_nonoverlapping(at as *const u16, part.as_mut_ptr(), n);
            _mm256_cvtph_ps(_mm_loadu_si128(part.as_ptr() as *const __m128i))
        }
    }

    /// MR rows (MR ≤ 8) × 32 columns. Up to 16 columns (a KV block) one vector per k step.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
    pub unsafe fn kernel_x32<const MR: usize>(
        x: &[*const f32; 8],
        k: usize,
        panel: *const half::f16,
        panel_stride: usize,
        out: &[*mut f32; 8],
        cols: usize,
        accumulate: bool,
    ) {
        let lanes = |n: usize| -> __mmask16 {
            if n >= 16 {
                0xFFFF
            } else {
                ((1u32 << n) - 1) as u16
            }
        };
        let (mask_lo, mask_hi) = (lanes(cols), lanes(cols.saturating_sub(16)));
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        if accumulate {
            for t in 0..MR {
                acc[t][0] = _mm512_maskz_loadu_ps(mask_lo, out[t]);
                acc[t][1] = _mm512_maskz_loadu_ps(mask_hi, out[t].add(16));
            }
        }
        if cols <= 16 {
            for kk in 0..k {
                let b0 = widen16(mask_lo, panel.add(kk * panel_stride));
                for t in 0..MR {
                    acc[t][0] = _mm512_fmadd_ps(_mm512_set1_ps(*x[t].add(kk)), b0, acc[t][0]);
                }
            }
        } else {
            for kk in 0..k {
                let b0 = widen16(mask_lo, panel.add(kk * panel_stride));
                let b1 = widen16(mask_hi, panel.add(kk * panel_stride + 16));
                for t in 0..MR {
                    let a = _mm512_set1_ps(*x[t].add(kk));
                    acc[t][0] = _mm512_fmadd_ps(a, b0, acc[t][0]);
                    acc[t][1] = _mm512_fmadd_ps(a, b1, acc[t][1]);
                }
            }
        }
        for t in 0..MR {
            let row = out[t];
            _mm512_mask_storeu_ps(row, mask_lo, acc[t][0]);
            _mm512_mask_storeu_ps(row.add(16), mask_hi, acc[t][1]);
        }
    }

    /// MR rows (MR ≤ 6) × 16 columns. Up to 8 columns one vector per k step.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn kernel_x16<const MR: usize>(
        x: &[*const f32; 8],
        k: usize,
        panel: *const half::f16,
        panel_stride: usize,
        out: &[*mut f32; 8],
        cols: usize,
        accumulate: bool,
    ) {
        // Lane i of a mask loads when its sign bit is set.
        let lanes =
            |n: usize| _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        let (mask_lo, mask_hi) = (lanes(cols), lanes(cols.saturating_sub(8)));
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        if accumulate {
            for t in 0..MR {
                acc[t][0] = _mm256_maskload_ps(out[t], mask_lo);
                acc[t][1] = _mm256_maskload_ps(out[t].add(8), mask_hi);
            }
        }
        if cols <= 8 {
            for kk in 0..k {
                let b0 = widen8(panel.add(kk * panel_stride), cols);
                for t in 0..MR {
                    acc[t][0] = _mm256_fmadd_ps(_mm256_broadcast_ss(&*x[t].add(kk)), b0, acc[t][0]);
                }
            }
        } else {
            for kk in 0..k {
                let b0 = widen8(panel.add(kk * panel_stride), cols);
                let b1 = widen8(panel.add(kk * panel_stride + 8), cols.saturating_sub(8));
                for t in 0..MR {
                    let a = _mm256_broadcast_ss(&*x[t].add(kk));
                    acc[t][0] = _mm256_fmadd_ps(a, b0, acc[t][0]);
                    acc[t][1] = _mm256_fmadd_ps(a, b1, acc[t][1]);
                }
            }
        }
        for t in 0..MR {
            _mm256_maskstore_ps(out[t], mask_lo, acc[t][0]);
            _mm256_maskstore_ps(out[t].add(8), mask_hi, acc[t][1]);
        }
    }
}
