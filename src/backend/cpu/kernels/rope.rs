//! Rotary position embedding: the cos/sin table of a step's positions, and its rotation of Q and
//! K in place, vectorized per level by `multiversion!`. Reference: `ops::rope`.

use rayon::prelude::*;

use super::{multiversion, Isa, PARALLEL_MIN_ELEMENTS};

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
