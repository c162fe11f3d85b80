//! The model's layer sequence on the GPU, the twin of `backend/cpu/forward.rs`: the launches of
//! one forward pass in order (embedding; per layer the input rmsnorm with the residual add, the
//! QKV projection, RoPE with the KV-cache write, attention, o_proj, the post-attention rmsnorm,
//! gate_up, silu_mul, down; then the final rmsnorm and the head over the logit rows only). The
//! executor owns the buffers and decides when these launches run or are captured.
//!
//! A tensor-parallel rank's o_proj and down_proj outputs are partial sums over its share of the
//! heads or features: an all-reduce follows each, before the next rmsnorm adds it to the
//! residual stream (the residual add lives in `rmsnorm_residual`).

use super::attention::{self, AttentionKernels};
use super::device::{DeviceArray, DeviceBuffer, Kernel, Launch};
use super::embedding;
use super::gemm::{self, GemmKernels, GemmVariant};
use super::rmsnorm;
use super::rope::{self, DevicePlan, KvGeometry};
use super::silu_mul;
use super::weights::DeviceWeights;
use super::CudaError;
use crate::model::ModelConfig;

/// Every kernel a forward step uses, resolved once.
pub(super) struct KernelSet {
    pub(super) embedding: Kernel,
    pub(super) rmsnorm: Kernel,
    pub(super) silu_mul: Kernel,
    pub(super) rope_kv: Kernel,
    pub(super) gemm: GemmKernels,
    pub(super) attention: AttentionKernels,
    pub(super) sample: Kernel,
}

/// Activations for the largest step (`max_batch_tokens` rows; logits for `max_seqs` rows).
pub(super) struct Activations {
    pub(super) hidden: DeviceBuffer,      // [tokens, hidden] f32 residual stream
    pub(super) proj: DeviceBuffer,        // [tokens, hidden] f32 output of o_proj / down_proj
    pub(super) normed: DeviceBuffer,      // [tokens, hidden] T
    pub(super) qkv: DeviceBuffer,         // [tokens, q_dim + 2 kv_dim] T
    pub(super) q: DeviceBuffer,           // [tokens, q_dim] T, roped
    pub(super) attn: DeviceBuffer,        // [tokens, q_dim] T
    pub(super) gate_up: DeviceBuffer,     // [tokens, 2 ffn] T
    pub(super) act: DeviceBuffer,         // [tokens, ffn] T
    pub(super) last_normed: DeviceBuffer, // [logit rows, hidden] T
    pub(super) logits: DeviceBuffer,      // [logit rows, vocab] f32
    pub(super) partial: DeviceBuffer,     // decode attention splits, f32
}

/// One thing a forward pass enqueues on the rank's stream.
#[derive(Clone, Copy)]
pub(super) enum StepOp {
    Kernel(Launch),
    /// Sum this f32 array over the tensor-parallel ranks, in place.
    AllReduce(DeviceArray),
}

/// Where `launches` writes its ops.
struct Ops<'a>(&'a mut Vec<StepOp>);

impl Ops<'_> {
    fn push(&mut self, launch: Launch) {
        self.0.push(StepOp::Kernel(launch));
    }

    fn extend(&mut self, launches: Vec<Launch>) {
        self.0.extend(launches.into_iter().map(StepOp::Kernel));
    }
}

/// How a step's attention runs.
#[derive(Debug, Clone, Copy)]
pub(super) enum AttentionMode {
    Decode { splits: usize },
    Prefill { n_seqs: usize, max_seq_tokens: usize },
}

/// What a forward pass reads and writes, borrowed from the executor.
pub(super) struct Model<'a> {
    pub config: &'a ModelConfig,
    pub weights: &'a DeviceWeights,
    pub kernels: &'a KernelSet,
    pub acts: &'a Activations,
    pub geometry: KvGeometry,
    /// `[layers, num_blocks, kv_heads, block_size, head_dim]`
    pub k_cache: DeviceArray,
    pub v_cache: DeviceArray,
    pub inv_freq: DeviceArray,
    /// A tensor-parallel rank: o_proj's and down_proj's outputs are partial sums to all-reduce.
    pub all_reduce: bool,
}

/// The launches of one forward pass over `n` tokens with `n_logits` logit rows, into `out`.
pub(super) fn launches(
    model: &Model,
    plan: &DevicePlan,
    n: usize,
    n_logits: usize,
    mode: AttentionMode,
    out: &mut Vec<StepOp>,
) -> Result<(), CudaError> {
    out.clear();
    let mut out = Ops(out);
    let c = model.config;
    let k = model.kernels;
    let a = model.acts;
    let h = c.hidden_size;
    let (q_dim, kv_dim, ffn) = (c.q_dim(), c.kv_dim(), c.intermediate_size);
    let qkv_dim = q_dim + 2 * kv_dim;
    let eps = c.rms_norm_eps;
    let auto = GemmVariant::Auto;
    let hidden = a.hidden.array().slice(0, n * h);
    let proj = a.proj.array().slice(0, n * h);
    let normed = a.normed.array().slice(0, n * h);
    let cache_len = model.geometry.cache_len();
    out.push(embedding::embedding(&k.embedding, model.weights.embed_tokens.array(), h, plan.token_ids, hidden, n)?);
    for (i, layer) in model.weights.layers.iter().enumerate() {
        let delta = if i == 0 { None } else { Some(proj) };
        out.push(rmsnorm::rmsnorm_residual(&k.rmsnorm, hidden, delta, layer.input_norm.array(), normed, None, n, eps)?);
        out.push(gemm::gemm(&k.gemm, auto, normed, layer.qkv.array(), a.qkv.array(), n, qkv_dim, h, false)?);
        let k_cache = model.k_cache.slice(i * cache_len, cache_len);
        let v_cache = model.v_cache.slice(i * cache_len, cache_len);
        out.push(rope::rope_kv_write(
            &k.rope_kv,
            model.geometry,
            a.qkv.array(),
            a.q.array(),
            k_cache,
            v_cache,
            model.inv_freq,
            plan,
            n,
        )?);
        match mode {
            AttentionMode::Decode { splits } => out.extend(attention::decode(
                &k.attention,
                model.geometry,
                a.q.array(),
                k_cache,
                v_cache,
                a.attn.array(),
                a.partial.array(),
                plan,
                n,
                splits,
                c.sliding_window,
            )?),
            AttentionMode::Prefill { n_seqs, max_seq_tokens } => out.push(attention::prefill(
                &k.attention,
                model.geometry,
                a.q.array(),
                k_cache,
                v_cache,
                a.attn.array(),
                plan,
                n,
                n_seqs,
                max_seq_tokens,
                c.sliding_window,
            )?),
        }
        out.push(gemm::gemm(&k.gemm, auto, a.attn.array(), layer.o_proj.array(), proj, n, h, q_dim, true)?);
        if model.all_reduce {
            out.0.push(StepOp::AllReduce(proj));
        }
        out.push(rmsnorm::rmsnorm_residual(
            &k.rmsnorm,
            hidden,
            Some(proj),
            layer.post_attention_norm.array(),
            normed,
            None,
            n,
            eps,
        )?);
        out.push(gemm::gemm(&k.gemm, auto, normed, layer.gate_up.array(), a.gate_up.array(), n, 2 * ffn, h, false)?);
        out.push(silu_mul::silu_mul(&k.silu_mul, a.gate_up.array(), a.act.array(), n, ffn)?);
        out.push(gemm::gemm(&k.gemm, auto, a.act.array(), layer.down_proj.array(), proj, n, h, ffn, true)?);
        if model.all_reduce {
            out.0.push(StepOp::AllReduce(proj));
        }
    }
    // A step that finishes no sequence (a chunk of a long prompt) needs no head at all.
    if n_logits == 0 {
        return Ok(());
    }
    // The rows that need logits: the last MLP's residual add and the final norm, gathered.
    let delta = if model.weights.layers.is_empty() { None } else { Some(proj) };
    let last_normed = a.last_normed.array().slice(0, n_logits * h);
    let rows = plan.logit_tokens.slice(0, n_logits);
    out.push(rmsnorm::rmsnorm_residual(
        &k.rmsnorm,
        hidden,
        delta,
        model.weights.final_norm.array(),
        last_normed,
        Some(rows),
        n_logits,
        eps,
    )?);
    let logits = a.logits.array().slice(0, n_logits * c.vocab_size);
    out.push(gemm::gemm(&k.gemm, auto, last_normed, model.weights.lm_head(), logits, n_logits, c.vocab_size, h, true)?);
    Ok(())
}
