//! kiln's matrix layout for the 32-value block quantizations Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1:
//! rows in groups of 16, and within a group, block by block, the 16 rows' values side by side,
//! so that one 512-bit vector holds four consecutive values of each of 16 rows. An unsigned ×
//! signed byte dot product (`vpdpbusd`) of such a vector with four activation bytes broadcast to
//! every lane then gives 16 rows' partial sums at once, one row per lane: the scales multiply
//! whole vectors (16 rows) and no sum is ever horizontal. This is how an int8 matmul of a batched
//! step reaches a useful share of the machine's 8-bit peak (llama.cpp repacks its quantized
//! weights the same way for its CPU gemm).
//!
//! A matrix of `rows × cols` is `rows.div_ceil(16)` groups (the last padded with zero rows), each
//! `cols / 32` blocks of [`block_bytes`] bytes:
//!   `d: [f16; 16]`, then for Q4_1/Q5_1 `m: [f16; 16]`, then for Q5 `qh: [u64; 8]`, then the quants
//! (value = d·u + m, with m = −c·d for the formats without a stored m, as in `packed_quant`).
//! The quants of a block are eight vectors g = 0..8 of 64 bytes, byte 4r + i of vector g holding
//! value 4g + i of row r. Q8_0 stores them so, as u = q + 128; Q4/Q5 store the low four bits of
//! vectors g and g + 4 in one 64-byte vector (g in the low nibbles), so a block takes 256 bytes of
//! nibbles, unpacked by a mask and a shift; Q5's fifth bit of (g, byte j) is bit j of `qh[g]`,
//! a 64-bit mask for a masked add of 16. A group takes exactly 16 times the bytes of a row in the
//! GGUF file.

use half::f16;

use super::packed_quant::{PackedQuant, BLOCK};

/// Rows per group.
pub const GROUP_ROWS: usize = 16;
/// Quant vectors per block (four values of each row).
pub const VECTORS: usize = BLOCK / 4;

/// Whether `format` is kept in this layout (the 32-value block formats).
pub fn is_grouped(format: PackedQuant) -> bool {
    !matches!(format, PackedQuant::K(_))
}

/// Where each section of a block starts, in bytes from the block's start.
#[derive(Debug, Clone, Copy)]
pub struct BlockSections {
    pub m: usize,
    pub qh: usize,
    pub qs: usize,
    pub bytes: usize,
}

pub fn block_sections(format: PackedQuant) -> BlockSections {
    assert!(is_grouped(format), "{} is not a grouped format", format.name());
    let m = 2 * GROUP_ROWS;
    let qh = m + if format.has_min() { 2 * GROUP_ROWS } else { 0 };
    let qs = qh + if format.qh_bytes() > 0 { 8 * VECTORS } else { 0 };
    BlockSections { m, qh, qs, bytes: qs + GROUP_ROWS * format.quant_bytes() }
}

/// Bytes of one block of a group (16 rows × 32 values).
pub fn block_bytes(format: PackedQuant) -> usize {
    block_sections(format).bytes
}

/// Bytes of one group of rows `cols` long.
pub fn group_bytes(format: PackedQuant, cols: usize) -> usize {
    cols / BLOCK * block_bytes(format)
}

/// Bytes of a `rows × cols` matrix.
pub fn matrix_bytes(format: PackedQuant, rows: usize, cols: usize) -> usize {
    rows.div_ceil(GROUP_ROWS) * group_bytes(format, cols)
}

/// (byte in the block's quants, shift) of value i (0..32) of row r (0..16).
fn quant_position(format: PackedQuant, r: usize, i: usize) -> (usize, u32) {
    let (g, lane_byte) = (i / 4, 4 * r + i % 4);
    match format {
        PackedQuant::Q8_0 => (64 * g + lane_byte, 0),
        _ => (64 * (g % 4) + lane_byte, 4 * (g / 4) as u32),
    }
}

/// (byte in the block's fifth bits, shift) of value i of row r.
fn fifth_bit_position(r: usize, i: usize) -> (usize, u32) {
    let bit = 64 * (i / 4) + 4 * r + i % 4;
    (bit / 8, (bit % 8) as u32)
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
    let ggml_block = format.ggml_type().block_bytes();
    out.fill(0);
    for r in 0..rows {
        let source = ggml_row(r);
        assert_eq!(source.len(), cols / BLOCK * ggml_block, "row {r} of a group is a whole number of blocks");
        for (b, block) in source.chunks_exact(ggml_block).enumerate() {
            let out = &mut out[b * sections.bytes..(b + 1) * sections.bytes];
            // Every ggml block here starts with d (f16); Q4_1 and Q5_1 follow it with m, Q5 then
            // with the fifth bits (bit i of a little-endian u32 for value i), then the quants.
            out[2 * r..2 * r + 2].copy_from_slice(&block[0..2]);
            let mut rest = &block[2..];
            if format.has_min() {
                out[sections.m + 2 * r..sections.m + 2 * r + 2].copy_from_slice(&rest[..2]);
                rest = &rest[2..];
            }
            let mut fifth_bits = 0u32;
            if format.qh_bytes() > 0 {
                fifth_bits = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
                rest = &rest[4..];
            }
            for i in 0..BLOCK {
                let u = match format {
                    PackedQuant::Q8_0 => rest[i] ^ 0x80, // i8 q → u8 q + 128
                    _ => (rest[i % 16] >> (4 * (i / 16))) & 0x0F,
                };
                let (byte, shift) = quant_position(format, r, i);
                out[sections.qs + byte] |= u << shift;
                if (fifth_bits >> i) & 1 == 1 {
                    let (byte, shift) = fifth_bit_position(r, i);
                    out[sections.qh + byte] |= 1 << shift;
                }
            }
        }
    }
}

fn f16_at(bytes: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32()
}

/// Quant u, scale d and offset m of value i of row r in one block of a group.
pub fn value_parts(format: PackedQuant, block: &[u8], r: usize, i: usize) -> (u8, f32, f32) {
    let sections = block_sections(format);
    let (byte, shift) = quant_position(format, r, i);
    let mut u = match format {
        PackedQuant::Q8_0 => block[sections.qs + byte],
        _ => (block[sections.qs + byte] >> shift) & 0x0F,
    };
    if format.qh_bytes() > 0 {
        let (byte, shift) = fifth_bit_position(r, i);
        u |= ((block[sections.qh + byte] >> shift) & 1) << 4;
    }
    let d = f16_at(block, r);
    let m = match format.offset_factor() {
        Some(c) => -c * d,
        None => f16_at(&block[sections.m..], r),
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

    const FORMATS: [PackedQuant; 5] =
        [PackedQuant::Q8_0, PackedQuant::Q4_0, PackedQuant::Q4_1, PackedQuant::Q5_0, PackedQuant::Q5_1];

    /// Random blocks (every quant and fifth-bit pattern) come back bit for bit from every row of
    /// full and partial groups; padding rows are zero.
    #[test]
    fn groups_keep_every_row_bit_for_bit() {
        let seed = test_seed();
        for format in FORMATS {
            for (case, (rows, blocks)) in [(16usize, 1usize), (16, 18), (5, 3), (1, 4), (11, 9)].into_iter().enumerate()
            {
                let cols = blocks * BLOCK;
                let row_bytes = format.ggml_type().row_bytes(cols).unwrap();
                let ggml = random_ggml_blocks(format.ggml_type(), rows * cols, seed + case as u64);
                let mut group = vec![0xAAu8; group_bytes(format, cols)];
                pack_group(format, cols, rows, |r| &ggml[r * row_bytes..(r + 1) * row_bytes], &mut group);
                assert_eq!(group.len() * rows, GROUP_ROWS * ggml.len(), "{format:?}: 16 rows take 16 GGUF rows' bytes");
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
        // Value 4g + i of row r sits in byte 4r + i of vector g: Q8_0 directly, Q4 in the low
        // nibbles of vector g (g < 4) or the high nibbles of vector g − 4.
        assert_eq!(quant_position(PackedQuant::Q8_0, 3, 9), (64 * 2 + 12 + 1, 0));
        assert_eq!(quant_position(PackedQuant::Q4_1, 3, 9), (64 * 2 + 12 + 1, 0));
        assert_eq!(quant_position(PackedQuant::Q4_1, 3, 25), (64 * 2 + 12 + 1, 4));
        assert_eq!(fifth_bit_position(15, 31), ((64 * 7 + 63) / 8, 7));
        assert_eq!(block_bytes(PackedQuant::Q4_1), 16 * 20);
        assert_eq!(block_bytes(PackedQuant::Q5_0), 16 * 22);
        assert_eq!(block_bytes(PackedQuant::Q8_0), 16 * 34);
    }
}
