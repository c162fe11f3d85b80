//! What the tests of every layer share: the one tolerance rule every kernel test uses
//! (`|got - ref| <= atol + rtol * |ref|`), seeded inputs, and the seed a run prints so that a
//! failure can be replayed. Also behind the seeded random-weight models (`model::random`).

/// Tolerances for f32 arithmetic that may sum in a different order than the reference.
pub const F32_ACCUMULATION: Tolerance = Tolerance { atol: 1e-4, rtol: 1e-4 };

#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    pub atol: f32,
    pub rtol: f32,
}

/// Compares two slices; on failure the message names the worst index, both values and how many
/// elements are out of tolerance.
pub fn check_close(got: &[f32], reference: &[f32], tol: Tolerance) -> Result<(), String> {
    if got.len() != reference.len() {
        return Err(format!("length mismatch: got {} values, reference has {}", got.len(), reference.len()));
    }
    let mut failures = 0usize;
    let mut worst: Option<(usize, f32)> = None;
    // `!(x <= y)` rather than `x > y`: a NaN excess is a failure too.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    for (i, (&g, &r)) in got.iter().zip(reference).enumerate() {
        let excess = (g - r).abs() - (tol.atol + tol.rtol * r.abs());
        if !(excess <= 0.0) {
            failures += 1;
            if worst.is_none_or(|(_, e)| !(excess <= e)) {
                worst = Some((i, excess));
            }
        }
    }
    match worst {
        None => Ok(()),
        Some((i, _)) => Err(format!(
            "{failures} of {} values out of tolerance (atol {}, rtol {}); worst at index {i}: got {}, reference {}",
            got.len(),
            tol.atol,
            tol.rtol,
            got[i],
            reference[i]
        )),
    }
}

#[track_caller]
pub fn assert_close(got: &[f32], reference: &[f32], tol: Tolerance) {
    if let Err(message) = check_close(got, reference, tol) {
        panic!("{message}");
    }
}

/// Deterministic pseudo-random values in [-1, 1) for tests, from a seed (splitmix64).
pub fn seeded_values(seed: u64, len: usize) -> Vec<f32> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A fresh seed per test run, printed so a failure can be replayed with `KILN_TEST_SEED`.
pub fn test_seed() -> u64 {
    let seed = std::env::var("KILN_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    eprintln!("test seed: KILN_TEST_SEED={seed}");
    seed
}

/// Random ggml blocks of `ggml_type` holding `values` values: any bit pattern of quants and 6-bit
/// scales is a valid block, so only the f16 scales (d, and dmin or m) are replaced (random bits
/// could be NaN or inf), by normal numbers that vary from block to block and keep values within
/// about ±1, as in the other kernel tests (the largest quant times the largest sub-block scale).
pub fn random_ggml_blocks(ggml_type: crate::model::quant::GgmlType, values: usize, seed: u64) -> Vec<u8> {
    use crate::model::quant::GgmlType;
    // Where each type keeps its f16 scales.
    let (scale_offsets, largest): (&[usize], f32) = match ggml_type {
        GgmlType::Q8_0 => (&[0], 127.0),
        GgmlType::Q4_0 => (&[0], 8.0),
        GgmlType::Q5_0 => (&[0], 16.0),
        GgmlType::Q4_1 => (&[0, 2], 15.0),
        GgmlType::Q5_1 => (&[0, 2], 31.0),
        GgmlType::Q4_K => (&[0, 2], 63.0 * 15.0),
        GgmlType::Q5_K => (&[0, 2], 63.0 * 31.0),
        GgmlType::Q6_K => (&[208], 127.0 * 32.0),
        other => panic!("no random blocks for {other}"),
    };
    let block_bytes = ggml_type.block_bytes();
    let blocks = values / ggml_type.block_size();
    let noise = seeded_values(seed, blocks * block_bytes);
    let mut bytes: Vec<u8> = noise.iter().map(|v| ((v + 1.0) * 127.5) as u8).collect();
    let scale_noise = seeded_values(seed ^ 0x5ca1e, blocks * scale_offsets.len());
    for (b, block) in bytes.chunks_exact_mut(block_bytes).enumerate() {
        for (i, &offset) in scale_offsets.iter().enumerate() {
            let scale = half::f16::from_f32((0.5 + 0.5 * scale_noise[b * scale_offsets.len() + i].abs()) / largest);
            block[offset..offset + 2].copy_from_slice(&scale.to_le_bytes());
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_worst_index_and_count() {
        let err = check_close(&[1.0, 2.5, 3.0, 9.0], &[1.0, 2.0, 3.0, 4.0], F32_ACCUMULATION).unwrap_err();
        assert!(err.starts_with("2 of 4 values"), "{err}");
        assert!(err.contains("worst at index 3: got 9, reference 4"), "{err}");
        assert!(check_close(&[f32::NAN], &[1.0], F32_ACCUMULATION).is_err(), "NaN must never pass");
        check_close(&[1.00005], &[1.0], F32_ACCUMULATION).unwrap();
    }

    #[test]
    fn seeded_values_are_in_range_and_reproducible() {
        let a = seeded_values(7, 1000);
        assert_eq!(a, seeded_values(7, 1000));
        assert!(a.iter().all(|v| (-1.0..1.0).contains(v)));
        assert_ne!(a, seeded_values(8, 1000));
    }
}
