//! A register-blocked outer product over k-major panels: the inner kernel of attention's two
//! matrix products (scores = Q·Kᵀ over panels of keys, out = P·V over panels of value columns).
//!
//! The caller packs the "weight" rows (keys, or value columns) as f32 panels of NR rows stored
//! k-major (`panel[kk][r]`, `[K, NR]`), zero-padded to whole panels. The microkernel computes an
//! MR×NR block of the output, `out[t][j0 + r] = Σ_kk x[t][kk] · panel[kk][r]`, keeping the MR×NR
//! sums in registers: each k step loads NR/16 vectors of the panel, broadcasts MR activations and
//! issues MR·NR/16 FMAs, with no horizontal sums. AVX-512: MR = 8, NR = 32 (16 accumulators,
//! 10 loads per 16 FMAs); AVX2: MR = 6, NR = 16 (12 accumulators). Bound by FMA throughput: the
//! panel (NR·K floats) and the activation rows stream from L1/L2.

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

/// Packs `rows` (`[num_rows, k]` f32) into panels `[ceil(num_rows / nr), k, nr]`, with the rows
/// past `num_rows` of the last panel zero.
pub fn pack_panels(isa: super::Isa, rows: &[f32], k: usize, panels: &mut [f32]) {
    let nr = panel_rows(isa);
    let num_rows = rows.len() / k;
    assert_eq!(panels.len(), num_rows.div_ceil(nr) * k * nr, "panels must be [panels, k, {nr}]");
    #[cfg(target_arch = "x86_64")]
    if isa == super::Isa::Avx512 {
        // SAFETY: the level is supported (callers check), and the lengths were checked above.
        return unsafe {
            x86::pack_panels_avx512::<{ super::dot_tile::F32 }>(rows.as_ptr() as *const u8, num_rows, k, panels)
        };
    }
    panels.fill(0.0);
    for (r, row) in rows.chunks_exact(k).enumerate() {
        let (panel, column) = (r / nr, r % nr);
        let base = &mut panels[panel * k * nr..(panel + 1) * k * nr];
        for (kk, &value) in row.iter().enumerate() {
            base[kk * nr + column] = value;
        }
    }
}

/// `out[t][c] = Σ_kk x_t[kk] · panel[kk * panel_stride + c]` for `t < tokens`,
/// `c < cols` (a packed panel has stride NR; any row-major block with NR readable floats per row
/// serves as well),
/// each sum taken in order of kk with one FMA per step, so a row's results do not depend on the
/// other rows of the call.
///
/// # Safety
/// `x[t]` must point to `k` readable f32 for every t < `block_tokens(isa)` (repeat the last row
/// for ragged blocks), `panel` to `(k - 1) * panel_stride + panel_rows(isa)` f32, and `out[t]`
/// must be writable at `c` for t < tokens, c < cols. (Rows are pointers so that a block can mix
/// rows of different heads: attention stacks a KV head's query heads into one call.)
#[allow(clippy::too_many_arguments)]
pub unsafe fn microkernel(
    isa: super::Isa,
    x: &[*const f32; 8],
    k: usize,
    panel: *const f32,
    panel_stride: usize,
    out: &[*mut f32; 8],
    tokens: usize,
    cols: usize,
) {
    // Fewer rows than the block compile to a kernel with fewer accumulators; each row's sums are
    // the same instructions in the same order whatever the row count.
    macro_rules! rows {
        ($kernel:ident, $($mr:literal)*) => {
            match tokens {
                $($mr => x86::$kernel::<$mr>(x, k, panel, panel_stride, out, cols),)*
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
    use super::super::dot_tile::{F16, F32};
    use std::arch::x86_64::*;

    /// Transposes 16 vectors in place: afterwards `v[i][j]` is the old `v[j][i]`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn transpose16(v: &mut [__m512; 16]) {
        // Interleave pairs of floats, then pairs of pairs, then 128-bit lanes twice.
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]);
        }
        for i in 0..4 {
            let (a, b, c, d) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
            v[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(c)));
            v[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(c)));
            v[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(b), _mm512_castps_pd(d)));
            v[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(b), _mm512_castps_pd(d)));
        }
        // Now v[4i + j] holds, in each 128-bit lane L, rows 4i..4i+4 of column 4L + j.
        for i in 0..2 {
            for j in 0..4 {
                let (a, b) = (v[8 * i + j], v[8 * i + 4 + j]);
                t[8 * i + j] = _mm512_shuffle_f32x4(a, b, 0b10_00_10_00);
                t[8 * i + 4 + j] = _mm512_shuffle_f32x4(a, b, 0b11_01_11_01);
            }
        }
        // t[8i + j] lanes: [rows 8i..8i+4 | rows 8i+4..8i+8] of columns j, 8 + j (low/high pairs);
        // t[8i + 4 + j]: the same for columns 4 + j, 12 + j.
        for j in 0..4 {
            for (half, offset) in [(0, 0), (1, 4)] {
                let (a, b) = (t[offset + j], t[8 + offset + j]);
                let column = 4 * half + j;
                v[column] = _mm512_shuffle_f32x4(a, b, 0b10_00_10_00);
                v[column + 8] = _mm512_shuffle_f32x4(a, b, 0b11_01_11_01);
            }
        }
    }

    /// Sixteen elements of type DT at `src` (element index `i`), masked, as f32.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
    unsafe fn load16<const DT: u8>(src: *const u8, i: usize, mask: __mmask16) -> __m512 {
        match DT {
            F32 => _mm512_maskz_loadu_ps(mask, (src as *const f32).add(i)),
            F16 => _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, (src as *const i16).add(i))),
            _ => {
                let raw = _mm256_maskz_loadu_epi16(mask, (src as *const i16).add(i));
                _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16))
            }
        }
    }

    /// `pack_panels` for panels of 32 rows of element type DT: 16×16 blocks loaded as rows
    /// (converted to f32), transposed in registers, stored as k-major columns.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
    pub unsafe fn pack_panels_avx512<const DT: u8>(src: *const u8, num_rows: usize, k: usize, panels: &mut [f32]) {
        let dst = panels.as_mut_ptr();
        for r0 in (0..num_rows.next_multiple_of(32)).step_by(16) {
            let (panel, half) = (r0 / 32, (r0 % 32) / 16);
            for k0 in (0..k).step_by(16) {
                let width = (k - k0).min(16);
                let mask: __mmask16 = if width == 16 { 0xFFFF } else { ((1u32 << width) - 1) as u16 };
                let mut v = [_mm512_setzero_ps(); 16];
                for (i, vi) in v.iter_mut().enumerate() {
                    if r0 + i < num_rows {
                        *vi = load16::<DT>(src, (r0 + i) * k + k0, mask);
                    }
                }
                transpose16(&mut v);
                for (i, vi) in v.iter().enumerate().take(width) {
                    _mm512_storeu_ps(dst.add(panel * k * 32 + (k0 + i) * 32 + half * 16), *vi);
                }
            }
        }
    }

    /// MR rows (MR ≤ 8) × 32 columns.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
    pub unsafe fn kernel_x32<const MR: usize>(
        x: &[*const f32; 8],
        k: usize,
        panel: *const f32,
        panel_stride: usize,
        out: &[*mut f32; 8],
        cols: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for kk in 0..k {
            let b0 = _mm512_loadu_ps(panel.add(kk * panel_stride));
            let b1 = _mm512_loadu_ps(panel.add(kk * panel_stride + 16));
            for t in 0..MR {
                let a = _mm512_set1_ps(*x[t].add(kk));
                acc[t][0] = _mm512_fmadd_ps(a, b0, acc[t][0]);
                acc[t][1] = _mm512_fmadd_ps(a, b1, acc[t][1]);
            }
        }
        let mask_lo: __mmask16 = if cols >= 16 { 0xFFFF } else { ((1u32 << cols) - 1) as u16 };
        let mask_hi: __mmask16 = if cols >= 32 {
            0xFFFF
        } else if cols <= 16 {
            0
        } else {
            ((1u32 << (cols - 16)) - 1) as u16
        };
        for t in 0..MR {
            let row = out[t];
            _mm512_mask_storeu_ps(row, mask_lo, acc[t][0]);
            _mm512_mask_storeu_ps(row.add(16), mask_hi, acc[t][1]);
        }
    }

    /// MR rows (MR ≤ 6) × 16 columns.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn kernel_x16<const MR: usize>(
        x: &[*const f32; 8],
        k: usize,
        panel: *const f32,
        panel_stride: usize,
        out: &[*mut f32; 8],
        cols: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        for kk in 0..k {
            let b0 = _mm256_loadu_ps(panel.add(kk * panel_stride));
            let b1 = _mm256_loadu_ps(panel.add(kk * panel_stride + 8));
            for t in 0..MR {
                let a = _mm256_broadcast_ss(&*x[t].add(kk));
                acc[t][0] = _mm256_fmadd_ps(a, b0, acc[t][0]);
                acc[t][1] = _mm256_fmadd_ps(a, b1, acc[t][1]);
            }
        }
        for t in 0..MR {
            let row = out[t];
            if cols >= 16 {
                _mm256_storeu_ps(row, acc[t][0]);
                _mm256_storeu_ps(row.add(8), acc[t][1]);
            } else {
                let mut values = [0f32; 16];
                _mm256_storeu_ps(values.as_mut_ptr(), acc[t][0]);
                _mm256_storeu_ps(values.as_mut_ptr().add(8), acc[t][1]);
                std::ptr::copy_nonoverlapping(values.as_ptr(), row, cols);
            }
        }
    }
}
