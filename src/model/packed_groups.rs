//! kiln's matrix layout for every block quantization it computes on (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1
//! and the K-quants Q4_K, Q5_K, Q6_K): rows in groups of 16, and within a group, block of 32
//! values by block, the 16 rows' values side by side, so that one 512-bit vector holds four
//! consecutive values of each of 16 rows. An unsigned × signed byte dot product (`vpdpbusd`) of
//! such a vector with four activation bytes broadcast to every lane then gives 16 rows' partial
//! sums at once, one row per lane: the scales multiply whole vectors (16 rows) and no sum is ever
//! horizontal. This is how an int8 matmul of a batched step reaches a useful share of the
//! machine's 8-bit peak (llama.cpp repacks its quantized weights the same way for its CPU gemm).
//!
//! A matrix of `rows × cols` is `rows.div_ceil(16)` groups (the last padded with zero rows), each
//! `cols / 32` blocks of [`block_bytes`] bytes:
//!   `d: [S; 16]`, then `second: [S; 16]` (m for Q4_1, Q5_1, Q4_K, Q5_K; for Q6_K the d of values
//!   16..32, d then scaling values 0..16), then `high: [[u64; 8]; H]` (the bits above the nibble:
//!   H = 1 for Q5_0, Q5_1, Q5_K, 2 for Q6_K), then the quants.
//! S is f16 for the 32-value formats (d and m as the file stores them) and f32 for the K-quants,
//! whose per-sub-block factors d·sc_j and −dmin·m_j (Q4_K, Q5_K) or d·sc_k (Q6_K), an f16 times a
//! 6- or 8-bit integer, are exact in f32 but not in f16. Values, as `quant::dequantize_row`
//! computes them: d·u + m, with m = −c·d for Q8_0, Q4_0, Q5_0 (c = 128, 8, 16); Q6_K d·(u − 32).
//!
//! The quants of a block are eight vectors g = 0..8 of 64 bytes, byte 4r + i of vector g holding
//! value 4g + i of row r. Q8_0 stores them so, as u = q + 128; the others store the low four bits
//! of vectors g and g + 4 in one 64-byte vector (g in the low nibbles), so a block takes 256 bytes
//! of nibbles, unpacked by a mask and a shift; bit p above the nibble of (g, byte j) is bit j of
//! `high[p][g]`, a 64-bit mask for a masked add of 16 << p.
//!
//! Bytes: a group of a 32-value format takes exactly 16 times the bytes of a row in the GGUF file.
//! Per row and 256 values, Q4_K takes 192 bytes (file: 144, +33%), Q5_K 224 (176, +27%) and Q6_K
//! 256 (210, +22%): the f32 scales of every 32 (Q6_K: 16) values, in place of the file's f16 d and
//! packed 6- or 8-bit scales per 256, are what keeps their products exact.

use half::f16;

use super::packed_quant::{PackedQuant, BLOCK};
use super::quant::{q4_k_scale_min, BlockQ4K, BlockQ5K, BlockQ6K};

/// Rows per group.
pub const GROUP_ROWS: usize = 16;
/// Quant vectors per block (four values of each row).
pub const VECTORS: usize = BLOCK / 4;

/// Where each section of a block starts, in bytes from the block's start (d starts it).
#[derive(Debug, Clone, Copy)]
pub struct BlockSections {
    pub second: usize,
    pub high: usize,
    pub qs: usize,
    pub bytes: usize,
}

pub fn block_sections(format: PackedQuant) -> BlockSections {
    let scales = GROUP_ROWS * format.scale_bytes();
    let second = scales;
    let high = second + if format.has_min() || format.split_scales() { scales } else { 0 };
    let qs = high + format.high_bits() * 8 * VECTORS;
    let quant_bytes = if format.byte_quants() { BLOCK } else { BLOCK / 2 };
    BlockSections { second, high, qs, bytes: qs + GROUP_ROWS * quant_bytes }
}

/// Bytes of one block of a group (16 rows × 32 values).
pub fn block_bytes(format: PackedQuant) -> usize {
    block_sections(format).bytes
}

/// Bytes of one group of rows `cols` long.
pub fn group_bytes(format: PackedQuant, cols: usize) -> usize {
    cols / BLOCK * block_bytes(format)
}

/// The groups of `bytes` (whole groups of `group_bytes`), each with the bytes of the group after
/// it (empty for the last): kernels prefetch the next group while they multiply one.
pub fn groups_with_next(bytes: &[u8], group_bytes: usize) -> impl Iterator<Item = (usize, &[u8], &[u8])> {
    bytes.chunks_exact(group_bytes).enumerate().map(move |(g, group)| {
        let next = ((g + 1) * group_bytes).min(bytes.len())..((g + 2) * group_bytes).min(bytes.len());
        (g, group, &bytes[next])
    })
}

/// Bytes of a `rows × cols` matrix.
pub fn matrix_bytes(format: PackedQuant, rows: usize, cols: usize) -> usize {
    rows.div_ceil(GROUP_ROWS) * group_bytes(format, cols)
}

/// (byte in the block's quants, shift) of value i (0..32) of row r (0..16).
fn quant_position(format: PackedQuant, r: usize, i: usize) -> (usize, u32) {
    let (g, lane_byte) = (i / 4, 4 * r + i % 4);
    if format.byte_quants() {
        (64 * g + lane_byte, 0)
    } else {
        (64 * (g % 4) + lane_byte, 4 * (g / 4) as u32)
    }
}

/// (byte in the block's high bits, shift) of bit p above the nibble of value i of row r.
fn high_bit_position(p: usize, r: usize, i: usize) -> (usize, u32) {
    let bit = 8 * 64 * p + 64 * (i / 4) + 4 * r + i % 4;
    (bit / 8, (bit % 8) as u32)
}

/// One 32-value block of a ggml row, as the layout stores it: quants (0..64) and the
/// little-endian bytes of d and the second scale (`scale_bytes` of each).
struct Block32 {
    u: [u8; BLOCK],
    d: [u8; 4],
    second: [u8; 4],
}

/// The 32-value blocks of a ggml row, in order (a K-quant super-block gives eight).
fn ggml_blocks(format: PackedQuant, row: &[u8]) -> Vec<Block32> {
    let ggml_block = format.ggml_type().block_bytes();
    assert_eq!(row.len() % ggml_block, 0, "a ggml row is a whole number of blocks");
    let mut blocks = Vec::with_capacity(row.len() / ggml_block * format.block_values() / BLOCK);
    for block in row.chunks_exact(ggml_block) {
        match format {
            PackedQuant::Q4_K | PackedQuant::Q5_K => {
                let (d, dmin, scales, qs, qh) = if format == PackedQuant::Q4_K {
                    let b: BlockQ4K = bytemuck::pod_read_unaligned(block);
                    (b.d, b.dmin, b.scales, b.qs, [0u8; 32])
                } else {
                    let b: BlockQ5K = bytemuck::pod_read_unaligned(block);
                    (b.d, b.dmin, b.scales, b.qs, b.qh)
                };
                // As `quant::dequantize_row_q5_k`: sub-block j takes the low (j even) or high
                // nibbles of 32 bytes of qs, and bit j of each qh byte as its fifth bit.
                for j in 0..8 {
                    let (sc, m) = q4_k_scale_min(&scales, j);
                    let qs = &qs[32 * (j / 2)..32 * (j / 2) + 32];
                    let u = std::array::from_fn(|l| ((qs[l] >> (4 * (j % 2))) & 0x0F) | (((qh[l] >> j) & 1) << 4));
                    let (d, m) = (d.to_f32() * sc as f32, -(dmin.to_f32() * m as f32));
                    blocks.push(Block32 { u, d: d.to_le_bytes(), second: m.to_le_bytes() });
                }
            }
            PackedQuant::Q6_K => {
                let b: BlockQ6K = bytemuck::pod_read_unaligned(block);
                // As `quant::dequantize_row_q6_k`: value v of a half (128 values) has its low bits
                // in nibble v / 64 of ql[v % 64] and its top two in bits 2·(v / 32) of qh[v % 32].
                let quant = |v: usize| {
                    let (half, v) = (v / 128, v % 128);
                    let low = (b.ql[64 * half + v % 64] >> (4 * (v / 64))) & 0x0F;
                    let high = (b.qh[32 * half + v % 32] >> (2 * (v / 32))) & 3;
                    low | (high << 4)
                };
                let d = b.d.to_f32();
                for j in 0..8 {
                    let u = std::array::from_fn(|i| quant(BLOCK * j + i));
                    let (lo, hi) = (d * b.scales[2 * j] as f32, d * b.scales[2 * j + 1] as f32);
                    blocks.push(Block32 { u, d: lo.to_le_bytes(), second: hi.to_le_bytes() });
                }
            }
            _ => {
                // d (f16) first; Q4_1 and Q5_1 follow it with m, Q5 then with the fifth bits
                // (bit i of a little-endian u32 for value i), then the quants.
                let (mut d, mut second) = ([0u8; 4], [0u8; 4]);
                d[..2].copy_from_slice(&block[0..2]);
                let mut rest = &block[2..];
                if format.has_min() {
                    second[..2].copy_from_slice(&rest[..2]);
                    rest = &rest[2..];
                }
                let mut fifth_bits = 0u32;
                if format.high_bits() > 0 {
                    fifth_bits = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
                    rest = &rest[4..];
                }
                let u = std::array::from_fn(|i| match format {
                    PackedQuant::Q8_0 => rest[i] ^ 0x80, // i8 q → u8 q + 128
                    _ => ((rest[i % 16] >> (4 * (i / 16))) & 0x0F) | (((fifth_bits >> i) & 1) << 4) as u8,
                });
                blocks.push(Block32 { u, d, second });
            }
        }
    }
    blocks
}

/// Packs one group from its ggml rows (`ggml_row(r)` for r in 0..rows, rows ≤ 16; the rest are
/// zero) into `out` (`group_bytes(format, cols)` bytes).
pub fn pack_group<'a>(
    format: PackedQuant,
    cols: usize,
    rows: usize,
    ggml_row: impl Fn(usize) -> &'a [u8],
    out: &mut [u8],
) {
    assert!(rows <= GROUP_ROWS, "a group holds at most {GROUP_ROWS} rows");
    assert_eq!(out.len(), group_bytes(format, cols), "packed group length");
    let sections = block_sections(format);
    let scale_bytes = format.scale_bytes();
    out.fill(0);
    for r in 0..rows {
        let blocks = ggml_blocks(format, ggml_row(r));
        assert_eq!(blocks.len(), cols / BLOCK, "row {r} of a group holds {cols} values");
        for (b, block) in blocks.iter().enumerate() {
            let out = &mut out[b * sections.bytes..(b + 1) * sections.bytes];
            let at = scale_bytes * r;
            out[at..at + scale_bytes].copy_from_slice(&block.d[..scale_bytes]);
            if sections.high > sections.second {
                let at = sections.second + at;
                out[at..at + scale_bytes].copy_from_slice(&block.second[..scale_bytes]);
            }
            for (i, &u) in block.u.iter().enumerate() {
                let (byte, shift) = quant_position(format, r, i);
                out[sections.qs + byte] |= if format.byte_quants() { u } else { u & 0x0F } << shift;
                for p in 0..format.high_bits() {
                    let (byte, shift) = high_bit_position(p, r, i);
                    out[sections.high + byte] |= ((u >> (4 + p)) & 1) << shift;
                }
            }
        }
    }
}

/// Scale (d or m) of row r in a block's section of 16 scales starting at `bytes`.
fn scale_at(format: PackedQuant, bytes: &[u8], r: usize) -> f32 {
    if format.f32_scales() {
        f32::from_le_bytes([bytes[4 * r], bytes[4 * r + 1], bytes[4 * r + 2], bytes[4 * r + 3]])
    } else {
        f16::from_le_bytes([bytes[2 * r], bytes[2 * r + 1]]).to_f32()
    }
}

/// Quant u, scale d and offset m of value i of row r in one block of a group (value = d·u + m).
pub fn value_parts(format: PackedQuant, block: &[u8], r: usize, i: usize) -> (u8, f32, f32) {
    let sections = block_sections(format);
    let (byte, shift) = quant_position(format, r, i);
    let mut u = block[sections.qs + byte];
    if !format.byte_quants() {
        u = (u >> shift) & 0x0F;
    }
    for p in 0..format.high_bits() {
        let (byte, shift) = high_bit_position(p, r, i);
        u |= ((block[sections.high + byte] >> shift) & 1) << (4 + p);
    }
    let d_at = if format.split_scales() && i >= BLOCK / 2 { sections.second } else { 0 };
    let d = scale_at(format, &block[d_at..], r);
    let m = match format.offset_factor() {
        Some(c) => -c * d,
        None => scale_at(format, &block[sections.second..], r),
    };
    (u, d, m)
}

/// Row r (0..16) of a packed group as f32, computed as quant.rs computes each format (d·(q − c)
/// for the symmetric ones, d·q + m otherwise), so it equals the ggml row's dequantization.
pub fn dequantize_group_row(format: PackedQuant, group: &[u8], r: usize, out: &mut [f32]) {
    let sections = block_sections(format);
    assert_eq!(group.len(), out.len() / BLOCK * sections.bytes, "group and row length disagree");
    for (block, values) in group.chunks_exact(sections.bytes).zip(out.chunks_exact_mut(BLOCK)) {
        for (i, v) in values.iter_mut().enumerate() {
            let (u, d, m) = value_parts(format, block, r, i);
            *v = match format.offset_factor() {
                Some(c) => d * (u as i32 - c as i32) as f32,
                None => d * u as f32 + m,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::quant::dequantize_row;
    use crate::testing::{random_ggml_blocks, test_seed};

    const FORMATS: [PackedQuant; 8] = PackedQuant::ALL;

    /// Random blocks (every quant, high-bit and sub-block scale pattern) come back bit for bit
    /// from every row of full and partial groups; padding rows are zero.
    #[test]
    fn groups_keep_every_row_bit_for_bit() {
        let seed = test_seed();
        for format in FORMATS {
            // (rows, blocks or super-blocks)
            for (case, (rows, blocks)) in [(16usize, 1usize), (16, 18), (5, 3), (1, 4), (11, 9)].into_iter().enumerate()
            {
                let cols = blocks * format.block_values();
                let row_bytes = format.ggml_type().row_bytes(cols).unwrap();
                let ggml = random_ggml_blocks(format.ggml_type(), rows * cols, seed + case as u64);
                let mut group = vec![0xAAu8; group_bytes(format, cols)];
                pack_group(format, cols, rows, |r| &ggml[r * row_bytes..(r + 1) * row_bytes], &mut group);
                for r in 0..GROUP_ROWS {
                    let mut got = vec![f32::NAN; cols];
                    dequantize_group_row(format, &group, r, &mut got);
                    let mut reference = vec![0f32; cols];
                    if r < rows {
                        dequantize_row(format.ggml_type(), &ggml[r * row_bytes..(r + 1) * row_bytes], &mut reference)
                            .unwrap();
                    }
                    let same =
                        got.iter().zip(&reference).all(|(a, b)| a.to_bits() == b.to_bits() || (*a == 0.0 && *b == 0.0));
                    assert!(same, "{format:?}, {rows} rows of {blocks} blocks, row {r}: {got:?}\nvs {reference:?}");
                }
            }
        }
    }

    #[test]
    fn the_layout_places_four_values_of_each_row_per_lane() {
        // Value 4g + i of row r sits in byte 4r + i of vector g: Q8_0 directly, the others in the
        // low nibbles of vector g (g < 4) or the high nibbles of vector g − 4.
        assert_eq!(quant_position(PackedQuant::Q8_0, 3, 9), (64 * 2 + 12 + 1, 0));
        assert_eq!(quant_position(PackedQuant::Q4_1, 3, 9), (64 * 2 + 12 + 1, 0));
        assert_eq!(quant_position(PackedQuant::Q6_K, 3, 25), (64 * 2 + 12 + 1, 4));
        assert_eq!(high_bit_position(0, 15, 31), ((64 * 7 + 63) / 8, 7));
        assert_eq!(high_bit_position(1, 0, 4), (64 + 8, 0));
    }

    #[test]
    fn groups_take_the_documented_bytes() {
        // 16 rows of a 32-value format take 16 rows of the file.
        for format in &FORMATS[..5] {
            assert_eq!(block_bytes(*format), 16 * format.ggml_type().block_bytes(), "{format:?}");
        }
        // K-quants per row and 256 values: f32 scales per 32 (Q6_K: 16) values.
        assert_eq!(8 * block_bytes(PackedQuant::Q4_K) / 16, 192);
        assert_eq!(8 * block_bytes(PackedQuant::Q5_K) / 16, 224);
        assert_eq!(8 * block_bytes(PackedQuant::Q6_K) / 16, 256);
    }
}
