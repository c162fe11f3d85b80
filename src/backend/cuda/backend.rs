//! `CudaBackend`: the `Backend` the engine drives, over the executor (one per tensor-parallel
//! rank). Besides `execute` (logits back to the host, like the CPU backend), `execute_and_sample`
//! keeps the logits on the GPU and returns only the sampled ids (and asked-for log-probabilities).

use super::device::{Dtype, Gpu};
use super::executor::{Executor, ExecutorOptions};
use super::params::{self, PenaltyEntry, SampleRow};
use super::sampling::SampleOutput;
use super::tensor_parallel::{self, Transport};
use super::weights::DeviceWeights;
use super::CudaError;
use crate::backend::plan::{PlanLimits, StepPlan};
use crate::backend::sampling::{self as backend_sampling, HistoryEntry, RowSampling, SampledRows};
use crate::backend::sharding::rank_config;
use crate::backend::{Backend, BackendError, KvLayout};
use crate::model::random::random_llama_weights;
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

// Every row the engine may hand over fits the kernel's alternatives buffer.
const _: () = assert!(params::MAX_TOP_LOGPROBS >= backend_sampling::MAX_TOP_LOGPROBS);

pub struct CudaBackend {
    /// The whole model's geometry (what the engine sees; a rank's executor has its share).
    config: ModelConfig,
    /// Rank 0 first, the one that computes logits and samples; one rank without tensor
    /// parallelism.
    ranks: Vec<Executor>,
    /// `execute_and_sample`'s rows and history entries as the kernel reads them, kept between
    /// steps.
    kernel_rows: Vec<SampleRow>,
    kernel_entries: Vec<PenaltyEntry>,
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
        let gpu = Gpu::new(0)?;
        let kv_bytes = tensor_parallel::kv_cache_bytes(&config, layout, options.dtype);
        let needed = tensor_parallel::rank_bytes(&config, layout, options.dtype);
        let (free, _) = gpu.memory_info()?;
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
            config.clone(),
            device_weights,
            layout,
            limits,
            ExecutorOptions { dtype: options.dtype, graphs: options.graphs },
        )?;
        Ok(CudaBackend::over_ranks(config, vec![executor], limits))
    }

    /// The model split over `ranks` tensor-parallel ranks that meet through `transport` (see
    /// `tensor_parallel`): each rank an executor with its shard of the weights and of every KV
    /// block, rank 0 computing the logits. One rank is exactly [`CudaBackend::new`].
    ///
    /// `WeightSource::RandomSeed` is generated on the host (`random_llama_weights`, the values
    /// the device generator makes) and sharded like loaded weights: one path for every source,
    /// at the cost of the whole model in host memory once at start-up.
    pub fn tensor_parallel(
        config: ModelConfig,
        weights: WeightSource<'_>,
        layout: KvLayout,
        limits: PlanLimits,
        options: CudaOptions,
        ranks: usize,
        transport: Transport,
    ) -> Result<CudaBackend, CudaError> {
        if ranks == 1 {
            return CudaBackend::new(config, weights, layout, limits, options);
        }
        let rank_geometry = rank_config(&config, ranks)?;
        let generated;
        let host = match weights {
            WeightSource::Host(host) => host,
            WeightSource::RandomSeed(seed) => {
                let dtype = if options.dtype == Dtype::Bf16 { WeightDtype::Bf16 } else { WeightDtype::F16 };
                generated = random_llama_weights(&config, seed, dtype);
                &generated
            }
        };
        let executor_options = ExecutorOptions { dtype: options.dtype, graphs: options.graphs };
        let executors =
            tensor_parallel::rank_executors(&config, host, layout, limits, executor_options, ranks, transport)?;
        tracing::info!(
            "CUDA backend over {ranks} tensor-parallel ranks ({transport:?}) on {}: {:.2} GiB of {:?} weights and KV \
             cache per rank, KV cache of {} tokens",
            executors.iter().map(|e| e.gpu().info.name.as_str()).collect::<Vec<_>>().join(", "),
            tensor_parallel::rank_bytes(&rank_geometry, layout, options.dtype) as f64 / (1u64 << 30) as f64,
            options.dtype,
            layout.capacity_tokens(),
        );
        Ok(CudaBackend::over_ranks(config, executors, limits))
    }

    fn over_ranks(config: ModelConfig, ranks: Vec<Executor>, limits: PlanLimits) -> CudaBackend {
        let max_seqs = limits.max_seqs;
        CudaBackend { config, ranks, kernel_rows: Vec::with_capacity(max_seqs), kernel_entries: Vec::new() }
    }

    /// Rank 0's executor (the only one without tensor parallelism).
    pub fn executor(&self) -> &Executor {
        &self.ranks[0]
    }

    pub fn tensor_parallel_ranks(&self) -> usize {
        self.ranks.len()
    }

    /// Every rank's executor, rank 0 first.
    pub fn rank_executors(&self) -> &[Executor] {
        &self.ranks
    }

    /// One step's forward pass on every rank. Ranks 1.. run on threads of their own, rank 0 on
    /// the caller's, which then reads or samples its logits: each rank's launches (hundreds a
    /// step) and all-reduces are issued by its own thread, as NCCL without groups needs (see
    /// `nccl`). The threads are spawned per step, tens of microseconds against a step of
    /// milliseconds.
    fn forward(&mut self, plan: &StepPlan) -> Result<(), CudaError> {
        let (first, rest) = self.ranks.split_first_mut().expect("a backend has at least one rank");
        if rest.is_empty() {
            return first.forward(plan);
        }
        std::thread::scope(|scope| {
            let others: Vec<_> = rest
                .iter_mut()
                .map(|rank| {
                    scope.spawn(move || {
                        rank.forward(plan)?;
                        // The rank's pinned plan buffer is rewritten next step: its copy must be done.
                        rank.gpu().synchronize()
                    })
                })
                .collect();
            let mut result = first.forward(plan);
            for other in others {
                let other = other.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                result = result.and(other);
            }
            result
        })
    }

    /// Runs a step and samples its logits rows on the GPU with the kernel's own row structs (see
    /// `Executor::sample`); the `Backend` method converts its rows to these.
    pub fn execute_and_sample_rows(
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
        self.forward(plan)?;
        self.ranks[0].sample(rows, penalties, mask)
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn kv_layout(&self) -> KvLayout {
        self.ranks[0].kv_layout()
    }

    fn execute(&mut self, plan: &StepPlan, logits: &mut [f32]) -> Result<(), BackendError> {
        self.ranks[0].check_plan(plan).map_err(BackendError::PlanMismatch)?;
        let needed = plan.num_logits() * self.config().vocab_size;
        if logits.len() < needed {
            return Err(BackendError::LogitsBuffer { got: logits.len(), needed });
        }
        self.forward(plan)?;
        Ok(self.ranks[0].read_logits(plan.num_logits(), logits)?)
    }

    fn samples_on_device(&self) -> bool {
        true
    }

    fn execute_and_sample(
        &mut self,
        plan: &StepPlan,
        rows: &[RowSampling],
        history: &[HistoryEntry],
        masks: &[u32],
        out: &mut SampledRows,
    ) -> Result<(), BackendError> {
        self.ranks[0].check_plan(plan).map_err(BackendError::PlanMismatch)?;
        let vocab = self.config().vocab_size;
        check_sampling(rows, history, masks, plan.num_logits(), vocab).map_err(BackendError::PlanMismatch)?;
        self.kernel_rows.clear();
        self.kernel_rows.extend(rows.iter().map(SampleRow::from));
        self.kernel_entries.clear();
        self.kernel_entries.extend(history.iter().map(PenaltyEntry::from));
        self.forward(plan)?;
        let sampled = self.ranks[0].sample(&self.kernel_rows, &self.kernel_entries, masks)?;
        out.clear();
        for (r, row) in rows.iter().enumerate() {
            let top = if row.top_logprobs > 0 {
                let start = r * params::MAX_TOP_LOGPROBS;
                &sampled.top[start..start + row.top_logprobs.min(vocab)]
            } else {
                &[]
            };
            out.push(
                sampled.tokens[r],
                row.want_logprob.then(|| sampled.logprobs[r]),
                top.iter().map(|t| (t.token, t.logprob)),
            );
        }
        Ok(())
    }
}

/// The kernel indexes history entries, mask rows and logits by what the rows say: anything out
/// of range is refused here, before it reaches the device.
fn check_sampling(
    rows: &[RowSampling],
    history: &[HistoryEntry],
    masks: &[u32],
    num_logits: usize,
    vocab: usize,
) -> Result<(), String> {
    if rows.len() != num_logits {
        return Err(format!("{} sampling rows for {num_logits} logits rows", rows.len()));
    }
    let mask_rows = masks.len() / backend_sampling::mask_words(vocab);
    for (r, row) in rows.iter().enumerate() {
        if row.history().end > history.len() {
            return Err(format!("row {r}: history {:?} beyond {} entries", row.history(), history.len()));
        }
        if row.mask_row.is_some_and(|m| m >= mask_rows) {
            return Err(format!("row {r}: mask row {:?} beyond {mask_rows} rows", row.mask_row));
        }
        if row.top_logprobs > backend_sampling::MAX_TOP_LOGPROBS {
            return Err(format!(
                "row {r}: {} top log-probabilities, at most {}",
                row.top_logprobs,
                backend_sampling::MAX_TOP_LOGPROBS
            ));
        }
    }
    if let Some(e) = history.iter().find(|e| e.token as usize >= vocab) {
        return Err(format!("history token {} is outside the vocabulary of {vocab}", e.token));
    }
    Ok(())
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
    cuda_backend_tensor_parallel(config, weights, limits, options, 1, Transport::Nccl)
}

/// [`cuda_backend`] over `ranks` tensor-parallel ranks; `limits.kv_tokens` is the tokens every
/// rank holds (each its own KV heads of them). Sized automatically, the KV cache takes 90% of
/// what the fullest rank's GPU has left after its weights and activations.
pub fn cuda_backend_tensor_parallel(
    config: ModelConfig,
    weights: WeightSource<'_>,
    limits: CudaLimits,
    options: CudaOptions,
    ranks: usize,
    transport: Transport,
) -> Result<(CudaBackend, PlanLimits), CudaError> {
    let block_size = crate::backend::KV_BLOCK_SIZE;
    let rank = rank_config(&config, ranks)?;
    let kv_token_bytes = 2 * rank.num_layers * rank.kv_dim() * options.dtype.size_bytes();
    let kv_tokens = match limits.kv_tokens {
        Some(tokens) => tokens,
        None => {
            super::cuda_available().map_err(CudaError::Unavailable)?;
            let free = tensor_parallel::free_bytes_per_rank(transport, ranks)?;
            let h = rank.hidden_size;
            let activations = limits.max_batch_tokens * (h * 12 + rank.intermediate_size * 6 + rank.q_dim() * 6)
                + limits.max_seqs * rank.vocab_size * 12;
            let left = free.saturating_sub(DeviceWeights::total_bytes(&rank, options.dtype) + activations);
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
    let backend = CudaBackend::tensor_parallel(config, weights, layout, plan_limits, options, ranks, transport)?;
    Ok((backend, plan_limits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_rows_that_point_outside_their_step_are_refused() {
        let vocab = 70; // 3 mask words a row
        let history = [HistoryEntry { token: 3, generated_count: 1, seen: false, bias: 0.0 }; 4];
        let masks = [u32::MAX; 6];
        let row = |history_start, history_len, mask_row| RowSampling {
            history_start,
            history_len,
            mask_row,
            ..RowSampling::greedy()
        };
        let fine = [row(0, 2, Some(1)), row(2, 2, None), row(4, 0, Some(0))];
        assert_eq!(check_sampling(&fine, &history, &masks, 3, vocab), Ok(()));
        let refused = |rows: &[RowSampling], history: &[HistoryEntry], num_logits| {
            check_sampling(rows, history, &masks, num_logits, vocab).unwrap_err()
        };
        assert!(refused(&fine, &history, 2).contains("3 sampling rows for 2"));
        assert!(refused(&[row(3, 2, None)], &history, 1).contains("history 3..5"));
        assert!(refused(&[row(0, 0, Some(2))], &history, 1).contains("mask row"));
        let too_many = RowSampling { top_logprobs: backend_sampling::MAX_TOP_LOGPROBS + 1, ..RowSampling::greedy() };
        assert!(refused(&[too_many], &history, 1).contains("top log-probabilities"));
        let outside = [HistoryEntry { token: 70, generated_count: 1, seen: true, bias: 2.0 }];
        assert!(refused(&[row(0, 1, None)], &outside, 1).contains("outside the vocabulary"));
    }
}
