//! RMSNorm, alone and fused with the residual add (the form the CUDA kernel takes).

/// `out = x / sqrt(mean(x²) + eps) * weight`, row by row; x and out are `[rows, weight.len()]`.
pub fn rmsnorm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let dim = weight.len();
    assert_eq!(x.len(), out.len(), "rmsnorm input and output must have the same shape");
    assert_eq!(x.len() % dim, 0, "rmsnorm input must be [rows, dim]");
    for (row, out_row) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let mean_square = row.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let scale = 1.0 / (mean_square + eps).sqrt();
        for ((o, &v), &w) in out_row.iter_mut().zip(row).zip(weight) {
            *o = v * scale * w;
        }
    }
}

/// `residual += delta; out = rmsnorm(residual)`: the residual add of one sub-block followed by
/// the norm that opens the next.
pub fn rmsnorm_residual(residual: &mut [f32], delta: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    assert_eq!(residual.len(), delta.len(), "residual and delta must have the same shape");
    for (r, &d) in residual.iter_mut().zip(delta) {
        *r += d;
    }
    rmsnorm(residual, weight, eps, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, F32_ACCUMULATION};

    #[test]
    fn normalises_each_row() {
        // Row [3, 4]: mean square 12.5.
        let mut out = vec![f32::NAN; 4];
        rmsnorm(&[3.0, 4.0, 0.0, 0.0], &[1.0, 2.0], 0.0, &mut out);
        let s = 1.0 / 12.5f32.sqrt();
        assert_close(&out[..2], &[3.0 * s, 8.0 * s], F32_ACCUMULATION);
        // An all-zero row stays zero thanks to eps instead of becoming NaN.
        let mut out = vec![f32::NAN; 2];
        rmsnorm(&[0.0, 0.0], &[1.0, 1.0], 1e-5, &mut out);
        assert_eq!(out, vec![0.0, 0.0]);
    }

    #[test]
    fn fused_residual_equals_add_then_norm() {
        let mut residual = vec![1.0, -2.0, 0.5, 4.0];
        let delta = [0.5, 0.5, -1.0, 1.0];
        let weight = [0.9, 1.1];
        let mut fused = vec![f32::NAN; 4];
        rmsnorm_residual(&mut residual, &delta, &weight, 1e-5, &mut fused);
        assert_eq!(residual, vec![1.5, -1.5, -0.5, 5.0]);
        let mut plain = vec![f32::NAN; 4];
        rmsnorm(&residual, &weight, 1e-5, &mut plain);
        assert_eq!(fused, plain);
    }
}
