//! SiLU(gate)·up, the Llama MLP activation: one memory-bound pass, vectorized per level by
//! `multiversion!`. Reference: `ops::silu_mul`.

use rayon::prelude::*;

use super::{exp, multiversion, Isa, PARALLEL_MIN_ELEMENTS};

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
    // An exp and a division per element make this several times the work per element of the
    // other row-wise ops, so it is shared out from half their size (a batched decode step's
    // 16 × 1536 values took ~18 µs on one thread while the other waited).
    if out.len() < PARALLEL_MIN_ELEMENTS / 2 {
        return silu_mul_chunk(isa, gate, up, out);
    }
    let chunk = out.len().div_ceil(4 * rayon::current_num_threads()).next_multiple_of(64);
    out.par_chunks_mut(chunk)
        .zip(gate.par_chunks(chunk))
        .zip(up.par_chunks(chunk))
        .for_each(|((out, gate), up)| silu_mul_chunk(isa, gate, up, out));
}
