//! Dot products of block-quantized weight rows (kiln's row layout, `model::packed_quant`) with
//! activations quantized to 8 bits per 32-value block, in integer arithmetic: how decode computes
//! on Q8_0/Q4_0/Q4_1/Q5_0/Q5_1 without ever widening the weights to floats (and, through
//! `kquant_dot`, on the K-quants). Q5's fifth bits join the nibbles as a byte mask: on AVX-512 a
//! 64-bit mask loaded from the row drives a masked `vpaddb` of 16.
//!
//! Every format is "affine unsigned", w = d·u + m, and the activations are x ≈ dx·q, so one block
//! contributes d·dx·Σ u·q + m·(dx·Σ q) = d·dx·dot + m·s, with s = dx·Σq computed once per
//! activation block. `vpdpbusd` (AVX-512 VNNI) computes Σ u·q for unsigned u and signed q
//! directly; AVX2 uses `vpmaddubsw` + `vpmaddwd`. The activations' 8-bit quants are stored in the
//! interleaved order of `packed_quant::interleaved_index`, so per four blocks the AVX-512 loop
//! does one 64-byte weight load (two for Q8_0), two nibble masks, two dots into one accumulator,
//! one scale spread, one convert and one FMA per row, with the activation loads shared by four
//! rows: about 2.5 instructions per 32 weights, well under memory bandwidth on two cores.

// Index loops over fixed-size register arrays read as the math does.
#![allow(clippy::needless_range_loop)]

use half::f16;

use crate::model::packed_quant::{self, interleaved_index, PackedQuant, BLOCK};

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

/// [`dot_packed`] for R rows × T activation rows at once: weight loads are shared by the tokens
/// and activation loads by the rows. Every (row, token) pair goes through the same instructions in
/// the same order whatever R and T are, so a token's result does not depend on what it is batched
/// with. `t0..t0 + T` must be activation rows of `xq` (repeat the last one for ragged edges).
pub fn dot_packed_tile<const R: usize, const T: usize>(
    isa: super::Isa,
    format: PackedQuant,
    rows: [&[u8]; R],
    xq: &QuantizedActivations,
    tokens: [usize; T],
) -> [[f32; R]; T] {
    if let PackedQuant::K(k) = format {
        return super::kquant_dot::dot_tile(isa, k, rows, xq, tokens);
    }
    let nb = xq.blocks_per_row;
    for row in rows {
        assert_eq!(row.len(), format.row_bytes(nb * BLOCK), "weight row and activations disagree on k");
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        super::Isa::Avx512 => {
            let (qs, d, s) = xq.tile_pointers(tokens);
            let weights = row_pointers(rows);
            // SAFETY: the row lengths were checked above; each activation row holds whole padded
            // groups of 8 blocks; weight reads past the last block are masked.
            unsafe {
                if format.qh_bytes() > 0 {
                    x86::dot_tile_avx512::<R, T, true>(format, weights, nb, qs, d, s)
                } else {
                    x86::dot_tile_avx512::<R, T, false>(format, weights, nb, qs, d, s)
                }
            }
        }
        _ => tokens.map(|t| rows.map(|row| dot_packed(isa, format, row, xq, t))),
    }
}

/// Where each weight row of a tile starts.
pub(super) fn row_pointers<const R: usize>(rows: [&[u8]; R]) -> [*const u8; R] {
    let mut pointers = [std::ptr::null(); R];
    for (pointer, row) in pointers.iter_mut().zip(rows) {
        *pointer = row.as_ptr();
    }
    pointers
}

/// `Σ_i w[i] · x_t[i]` for one packed weight row (`format.row_bytes(k)` bytes) and activation row t.
pub fn dot_packed(isa: super::Isa, format: PackedQuant, row: &[u8], xq: &QuantizedActivations, t: usize) -> f32 {
    if let PackedQuant::K(k) = format {
        let [[sum]] = super::kquant_dot::dot_tile::<1, 1>(isa, k, [row], xq, [t]);
        return sum;
    }
    let nb = xq.blocks_per_row;
    assert_eq!(row.len(), format.row_bytes(nb * BLOCK), "weight row and activations disagree on k");
    let (qs, d, s) = xq.row(t);
    match isa {
        // AVX-512 has only the tile kernel: a single row is its 1 × 1 tile.
        #[cfg(target_arch = "x86_64")]
        super::Isa::Avx512 => dot_packed_tile::<1, 1>(isa, format, [row], xq, [t])[0][0],
        #[cfg(target_arch = "x86_64")]
        super::Isa::Avx2 => unsafe { x86::dot_avx2(format, row.as_ptr(), nb, qs.as_ptr(), d.as_ptr(), s.as_ptr()) },
        _ => dot_portable(format, row, nb, qs, d, s),
    }
}

fn f16_at(bytes: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32()
}

fn dot_portable(format: PackedQuant, row: &[u8], nb: usize, qs: &[i8], d: &[f32], s: &[f32]) -> f32 {
    let sections = packed_quant::split_row(format, row, nb * BLOCK);
    let mut total = 0f32;
    for b in 0..nb {
        let mut dot = 0i32;
        for i in 0..BLOCK {
            let u = packed_quant::quant_at(format, &sections, nb, b, i);
            dot += u as i32 * qs[interleaved_index(nb, b, i)] as i32;
        }
        let dw = f16_at(sections.d, b);
        let m = match format.offset_factor() {
            Some(c) => -c * dw,
            None => f16_at(sections.m, b),
        };
        total += dw * d[b] * dot as f32 + m * s[b];
    }
    total
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use super::{interleaved_index, PackedQuant, BLOCK};
    use std::arch::x86_64::*;

    /// Where a row's sections start: (d, m, qh, qs).
    unsafe fn sections(
        format: PackedQuant,
        row: *const u8,
        nb: usize,
    ) -> (*const u16, *const u16, *const u8, *const u8) {
        let d = row as *const u16;
        let m = row.add(2 * nb) as *const u16;
        let qh = row.add(format.scale_bytes() * nb);
        let qs = qh.add(format.qh_bytes() * nb);
        (d, m, qh, qs)
    }

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

    /// Two tail blocks (plain order) of quants as 64 bytes: for Q4, each block's low nibbles then
    /// its high nibbles. `both` is false when only the first block exists.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn load_pair<const FIVE_BITS: bool>(
        format: PackedQuant,
        qs: *const u8,
        qh: *const u8,
        both: bool,
    ) -> __m512i {
        match format {
            PackedQuant::Q8_0 => {
                let mask: __mmask64 = if both { u64::MAX } else { u32::MAX as u64 };
                _mm512_maskz_loadu_epi8(mask, qs as *const i8)
            }
            _ => {
                let mask: __mmask32 = if both { u32::MAX } else { u16::MAX as u32 };
                let raw = _mm256_maskz_loadu_epi8(mask, qs as *const i8);
                let spread =
                    _mm512_permutexvar_epi64(_mm512_set_epi64(3, 2, 3, 2, 1, 0, 1, 0), _mm512_castsi256_si512(raw));
                let shifted = _mm512_srlv_epi64(spread, _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0));
                let nibbles = _mm512_and_si512(shifted, _mm512_set1_epi8(0x0F));
                if !FIVE_BITS {
                    return nibbles;
                }
                // Tail blocks' fifth bits are in plain order: bit 32·j + i for value i of block j.
                let bits = if both {
                    std::ptr::read_unaligned(qh as *const u64)
                } else {
                    std::ptr::read_unaligned(qh as *const u32) as u64
                };
                _mm512_mask_add_epi8(nibbles, bits, nibbles, _mm512_set1_epi8(16))
            }
        }
    }

    /// Index vectors for `_mm512_permutexvar_ps` that spread 8 per-block scales over the dot
    /// lanes: for a whole group of 4 blocks (4 lanes each; groups at blocks 0 and 4 of the 8), and
    /// for a pair of tail blocks (8 lanes each; pairs at blocks 0, 2, 4, 6).
    const SPREAD: [[i32; 16]; 6] = {
        let mut table = [[0i32; 16]; 6];
        let mut lane = 0;
        while lane < 16 {
            table[0][lane] = (lane / 4) as i32;
            table[1][lane] = 4 + (lane / 4) as i32;
            let mut pair = 0;
            while pair < 4 {
                table[2 + pair][lane] = (2 * pair + lane / 8) as i32;
                pair += 1;
            }
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

    /// R rows × T activation rows. Per 8 blocks, each row's d (and m) and each token's dx (and
    /// s) are loaded once; each whole group of 4 blocks then costs per row one or two loads (plus
    /// the nibble masks) and a scale spread, per token two loads and a scale spread, and per pair
    /// two dots into one accumulator (lanes 4j..4j+4 belong to block j), a scale product, a
    /// convert and an FMA. Blocks past the last whole group go two at a time in plain order.
    /// The offset terms Σ m·s run as a second pass over the blocks, in the same order for every
    /// pair.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
    /// `FIVE_BITS` (Q5_0, Q5_1) is a constant so the other formats' loops stay as they were.
    pub unsafe fn dot_tile_avx512<const R: usize, const T: usize, const FIVE_BITS: bool>(
        format: PackedQuant,
        rows: [*const u8; R],
        nb: usize,
        xqs: [*const i8; T],
        xd: [*const f32; T],
        xs: [*const f32; T],
    ) -> [[f32; R]; T] {
        // Loops over fixed arrays throughout, not array maps or from_fn: a closure that is not
        // inlined would run its intrinsics as calls, outside this function's target features.
        let quant_bytes = format.quant_bytes();
        let whole = nb / 4 * 4;
        let mut sections_of =
            [(std::ptr::null::<u16>(), std::ptr::null::<u16>(), std::ptr::null::<u8>(), std::ptr::null::<u8>()); R];
        for r in 0..R {
            sections_of[r] = sections(format, rows[r], nb);
        }
        let sections = sections_of;
        let group_index = [spread_index(0), spread_index(1)];
        let pair_index = [spread_index(2), spread_index(3), spread_index(4), spread_index(5)];
        let low_nibbles = _mm512_set1_epi8(0x0F);
        let sixteen = _mm512_set1_epi8(16);
        let mut acc = [[_mm512_setzero_ps(); R]; T];
        let mut b = 0;
        while b < nb {
            let valid = (nb - b).min(8);
            let mask8: __mmask8 = ((1u32 << valid) - 1) as u8;
            let mut dw = [_mm512_setzero_ps(); R];
            for r in 0..R {
                let d_ptr = sections[r].0;
                dw[r] =
                    _mm512_castps256_ps512(_mm256_cvtph_ps(_mm_maskz_loadu_epi16(mask8, d_ptr.add(b) as *const i16)));
            }
            let mut dx = [_mm512_setzero_ps(); T];
            for t in 0..T {
                dx[t] = _mm512_castps256_ps512(_mm256_loadu_ps(xd[t].add(b)));
            }
            let mut c = b;
            while c + 4 <= whole.min(b + 8) {
                let index = group_index[(c - b) / 4];
                let mut x = [(_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_ps()); T];
                for t in 0..T {
                    let lo = _mm512_loadu_si512(xqs[t].add(c * BLOCK) as *const _);
                    let hi = _mm512_loadu_si512(xqs[t].add(c * BLOCK + 64) as *const _);
                    x[t] = (lo, hi, _mm512_permutexvar_ps(index, dx[t]));
                }
                for r in 0..R {
                    let qs = sections[r].3.add(c * quant_bytes);
                    let (mut w_lo, mut w_hi) = match format {
                        PackedQuant::Q8_0 => {
                            (_mm512_loadu_si512(qs as *const _), _mm512_loadu_si512(qs.add(64) as *const _))
                        }
                        _ => {
                            let raw = _mm512_loadu_si512(qs as *const _);
                            (
                                _mm512_and_si512(raw, low_nibbles),
                                _mm512_and_si512(_mm512_srli_epi16(raw, 4), low_nibbles),
                            )
                        }
                    };
                    if FIVE_BITS {
                        // The group's fifth bits: 64 for its values 0..16, then 64 for 16..32.
                        let bits = sections[r].2.add(4 * c);
                        let lo_mask = std::ptr::read_unaligned(bits as *const u64);
                        let hi_mask = std::ptr::read_unaligned(bits.add(8) as *const u64);
                        w_lo = _mm512_mask_add_epi8(w_lo, lo_mask, w_lo, sixteen);
                        w_hi = _mm512_mask_add_epi8(w_hi, hi_mask, w_hi, sixteen);
                    }
                    let w_scale = _mm512_permutexvar_ps(index, dw[r]);
                    for t in 0..T {
                        let (x_lo, x_hi, x_scale) = x[t];
                        let dot =
                            _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), w_lo, x_lo), w_hi, x_hi);
                        let scale = _mm512_mul_ps(w_scale, x_scale);
                        acc[t][r] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(dot), acc[t][r]);
                    }
                }
                c += 4;
            }
            while c < b + valid {
                let both = c + 1 < nb;
                let index = pair_index[(c - b) / 2];
                let mut x = [(_mm512_setzero_si512(), _mm512_setzero_ps()); T];
                for t in 0..T {
                    x[t] = (_mm512_loadu_si512(xqs[t].add(c * BLOCK) as *const _), _mm512_permutexvar_ps(index, dx[t]));
                }
                for r in 0..R {
                    let wq = load_pair::<FIVE_BITS>(
                        format,
                        sections[r].3.add(c * quant_bytes),
                        sections[r].2.add(4 * c),
                        both,
                    );
                    let w_scale = _mm512_permutexvar_ps(index, dw[r]);
                    for t in 0..T {
                        let (xq, x_scale) = x[t];
                        let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wq, xq);
                        let scale = _mm512_mul_ps(w_scale, x_scale);
                        acc[t][r] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(dot), acc[t][r]);
                    }
                }
                c += 2;
            }
            b += 8;
        }
        // Σ m·s (Q4_1, Q5_1) or Σ d·s (the others, scaled by −c below), eight blocks at a time.
        let mut offset_acc = [[_mm256_setzero_ps(); R]; T];
        let mut b = 0;
        while b < nb {
            let mask8: __mmask8 = ((1u32 << (nb - b).min(8)) - 1) as u8;
            for r in 0..R {
                let (d_ptr, m_ptr, _, _) = sections[r];
                let source = if format.has_min() { m_ptr } else { d_ptr };
                let w = _mm256_cvtph_ps(_mm_maskz_loadu_epi16(mask8, source.add(b) as *const i16));
                for t in 0..T {
                    offset_acc[t][r] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xs[t].add(b)), offset_acc[t][r]);
                }
            }
            b += 8;
        }
        // Each pair's total: its 16 dot lanes folded to 8, plus its 8 offset lanes (times −c for
        // the formats whose offset is −c·d), summed four pairs at a time by one tree.
        let factor = _mm256_set1_ps(format.offset_factor().map_or(1.0, |c| -c));
        let mut out = [[0f32; R]; T];
        for t in 0..T {
            for r0 in (0..R).step_by(4) {
                let mut lanes = [_mm256_setzero_ps(); 4];
                for i in 0..4.min(R - r0) {
                    let a = acc[t][r0 + i];
                    let folded = _mm256_add_ps(
                        _mm512_castps512_ps256(a),
                        _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)),
                    );
                    lanes[i] = _mm256_fmadd_ps(offset_acc[t][r0 + i], factor, folded);
                }
                let sums = hsum4(lanes);
                let count = 4.min(R - r0);
                out[t][r0..r0 + count].copy_from_slice(&sums[..count]);
            }
        }
        out
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn hsum256(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    /// Eight f16 scales starting at `ptr`, of which `valid` exist (the rest read as zero).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_scales8(ptr: *const u16, valid: usize) -> __m256 {
        if valid == 8 {
            _mm256_cvtph_ps(_mm_loadu_si128(ptr as *const __m128i))
        } else {
            let mut padded = [0u16; 8];
            std::ptr::copy_nonoverlapping(ptr, padded.as_mut_ptr(), valid);
            _mm256_cvtph_ps(_mm_loadu_si128(padded.as_ptr() as *const __m128i))
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_avx2(
        format: PackedQuant,
        row: *const u8,
        nb: usize,
        xqs: *const i8,
        xd: *const f32,
        xs: *const f32,
    ) -> f32 {
        let (d_ptr, m_ptr, qh, qs) = sections(format, row, nb);
        let ones = _mm256_set1_epi16(1);
        let low_nibbles = _mm256_set1_epi8(0x0F);
        let sign_bits = _mm256_set1_epi8(-128);
        let mut acc = _mm256_setzero_ps();
        let mut offset_acc = _mm256_setzero_ps();
        let mut b = 0;
        while b < nb {
            let valid = (nb - b).min(8);
            let dw = load_scales8(d_ptr.add(b), valid);
            let sx = _mm256_loadu_ps(xs.add(b));
            let scales = _mm256_mul_ps(dw, _mm256_loadu_ps(xd.add(b)));
            offset_acc = if format.has_min() {
                _mm256_fmadd_ps(load_scales8(m_ptr.add(b), valid), sx, offset_acc)
            } else {
                _mm256_fmadd_ps(dw, sx, offset_acc)
            };
            for j in 0..valid {
                let block = b + j;
                let (lo, hi) = (interleaved_index(nb, block, 0), interleaved_index(nb, block, 16));
                let xq = _mm256_loadu2_m128i(xqs.add(hi) as *const __m128i, xqs.add(lo) as *const __m128i);
                let pairs = match format {
                    PackedQuant::Q8_0 => {
                        // u·q with u up to 255 would saturate vpmaddubsw: use w = u − 128 and the
                        // sign trick |w|·(q·sign w), then add back 128·Σq through the offset term.
                        let u = _mm256_loadu2_m128i(qs.add(hi) as *const __m128i, qs.add(lo) as *const __m128i);
                        let w = _mm256_xor_si256(u, sign_bits);
                        _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(xq, w))
                    }
                    _ => {
                        let raw = _mm_loadu_si128(qs.add(block * 16) as *const __m128i);
                        let both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
                        let mut w = _mm256_and_si256(both, low_nibbles);
                        if format.qh_bytes() > 0 {
                            // u ≤ 31, so pair sums stay within i16: 31·127·2.
                            let bits = std::ptr::read_unaligned(qh.add(lo / 8) as *const u16) as u32
                                | (std::ptr::read_unaligned(qh.add(hi / 8) as *const u16) as u32) << 16;
                            w = _mm256_or_si256(w, fifth_bits_avx2(bits));
                        }
                        _mm256_maddubs_epi16(w, xq)
                    }
                };
                let dot = _mm256_madd_epi16(pairs, ones);
                let lane = _mm256_set1_epi32(j as i32);
                let scale = _mm256_permutevar8x32_ps(scales, lane);
                acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(dot), acc);
            }
            b += 8;
        }
        let offset_sum = hsum256(offset_acc);
        let offsets = match format.offset_factor() {
            // The dot above used w = u − 128 directly, so no offset is owed.
            _ if format == PackedQuant::Q8_0 => 0.0,
            Some(c) => -c * offset_sum,
            None => offset_sum,
        };
        hsum256(acc) + offsets
    }
}
