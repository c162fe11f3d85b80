//! Activation buffers for the largest step, allocated once so a step allocates nothing big.

use crate::model::ModelConfig;

pub struct Workspace {
    pub hidden: Vec<f32>,      // [max_tokens, hidden] the residual stream
    pub normed: Vec<f32>,      // [max_tokens, hidden]
    pub q: Vec<f32>,           // [max_tokens, q_dim]
    pub k: Vec<f32>,           // [max_tokens, kv_dim]
    pub v: Vec<f32>,           // [max_tokens, kv_dim]
    pub attn: Vec<f32>,        // [max_tokens, q_dim]
    pub proj: Vec<f32>,        // [max_tokens, hidden] output of o_proj / down_proj
    pub gate: Vec<f32>,        // [max_tokens, intermediate]
    pub up: Vec<f32>,          // [max_tokens, intermediate]
    pub act: Vec<f32>,         // [max_tokens, intermediate] silu(gate) * up
    pub last_hidden: Vec<f32>, // [max_tokens, hidden] rows that need logits
    pub last_normed: Vec<f32>, // [max_tokens, hidden]
    pub rope_cos: Vec<f32>,    // [max_tokens, head_dim / 2] this step's rotations
    pub rope_sin: Vec<f32>,    // [max_tokens, head_dim / 2]
}

impl Workspace {
    pub fn new(config: &ModelConfig, max_tokens: usize) -> Workspace {
        let zeros = |width: usize| vec![0.0f32; max_tokens * width];
        Workspace {
            hidden: zeros(config.hidden_size),
            normed: zeros(config.hidden_size),
            q: zeros(config.q_dim()),
            k: zeros(config.kv_dim()),
            v: zeros(config.kv_dim()),
            attn: zeros(config.q_dim()),
            proj: zeros(config.hidden_size),
            gate: zeros(config.intermediate_size),
            up: zeros(config.intermediate_size),
            act: zeros(config.intermediate_size),
            last_hidden: zeros(config.hidden_size),
            last_normed: zeros(config.hidden_size),
            rope_cos: zeros(config.head_dim / 2),
            rope_sin: zeros(config.head_dim / 2),
        }
    }
}
