//! The static-graph executor: every buffer sized once from the plan limits, a step's kernel
//! launches built from fixed addresses, and each decode batch bucket captured once as a CUDA
//! graph and replayed. Prefill and mixed steps run the same launches without capture.
//!
//! A step: pack the plan's arrays into pinned memory, one copy to the device, then launches (or a
//! graph replay). Decode steps are padded to their bucket with tokens whose sequence is KILN_NONE,
//! which the KV write and attention skip. Nothing here allocates device memory or synchronises
//! the host; the caller's read of logits or sampled ids is the step's one synchronisation.
//!
//! A tensor-parallel rank (`join_group`) runs the same launches over its shard, with the
//! all-reduces of its group between them (captured into its graphs when the collective allows);
//! only rank 0 computes logits.

use std::sync::Arc;

use cudarc::driver::CudaGraph;

use super::attention;
use super::collective::DeviceCollective;
use super::device::{DeviceBuffer, Dtype, Gpu, PinnedBuffer};
use super::embedding;
use super::forward::{self, Activations, AttentionMode, KernelSet, Model, StepOp};
use super::gemm;
use super::params::{PenaltyEntry, SampleRow, KILN_NONE};
use super::rmsnorm;
use super::rope::{self, DevicePlan, KvGeometry};
use super::sampling;
use super::sampling::{GpuSampler, SampleOutput};
use super::silu_mul;
use super::weights::DeviceWeights;
use super::CudaError;
use crate::backend::plan::{PlanLimits, StepPlan};
use crate::backend::KvLayout;
use crate::model::ModelConfig;

/// Where each plan array sits in the one u32 plan buffer (host pinned and device).
#[derive(Debug, Clone, Copy)]
struct PlanLayout {
    token_ids: usize,
    positions: usize,
    token_seq: usize,
    seq_token_start: usize,
    seq_token_count: usize,
    block_tables: usize,
    logit_tokens: usize,
    total: usize,
}

impl PlanLayout {
    fn new(limits: PlanLimits) -> PlanLayout {
        let (t, s) = (limits.max_batch_tokens, limits.max_seqs);
        let mut at = 0;
        let mut take = |n: usize| {
            let start = at;
            at += n.div_ceil(4) * 4; // keep every array 16-byte aligned
            start
        };
        let token_ids = take(t);
        let positions = take(t);
        let token_seq = take(t);
        let seq_token_start = take(s);
        let seq_token_count = take(s);
        let block_tables = take(s * limits.max_blocks_per_seq);
        let logit_tokens = take(t);
        PlanLayout {
            token_ids,
            positions,
            token_seq,
            seq_token_start,
            seq_token_count,
            block_tables,
            logit_tokens,
            total: at,
        }
    }
}

/// A captured decode step.
struct BucketGraph(CudaGraph);

// SAFETY: a CUDA graph may be launched from any thread as long as calls on it are serialised;
// the executor is used through &mut self only, one thread at a time.
unsafe impl Send for BucketGraph {}

/// Options fixed at start-up.
#[derive(Debug, Clone, Copy)]
pub struct ExecutorOptions {
    pub dtype: Dtype,
    /// Capture decode steps as CUDA graphs (off: plain launches, for debugging).
    pub graphs: bool,
}

pub struct Executor {
    gpu: Gpu,
    config: ModelConfig,
    limits: PlanLimits,
    layout: KvLayout,
    geometry: KvGeometry,
    weights: DeviceWeights,
    k_cache: DeviceBuffer, // [layers, num_blocks, kv_heads, block_size, head_dim] T
    v_cache: DeviceBuffer,
    inv_freq: DeviceBuffer,
    acts: Activations,
    kernels: KernelSet,
    plan_layout: PlanLayout,
    plan_host: PinnedBuffer,
    plan_device: DeviceBuffer,
    buckets: Vec<usize>,
    graphs: Vec<Option<BucketGraph>>,
    launches: Vec<StepOp>,
    options: ExecutorOptions,
    sampler: GpuSampler,
    /// This executor's rank and collective under tensor parallelism; None alone.
    group: Option<RankGroup>,
}

struct RankGroup {
    rank: usize,
    collective: Arc<dyn DeviceCollective>,
}

/// The decode batch sizes that get their own graph: powers of two, then the largest batch.
fn decode_buckets(max_decode: usize) -> Vec<usize> {
    let mut buckets: Vec<usize> =
        std::iter::successors(Some(1usize), |b| Some(b * 2)).take_while(|&b| b < max_decode).collect();
    buckets.push(max_decode.max(1));
    buckets
}

impl Executor {
    pub fn new(
        gpu: Gpu,
        config: ModelConfig,
        weights: DeviceWeights,
        layout: KvLayout,
        limits: PlanLimits,
        options: ExecutorOptions,
    ) -> Result<Executor, CudaError> {
        let dtype = options.dtype;
        if !matches!(dtype, Dtype::F16 | Dtype::Bf16) {
            return Err(CudaError::Unsupported(format!("activations in {dtype:?}; use f16 or bf16")));
        }
        if weights.dtype != dtype {
            return Err(CudaError::Shape(format!("weights are {:?}, the executor runs {dtype:?}", weights.dtype)));
        }
        let h = config.hidden_size;
        let (q_dim, kv_dim, ffn, vocab) =
            (config.q_dim(), config.kv_dim(), config.intermediate_size, config.vocab_size);
        for (what, size) in [("hidden_size", h), ("intermediate_size", ffn), ("q_dim", q_dim), ("kv_dim", kv_dim)] {
            if size % 8 != 0 {
                return Err(CudaError::Unsupported(format!("{what} {size} is not a multiple of 8")));
            }
        }
        let geometry = KvGeometry {
            num_heads: config.num_heads,
            num_kv_heads: config.num_kv_heads,
            head_dim: config.head_dim,
            block_size: layout.block_size,
            num_blocks: layout.num_blocks,
            max_blocks_per_seq: limits.max_blocks_per_seq,
        };
        let kernels = KernelSet {
            embedding: embedding::kernel(&gpu, dtype)?,
            rmsnorm: rmsnorm::kernel(&gpu, dtype)?,
            silu_mul: silu_mul::kernel(&gpu, dtype)?,
            rope_kv: rope::kernel(&gpu, dtype)?,
            gemm: gemm::kernels(&gpu, dtype)?,
            attention: attention::kernels(&gpu, dtype, config.head_dim)?,
            sample: sampling::kernel(&gpu)?,
        };
        let tokens = limits.max_batch_tokens;
        let rows = limits.max_seqs.max(1);
        let max_decode = limits.max_seqs.min(limits.max_batch_tokens).max(1);
        let buckets = decode_buckets(max_decode);
        let sms = gpu.info.multiprocessors;
        let partial_len = buckets
            .iter()
            .map(|&b| {
                attention::partial_len(
                    attention::decode_splits(b, config.num_heads, sms),
                    b,
                    config.num_heads,
                    config.head_dim,
                )
            })
            .max()
            .unwrap_or(0);
        let cache_len = config.num_layers * geometry.cache_len();
        let acts = Activations {
            hidden: gpu.alloc(Dtype::F32, tokens * h)?,
            proj: gpu.alloc(Dtype::F32, tokens * h)?,
            normed: gpu.alloc(dtype, tokens * h)?,
            qkv: gpu.alloc(dtype, tokens * (q_dim + 2 * kv_dim))?,
            q: gpu.alloc(dtype, tokens * q_dim)?,
            attn: gpu.alloc(dtype, tokens * q_dim)?,
            gate_up: gpu.alloc(dtype, tokens * 2 * ffn)?,
            act: gpu.alloc(dtype, tokens * ffn)?,
            last_normed: gpu.alloc(dtype, rows * h)?,
            logits: gpu.alloc(Dtype::F32, rows * vocab)?,
            partial: gpu.alloc(Dtype::F32, partial_len.max(1))?,
        };
        let k_cache = gpu.alloc(dtype, cache_len)?;
        let v_cache = gpu.alloc(dtype, cache_len)?;
        // Zeroed once so that never-written slots hold finite values.
        gpu.memset(k_cache.array(), 0)?;
        gpu.memset(v_cache.array(), 0)?;
        gpu.memset(acts.hidden.array(), 0)?;
        gpu.memset(acts.proj.array(), 0)?;
        let inv_freq = gpu.upload_f32(&crate::ops::rope::rope_inv_freq(&config))?;
        let plan_layout = PlanLayout::new(limits);
        let plan_host = gpu.alloc_pinned(plan_layout.total * 4)?;
        let plan_device = gpu.alloc(Dtype::U32, plan_layout.total)?;
        gpu.memset(plan_device.array(), 0)?;

        // Each row's entries: at most one per distinct token of its sequence, plus its biased ones.
        let entries_per_row = limits.max_blocks_per_seq * layout.block_size + crate::backend::sampling::MAX_LOGIT_BIAS;
        let sampler = GpuSampler::new(&gpu, rows, rows * entries_per_row, vocab)?;
        gpu.synchronize()?;
        let graphs = buckets.iter().map(|_| None).collect();
        Ok(Executor {
            gpu,
            config,
            limits,
            layout,
            geometry,
            weights,
            k_cache,
            v_cache,
            inv_freq,
            acts,
            kernels,
            plan_layout,
            plan_host,
            plan_device,
            buckets,
            graphs,
            launches: Vec::with_capacity(32 * 12),
            options,
            sampler,
            group: None,
        })
    }

    /// Makes this executor rank `rank` of a tensor-parallel group: its weights and KV cache are
    /// the rank's shard, its steps all-reduce the partial sums with `collective`, and only rank 0
    /// computes logits (the others' logits and samples are meaningless).
    pub fn join_group(&mut self, rank: usize, collective: Arc<dyn DeviceCollective>) -> Result<(), CudaError> {
        if rank >= collective.world_size() {
            return Err(CudaError::Shape(format!("rank {rank} of a group of {}", collective.world_size())));
        }
        if self.options.graphs && !collective.capturable() {
            return Err(CudaError::Unsupported(
                "CUDA graphs with a collective that synchronises the host (the host-staged one): turn graphs off"
                    .into(),
            ));
        }
        self.group = Some(RankGroup { rank, collective });
        Ok(())
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn kv_layout(&self) -> KvLayout {
        self.layout
    }

    pub fn limits(&self) -> PlanLimits {
        self.limits
    }

    fn device_plan(&self) -> DevicePlan {
        let a = self.plan_device.array();
        let l = self.plan_layout;
        let (t, s) = (self.limits.max_batch_tokens, self.limits.max_seqs);
        DevicePlan {
            token_ids: a.slice(l.token_ids, t),
            positions: a.slice(l.positions, t),
            token_seq: a.slice(l.token_seq, t),
            seq_token_start: a.slice(l.seq_token_start, s),
            seq_token_count: a.slice(l.seq_token_count, s),
            block_tables: a.slice(l.block_tables, s * self.limits.max_blocks_per_seq),
            logit_tokens: a.slice(l.logit_tokens, t),
        }
    }

    /// Checks a plan against the sizes this executor was built for.
    pub fn check_plan(&self, plan: &StepPlan) -> Result<(), String> {
        let l = self.limits;
        if plan.limits.max_batch_tokens > l.max_batch_tokens
            || plan.limits.max_seqs > l.max_seqs
            || plan.limits.max_blocks_per_seq != l.max_blocks_per_seq
        {
            return Err(format!("plan limits {:?} do not fit the backend's {:?}", plan.limits, l));
        }
        if plan.block_size != self.layout.block_size {
            return Err(format!(
                "plan uses KV blocks of {} tokens, the cache has {}",
                plan.block_size, self.layout.block_size
            ));
        }
        if let Some(&bad) = plan.block_tables.iter().find(|&&b| b != u32::MAX && b as usize >= self.layout.num_blocks) {
            return Err(format!("KV block {bad} does not exist"));
        }
        if let Some(&bad) = plan.token_ids.iter().find(|&&t| t as usize >= self.config.vocab_size) {
            return Err(format!("token id {bad} is outside the vocabulary"));
        }
        if let Some(&(source, destination)) = plan
            .block_copies
            .iter()
            .find(|&&(s, d)| s as usize >= self.layout.num_blocks || d as usize >= self.layout.num_blocks)
        {
            return Err(format!("KV block copy {source} → {destination} is out of range"));
        }
        if plan.num_logits() > l.max_seqs {
            return Err(format!("plan asks for {} logit rows, the backend holds {}", plan.num_logits(), l.max_seqs));
        }
        Ok(())
    }

    /// The bucket a decode step of `n` tokens runs in, or None when the step is not a pure decode
    /// step (one token per sequence, every token wanting logits, in order).
    fn decode_bucket(&self, plan: &StepPlan) -> Option<usize> {
        let n = plan.num_tokens();
        let decode = n > 0
            && plan.num_seqs() == n
            && plan.num_logits() == n
            && plan.logit_tokens.iter().enumerate().all(|(i, &t)| t as usize == i);
        if !decode {
            return None;
        }
        self.buckets.iter().position(|&b| b >= n)
    }

    /// Writes the plan into the pinned buffer, padded to `padded_tokens` tokens and logit rows.
    fn pack_plan(&mut self, plan: &StepPlan, padded_tokens: usize) {
        let l = self.plan_layout;
        let width = self.limits.max_blocks_per_seq;
        let words: &mut [u32] = bytemuck::cast_slice_mut(self.plan_host.as_mut_bytes());
        let fill = |words: &mut [u32], at: usize, values: &[u32], pad_to: usize, pad: u32| {
            words[at..at + values.len()].copy_from_slice(values);
            words[at + values.len()..at + pad_to.max(values.len())].fill(pad);
        };
        fill(words, l.token_ids, &plan.token_ids, padded_tokens, 0);
        fill(words, l.positions, &plan.positions, padded_tokens, 0);
        fill(words, l.token_seq, &plan.token_seq, padded_tokens, KILN_NONE);
        fill(words, l.seq_token_start, &plan.seq_token_start, 0, 0);
        fill(words, l.seq_token_count, &plan.seq_token_count, 0, 0);
        let tables = plan.num_seqs() * width;
        words[l.block_tables..l.block_tables + tables].copy_from_slice(&plan.block_tables[..tables]);
        fill(words, l.logit_tokens, &plan.logit_tokens, padded_tokens.max(plan.num_logits()), 0);
    }

    /// Runs the forward pass of one step; the logits of its `num_logits()` rows are then on the
    /// device (read them with `read_logits`, or sample with `sample`). Asynchronous: the plan
    /// goes through a pinned buffer, so the caller reads logits or samples (which synchronise)
    /// before the next `forward`.
    pub fn forward(&mut self, plan: &StepPlan) -> Result<(), CudaError> {
        self.check_plan(plan).map_err(CudaError::Shape)?;
        self.copy_blocks(&plan.block_copies)?;
        if plan.num_tokens() == 0 {
            return Ok(());
        }
        match self.decode_bucket(plan) {
            Some(bucket_index) => {
                let bucket = self.buckets[bucket_index];
                self.pack_plan(plan, bucket);
                self.gpu.copy_to_device(self.plan_device.array(), self.plan_host.as_bytes())?;
                let splits = attention::decode_splits(bucket, self.config.num_heads, self.gpu.info.multiprocessors);
                if !self.options.graphs {
                    let mut launches = std::mem::take(&mut self.launches);
                    let result = self.build_launches(bucket, bucket, AttentionMode::Decode { splits }, &mut launches);
                    let result = result.and_then(|_| self.run(&launches));
                    self.launches = launches;
                    return result;
                }
                if self.graphs[bucket_index].is_none() {
                    let mut launches = Vec::new();
                    self.build_launches(bucket, bucket, AttentionMode::Decode { splits }, &mut launches)?;
                    self.graphs[bucket_index] = Some(BucketGraph(self.gpu.capture_with(|| self.run(&launches))?));
                }
                self.graphs[bucket_index].as_ref().expect("captured above").0.launch()?;
                Ok(())
            }
            None => {
                self.pack_plan(plan, plan.num_tokens());
                self.gpu.copy_to_device(self.plan_device.array(), self.plan_host.as_bytes())?;
                let n_seqs = plan.num_seqs();
                let max_seq_tokens = plan.seq_token_count.iter().copied().max().unwrap_or(0) as usize;
                let mode = AttentionMode::Prefill { n_seqs, max_seq_tokens };
                let mut launches = std::mem::take(&mut self.launches);
                let result = self.build_launches(plan.num_tokens(), plan.num_logits(), mode, &mut launches);
                let result = result.and_then(|_| self.run(&launches));
                self.launches = launches;
                result
            }
        }
    }

    /// Copy-on-write of shared KV blocks, every layer, ordered on the stream before the step:
    /// one block of one layer is contiguous (`[num_kv_heads, block_size, head_dim]`).
    fn copy_blocks(&self, copies: &[(u32, u32)]) -> Result<(), CudaError> {
        let block_len = self.geometry.num_kv_heads * self.geometry.block_size * self.geometry.head_dim;
        let cache_len = self.geometry.cache_len();
        for &(source, destination) in copies {
            for layer in 0..self.config.num_layers {
                for cache in [&self.k_cache, &self.v_cache] {
                    let layer_cache = cache.array().slice(layer * cache_len, cache_len);
                    let from = layer_cache.slice(source as usize * block_len, block_len);
                    let to = layer_cache.slice(destination as usize * block_len, block_len);
                    self.gpu.copy_device(to, from, from.bytes())?;
                }
            }
        }
        Ok(())
    }

    /// Copies the first `rows` rows of logits to the host. Synchronises even for no rows: the
    /// next step rewrites the pinned plan buffer this step's copy reads from.
    pub fn read_logits(&self, rows: usize, out: &mut [f32]) -> Result<(), CudaError> {
        let len = rows * self.config.vocab_size;
        if len > 0 {
            self.gpu.copy_to_host(bytemuck::cast_slice_mut(&mut out[..len]), self.acts.logits.array().slice(0, len))?;
        }
        self.gpu.synchronize()
    }

    /// Enqueues a forward pass's ops on the stream. Every rank builds its whole list before
    /// running any of it, so a shape error stops all ranks before their first all-reduce, where
    /// one rank's early return would leave the others waiting for it.
    fn run(&self, ops: &[StepOp]) -> Result<(), CudaError> {
        for op in ops {
            match op {
                StepOp::Kernel(launch) => self.gpu.launch(launch)?,
                StepOp::AllReduce(values) => {
                    let group = self.group.as_ref().expect("forward emits all-reduces only for a rank of a group");
                    group.collective.all_reduce_sum(group.rank, &self.gpu, *values)?
                }
            }
        }
        Ok(())
    }

    /// The launches of one forward pass over `n` tokens with `n_logits` logit rows (none on
    /// ranks other than 0: rank 0 alone computes logits).
    fn build_launches(
        &self,
        n: usize,
        n_logits: usize,
        mode: AttentionMode,
        out: &mut Vec<StepOp>,
    ) -> Result<(), CudaError> {
        let n_logits = if self.group.as_ref().is_some_and(|g| g.rank != 0) { 0 } else { n_logits };
        let model = Model {
            config: &self.config,
            weights: &self.weights,
            kernels: &self.kernels,
            acts: &self.acts,
            geometry: self.geometry,
            k_cache: self.k_cache.array(),
            v_cache: self.v_cache.array(),
            inv_freq: self.inv_freq.array(),
            all_reduce: self.group.is_some(),
        };
        forward::launches(&model, &self.device_plan(), n, n_logits, mode, out)
    }

    /// Samples one token for each of the first `rows.len()` logits rows on the GPU (after
    /// `forward`); see `GpuSampler::sample`. The call synchronises.
    pub fn sample(
        &mut self,
        rows: &[SampleRow],
        penalties: &[PenaltyEntry],
        mask: &[u32],
    ) -> Result<SampleOutput<'_>, CudaError> {
        let logits = self.acts.logits.array();
        self.sampler.sample(&self.gpu, &self.kernels.sample, logits, self.config.vocab_size, rows, penalties, mask)
    }

    pub fn weights(&self) -> &DeviceWeights {
        &self.weights
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_decode_batch() {
        assert_eq!(decode_buckets(1), vec![1]);
        assert_eq!(decode_buckets(16), vec![1, 2, 4, 8, 16]);
        assert_eq!(decode_buckets(48), vec![1, 2, 4, 8, 16, 32, 48]);
    }

    #[test]
    fn plan_arrays_are_aligned_and_disjoint() {
        let l = PlanLayout::new(PlanLimits { max_batch_tokens: 13, max_seqs: 3, max_blocks_per_seq: 5 });
        let starts = [
            l.token_ids,
            l.positions,
            l.token_seq,
            l.seq_token_start,
            l.seq_token_count,
            l.block_tables,
            l.logit_tokens,
        ];
        assert!(starts.iter().all(|s| s % 4 == 0));
        assert!(starts.windows(2).all(|w| w[0] < w[1]));
        assert!(l.logit_tokens + 13 <= l.total);
    }
}
