//! The model head: final RMSNorm then the output projection, for the rows that need logits.

use super::{matmul::matmul, rmsnorm::rmsnorm};
use crate::model::weights::WeightMatrix;

/// `out = rmsnorm(hidden) · lm_headᵀ`; hidden is `[rows, hidden]`, out is `[rows, vocab]`.
/// `normed` is scratch of hidden's shape.
pub fn logits(
    hidden: &[f32],
    final_norm: &[f32],
    eps: f32,
    lm_head: &WeightMatrix,
    normed: &mut [f32],
    out: &mut [f32],
) {
    rmsnorm(hidden, final_norm, eps, normed);
    matmul(normed, lm_head, out);
}

/// Log-probabilities of one row of logits, computed stably in f64 sums.
pub fn log_softmax(logits: &[f32], out: &mut [f32]) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let total: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    // Subtract the max before the log-sum so large logits keep their precision.
    let log_total = total.ln() as f32;
    for (o, &l) in out.iter_mut().zip(logits) {
        *o = (l - max) - log_total;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_is_norm_then_projection() {
        let lm_head = WeightMatrix::from_f32(3, 2, vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
        let mut normed = vec![0.0; 2];
        let mut out = vec![f32::NAN; 3];
        logits(&[3.0, 4.0], &[1.0, 1.0], 0.0, &lm_head, &mut normed, &mut out);
        let s = 1.0 / 12.5f32.sqrt();
        assert!((out[0] - 3.0 * s).abs() < 1e-6 && (out[1] - 4.0 * s).abs() < 1e-6 && (out[2] - 7.0 * s).abs() < 1e-6);
    }

    #[test]
    fn log_softmax_sums_to_one_and_survives_large_values() {
        let mut out = vec![0.0; 3];
        log_softmax(&[1000.0, 1001.0, 999.0], &mut out);
        let total: f32 = out.iter().map(|v| v.exp()).sum();
        assert!((total - 1.0).abs() < 1e-5 && out.iter().all(|v| v.is_finite()));
    }
}
