//! One Llama forward step on the CPU over a flat batch of tokens from many sequences.

use rayon::prelude::*;

use super::kv_cache::CpuKvCache;
use super::workspace::Workspace;
use crate::engine::plan::StepPlan;
use crate::model::weights::LlamaWeights;
use crate::model::ModelConfig;
use crate::ops::activation::silu_mul;
use crate::ops::attention::{attention, AttentionShape};
use crate::ops::embedding::embedding;
use crate::ops::logits::logits;
use crate::ops::matmul::matmul;
use crate::ops::norm::{rmsnorm, rmsnorm_residual};
use crate::ops::rope::apply_rope;

pub fn forward(
    config: &ModelConfig,
    weights: &LlamaWeights,
    inv_freq: &[f32],
    kv: &mut CpuKvCache,
    ws: &mut Workspace,
    plan: &StepPlan,
    logits_out: &mut [f32],
) {
    let n = plan.num_tokens();
    let (h, q_dim, kv_dim, ffn) = (config.hidden_size, config.q_dim(), config.kv_dim(), config.intermediate_size);
    let eps = config.rms_norm_eps;
    let shape = AttentionShape { num_heads: config.num_heads, num_kv_heads: config.num_kv_heads, head_dim: config.head_dim };

    let hidden = &mut ws.hidden[..n * h];
    let normed = &mut ws.normed[..n * h];
    let (q, k, v) = (&mut ws.q[..n * q_dim], &mut ws.k[..n * kv_dim], &mut ws.v[..n * kv_dim]);
    let attn = &mut ws.attn[..n * q_dim];
    let proj = &mut ws.proj[..n * h];
    let (gate, up, act) = (&mut ws.gate[..n * ffn], &mut ws.up[..n * ffn], &mut ws.act[..n * ffn]);

    embedding(&weights.embed_tokens, &plan.token_ids, hidden);
    for (layer_index, layer) in weights.layers.iter().enumerate() {
        // Attention block: x += o_proj(attention(rope(q), rope(k), v)) over rmsnorm(x).
        rmsnorm(hidden, &layer.input_norm, eps, normed);
        matmul(normed, &layer.q_proj, q);
        matmul(normed, &layer.k_proj, k);
        matmul(normed, &layer.v_proj, v);
        for t in 0..n {
            let position = plan.positions[t] as usize;
            apply_rope(&mut q[t * q_dim..(t + 1) * q_dim], config.head_dim, position, inv_freq);
            apply_rope(&mut k[t * kv_dim..(t + 1) * kv_dim], config.head_dim, position, inv_freq);
            let (block, offset) = plan.kv_slot(plan.token_seq[t] as usize, position);
            kv.write(layer_index, block, offset, &k[t * kv_dim..(t + 1) * kv_dim], &v[t * kv_dim..(t + 1) * kv_dim]);
        }
        // Every token of this step is in the cache now, so each query sees its own sequence's
        // earlier tokens of the same step as well as those of earlier steps.
        let kv_ref: &CpuKvCache = kv;
        attn.par_chunks_mut(q_dim).enumerate().for_each_init(Vec::new, |scores, (t, out)| {
            let seq = plan.token_seq[t] as usize;
            let position = plan.positions[t] as usize;
            let first_visible = match config.sliding_window {
                Some(window) => (position + 1).saturating_sub(window),
                None => 0,
            };
            attention(
                &q[t * q_dim..(t + 1) * q_dim],
                shape,
                first_visible..position + 1,
                |p, g| {
                    let (block, offset) = plan.kv_slot(seq, p);
                    kv_ref.key(layer_index, block, offset, g)
                },
                |p, g| {
                    let (block, offset) = plan.kv_slot(seq, p);
                    kv_ref.value(layer_index, block, offset, g)
                },
                scores,
                out,
            );
        });
        matmul(attn, &layer.o_proj, proj);
        // MLP block: x += down(silu(gate(x')) * up(x')) with x' = rmsnorm(x).
        rmsnorm_residual(hidden, proj, &layer.post_attention_norm, eps, normed);
        matmul(normed, &layer.gate_proj, gate);
        matmul(normed, &layer.up_proj, up);
        silu_mul(gate, up, act);
        matmul(act, &layer.down_proj, proj);
        for (x, d) in hidden.iter_mut().zip(proj.iter()) {
            *x += d;
        }
    }

    // Logits only for the rows the plan asks for (the last token of each sequence that samples).
    let rows = plan.num_logits();
    let last_hidden = &mut ws.last_hidden[..rows * h];
    for (r, &t) in plan.logit_tokens.iter().enumerate() {
        let t = t as usize;
        last_hidden[r * h..(r + 1) * h].copy_from_slice(&hidden[t * h..(t + 1) * h]);
    }
    logits(last_hidden, &weights.final_norm, eps, &weights.lm_head, &mut ws.last_normed[..rows * h], logits_out);
}
