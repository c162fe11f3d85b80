//! Start-up: turning a model directory and the configured limits into a ready backend. Shared by
//! the CLI commands, the benchmarks and the tests, so every one of them loads models the same way.

use std::path::Path;

use crate::backend::cpu::{CpuBackend, CpuKvCache};
use crate::backend::plan::PlanLimits;
use crate::backend::sharding::{self, TensorParallelError};
use crate::backend::{KvLayout, KV_BLOCK_SIZE};
use crate::model::weights::LlamaWeights;
use crate::model::{ModelConfig, ModelError};

#[derive(Debug, Clone, Copy)]
pub struct CpuLimits {
    /// Bytes of KV cache across all sequences (f16 keys and values on the CPU).
    pub kv_memory_bytes: usize,
    /// At most this many tokens of KV cache, whatever the bytes allow (benchmarks size the cache
    /// for their sequences without knowing the model's bytes per token).
    pub kv_max_tokens: Option<usize>,
    pub max_batch_tokens: usize,
    pub max_seqs: usize,
}

impl Default for CpuLimits {
    fn default() -> Self {
        CpuLimits { kv_memory_bytes: 1 << 30, kv_max_tokens: None, max_batch_tokens: 512, max_seqs: 16 }
    }
}

/// [`load_cpu_backend`] split over `ranks` tensor-parallel ranks.
pub fn load_cpu_backend_tensor_parallel(
    dir: &Path,
    limits: CpuLimits,
    ranks: usize,
) -> anyhow::Result<(CpuBackend, PlanLimits)> {
    let config = ModelConfig::from_dir(dir)?;
    let weights = LlamaWeights::load(dir, &config)?;
    Ok(cpu_backend_tensor_parallel(config, weights, limits, ranks)?)
}

/// Loads config and weights from a Hugging Face directory and sizes a CPU backend for `limits`.
pub fn load_cpu_backend(dir: &Path, limits: CpuLimits) -> Result<(CpuBackend, PlanLimits), ModelError> {
    let config = ModelConfig::from_dir(dir)?;
    let weights = LlamaWeights::load(dir, &config)?;
    Ok(cpu_backend(config, weights, limits))
}

/// Loads a GGUF's config and weights directly, keeping quantized tensors quantized (see
/// `model::gguf_weights`), and sizes a CPU backend for `limits`.
pub fn load_cpu_backend_from_gguf(path: &Path, limits: CpuLimits) -> Result<(CpuBackend, PlanLimits), ModelError> {
    let (config, weights) = crate::model::gguf_weights::load_gguf_weights(path)?;
    Ok(cpu_backend(config, weights, limits))
}

pub fn cpu_backend(config: ModelConfig, weights: LlamaWeights, limits: CpuLimits) -> (CpuBackend, PlanLimits) {
    cpu_backend_tensor_parallel(config, weights, limits, 1).expect("one rank always fits")
}

/// [`cpu_backend`] with the model split over `ranks` tensor-parallel ranks (threads); the KV
/// memory in `limits` is the total over all ranks.
pub fn cpu_backend_tensor_parallel(
    config: ModelConfig,
    weights: LlamaWeights,
    limits: CpuLimits,
    ranks: usize,
) -> Result<(CpuBackend, PlanLimits), TensorParallelError> {
    sharding::rank_config(&config, ranks)?;
    let kv_tokens =
        (limits.kv_memory_bytes / CpuKvCache::bytes_per_token(&config)).min(limits.kv_max_tokens.unwrap_or(usize::MAX));
    let num_blocks = (kv_tokens / KV_BLOCK_SIZE).max(1);
    let layout = KvLayout { block_size: KV_BLOCK_SIZE, num_blocks };
    let max_tokens_per_seq = config.max_position_embeddings.min(layout.capacity_tokens());
    let plan_limits = PlanLimits {
        max_batch_tokens: limits.max_batch_tokens,
        max_seqs: limits.max_seqs,
        max_blocks_per_seq: max_tokens_per_seq.div_ceil(KV_BLOCK_SIZE),
    };
    tracing::info!(
        "KV cache: {} tokens in {} blocks of {} ({:.1} MiB, {} full-context sequences of {} tokens)",
        layout.capacity_tokens(),
        num_blocks,
        KV_BLOCK_SIZE,
        (layout.capacity_tokens() * CpuKvCache::bytes_per_token(&config)) as f64 / (1 << 20) as f64,
        layout.capacity_tokens() / config.max_position_embeddings.max(1),
        config.max_position_embeddings
    );
    let weights = crate::model::weight_arena::into_huge_page_arena(weights);
    Ok((CpuBackend::tensor_parallel(config, weights, layout, plan_limits, ranks)?, plan_limits))
}
