//! Dot products of one group of 16 packed weight rows (`model::packed_groups`: Q8_0, Q4_0, Q4_1,
//! Q5_0, Q5_1) with T activation rows quantized to 8-bit blocks (`quant_dot`), in integer
//! arithmetic: every matmul on those formats, from one decode token to a prefill chunk.
//!
//! Per block, as in `quant_dot`: value = d·u + m and x ≈ dx·q, so the block adds
//! d·dx·Σ u·q + m·(dx·Σq). On AVX-512 the 16 rows are the 16 lanes: per block each of the eight
//! quant vectors (four values of every row) meets the token's four matching activation bytes
//! broadcast to all lanes in one `vpdpbusd`, so a token costs eight dot instructions per block,
//! plus a convert and an FMA with the 16 rows' d times its dx; weight loads and nibble unpacking
//! are shared by the tile's tokens. No horizontal sums at all.
//!
//! Batch invariance: a (row, token) result is its lane's sequence of per-block FMAs in block
//! order, then the offset terms in block order, whatever T is and whichever tile the token is in
//! (the integer sums are exact in any order), so a token's outputs do not depend on what it is
//! batched with. Each level (portable, AVX2, AVX-512) is consistent with itself.

// Index loops over fixed-size register arrays read as the math does.
#![allow(clippy::needless_range_loop)]

use super::quant_dot::QuantizedActivations;
use crate::model::packed_groups::{self, GROUP_ROWS};
use crate::model::packed_quant::{interleaved_index, PackedQuant, BLOCK};

/// `out[t][r] = Σ_i w[r][i] · x_{tokens[t]}[i]` for the 16 rows of `group` (`group_bytes(format,
/// k)` bytes; padding rows give 0).
pub fn group_tile<const T: usize>(
    isa: super::Isa,
    format: PackedQuant,
    group: &[u8],
    xq: &QuantizedActivations,
    tokens: [usize; T],
) -> [[f32; GROUP_ROWS]; T] {
    let nb = xq.blocks_per_row;
    assert_eq!(
        group.len(),
        packed_groups::group_bytes(format, nb * BLOCK),
        "weight group and activations disagree on k"
    );
    let (qs, d, s) = xq.tile_pointers(tokens);
    match isa {
        // SAFETY: the level is supported (callers check); the group holds nb whole blocks and each
        // activation row nb (padded) blocks, which is all the kernels read.
        #[cfg(target_arch = "x86_64")]
        super::Isa::Avx512 => unsafe {
            if format.qh_bytes() > 0 {
                x86::group_tile_avx512::<T, true>(format, group.as_ptr(), nb, qs, d, s)
            } else {
                x86::group_tile_avx512::<T, false>(format, group.as_ptr(), nb, qs, d, s)
            }
        },
        #[cfg(target_arch = "x86_64")]
        super::Isa::Avx2 => unsafe { x86::group_tile_avx2::<T>(format, group.as_ptr(), nb, qs, d, s) },
        _ => tokens.map(|t| {
            let (qs, d, s) = xq.row(t);
            portable(format, group, nb, qs, d, s)
        }),
    }
}

/// Where activation values 4g..4g + 4 of block b start in a quantized row of nb blocks, g = 0..8.
#[inline(always)]
fn activation_offsets(nb: usize, b: usize) -> (usize, usize) {
    (interleaved_index(nb, b, 0), interleaved_index(nb, b, 16))
}

/// The oracle's order, in plain code: per row, the blocks' scaled integer sums, then the offsets.
fn portable(format: PackedQuant, group: &[u8], nb: usize, qs: &[i8], d: &[f32], s: &[f32]) -> [f32; GROUP_ROWS] {
    let block_bytes = packed_groups::block_bytes(format);
    let factor = format.offset_factor().map_or(1.0, |c| -c);
    std::array::from_fn(|r| {
        let (mut total, mut offsets) = (0f32, 0f32);
        for (b, block) in group.chunks_exact(block_bytes).take(nb).enumerate() {
            let mut dot = 0i32;
            let mut parts = (0u8, 0f32, 0f32);
            for i in 0..BLOCK {
                parts = packed_groups::value_parts(format, block, r, i);
                dot += parts.0 as i32 * qs[interleaved_index(nb, b, i)] as i32;
            }
            let (_, dw, m) = parts;
            total += dw * d[b] * dot as f32;
            offsets += if format.has_min() { m } else { dw } * s[b];
        }
        total + factor * offsets
    })
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{activation_offsets, GROUP_ROWS};
    use crate::model::packed_groups::block_sections;
    use crate::model::packed_quant::PackedQuant;
    use std::arch::x86_64::*;

    /// Four activation bytes broadcast to every 32-bit lane (folded into the dot's memory operand).
    #[inline(always)]
    unsafe fn broadcast4(at: *const i8) -> __m512i {
        _mm512_set1_epi32(std::ptr::read_unaligned(at as *const i32))
    }

    /// T tokens × the group's 16 rows. Per block: the quants as eight 64-byte vectors (Q4/Q5:
    /// four loads, each giving two vectors by a mask and a shift; Q5 adds 16 under a 64-bit mask
    /// per vector), eight `vpdpbusd` per token, then per token a scale product, a convert and an
    /// FMA. The offsets run as a second pass over the blocks' d (or m) and the tokens' s.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
    pub unsafe fn group_tile_avx512<const T: usize, const FIVE_BITS: bool>(
        format: PackedQuant,
        group: *const u8,
        nb: usize,
        xqs: [*const i8; T],
        xd: [*const f32; T],
        xs: [*const f32; T],
    ) -> [[f32; GROUP_ROWS]; T] {
        let sections = block_sections(format);
        let q8 = format == PackedQuant::Q8_0;
        let low_nibbles = _mm512_set1_epi8(0x0F);
        let sixteen = _mm512_set1_epi8(16);
        let mut acc = [_mm512_setzero_ps(); T];
        for b in 0..nb {
            let block = group.add(b * sections.bytes);
            let qs = block.add(sections.qs);
            let (lo, hi) = activation_offsets(nb, b);
            let mut w = [_mm512_setzero_si512(); 8];
            for j in 0..4 {
                if q8 {
                    w[j] = _mm512_loadu_si512(qs.add(64 * j) as *const _);
                    w[j + 4] = _mm512_loadu_si512(qs.add(64 * (j + 4)) as *const _);
                } else {
                    let raw = _mm512_loadu_si512(qs.add(64 * j) as *const _);
                    w[j] = _mm512_and_si512(raw, low_nibbles);
                    w[j + 4] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low_nibbles);
                }
            }
            if FIVE_BITS {
                let bits = block.add(sections.qh) as *const u64;
                for g in 0..8 {
                    w[g] = _mm512_mask_add_epi8(w[g], std::ptr::read_unaligned(bits.add(g)), w[g], sixteen);
                }
            }
            let at: [usize; 8] = std::array::from_fn(|g| if g < 4 { lo + 4 * g } else { hi + 4 * (g - 4) });
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(block as *const __m256i));
            for t in 0..T {
                // Tokens are independent chains of eight dots; a token alone gets two chains,
                // summed (integer sums are exact, so the result is the same bits).
                let dot = if T == 1 {
                    let (mut even, mut odd) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                    for g in (0..8).step_by(2) {
                        even = _mm512_dpbusd_epi32(even, w[g], broadcast4(xqs[t].add(at[g])));
                        odd = _mm512_dpbusd_epi32(odd, w[g + 1], broadcast4(xqs[t].add(at[g + 1])));
                    }
                    _mm512_add_epi32(even, odd)
                } else {
                    let mut dot = _mm512_setzero_si512();
                    for g in 0..8 {
                        dot = _mm512_dpbusd_epi32(dot, w[g], broadcast4(xqs[t].add(at[g])));
                    }
                    dot
                };
                let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*xd[t].add(b)));
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[t]);
            }
        }
        // Σ m·s (Q4_1, Q5_1) or Σ d·s (the others, times −c below).
        let source = if format.has_min() { sections.m } else { 0 };
        let mut offsets = [_mm512_setzero_ps(); T];
        for b in 0..nb {
            let w = _mm512_cvtph_ps(_mm256_loadu_si256(group.add(b * sections.bytes + source) as *const __m256i));
            for t in 0..T {
                offsets[t] = _mm512_fmadd_ps(w, _mm512_set1_ps(*xs[t].add(b)), offsets[t]);
            }
        }
        let factor = _mm512_set1_ps(format.offset_factor().map_or(1.0, |c| -c));
        let mut out = [[0f32; GROUP_ROWS]; T];
        for t in 0..T {
            _mm512_storeu_ps(out[t].as_mut_ptr(), _mm512_fmadd_ps(offsets[t], factor, acc[t]));
        }
        out
    }

    /// AVX2: the same per lane, 8 rows per vector (two halves per group), `vpmaddubsw` +
    /// `vpmaddwd` for the dots. Q8_0's u up to 255 would saturate `vpmaddubsw`, so its quants run
    /// as signed q = u − 128 with the sign trick |q|·(x·sign q) and no offset term.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn group_tile_avx2<const T: usize>(
        format: PackedQuant,
        group: *const u8,
        nb: usize,
        xqs: [*const i8; T],
        xd: [*const f32; T],
        xs: [*const f32; T],
    ) -> [[f32; GROUP_ROWS]; T] {
        let sections = block_sections(format);
        let q8 = format == PackedQuant::Q8_0;
        let five_bits = format.qh_bytes() > 0;
        let low_nibbles = _mm256_set1_epi8(0x0F);
        let sign_bits = _mm256_set1_epi8(-128);
        let ones = _mm256_set1_epi16(1);
        let mut out = [[0f32; GROUP_ROWS]; T];
        for half in 0..2 {
            let mut acc = [_mm256_setzero_ps(); T];
            for b in 0..nb {
                let block = group.add(b * sections.bytes);
                let qs = block.add(sections.qs + 32 * half);
                let (lo, hi) = activation_offsets(nb, b);
                let mut dots = [_mm256_setzero_si256(); T];
                for g in 0..8 {
                    let mut w = if q8 {
                        _mm256_loadu_si256(qs.add(64 * g) as *const __m256i)
                    } else {
                        let raw = _mm256_loadu_si256(qs.add(64 * (g % 4)) as *const __m256i);
                        let shifted = if g < 4 { raw } else { _mm256_srli_epi16(raw, 4) };
                        _mm256_and_si256(shifted, low_nibbles)
                    };
                    if five_bits {
                        let bits = std::ptr::read_unaligned(block.add(sections.qh + 8 * g + 4 * half) as *const u32);
                        w = _mm256_or_si256(w, super::super::quant_dot::x86::fifth_bits_avx2(bits));
                    }
                    let at = if g < 4 { lo + 4 * g } else { hi + 4 * (g - 4) };
                    for t in 0..T {
                        let x = _mm256_set1_epi32(std::ptr::read_unaligned(xqs[t].add(at) as *const i32));
                        let pairs = if q8 {
                            let signed = _mm256_xor_si256(w, sign_bits);
                            _mm256_maddubs_epi16(_mm256_sign_epi8(signed, signed), _mm256_sign_epi8(x, signed))
                        } else {
                            _mm256_maddubs_epi16(w, x)
                        };
                        dots[t] = _mm256_add_epi32(dots[t], _mm256_madd_epi16(pairs, ones));
                    }
                }
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(block.add(16 * half) as *const __m128i));
                for t in 0..T {
                    let scale = _mm256_mul_ps(dw, _mm256_set1_ps(*xd[t].add(b)));
                    acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots[t]), scale, acc[t]);
                }
            }
            // Q8_0 above multiplied the signed quants themselves: no offset is owed.
            if !q8 {
                let source = if format.has_min() { sections.m } else { 0 };
                let factor = _mm256_set1_ps(format.offset_factor().map_or(1.0, |c| -c));
                let mut offsets = [_mm256_setzero_ps(); T];
                for b in 0..nb {
                    let at = group.add(b * sections.bytes + source + 16 * half);
                    let w = _mm256_cvtph_ps(_mm_loadu_si128(at as *const __m128i));
                    for t in 0..T {
                        offsets[t] = _mm256_fmadd_ps(w, _mm256_set1_ps(*xs[t].add(b)), offsets[t]);
                    }
                }
                for t in 0..T {
                    acc[t] = _mm256_fmadd_ps(offsets[t], factor, acc[t]);
                }
            }
            for t in 0..T {
                _mm256_storeu_ps(out[t].as_mut_ptr().add(8 * half), acc[t]);
            }
        }
        out
    }
}
