//! The SwiGLU activation of the Llama MLP: `silu(gate) * up`.

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `out[i] = silu(gate[i]) * up[i]`.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(gate.len() == up.len() && up.len() == out.len(), "silu_mul operands must have one shape");
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = silu(g) * u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert_eq!(silu(0.0), 0.0);
        assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
        assert!((silu(-20.0) + 4.122e-8).abs() < 1e-9, "large negative inputs go to zero, not NaN");
        let mut out = vec![f32::NAN; 2];
        silu_mul(&[1.0, 2.0], &[2.0, -1.0], &mut out);
        assert!((out[0] - 1.462_117_2).abs() < 1e-6 && (out[1] + 1.761_594_2).abs() < 1e-6, "{out:?}");
    }
}
