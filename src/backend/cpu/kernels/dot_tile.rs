//! The inner kernel of every float matmul: an MR×NR tile of dot products between MR activation
//! rows (f32) and NR weight rows (f32, f16 or bf16, converted in registers), over all k.
//!
//! Layout: each row is contiguous (`[k]`), rows are passed as pointers so the caller can repeat the
//! last row to cover a ragged edge and simply not store the repeated results. The k loop keeps one
//! accumulator per (activation row, weight row) pair, vectorized along k, and reduces them four at
//! a time at the end; with MR = NR = 4 an iteration does 8 loads for 16 FMAs, so the tile is bound
//! by FMA throughput once the weight rows sit in L1/L2, and by memory bandwidth when MR = 1 (decode).
//! A k that is not a multiple of the vector width ends with one masked (AVX-512) or scalar (AVX2,
//! portable) step.

// Index loops over fixed-size register arrays read as the math does.
#![allow(clippy::needless_range_loop)]

use half::{bf16, f16};

/// Element type of the weight rows, as a const generic.
pub const F32: u8 = 0;
pub const F16: u8 = 1;
pub const BF16: u8 = 2;

/// `out[t][r] = Σ_i x[t][i] · w[r][i]` for `i < k`, on the best path for `isa`.
///
/// # Safety
/// Every `x[t]` must point to `k` readable f32 and every `w[r]` to `k` readable elements of `DT`.
#[inline]
pub unsafe fn tile<const MR: usize, const NR: usize, const DT: u8>(
    isa: super::Isa,
    x: [*const f32; MR],
    w: [*const u8; NR],
    k: usize,
) -> [[f32; NR]; MR] {
    match isa {
        #[cfg(target_arch = "x86_64")]
        super::Isa::Avx512 => x86::tile_avx512::<MR, NR, DT>(x, w, k),
        #[cfg(target_arch = "x86_64")]
        super::Isa::Avx2 => x86::tile_avx2::<MR, NR, DT>(x, w, k),
        _ => tile_portable::<MR, NR, DT>(x, w, k),
    }
}

#[inline(always)]
unsafe fn load_scalar<const DT: u8>(w: *const u8, i: usize) -> f32 {
    match DT {
        F32 => *(w as *const f32).add(i),
        F16 => f16::from_bits(*(w as *const u16).add(i)).to_f32(),
        _ => bf16::from_bits(*(w as *const u16).add(i)).to_f32(),
    }
}

/// Plain Rust with eight independent partial sums per pair, which the compiler vectorizes.
unsafe fn tile_portable<const MR: usize, const NR: usize, const DT: u8>(
    x: [*const f32; MR],
    w: [*const u8; NR],
    k: usize,
) -> [[f32; NR]; MR] {
    const LANES: usize = 8;
    let mut acc = [[[0f32; LANES]; NR]; MR];
    let mut wv = [[0f32; LANES]; NR];
    let full = k / LANES * LANES;
    let mut i = 0;
    while i < full {
        for r in 0..NR {
            for l in 0..LANES {
                wv[r][l] = load_scalar::<DT>(w[r], i + l);
            }
        }
        for t in 0..MR {
            for r in 0..NR {
                for l in 0..LANES {
                    acc[t][r][l] += *x[t].add(i + l) * wv[r][l];
                }
            }
        }
        i += LANES;
    }
    let mut out = [[0f32; NR]; MR];
    for t in 0..MR {
        for r in 0..NR {
            let mut sum: f32 = acc[t][r].iter().sum();
            for j in full..k {
                sum += *x[t].add(j) * load_scalar::<DT>(w[r], j);
            }
            out[t][r] = sum;
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{load_scalar, F16, F32};
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    unsafe fn load16<const DT: u8>(w: *const u8, i: usize) -> __m512 {
        match DT {
            F32 => _mm512_loadu_ps((w as *const f32).add(i)),
            F16 => _mm512_cvtph_ps(_mm256_loadu_si256((w as *const u16).add(i) as *const __m256i)),
            _ => {
                let raw = _mm256_loadu_si256((w as *const u16).add(i) as *const __m256i);
                _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16))
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    unsafe fn load16_masked<const DT: u8>(w: *const u8, i: usize, mask: __mmask16) -> __m512 {
        match DT {
            F32 => _mm512_maskz_loadu_ps(mask, (w as *const f32).add(i)),
            F16 => _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, (w as *const u16).add(i) as *const i16)),
            _ => {
                let raw = _mm256_maskz_loadu_epi16(mask, (w as *const u16).add(i) as *const i16);
                _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16))
            }
        }
    }

    /// Each accumulator of an MR×NR tile, converted to eight lanes by `$lanes` (AVX-512 adds its
    /// halves first), summed by the same tree (hadd pairs, then the two 128-bit halves) whatever
    /// its position in the tile: four at a time in (token, row) order, the last group padded with
    /// zeros, so a (token, row) sum has the same bits in every tile shape. A macro so that it
    /// expands inside each tile function, with its target features and registers.
    macro_rules! reduce_each {
        ($mr:expr, $nr:expr, $acc:expr, $lanes:path) => {{
            let mut out = [[0f32; $nr]; $mr];
            let mut i = 0;
            while i < $mr * $nr {
                // (Plain loops rather than a closure: a closure would not get the function's
                // target features.)
                let mut v = [_mm256_setzero_ps(); 4];
                for (j, vj) in v.iter_mut().enumerate().take($mr * $nr - i) {
                    *vj = $lanes($acc[(i + j) / $nr][(i + j) % $nr]);
                }
                let mut sums = [0f32; 4];
                _mm_storeu_ps(sums.as_mut_ptr(), hsum4_256(v[0], v[1], v[2], v[3]));
                for (j, &sum) in sums.iter().enumerate().take($mr * $nr - i) {
                    out[(i + j) / $nr][(i + j) % $nr] = sum;
                }
                i += 4;
            }
            out
        }};
    }

    /// Horizontal sums of four vectors: `[Σa, Σb, Σc, Σd]`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum4_256(a: __m256, b: __m256, c: __m256, d: __m256) -> __m128 {
        let ab = _mm256_hadd_ps(a, b);
        let cd = _mm256_hadd_ps(c, d);
        let abcd = _mm256_hadd_ps(ab, cd);
        _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    unsafe fn half512(v: __m512) -> __m256 {
        _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)))
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    pub unsafe fn tile_avx512<const MR: usize, const NR: usize, const DT: u8>(
        x: [*const f32; MR],
        w: [*const u8; NR],
        k: usize,
    ) -> [[f32; NR]; MR] {
        let mut acc = [[_mm512_setzero_ps(); NR]; MR];
        let full = k / 16 * 16;
        let mut i = 0;
        while i < full {
            let mut wv = [_mm512_setzero_ps(); NR];
            for r in 0..NR {
                wv[r] = load16::<DT>(w[r], i);
            }
            for t in 0..MR {
                let xv = _mm512_loadu_ps(x[t].add(i));
                for r in 0..NR {
                    acc[t][r] = _mm512_fmadd_ps(xv, wv[r], acc[t][r]);
                }
            }
            i += 16;
        }
        if full < k {
            let mask: __mmask16 = (1u32 << (k - full)) as u16 - 1;
            let mut wv = [_mm512_setzero_ps(); NR];
            for r in 0..NR {
                wv[r] = load16_masked::<DT>(w[r], full, mask);
            }
            for t in 0..MR {
                let xv = _mm512_maskz_loadu_ps(mask, x[t].add(full));
                for r in 0..NR {
                    acc[t][r] = _mm512_fmadd_ps(xv, wv[r], acc[t][r]);
                }
            }
        }
        reduce_each!(MR, NR, acc, half512)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8<const DT: u8>(w: *const u8, i: usize) -> __m256 {
        match DT {
            F32 => _mm256_loadu_ps((w as *const f32).add(i)),
            F16 => _mm256_cvtph_ps(_mm_loadu_si128((w as *const u16).add(i) as *const __m128i)),
            _ => {
                let raw = _mm_loadu_si128((w as *const u16).add(i) as *const __m128i);
                _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16))
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tile_avx2<const MR: usize, const NR: usize, const DT: u8>(
        x: [*const f32; MR],
        w: [*const u8; NR],
        k: usize,
    ) -> [[f32; NR]; MR] {
        let mut acc = [[_mm256_setzero_ps(); NR]; MR];
        let full = k / 8 * 8;
        let mut i = 0;
        while i < full {
            let mut wv = [_mm256_setzero_ps(); NR];
            for r in 0..NR {
                wv[r] = load8::<DT>(w[r], i);
            }
            for t in 0..MR {
                let xv = _mm256_loadu_ps(x[t].add(i));
                for r in 0..NR {
                    acc[t][r] = _mm256_fmadd_ps(xv, wv[r], acc[t][r]);
                }
            }
            i += 8;
        }
        let mut out = reduce_each!(MR, NR, acc, std::convert::identity);
        for t in 0..MR {
            for r in 0..NR {
                for j in full..k {
                    out[t][r] += *x[t].add(j) * load_scalar::<DT>(w[r], j);
                }
            }
        }
        out
    }
}
