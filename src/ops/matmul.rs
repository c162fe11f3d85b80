//! Matrix product against a weight matrix in its stored dtype: `out = x · Wᵀ`, f32 accumulation.
//!
//! Work is split over blocks of weight rows so that every weight row is converted to f32 once
//! per call, whatever the number of input rows: decode (one row) and prefill (many) share it.

use rayon::prelude::*;

use crate::model::weights::WeightMatrix;

/// Weight rows per parallel task: enough work to amortise scheduling, small enough to balance.
const ROWS_PER_TASK: usize = 16;

/// `out[i, j] = Σ_k x[i, k] · w[j, k]`; x is `[n, w.cols]`, out is `[n, w.rows]`.
pub fn matmul(x: &[f32], w: &WeightMatrix, out: &mut [f32]) {
    let (m, k) = (w.rows, w.cols);
    assert_eq!(x.len() % k, 0, "matmul input must be [n, {k}]");
    let n = x.len() / k;
    assert_eq!(out.len(), n * m, "matmul output must be [{n}, {m}]");
    let blocks: Vec<Vec<f32>> = (0..m.div_ceil(ROWS_PER_TASK))
        .into_par_iter()
        .map(|block| {
            let rows = block * ROWS_PER_TASK..((block + 1) * ROWS_PER_TASK).min(m);
            let mut weight_row = vec![0.0f32; k];
            let mut results = vec![0.0f32; n * rows.len()]; // [rows, n]
            for (r, j) in rows.enumerate() {
                w.row_to_f32(j, &mut weight_row);
                for (i, x_row) in x.chunks_exact(k).enumerate() {
                    results[r * n + i] = dot(x_row, &weight_row);
                }
            }
            results
        })
        .collect();
    for (block, results) in blocks.iter().enumerate() {
        let first = block * ROWS_PER_TASK;
        let rows = results.len() / n.max(1);
        for r in 0..rows {
            for i in 0..n {
                out[i * m + first + r] = results[r * n + i];
            }
        }
    }
}

/// A dot product with eight independent partial sums, which lets the compiler vectorise it.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut partial = [0.0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            partial[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut sum: f32 = partial.iter().sum();
    for i in chunks * 8..a.len() {
        sum += a[i] * b[i];
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, seeded_values, test_seed, Tolerance, F32_ACCUMULATION};
    use half::{bf16, f16};

    /// The textbook triple loop in f64: the oracle for `matmul`.
    fn naive(x: &[f32], w: &[f32], n: usize, m: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0.0; n * m];
        for i in 0..n {
            for j in 0..m {
                out[i * m + j] = (0..k).map(|p| x[i * k + p] as f64 * w[j * k + p] as f64).sum::<f64>() as f32;
            }
        }
        out
    }

    #[test]
    fn matches_naive_product_for_every_dtype_and_ragged_shapes() {
        let seed = test_seed();
        for (case, &(n, m, k)) in [(1, 1, 1), (1, 37, 13), (5, 33, 64), (7, 17, 9), (3, 100, 31)].iter().enumerate() {
            let x = seeded_values(seed + case as u64, n * k);
            let w = seeded_values(seed + 100 + case as u64, m * k);
            // Round the weights to each storage dtype first, so the oracle sees the same values.
            let w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            let wb16: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let cases = [
                (WeightMatrix::from_f32(m, k, w.clone()), w.clone()),
                (WeightMatrix::from_f16(m, k, w16.clone()), w16.iter().map(|v| v.to_f32()).collect()),
                (WeightMatrix::from_bf16(m, k, wb16.clone()), wb16.iter().map(|v| v.to_f32()).collect()),
            ];
            for (matrix, rounded) in cases {
                let mut out = vec![f32::NAN; n * m];
                matmul(&x, &matrix, &mut out);
                assert_close(&out, &naive(&x, &rounded, n, m, k), Tolerance { atol: 1e-5, ..F32_ACCUMULATION });
            }
        }
    }

    #[test]
    fn dot_handles_tails() {
        let a: Vec<f32> = (0..19).map(|v| v as f32).collect();
        assert_eq!(dot(&a, &[1.0; 19]), 171.0);
    }
}
