//! Activations quantized to 8 bits per 32-value block, the operand of every integer matmul kernel
//! (`group_dot`).
//!
//! A weight value is "affine unsigned", w = d·u + m, and an activation x ≈ dx·q, so one block
//! contributes d·dx·Σ u·q + m·(dx·Σ q) = d·dx·dot + m·s, with s = dx·Σq computed here once per
//! activation block. Q6_K's blocks have a scale per 16 values and an offset of −32 in the quants,
//! Σ(u − 32)·q = Σu·q − 32·Σq per half, which stays exact in the integers with the halves' Σq,
//! also computed here. `vpdpbusd` (AVX-512 VNNI) computes Σ u·q for unsigned u and signed q
//! directly; AVX2 uses `vpmaddubsw` + `vpmaddwd`.

use crate::model::packed_quant::BLOCK;

/// Activations of n rows quantized to 8-bit blocks, each row's quants in value order. The arrays
/// hold rows up to a multiple of [`PADDED_ROWS`]: a tile load of 16 consecutive rows (AMX) stays
/// inside them, and the rows past n (stale values) give results the kernel drops.
#[derive(Default)]
pub struct QuantizedActivations {
    pub blocks_per_row: usize,
    rows: usize,
    qs: Vec<i8>,         // [n, blocks_per_row * 32]
    d: Vec<f32>,         // [n, blocks_per_row]
    s: Vec<f32>,         // [n, blocks_per_row] dx·Σq
    half_sums: Vec<i32>, // [n, blocks_per_row, 2] Σq of values 0..16 and 16..32
}

/// One activation row's operands, as slices.
pub(super) struct ActivationRow<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub s: &'a [f32],
    pub half_sums: &'a [i32],
}

/// Where each of a tile's T activation rows starts: a kernel's operands.
pub(super) struct ActivationTile<const T: usize> {
    pub qs: [*const i8; T],
    pub d: [*const f32; T],
    pub s: [*const f32; T],
    pub half_sums: [*const i32; T],
}

/// Consecutive activation rows from one token on, `blocks_per_row` blocks apart: a tile operand.
pub(super) struct ConsecutiveRows {
    pub qs: *const i8,
    pub d: *const f32,
    pub s: *const f32,
    pub half_sums: *const i32,
}

/// The quantized arrays hold whole multiples of this many rows.
pub const PADDED_ROWS: usize = 16;

/// Values from which [`QuantizedActivations::quantize`] runs on the pool.
const QUANTIZE_PARALLEL_MIN: usize = 1 << 14;

impl QuantizedActivations {
    /// Quantizes `x` (`[n, k]`, k a multiple of 32), reusing this buffer's memory.
    pub fn quantize(&mut self, isa: super::Isa, x: &[f32], k: usize) {
        use rayon::prelude::*;
        assert_eq!(k % BLOCK, 0, "quantized activations need k to be a multiple of 32");
        let n = x.len() / k;
        let nb = k / BLOCK;
        self.blocks_per_row = nb;
        self.rows = n;
        // Every element of the n rows is written below: no need to clear first.
        let padded = n.next_multiple_of(PADDED_ROWS);
        self.qs.resize(padded * k, 0);
        self.d.resize(padded * nb, 0.0);
        self.s.resize(padded * nb, 0.0);
        self.half_sums.resize(2 * padded * nb, 0);
        // The step's other threads would wait for this pass: from a batched decode step's MLP
        // input (16 × 1536 values, ~10 µs on one thread) it is shared out; below, one task runs
        // it on the calling thread. Rows are independent, so the result is the same either way.
        let threads = rayon::current_num_threads();
        let rows_per_task = if x.len() >= QUANTIZE_PARALLEL_MIN { n.div_ceil(threads).max(1) } else { n.max(1) };
        x.par_chunks_exact(k)
            .zip(self.qs[..n * k].par_chunks_exact_mut(k))
            .zip(self.d[..n * nb].par_chunks_exact_mut(nb).zip(self.s[..n * nb].par_chunks_exact_mut(nb)))
            .zip(self.half_sums[..2 * n * nb].par_chunks_exact_mut(2 * nb))
            .with_min_len(rows_per_task)
            .for_each(|(((row, qs), (d, s)), half_sums)| match isa {
                // SAFETY: the level is supported (callers check); the slices hold the row's blocks.
                #[cfg(target_arch = "x86_64")]
                super::Isa::Avx512 => unsafe { x86::quantize_row_avx512(row, qs, d, s, half_sums) },
                _ => quantize_row(isa, row, qs, d, s, half_sums),
            });
    }

    #[inline]
    pub(super) fn row(&self, t: usize) -> ActivationRow<'_> {
        let nb = self.blocks_per_row;
        assert!(t < self.rows, "row {t} of {} quantized rows", self.rows);
        ActivationRow {
            qs: &self.qs[t * nb * BLOCK..(t + 1) * nb * BLOCK],
            d: &self.d[t * nb..(t + 1) * nb],
            s: &self.s[t * nb..(t + 1) * nb],
            half_sums: &self.half_sums[2 * t * nb..2 * (t + 1) * nb],
        }
    }

    /// The operands of `tokens`. Plain pointer arithmetic after one bounds check: this runs once
    /// per (16-row group, tile), and slicing each row four times per token there (a call, four
    /// bounds checks) took 5-8% of a 16-stream step.
    #[inline(always)]
    pub(super) fn tile<const T: usize>(&self, tokens: [usize; T]) -> ActivationTile<T> {
        let nb = self.blocks_per_row;
        assert!(tokens.iter().all(|&t| t < self.rows), "tile tokens must be quantized rows");
        let mut tile = ActivationTile {
            qs: [std::ptr::null(); T],
            d: [std::ptr::null(); T],
            s: [std::ptr::null(); T],
            half_sums: [std::ptr::null(); T],
        };
        for (i, &t) in tokens.iter().enumerate() {
            // In bounds: row t is quantized, and each array holds whole rows of its per-row length.
            tile.qs[i] = self.qs.as_ptr().wrapping_add(t * nb * BLOCK);
            tile.d[i] = self.d.as_ptr().wrapping_add(t * nb);
            tile.s[i] = self.s.as_ptr().wrapping_add(t * nb);
            tile.half_sums[i] = self.half_sums.as_ptr().wrapping_add(2 * t * nb);
        }
        tile
    }

    /// Rows `t0..t0 + PADDED_ROWS` as one operand (t0 a multiple of PADDED_ROWS; rows past the
    /// quantized ones are padding).
    #[inline]
    pub(super) fn consecutive_rows(&self, t0: usize) -> ConsecutiveRows {
        let nb = self.blocks_per_row;
        assert!(t0 < self.rows && t0.is_multiple_of(PADDED_ROWS), "a tile starts at a quantized row, 16-aligned");
        debug_assert!((t0 + PADDED_ROWS) * nb <= self.d.len());
        // In bounds: the arrays hold the rows up to the next multiple of PADDED_ROWS (`quantize`).
        ConsecutiveRows {
            qs: self.qs.as_ptr().wrapping_add(t0 * nb * BLOCK),
            d: self.d.as_ptr().wrapping_add(t0 * nb),
            s: self.s.as_ptr().wrapping_add(t0 * nb),
            half_sums: self.half_sums.as_ptr().wrapping_add(2 * t0 * nb),
        }
    }
}

#[inline(always)]
fn quantize_row_body<const FMA: bool>(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32], half_sums: &mut [i32]) {
    let blocks = x.chunks_exact(BLOCK).zip(qs.chunks_exact_mut(BLOCK)).zip(half_sums.chunks_exact_mut(2));
    for (((block, quants), half_sums), (d, s)) in blocks.zip(d.iter_mut().zip(s.iter_mut())) {
        let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
        let scale = amax / 127.0;
        let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        let mut sums = [0i32; 2];
        for (i, (q, &v)) in quants.iter_mut().zip(block).enumerate() {
            let rounded = (v * inverse).round_ties_even() as i32;
            *q = rounded as i8;
            sums[i / 16] += rounded;
        }
        half_sums.copy_from_slice(&sums);
        *d = scale;
        *s = scale * (sums[0] + sums[1]) as f32;
    }
}

super::multiversion!(fn quantize_row(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32], half_sums: &mut [i32]) => quantize_row_body);

/// The values the integer path actually multiplies: `x` rounded the way [`QuantizedActivations`]
/// rounds it (plain code, for tests to build their oracle from).
pub fn round_activations(x: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for block in x.chunks(BLOCK) {
        let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        out.extend(block.iter().map(|&v| d * (v * id).round_ties_even()));
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::BLOCK;
    use std::arch::x86_64::*;

    /// [`super::quantize_row_body`] with the same rounding (the default MXCSR mode is round to
    /// nearest even), 32 values per step.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn quantize_row_avx512(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32], half_sums: &mut [i32]) {
        let nb = x.len() / BLOCK;
        assert!(
            qs.len() >= nb * BLOCK && d.len() >= nb && s.len() >= nb && half_sums.len() >= 2 * nb,
            "quantized row buffers"
        );
        let sign = _mm512_set1_ps(-0.0);
        for b in 0..nb {
            let v0 = _mm512_loadu_ps(x.as_ptr().add(b * BLOCK));
            let v1 = _mm512_loadu_ps(x.as_ptr().add(b * BLOCK + 16));
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_andnot_ps(sign, v0), _mm512_andnot_ps(sign, v1)));
            let scale = amax / 127.0;
            let inverse = _mm512_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
            let q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, inverse));
            let q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, inverse));
            let (sum0, sum1) = (_mm512_reduce_add_epi32(q0), _mm512_reduce_add_epi32(q1));
            _mm_storeu_si128(qs.as_mut_ptr().add(b * BLOCK) as *mut __m128i, _mm512_cvtepi32_epi8(q0));
            _mm_storeu_si128(qs.as_mut_ptr().add(b * BLOCK + 16) as *mut __m128i, _mm512_cvtepi32_epi8(q1));
            half_sums[2 * b] = sum0;
            half_sums[2 * b + 1] = sum1;
            d[b] = scale;
            s[b] = scale * (sum0 + sum1) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Quantizing many rows at once (shared out over the pool above `QUANTIZE_PARALLEL_MIN`)
    /// gives each row the bits it gets alone, at every level, and a buffer reused for a smaller
    /// batch holds exactly that batch.
    #[test]
    fn rows_quantize_the_same_alone_and_together() {
        let k = 576;
        let n = QUANTIZE_PARALLEL_MIN.div_ceil(k) + 3;
        let x = crate::testing::seeded_values(7, n * k);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        for isa in super::super::Isa::available() {
            let mut together = QuantizedActivations::default();
            pool.install(|| together.quantize(isa, &x, k));
            for t in 0..n {
                let mut alone = QuantizedActivations::default();
                alone.quantize(isa, &x[t * k..(t + 1) * k], k);
                let (a, b) = (together.row(t), alone.row(0));
                assert!(
                    a.qs == b.qs && a.d == b.d && a.s == b.s && a.half_sums == b.half_sums,
                    "{} row {t}",
                    isa.name()
                );
            }
            pool.install(|| together.quantize(isa, &x[..2 * k], k));
            assert_eq!(together.rows, 2, "{}", isa.name());
            let padded = PADDED_ROWS * k;
            assert_eq!((together.qs.len(), together.d.len()), (padded, padded / BLOCK), "{}", isa.name());
        }
    }
}
