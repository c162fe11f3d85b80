//! kiln's in-memory row layout for the K-quants Q4_K, Q5_K and Q6_K (256-value super-blocks): ggml's
//! bits regrouped per row so the integer kernels (`kernels::kquant_dot`) meet the 8-bit activation
//! blocks of `quant_dot` with whole 64-byte loads, and the 6-bit Q4_K/Q5_K scales unpacked to bytes.
//!
//! A super-block is eight 32-value blocks, the activations' blocks. A row of `ns = cols / 256`
//! super-blocks is laid out as four sections, each super-block's part back to back:
//!   Q4_K: `dm: [f16; 2]` (d, dmin), `scale_mins: [u8; 16]` (sc_0..8, m_0..8), `qs: [u8; 128]`
//!   Q5_K: as Q4_K, plus `qh: [u8; 32]` (fifth bits) between `scale_mins` and `qs`
//!   Q6_K: `d: [f16; 1]`, `scales: [i8; 16]`, `qh: [u8; 64]` (top two bits), `qs: [u8; 128]`
//! which is 148, 180 and 210 bytes per 256 values against the file's 144, 176 and 210 (+2.8%,
//! +2.3%, 0%): decode streams every weight once per token, so nothing is widened further.
//!
//! The 4-bit part of every value sits in `qs` in Q4_0's order (`packed_quant::nibble_at`): block b
//! owns bytes 16b..16b+16, value i in the low nibble and value i + 16 in the high one, so four
//! blocks' 64 bytes unpack to the activations' interleaved order. Q5_K's fifth bits use the same
//! bit order as Q5_0's (`packed_quant::fifth_bit_at`). Q6_K's top two bits come per group of four
//! blocks (128 values) as 32 bytes: byte l holds, in bit pairs from the lowest, the top bits of the
//! group's "first-half" values l and l + 32 and its "second-half" values l and l + 32, where the
//! first-half values are values 0..16 of each of the four blocks in block order (the activations'
//! first 64 bytes) and the second-half values their values 16..32. One 32-byte load shifted four
//! ways then gives the top bits of a whole 64-byte vector of each half.
//!
//! Values (sub-block j of a super-block; sc, m 6-bit; Q6_K's scale is an i8 per 16 values):
//!   Q4_K/Q5_K: `(d·sc_j)·u − dmin·m_j`, u in 0..16 or 0..32, each product rounded to f32 once
//!   Q6_K: `(d·sc)·(u − 32)`, u in 0..64
//! exactly as `quant::dequantize_row` computes them.

use half::f16;

use super::packed_quant::{fifth_bit_at, nibble_at, BLOCK};
use super::quant::{q4_k_scale_min, BlockQ4K, BlockQ5K, BlockQ6K, QK_K};

/// The K-quants kept in this layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum KQuant {
    Q4_K,
    Q5_K,
    Q6_K,
}

/// Blocks (of 32 values) per super-block.
pub const BLOCKS_PER_SUPER: usize = QK_K / BLOCK;

/// Bytes per super-block of each section: (header, scales, qh, qs).
fn section_bytes(format: KQuant) -> [usize; 4] {
    match format {
        KQuant::Q4_K => [4, 16, 0, 128],
        KQuant::Q5_K => [4, 16, 32, 128],
        KQuant::Q6_K => [2, 16, 64, 128],
    }
}

pub fn row_bytes(format: KQuant, cols: usize) -> usize {
    cols / QK_K * section_bytes(format).iter().sum::<usize>()
}

/// One row of the layout, split into its sections.
pub struct KRow<'a> {
    /// f16 d (Q6_K), or d and dmin (Q4_K, Q5_K), per super-block.
    pub header: &'a [u8],
    /// 16 bytes per super-block: Q4_K/Q5_K's 8 scales then 8 mins, or Q6_K's 16 i8 scales.
    pub scales: &'a [u8],
    /// Q5_K's fifth bits or Q6_K's top two bits; empty for Q4_K.
    pub qh: &'a [u8],
    pub qs: &'a [u8],
}

/// Byte offsets of the sections of a row of `ns` super-blocks: (scales, qh, qs).
pub fn section_offsets(format: KQuant, ns: usize) -> (usize, usize, usize) {
    let [header, scales, qh, _] = section_bytes(format);
    (header * ns, (header + scales) * ns, (header + scales + qh) * ns)
}

pub fn split_row(format: KQuant, row: &[u8], cols: usize) -> KRow<'_> {
    debug_assert_eq!(row.len(), row_bytes(format, cols));
    let (scales, qh, qs) = section_offsets(format, cols / QK_K);
    KRow { header: &row[..scales], scales: &row[scales..qh], qh: &row[qh..qs], qs: &row[qs..] }
}

/// Where the top two bits of Q6_K value i (0..32) of block b sit in `qh`: (byte, shift).
pub fn q6_high_at(b: usize, i: usize) -> (usize, u32) {
    let (group, j) = (b / 4, b % 4);
    let position = 16 * j + i % 16; // 0..64 within the group's half
    let field = 2 * (i / 16) + position / 32;
    (32 * group + position % 32, 2 * field as u32)
}

fn f16_at(bytes: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32()
}

/// The quants (0..16, 0..32 or 0..64) of one ggml super-block, in value order, and its 16 scale
/// bytes in the layout's order.
fn unpack_ggml_block(format: KQuant, block: &[u8]) -> ([u8; QK_K], [u8; 16], [u8; 4]) {
    let mut q = [0u8; QK_K];
    let mut scales = [0u8; 16];
    let mut header = [0u8; 4];
    match format {
        KQuant::Q4_K | KQuant::Q5_K => {
            let (d, dmin, packed_scales, qs, qh) = if format == KQuant::Q4_K {
                let b: BlockQ4K = bytemuck::pod_read_unaligned(block);
                (b.d, b.dmin, b.scales, b.qs, [0u8; 32])
            } else {
                let b: BlockQ5K = bytemuck::pod_read_unaligned(block);
                (b.d, b.dmin, b.scales, b.qs, b.qh)
            };
            header[..2].copy_from_slice(&d.to_le_bytes());
            header[2..].copy_from_slice(&dmin.to_le_bytes());
            for j in 0..8 {
                (scales[j], scales[8 + j]) = q4_k_scale_min(&packed_scales, j);
            }
            // Each 64 values share 32 bytes of qs: low nibbles the first 32, high the next.
            for pair in 0..4 {
                for l in 0..32 {
                    let byte = qs[32 * pair + l];
                    let fifth_lo = ((qh[l] >> (2 * pair)) & 1) << 4;
                    let fifth_hi = ((qh[l] >> (2 * pair + 1)) & 1) << 4;
                    q[64 * pair + l] = (byte & 0x0F) | fifth_lo;
                    q[64 * pair + 32 + l] = (byte >> 4) | fifth_hi;
                }
            }
        }
        KQuant::Q6_K => {
            let b: BlockQ6K = bytemuck::pod_read_unaligned(block);
            header[..2].copy_from_slice(&b.d.to_le_bytes());
            scales = b.scales.map(|s| s as u8);
            // As `quant::dequantize_row_q6_k`: each half of 128 values has 64 bytes of ql and 32 of qh.
            for half in 0..2 {
                let (ql, qh) = (&b.ql[64 * half..64 * half + 64], &b.qh[32 * half..32 * half + 32]);
                let q = &mut q[128 * half..128 * half + 128];
                for l in 0..32 {
                    q[l] = (ql[l] & 0x0F) | ((qh[l] & 3) << 4);
                    q[l + 32] = (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4);
                    q[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                    q[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                }
            }
        }
    }
    (q, scales, header)
}

fn ggml_block_bytes(format: KQuant) -> usize {
    match format {
        KQuant::Q4_K => std::mem::size_of::<BlockQ4K>(),
        KQuant::Q5_K => std::mem::size_of::<BlockQ5K>(),
        KQuant::Q6_K => std::mem::size_of::<BlockQ6K>(),
    }
}

/// Rearranges one row of ggml super-blocks (as stored in a GGUF) into kiln's layout in `out`.
pub fn pack_ggml_row(format: KQuant, ggml_row: &[u8], out: &mut [u8]) {
    let block_bytes = ggml_block_bytes(format);
    let ns = ggml_row.len() / block_bytes;
    assert_eq!(ns * block_bytes, ggml_row.len(), "a ggml row is a whole number of super-blocks");
    assert_eq!(out.len(), row_bytes(format, ns * QK_K), "packed row length");
    let header_bytes = section_bytes(format)[0];
    let (scales_at, qh_at, qs_at) = section_offsets(format, ns);
    let nb = ns * BLOCKS_PER_SUPER;
    out[qh_at..].fill(0);
    for (s, block) in ggml_row.chunks_exact(block_bytes).enumerate() {
        let (q, scales, header) = unpack_ggml_block(format, block);
        out[header_bytes * s..header_bytes * (s + 1)].copy_from_slice(&header[..header_bytes]);
        out[scales_at + 16 * s..scales_at + 16 * (s + 1)].copy_from_slice(&scales);
        for (v, &u) in q.iter().enumerate() {
            let (b, i) = (BLOCKS_PER_SUPER * s + v / BLOCK, v % BLOCK);
            let (byte, shift) = nibble_at(b, i);
            out[qs_at + byte] |= (u & 0x0F) << shift;
            match format {
                KQuant::Q4_K => {}
                KQuant::Q5_K => {
                    let (byte, shift) = fifth_bit_at(nb, b, i);
                    out[qh_at + byte] |= (u >> 4) << shift;
                }
                KQuant::Q6_K => {
                    let (byte, shift) = q6_high_at(b, i);
                    out[qh_at + byte] |= (u >> 4) << shift;
                }
            }
        }
    }
}

/// Quant u of value i of block b of a split row.
pub fn quant_at(format: KQuant, row: &KRow, nb: usize, b: usize, i: usize) -> u8 {
    let (byte, shift) = nibble_at(b, i);
    let low = (row.qs[byte] >> shift) & 0x0F;
    match format {
        KQuant::Q4_K => low,
        KQuant::Q5_K => {
            let (byte, shift) = fifth_bit_at(nb, b, i);
            low | (((row.qh[byte] >> shift) & 1) << 4)
        }
        KQuant::Q6_K => {
            let (byte, shift) = q6_high_at(b, i);
            low | (((row.qh[byte] >> shift) & 3) << 4)
        }
    }
}

/// The f32 factors of block b (sub-block b % 8 of its super-block) of a Q4_K/Q5_K row:
/// (d·sc, dmin·m), each one rounding as in the dequantizer.
pub fn k4_block_factors(row: &KRow, b: usize) -> (f32, f32) {
    let (s, j) = (b / BLOCKS_PER_SUPER, b % BLOCKS_PER_SUPER);
    let (d, dmin) = (f16_at(row.header, 2 * s), f16_at(row.header, 2 * s + 1));
    (d * row.scales[16 * s + j] as f32, dmin * row.scales[16 * s + 8 + j] as f32)
}

/// The f32 factor d·sc of Q6_K sub-block `sub` (0..16·ns, 16 values each) of a row.
pub fn q6_sub_block_factor(row: &KRow, sub: usize) -> f32 {
    let s = sub / 16;
    f16_at(row.header, s) * row.scales[sub] as i8 as f32
}

/// Dequantizes one packed row to f32: the plain reference for the layout.
pub fn dequantize_packed_row(format: KQuant, row: &[u8], out: &mut [f32]) {
    let cols = out.len();
    let nb = cols / BLOCK;
    let split = split_row(format, row, cols);
    for (b, values) in out.chunks_exact_mut(BLOCK).enumerate() {
        match format {
            KQuant::Q4_K | KQuant::Q5_K => {
                let (scale, min) = k4_block_factors(&split, b);
                for (i, v) in values.iter_mut().enumerate() {
                    *v = scale * quant_at(format, &split, nb, b, i) as f32 - min;
                }
            }
            KQuant::Q6_K => {
                for (i, v) in values.iter_mut().enumerate() {
                    let scale = q6_sub_block_factor(&split, 2 * b + i / 16);
                    *v = scale * (quant_at(format, &split, nb, b, i) as i32 - 32) as f32;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::quant::{dequantize_row, GgmlType};
    use crate::testing::{random_ggml_blocks, test_seed};

    fn ggml_type(format: KQuant) -> GgmlType {
        match format {
            KQuant::Q4_K => GgmlType::Q4_K,
            KQuant::Q5_K => GgmlType::Q5_K,
            KQuant::Q6_K => GgmlType::Q6_K,
        }
    }

    #[test]
    fn q6_high_bits_fill_each_group_exactly_once() {
        let mut seen = [0u8; 64];
        for b in 0..8 {
            for i in 0..BLOCK {
                let (byte, shift) = q6_high_at(b, i);
                assert_eq!(seen[byte] & (3 << shift), 0, "block {b} value {i} collides");
                seen[byte] |= 3 << shift;
            }
        }
        assert!(seen.iter().all(|&byte| byte == 0xFF));
        // The second block's value 20 is the group's second-half value 16 + 4: byte 20, bits 4-5.
        assert_eq!(q6_high_at(1, 20), (20, 4));
        assert_eq!(q6_high_at(6, 3), (32 + 3, 2));
    }

    /// Packing keeps every value bit for bit: the packed row dequantizes to exactly what ggml's
    /// row does, on random blocks (every quant and scale bit pattern).
    #[test]
    fn packing_keeps_every_value_of_every_k_quant() {
        let seed = test_seed();
        for format in [KQuant::Q4_K, KQuant::Q5_K, KQuant::Q6_K] {
            for (case, supers) in [1usize, 2, 11].into_iter().enumerate() {
                let cols = supers * QK_K;
                let ggml = random_ggml_blocks(ggml_type(format), cols, seed + case as u64);
                assert_eq!(ggml.len(), supers * ggml_block_bytes(format));
                let mut reference = vec![f32::NAN; cols];
                dequantize_row(ggml_type(format), &ggml, &mut reference).unwrap();
                let mut packed = vec![0xAAu8; row_bytes(format, cols)];
                pack_ggml_row(format, &ggml, &mut packed);
                let mut got = vec![f32::NAN; cols];
                dequantize_packed_row(format, &packed, &mut got);
                let same = got.iter().zip(&reference).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{format:?} with {supers} super-blocks: {got:?}\nvs {reference:?}");
            }
        }
    }

    #[test]
    fn rows_stay_within_three_percent_of_the_file() {
        for format in [KQuant::Q4_K, KQuant::Q5_K, KQuant::Q6_K] {
            let (ours, file) = (row_bytes(format, QK_K), ggml_block_bytes(format));
            assert!(ours >= file && ours * 100 <= file * 103, "{format:?}: {ours} bytes per 256 values vs {file}");
        }
    }
}
