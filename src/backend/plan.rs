//! A step plan: the flat batch of tokens one forward step computes, from many sequences at
//! different positions (some prefilling many tokens, some decoding one).
//!
//! Its arrays are sized once for the configured maximum and refilled each step, so a backend sees
//! the same buffers every time and only their contents vary: what lets the CUDA backend replay one
//! captured graph per batch-size bucket.

/// The fixed capacities a plan is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanLimits {
    pub max_batch_tokens: usize,
    pub max_seqs: usize,
    pub max_blocks_per_seq: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("step is full: {0}")]
    Full(&'static str),
    #[error("sequence needs {needed} KV blocks for {tokens} tokens but its block table has {given}")]
    BlockTableTooShort { needed: usize, given: usize, tokens: usize },
}

#[derive(Debug, Clone)]
pub struct StepPlan {
    pub limits: PlanLimits,
    pub block_size: usize,
    /// `[n_tokens]` token ids, sequence after sequence.
    pub token_ids: Vec<u32>,
    /// `[n_tokens]` position of each token within its sequence.
    pub positions: Vec<u32>,
    /// `[n_tokens]` index of the sequence each token belongs to.
    pub token_seq: Vec<u32>,
    /// `[n_seqs]` first token index, token count, and context length after this step.
    pub seq_token_start: Vec<u32>,
    pub seq_token_count: Vec<u32>,
    pub seq_context_len: Vec<u32>,
    /// `[n_seqs, max_blocks_per_seq]` KV block ids; unused entries are `u32::MAX`.
    pub block_tables: Vec<u32>,
    /// Token indices whose logits the step returns, in order: row r of the logits is for
    /// `logit_tokens[r]`.
    pub logit_tokens: Vec<u32>,
    /// `(source, destination)` KV blocks to copy, all layers, before the step computes anything:
    /// copy-on-write of a block shared between sequences that one of them is about to extend.
    pub block_copies: Vec<(u32, u32)>,
}

impl StepPlan {
    pub fn new(limits: PlanLimits, block_size: usize) -> StepPlan {
        StepPlan {
            limits,
            block_size,
            token_ids: Vec::with_capacity(limits.max_batch_tokens),
            positions: Vec::with_capacity(limits.max_batch_tokens),
            token_seq: Vec::with_capacity(limits.max_batch_tokens),
            seq_token_start: Vec::with_capacity(limits.max_seqs),
            seq_token_count: Vec::with_capacity(limits.max_seqs),
            seq_context_len: Vec::with_capacity(limits.max_seqs),
            block_tables: Vec::with_capacity(limits.max_seqs * limits.max_blocks_per_seq),
            logit_tokens: Vec::with_capacity(limits.max_batch_tokens),
            block_copies: Vec::with_capacity(limits.max_seqs),
        }
    }

    pub fn clear(&mut self) {
        self.token_ids.clear();
        self.positions.clear();
        self.token_seq.clear();
        self.seq_token_start.clear();
        self.seq_token_count.clear();
        self.seq_context_len.clear();
        self.block_tables.clear();
        self.logit_tokens.clear();
        self.block_copies.clear();
    }

    pub fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }

    pub fn num_seqs(&self) -> usize {
        self.seq_token_start.len()
    }

    pub fn num_logits(&self) -> usize {
        self.logit_tokens.len()
    }

    /// Room left for tokens in this step.
    pub fn tokens_free(&self) -> usize {
        self.limits.max_batch_tokens - self.token_ids.len()
    }

    /// Adds `tokens` of one sequence, the first at `position_start`; the KV cache already holds
    /// the sequence's positions before it. Returns the logits row of its last token when wanted.
    pub fn push_sequence(
        &mut self,
        tokens: &[u32],
        position_start: usize,
        block_table: &[u32],
        wants_logits: bool,
    ) -> Result<Option<usize>, PlanError> {
        assert!(!tokens.is_empty(), "a planned sequence computes at least one token");
        if self.num_seqs() == self.limits.max_seqs {
            return Err(PlanError::Full("max_seqs reached"));
        }
        if tokens.len() > self.tokens_free() {
            return Err(PlanError::Full("max_batch_tokens reached"));
        }
        let context_len = position_start + tokens.len();
        let needed = context_len.div_ceil(self.block_size);
        if block_table.len() < needed {
            return Err(PlanError::BlockTableTooShort { needed, given: block_table.len(), tokens: context_len });
        }
        if needed > self.limits.max_blocks_per_seq {
            return Err(PlanError::Full("max_blocks_per_seq reached"));
        }
        let seq = self.num_seqs() as u32;
        self.seq_token_start.push(self.token_ids.len() as u32);
        self.seq_token_count.push(tokens.len() as u32);
        self.seq_context_len.push(context_len as u32);
        self.block_tables.extend_from_slice(&block_table[..needed]);
        self.block_tables.extend(std::iter::repeat_n(u32::MAX, self.limits.max_blocks_per_seq - needed));
        for (i, &token) in tokens.iter().enumerate() {
            self.token_ids.push(token);
            self.positions.push((position_start + i) as u32);
            self.token_seq.push(seq);
        }
        if wants_logits {
            self.logit_tokens.push((self.token_ids.len() - 1) as u32);
            Ok(Some(self.logit_tokens.len() - 1))
        } else {
            Ok(None)
        }
    }

    /// The block table of sequence `seq`.
    pub fn block_table(&self, seq: usize) -> &[u32] {
        let width = self.limits.max_blocks_per_seq;
        &self.block_tables[seq * width..(seq + 1) * width]
    }

    /// The KV block and offset where position `position` of sequence `seq` is stored.
    pub fn kv_slot(&self, seq: usize, position: usize) -> (usize, usize) {
        (self.block_table(seq)[position / self.block_size] as usize, position % self.block_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> PlanLimits {
        PlanLimits { max_batch_tokens: 8, max_seqs: 3, max_blocks_per_seq: 4 }
    }

    #[test]
    fn flattens_prefill_and_decode_sequences() {
        let mut plan = StepPlan::new(limits(), 4);
        assert_eq!(plan.push_sequence(&[10, 11, 12, 13, 14], 0, &[7, 3], true), Ok(Some(0)));
        assert_eq!(plan.push_sequence(&[99], 9, &[0, 1, 2], true), Ok(Some(1)));
        assert_eq!(plan.positions, vec![0, 1, 2, 3, 4, 9]);
        assert_eq!(plan.token_seq, vec![0, 0, 0, 0, 0, 1]);
        assert_eq!(plan.logit_tokens, vec![4, 5]);
        assert_eq!(plan.seq_context_len, vec![5, 10]);
        assert_eq!(plan.kv_slot(0, 4), (3, 0));
        assert_eq!(plan.kv_slot(1, 9), (2, 1));
        assert_eq!(plan.block_table(0), &[7, 3, u32::MAX, u32::MAX]);
    }

    #[test]
    fn refuses_overflow_and_short_block_tables() {
        let mut plan = StepPlan::new(limits(), 4);
        assert_eq!(
            plan.push_sequence(&[1; 5], 0, &[0], true),
            Err(PlanError::BlockTableTooShort { needed: 2, given: 1, tokens: 5 })
        );
        plan.push_sequence(&[1; 6], 0, &[0, 1], false).unwrap();
        assert_eq!(plan.push_sequence(&[1; 3], 0, &[2], true), Err(PlanError::Full("max_batch_tokens reached")));
        plan.push_sequence(&[1], 0, &[2], true).unwrap();
        plan.push_sequence(&[1], 0, &[3], true).unwrap();
        assert_eq!(plan.push_sequence(&[1], 0, &[4], true), Err(PlanError::Full("max_seqs reached")));
        let capacity = plan.token_ids.capacity();
        plan.clear();
        assert_eq!((plan.num_tokens(), plan.num_seqs(), plan.token_ids.capacity()), (0, 0, capacity));
    }
}
