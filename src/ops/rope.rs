//! Rotary position embedding in the Hugging Face "rotate half" layout: dimension i of a head is
//! rotated together with dimension i + head_dim/2.

use crate::model::config::{ModelConfig, RopeScaling};

/// The rotation frequency of each dimension pair, `[head_dim / 2]`, with the model's scaling.
pub fn rope_inv_freq(config: &ModelConfig) -> Vec<f32> {
    let half = config.head_dim / 2;
    let base: Vec<f32> =
        (0..half).map(|i| 1.0 / config.rope_theta.powf((2 * i) as f32 / config.head_dim as f32)).collect();
    match config.rope_scaling {
        RopeScaling::None => base,
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
            // Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, and the band
            // between is blended smoothly.
            let old_context = original_max_position_embeddings as f32;
            let low_freq_wavelen = old_context / low_freq_factor;
            let high_freq_wavelen = old_context / high_freq_factor;
            base.iter()
                .map(|&freq| {
                    let wavelen = 2.0 * std::f32::consts::PI / freq;
                    if wavelen < high_freq_wavelen {
                        freq
                    } else if wavelen > low_freq_wavelen {
                        freq / factor
                    } else {
                        let smooth = (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * freq / factor + smooth * freq
                    }
                })
                .collect()
        }
    }
}

/// Rotates every head of `x` (`[n_heads, head_dim]`) for position `position`.
pub fn apply_rope(x: &mut [f32], head_dim: usize, position: usize, inv_freq: &[f32]) {
    let half = head_dim / 2;
    assert_eq!(inv_freq.len(), half, "inv_freq must be [head_dim / 2]");
    assert_eq!(x.len() % head_dim, 0, "rope input must be [heads, head_dim]");
    for head in x.chunks_exact_mut(head_dim) {
        for i in 0..half {
            // Angle in f32, as Hugging Face computes it, so long positions round the same way.
            let angle = position as f32 * inv_freq[i];
            let (sin, cos) = angle.sin_cos();
            let (a, b) = (head[i], head[i + half]);
            head[i] = a * cos - b * sin;
            head[i + half] = b * cos + a * sin;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::ModelConfig;
    use std::path::Path;

    fn config(extra: &str) -> ModelConfig {
        let json = format!(
            r#"{{"architectures":["LlamaForCausalLM"],"hidden_size":64,"intermediate_size":8,"num_hidden_layers":1,
            "num_attention_heads":2,"vocab_size":8,"rope_theta":10000.0{extra}}}"#
        );
        ModelConfig::from_json(&json, Path::new("config.json")).unwrap()
    }

    #[test]
    fn position_zero_is_identity_and_rotation_preserves_norm() {
        let inv_freq = rope_inv_freq(&config(""));
        let original: Vec<f32> = (0..64).map(|v| (v as f32 * 0.37).sin()).collect();
        let mut x = original.clone();
        apply_rope(&mut x, 32, 0, &inv_freq);
        assert_eq!(x, original);
        apply_rope(&mut x, 32, 1234, &inv_freq);
        for (head, orig) in x.chunks(32).zip(original.chunks(32)) {
            let n: f32 = head.iter().map(|v| v * v).sum();
            let o: f32 = orig.iter().map(|v| v * v).sum();
            assert!((n - o).abs() < 1e-4 * o, "rotation must preserve the norm");
        }
    }

    #[test]
    fn rotates_pairs_half_a_head_apart() {
        // First pair has frequency 1: position 1 rotates (1, 0) by one radian.
        let inv_freq = rope_inv_freq(&config(""));
        assert_eq!(inv_freq[0], 1.0);
        let mut x = vec![0.0; 32];
        x[0] = 1.0;
        apply_rope(&mut x, 32, 1, &inv_freq);
        assert!((x[0] - 1f32.cos()).abs() < 1e-6 && (x[16] - 1f32.sin()).abs() < 1e-6, "{x:?}");
    }

    #[test]
    fn scaling_rules() {
        let plain = rope_inv_freq(&config(""));
        let linear = rope_inv_freq(&config(r#","rope_scaling":{"type":"linear","factor":4.0}"#));
        for (p, l) in plain.iter().zip(&linear) {
            assert_eq!(*l, p / 4.0);
        }
        let llama3 = rope_inv_freq(&config(
            r#","rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":64}"#,
        ));
        // Highest frequency (wavelength 2π < 16) unchanged; lowest (wavelength > 64) divided by 8.
        assert_eq!(llama3[0], plain[0]);
        let last = plain.len() - 1;
        assert!(2.0 * std::f32::consts::PI / plain[last] > 64.0);
        assert_eq!(llama3[last], plain[last] / 8.0);
        // Frequencies in the blend band lie between the two.
        for (p, s) in plain.iter().zip(&llama3) {
            assert!(*s <= *p && *s >= p / 8.0);
        }
    }
}
