//! Tensor parallelism on GPUs: the start-up checks, and one executor per rank over its shard of
//! the weights (`sharding::shard`, the same Megatron split as the CPU backend's) and
//! of the KV cache (its KV heads). With NCCL rank r runs on GPU r; the host-staged collective puts
//! every rank on device 0, which is how the sharding is tested on the emulator (one device).

use std::sync::Arc;

use super::collective::{DeviceCollective, HostStaged};
use super::device::{gpu_count, Dtype, Gpu};
use super::executor::{Executor, ExecutorOptions};
use super::nccl::{self, NcclCollective};
use super::weights::DeviceWeights;
use super::CudaError;
use crate::backend::plan::PlanLimits;
use crate::backend::sharding::{rank_config, shard};
use crate::backend::KvLayout;
use crate::model::weights::LlamaWeights;
use crate::model::ModelConfig;

/// How the ranks of a tensor-parallel CUDA backend sum their partial results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// NCCL, rank r on GPU r, capturable into CUDA graphs: what `--tensor-parallel N` serves with.
    Nccl,
    /// Through host memory (`collective::HostStaged`), every rank on device 0, CUDA graphs off:
    /// tests of the sharding where NCCL cannot run (the emulator, one GPU).
    HostStaged,
}

/// The GPU ordinal of each of `ranks` ranks.
pub fn placement(transport: Transport, ranks: usize) -> Vec<usize> {
    match transport {
        Transport::Nccl => (0..ranks).collect(),
        Transport::HostStaged => vec![0; ranks],
    }
}

/// NCCL's ranks need a GPU each.
pub fn check_gpu_count(transport: Transport, ranks: usize, gpus: usize) -> Result<(), CudaError> {
    let needed = placement(transport, ranks).into_iter().max().map_or(0, |last| last + 1);
    if needed > gpus {
        return Err(CudaError::TooFewGpus { ranks, gpus });
    }
    Ok(())
}

/// Bytes of one rank's weights and KV cache, `rank` being its geometry (`rank_config`'s): the
/// KV heads, query heads and MLP features divided, the embedding, norms and head whole.
pub fn rank_bytes(rank: &ModelConfig, layout: KvLayout, dtype: Dtype) -> usize {
    DeviceWeights::total_bytes(rank, dtype) + kv_cache_bytes(rank, layout, dtype)
}

/// Bytes of the KV cache of `config`'s KV heads (keys and values, every layer).
pub fn kv_cache_bytes(config: &ModelConfig, layout: KvLayout, dtype: Dtype) -> usize {
    2 * config.num_layers * layout.capacity_tokens() * config.kv_dim() * dtype.size_bytes()
}

/// A rank's share fits the free memory of its GPU.
pub fn check_rank_fits(rank: usize, gpu: usize, needed: usize, free: usize) -> Result<(), CudaError> {
    if needed > free {
        let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
        return Err(CudaError::RankTooLarge { rank, gpu, needed_gib: gib(needed), free_gib: gib(free) });
    }
    Ok(())
}

/// The free bytes each rank can count on: the least over the ranks' GPUs, a GPU's free memory
/// divided among the ranks it holds.
pub fn free_bytes_per_rank(transport: Transport, ranks: usize) -> Result<usize, CudaError> {
    let ordinals = placement(transport, ranks);
    check_gpu_count(transport, ranks, gpu_count()?)?;
    let mut least = usize::MAX;
    for &ordinal in &ordinals {
        let sharing = ordinals.iter().filter(|&&o| o == ordinal).count();
        let (free, _) = cudarc::driver::CudaContext::new(ordinal)?.mem_get_info()?;
        least = least.min(free / sharing);
    }
    Ok(least)
}

/// One executor per rank, rank 0 first, each on its GPU with its shard of `weights` and of the
/// KV cache (`layout` counts blocks, which every rank has, each holding its own KV heads), all
/// joined to one collective. The checks come first, cheapest first: the split, the GPU count,
/// NCCL, then each rank's memory before its upload.
pub(super) fn rank_executors(
    config: &ModelConfig,
    weights: &LlamaWeights,
    layout: KvLayout,
    limits: PlanLimits,
    options: ExecutorOptions,
    ranks: usize,
    transport: Transport,
) -> Result<Vec<Executor>, CudaError> {
    let rank_geometry = rank_config(config, ranks)?;
    check_gpu_count(transport, ranks, gpu_count()?)?;
    match transport {
        Transport::Nccl => nccl::check_loadable()?,
        // join_group would refuse too, but only after the first rank's upload.
        Transport::HostStaged if options.graphs => {
            return Err(CudaError::Unsupported(
                "CUDA graphs with the host-staged collective (it synchronises the host): turn graphs off".into(),
            ))
        }
        Transport::HostStaged => {}
    }
    let gpus = placement(transport, ranks).into_iter().map(Gpu::new).collect::<Result<Vec<_>, _>>()?;
    let collective: Arc<dyn DeviceCollective> = match transport {
        Transport::Nccl => Arc::new(NcclCollective::new(&gpus.iter().collect::<Vec<_>>())?),
        Transport::HostStaged => Arc::new(HostStaged::new(ranks)),
    };
    let needed = rank_bytes(&rank_geometry, layout, options.dtype);
    let shards = shard(config, weights, ranks)?;
    gpus.into_iter()
        .zip(shards)
        .enumerate()
        .map(|(rank, (gpu, shard))| {
            // Checked as each rank is placed: ranks sharing a GPU see what the earlier ones took.
            let (free, _) = gpu.memory_info()?;
            check_rank_fits(rank, gpu.info.ordinal, needed, free)?;
            let device_weights = DeviceWeights::upload(&gpu, &shard.config, &shard.weights, options.dtype)?;
            let mut executor = Executor::new(gpu, shard.config, device_weights, layout, limits, options)?;
            executor.join_group(rank, collective.clone())?;
            Ok(executor)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::random::tiny_test_config;

    #[test]
    fn nccl_needs_a_gpu_per_rank_and_the_staged_collective_one_gpu() {
        assert!(check_gpu_count(Transport::Nccl, 2, 2).is_ok());
        assert!(check_gpu_count(Transport::Nccl, 1, 1).is_ok());
        let err = check_gpu_count(Transport::Nccl, 4, 2).unwrap_err();
        assert!(matches!(err, CudaError::TooFewGpus { ranks: 4, gpus: 2 }), "{err}");
        assert!(err.to_string().contains("--tensor-parallel 4") && err.to_string().contains("counts 2"), "{err}");
        assert!(check_gpu_count(Transport::HostStaged, 4, 1).is_ok());
        assert!(check_gpu_count(Transport::HostStaged, 2, 0).is_err());
        assert_eq!(placement(Transport::Nccl, 3), vec![0, 1, 2]);
        assert_eq!(placement(Transport::HostStaged, 3), vec![0, 0, 0]);
    }

    #[test]
    fn a_rank_holds_its_share_and_the_replicated_weights() {
        let config = tiny_test_config();
        let layout = KvLayout { block_size: 16, num_blocks: 10 };
        let whole = rank_bytes(&config, layout, Dtype::F16);
        let half = rank_bytes(&rank_config(&config, 2).unwrap(), layout, Dtype::F16);
        // The embedding and head (and the norms) are on both ranks, everything else halves.
        let replicated = DeviceWeights::total_bytes(&config, Dtype::F16)
            - DeviceWeights::streamed_bytes(&config, Dtype::F16)
            + config.vocab_size * config.hidden_size * 2;
        assert_eq!(whole - replicated, 2 * (half - replicated));
        let err = check_rank_fits(1, 1, 3 << 30, 1 << 30).unwrap_err();
        assert!(err.to_string().contains("rank 1 on GPU 1 needs 3.0 GiB") && err.to_string().contains("1.0 GiB free"));
        assert!(check_rank_fits(0, 0, 1 << 30, 1 << 30).is_ok());
    }
}
