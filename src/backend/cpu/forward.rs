//! One Llama forward step on the CPU over a flat batch of tokens from many sequences, composed
//! from the fast kernels (`kernels`); `crate::ops` holds the reference of each op.

use super::kernels::attention::{self, AttentionRun};
use super::kernels::{matmul, rmsnorm, rope, silu_mul, Isa};
use super::kv_cache::CpuKvCache;
use super::workspace::Workspace;
use crate::backend::plan::StepPlan;
use crate::model::weights::LlamaWeights;
use crate::model::ModelConfig;
use crate::ops::attention::AttentionShape;
use crate::ops::embedding::embedding;

/// One step on one rank. With tensor parallelism (`config` and `weights` a rank's share, see
/// `tensor_parallel`) the outputs of o_proj and down_proj are partial sums, which `all_reduce`
/// completes; with one rank it does nothing. Only the rank that gets `logits_out` computes the
/// logits.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    isa: Isa,
    config: &ModelConfig,
    weights: &LlamaWeights,
    inv_freq: &[f32],
    kv: &mut CpuKvCache,
    ws: &mut Workspace,
    plan: &StepPlan,
    all_reduce: &dyn Fn(&mut [f32]),
    logits_out: Option<&mut [f32]>,
) {
    let n = plan.num_tokens();
    let (h, q_dim, kv_dim, ffn) = (config.hidden_size, config.q_dim(), config.kv_dim(), config.intermediate_size);
    let eps = config.rms_norm_eps;
    let shape =
        AttentionShape { num_heads: config.num_heads, num_kv_heads: config.num_kv_heads, head_dim: config.head_dim };
    let half = config.head_dim / 2;

    let hidden = &mut ws.hidden[..n * h];
    let normed = &mut ws.normed[..n * h];
    let (q, k, v) = (&mut ws.q[..n * q_dim], &mut ws.k[..n * kv_dim], &mut ws.v[..n * kv_dim]);
    let attn = &mut ws.attn[..n * q_dim];
    let proj = &mut ws.proj[..n * h];
    let (gate, up, act) = (&mut ws.gate[..n * ffn], &mut ws.up[..n * ffn], &mut ws.act[..n * ffn]);
    let (cos, sin) = (&mut ws.rope_cos[..n * half], &mut ws.rope_sin[..n * half]);

    embedding(&weights.embed_tokens, &plan.token_ids, hidden);
    rope::rope_table(&plan.positions, inv_freq, cos, sin);
    // The first layer's norm has no residual to add yet; later ones fuse the add of the previous
    // MLP output into their input norm.
    proj.fill(0.0);
    for (layer_index, layer) in weights.layers.iter().enumerate() {
        // Attention block: x += o_proj(attention(rope(q), rope(k), v)) over rmsnorm(x).
        rmsnorm::rmsnorm_residual(isa, hidden, proj, &layer.input_norm, eps, normed);
        matmul::matmul_group_with(
            isa,
            normed,
            &[&layer.q_proj, &layer.k_proj, &layer.v_proj],
            &mut [&mut *q, &mut *k, &mut *v],
        );
        rope::apply_rope(isa, q, q_dim, config.head_dim, cos, sin);
        rope::apply_rope(isa, k, kv_dim, config.head_dim, cos, sin);
        for t in 0..n {
            let (block, offset) = plan.kv_slot(plan.token_seq[t] as usize, plan.positions[t] as usize);
            kv.write(layer_index, block, offset, &k[t * kv_dim..(t + 1) * kv_dim], &v[t * kv_dim..(t + 1) * kv_dim]);
        }
        // Every token of this step is in the cache now, so each query sees its own sequence's
        // earlier tokens of the same step as well as those of earlier steps.
        let kv_ref: &CpuKvCache = kv;
        let q_ref: &[f32] = q;
        // Each sequence's tokens of this step are one run of consecutive positions.
        attention::attention_runs(
            isa,
            q_ref,
            shape,
            config.sliding_window,
            plan.block_size,
            plan.num_seqs(),
            |seq| AttentionRun {
                first_token: plan.seq_token_start[seq] as usize,
                tokens: plan.seq_token_count[seq] as usize,
                first_position: plan.positions[plan.seq_token_start[seq] as usize] as usize,
            },
            |seq, i| kv_ref.block(layer_index, plan.block_table(seq)[i] as usize),
            attn,
        );
        matmul::matmul_with(isa, attn, &layer.o_proj, proj);
        all_reduce(proj);
        // MLP block: x += down(silu(gate(x')) * up(x')) with x' = rmsnorm(x).
        rmsnorm::rmsnorm_residual(isa, hidden, proj, &layer.post_attention_norm, eps, normed);
        matmul::matmul_group_with(isa, normed, &[&layer.gate_proj, &layer.up_proj], &mut [&mut *gate, &mut *up]);
        silu_mul::silu_mul(isa, gate, up, act);
        matmul::matmul_with(isa, act, &layer.down_proj, proj);
        all_reduce(proj);
    }
    let Some(logits_out) = logits_out else { return };

    // Logits only for the rows the plan asks for (the last token of each sequence that samples);
    // the last MLP output is added to just those rows.
    let rows = plan.num_logits();
    let last_hidden = &mut ws.last_hidden[..rows * h];
    for (r, &t) in plan.logit_tokens.iter().enumerate() {
        let t = t as usize;
        for ((o, &x), &d) in
            last_hidden[r * h..(r + 1) * h].iter_mut().zip(&hidden[t * h..(t + 1) * h]).zip(&proj[t * h..(t + 1) * h])
        {
            *o = x + d;
        }
    }
    let last_normed = &mut ws.last_normed[..rows * h];
    rmsnorm::rmsnorm(isa, last_hidden, &weights.final_norm, eps, last_normed);
    matmul::matmul_with(isa, last_normed, &weights.lm_head, logits_out);
}
