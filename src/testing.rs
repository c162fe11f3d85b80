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
