//! GGML tensor types: their block layouts, and dequantization of one row to f32.
//!
//! The block structs mirror ggml's C structs byte for byte (`#[repr(C)]`, no padding), so a later
//! kernel can read them in place; the row functions here are the plain reference those kernels
//! will be compared against. Formulas and layouts follow ggml-quants.c.

use bytemuck::{Pod, Zeroable};
use half::{bf16, f16};

/// The element type of a GGUF tensor (ggml's `ggml_type`, same numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

impl GgmlType {
    /// Maps ggml's numeric type id. Ids that ggml never stores in files (Q8_1) or that this table
    /// does not know are `None`, so the reader can reject the file instead of guessing sizes.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            10 => Q2_K,
            11 => Q3_K,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            15 => Q8_K,
            16 => IQ2_XXS,
            17 => IQ2_XS,
            18 => IQ3_XXS,
            19 => IQ1_S,
            20 => IQ4_NL,
            21 => IQ3_S,
            22 => IQ2_S,
            23 => IQ4_XS,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            29 => IQ1_M,
            30 => BF16,
            34 => TQ1_0,
            35 => TQ2_0,
            39 => MXFP4,
            _ => return None,
        })
    }

    /// Values per block; a row's length (ne0) must be a multiple of it.
    pub fn block_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | F16 | BF16 | I8 | I16 | I32 | I64 | F64 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | IQ4_NL | MXFP4 => 32,
            Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | Q8_K | IQ2_XXS | IQ2_XS | IQ3_XXS | IQ1_S | IQ3_S | IQ2_S | IQ4_XS
            | IQ1_M | TQ1_0 | TQ2_0 => QK_K,
        }
    }

    /// Bytes per block (ggml's `type_size`).
    pub fn block_bytes(self) -> usize {
        use GgmlType::*;
        match self {
            F32 => 4,
            F16 | BF16 => 2,
            I8 => 1,
            I16 => 2,
            I32 => 4,
            I64 | F64 => 8,
            Q4_0 => std::mem::size_of::<BlockQ4_0>(),
            Q4_1 => std::mem::size_of::<BlockQ4_1>(),
            Q5_0 => std::mem::size_of::<BlockQ5_0>(),
            Q5_1 => std::mem::size_of::<BlockQ5_1>(),
            Q8_0 => std::mem::size_of::<BlockQ8_0>(),
            Q2_K => 84,
            Q3_K => 110,
            Q4_K => std::mem::size_of::<BlockQ4K>(),
            Q5_K => std::mem::size_of::<BlockQ5K>(),
            Q6_K => std::mem::size_of::<BlockQ6K>(),
            Q8_K => 292,
            IQ2_XXS => 66,
            IQ2_XS => 74,
            IQ3_XXS => 98,
            IQ1_S => 50,
            IQ4_NL => 18,
            IQ3_S => 110,
            IQ2_S => 82,
            IQ4_XS => 136,
            IQ1_M => 56,
            TQ1_0 => 54,
            TQ2_0 => 66,
            MXFP4 => 17,
        }
    }

    /// Bytes of a row of `n_values` values, or `None` when `n_values` is not a whole number of
    /// blocks (or the product overflows).
    pub fn row_bytes(self, n_values: usize) -> Option<usize> {
        if !n_values.is_multiple_of(self.block_size()) {
            return None;
        }
        (n_values / self.block_size()).checked_mul(self.block_bytes())
    }

    /// Whether [`dequantize_row`] handles this type.
    pub fn can_dequantize(self) -> bool {
        use GgmlType::*;
        matches!(self, F32 | F16 | BF16 | Q8_0 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q4_K | Q5_K | Q6_K)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Values per super-block of the k-quants.
pub const QK_K: usize = 256;

/// Q8_0: 32 values, `value = d * q`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; 32],
}

/// Q4_0: 32 values, `value = d * (q - 8)`. Byte `i` of `qs` holds value `i` in its low nibble and
/// value `i + 16` in its high nibble.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct BlockQ4_0 {
    pub d: f16,
    pub qs: [u8; 16],
}

/// Q4_1: 32 values, `value = d * q + m`, nibbles laid out as in [`BlockQ4_0`].
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; 16],
}

/// Q5_0: 32 values, `value = d * (q - 16)`; q's low 4 bits are nibbles laid out as in
/// [`BlockQ4_0`], its fifth bit is bit `i` of `qh` for value `i`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct BlockQ5_0 {
    pub d: f16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

/// Q5_1: 32 values, `value = d * q + m`, q as in [`BlockQ5_0`].
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct BlockQ5_1 {
    pub d: f16,
    pub m: f16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

/// Q5_K: Q4_K with a fifth bit per value: bit `2 * pair` (first sub-block of a 64-value pair) or
/// `2 * pair + 1` (second) of `qh[l]` for the pair's value `l`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct BlockQ5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qh: [u8; 32],
    pub qs: [u8; 128],
}

/// Q4_K: 256 values in 8 sub-blocks of 32, each with a 6-bit scale and a 6-bit min packed into
/// `scales`; `value = d * scale * q - dmin * min`. Each 32 bytes of `qs` hold two sub-blocks: the
/// low nibbles the first, the high nibbles the second.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qs: [u8; 128],
}

/// Q6_K: 256 values in 16 sub-blocks of 16, each with an i8 scale; `value = d * scale * (q - 32)`
/// where q's low 4 bits come from `ql` and its high 2 bits from `qh`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct BlockQ6K {
    pub ql: [u8; 128],
    pub qh: [u8; 64],
    pub scales: [i8; 16],
    pub d: f16,
}

/// Why a row could not be dequantized. Callers add the file and tensor name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    #[error("dequantizing {0} is not supported yet (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K)")]
    Unsupported(GgmlType),
    #[error("a {ggml_type} row of {values} values needs {expected} bytes, got {got}")]
    Length { ggml_type: GgmlType, values: usize, expected: usize, got: usize },
}

/// Dequantizes one row: `bytes` holds `out.len()` values of type `ggml_type`.
pub fn dequantize_row(ggml_type: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    let length_error = |expected| QuantError::Length { ggml_type, values: out.len(), expected, got: bytes.len() };
    match ggml_type.row_bytes(out.len()) {
        Some(expected) if expected == bytes.len() => {}
        Some(expected) => return Err(length_error(expected)),
        None => return Err(length_error(0)),
    }
    match ggml_type {
        GgmlType::F32 => dequantize_row_f32(bytes, out),
        GgmlType::F16 => dequantize_row_f16(bytes, out),
        GgmlType::BF16 => dequantize_row_bf16(bytes, out),
        GgmlType::Q8_0 => dequantize_row_q8_0(bytes, out),
        GgmlType::Q4_0 => dequantize_row_q4_0(bytes, out),
        GgmlType::Q4_1 => dequantize_row_q4_1(bytes, out),
        GgmlType::Q5_0 => dequantize_row_q5_0(bytes, out),
        GgmlType::Q5_1 => dequantize_row_q5_1(bytes, out),
        GgmlType::Q4_K => dequantize_row_q4_k(bytes, out),
        GgmlType::Q5_K => dequantize_row_q5_k(bytes, out),
        GgmlType::Q6_K => dequantize_row_q6_k(bytes, out),
        other => return Err(QuantError::Unsupported(other)),
    }
    Ok(())
}

// The per-type functions below take the row's raw bytes (which need not be aligned: a row inside a
// memory map can start anywhere) and assume `dequantize_row` checked the lengths; they panic on a
// length mismatch, which would be a bug in the caller, not bad file contents.

/// F32 (little-endian) → f32.
pub fn dequantize_row_f32(bytes: &[u8], out: &mut [f32]) {
    assert_eq!(bytes.len(), out.len() * 4, "F32 row length");
    for (value, chunk) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *value = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
}

/// F16 (little-endian) → f32.
pub fn dequantize_row_f16(bytes: &[u8], out: &mut [f32]) {
    assert_eq!(bytes.len(), out.len() * 2, "F16 row length");
    for (value, chunk) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *value = f16::from_le_bytes([chunk[0], chunk[1]]).to_f32();
    }
}

/// BF16 (little-endian) → f32.
pub fn dequantize_row_bf16(bytes: &[u8], out: &mut [f32]) {
    assert_eq!(bytes.len(), out.len() * 2, "BF16 row length");
    for (value, chunk) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *value = bf16::from_le_bytes([chunk[0], chunk[1]]).to_f32();
    }
}

/// Reads the blocks of a row without requiring alignment, paired with their slice of `out`.
fn blocks<'a, B: Pod>(
    bytes: &'a [u8],
    out: &'a mut [f32],
    values_per_block: usize,
) -> impl Iterator<Item = (B, &'a mut [f32])> {
    let block_bytes = std::mem::size_of::<B>();
    assert_eq!(bytes.len() / block_bytes * values_per_block, out.len(), "quantized row length");
    assert_eq!(bytes.len() % block_bytes, 0, "quantized row is a whole number of blocks");
    bytes.chunks_exact(block_bytes).map(bytemuck::pod_read_unaligned::<B>).zip(out.chunks_exact_mut(values_per_block))
}

/// Q8_0 → f32: `value = d * q`.
pub fn dequantize_row_q8_0(bytes: &[u8], out: &mut [f32]) {
    for (block, values) in blocks::<BlockQ8_0>(bytes, out, 32) {
        let d = block.d.to_f32();
        for (value, &q) in values.iter_mut().zip(block.qs.iter()) {
            *value = d * q as f32;
        }
    }
}

/// Q4_0 → f32: `value = d * (q - 8)`.
pub fn dequantize_row_q4_0(bytes: &[u8], out: &mut [f32]) {
    for (block, values) in blocks::<BlockQ4_0>(bytes, out, 32) {
        let d = block.d.to_f32();
        for (i, &byte) in block.qs.iter().enumerate() {
            values[i] = d * ((byte & 0x0F) as i32 - 8) as f32;
            values[i + 16] = d * ((byte >> 4) as i32 - 8) as f32;
        }
    }
}

/// Q4_1 → f32: `value = d * q + m`.
pub fn dequantize_row_q4_1(bytes: &[u8], out: &mut [f32]) {
    for (block, values) in blocks::<BlockQ4_1>(bytes, out, 32) {
        let (d, m) = (block.d.to_f32(), block.m.to_f32());
        for (i, &byte) in block.qs.iter().enumerate() {
            values[i] = d * (byte & 0x0F) as f32 + m;
            values[i + 16] = d * (byte >> 4) as f32 + m;
        }
    }
}

/// The 6-bit scale and min of Q4_K sub-block `j` (0..8): sub-blocks 0-3 use the low 6 bits of
/// bytes 0-3 (scales) and 4-7 (mins); sub-blocks 4-7 put their low 4 bits in bytes 8-11 and their
/// top 2 bits in the spare top bits of bytes 0-7.
pub fn q4_k_scale_min(scales: &[u8; 12], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        let scale = (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4);
        let min = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
        (scale, min)
    }
}

/// The 32 five-bit quants of a Q5_0/Q5_1 block: low nibbles as in Q4_0, fifth bits from `qh`.
fn q5_quants(qs: &[u8; 16], qh: [u8; 4]) -> [u8; 32] {
    let qh = u32::from_le_bytes(qh);
    let mut q = [0u8; 32];
    for (i, &byte) in qs.iter().enumerate() {
        q[i] = (byte & 0x0F) | (((qh >> i) & 1) << 4) as u8;
        q[i + 16] = (byte >> 4) | (((qh >> (i + 16)) & 1) << 4) as u8;
    }
    q
}

/// Q5_0 → f32: `value = d * (q - 16)`.
pub fn dequantize_row_q5_0(bytes: &[u8], out: &mut [f32]) {
    for (block, values) in blocks::<BlockQ5_0>(bytes, out, 32) {
        let d = block.d.to_f32();
        for (value, q) in values.iter_mut().zip(q5_quants(&block.qs, block.qh)) {
            *value = d * (q as i32 - 16) as f32;
        }
    }
}

/// Q5_1 → f32: `value = d * q + m`.
pub fn dequantize_row_q5_1(bytes: &[u8], out: &mut [f32]) {
    for (block, values) in blocks::<BlockQ5_1>(bytes, out, 32) {
        let (d, m) = (block.d.to_f32(), block.m.to_f32());
        for (value, q) in values.iter_mut().zip(q5_quants(&block.qs, block.qh)) {
            *value = d * q as f32 + m;
        }
    }
}

/// Q4_K and Q5_K share everything but the fifth bit: `value = d * scale * q - dmin * min` per
/// 32-value sub-block. Each 64 values share 32 bytes of qs (low nibbles first, then high
/// nibbles); for Q5_K, bits `2 * pair` and `2 * pair + 1` of `qh[l]` are the fifth bits.
fn dequantize_k4_block<const FIVE_BITS: bool>(
    d: f16,
    dmin: f16,
    scales: &[u8; 12],
    qs: &[u8; 128],
    qh: &[u8; 32],
    out: &mut [f32],
) {
    let (d, dmin) = (d.to_f32(), dmin.to_f32());
    for (pair, (qs, values)) in qs.chunks_exact(32).zip(out.chunks_exact_mut(64)).enumerate() {
        let (scale_lo, min_lo) = q4_k_scale_min(scales, 2 * pair);
        let (scale_hi, min_hi) = q4_k_scale_min(scales, 2 * pair + 1);
        let (d_lo, m_lo) = (d * scale_lo as f32, dmin * min_lo as f32);
        let (d_hi, m_hi) = (d * scale_hi as f32, dmin * min_hi as f32);
        for (l, &byte) in qs.iter().enumerate() {
            // A constant: Q4_K's per-row dequantization (the matmul's path) has no fifth bit to read.
            let (fifth_lo, fifth_hi) = if FIVE_BITS {
                (((qh[l] >> (2 * pair)) & 1) << 4, ((qh[l] >> (2 * pair + 1)) & 1) << 4)
            } else {
                (0, 0)
            };
            values[l] = d_lo * ((byte & 0x0F) | fifth_lo) as f32 - m_lo;
            values[l + 32] = d_hi * ((byte >> 4) | fifth_hi) as f32 - m_hi;
        }
    }
}

/// Q5_K → f32: Q4_K with 5-bit quants.
pub fn dequantize_row_q5_k(bytes: &[u8], out: &mut [f32]) {
    for (block, values) in blocks::<BlockQ5K>(bytes, out, QK_K) {
        dequantize_k4_block::<true>(block.d, block.dmin, &block.scales, &block.qs, &block.qh, values);
    }
}

/// Q4_K → f32: `value = d * scale * q - dmin * min` per 32-value sub-block.
pub fn dequantize_row_q4_k(bytes: &[u8], out: &mut [f32]) {
    for (block, values) in blocks::<BlockQ4K>(bytes, out, QK_K) {
        dequantize_k4_block::<false>(block.d, block.dmin, &block.scales, &block.qs, &[0; 32], values);
    }
}

/// Q6_K → f32: `value = d * scale * (q - 32)` per 16-value sub-block.
pub fn dequantize_row_q6_k(bytes: &[u8], out: &mut [f32]) {
    for (block, values) in blocks::<BlockQ6K>(bytes, out, QK_K) {
        let d = block.d.to_f32();
        // Each half of 128 values uses 64 bytes of ql, 32 bytes of qh and 8 scales.
        for half in 0..2 {
            let ql = &block.ql[64 * half..64 * half + 64];
            let qh = &block.qh[32 * half..32 * half + 32];
            let scales = &block.scales[8 * half..8 * half + 8];
            let values = &mut values[128 * half..128 * half + 128];
            for l in 0..32 {
                let sub = l / 16;
                let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                values[l] = d * scales[sub] as f32 * q1 as f32;
                values[l + 32] = d * scales[sub + 2] as f32 * q2 as f32;
                values[l + 64] = d * scales[sub + 4] as f32 * q3 as f32;
                values[l + 96] = d * scales[sub + 6] as f32 * q4 as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
        digits.chunks_exact(2).map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap()).collect()
    }

    fn dequantize(ggml_type: GgmlType, bytes: &[u8]) -> Vec<f32> {
        let n = bytes.len() / ggml_type.block_bytes() * ggml_type.block_size();
        // Poisoned so a value the function forgot to write shows up.
        let mut out = vec![f32::NAN; n];
        dequantize_row(ggml_type, bytes, &mut out).unwrap();
        out
    }

    #[test]
    fn block_structs_match_ggml_sizes() {
        // ggml's sizeof(block_*): a padding byte here would shift every block after the first.
        assert_eq!(GgmlType::Q8_0.block_bytes(), 34);
        assert_eq!(GgmlType::Q4_0.block_bytes(), 18);
        assert_eq!(GgmlType::Q4_1.block_bytes(), 20);
        assert_eq!(GgmlType::Q4_K.block_bytes(), 144);
        assert_eq!(
            (GgmlType::Q5_0.block_bytes(), GgmlType::Q5_1.block_bytes(), GgmlType::Q5_K.block_bytes()),
            (22, 24, 176)
        );
        assert_eq!(GgmlType::Q6_K.block_bytes(), 210);
        assert_eq!(GgmlType::from_id(3), Some(GgmlType::Q4_1));
        assert_eq!(GgmlType::from_id(9), None, "Q8_1 never appears in files");
        assert_eq!(GgmlType::from_id(1000), None);
        assert_eq!(GgmlType::Q4_1.row_bytes(576), Some(18 * 20));
        assert_eq!(GgmlType::Q4_1.row_bytes(100), None);
    }

    #[test]
    fn q8_0_by_hand() {
        // d = 0.5 (f16 0x3800), q = 0, 1, -1, 2, -2, ...
        let mut bytes = vec![0x00, 0x38];
        let qs: Vec<i8> = (0..32).map(|i: i8| if i % 2 == 0 { -(i / 2) } else { i / 2 + 1 }).collect();
        bytes.extend(qs.iter().map(|&q| q as u8));
        let values = dequantize(GgmlType::Q8_0, &bytes);
        for (value, &q) in values.iter().zip(&qs) {
            assert_eq!(*value, 0.5 * q as f32);
        }
        assert_eq!(values[31], 8.0);
    }

    #[test]
    fn q4_0_and_q4_1_by_hand() {
        // qs[i] = (15 - i) << 4 | i: value i has nibble i, value i + 16 has nibble 15 - i.
        let qs: Vec<u8> = (0..16u8).map(|i| ((15 - i) << 4) | i).collect();
        let mut q4_0 = vec![0x00, 0x40]; // d = 2.0
        q4_0.extend(&qs);
        let values = dequantize(GgmlType::Q4_0, &q4_0);
        for i in 0..16 {
            assert_eq!(values[i], 2.0 * (i as f32 - 8.0));
            assert_eq!(values[i + 16], 2.0 * (15.0 - i as f32 - 8.0));
        }
        let mut q4_1 = vec![0x00, 0x38, 0x00, 0xBC]; // d = 0.5, m = -1.0
        q4_1.extend(&qs);
        let values = dequantize(GgmlType::Q4_1, &q4_1);
        for i in 0..16 {
            assert_eq!(values[i], 0.5 * i as f32 - 1.0);
            assert_eq!(values[i + 16], 0.5 * (15 - i) as f32 - 1.0);
        }
    }

    #[test]
    fn float_types() {
        let f32_bytes: Vec<u8> = [1.5f32, -2.25].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(dequantize(GgmlType::F32, &f32_bytes), vec![1.5, -2.25]);
        assert_eq!(dequantize(GgmlType::F16, &[0x00, 0x3E, 0x00, 0xC0]), vec![1.5, -2.0]);
        // bf16 is the top half of an f32: 0x3FC0 → 1.5.
        assert_eq!(dequantize(GgmlType::BF16, &[0xC0, 0x3F, 0x80, 0xBF]), vec![1.5, -1.0]);
    }

    #[test]
    fn rejects_wrong_lengths_and_unsupported_types() {
        let mut out = [0f32; 32];
        let err = dequantize_row(GgmlType::Q8_0, &[0u8; 33], &mut out).unwrap_err();
        assert_eq!(err.to_string(), "a Q8_0 row of 32 values needs 34 bytes, got 33");
        let mut out = [0f32; 31];
        assert!(dequantize_row(GgmlType::Q8_0, &[0u8; 34], &mut out).is_err());
        let mut out = [0f32; QK_K];
        let err = dequantize_row(GgmlType::Q2_K, &vec![0u8; GgmlType::Q2_K.block_bytes()], &mut out).unwrap_err();
        assert!(err.to_string().starts_with("dequantizing Q2_K is not supported yet"), "{err}");
    }

    #[test]
    fn q4_k_scale_packing() {
        // Sub-block 5: scale low bits in scales[9] & 0xF, high bits in scales[1] >> 6;
        // min low bits in scales[9] >> 4, high bits in scales[5] >> 6.
        let mut scales = [0u8; 12];
        scales[9] = 0xA7;
        scales[1] = 0b1100_0000 | 33;
        scales[5] = 0b0100_0000 | 12;
        assert_eq!(q4_k_scale_min(&scales, 5), (0x7 | (3 << 4), 0xA | (1 << 4)));
        assert_eq!(q4_k_scale_min(&scales, 1), (33, 12));
    }

    /// One block per type with values from the Python `gguf` package 0.19 (0.19.0 for Q5_0, Q5_1 and
    /// Q5_K, added 2026-12-05 with numpy's generator seeded 5)
    /// (`gguf.quants.dequantize(np.frombuffer(block, np.uint8), type)`): `expected` holds every
    /// `stride`-th value, and `sum` / `sum_sq` (computed in f64) cover all of them. The blocks are
    /// random bytes with the f16 scales replaced by small normal numbers.
    fn check_golden(ggml_type: GgmlType, block_hex: &str, stride: usize, expected: &[f32], sum: f64, sum_sq: f64) {
        let values = dequantize(ggml_type, &hex(block_hex));
        for (k, &value) in expected.iter().enumerate() {
            assert_eq!(values[k * stride], value, "{ggml_type} value {}", k * stride);
        }
        assert_eq!(expected.len(), values.len().div_ceil(stride));
        let got_sum: f64 = values.iter().map(|&v| v as f64).sum();
        let got_sum_sq: f64 = values.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let tolerance = 1e-9 * sum_sq.max(1.0);
        assert!((got_sum - sum).abs() <= tolerance, "{ggml_type} sum {got_sum} vs {sum}");
        assert!((got_sum_sq - sum_sq).abs() <= tolerance, "{ggml_type} sum of squares {got_sum_sq} vs {sum_sq}");
    }

    /// Kept on a few long lines: the data is unreadable either way, and short.
    #[rustfmt::skip]
    mod golden {
        use super::*;

        #[test]
        fn golden_q8_0() {
            let block = "4c22051f9c794b4e8c30ec1fdf814091f7ff12761d489e682f961aede8f7d625c9d5";
            let expected = [0.06149292, 0.3812561, -1.2298584, 1.4881287, 0.9223938, 0.95928955, -1.4266357, 0.59033203, -0.24597168, 0.3812561, -0.40585327, -1.5619202, 0.7871094, -1.3651428, -0.110687256, -0.012298584, 0.22137451, 1.4512329, 0.35665894, 0.88549805, -1.2052612, 1.2790527, 0.57803345, -1.3036499, 0.31976318, -0.2336731, -0.29516602, -0.110687256, -0.5165405, 0.4550476, -0.6764221, -0.5288391];
            check_golden(GgmlType::Q8_0, block, 1, &expected, -0.110687255859375, 22.992751856334507);
        }

        #[test]
        fn golden_q4_0() {
            let block = "8bac4d64743ed3b60544bcc7c9ea0492cb1c";
            let expected = [-0.35491943, 0.28393555, 0.28393555, -0.42590332, 0.35491943, 0.14196777, 0.21295166, 0.28393555, -0.28393555, 0.07098389, -0.07098389, -0.14196777, 0.28393555, 0.42590332, -0.21295166, -0.28393555, 0.28393555, 0.14196777, 0.07098389, 0.35491943, -0.35491943, -0.21295166, 0.5678711, 0.28393555, -0.21295166, -0.28393555, -0.28393555, -0.42590332, 0.5678711, -0.07098389, -0.28393555, 0.4968872];
            check_golden(GgmlType::Q4_0, block, 1, &expected, 1.20672607421875, 3.088730562478304);
        }

        #[test]
        fn golden_q4_1() {
            let block = "562948b532f6edc66ff238c9bf07d32726ed1a85";
            let expected = [-0.2467041, -0.079956055, 0.21185303, -0.079956055, 0.29522705, -0.2467041, 0.0034179688, 0.04510498, 0.29522705, -0.038269043, -0.20501709, -0.038269043, -0.079956055, 0.21185303, 0.08679199, -0.12164307, -0.20501709, 0.29522705, 0.25354004, 0.17016602, -0.079956055, 0.29522705, -0.20501709, 0.17016602, 0.128479, -0.33007812, 0.21185303, -0.2467041, -0.2467041, 0.25354004, -0.2883911, 0.0034179688];
            check_golden(GgmlType::Q4_1, block, 1, &expected, 0.1927490234375, 1.300823375582695);
        }

        #[test]
        fn golden_q5_0() {
            let block = "6225b8abeeab14cef599cc052535d5cec0ad06783f60";
            let expected = [-0.25231934, -0.042053223, -0.23129272, 0.1892395, 0.25231934, 0.10513306, -0.23129272, 0.10513306, 0.10513306, 0.29437256, -0.33642578, 0.27334595, -0.21026611, 0.16821289, -0.021026611, 0.0, -0.31539917, 0.25231934, 0.31539917, 0.1892395, -0.084106445, 0.0, 0.042053223, 0.063079834, 0.27334595, 0.25231934, -0.084106445, 0.21026611, -0.33642578, 0.14718628, -0.27334595, 0.12615967];
            check_golden(GgmlType::Q5_0, block, 1, &expected, 0.946197509765625, 1.3789672395214438);
        }

        #[test]
        fn golden_q5_1() {
            let block = "06a9cb280a67ce0d8f02264785762462c423399232b39168";
            let expected = [-0.551239, -0.66897583, -0.19802856, -0.86520386, -0.15878296, -0.19802856, -0.11953735, -0.041046143, -0.74746704, -0.70822144, -0.94369507, -0.041046143, -0.041046143, -0.70822144, -0.6297302, -0.27651978, -0.27651978, -0.5904846, -0.66897583, -0.74746704, -0.27651978, -0.23727417, -0.66897583, -0.82595825, -1.0614319, -0.041046143, -0.70822144, -0.94369507, -0.08029175, -0.3942566, -0.31576538, -0.19802856];
            check_golden(GgmlType::Q5_1, block, 1, &expected, -14.93170166015625, 10.063540272414684);
        }

        #[test]
        fn golden_q5_k() {
            let block = concat!(
                "3d14c2978101caff5536e4307fa901a76df710c04edc083cbdb5404808b9586fbf8a6343304464f943287f2d2133cee5",
                "d95535cc78861fd80e7fa01dd0a174645397c6a0adc1367e7e3976aa6b833bad348bb5a93fc4900f8a8987f50f8c3b8e",
                "fc8c4ce733da7d4597758c5cbdd130e147d9d82f7c5b70102d58b85f48d7dead24924b1fbe1ebedebe4b4f57ff8b313a",
                "8509618b87183ce5346b49e2c23348df4abd744e5c8bbd04b85d34c7f36d1eb5",
            );
            let expected = [0.06564236, 0.048051834, 0.043912888, 0.040808678, 0.06771183, 0.11469269, 0.112623215, 0.12814426, 0.12607479, 0.112623215, 0.0681839, 0.1923523, 0.099226, 0.35791016, 0.80798435, 0.6124191, 2.1117525, 1.39468, 1.3294916, 1.3566427, 0.4326229, 0.77305126, 1.5511732, 0.28900623, 0.1865673, 0.26106834, 0.27038097, 0.24244308, 1.25706, 1.0035496, 1.1049538, 0.7500391, 0.4742241, 0.8156872, 0.24658203, 0.4742241, 0.8725977];
            check_golden(GgmlType::Q5_K, block, 7, &expected, 137.37610340118408, 144.25050917174758);
        }

        #[test]
        fn golden_q4_k() {
            let block = concat!(
                "591a952178af07073e01afef1010f45bc018fda4fec18845e4ba1a32dfe93bc1451221829e9b25eeaa0366ad8806e7d7",
                "12dc3ec87e686052f3b34d49f3492507ec7da3cae7694f34d8bfe36bb10fc4cab362d4d83903eb6431a52b985614b38f",
                "61de2828a8626b0d616b0def63102f945be575a56cccf33c5b77cb20d93d1f807dae14ec3c929a4b2887e0e53ca33243",
            );
            let expected = [-0.6759491, 0.19189453, 1.2333069, 1.2333069, 0.7126007, 1.4458351, 0.13477135, 0.13477135, 1.4458351, 1.8828564, -0.512413, -0.3171482, -0.3605404, -0.27375603, -0.44732475, -0.27375603, -0.20866776, -0.44732475, -0.25205994, 0.13787079, 0.28664398, 0.3858261, 0.63378143, 0.58419037, 0.28664398, 0.7825546, 0.58419037, 0.088279724, -0.36363983, -0.512413, -0.46282196, -0.42562866, -0.40735817, -0.47554588, -0.5437336, -0.27098274, -0.47554588];
            check_golden(GgmlType::Q4_K, block, 7, &expected, 40.55817985534668, 130.89136526872971);
        }

        #[test]
        fn golden_q6_k() {
            let block = concat!(
                "16b77c58f59207529f10afe227bfba76f0e3444784f2dde143d787b107902674e077f90ddf64bad031e46552454fdcba",
                "4cc6874bb9d296ff348753ec57ac5772af76b825d29a363fe2c68b38ee2f5ad9d0fda2772d94f1edee489afdf2d96037",
                "1f47dd8baaef20dce5411f0f66a7a0689a886e808cdb77935ba5e17dc541d453bd7d6f12406f2a2dfb47c26e5ce726c3",
                "1b38fa87c6491778ea543d5d93e33bae95a6c550123de560acd710c77dbd0d692558c9a256ed977cf548ebb00f0d7ccc",
                "e84b36e05f494742a1dc80ac63cedbf58899",
            );
            let expected = [-0.64819336, -0.9074707, 0.64819336, 2.835846, -4.65889, 2.7710266, 3.9377747, 0.5185547, 0.34570312, 1.5556641, -0.0, -2.822342, 4.7318115, 0.98579407, 0.1917572, 0.3835144, 4.991089, 0.17825317, 4.8128357, -1.5394592, -0.5131531, 0.680603, 2.527954, -3.1113281, 7.2597656, 2.765625, -2.041809, 3.8567505, 0.8021393, 7.754013, -2.9708862, -3.781128, 0.09992981, -0.29978943, -2.1984558, 0.861557, -0.59417725];
            check_golden(GgmlType::Q6_K, block, 7, &expected, -12.65057373046875, 2893.7438582712784);
        }
    }
}
