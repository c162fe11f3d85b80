//! The integer matmul of `group_dot` on AMX tiles: 16 tokens × a group of 16 weight rows per
//! block of 32 values, in one `tdpbsud`.
//!
//! Layout: a packed block's eight quant vectors (`packed_groups`: vector g holds values 4g..4g+4
//! of each of the 16 rows side by side) are exactly `tdpbsud`'s B operand, 8 rows × 64 bytes, and
//! the quantized activations' rows (32 signed bytes per block, rows `k` bytes apart) its A operand,
//! 16 rows × 32 bytes. Q8_0's blocks load straight from the weights; nibble formats are unpacked
//! (the same code as the VNNI kernel) into a 512-byte scratch block first. C is 16 tokens × 16
//! rows of i32. Q6_K's two scales per block make it two products of 16 values (A 16 × 16 bytes,
//! B 4 × 64). Blocks alternate between two sets of tile registers, so one block's products can
//! run while the previous block's sums are scaled.
//!
//! Bits: the block's integer dot of (token, row) is exact in either unit, and the f32 work after
//! it is the VNNI kernel's, instruction for instruction (per block cvt(dot)·(d·dx) added by FMA in
//! block order, Q6_K's −32·Σq added to the integers first, the offsets pass after), so this
//! kernel gives the same bits as `group_dot` at AVX-512 for every token, whatever the batch:
//! switching it on at 4 tokens keeps batch invariance, and tests compare the two for equality.

// Index loops over fixed-size register arrays read as the math does.
#![allow(clippy::needless_range_loop)]

use super::tiles::{TileConfig, TileUnit};
use crate::backend::cpu::kernels::quant_dot::{QuantizedActivations, PADDED_ROWS};
use crate::model::packed_groups::{self, GROUP_ROWS};
use crate::model::packed_quant::{PackedQuant, BLOCK};

/// Tokens per tile (the rows of A and C).
pub const TILE_TOKENS: usize = PADDED_ROWS;
/// From this many tokens in a step the integer matmul runs on tiles: with fewer, a 16-token tile
/// would mostly multiply padding, while VNNI's work shrinks with the tokens.
pub const MIN_TOKENS: usize = 4;

/// Tile registers: C (i32 sums) 0 and 1, A (activations) 2 and 3, B (weights) 4 and 5; a whole
/// block uses one of each, alternating by block, a Q6_K block both (its two halves).
fn tile_config(split: bool) -> TileConfig {
    let (a_bytes, b_rows) = if split { (BLOCK / 2, BLOCK / 8) } else { (BLOCK, BLOCK / 4) };
    let c = (TILE_TOKENS, 4 * GROUP_ROWS);
    let a = (TILE_TOKENS, a_bytes);
    let b = (b_rows, 4 * GROUP_ROWS);
    TileConfig::new(&[c, c, a, a, b, b])
}

/// Per tile set: a block's unpacked weights (B) and the stored sums (C, [token][row]).
#[repr(C, align(64))]
struct Scratch {
    weights: [[u8; GROUP_ROWS * BLOCK]; 2],
    sums: [[i32; TILE_TOKENS * GROUP_ROWS]; 2],
}

/// Every group of `task_bytes` (packed `format`, rows `k` long) times the n quantized tokens of
/// `xq`, 16 tokens per tile: `store(group, t0, sums)` receives sums[t][r] for tokens t0 + t (only
/// those below n are real) and the group's rows r.
#[allow(clippy::too_many_arguments)]
pub fn amx_rows<U: TileUnit>(
    unit: &mut U,
    format: PackedQuant,
    xq: &QuantizedActivations,
    n: usize,
    task_bytes: &[u8],
    k: usize,
    mut store: impl FnMut(usize, usize, &[[f32; GROUP_ROWS]; TILE_TOKENS]),
) {
    assert!(crate::backend::cpu::kernels::Isa::Avx512.supported(), "the AMX kernel's vector half is AVX-512");
    assert_eq!(xq.blocks_per_row * BLOCK, k, "weights and activations disagree on k");
    let group_bytes = packed_groups::group_bytes(format, k);
    let split = format.split_scales();
    let mut scratch = Scratch { weights: [[0; GROUP_ROWS * BLOCK]; 2], sums: [[0; TILE_TOKENS * GROUP_ROWS]; 2] };
    // SAFETY (all unsafe calls below): the tiles are configured for the shapes the kernel uses
    // before its first tile instruction and released after its last; the kernel reads the
    // group's nb whole blocks and 16 activation rows from a 16-aligned quantized row (the arrays
    // are padded to 16 rows), and AVX-512 is supported (asserted).
    unsafe { unit.configure(&tile_config(split)) };
    for (g, group, next) in packed_groups::groups_with_next(task_bytes, group_bytes) {
        for t0 in (0..n).step_by(TILE_TOKENS) {
            let x = xq.consecutive_rows(t0);
            // The first tile streams in the next group.
            let ahead = if t0 == 0 { next } else { &[] };
            let nb = xq.blocks_per_row;
            let sums = unsafe {
                #[cfg(target_arch = "x86_64")]
                match (format.high_bits(), split) {
                    (0, false) => {
                        x86::group_tile::<U, 0, false>(unit, format, group.as_ptr(), nb, &x, ahead, &mut scratch)
                    }
                    (1, false) => {
                        x86::group_tile::<U, 1, false>(unit, format, group.as_ptr(), nb, &x, ahead, &mut scratch)
                    }
                    (2, true) => {
                        x86::group_tile::<U, 2, true>(unit, format, group.as_ptr(), nb, &x, ahead, &mut scratch)
                    }
                    other => unreachable!("no format has high bits and split scales {other:?}"),
                }
                #[cfg(not(target_arch = "x86_64"))]
                unreachable!("AMX and AVX-512 exist only on x86-64")
            };
            store(g, t0, &sums);
        }
    }
    unsafe { unit.release() };
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::tiles::TileUnit;
    use super::{Scratch, BLOCK, GROUP_ROWS, TILE_TOKENS};
    use crate::backend::cpu::kernels::group_dot::x86::{
        add_offsets, add_scaled, block_quants, prefetch_share, scales16,
    };
    use crate::backend::cpu::kernels::quant_dot::ConsecutiveRows;
    use crate::model::packed_groups::block_sections;
    use crate::model::packed_quant::PackedQuant;
    use std::arch::x86_64::*;

    /// 16 tokens (rows of `x`) × the group's 16 rows; see the module comment.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn group_tile<U: TileUnit, const HIGH_BITS: usize, const SPLIT: bool>(
        unit: &mut U,
        format: PackedQuant,
        group: *const u8,
        nb: usize,
        x: &ConsecutiveRows,
        ahead: &[u8],
        scratch: &mut Scratch,
    ) -> [[f32; GROUP_ROWS]; TILE_TOKENS] {
        let sections = block_sections(format);
        let (byte_quants, f32_scales) = (format.byte_quants(), format.f32_scales());
        let c = format.offset_factor().unwrap_or(0.0) as i32;
        // Bytes from one token's quants to the next's.
        let stride = nb * BLOCK;
        let mut acc = [_mm512_setzero_ps(); TILE_TOKENS];

        // One whole block on tile set (C, A, B) with scratch set `s`.
        macro_rules! whole_block {
            ($c:literal, $a:literal, $b:literal, $s:literal, $block:expr, $b_index:expr) => {{
                let (block, b) = ($block, $b_index);
                let weights: *const u8 = if byte_quants && HIGH_BITS == 0 {
                    block.add(sections.qs)
                } else {
                    let w = block_quants::<HIGH_BITS>(byte_quants, block, &sections);
                    for (g, vector) in w.iter().enumerate() {
                        _mm512_store_si512(scratch.weights[$s].as_mut_ptr().add(64 * g) as *mut _, *vector);
                    }
                    scratch.weights[$s].as_ptr()
                };
                unit.zero::<$c>();
                unit.load::<$a>(x.qs.add(b * BLOCK) as *const u8, stride);
                unit.load::<$b>(weights, 64);
                unit.dot_signed_unsigned::<$c, $a, $b>();
                unit.store::<$c>(scratch.sums[$s].as_mut_ptr() as *mut u8, 64);
                let dw = scales16(f32_scales, block);
                for t in 0..TILE_TOKENS {
                    let dot = _mm512_load_si512(scratch.sums[$s].as_ptr().add(GROUP_ROWS * t) as *const _);
                    acc[t] = add_scaled(acc[t], dot, dw, *x.d.add(t * nb + b));
                }
            }};
        }

        for b in 0..nb {
            let block = group.add(b * sections.bytes);
            prefetch_share(ahead, b, sections.bytes);
            if !SPLIT {
                if b % 2 == 0 {
                    whole_block!(0, 2, 4, 0, block, b);
                } else {
                    whole_block!(1, 3, 5, 1, block, b);
                }
                continue;
            }
            // Q6_K: values 0..16 on tiles (0, 2, 4), 16..32 on (1, 3, 5), each dot starting at −c·Σq
            // of its half.
            let w = block_quants::<HIGH_BITS>(false, block, &sections);
            for (g, vector) in w.iter().enumerate() {
                _mm512_store_si512(scratch.weights[0].as_mut_ptr().add(64 * g) as *mut _, *vector);
            }
            let at = x.qs.add(b * BLOCK) as *const u8;
            unit.zero::<0>();
            unit.zero::<1>();
            unit.load::<2>(at, stride);
            unit.load::<3>(at.add(BLOCK / 2), stride);
            unit.load::<4>(scratch.weights[0].as_ptr(), 64);
            unit.load::<5>(scratch.weights[0].as_ptr().add(4 * 64), 64);
            unit.dot_signed_unsigned::<0, 2, 4>();
            unit.dot_signed_unsigned::<1, 3, 5>();
            unit.store::<0>(scratch.sums[0].as_mut_ptr() as *mut u8, 64);
            unit.store::<1>(scratch.sums[1].as_mut_ptr() as *mut u8, 64);
            let dw = scales16(f32_scales, block);
            let dw_hi = scales16(f32_scales, block.add(sections.second));
            for t in 0..TILE_TOKENS {
                let sums = x.half_sums.add(2 * (t * nb + b));
                let lo = _mm512_load_si512(scratch.sums[0].as_ptr().add(GROUP_ROWS * t) as *const _);
                let hi = _mm512_load_si512(scratch.sums[1].as_ptr().add(GROUP_ROWS * t) as *const _);
                let lo = _mm512_add_epi32(lo, _mm512_set1_epi32(-c * *sums));
                let hi = _mm512_add_epi32(hi, _mm512_set1_epi32(-c * *sums.add(1)));
                let dx = *x.d.add(t * nb + b);
                acc[t] = add_scaled(acc[t], lo, dw, dx);
                acc[t] = add_scaled(acc[t], hi, dw_hi, dx);
            }
        }
        if !SPLIT {
            add_offsets(format, group, nb, |t, b| *x.s.add(t * nb + b), &mut acc);
        }
        let mut out = [[0f32; GROUP_ROWS]; TILE_TOKENS];
        for t in 0..TILE_TOKENS {
            _mm512_storeu_ps(out[t].as_mut_ptr(), acc[t]);
        }
        out
    }
}
