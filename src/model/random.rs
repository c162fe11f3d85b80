//! Seeded random weights in any Llama geometry: for tests, and for benchmarks of real geometries
//! (speed does not depend on the values) without weight files.

use half::{bf16, f16};

use super::packed_quant::PackedQuant;
use super::safetensors_dir::WeightDtype;
use super::weights::{LayerWeights, LlamaWeights, WeightMatrix};
use super::ModelConfig;
use crate::testing::seeded_values;

/// Weights drawn uniformly from ±scale with scale 1/√fan_in, so activations stay O(1) through the
/// layers as in a trained model, and norms near 1.
pub fn random_llama_weights(config: &ModelConfig, seed: u64, dtype: WeightDtype) -> LlamaWeights {
    random_weights_with(config, seed, |rows, cols, values| match dtype {
        WeightDtype::F32 => WeightMatrix::from_f32(rows, cols, values),
        WeightDtype::F16 => WeightMatrix::from_f16(rows, cols, values.into_iter().map(f16::from_f32).collect()),
        WeightDtype::Bf16 => WeightMatrix::from_bf16(rows, cols, values.into_iter().map(bf16::from_f32).collect()),
    })
}

/// [`random_llama_weights`] with every matrix quantized to `format` (ggml's rounding).
pub fn random_llama_weights_quantized(config: &ModelConfig, seed: u64, format: PackedQuant) -> LlamaWeights {
    random_weights_with(config, seed, |rows, cols, values| {
        WeightMatrix::quantized_from_f32(format, rows, cols, &values)
    })
}

fn random_weights_with(
    config: &ModelConfig,
    seed: u64,
    mut store: impl FnMut(usize, usize, Vec<f32>) -> WeightMatrix,
) -> LlamaWeights {
    let mut next_seed = seed;
    let mut matrix = |rows: usize, cols: usize| {
        next_seed = next_seed.wrapping_add(1);
        let scale = 1.0 / (cols as f32).sqrt();
        let values: Vec<f32> = seeded_values(next_seed, rows * cols).into_iter().map(|v| v * scale).collect();
        store(rows, cols, values)
    };
    let h = config.hidden_size;
    let norm = |seed: u64| seeded_values(seed, h).into_iter().map(|v| 1.0 + 0.1 * v).collect::<Vec<f32>>();
    let embed_tokens = matrix(config.vocab_size, h);
    let layers = (0..config.num_layers)
        .map(|i| LayerWeights {
            input_norm: norm(seed ^ (1000 + i as u64)),
            q_proj: matrix(config.q_dim(), h),
            k_proj: matrix(config.kv_dim(), h),
            v_proj: matrix(config.kv_dim(), h),
            o_proj: matrix(h, config.q_dim()),
            post_attention_norm: norm(seed ^ (2000 + i as u64)),
            gate_proj: matrix(config.intermediate_size, h),
            up_proj: matrix(config.intermediate_size, h),
            down_proj: matrix(h, config.intermediate_size),
        })
        .collect();
    let lm_head = if config.tie_word_embeddings { embed_tokens.clone() } else { matrix(config.vocab_size, h) };
    LlamaWeights { embed_tokens, layers, final_norm: norm(seed ^ 3000), lm_head }
}

/// A small Llama geometry for tests: GQA, odd sizes, a vocabulary of 256.
pub fn tiny_test_config() -> ModelConfig {
    ModelConfig::from_json(
        r#"{"architectures":["LlamaForCausalLM"],"hidden_size":48,"intermediate_size":80,"num_hidden_layers":2,
        "num_attention_heads":6,"num_key_value_heads":2,"vocab_size":256,"rms_norm_eps":1e-5,
        "max_position_embeddings":512,"rope_theta":10000.0,"tie_word_embeddings":true,"eos_token_id":[255]}"#,
        std::path::Path::new("tiny_test_config"),
    )
    .expect("the built-in test config is valid")
}
