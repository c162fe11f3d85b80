//! Generation for a fixed set of requests run together: the prompts are prefilled in chunks that
//! fit a step, then every unfinished sequence decodes one token per step. `kiln generate` and the
//! tests use it; the server's continuous-batching scheduler builds the same step plans.

use crate::backend::{Backend, BackendError};

use super::kv_blocks::KvBlockAllocator;
use super::plan::{PlanError, PlanLimits, StepPlan};
use super::sampler::{Sampler, SamplingParams};

#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub prompt_ids: Vec<u32>,
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Token ids that end the sequence (the model's EOS ids); they are not part of the output.
    pub stop_token_ids: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token was produced.
    Stop,
    /// `max_new_tokens` were produced.
    Length,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GenerationOutput {
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("the prompt is empty: nothing to continue")]
    EmptyPrompt,
    #[error("prompt ({prompt} tokens) plus max_new_tokens ({new}) exceeds the context length of {context} tokens")]
    ContextLengthExceeded { prompt: usize, new: usize, context: usize },
    #[error("the KV cache holds {capacity} tokens, these requests need {needed}; raise the KV memory or send fewer")]
    KvCacheTooSmall { needed: usize, capacity: usize },
    #[error("{0}")]
    Plan(#[from] PlanError),
    #[error("{0}")]
    Backend(#[from] BackendError),
}

struct Sequence {
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Tokens whose K/V are in the cache.
    computed: usize,
    blocks: Vec<u32>,
    sampler: Sampler,
    finish: Option<FinishReason>,
}

/// Owns a backend and the buffers to drive it.
pub struct Generator {
    backend: Box<dyn Backend>,
    blocks: KvBlockAllocator,
    plan: StepPlan,
    logits: Vec<f32>,
}

impl Generator {
    pub fn new(backend: Box<dyn Backend>, limits: PlanLimits) -> Generator {
        let layout = backend.kv_layout();
        let vocab = backend.config().vocab_size;
        Generator {
            blocks: KvBlockAllocator::new(layout.num_blocks, layout.block_size),
            plan: StepPlan::new(limits, layout.block_size),
            logits: vec![0.0; limits.max_seqs.max(1) * vocab],
            backend,
        }
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// Generates for every request; `on_token(request_index, token)` sees each token as it is
    /// sampled (stop tokens excluded), in order.
    pub fn generate(
        &mut self,
        requests: &[GenerationRequest],
        mut on_token: impl FnMut(usize, u32),
    ) -> Result<Vec<GenerationOutput>, GenerateError> {
        let context = self.backend.config().max_position_embeddings;
        let mut needed_blocks = 0;
        for r in requests {
            if r.prompt_ids.is_empty() {
                return Err(GenerateError::EmptyPrompt);
            }
            if r.prompt_ids.len() + r.max_new_tokens > context {
                return Err(GenerateError::ContextLengthExceeded {
                    prompt: r.prompt_ids.len(),
                    new: r.max_new_tokens,
                    context,
                });
            }
            needed_blocks += self.blocks.blocks_for(r.prompt_ids.len() + r.max_new_tokens);
        }
        if needed_blocks > self.blocks.blocks_free() {
            return Err(GenerateError::KvCacheTooSmall {
                needed: needed_blocks * self.blocks.block_size(),
                capacity: self.blocks.blocks_free() * self.blocks.block_size(),
            });
        }
        let mut sequences: Vec<Sequence> = requests
            .iter()
            .map(|r| {
                let mut blocks = Vec::new();
                let reserved = self.blocks.grow(&mut blocks, r.prompt_ids.len() + r.max_new_tokens);
                assert!(reserved, "free blocks were counted for every request above");
                Sequence {
                    tokens: r.prompt_ids.clone(),
                    prompt_len: r.prompt_ids.len(),
                    computed: 0,
                    blocks,
                    sampler: Sampler::new(r.sampling.clone(), &r.prompt_ids),
                    finish: if r.max_new_tokens == 0 { Some(FinishReason::Length) } else { None },
                }
            })
            .collect();
        let result = self.run(requests, &mut sequences, &mut on_token);
        for s in &mut sequences {
            self.blocks.release(&mut s.blocks);
        }
        result?;
        Ok(sequences
            .into_iter()
            .map(|s| GenerationOutput {
                token_ids: s.tokens[s.prompt_len..].to_vec(),
                finish_reason: s.finish.expect("the loop runs until every sequence has finished"),
            })
            .collect())
    }

    fn run(
        &mut self,
        requests: &[GenerationRequest],
        sequences: &mut [Sequence],
        on_token: &mut impl FnMut(usize, u32),
    ) -> Result<(), GenerateError> {
        let vocab = self.backend.config().vocab_size;
        let mut logit_rows: Vec<(usize, usize)> = Vec::with_capacity(sequences.len());
        // planned[i]: the sequence behind the plan's i-th entry.
        let mut planned: Vec<usize> = Vec::with_capacity(sequences.len());
        while sequences.iter().any(|s| s.finish.is_none()) {
            self.plan.clear();
            logit_rows.clear();
            planned.clear();
            for (index, s) in sequences.iter().enumerate() {
                if s.finish.is_some()
                    || self.plan.tokens_free() == 0
                    || self.plan.num_seqs() == self.plan.limits.max_seqs
                {
                    continue;
                }
                // Prefill as much of the pending prompt as the step has room for (chunked prefill).
                let pending = &s.tokens[s.computed..];
                let chunk = pending.len().min(self.plan.tokens_free());
                let completes = chunk == pending.len();
                if let Some(row) = self.plan.push_sequence(&pending[..chunk], s.computed, &s.blocks, completes)? {
                    logit_rows.push((index, row));
                }
                planned.push(index);
            }
            self.backend.execute(&self.plan, &mut self.logits)?;
            for (seq, &index) in planned.iter().enumerate() {
                sequences[index].computed += self.plan.seq_token_count[seq] as usize;
            }
            for &(index, row) in &logit_rows {
                let s = &mut sequences[index];
                let request = &requests[index];
                let token = s.sampler.sample(&mut self.logits[row * vocab..(row + 1) * vocab], None);
                if request.stop_token_ids.contains(&token) {
                    s.finish = Some(FinishReason::Stop);
                    continue;
                }
                s.sampler.accept(token);
                s.tokens.push(token);
                on_token(index, token);
                if s.tokens.len() - s.prompt_len >= request.max_new_tokens {
                    s.finish = Some(FinishReason::Length);
                }
            }
        }
        Ok(())
    }
}
