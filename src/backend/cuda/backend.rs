//! `CudaBackend`: the `Backend` the engine drives, over the executor. Besides `execute` (logits
//! back to the host, like the CPU backend), `execute_and_sample` keeps the logits on the GPU and
//! returns only the sampled ids.

use super::device::{Dtype, Gpu};
use super::executor::{Executor, ExecutorOptions};
use super::params::{PenaltyEntry, SampleRow};
use super::sampler::SampleOutput;
use super::weights::DeviceWeights;
use super::CudaError;
use crate::backend::{Backend, BackendError, KvLayout};
use crate::engine::plan::{PlanLimits, StepPlan};
use crate::model::safetensors_dir::WeightDtype;
use crate::model::weights::LlamaWeights;
use crate::model::ModelConfig;

/// Start-up choices of the CUDA backend.
#[derive(Debug, Clone, Copy)]
pub struct CudaOptions {
    /// Activation and weight dtype on the GPU (f16 or bf16).
    pub dtype: Dtype,
    /// Capture decode steps as CUDA graphs.
    pub graphs: bool,
}

impl CudaOptions {
    /// f16 for f16 and f32 checkpoints, bf16 for bf16 ones (its range is the model's own).
    pub fn for_weights(weights: WeightDtype) -> CudaOptions {
        let dtype = if weights == WeightDtype::Bf16 { Dtype::Bf16 } else { Dtype::F16 };
        CudaOptions { dtype, graphs: true }
    }
}

/// Where the backend's weights come from.
pub enum WeightSource<'a> {
    /// Host weights (loaded files or `random_llama_weights`), copied to the device.
    Host(&'a LlamaWeights),
    /// `random_llama_weights(config, seed, _)`'s values, generated on the device.
    RandomSeed(u64),
}

pub struct CudaBackend {
    executor: Executor,
}

impl CudaBackend {
    /// Opens the GPU, places the weights, and allocates the KV cache (`layout`), the activations of
    /// the largest step (`limits`) and the sampling buffers, once.
    pub fn new(
        config: ModelConfig,
        weights: WeightSource<'_>,
        layout: KvLayout,
        limits: PlanLimits,
        options: CudaOptions,
    ) -> Result<CudaBackend, CudaError> {
        let gpu = Gpu::new()?;
        let kv_bytes = 2 * config.num_layers * layout.capacity_tokens() * config.kv_dim() * options.dtype.size_bytes();
        let needed = DeviceWeights::total_bytes(&config, options.dtype) + kv_bytes;
        let (free, _) = cudarc::driver::result::mem_get_info()?;
        if needed > free {
            let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
            return Err(CudaError::ModelTooLarge { needed_gib: gib(needed), free_gib: gib(free) });
        }
        let device_weights = match weights {
            WeightSource::Host(host) => DeviceWeights::upload(&gpu, &config, host, options.dtype)?,
            WeightSource::RandomSeed(seed) => DeviceWeights::random(&gpu, &config, seed, options.dtype)?,
        };
        tracing::info!(
            "CUDA backend on {} ({} SMs): {:.2} GiB of {:?} weights, KV cache of {} tokens ({:.2} GiB)",
            gpu.info.name,
            gpu.info.multiprocessors,
            DeviceWeights::total_bytes(&config, options.dtype) as f64 / (1u64 << 30) as f64,
            options.dtype,
            layout.capacity_tokens(),
            kv_bytes as f64 / (1u64 << 30) as f64
        );
        let executor = Executor::new(
            gpu,
            config,
            device_weights,
            layout,
            limits,
            ExecutorOptions { dtype: options.dtype, graphs: options.graphs },
        )?;
        Ok(CudaBackend { executor })
    }

    pub fn executor(&self) -> &Executor {
        &self.executor
    }

    /// Runs a step and samples its logits rows on the GPU (see `Executor::sample`).
    pub fn execute_and_sample(
        &mut self,
        plan: &StepPlan,
        rows: &[SampleRow],
        penalties: &[PenaltyEntry],
        mask: &[u32],
    ) -> Result<SampleOutput<'_>, CudaError> {
        if rows.len() != plan.num_logits() {
            return Err(CudaError::Shape(format!(
                "{} sampling rows for {} logits rows",
                rows.len(),
                plan.num_logits()
            )));
        }
        self.executor.forward(plan)?;
        self.executor.sample(rows, penalties, mask)
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn config(&self) -> &ModelConfig {
        self.executor.config()
    }

    fn kv_layout(&self) -> KvLayout {
        self.executor.kv_layout()
    }

    fn execute(&mut self, plan: &StepPlan, logits: &mut [f32]) -> Result<(), BackendError> {
        self.executor.check_plan(plan).map_err(BackendError::PlanMismatch)?;
        let needed = plan.num_logits() * self.config().vocab_size;
        if logits.len() < needed {
            return Err(BackendError::LogitsBuffer { got: logits.len(), needed });
        }
        self.executor.forward(plan)?;
        Ok(self.executor.read_logits(plan.num_logits(), logits)?)
    }
}

impl From<CudaError> for BackendError {
    /// Shape and support errors are a plan the executor cannot run; everything else is the
    /// device failing.
    fn from(error: CudaError) -> BackendError {
        match error {
            CudaError::Shape(message) => BackendError::PlanMismatch(message),
            CudaError::Unsupported(message) => {
                BackendError::PlanMismatch(format!("not supported by the CUDA backend: {message}"))
            }
            other => BackendError::Device { backend: "cuda", message: other.to_string() },
        }
    }
}

/// Sizes of a CUDA backend, as `launch::CpuLimits` for the CPU one.
#[derive(Debug, Clone, Copy)]
pub struct CudaLimits {
    /// Tokens the KV cache holds; None: what fits in 90% of the GPU memory left after the weights
    /// and activations (capped at 1M tokens).
    pub kv_tokens: Option<usize>,
    pub max_batch_tokens: usize,
    pub max_seqs: usize,
}

impl Default for CudaLimits {
    fn default() -> Self {
        CudaLimits { kv_tokens: None, max_batch_tokens: 2048, max_seqs: 64 }
    }
}

/// Builds a CUDA backend the way `launch::cpu_backend` builds a CPU one (same KV block size and
/// plan limits), for `--backend cuda|auto` and `kiln bench`.
pub fn cuda_backend(
    config: ModelConfig,
    weights: WeightSource<'_>,
    limits: CudaLimits,
    options: CudaOptions,
) -> Result<(CudaBackend, PlanLimits), CudaError> {
    let block_size = crate::launch::KV_BLOCK_SIZE;
    let kv_token_bytes = 2 * config.num_layers * config.kv_dim() * options.dtype.size_bytes();
    let kv_tokens = match limits.kv_tokens {
        Some(tokens) => tokens,
        None => {
            super::cuda_available().map_err(CudaError::Unavailable)?;
            let ctx = cudarc::driver::CudaContext::new(0)?;
            let (free, _) = ctx.mem_get_info()?;
            let h = config.hidden_size;
            let activations = limits.max_batch_tokens * (h * 12 + config.intermediate_size * 6 + config.q_dim() * 6)
                + limits.max_seqs * config.vocab_size * 12;
            let left = free.saturating_sub(DeviceWeights::total_bytes(&config, options.dtype) + activations);
            (left / 10 * 9 / kv_token_bytes.max(1)).min(1 << 20)
        }
    };
    let num_blocks = kv_tokens.div_ceil(block_size).max(1);
    let layout = KvLayout { block_size, num_blocks };
    let max_tokens_per_seq = config.max_position_embeddings.min(layout.capacity_tokens());
    let plan_limits = PlanLimits {
        max_batch_tokens: limits.max_batch_tokens,
        max_seqs: limits.max_seqs,
        max_blocks_per_seq: max_tokens_per_seq.div_ceil(block_size),
    };
    Ok((CudaBackend::new(config, weights, layout, plan_limits, options)?, plan_limits))
}
