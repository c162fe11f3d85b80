//! kiln's in-memory row layout for the 32-value block quantizations Q8_0, Q4_0 and Q4_1: the same
//! bytes as ggml's blocks, regrouped per row so a SIMD kernel reads eight scales with one load and
//! two blocks of quants with one 512-bit load (ggml interleaves a 2-byte scale with every block).
//!
//! A row of `cols` values has `nb = cols / 32` blocks and is laid out as
//!   Q4_1: `d: [f16; nb]`, `m: [f16; nb]`, `qs: [[u8; 16]; nb]`  (value = d·q + m, q in 0..16)
//!   Q4_0: `d: [f16; nb]`, `qs: [[u8; 16]; nb]`                  (value = d·(q − 8))
//!   Q8_0: `d: [f16; nb]`, `qs: [[u8; 32]; nb]`                  (value = d·(u − 128), u = q + 128)
//! so a row takes exactly as many bytes as in the GGUF file. Q4 nibbles keep ggml's order (byte i
//! holds value i low and value i + 16 high); Q8_0 quants are stored offset by 128 as unsigned bytes,
//! which is the operand an unsigned×signed byte dot product (VNNI `vpdpbusd`) wants.
//!
//! Byte order of 8-bit quants (Q8_0 weights, and the activations the kernels quantize): in each
//! whole group of four blocks, the first 16 values of the four blocks come first (64 bytes), then
//! their last 16 values, see [`interleaved_index`]. That is the order in which four Q4 blocks'
//! 64 bytes of nibbles unpack (low nibbles = values 0..16 of each block, high = 16..32), so one
//! 64-byte load of weights meets one 64-byte load of activations whatever the format. Blocks past
//! the last whole group keep their plain order.
//!
//! Every format is "affine unsigned": value = d·u + m with m = −8d (Q4_0) and m = −128d (Q8_0).

use half::f16;

use super::quant::GgmlType;

/// Values per block.
pub const BLOCK: usize = 32;

/// The block-quantized formats kept in kiln's row layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum PackedQuant {
    Q8_0,
    Q4_0,
    Q4_1,
}

impl PackedQuant {
    pub fn ggml_type(self) -> GgmlType {
        match self {
            PackedQuant::Q8_0 => GgmlType::Q8_0,
            PackedQuant::Q4_0 => GgmlType::Q4_0,
            PackedQuant::Q4_1 => GgmlType::Q4_1,
        }
    }

    /// Bytes of quants per block.
    pub fn quant_bytes(self) -> usize {
        match self {
            PackedQuant::Q8_0 => 32,
            PackedQuant::Q4_0 | PackedQuant::Q4_1 => 16,
        }
    }

    /// Bytes of f16 scale data per block (d, plus m for Q4_1).
    pub fn scale_bytes(self) -> usize {
        match self {
            PackedQuant::Q4_1 => 4,
            PackedQuant::Q8_0 | PackedQuant::Q4_0 => 2,
        }
    }

    pub fn row_bytes(self, cols: usize) -> usize {
        cols / BLOCK * (self.quant_bytes() + self.scale_bytes())
    }

    /// The constant c of formats whose offset is m = −c·d; `None` for Q4_1, which stores m.
    pub fn offset_factor(self) -> Option<f32> {
        match self {
            PackedQuant::Q8_0 => Some(128.0),
            PackedQuant::Q4_0 => Some(8.0),
            PackedQuant::Q4_1 => None,
        }
    }
}

/// Where value `i` (0..32) of block `b` sits among the 8-bit quants of a row of `nb` blocks.
pub fn interleaved_index(nb: usize, b: usize, i: usize) -> usize {
    if b >= nb / 4 * 4 {
        return b * BLOCK + i;
    }
    let (group, j) = (b / 4, b % 4);
    group * 4 * BLOCK + (i / 16) * 64 + j * 16 + i % 16
}

/// One row of the layout, split into its sections.
pub struct PackedRow<'a> {
    pub d: &'a [u8],
    /// Empty unless Q4_1.
    pub m: &'a [u8],
    pub qs: &'a [u8],
}

/// Splits `row` (`format.row_bytes(cols)` bytes) into its scale and quant sections.
pub fn split_row(format: PackedQuant, row: &[u8], cols: usize) -> PackedRow<'_> {
    let nb = cols / BLOCK;
    debug_assert_eq!(row.len(), format.row_bytes(cols));
    let (d, rest) = row.split_at(2 * nb);
    let (m, qs) = if format == PackedQuant::Q4_1 { rest.split_at(2 * nb) } else { rest.split_at(0) };
    PackedRow { d, m, qs }
}

fn f16_at(bytes: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32()
}

/// Rearranges one row of ggml blocks (`ggml_row`, as stored in a GGUF) into kiln's layout in `out`.
pub fn pack_ggml_row(format: PackedQuant, ggml_row: &[u8], out: &mut [u8]) {
    let block_bytes = format.ggml_type().block_bytes();
    let nb = ggml_row.len() / block_bytes;
    assert_eq!(nb * block_bytes, ggml_row.len(), "a ggml row is a whole number of blocks");
    assert_eq!(out.len(), nb * (format.quant_bytes() + format.scale_bytes()), "packed row length");
    let scale_section = nb * format.scale_bytes();
    let (scales, qs) = out.split_at_mut(scale_section);
    for (b, block) in ggml_row.chunks_exact(block_bytes).enumerate() {
        // Every ggml block here starts with d (f16); Q4_1 follows it with m.
        scales[2 * b..2 * b + 2].copy_from_slice(&block[0..2]);
        let quants = match format {
            PackedQuant::Q4_1 => {
                scales[2 * nb + 2 * b..2 * nb + 2 * b + 2].copy_from_slice(&block[2..4]);
                &block[4..]
            }
            PackedQuant::Q4_0 | PackedQuant::Q8_0 => &block[2..],
        };
        match format {
            PackedQuant::Q8_0 => {
                for (i, &q) in quants.iter().enumerate() {
                    qs[interleaved_index(nb, b, i)] = q ^ 0x80; // i8 q → u8 q + 128
                }
            }
            PackedQuant::Q4_0 | PackedQuant::Q4_1 => qs[b * 16..(b + 1) * 16].copy_from_slice(quants),
        }
    }
}

/// Dequantizes one packed row to f32: the plain reference for the layout.
pub fn dequantize_packed_row(format: PackedQuant, row: &[u8], out: &mut [f32]) {
    let PackedRow { d, m, qs } = split_row(format, row, out.len());
    let nb = out.len() / BLOCK;
    for (b, values) in out.chunks_exact_mut(BLOCK).enumerate() {
        let scale = f16_at(d, b);
        match format {
            PackedQuant::Q8_0 => {
                for (i, v) in values.iter_mut().enumerate() {
                    *v = scale * (qs[interleaved_index(nb, b, i)] as i32 - 128) as f32;
                }
            }
            PackedQuant::Q4_0 | PackedQuant::Q4_1 => {
                let offset = if format == PackedQuant::Q4_1 { f16_at(m, b) } else { 0.0 };
                let bias = if format == PackedQuant::Q4_0 { 8 } else { 0 };
                for (i, &byte) in qs[16 * b..16 * b + 16].iter().enumerate() {
                    let (lo, hi) = ((byte & 0x0F) as i32 - bias, (byte >> 4) as i32 - bias);
                    values[i] = scale * lo as f32 + offset;
                    values[i + 16] = scale * hi as f32 + offset;
                }
            }
        }
    }
}

/// Quantizes f32 values to ggml blocks of `format` with ggml's reference rounding (for tests and
/// random-weight benchmarks; models arrive quantized).
pub fn quantize_to_ggml_row(format: PackedQuant, values: &[f32]) -> Vec<u8> {
    assert_eq!(values.len() % BLOCK, 0, "a quantized row is a whole number of 32-value blocks");
    let mut out = Vec::with_capacity(values.len() / BLOCK * format.ggml_type().block_bytes());
    for block in values.chunks_exact(BLOCK) {
        match format {
            PackedQuant::Q8_0 => {
                let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_le_bytes());
                out.extend(block.iter().map(|v| (v * id).round() as i8 as u8));
            }
            PackedQuant::Q4_0 => {
                // ggml: the value of largest magnitude maps to −8.
                let max = block.iter().fold(0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_le_bytes());
                let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|i| q(block[i]) | (q(block[i + 16]) << 4)));
            }
            PackedQuant::Q4_1 => {
                let min = block.iter().copied().fold(f32::INFINITY, f32::min);
                let max = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_le_bytes());
                out.extend(f16::from_f32(min).to_le_bytes());
                let q = |v: f32| (((v - min) * id + 0.5) as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|i| q(block[i]) | (q(block[i + 16]) << 4)));
            }
        }
    }
    out
}

/// Dequantizes a ggml row through quant.rs (the reference for [`pack_ggml_row`]).
#[cfg(test)]
pub fn dequantize_ggml_row(format: PackedQuant, ggml_row: &[u8], out: &mut [f32]) {
    super::quant::dequantize_row(format.ggml_type(), ggml_row, out).expect("row length matches its block count");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{seeded_values, test_seed};

    #[test]
    fn interleaved_index_is_a_permutation() {
        for nb in [1, 4, 6, 18] {
            let mut seen = vec![false; nb * BLOCK];
            for b in 0..nb {
                for i in 0..BLOCK {
                    let at = interleaved_index(nb, b, i);
                    assert!(!seen[at], "nb {nb}: block {b} value {i} collides");
                    seen[at] = true;
                }
            }
        }
        assert_eq!(interleaved_index(6, 1, 17), 64 + 16 + 1);
        assert_eq!(interleaved_index(6, 5, 3), 5 * 32 + 3);
    }

    #[test]
    fn packing_keeps_every_value_of_every_format() {
        let seed = test_seed();
        for format in [PackedQuant::Q8_0, PackedQuant::Q4_0, PackedQuant::Q4_1] {
            for (case, blocks) in [1usize, 3, 4, 9, 18].into_iter().enumerate() {
                let values: Vec<f32> =
                    seeded_values(seed + case as u64, blocks * BLOCK).iter().map(|v| v * 3.0).collect();
                let ggml = quantize_to_ggml_row(format, &values);
                assert_eq!(ggml.len(), blocks * format.ggml_type().block_bytes());
                let mut reference = vec![f32::NAN; values.len()];
                dequantize_ggml_row(format, &ggml, &mut reference);
                let mut packed = vec![0u8; format.row_bytes(values.len())];
                pack_ggml_row(format, &ggml, &mut packed);
                let mut got = vec![f32::NAN; values.len()];
                dequantize_packed_row(format, &packed, &mut got);
                assert_eq!(got, reference, "{format:?} with {blocks} blocks");
                // Quantization error is at most one step (half a step for rounding, plus f16 scales).
                let step = values.iter().fold(0f32, |a, v| a.max(v.abs())) * 2.0 / 15.0;
                for (v, r) in values.iter().zip(&reference) {
                    assert!((v - r).abs() <= step, "{format:?}: {v} quantized to {r}");
                }
            }
        }
    }
}
