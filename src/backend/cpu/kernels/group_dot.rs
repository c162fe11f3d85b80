//! Dot products of one group of 16 packed weight rows (`model::packed_groups`: every block
//! quantization, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K) with T activation rows quantized
//! to 8-bit blocks (`quant_dot`), in integer arithmetic: every matmul on those formats, from one
//! decode token to a prefill chunk.
//!
//! Per block, as in `quant_dot`: value = d·u + m and x ≈ dx·q, so the block adds
//! d·dx·Σ u·q + m·(dx·Σq). On AVX-512 the 16 rows are the 16 lanes: per block each of the eight
//! quant vectors (four values of every row) meets the token's four matching activation bytes
//! broadcast to all lanes in one `vpdpbusd`, so a token costs eight dot instructions per block,
//! plus a convert and an FMA with the 16 rows' d times its dx; weight loads and nibble unpacking
//! are shared by the tile's tokens. No horizontal sums at all. The K-quants run the same code with
//! f32 scales (their exact d·sc and −dmin·m per 32 values): Q4_K as Q4_1, Q5_K as Q5_1. Q6_K has a
//! d per 16 values, so vectors 0..4 (values 0..16) and 4..8 keep separate integer dots, each with
//! its own scale FMA; its −32 offset stays in the integers, each dot starting from −32·Σq of its
//! half (`QuantizedActivations` keeps the halves' Σq), so Q6_K has no offset pass.
//!
//! Batch invariance: a (row, token) result is its lane's sequence of per-block FMAs in block
//! order, then the offset terms in block order, whatever T is and whichever tile the token is in
//! (the integer sums are exact in any order), so a token's outputs do not depend on what it is
//! batched with. Each level (portable, AVX2, AVX-512) is consistent with itself.

// Index loops over fixed-size register arrays read as the math does.
#![allow(clippy::needless_range_loop)]

use super::quant_dot::{ActivationRow, QuantizedActivations};
use crate::model::packed_groups::{self, GROUP_ROWS};
use crate::model::packed_quant::{PackedQuant, BLOCK};

/// The most tokens [`group_tile`] should take at once at `isa`: 16 at AVX-512 (16 accumulators
/// and the block's eight quant vectors take 24 of its 32 registers), 8 below (AVX2's 16
/// registers hold no more; the portable path gains nothing from wider tiles).
pub fn widest_tile(isa: super::Isa) -> usize {
    if isa == super::Isa::Avx512 {
        16
    } else {
        8
    }
}

/// `out[t][r] = Σ_i w[r][i] · x_{tokens[t]}[i]` for the 16 rows of `group` (`group_bytes(format,
/// k)` bytes; padding rows give 0). `ahead` (the next group, or nothing) is prefetched while the
/// tile computes: at AVX-512 a block's worth per block, so the stream overlaps the dots rather
/// than queueing a whole group's misses at once, which stalled the core on its fill buffers.
pub fn group_tile<const T: usize>(
    isa: super::Isa,
    format: PackedQuant,
    group: &[u8],
    xq: &QuantizedActivations,
    tokens: [usize; T],
    ahead: &[u8],
) -> [[f32; GROUP_ROWS]; T] {
    let nb = xq.blocks_per_row;
    assert_eq!(
        group.len(),
        packed_groups::group_bytes(format, nb * BLOCK),
        "weight group and activations disagree on k"
    );
    match isa {
        // SAFETY: the level is supported (callers check); the group holds nb whole blocks and each
        // activation row nb blocks, which is all the kernels read.
        #[cfg(target_arch = "x86_64")]
        super::Isa::Avx512 => unsafe {
            let x = xq.tile(tokens);
            // Constants, so each format's loop carries no other format's code (registers are tight:
            // T accumulators and eight weight vectors).
            match (format.high_bits(), format.split_scales()) {
                (0, false) => x86::group_tile_avx512::<T, 0, false>(format, group.as_ptr(), nb, &x, ahead),
                (1, false) => x86::group_tile_avx512::<T, 1, false>(format, group.as_ptr(), nb, &x, ahead),
                (2, true) => x86::group_tile_avx512::<T, 2, true>(format, group.as_ptr(), nb, &x, ahead),
                other => unreachable!("no format has high bits and split scales {other:?}"),
            }
        },
        #[cfg(target_arch = "x86_64")]
        super::Isa::Avx2 => {
            super::prefetch(ahead);
            unsafe { x86::group_tile_avx2::<T>(format, group.as_ptr(), nb, &xq.tile(tokens)) }
        }
        _ => tokens.map(|t| portable(format, group, nb, &xq.row(t))),
    }
}

/// The oracle's order, in plain code: per row, the blocks' scaled integer sums, then the offsets.
fn portable(format: PackedQuant, group: &[u8], nb: usize, x: &ActivationRow) -> [f32; GROUP_ROWS] {
    let block_bytes = packed_groups::block_bytes(format);
    let factor = format.offset_factor().map_or(1.0, |c| -c);
    std::array::from_fn(|r| {
        let (mut total, mut offsets) = (0f32, 0f32);
        for (b, block) in group.chunks_exact(block_bytes).take(nb).enumerate() {
            let qs = &x.qs[b * BLOCK..(b + 1) * BLOCK];
            // Split formats (Q6_K): a scale per half, the offset −c·Σq of each half in the integers.
            let halves = if format.split_scales() { 2 } else { 1 };
            let len = BLOCK / halves;
            for h in 0..halves {
                let mut dot = if format.split_scales() { factor as i32 * x.half_sums[2 * b + h] } else { 0 };
                let mut parts = (0u8, 0f32, 0f32);
                for i in h * len..(h + 1) * len {
                    parts = packed_groups::value_parts(format, block, r, i);
                    dot += parts.0 as i32 * qs[i] as i32;
                }
                let (_, dw, m) = parts;
                total += dw * x.d[b] * dot as f32;
                if !format.split_scales() {
                    offsets += if format.has_min() { m } else { dw } * x.s[b];
                }
            }
        }
        if format.split_scales() {
            total
        } else {
            total + factor * offsets
        }
    })
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use super::super::quant_dot::ActivationTile;
    use super::{BLOCK, GROUP_ROWS};
    use crate::model::packed_groups::{block_sections, BlockSections};
    use crate::model::packed_quant::PackedQuant;
    use std::arch::x86_64::*;

    /// `for t in 0..T { body }` written out, one guarded copy per t < 16 (T is a constant, so the
    /// guards fold away). LLVM leaves a 16-token loop rolled, and then keeps the accumulators in
    /// memory: a load and a store per token and block.
    macro_rules! each_token {
        ($T:ident, |$t:ident| $body:block) => {
            const { assert!($T <= 16, "tiles hold at most 16 tokens") };
            each_token!(@ $T, $t, $body, 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15)
        };
        (@ $T:ident, $t:ident, $body:block, $($i:literal)*) => {
            $(if $i < $T {
                let $t: usize = $i;
                $body
            })*
        };
    }

    /// Four activation bytes broadcast to every 32-bit lane (folded into the dot's memory operand).
    #[inline(always)]
    unsafe fn broadcast4(at: *const i8) -> __m512i {
        _mm512_set1_epi32(std::ptr::read_unaligned(at as *const i32))
    }

    /// The cache lines of `ahead` (the next group) at block b's offsets: spread over the blocks,
    /// the stream overlaps the dots rather than queueing a whole group's misses at once. (A line
    /// shared by two blocks is asked for twice, which is harmless.)
    #[inline(always)]
    pub(in crate::backend::cpu::kernels) unsafe fn prefetch_share(ahead: &[u8], b: usize, block_bytes: usize) {
        let ahead_end = ahead.len().min((b + 1) * block_bytes);
        let mut line = (b * block_bytes) & !63;
        while line < ahead_end {
            _mm_prefetch(ahead.as_ptr().add(line) as *const i8, _MM_HINT_T0);
            line += 64;
        }
    }

    /// A block's quants (`packed_groups`) as eight vectors of four values per row: byte quants as
    /// stored, nibbles unpacked by a mask and a shift, each bit above the nibble added under its
    /// 64-bit mask.
    #[inline(always)]
    pub(in crate::backend::cpu::kernels) unsafe fn block_quants<const HIGH_BITS: usize>(
        byte_quants: bool,
        block: *const u8,
        sections: &BlockSections,
    ) -> [__m512i; 8] {
        let qs = block.add(sections.qs);
        let low_nibbles = _mm512_set1_epi8(0x0F);
        let mut w = [_mm512_setzero_si512(); 8];
        for j in 0..4 {
            if byte_quants {
                w[j] = _mm512_loadu_si512(qs.add(64 * j) as *const _);
                w[j + 4] = _mm512_loadu_si512(qs.add(64 * (j + 4)) as *const _);
            } else {
                let raw = _mm512_loadu_si512(qs.add(64 * j) as *const _);
                w[j] = _mm512_and_si512(raw, low_nibbles);
                w[j + 4] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low_nibbles);
            }
        }
        for p in 0..HIGH_BITS {
            let bits = block.add(sections.high + 64 * p) as *const u64;
            let bit = _mm512_set1_epi8(16 << p);
            for g in 0..8 {
                w[g] = _mm512_mask_add_epi8(w[g], std::ptr::read_unaligned(bits.add(g)), w[g], bit);
            }
        }
        w
    }

    /// `acc + cvt(dot)·(dw·dx)`: a block's integer dot scaled into a token's sums. Both integer
    /// kernels (VNNI here, AMX in `amx::group_tiles`) add every block through this, which is what
    /// makes their results the same bits.
    #[inline(always)]
    pub(in crate::backend::cpu::kernels) unsafe fn add_scaled(
        acc: __m512,
        dot: __m512i,
        dw: __m512,
        dx: f32,
    ) -> __m512 {
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw, _mm512_set1_ps(dx)), acc)
    }

    /// The offset terms of a group (formats without split scales): per token t, Σ_b w_b·s(t, b)
    /// in block order, w the stored m (or d, times −c), then added to `acc[t]` times the format's
    /// factor. Shared by both integer kernels, as [`add_scaled`].
    #[inline(always)]
    pub(in crate::backend::cpu::kernels) unsafe fn add_offsets<const T: usize>(
        format: PackedQuant,
        group: *const u8,
        nb: usize,
        s: impl Fn(usize, usize) -> f32,
        acc: &mut [__m512; T],
    ) {
        let sections = block_sections(format);
        let source = if format.has_min() { sections.second } else { 0 };
        let mut offsets = [_mm512_setzero_ps(); T];
        for b in 0..nb {
            let w = scales16(format.f32_scales(), group.add(b * sections.bytes + source));
            for t in 0..T {
                offsets[t] = _mm512_fmadd_ps(w, _mm512_set1_ps(s(t, b)), offsets[t]);
            }
        }
        let factor = _mm512_set1_ps(format.offset_factor().map_or(1.0, |c| -c));
        for t in 0..T {
            acc[t] = _mm512_fmadd_ps(offsets[t], factor, acc[t]);
        }
    }

    /// The 16 rows' scales (d or m) at `at`, f32 or f16 as the format stores them.
    #[inline(always)]
    pub(in crate::backend::cpu::kernels) unsafe fn scales16(f32_scales: bool, at: *const u8) -> __m512 {
        if f32_scales {
            _mm512_loadu_ps(at as *const f32)
        } else {
            _mm512_cvtph_ps(_mm256_loadu_si256(at as *const __m256i))
        }
    }

    /// T tokens × the group's 16 rows. Per block: the quants as eight 64-byte vectors (nibble
    /// formats: four loads, each giving two vectors by a mask and a shift; each bit above the
    /// nibble a masked add under a 64-bit mask per vector), eight `vpdpbusd` per token, then per
    /// token a scale product, a convert and an FMA (Q6_K: two of each, one per half). The offsets
    /// run as a second pass over the blocks' d (or m) and the tokens' s.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
    pub unsafe fn group_tile_avx512<const T: usize, const HIGH_BITS: usize, const SPLIT: bool>(
        format: PackedQuant,
        group: *const u8,
        nb: usize,
        x: &ActivationTile<T>,
        ahead: &[u8],
    ) -> [[f32; GROUP_ROWS]; T] {
        let sections = block_sections(format);
        let (byte_quants, f32_scales, split) = (format.byte_quants(), format.f32_scales(), SPLIT);
        // The activation pointers as locals: read from `x` inside the loop they would be reloaded
        // at every dot.
        let (xqs, xd, xhalf) = (x.qs, x.d, x.half_sums);
        // Split formats (Q6_K) start each half's dot at −c·Σq.
        let c = format.offset_factor().unwrap_or(0.0) as i32;
        let mut acc = [_mm512_setzero_ps(); T];
        for b in 0..nb {
            let block = group.add(b * sections.bytes);
            prefetch_share(ahead, b, sections.bytes);
            let w = block_quants::<HIGH_BITS>(byte_quants, block, &sections);
            let at = b * BLOCK;
            let dw = scales16(f32_scales, block);
            if split {
                let dw_hi = scales16(f32_scales, block.add(sections.second));
                each_token!(T, |t| {
                    let sums = xhalf[t].add(2 * b);
                    let (mut lo, mut hi) = (_mm512_set1_epi32(-c * *sums), _mm512_set1_epi32(-c * *sums.add(1)));
                    for g in 0..4 {
                        lo = _mm512_dpbusd_epi32(lo, w[g], broadcast4(xqs[t].add(at + 4 * g)));
                        hi = _mm512_dpbusd_epi32(hi, w[g + 4], broadcast4(xqs[t].add(at + 16 + 4 * g)));
                    }
                    let dx = *xd[t].add(b);
                    acc[t] = add_scaled(acc[t], lo, dw, dx);
                    acc[t] = add_scaled(acc[t], hi, dw_hi, dx);
                });
                continue;
            }
            each_token!(T, |t| {
                // Tokens are independent chains of eight dots; a token alone gets two chains,
                // summed (integer sums are exact, so the result is the same bits).
                let dot = if T == 1 {
                    let (mut even, mut odd) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                    for g in (0..8).step_by(2) {
                        even = _mm512_dpbusd_epi32(even, w[g], broadcast4(xqs[t].add(at + 4 * g)));
                        odd = _mm512_dpbusd_epi32(odd, w[g + 1], broadcast4(xqs[t].add(at + 4 * g + 4)));
                    }
                    _mm512_add_epi32(even, odd)
                } else {
                    let mut dot = _mm512_setzero_si512();
                    for g in 0..8 {
                        dot = _mm512_dpbusd_epi32(dot, w[g], broadcast4(xqs[t].add(at + 4 * g)));
                    }
                    dot
                };
                acc[t] = add_scaled(acc[t], dot, dw, *xd[t].add(b));
            });
        }
        if !split {
            add_offsets(format, group, nb, |t, b| *x.s[t].add(b), &mut acc);
        }
        let mut out = [[0f32; GROUP_ROWS]; T];
        for t in 0..T {
            _mm512_storeu_ps(out[t].as_mut_ptr(), acc[t]);
        }
        out
    }

    /// 32 bits as 32 bytes, `value` where the bit is set: high bits joined to nibbles by an OR.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn bit_bytes_avx2(bits: u32, value: i8) -> __m256i {
        // Byte t takes byte t / 8 of the bits, then tests its bit t % 8.
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(bits as i32),
            _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0),
        );
        let bit_of_byte = _mm256_set1_epi64x(0x8040201008040201u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit_of_byte), bit_of_byte);
        _mm256_and_si256(set, _mm256_set1_epi8(value))
    }

    /// Eight rows' scales: half `half` (rows 0..8 or 8..16) of the 16 at `at`.
    #[inline(always)]
    unsafe fn scales8(f32_scales: bool, at: *const u8, half: usize) -> __m256 {
        if f32_scales {
            _mm256_loadu_ps((at as *const f32).add(8 * half))
        } else {
            _mm256_cvtph_ps(_mm_loadu_si128(at.add(16 * half) as *const __m128i))
        }
    }

    /// AVX2: the same per lane, 8 rows per vector (two halves per group), `vpmaddubsw` +
    /// `vpmaddwd` for the dots. Q8_0's u up to 255 would saturate `vpmaddubsw`, so its quants run
    /// as signed q = u − 128 with the sign trick |q|·(x·sign q) and no offset term (Q6_K's u < 64
    /// keeps every pair sum within i16).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn group_tile_avx2<const T: usize>(
        format: PackedQuant,
        group: *const u8,
        nb: usize,
        x: &ActivationTile<T>,
    ) -> [[f32; GROUP_ROWS]; T] {
        let sections = block_sections(format);
        let (byte_quants, f32_scales, split) = (format.byte_quants(), format.f32_scales(), format.split_scales());
        let c = format.offset_factor().unwrap_or(0.0) as i32;
        // As in the AVX-512 kernel: the activation pointers as locals, not reloaded per dot.
        let (xqs, xd, xs, xhalf) = (x.qs, x.d, x.s, x.half_sums);
        let low_nibbles = _mm256_set1_epi8(0x0F);
        let sign_bits = _mm256_set1_epi8(-128);
        let ones = _mm256_set1_epi16(1);
        let mut out = [[0f32; GROUP_ROWS]; T];
        for half in 0..2 {
            let mut acc = [_mm256_setzero_ps(); T];
            for b in 0..nb {
                let block = group.add(b * sections.bytes);
                let qs = block.add(sections.qs + 32 * half);
                let at = b * BLOCK;
                // Dots of vectors 0..4 and 4..8, apart for Q6_K's two scales (from −c·Σq).
                let mut dots = [[_mm256_setzero_si256(); 2]; T];
                if split {
                    for t in 0..T {
                        let sums = xhalf[t].add(2 * b);
                        dots[t] = [_mm256_set1_epi32(-c * *sums), _mm256_set1_epi32(-c * *sums.add(1))];
                    }
                }
                for g in 0..8 {
                    let mut w = if byte_quants {
                        _mm256_loadu_si256(qs.add(64 * g) as *const __m256i)
                    } else {
                        let raw = _mm256_loadu_si256(qs.add(64 * (g % 4)) as *const __m256i);
                        let shifted = if g < 4 { raw } else { _mm256_srli_epi16(raw, 4) };
                        _mm256_and_si256(shifted, low_nibbles)
                    };
                    for p in 0..format.high_bits() {
                        let bits = block.add(sections.high + 64 * p + 8 * g + 4 * half);
                        w = _mm256_or_si256(w, bit_bytes_avx2(std::ptr::read_unaligned(bits as *const u32), 16 << p));
                    }
                    for t in 0..T {
                        let xq = _mm256_set1_epi32(std::ptr::read_unaligned(xqs[t].add(at + 4 * g) as *const i32));
                        let pairs = if byte_quants {
                            let signed = _mm256_xor_si256(w, sign_bits);
                            _mm256_maddubs_epi16(_mm256_sign_epi8(signed, signed), _mm256_sign_epi8(xq, signed))
                        } else {
                            _mm256_maddubs_epi16(w, xq)
                        };
                        dots[t][g / 4] = _mm256_add_epi32(dots[t][g / 4], _mm256_madd_epi16(pairs, ones));
                    }
                }
                let dw = scales8(f32_scales, block, half);
                let dw_hi = if split { scales8(f32_scales, block.add(sections.second), half) } else { dw };
                for t in 0..T {
                    let dx = _mm256_set1_ps(*xd[t].add(b));
                    if split {
                        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots[t][0]), _mm256_mul_ps(dw, dx), acc[t]);
                        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots[t][1]), _mm256_mul_ps(dw_hi, dx), acc[t]);
                    } else {
                        let dot = _mm256_add_epi32(dots[t][0], dots[t][1]);
                        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(dw, dx), acc[t]);
                    }
                }
            }
            // Q8_0 above multiplied the signed quants themselves, Q6_K offset its dots: no offset
            // is owed.
            if !byte_quants && !split {
                let source = if format.has_min() { sections.second } else { 0 };
                let factor = _mm256_set1_ps(format.offset_factor().map_or(1.0, |c| -c));
                let mut offsets = [_mm256_setzero_ps(); T];
                for b in 0..nb {
                    let w = scales8(f32_scales, group.add(b * sections.bytes + source), half);
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
