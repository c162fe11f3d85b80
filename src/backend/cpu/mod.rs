//! The CPU backend: the Llama forward pass composed from the fast kernels in `kernels` (tested
//! against the reference ops in `crate::ops`), over a KV cache and activation buffers allocated
//! once at start-up, with the work of each op split over rayon's global pool.

mod forward;
pub mod kernels;
mod kv_cache;
mod workspace;

pub use kv_cache::CpuKvCache;

use crate::backend::collective::cpu::ThreadCollective;
use crate::backend::collective::Collective;
use crate::backend::plan::{PlanLimits, StepPlan};
use crate::model::weights::LlamaWeights;
use crate::model::ModelConfig;

use super::{Backend, BackendError, KvLayout};
use crate::backend::sharding::{self, TensorParallelError};
use workspace::Workspace;

pub struct CpuBackend {
    /// The whole model's geometry (what the engine sees).
    config: ModelConfig,
    /// One rank without tensor parallelism; else each rank's share of the heads, features and KV
    /// cache, run on threads of their own that meet in `collective`.
    ranks: Vec<Rank>,
    collective: ThreadCollective,
    limits: PlanLimits,
    inv_freq: Vec<f32>,
    isa: kernels::Isa,
}

struct Rank {
    config: ModelConfig,
    weights: LlamaWeights,
    kv: CpuKvCache,
    workspace: Workspace,
}

impl Rank {
    fn new(config: ModelConfig, weights: LlamaWeights, layout: KvLayout, limits: PlanLimits) -> Rank {
        let kv = CpuKvCache::new(&config, layout);
        let workspace = Workspace::new(&config, limits.max_batch_tokens);
        Rank { config, weights, kv, workspace }
    }
}

/// The kernels' level, said once in the log with whether AMX tiles take the batched matmuls (an
/// operator comparing machines wants to know which kernels ran).
fn kernel_level() -> kernels::Isa {
    let isa = kernels::Isa::best();
    tracing::info!("CPU kernels: {}, AMX tiles {}", isa.name(), kernels::amx::describe());
    isa
}

impl CpuBackend {
    /// Allocates the KV cache (`layout`) and the activations for the largest step (`limits`).
    pub fn new(config: ModelConfig, weights: LlamaWeights, layout: KvLayout, limits: PlanLimits) -> CpuBackend {
        let inv_freq = crate::ops::rope::rope_inv_freq(&config);
        let ranks = vec![Rank::new(config.clone(), weights, layout, limits)];
        CpuBackend { config, ranks, collective: ThreadCollective::new(1), limits, inv_freq, isa: kernel_level() }
    }

    /// The model split over `ranks` tensor-parallel ranks (`backend::sharding`), each a thread
    /// with its share of the weights and of every KV block (`layout` counts blocks, which every
    /// rank has, each holding its own KV heads). One rank is [`CpuBackend::new`].
    pub fn tensor_parallel(
        config: ModelConfig,
        weights: LlamaWeights,
        layout: KvLayout,
        limits: PlanLimits,
        ranks: usize,
    ) -> Result<CpuBackend, TensorParallelError> {
        if ranks == 1 {
            return Ok(CpuBackend::new(config, weights, layout, limits));
        }
        let shards = sharding::shard(&config, &weights, ranks)?;
        let inv_freq = crate::ops::rope::rope_inv_freq(&config);
        let ranks: Vec<Rank> = shards.into_iter().map(|s| Rank::new(s.config, s.weights, layout, limits)).collect();
        let collective = ThreadCollective::new(ranks.len());
        Ok(CpuBackend { config, ranks, collective, limits, inv_freq, isa: kernel_level() })
    }

    /// The instruction set level the kernels run with.
    pub fn isa(&self) -> kernels::Isa {
        self.isa
    }

    /// The weights (rank 0's share under tensor parallelism: the formats are the same on all).
    pub fn weights(&self) -> &LlamaWeights {
        &self.ranks[0].weights
    }

    pub fn tensor_parallel_ranks(&self) -> usize {
        self.ranks.len()
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn kv_layout(&self) -> KvLayout {
        self.ranks[0].kv.layout()
    }

    fn execute(&mut self, plan: &StepPlan, logits: &mut [f32]) -> Result<(), BackendError> {
        let layout = self.kv_layout();
        if plan.limits.max_batch_tokens > self.limits.max_batch_tokens {
            return Err(BackendError::PlanMismatch(format!(
                "plan allows {} tokens per step, the backend was sized for {}",
                plan.limits.max_batch_tokens, self.limits.max_batch_tokens
            )));
        }
        if plan.block_size != layout.block_size {
            return Err(BackendError::PlanMismatch(format!(
                "plan uses KV blocks of {} tokens, the cache has {}",
                plan.block_size, layout.block_size
            )));
        }
        if let Some(&bad) = plan.block_tables.iter().find(|&&b| b != u32::MAX && b as usize >= layout.num_blocks) {
            return Err(BackendError::PlanMismatch(format!("KV block {bad} does not exist")));
        }
        if let Some(&bad) = plan.token_ids.iter().find(|&&t| t as usize >= self.config.vocab_size) {
            return Err(BackendError::PlanMismatch(format!("token id {bad} is outside the vocabulary")));
        }
        let needed = plan.num_logits() * self.config.vocab_size;
        if logits.len() < needed {
            return Err(BackendError::LogitsBuffer { got: logits.len(), needed });
        }
        if let Some(&(source, destination)) =
            plan.block_copies.iter().find(|&&(s, d)| s as usize >= layout.num_blocks || d as usize >= layout.num_blocks)
        {
            return Err(BackendError::PlanMismatch(format!("KV block copy {source} → {destination} is out of range")));
        }
        for rank in &mut self.ranks {
            for &(source, destination) in &plan.block_copies {
                rank.kv.copy_block(source as usize, destination as usize);
            }
        }
        let CpuBackend { ranks, collective, inv_freq, isa, .. } = self;
        let (isa, inv_freq, collective) = (*isa, &*inv_freq, &*collective);
        let logits = &mut logits[..needed];
        if let [rank] = ranks.as_mut_slice() {
            // The whole step runs on a pool thread: the ops' parallel loops then fork and join
            // among threads that are already awake, instead of each waking the pool from outside.
            let Rank { config, weights, kv, workspace } = rank;
            rayon::scope(|_| {
                forward::forward(isa, config, weights, inv_freq, kv, workspace, plan, &|_| {}, Some(logits))
            });
            return Ok(());
        }
        // Each rank on a thread of its own, outside the pool: a rank waiting for the others in an
        // all-reduce then never holds a pool thread the others' matmuls need. Rank 0 computes the
        // logits.
        let mut logits = Some(logits);
        std::thread::scope(|scope| {
            for (index, rank) in ranks.iter_mut().enumerate() {
                let logits_out = if index == 0 { logits.take() } else { None };
                scope.spawn(move || {
                    let Rank { config, weights, kv, workspace } = rank;
                    let all_reduce = |values: &mut [f32]| collective.all_reduce_sum(index, values);
                    forward::forward(isa, config, weights, inv_freq, kv, workspace, plan, &all_reduce, logits_out);
                });
            }
        });
        Ok(())
    }
}
