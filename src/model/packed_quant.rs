//! The block quantizations kiln computes on ([`PackedQuant`]): the 32-value formats Q8_0, Q4_0,
//! Q4_1, Q5_0, Q5_1 and the K-quants Q4_K, Q5_K, Q6_K, all kept as groups of 16 rows
//! (`packed_groups`), what each format's values need there, and ggml's reference quantizer for
//! tests.
//!
//! Every format is "affine unsigned" per 32-value block: value = d·u + m with m = −8d (Q4_0),
//! −16d (Q5_0) and −128d (Q8_0, whose quants are kept as u = q + 128, the unsigned operand of
//! `vpdpbusd`), a stored m (Q4_1, Q5_1; Q4_K and Q5_K store −dmin·m_j), or, for Q6_K, d·(u − 32)
//! with a d of its own for each 16-value half.

use half::f16;

use super::quant::GgmlType;

/// Values per block.
pub const BLOCK: usize = 32;

/// The block-quantized formats kept in kiln's group layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum PackedQuant {
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q4_K,
    Q5_K,
    Q6_K,
}

impl PackedQuant {
    /// Every format, in declaration order (tests run each).
    pub const ALL: [PackedQuant; 8] = [
        PackedQuant::Q8_0,
        PackedQuant::Q4_0,
        PackedQuant::Q4_1,
        PackedQuant::Q5_0,
        PackedQuant::Q5_1,
        PackedQuant::Q4_K,
        PackedQuant::Q5_K,
        PackedQuant::Q6_K,
    ];

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
            PackedQuant::Q4_K => GgmlType::Q4_K,
            PackedQuant::Q5_K => GgmlType::Q5_K,
            PackedQuant::Q6_K => GgmlType::Q6_K,
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
            PackedQuant::Q4_K => "q4_k",
            PackedQuant::Q5_K => "q5_k",
            PackedQuant::Q6_K => "q6_k",
        }
    }

    /// Whether the quants are whole bytes (Q8_0) rather than nibbles plus high bits.
    pub fn byte_quants(self) -> bool {
        self == PackedQuant::Q8_0
    }

    /// Bits of each quant above its low nibble: 1 for the Q5 formats, 2 for Q6_K.
    pub fn high_bits(self) -> usize {
        match self {
            PackedQuant::Q5_0 | PackedQuant::Q5_1 | PackedQuant::Q5_K => 1,
            PackedQuant::Q6_K => 2,
            PackedQuant::Q8_0 | PackedQuant::Q4_0 | PackedQuant::Q4_1 | PackedQuant::Q4_K => 0,
        }
    }

    /// Whether the scales are f32: the K-quants' d·sc and dmin·m (an f16 times a 6- or 8-bit
    /// integer) are exact in f32 but not in f16. The 32-value formats keep their f16 d and m.
    pub fn f32_scales(self) -> bool {
        matches!(self, PackedQuant::Q4_K | PackedQuant::Q5_K | PackedQuant::Q6_K)
    }

    /// Bytes of one scale (d or m).
    pub fn scale_bytes(self) -> usize {
        if self.f32_scales() {
            4
        } else {
            2
        }
    }

    /// Whether the format stores its offset m (Q4_1, Q5_1, Q4_K, Q5_K) rather than deriving it from d.
    pub fn has_min(self) -> bool {
        matches!(self, PackedQuant::Q4_1 | PackedQuant::Q5_1 | PackedQuant::Q4_K | PackedQuant::Q5_K)
    }

    /// Whether a 32-value block has two scales, one per 16 values (Q6_K's sub-blocks).
    pub fn split_scales(self) -> bool {
        self == PackedQuant::Q6_K
    }

    /// The constant c of the formats whose offset is m = −c·d; `None` for those that store m.
    pub fn offset_factor(self) -> Option<f32> {
        match self {
            PackedQuant::Q8_0 => Some(128.0),
            PackedQuant::Q4_0 => Some(8.0),
            PackedQuant::Q5_0 => Some(16.0),
            PackedQuant::Q6_K => Some(32.0),
            PackedQuant::Q4_1 | PackedQuant::Q5_1 | PackedQuant::Q4_K | PackedQuant::Q5_K => None,
        }
    }
}

/// Quantizes f32 values to ggml blocks of `format` with ggml's reference rounding (for tests and
/// random-weight benchmarks; models arrive quantized). The K-quants' search for scales is not
/// reproduced: tests draw random K-quant blocks instead (`testing::random_ggml_blocks`).
pub fn quantize_to_ggml_row(format: PackedQuant, values: &[f32]) -> Vec<u8> {
    assert!(format.block_values() == BLOCK, "kiln does not quantize to {}", format.name());
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
            PackedQuant::Q4_K | PackedQuant::Q5_K | PackedQuant::Q6_K => unreachable!("refused above"),
        }
    }
    out
}

/// Dequantizes a ggml row through quant.rs: the tests' reference.
#[cfg(test)]
pub fn dequantize_ggml_row(format: PackedQuant, ggml_row: &[u8], out: &mut [f32]) {
    super::quant::dequantize_row(format.ggml_type(), ggml_row, out).expect("row length matches its block count");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{seeded_values, test_seed};

    #[test]
    fn quantizing_errs_by_at_most_a_step() {
        let seed = test_seed();
        for format in [PackedQuant::Q8_0, PackedQuant::Q4_0, PackedQuant::Q4_1, PackedQuant::Q5_0, PackedQuant::Q5_1] {
            for (case, blocks) in [1usize, 3, 4, 9, 18].into_iter().enumerate() {
                let values: Vec<f32> =
                    seeded_values(seed + case as u64, blocks * BLOCK).iter().map(|v| v * 3.0).collect();
                let ggml = quantize_to_ggml_row(format, &values);
                assert_eq!(ggml.len(), blocks * format.ggml_type().block_bytes());
                let mut reference = vec![f32::NAN; values.len()];
                dequantize_ggml_row(format, &ggml, &mut reference);
                // Quantization error is at most one step (half a step for rounding, plus f16 scales).
                let step = values.iter().fold(0f32, |a, v| a.max(v.abs())) * 2.0 / 15.0;
                for (v, r) in values.iter().zip(&reference) {
                    assert!((v - r).abs() <= step, "{format:?}: {v} quantized to {r}");
                }
            }
        }
    }
}
