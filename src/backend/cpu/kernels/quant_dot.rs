//! Activations quantized to 8 bits per 32-value block, the operand of every integer matmul
//! kernel (`group_dot` for the 32-value formats Q8_0/Q4_0/Q4_1/Q5_0/Q5_1, `kquant_dot` for the
//! K-quants), and the x86 helpers those kernels share.
//!
//! A weight value is "affine unsigned", w = d·u + m, and an activation x ≈ dx·q, so one block
//! contributes d·dx·Σ u·q + m·(dx·Σ q) = d·dx·dot + m·s, with s = dx·Σq computed here once per
//! activation block. `vpdpbusd` (AVX-512 VNNI) computes Σ u·q for unsigned u and signed q
//! directly; AVX2 uses `vpmaddubsw` + `vpmaddwd`. The 8-bit quants are stored in the interleaved
//! order of `packed_quant::interleaved_index` (per four blocks, the first 16 values of each, then
//! the last 16), the order in which the K-quant rows' nibbles unpack.

// Index loops over fixed-size register arrays read as the math does.
#![allow(clippy::needless_range_loop)]

use crate::model::packed_quant::{interleaved_index, BLOCK};

/// Activations of n rows quantized to 8-bit blocks. Each row's block count is padded to a multiple
/// of 8 with zero blocks, so the kernels read whole groups of eight without bounds checks.
#[derive(Default)]
pub struct QuantizedActivations {
    pub blocks_per_row: usize,
    padded_blocks: usize,
    qs: Vec<i8>, // [n, padded_blocks * 32]
    d: Vec<f32>, // [n, padded_blocks]
    s: Vec<f32>, // [n, padded_blocks] dx·Σq
}

impl QuantizedActivations {
    /// Quantizes `x` (`[n, k]`, k a multiple of 32), reusing this buffer's memory.
    pub fn quantize(&mut self, isa: super::Isa, x: &[f32], k: usize) {
        assert_eq!(k % BLOCK, 0, "quantized activations need k to be a multiple of 32");
        let n = x.len() / k;
        self.blocks_per_row = k / BLOCK;
        self.padded_blocks = self.blocks_per_row.div_ceil(8) * 8;
        let pb = self.padded_blocks;
        self.qs.clear();
        self.qs.resize(n * pb * BLOCK, 0);
        self.d.clear();
        self.d.resize(n * pb, 0.0);
        self.s.clear();
        self.s.resize(n * pb, 0.0);
        for (t, row) in x.chunks_exact(k).enumerate() {
            let blocks = t * pb..t * pb + k / BLOCK;
            let qs = &mut self.qs[blocks.start * BLOCK..blocks.end * BLOCK];
            let (d, s) = (&mut self.d[blocks.clone()], &mut self.s[blocks]);
            match isa {
                // SAFETY: the level is supported (callers check); the slices hold the row's blocks.
                #[cfg(target_arch = "x86_64")]
                super::Isa::Avx512 => unsafe { x86::quantize_row_avx512(row, qs, d, s) },
                _ => quantize_row(isa, row, qs, d, s),
            }
        }
    }

    /// Activation row t: (quants in interleaved order, dx per block, s per block).
    /// Where the quants, scales and sums of each of `tokens` start: a tile kernel's activation
    /// operands. Plain loops rather than array maps: those are not always inlined, and this runs
    /// once per tile.
    pub(super) fn tile_pointers<const T: usize>(
        &self,
        tokens: [usize; T],
    ) -> ([*const i8; T], [*const f32; T], [*const f32; T]) {
        let (mut qs, mut d, mut s) = ([std::ptr::null(); T], [std::ptr::null(); T], [std::ptr::null(); T]);
        for (i, &t) in tokens.iter().enumerate() {
            let (row_qs, row_d, row_s) = self.row(t);
            (qs[i], d[i], s[i]) = (row_qs.as_ptr(), row_d.as_ptr(), row_s.as_ptr());
        }
        (qs, d, s)
    }

    pub(super) fn row(&self, t: usize) -> (&[i8], &[f32], &[f32]) {
        let pb = self.padded_blocks;
        (&self.qs[t * pb * BLOCK..(t + 1) * pb * BLOCK], &self.d[t * pb..(t + 1) * pb], &self.s[t * pb..(t + 1) * pb])
    }
}

#[inline(always)]
fn quantize_row_body<const FMA: bool>(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    let nb = x.len() / BLOCK;
    for (b, ((block, d), s)) in x.chunks_exact(BLOCK).zip(d.iter_mut()).zip(s.iter_mut()).enumerate() {
        let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
        let scale = amax / 127.0;
        let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        let mut quants = [0i8; BLOCK];
        let mut sum = 0i32;
        for (q, &v) in quants.iter_mut().zip(block) {
            let rounded = (v * inverse).round_ties_even() as i32;
            *q = rounded as i8;
            sum += rounded;
        }
        let (lo, hi) = (interleaved_index(nb, b, 0), interleaved_index(nb, b, 16));
        qs[lo..lo + 16].copy_from_slice(&quants[..16]);
        qs[hi..hi + 16].copy_from_slice(&quants[16..]);
        *d = scale;
        *s = scale * sum as f32;
    }
}

super::multiversion!(fn quantize_row(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) => quantize_row_body);

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

/// Where each weight row of a tile starts.
pub(super) fn row_pointers<const R: usize>(rows: [&[u8]; R]) -> [*const u8; R] {
    let mut pointers = [std::ptr::null(); R];
    for (pointer, row) in pointers.iter_mut().zip(rows) {
        *pointer = row.as_ptr();
    }
    pointers
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use super::{interleaved_index, BLOCK};
    use std::arch::x86_64::*;

    /// 32 bits as 32 bytes, 16 where the bit is set: fifth bits joined to nibbles by an OR.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn fifth_bits_avx2(bits: u32) -> __m256i {
        // Byte t takes byte t / 8 of the bits, then tests its bit t % 8.
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(bits as i32),
            _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0),
        );
        let bit_of_byte = _mm256_set1_epi64x(0x8040201008040201u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit_of_byte), bit_of_byte);
        _mm256_and_si256(set, _mm256_set1_epi8(16))
    }

    /// [`super::quantize_row_body`] with the same rounding (the default MXCSR mode is round to
    /// nearest even), 32 values per step.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn quantize_row_avx512(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
        let nb = x.len() / BLOCK;
        assert!(qs.len() >= nb * BLOCK && d.len() >= nb && s.len() >= nb, "quantized row buffers");
        let sign = _mm512_set1_ps(-0.0);
        for b in 0..nb {
            let v0 = _mm512_loadu_ps(x.as_ptr().add(b * BLOCK));
            let v1 = _mm512_loadu_ps(x.as_ptr().add(b * BLOCK + 16));
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_andnot_ps(sign, v0), _mm512_andnot_ps(sign, v1)));
            let scale = amax / 127.0;
            let inverse = _mm512_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
            let q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, inverse));
            let q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, inverse));
            let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
            let (lo, hi) = (interleaved_index(nb, b, 0), interleaved_index(nb, b, 16));
            _mm_storeu_si128(qs.as_mut_ptr().add(lo) as *mut __m128i, _mm512_cvtepi32_epi8(q0));
            _mm_storeu_si128(qs.as_mut_ptr().add(hi) as *mut __m128i, _mm512_cvtepi32_epi8(q1));
            d[b] = scale;
            s[b] = scale * sum as f32;
        }
    }

    /// Index vectors for `_mm512_permutexvar_ps` that spread per-block scales over the dot lanes
    /// of a group of four blocks (4 lanes each): the group at blocks 0..4 or 4..8 of eight.
    const SPREAD: [[i32; 16]; 2] = {
        let mut table = [[0i32; 16]; 2];
        let mut lane = 0;
        while lane < 16 {
            table[0][lane] = (lane / 4) as i32;
            table[1][lane] = 4 + (lane / 4) as i32;
            lane += 1;
        }
        table
    };

    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn spread_index(which: usize) -> __m512i {
        _mm512_loadu_si512(SPREAD[which].as_ptr() as *const _)
    }

    /// `[Σa, Σb, Σc, Σd]` of four 8-lane vectors, each by the same tree whatever the others are.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn hsum4(v: [__m256; 4]) -> [f32; 4] {
        let ab = _mm256_hadd_ps(v[0], v[1]);
        let cd = _mm256_hadd_ps(v[2], v[3]);
        let abcd = _mm256_hadd_ps(ab, cd);
        let sums = _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
        let mut out = [0f32; 4];
        _mm_storeu_ps(out.as_mut_ptr(), sums);
        out
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn hsum256(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }
}
