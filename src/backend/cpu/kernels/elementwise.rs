//! The cheap per-token ops of a layer: RMSNorm (with the residual add), SiLU·up and RoPE. Memory-
//! bound one-pass loops: vectorized per level by `multiversion!`, split over tokens when a step
//! has enough of them that the split pays for itself. References: `ops::norm`, `ops::activation`,
//! `ops::rope`.

use rayon::prelude::*;

use super::{exp, fma, multiversion, Isa};

/// Below this many elements an op runs on the calling thread.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 15;

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

fn rows_per_task(dim: usize, len: usize) -> usize {
    let rows = len / dim;
    rows.div_ceil(2 * rayon::current_num_threads()).max(1)
}

#[inline(always)]
fn silu_mul_body<const FMA: bool>(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + exp::<FMA>(-g)) * u;
    }
}

multiversion!(fn silu_mul_chunk(gate: &[f32], up: &[f32], out: &mut [f32]) => silu_mul_body);

/// `out = silu(gate) · up`, element-wise.
pub fn silu_mul(isa: Isa, gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(gate.len() == up.len() && up.len() == out.len(), "silu_mul operands must have one shape");
    if out.len() < PARALLEL_MIN_ELEMENTS {
        return silu_mul_chunk(isa, gate, up, out);
    }
    let chunk = out.len().div_ceil(4 * rayon::current_num_threads()).next_multiple_of(64);
    out.par_chunks_mut(chunk)
        .zip(gate.par_chunks(chunk))
        .zip(up.par_chunks(chunk))
        .for_each(|((out, gate), up)| silu_mul_chunk(isa, gate, up, out));
}

/// The cosines and sines of every token's rotation: `cos[t, i] = cos(position_t · inv_freq[i])`.
/// Computed once per step and shared by all layers (the reference recomputes them per head).
pub fn rope_table(positions: &[u32], inv_freq: &[f32], cos: &mut [f32], sin: &mut [f32]) {
    let half = inv_freq.len();
    assert!(
        cos.len() == positions.len() * half && sin.len() == cos.len(),
        "rope tables must be [tokens, head_dim / 2]"
    );
    for ((&position, cos), sin) in positions.iter().zip(cos.chunks_exact_mut(half)).zip(sin.chunks_exact_mut(half)) {
        for i in 0..half {
            // The same f32 angle as ops::rope, so the rotation is bit-for-bit the reference's.
            let (s, c) = (position as f32 * inv_freq[i]).sin_cos();
            cos[i] = c;
            sin[i] = s;
        }
    }
}

#[inline(always)]
fn rope_rows_body<const FMA: bool>(x: &mut [f32], width: usize, head_dim: usize, cos: &[f32], sin: &[f32]) {
    let half = head_dim / 2;
    for ((row, cos), sin) in x.chunks_exact_mut(width).zip(cos.chunks_exact(half)).zip(sin.chunks_exact(half)) {
        for head in row.chunks_exact_mut(head_dim) {
            let (first, second) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (first[i], second[i]);
                first[i] = a * cos[i] - b * sin[i];
                second[i] = b * cos[i] + a * sin[i];
            }
        }
    }
}

multiversion!(fn rope_rows(x: &mut [f32], width: usize, head_dim: usize, cos: &[f32], sin: &[f32]) => rope_rows_body);

/// Rotates every head of every token of `x` (`[tokens, width]`, width a multiple of head_dim)
/// with the token's row of the tables from [`rope_table`].
pub fn apply_rope(isa: Isa, x: &mut [f32], width: usize, head_dim: usize, cos: &[f32], sin: &[f32]) {
    let half = head_dim / 2;
    assert!(
        width.is_multiple_of(head_dim) && x.len().is_multiple_of(width),
        "rope input must be [tokens, heads * {head_dim}]"
    );
    assert!(cos.len() == x.len() / width * half && sin.len() == cos.len(), "rope tables must be [tokens, {half}]");
    if x.len() < PARALLEL_MIN_ELEMENTS {
        return rope_rows(isa, x, width, head_dim, cos, sin);
    }
    let rows = (x.len() / width).div_ceil(2 * rayon::current_num_threads()).max(1);
    x.par_chunks_mut(rows * width)
        .zip(cos.par_chunks(rows * half))
        .zip(sin.par_chunks(rows * half))
        .for_each(|((x, cos), sin)| rope_rows(isa, x, width, head_dim, cos, sin));
}
