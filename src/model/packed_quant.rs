//! kiln's in-memory row layout for the 32-value block quantizations Q8_0, Q4_0, Q4_1, Q5_0 and
//! Q5_1: the same bytes as ggml's blocks, regrouped per row so a SIMD kernel reads eight scales with
//! one load and two blocks of quants with one 512-bit load (ggml interleaves a 2-byte scale with
//! every block). The K-quants (256-value super-blocks) have their own layout, `packed_kquant`, and
//! share [`PackedQuant`] and the 4-bit and fifth-bit orders defined here.
//!
//! A row of `cols` values has `nb = cols / 32` blocks and is laid out as
//!   Q4_1: `d: [f16; nb]`, `m: [f16; nb]`, `qs: [[u8; 16]; nb]`  (value = d·q + m, q in 0..16)
//!   Q4_0: `d: [f16; nb]`, `qs: [[u8; 16]; nb]`                  (value = d·(q − 8))
//!   Q5_1: `d: [f16; nb]`, `m: [f16; nb]`, `qh: [u8; 4·nb]`, `qs: [[u8; 16]; nb]` (d·q + m, q in 0..32)
//!   Q5_0: `d: [f16; nb]`, `qh: [u8; 4·nb]`, `qs: [[u8; 16]; nb]`  (value = d·(q − 16))
//!   Q8_0: `d: [f16; nb]`, `qs: [[u8; 32]; nb]`                  (value = d·(u − 128), u = q + 128)
//! so a row takes exactly as many bytes as in the GGUF file. Q4/Q5 nibbles keep ggml's order (byte i
//! holds value i low and value i + 16 high, [`nibble_at`]); Q5's fifth bits are one bit array in
//! the activations' interleaved order ([`fifth_bit_at`]), so the bits of a 64-byte vector of
//! values are one 64-bit mask. Q8_0 quants are stored offset by 128 as unsigned bytes, which is the
//! operand an unsigned×signed byte dot product (VNNI `vpdpbusd`) wants.
//!
//! Byte order of 8-bit quants (Q8_0 weights, and the activations the kernels quantize): in each
//! whole group of four blocks, the first 16 values of the four blocks come first (64 bytes), then
//! their last 16 values, see [`interleaved_index`]. That is the order in which four Q4 blocks'
//! 64 bytes of nibbles unpack (low nibbles = values 0..16 of each block, high = 16..32), so one
//! 64-byte load of weights meets one 64-byte load of activations whatever the format. Blocks past
//! the last whole group keep their plain order.
//!
//! Every 32-value format is "affine unsigned": value = d·u + m with m = −8d (Q4_0), −16d (Q5_0)
//! and −128d (Q8_0).

use half::f16;

use super::packed_kquant::{self, KQuant};
use super::quant::GgmlType;

/// Values per block.
pub const BLOCK: usize = 32;

/// The block-quantized formats kept in kiln's row layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum PackedQuant {
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    /// A K-quant, in `packed_kquant`'s layout.
    K(KQuant),
}

impl PackedQuant {
    pub const Q4_K: PackedQuant = PackedQuant::K(KQuant::Q4_K);
    pub const Q5_K: PackedQuant = PackedQuant::K(KQuant::Q5_K);
    pub const Q6_K: PackedQuant = PackedQuant::K(KQuant::Q6_K);

    /// The format kiln keeps a GGUF tensor of `ggml_type` in, if it is a block quantization.
    pub fn from_ggml(ggml_type: GgmlType) -> Option<PackedQuant> {
        Some(match ggml_type {
            GgmlType::Q8_0 => PackedQuant::Q8_0,
            GgmlType::Q4_0 => PackedQuant::Q4_0,
            GgmlType::Q4_1 => PackedQuant::Q4_1,
            GgmlType::Q5_0 => PackedQuant::Q5_0,
            GgmlType::Q5_1 => PackedQuant::Q5_1,
            GgmlType::Q4_K => PackedQuant::Q4_K,
            GgmlType::Q5_K => PackedQuant::Q5_K,
            GgmlType::Q6_K => PackedQuant::Q6_K,
            _ => return None,
        })
    }

    pub fn ggml_type(self) -> GgmlType {
        match self {
            PackedQuant::Q8_0 => GgmlType::Q8_0,
            PackedQuant::Q4_0 => GgmlType::Q4_0,
            PackedQuant::Q4_1 => GgmlType::Q4_1,
            PackedQuant::Q5_0 => GgmlType::Q5_0,
            PackedQuant::Q5_1 => GgmlType::Q5_1,
            PackedQuant::K(KQuant::Q4_K) => GgmlType::Q4_K,
            PackedQuant::K(KQuant::Q5_K) => GgmlType::Q5_K,
            PackedQuant::K(KQuant::Q6_K) => GgmlType::Q6_K,
        }
    }

    /// Values per block (32) or super-block (256): a row's length must be a multiple of it.
    pub fn block_values(self) -> usize {
        self.ggml_type().block_size()
    }

    pub fn name(self) -> &'static str {
        match self {
            PackedQuant::Q8_0 => "q8_0",
            PackedQuant::Q4_0 => "q4_0",
            PackedQuant::Q4_1 => "q4_1",
            PackedQuant::Q5_0 => "q5_0",
            PackedQuant::Q5_1 => "q5_1",
            PackedQuant::K(KQuant::Q4_K) => "q4_k",
            PackedQuant::K(KQuant::Q5_K) => "q5_k",
            PackedQuant::K(KQuant::Q6_K) => "q6_k",
        }
    }

    /// Bytes of quants per 32-value block (for Q5, their low 4 bits).
    pub fn quant_bytes(self) -> usize {
        match self {
            PackedQuant::Q8_0 => 32,
            PackedQuant::Q4_0 | PackedQuant::Q4_1 | PackedQuant::Q5_0 | PackedQuant::Q5_1 => 16,
            PackedQuant::K(_) => unreachable!("K-quant rows are laid out by packed_kquant"),
        }
    }

    /// Bytes of f16 scale data per 32-value block (d, plus m for Q4_1 and Q5_1).
    pub fn scale_bytes(self) -> usize {
        match self {
            PackedQuant::Q4_1 | PackedQuant::Q5_1 => 4,
            PackedQuant::Q8_0 | PackedQuant::Q4_0 | PackedQuant::Q5_0 => 2,
            PackedQuant::K(_) => unreachable!("K-quant rows are laid out by packed_kquant"),
        }
    }

    /// Bytes of fifth bits per 32-value block.
    pub fn qh_bytes(self) -> usize {
        match self {
            PackedQuant::Q5_0 | PackedQuant::Q5_1 => 4,
            PackedQuant::Q8_0 | PackedQuant::Q4_0 | PackedQuant::Q4_1 => 0,
            PackedQuant::K(_) => unreachable!("K-quant rows are laid out by packed_kquant"),
        }
    }

    pub fn row_bytes(self, cols: usize) -> usize {
        match self {
            PackedQuant::K(k) => packed_kquant::row_bytes(k, cols),
            _ => cols / BLOCK * (self.quant_bytes() + self.scale_bytes() + self.qh_bytes()),
        }
    }

    /// Whether the 32-value format stores its offset m (Q4_1, Q5_1) rather than deriving it from d.
    pub fn has_min(self) -> bool {
        matches!(self, PackedQuant::Q4_1 | PackedQuant::Q5_1)
    }

    /// The constant c of 32-value formats whose offset is m = −c·d; `None` for those that store m.
    pub fn offset_factor(self) -> Option<f32> {
        match self {
            PackedQuant::Q8_0 => Some(128.0),
            PackedQuant::Q4_0 => Some(8.0),
            PackedQuant::Q5_0 => Some(16.0),
            PackedQuant::Q4_1 | PackedQuant::Q5_1 => None,
            PackedQuant::K(_) => unreachable!("K-quant rows are laid out by packed_kquant"),
        }
    }
}

/// Where the 4-bit part of value i (0..32) of block b sits in a row's 4-bit quants: (byte, shift).
pub fn nibble_at(b: usize, i: usize) -> (usize, u32) {
    (16 * b + i % 16, if i < 16 { 0 } else { 4 })
}

/// Where the fifth bit of value i of block b sits among a row's fifth bits (a row of `nb`
/// blocks): bit [`interleaved_index`], as (byte, shift).
pub fn fifth_bit_at(nb: usize, b: usize, i: usize) -> (usize, u32) {
    let at = interleaved_index(nb, b, i);
    (at / 8, (at % 8) as u32)
}

/// Where value `i` (0..32) of block `b` sits among the 8-bit quants of a row of `nb` blocks.
pub fn interleaved_index(nb: usize, b: usize, i: usize) -> usize {
    if b >= nb / 4 * 4 {
        return b * BLOCK + i;
    }
    let (group, j) = (b / 4, b % 4);
    group * 4 * BLOCK + (i / 16) * 64 + j * 16 + i % 16
}

/// One row of a 32-value format's layout, split into its sections.
pub struct PackedRow<'a> {
    pub d: &'a [u8],
    /// Empty unless Q4_1 or Q5_1.
    pub m: &'a [u8],
    /// Empty unless Q5_0 or Q5_1.
    pub qh: &'a [u8],
    pub qs: &'a [u8],
}

/// Splits `row` (`format.row_bytes(cols)` bytes of a 32-value format) into its sections.
pub fn split_row(format: PackedQuant, row: &[u8], cols: usize) -> PackedRow<'_> {
    let nb = cols / BLOCK;
    debug_assert_eq!(row.len(), format.row_bytes(cols));
    let (d, rest) = row.split_at(2 * nb);
    let (m, rest) = rest.split_at(if format.has_min() { 2 * nb } else { 0 });
    let (qh, qs) = rest.split_at(format.qh_bytes() * nb);
    PackedRow { d, m, qh, qs }
}

/// Quant u of value i of block b of a split row (the Q8_0 byte is u = q + 128).
pub fn quant_at(format: PackedQuant, row: &PackedRow, nb: usize, b: usize, i: usize) -> u8 {
    if format == PackedQuant::Q8_0 {
        return row.qs[interleaved_index(nb, b, i)];
    }
    let (byte, shift) = nibble_at(b, i);
    let low = (row.qs[byte] >> shift) & 0x0F;
    if format.qh_bytes() == 0 {
        return low;
    }
    let (byte, shift) = fifth_bit_at(nb, b, i);
    low | (((row.qh[byte] >> shift) & 1) << 4)
}

fn f16_at(bytes: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32()
}

/// Rearranges one row of ggml blocks (`ggml_row`, as stored in a GGUF) into kiln's layout in `out`.
pub fn pack_ggml_row(format: PackedQuant, ggml_row: &[u8], out: &mut [u8]) {
    if let PackedQuant::K(k) = format {
        return packed_kquant::pack_ggml_row(k, ggml_row, out);
    }
    let block_bytes = format.ggml_type().block_bytes();
    let nb = ggml_row.len() / block_bytes;
    assert_eq!(nb * block_bytes, ggml_row.len(), "a ggml row is a whole number of blocks");
    assert_eq!(out.len(), format.row_bytes(nb * BLOCK), "packed row length");
    let (scales, rest) = out.split_at_mut(nb * format.scale_bytes());
    let (qh, qs) = rest.split_at_mut(nb * format.qh_bytes());
    qh.fill(0);
    for (b, block) in ggml_row.chunks_exact(block_bytes).enumerate() {
        // Every ggml block here starts with d (f16); Q4_1 and Q5_1 follow it with m, Q5 then
        // with the fifth bits (bit i of a little-endian u32 for value i).
        scales[2 * b..2 * b + 2].copy_from_slice(&block[0..2]);
        let mut rest = &block[2..];
        if format.has_min() {
            scales[2 * nb + 2 * b..2 * nb + 2 * b + 2].copy_from_slice(&rest[..2]);
            rest = &rest[2..];
        }
        if format.qh_bytes() > 0 {
            let fifth_bits = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
            for i in 0..BLOCK {
                let (byte, shift) = fifth_bit_at(nb, b, i);
                qh[byte] |= (((fifth_bits >> i) & 1) as u8) << shift;
            }
            rest = &rest[4..];
        }
        match format {
            PackedQuant::Q8_0 => {
                for (i, &q) in rest.iter().enumerate() {
                    qs[interleaved_index(nb, b, i)] = q ^ 0x80; // i8 q → u8 q + 128
                }
            }
            _ => qs[b * 16..(b + 1) * 16].copy_from_slice(rest),
        }
    }
}

/// Dequantizes one packed row to f32: the plain reference for the layout.
pub fn dequantize_packed_row(format: PackedQuant, row: &[u8], out: &mut [f32]) {
    if let PackedQuant::K(k) = format {
        return packed_kquant::dequantize_packed_row(k, row, out);
    }
    let sections = split_row(format, row, out.len());
    let nb = out.len() / BLOCK;
    for (b, values) in out.chunks_exact_mut(BLOCK).enumerate() {
        let scale = f16_at(sections.d, b);
        // As quant.rs computes each format: d·(q − c) for the symmetric ones, d·q + m otherwise.
        match format.offset_factor() {
            Some(c) => {
                for (i, v) in values.iter_mut().enumerate() {
                    *v = scale * (quant_at(format, &sections, nb, b, i) as i32 - c as i32) as f32;
                }
            }
            None => {
                let m = f16_at(sections.m, b);
                for (i, v) in values.iter_mut().enumerate() {
                    *v = scale * quant_at(format, &sections, nb, b, i) as f32 + m;
                }
            }
        }
    }
}

/// Quantizes f32 values to ggml blocks of `format` with ggml's reference rounding (for tests and
/// random-weight benchmarks; models arrive quantized). The K-quants' search for scales is not
/// reproduced: tests draw random K-quant blocks instead (`testing::random_ggml_blocks`).
pub fn quantize_to_ggml_row(format: PackedQuant, values: &[f32]) -> Vec<u8> {
    assert!(!matches!(format, PackedQuant::K(_)), "kiln does not quantize to {}", format.name());
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
            PackedQuant::Q5_0 | PackedQuant::Q5_1 => {
                // ggml: Q5_0 maps the value of largest magnitude to −16; Q5_1 spans min..max.
                // Both round (v − m)·id + bias toward zero (m = 0 and bias 16.5 for Q5_0).
                let (d, m, bias) = if format == PackedQuant::Q5_0 {
                    let max = block.iter().fold(0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
                    (max / -16.0, 0.0, 16.5)
                } else {
                    let min = block.iter().copied().fold(f32::INFINITY, f32::min);
                    let max = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    ((max - min) / 31.0, min, 0.5)
                };
                let q = |v: f32, id: f32| (((v - m) * id + bias) as i32).clamp(0, 31) as u8;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let quants: Vec<u8> = block.iter().map(|&v| q(v, id)).collect();
                out.extend(f16::from_f32(d).to_le_bytes());
                if format == PackedQuant::Q5_1 {
                    out.extend(f16::from_f32(m).to_le_bytes());
                }
                let fifth_bits = quants.iter().enumerate().fold(0u32, |bits, (i, &q)| bits | (((q >> 4) as u32) << i));
                out.extend(fifth_bits.to_le_bytes());
                out.extend((0..16).map(|i| (quants[i] & 0x0F) | ((quants[i + 16] & 0x0F) << 4)));
            }
            PackedQuant::K(_) => unreachable!("refused above"),
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
        for format in [PackedQuant::Q8_0, PackedQuant::Q4_0, PackedQuant::Q4_1, PackedQuant::Q5_0, PackedQuant::Q5_1] {
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

    /// Random blocks (every quant and fifth-bit pattern) come back bit for bit, tails included.
    #[test]
    fn packing_keeps_random_blocks_bit_for_bit() {
        let seed = test_seed();
        for format in [PackedQuant::Q8_0, PackedQuant::Q4_0, PackedQuant::Q4_1, PackedQuant::Q5_0, PackedQuant::Q5_1] {
            for (case, blocks) in [1usize, 3, 4, 9, 18].into_iter().enumerate() {
                let cols = blocks * BLOCK;
                let ggml = crate::testing::random_ggml_blocks(format.ggml_type(), cols, seed + case as u64);
                let mut reference = vec![f32::NAN; cols];
                dequantize_ggml_row(format, &ggml, &mut reference);
                let mut packed = vec![0xAAu8; format.row_bytes(cols)];
                pack_ggml_row(format, &ggml, &mut packed);
                let mut got = vec![f32::NAN; cols];
                dequantize_packed_row(format, &packed, &mut got);
                let same = got.iter().zip(&reference).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{format:?} with {blocks} blocks: {got:?}\nvs {reference:?}");
            }
        }
    }
}
