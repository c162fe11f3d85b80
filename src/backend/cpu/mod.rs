//! The CPU backend: the Llama forward pass composed from the fast kernels in `kernels` (tested
//! against the reference ops in `crate::ops`), over a KV cache and activation buffers allocated
//! once at start-up, with the work of each op split over rayon's global pool.

mod forward;
pub mod kernels;
mod kv_cache;
mod workspace;

pub use kv_cache::CpuKvCache;

use crate::backend::plan::{PlanLimits, StepPlan};
use crate::model::weights::LlamaWeights;
use crate::model::ModelConfig;

use super::{Backend, BackendError, KvLayout};
use workspace::Workspace;

pub struct CpuBackend {
    config: ModelConfig,
    weights: LlamaWeights,
    kv: CpuKvCache,
    limits: PlanLimits,
    workspace: Workspace,
    inv_freq: Vec<f32>,
    isa: kernels::Isa,
}

impl CpuBackend {
    /// Allocates the KV cache (`layout`) and the activations for the largest step (`limits`).
    pub fn new(config: ModelConfig, weights: LlamaWeights, layout: KvLayout, limits: PlanLimits) -> CpuBackend {
        let kv = CpuKvCache::new(&config, layout);
        let workspace = Workspace::new(&config, limits.max_batch_tokens);
        let inv_freq = crate::ops::rope::rope_inv_freq(&config);
        CpuBackend { config, weights, kv, limits, workspace, inv_freq, isa: kernels::Isa::best() }
    }

    /// The instruction set level the kernels run with.
    pub fn isa(&self) -> kernels::Isa {
        self.isa
    }

    pub fn weights(&self) -> &LlamaWeights {
        &self.weights
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
        self.kv.layout()
    }

    fn execute(&mut self, plan: &StepPlan, logits: &mut [f32]) -> Result<(), BackendError> {
        if plan.limits.max_batch_tokens > self.limits.max_batch_tokens {
            return Err(BackendError::PlanMismatch(format!(
                "plan allows {} tokens per step, the backend was sized for {}",
                plan.limits.max_batch_tokens, self.limits.max_batch_tokens
            )));
        }
        if plan.block_size != self.kv.layout().block_size {
            return Err(BackendError::PlanMismatch(format!(
                "plan uses KV blocks of {} tokens, the cache has {}",
                plan.block_size,
                self.kv.layout().block_size
            )));
        }
        if let Some(&bad) =
            plan.block_tables.iter().find(|&&b| b != u32::MAX && b as usize >= self.kv.layout().num_blocks)
        {
            return Err(BackendError::PlanMismatch(format!("KV block {bad} does not exist")));
        }
        if let Some(&bad) = plan.token_ids.iter().find(|&&t| t as usize >= self.config.vocab_size) {
            return Err(BackendError::PlanMismatch(format!("token id {bad} is outside the vocabulary")));
        }
        let needed = plan.num_logits() * self.config.vocab_size;
        if logits.len() < needed {
            return Err(BackendError::LogitsBuffer { got: logits.len(), needed });
        }
        if let Some(&(source, destination)) = plan
            .block_copies
            .iter()
            .find(|&&(s, d)| s as usize >= self.kv.layout().num_blocks || d as usize >= self.kv.layout().num_blocks)
        {
            return Err(BackendError::PlanMismatch(format!("KV block copy {source} → {destination} is out of range")));
        }
        for &(source, destination) in &plan.block_copies {
            self.kv.copy_block(source as usize, destination as usize);
        }
        let CpuBackend { config, weights, kv, workspace, inv_freq, isa, .. } = self;
        let logits = &mut logits[..needed];
        // The whole step runs on a pool thread: the ops' parallel loops then fork and join among
        // threads that are already awake, instead of each waking the pool from outside.
        rayon::scope(|_| forward::forward(*isa, config, weights, inv_freq, kv, workspace, plan, logits));
        Ok(())
    }
}
