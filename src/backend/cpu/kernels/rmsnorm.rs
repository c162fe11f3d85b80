//! RMSNorm, alone and fused with the residual add: one memory-bound pass per row, vectorized per
//! level by `multiversion!`, split over rows when a step has enough of them. Reference:
//! `ops::rmsnorm`.

use rayon::prelude::*;

use super::{fma, multiversion, rows_per_task, Isa, PARALLEL_MIN_ELEMENTS};

#[inline(always)]
fn sum_squares<const FMA: bool>(row: &[f32]) -> f32 {
    let mut partial = [0f32; 16];
    let chunks = row.chunks_exact(16);
    let tail = chunks.remainder();
    for chunk in chunks {
        for l in 0..16 {
            partial[l] = fma::<FMA>(chunk[l], chunk[l], partial[l]);
        }
    }
    partial.iter().sum::<f32>() + tail.iter().map(|v| v * v).sum::<f32>()
}

#[inline(always)]
fn rmsnorm_rows_body<const FMA: bool>(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let dim = weight.len();
    for (row, out_row) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let scale = 1.0 / (sum_squares::<FMA>(row) / dim as f32 + eps).sqrt();
        for ((o, &v), &w) in out_row.iter_mut().zip(row).zip(weight) {
            *o = v * scale * w;
        }
    }
}

multiversion!(fn rmsnorm_rows(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) => rmsnorm_rows_body);

#[inline(always)]
fn add_rmsnorm_rows_body<const FMA: bool>(
    residual: &mut [f32],
    delta: &[f32],
    weight: &[f32],
    eps: f32,
    out: &mut [f32],
) {
    for (r, &d) in residual.iter_mut().zip(delta) {
        *r += d;
    }
    rmsnorm_rows_body::<FMA>(residual, weight, eps, out);
}

multiversion!(fn add_rmsnorm_rows(residual: &mut [f32], delta: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) => add_rmsnorm_rows_body);

/// `out = x / sqrt(mean(x²) + eps) * weight` row by row (`[rows, weight.len()]`).
pub fn rmsnorm(isa: Isa, x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let dim = weight.len();
    assert!(x.len() == out.len() && x.len().is_multiple_of(dim), "rmsnorm operands must be [rows, {dim}]");
    let rows_per_task = rows_per_task(dim, x.len());
    if x.len() < PARALLEL_MIN_ELEMENTS {
        return rmsnorm_rows(isa, x, weight, eps, out);
    }
    x.par_chunks(rows_per_task * dim)
        .zip(out.par_chunks_mut(rows_per_task * dim))
        .for_each(|(x, out)| rmsnorm_rows(isa, x, weight, eps, out));
}

/// `residual += delta; out = rmsnorm(residual)`.
pub fn rmsnorm_residual(isa: Isa, residual: &mut [f32], delta: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let dim = weight.len();
    assert!(
        residual.len() == delta.len() && residual.len() == out.len() && residual.len().is_multiple_of(dim),
        "rmsnorm_residual operands must be [rows, {dim}]"
    );
    if residual.len() < PARALLEL_MIN_ELEMENTS {
        return add_rmsnorm_rows(isa, residual, delta, weight, eps, out);
    }
    let chunk = rows_per_task(dim, residual.len()) * dim;
    residual
        .par_chunks_mut(chunk)
        .zip(delta.par_chunks(chunk))
        .zip(out.par_chunks_mut(chunk))
        .for_each(|((residual, delta), out)| add_rmsnorm_rows(isa, residual, delta, weight, eps, out));
}
