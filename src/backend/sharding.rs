//! How a model is split over tensor-parallel ranks (Megatron-style, as every serving system does
//! it): attention heads, KV heads (and so the KV cache) and the MLP's intermediate features are
//! divided N ways. q/k/v and gate/up are column-parallel (each rank computes its heads' or
//! features' outputs from the whole hidden state), o and down are row-parallel (each rank
//! multiplies its part of the inputs, and an all-reduce sums the N partial outputs). The
//! embedding, the norms and the output head are replicated: every rank then holds the same hidden
//! state after each all-reduce, and rank 0 computes the logits alone (see docs/tensor_parallel.md
//! for why the head is not split by vocabulary).

use crate::model::weights::{LayerWeights, LlamaWeights, MatrixElements, WeightMatrix};
use crate::model::ModelConfig;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TensorParallelError {
    #[error("--tensor-parallel must be at least 1")]
    Zero,
    #[error("--tensor-parallel {ranks} does not divide the model's {what} ({count}); choose a divisor of {count}")]
    Indivisible { ranks: usize, what: &'static str, count: usize },
    #[error(
        "tensor parallelism splits float weights (f32, f16, bf16); `{tensor}` is {format}: run the model's Hugging \
         Face directory, or one rank"
    )]
    QuantizedWeights { tensor: String, format: &'static str },
}

/// One rank's share: its model geometry (heads and intermediate features divided) and weights.
pub struct RankShard {
    pub config: ModelConfig,
    pub weights: LlamaWeights,
}

/// The geometry one of `ranks` ranks computes, after checking the split is even.
pub fn rank_config(config: &ModelConfig, ranks: usize) -> Result<ModelConfig, TensorParallelError> {
    if ranks == 0 {
        return Err(TensorParallelError::Zero);
    }
    for (what, count) in [
        ("attention heads", config.num_heads),
        ("KV heads", config.num_kv_heads),
        ("intermediate size", config.intermediate_size),
    ] {
        if count % ranks != 0 {
            return Err(TensorParallelError::Indivisible { ranks, what, count });
        }
    }
    let mut rank = config.clone();
    rank.num_heads /= ranks;
    rank.num_kv_heads /= ranks;
    rank.intermediate_size /= ranks;
    Ok(rank)
}

/// Splits `weights` over `ranks` ranks. Column-parallel matrices are views of the same bytes;
/// row-parallel ones (o, down) are copied, a column range of every row.
pub fn shard(
    config: &ModelConfig,
    weights: &LlamaWeights,
    ranks: usize,
) -> Result<Vec<RankShard>, TensorParallelError> {
    let rank_cfg = rank_config(config, ranks)?;
    let (q, kv, ffn) = (rank_cfg.q_dim(), rank_cfg.kv_dim(), rank_cfg.intermediate_size);
    (0..ranks)
        .map(|r| {
            let layers = weights
                .layers
                .iter()
                .enumerate()
                .map(|(i, layer)| {
                    let columns = |name: &str, m: &WeightMatrix, width: usize| {
                        column_slice(m, r * width..(r + 1) * width).ok_or_else(|| {
                            TensorParallelError::QuantizedWeights {
                                tensor: format!("layers.{i}.{name}"),
                                format: m.format.name(),
                            }
                        })
                    };
                    Ok(LayerWeights {
                        input_norm: layer.input_norm.clone(),
                        q_proj: layer.q_proj.row_slice(r * q..(r + 1) * q),
                        k_proj: layer.k_proj.row_slice(r * kv..(r + 1) * kv),
                        v_proj: layer.v_proj.row_slice(r * kv..(r + 1) * kv),
                        o_proj: columns("o_proj", &layer.o_proj, q)?,
                        post_attention_norm: layer.post_attention_norm.clone(),
                        gate_proj: layer.gate_proj.row_slice(r * ffn..(r + 1) * ffn),
                        up_proj: layer.up_proj.row_slice(r * ffn..(r + 1) * ffn),
                        down_proj: columns("down_proj", &layer.down_proj, ffn)?,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let weights = LlamaWeights {
                embed_tokens: weights.embed_tokens.clone(),
                layers,
                final_norm: weights.final_norm.clone(),
                lm_head: weights.lm_head.clone(),
            };
            Ok(RankShard { config: rank_cfg.clone(), weights })
        })
        .collect()
}

/// Columns `cols` of every row of a float matrix, copied; `None` for quantized formats.
fn column_slice(m: &WeightMatrix, cols: std::ops::Range<usize>) -> Option<WeightMatrix> {
    let (rows, width) = (m.rows, cols.len());
    let pick = |row: usize| row * m.cols + cols.start..row * m.cols + cols.end;
    Some(match m.elements() {
        MatrixElements::F32(v) => {
            WeightMatrix::from_f32(rows, width, (0..rows).flat_map(|r| v[pick(r)].to_vec()).collect())
        }
        MatrixElements::F16(v) => {
            WeightMatrix::from_f16(rows, width, (0..rows).flat_map(|r| v[pick(r)].to_vec()).collect())
        }
        MatrixElements::Bf16(v) => {
            WeightMatrix::from_bf16(rows, width, (0..rows).flat_map(|r| v[pick(r)].to_vec()).collect())
        }
        MatrixElements::Quantized(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::random::{random_llama_weights, tiny_test_config};
    use crate::model::safetensors_dir::WeightDtype;

    #[test]
    fn shards_hold_every_weight_once() {
        let config = tiny_test_config();
        let weights = random_llama_weights(&config, 7, WeightDtype::F32);
        let ranks = config.num_kv_heads;
        let shards = shard(&config, &weights, ranks).unwrap();
        let row = |m: &WeightMatrix, r: usize| {
            let mut out = vec![0.0; m.cols];
            m.row_to_f32(r, &mut out);
            out
        };
        for (i, layer) in weights.layers.iter().enumerate() {
            // Column-parallel: the ranks' rows, concatenated, are the whole matrix.
            let q_rows: Vec<Vec<f32>> = shards
                .iter()
                .flat_map(|s| (0..s.weights.layers[i].q_proj.rows).map(move |r| row(&s.weights.layers[i].q_proj, r)))
                .collect();
            assert_eq!(q_rows, (0..layer.q_proj.rows).map(|r| row(&layer.q_proj, r)).collect::<Vec<_>>());
            // Row-parallel: each row of down_proj is the ranks' pieces side by side.
            for r in 0..layer.down_proj.rows {
                let joined: Vec<f32> = shards.iter().flat_map(|s| row(&s.weights.layers[i].down_proj, r)).collect();
                assert_eq!(joined, row(&layer.down_proj, r));
            }
        }
        assert_eq!(shards[0].config.num_kv_heads * ranks, config.num_kv_heads);
    }

    #[test]
    fn uneven_splits_and_quantized_weights_are_refused_by_name() {
        let config = tiny_test_config();
        let err = rank_config(&config, config.num_heads + 1).unwrap_err();
        assert!(err.to_string().contains("does not divide the model's attention heads"), "{err}");
        assert_eq!(rank_config(&config, 0).unwrap_err(), TensorParallelError::Zero);
        // Quantized rows are whole 32-value blocks: a geometry whose every width is.
        let mut config = config;
        (config.hidden_size, config.head_dim, config.intermediate_size) = (64, 16, 96);
        let weights = crate::model::random::random_llama_weights_quantized(
            &config,
            1,
            crate::model::packed_quant::PackedQuant::Q8_0,
        );
        let err = shard(&config, &weights, 2).err().expect("quantized weights are refused");
        assert!(err.to_string().contains("layers.0.o_proj") && err.to_string().contains("q8_0"), "{err}");
    }
}
