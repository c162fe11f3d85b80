//! Dot products of K-quant weight rows (Q4_K, Q5_K, Q6_K in `model::packed_kquant`'s layout) with
//! the 8-bit activation blocks of `quant_dot`, in integer arithmetic, without widening the weights.
//!
//! Q4_K/Q5_K: block b (sub-block j of its super-block) contributes
//! `(d·sc_j)·dx_b·Σ u·q − (dmin·m_j)·s_b` with s_b = dx_b·Σq: `quant_dot`'s affine form with
//! factors per sub-block, built once per super-block from the unpacked scales (one 16-byte load,
//! one widen, one convert, one multiply gives all eight d·sc_j and dmin·m_j). Q5_K adds its fifth
//! bits as a byte mask (`vpaddb` under a 64-bit mask loaded straight from the row).
//!
//! Q6_K: each 32-value activation block meets two 16-value sub-blocks with their own scales, so
//! the two halves keep separate integer sums; in the interleaved order a 64-byte vector of either
//! half holds one sub-block per 16 bytes (4 dot lanes), so a group of four blocks is two dot
//! vectors with two scale spreads. The −32 offset stays in the integers, where it is exact:
//! Σ(u − 32)·q = Σu·q − 32·Σq, and each token's dot accumulators start at −32·Σq per lane, made
//! once per token and group by the same `vpdpbusd` with a constant 32 and shared by every row of
//! the tile. That needs no float offset pass and no partial activation sums in
//! `QuantizedActivations` (its s covers 32 values, and the halves' scales differ).
//!
//! Batch invariance as in `quant_dot`: a (row, token) pair goes through the same instructions in
//! the same order whatever the tile shape.

// Index loops over fixed-size register arrays read as the math does.
#![allow(clippy::needless_range_loop)]

use super::quant_dot::QuantizedActivations;
use crate::model::packed_kquant::{self, KQuant};
use crate::model::packed_quant::{interleaved_index, BLOCK};

/// `out[t][r] = Σ_i w_r[i] · x_{tokens[t]}[i]` for R K-quant rows × T activation rows. Every
/// (row, token) pair goes through the same instructions in the same order whatever R and T are.
pub fn dot_tile<const R: usize, const T: usize>(
    isa: super::Isa,
    format: KQuant,
    rows: [&[u8]; R],
    xq: &QuantizedActivations,
    tokens: [usize; T],
) -> [[f32; R]; T] {
    let nb = xq.blocks_per_row;
    assert!(nb.is_multiple_of(packed_kquant::BLOCKS_PER_SUPER), "K-quant rows are whole super-blocks");
    for row in rows {
        assert_eq!(row.len(), packed_kquant::row_bytes(format, nb * BLOCK), "weight row and activations disagree on k");
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        super::Isa::Avx512 => {
            let (qs, d, s) = xq.tile_pointers(tokens);
            let weights = super::quant_dot::row_pointers(rows);
            // SAFETY: the level is supported (callers check); the row lengths were checked above,
            // and K-quant rows are whole super-blocks, so every load stays inside its row.
            unsafe {
                match format {
                    KQuant::Q4_K => x86::dot_tile_k4_avx512::<R, T, false>(weights, nb, qs, d, s),
                    KQuant::Q5_K => x86::dot_tile_k4_avx512::<R, T, true>(weights, nb, qs, d, s),
                    KQuant::Q6_K => x86::dot_tile_q6_avx512::<R, T>(weights, nb, qs, d),
                }
            }
        }
        _ => tokens.map(|t| rows.map(|row| dot(isa, format, row, xq, t))),
    }
}

/// `Σ_i w[i] · x_t[i]` for one K-quant row and activation row t (the Portable and AVX2 levels).
fn dot(isa: super::Isa, format: KQuant, row: &[u8], xq: &QuantizedActivations, t: usize) -> f32 {
    let nb = xq.blocks_per_row;
    let (qs, d, s) = xq.row(t);
    match (isa, format) {
        // SAFETY: the level is supported (callers check); `dot_tile` checked the row length.
        #[cfg(target_arch = "x86_64")]
        (super::Isa::Avx2 | super::Isa::Avx512, KQuant::Q6_K) => unsafe {
            x86::dot_q6_avx2(row.as_ptr(), nb, qs.as_ptr(), d.as_ptr())
        },
        #[cfg(target_arch = "x86_64")]
        (super::Isa::Avx2 | super::Isa::Avx512, _) => unsafe {
            x86::dot_k4_avx2(format == KQuant::Q5_K, row.as_ptr(), nb, qs.as_ptr(), d.as_ptr(), s.as_ptr())
        },
        _ => dot_portable(format, row, nb, qs, d, s),
    }
}

/// The plain version: per block, the integer dot of its quants with the activation quants, then
/// the block's factors.
fn dot_portable(format: KQuant, row: &[u8], nb: usize, qs: &[i8], d: &[f32], s: &[f32]) -> f32 {
    let split = packed_kquant::split_row(format, row, nb * BLOCK);
    let integer_dot = |b: usize, values: std::ops::Range<usize>, offset: i32| -> i32 {
        values
            .map(|i| {
                let u = packed_kquant::quant_at(format, &split, nb, b, i) as i32;
                (u - offset) * qs[interleaved_index(nb, b, i)] as i32
            })
            .sum()
    };
    let mut total = 0f32;
    for b in 0..nb {
        match format {
            KQuant::Q4_K | KQuant::Q5_K => {
                let (scale, min) = packed_kquant::k4_block_factors(&split, b);
                total += scale * d[b] * integer_dot(b, 0..BLOCK, 0) as f32 - min * s[b];
            }
            KQuant::Q6_K => {
                for half in 0..2 {
                    let scale = packed_kquant::q6_sub_block_factor(&split, 2 * b + half);
                    total += scale * d[b] * integer_dot(b, 16 * half..16 * half + 16, 32) as f32;
                }
            }
        }
    }
    total
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::quant_dot::x86::{fifth_bits_avx2, hsum256, hsum4, spread_index};
    use super::{interleaved_index, packed_kquant, KQuant, BLOCK};
    use std::arch::x86_64::*;

    /// Eight lanes of a 512-bit vector's upper half.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn upper_half(v: __m512) -> __m256 {
        _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))
    }

    /// Each pair's 16 dot lanes folded to 8, minus its 8 offset lanes, summed four pairs at a time
    /// by one tree (so a pair's sum does not depend on its neighbours).
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn finish<const R: usize, const T: usize>(acc: [[__m512; R]; T], offset: [[__m256; R]; T]) -> [[f32; R]; T] {
        let mut out = [[0f32; R]; T];
        for t in 0..T {
            for r0 in (0..R).step_by(4) {
                let count = 4.min(R - r0);
                let mut lanes = [_mm256_setzero_ps(); 4];
                for i in 0..count {
                    let a = acc[t][r0 + i];
                    let folded = _mm256_add_ps(_mm512_castps512_ps256(a), upper_half(a));
                    lanes[i] = _mm256_sub_ps(folded, offset[t][r0 + i]);
                }
                let sums = hsum4(lanes);
                out[t][r0..r0 + count].copy_from_slice(&sums[..count]);
            }
        }
        out
    }

    /// Q4_K (`FIVE_BITS` false) or Q5_K, R rows × T tokens. Per super-block and row: the 16
    /// factors (d·sc, dmin·m) in one vector; per group of four blocks and row: one 64-byte load,
    /// two nibble masks (plus two masked adds for Q5_K) and a scale spread; per pair: two dots
    /// into one accumulator, a scale product, a convert and an FMA.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
    pub unsafe fn dot_tile_k4_avx512<const R: usize, const T: usize, const FIVE_BITS: bool>(
        rows: [*const u8; R],
        nb: usize,
        xqs: [*const i8; T],
        xd: [*const f32; T],
        xs: [*const f32; T],
    ) -> [[f32; R]; T] {
        let format = if FIVE_BITS { KQuant::Q5_K } else { KQuant::Q4_K };
        let ns = nb / 8;
        let (scales_at, qh_at, qs_at) = packed_kquant::section_offsets(format, ns);
        let group_index = [spread_index(0), spread_index(1)];
        // Lanes 0..8 take d, lanes 8..16 dmin.
        let header_index = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        let low_nibbles = _mm512_set1_epi8(0x0F);
        let sixteen = _mm512_set1_epi8(16);
        let mut acc = [[_mm512_setzero_ps(); R]; T];
        let mut offset_acc = [[_mm256_setzero_ps(); R]; T];
        for s in 0..ns {
            let b = 8 * s;
            // Lanes 0..8: d·sc_j; lanes 8..16: dmin·m_j (each one f32 rounding, as the dequantizer).
            let mut factors = [_mm512_setzero_ps(); R];
            for r in 0..R {
                let header = std::ptr::read_unaligned(rows[r].add(4 * s) as *const i32);
                let dm = _mm512_permutexvar_ps(
                    header_index,
                    _mm512_castps128_ps512(_mm_cvtph_ps(_mm_cvtsi32_si128(header))),
                );
                let bytes = _mm_loadu_si128(rows[r].add(scales_at + 16 * s) as *const __m128i);
                factors[r] = _mm512_mul_ps(dm, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes)));
            }
            let mut dx = [_mm512_setzero_ps(); T];
            for t in 0..T {
                dx[t] = _mm512_castps256_ps512(_mm256_loadu_ps(xd[t].add(b)));
                let sx = _mm256_loadu_ps(xs[t].add(b));
                for r in 0..R {
                    offset_acc[t][r] = _mm256_fmadd_ps(upper_half(factors[r]), sx, offset_acc[t][r]);
                }
            }
            for g in 0..2 {
                let c = b + 4 * g;
                let index = group_index[g];
                let mut x = [(_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_ps()); T];
                for t in 0..T {
                    let lo = _mm512_loadu_si512(xqs[t].add(c * BLOCK) as *const _);
                    let hi = _mm512_loadu_si512(xqs[t].add(c * BLOCK + 64) as *const _);
                    x[t] = (lo, hi, _mm512_permutexvar_ps(index, dx[t]));
                }
                for r in 0..R {
                    let raw = _mm512_loadu_si512(rows[r].add(qs_at + 16 * c) as *const _);
                    let mut w_lo = _mm512_and_si512(raw, low_nibbles);
                    let mut w_hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low_nibbles);
                    if FIVE_BITS {
                        // The group's fifth bits: 64 for its first halves, then 64 for its second.
                        let bits = rows[r].add(qh_at + 4 * c);
                        let (lo_mask, hi_mask) = (
                            std::ptr::read_unaligned(bits as *const u64),
                            std::ptr::read_unaligned(bits.add(8) as *const u64),
                        );
                        w_lo = _mm512_mask_add_epi8(w_lo, lo_mask, w_lo, sixteen);
                        w_hi = _mm512_mask_add_epi8(w_hi, hi_mask, w_hi, sixteen);
                    }
                    let w_scale = _mm512_permutexvar_ps(index, factors[r]);
                    for t in 0..T {
                        let (x_lo, x_hi, x_scale) = x[t];
                        let dot =
                            _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), w_lo, x_lo), w_hi, x_hi);
                        let scale = _mm512_mul_ps(w_scale, x_scale);
                        acc[t][r] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(dot), acc[t][r]);
                    }
                }
            }
        }
        finish(acc, offset_acc)
    }

    /// Index vectors that spread Q6_K's 16 sub-block factors over a group's dot lanes: for group
    /// g (0, 1) of a super-block, lane l of its first-half vector belongs to sub-block
    /// 8g + 2·(l / 4) and of its second-half vector to the next one.
    const Q6_SPREAD: [[i32; 16]; 4] = {
        let mut table = [[0i32; 16]; 4];
        let mut lane = 0;
        while lane < 16 {
            let mut g = 0;
            while g < 2 {
                table[2 * g][lane] = (8 * g + 2 * (lane / 4)) as i32;
                table[2 * g + 1][lane] = (8 * g + 2 * (lane / 4) + 1) as i32;
                g += 1;
            }
            lane += 1;
        }
        table
    };

    /// Q6_K, R rows × T tokens. Per super-block and row: the 16 factors d·sc in one vector; per
    /// group of four blocks and row: a 64-byte load of low nibbles and a 32-byte broadcast of top
    /// bits, shifted four ways into place (two shifts, two masks, two merges); per group and token:
    /// the −32·Σq starting values; per pair: two dots, two scale products, two converts, two FMAs.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
    pub unsafe fn dot_tile_q6_avx512<const R: usize, const T: usize>(
        rows: [*const u8; R],
        nb: usize,
        xqs: [*const i8; T],
        xd: [*const f32; T],
    ) -> [[f32; R]; T] {
        let ns = nb / 8;
        let (scales_at, qh_at, qs_at) = packed_kquant::section_offsets(KQuant::Q6_K, ns);
        let group_index = [spread_index(0), spread_index(1)];
        let mut sub_index = [_mm512_setzero_si512(); 4];
        for i in 0..4 {
            sub_index[i] = _mm512_loadu_si512(Q6_SPREAD[i].as_ptr() as *const _);
        }
        // The first-half vector's bytes 0..32 take bit pair 0 of the 32 top-bit bytes, bytes 32..64
        // pair 1; the second half's pairs 2 and 3. Shifted to bits 4-5, above the nibble.
        let first_shift = _mm512_set_epi64(2, 2, 2, 2, 4, 4, 4, 4);
        let second_shift = _mm512_set_epi64(2, 2, 2, 2, 0, 0, 0, 0);
        let low_nibbles = _mm512_set1_epi8(0x0F);
        let top_bits = _mm512_set1_epi8(0x30);
        let thirty_two = _mm512_set1_epi8(32);
        let mut acc = [[_mm512_setzero_ps(); R]; T];
        for s in 0..ns {
            let b = 8 * s;
            let mut factors = [_mm512_setzero_ps(); R];
            for r in 0..R {
                let d = std::ptr::read_unaligned(rows[r].add(2 * s) as *const u16);
                let d = _mm512_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(d as i32)));
                let scales = _mm_loadu_si128(rows[r].add(scales_at + 16 * s) as *const __m128i);
                factors[r] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(scales)));
            }
            let mut dx = [_mm512_setzero_ps(); T];
            for t in 0..T {
                dx[t] = _mm512_castps256_ps512(_mm256_loadu_ps(xd[t].add(b)));
            }
            for g in 0..2 {
                let c = b + 4 * g;
                // (first-half quants, second-half quants, their −32·Σq lanes, scale spread)
                let mut x = [(
                    _mm512_setzero_si512(),
                    _mm512_setzero_si512(),
                    _mm512_setzero_si512(),
                    _mm512_setzero_si512(),
                    _mm512_setzero_ps(),
                ); T];
                for t in 0..T {
                    let lo = _mm512_loadu_si512(xqs[t].add(c * BLOCK) as *const _);
                    let hi = _mm512_loadu_si512(xqs[t].add(c * BLOCK + 64) as *const _);
                    let zero = _mm512_setzero_si512();
                    let lo_offset = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, thirty_two, lo));
                    let hi_offset = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, thirty_two, hi));
                    x[t] = (lo, hi, lo_offset, hi_offset, _mm512_permutexvar_ps(group_index[g], dx[t]));
                }
                for r in 0..R {
                    let raw = _mm512_loadu_si512(rows[r].add(qs_at + 16 * c) as *const _);
                    let high = _mm512_broadcast_i64x4(_mm256_loadu_si256(rows[r].add(qh_at + 8 * c) as *const __m256i));
                    let w_lo = _mm512_or_si512(
                        _mm512_and_si512(raw, low_nibbles),
                        _mm512_and_si512(_mm512_sllv_epi64(high, first_shift), top_bits),
                    );
                    let w_hi = _mm512_or_si512(
                        _mm512_and_si512(_mm512_srli_epi16(raw, 4), low_nibbles),
                        _mm512_and_si512(_mm512_srlv_epi64(high, second_shift), top_bits),
                    );
                    let lo_scale = _mm512_permutexvar_ps(sub_index[2 * g], factors[r]);
                    let hi_scale = _mm512_permutexvar_ps(sub_index[2 * g + 1], factors[r]);
                    for t in 0..T {
                        let (x_lo, x_hi, lo_offset, hi_offset, x_scale) = x[t];
                        let lo_dot = _mm512_dpbusd_epi32(lo_offset, w_lo, x_lo);
                        let hi_dot = _mm512_dpbusd_epi32(hi_offset, w_hi, x_hi);
                        let lo_total = _mm512_mul_ps(lo_scale, x_scale);
                        acc[t][r] = _mm512_fmadd_ps(lo_total, _mm512_cvtepi32_ps(lo_dot), acc[t][r]);
                        let hi_total = _mm512_mul_ps(hi_scale, x_scale);
                        acc[t][r] = _mm512_fmadd_ps(hi_total, _mm512_cvtepi32_ps(hi_dot), acc[t][r]);
                    }
                }
            }
        }
        finish(acc, [[_mm256_setzero_ps(); R]; T])
    }

    /// One block's 32 activation quants in the order of its 4-bit weights: values 0..16, 16..32.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn block_activations(xqs: *const i8, nb: usize, block: usize) -> __m256i {
        let (lo, hi) = (interleaved_index(nb, block, 0), interleaved_index(nb, block, 16));
        _mm256_loadu2_m128i(xqs.add(hi) as *const __m128i, xqs.add(lo) as *const __m128i)
    }

    /// One block's 32 nibbles as bytes, values 0..16 then 16..32.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn block_nibbles(qs: *const u8, block: usize) -> __m256i {
        let raw = _mm_loadu_si128(qs.add(16 * block) as *const __m128i);
        _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(0x0F))
    }

    /// Eight unsigned (`SIGNED` false) or signed bytes at `at` as f32.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn widen8<const SIGNED: bool>(at: *const u8) -> __m256 {
        let bytes = _mm_loadl_epi64(at as *const __m128i);
        _mm256_cvtepi32_ps(if SIGNED { _mm256_cvtepi8_epi32(bytes) } else { _mm256_cvtepu8_epi32(bytes) })
    }

    /// Q4_K or Q5_K, one row and one token.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_k4_avx2(
        five_bits: bool,
        row: *const u8,
        nb: usize,
        xqs: *const i8,
        xd: *const f32,
        xs: *const f32,
    ) -> f32 {
        let format = if five_bits { KQuant::Q5_K } else { KQuant::Q4_K };
        let (scales_at, qh_at, qs_at) = packed_kquant::section_offsets(format, nb / 8);
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        let mut offset_acc = _mm256_setzero_ps();
        for s in 0..nb / 8 {
            let b = 8 * s;
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(row.add(4 * s) as *const i32)));
            let (d, dmin) = (_mm256_broadcastss_ps(dm), _mm256_broadcastss_ps(_mm_movehdup_ps(dm)));
            let scale_bytes = row.add(scales_at + 16 * s);
            let scales = _mm256_mul_ps(_mm256_mul_ps(d, widen8::<false>(scale_bytes)), _mm256_loadu_ps(xd.add(b)));
            let mins = _mm256_mul_ps(dmin, widen8::<false>(scale_bytes.add(8)));
            offset_acc = _mm256_fmadd_ps(mins, _mm256_loadu_ps(xs.add(b)), offset_acc);
            for j in 0..8 {
                let block = b + j;
                let mut w = block_nibbles(row.add(qs_at), block);
                if five_bits {
                    let (lo, hi) = (interleaved_index(nb, block, 0) / 8, interleaved_index(nb, block, 16) / 8);
                    let bits = std::ptr::read_unaligned(row.add(qh_at + lo) as *const u16) as u32
                        | (std::ptr::read_unaligned(row.add(qh_at + hi) as *const u16) as u32) << 16;
                    w = _mm256_or_si256(w, fifth_bits_avx2(bits));
                }
                let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(w, block_activations(xqs, nb, block)), ones);
                let scale = _mm256_permutevar8x32_ps(scales, _mm256_set1_epi32(j as i32));
                acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(dot), acc);
            }
        }
        hsum256(acc) - hsum256(offset_acc)
    }

    /// Q6_K, one row and one token: per block, both halves in one vector (dot lanes 0..4 the
    /// first sub-block, 4..8 the second), the −32 offset as a second `vpmaddubsw` with 32s.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q6_avx2(row: *const u8, nb: usize, xqs: *const i8, xd: *const f32) -> f32 {
        let (scales_at, qh_at, qs_at) = packed_kquant::section_offsets(KQuant::Q6_K, nb / 8);
        let ones = _mm256_set1_epi16(1);
        let thirty_two = _mm256_set1_epi8(32);
        let top_bits = _mm256_set1_epi8(0x30);
        let mut acc = _mm256_setzero_ps();
        for s in 0..nb / 8 {
            let b = 8 * s;
            let d = std::ptr::read_unaligned(row.add(2 * s) as *const u16);
            let d = _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(d as i32)));
            let scales = row.add(scales_at + 16 * s);
            // d·sc of sub-blocks 0..8 and 8..16.
            let factors = [_mm256_mul_ps(d, widen8::<true>(scales)), _mm256_mul_ps(d, widen8::<true>(scales.add(8)))];
            for j in 0..8 {
                let block = b + j;
                let x = block_activations(xqs, nb, block);
                // Top bits: the block's 16 bytes of its group's 32, pair j%4/2 for its first half
                // and 2 + that for its second, moved to bits 4-5.
                let (in_group, pair) = (block % 4, (block % 4 / 2) as i64);
                let high = _mm_loadu_si128(row.add(qh_at + 32 * (block / 4) + 16 * (in_group % 2)) as *const __m128i);
                let first = _mm_sll_epi64(high, _mm_set_epi64x(0, 4 - 2 * pair));
                let second = _mm_srl_epi64(high, _mm_set_epi64x(0, 2 * pair));
                let w = _mm256_or_si256(
                    block_nibbles(row.add(qs_at), block),
                    _mm256_and_si256(_mm256_set_m128i(second, first), top_bits),
                );
                // Pair sums stay within i16: 63·127·2 and 32·128·2 apart.
                let pairs = _mm256_sub_epi16(_mm256_maddubs_epi16(w, x), _mm256_maddubs_epi16(thirty_two, x));
                let dot = _mm256_madd_epi16(pairs, ones);
                let (first_sub, source) = ((2 * j) % 8, &factors[j / 4]);
                let index = _mm256_set_epi32(
                    first_sub as i32 + 1,
                    first_sub as i32 + 1,
                    first_sub as i32 + 1,
                    first_sub as i32 + 1,
                    first_sub as i32,
                    first_sub as i32,
                    first_sub as i32,
                    first_sub as i32,
                );
                let scale = _mm256_mul_ps(_mm256_permutevar8x32_ps(*source, index), _mm256_set1_ps(*xd.add(block)));
                acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(dot), acc);
            }
        }
        hsum256(acc)
    }
}
