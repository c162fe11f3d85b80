//! Continuous batching: which sequences compute which tokens in the next step. Pure bookkeeping
//! over token counts and KV blocks, so it is tested without a model.
//!
//! Policy: every decoding sequence gets its token first (users already streaming keep their pace),
//! then prompts are prefilled in chunks of at most `max_prefill_chunk` tokens, oldest first. When
//! KV blocks run out, the newest running sequence is preempted: its blocks are freed and it goes
//! back to the front of the queue to be recomputed later, so no one fails for lack of memory.

use std::collections::VecDeque;

use super::kv_blocks::KvBlockAllocator;
use super::plan::StepPlan;

pub type SeqId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    pub max_batch_tokens: usize,
    pub max_seqs: usize,
    pub max_prefill_chunk: usize,
}

#[derive(Debug)]
struct Slot {
    id: SeqId,
    /// Prompt and generated tokens; the last one is not computed yet while decoding.
    tokens: Vec<u32>,
    /// Tokens whose K/V are in the cache.
    computed: usize,
    blocks: Vec<u32>,
}

/// What the plan holds for one sequence this step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheduled {
    pub id: SeqId,
    pub tokens: usize,
    /// Logits row when this step completes the sequence's pending tokens (it then samples).
    pub logits_row: Option<usize>,
}

#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    blocks: KvBlockAllocator,
    /// Running sequences in arrival order (oldest first).
    running: Vec<Slot>,
    waiting: VecDeque<Slot>,
    preemptions: u64,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig, blocks: KvBlockAllocator) -> Scheduler {
        Scheduler { config, blocks, running: Vec::new(), waiting: VecDeque::new(), preemptions: 0 }
    }

    pub fn add(&mut self, id: SeqId, prompt: Vec<u32>) {
        assert!(!prompt.is_empty(), "requests are validated to have a prompt");
        self.waiting.push_back(Slot { id, tokens: prompt, computed: 0, blocks: Vec::new() });
    }

    /// Appends a sampled token to a sequence; it is computed in the next step.
    pub fn append_token(&mut self, id: SeqId, token: u32) {
        if let Some(slot) = self.running.iter_mut().find(|s| s.id == id) {
            slot.tokens.push(token);
        }
    }

    /// Removes a finished or cancelled sequence and frees its blocks at once.
    pub fn remove(&mut self, id: SeqId) {
        if let Some(i) = self.running.iter().position(|s| s.id == id) {
            let mut slot = self.running.remove(i);
            self.blocks.release(&mut slot.blocks);
        } else if let Some(i) = self.waiting.iter().position(|s| s.id == id) {
            let mut slot = self.waiting.remove(i).expect("index was just found");
            self.blocks.release(&mut slot.blocks);
        }
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.waiting.is_empty()
    }

    pub fn blocks(&self) -> &KvBlockAllocator {
        &self.blocks
    }

    pub fn preemptions(&self) -> u64 {
        self.preemptions
    }

    /// Fills `plan` for the next step and says what it holds. Call `step_done` after executing it.
    pub fn schedule(&mut self, plan: &mut StepPlan, scheduled: &mut Vec<Scheduled>) {
        plan.clear();
        scheduled.clear();
        let max_seqs = self.config.max_seqs.min(plan.limits.max_seqs);

        // 1. Decodes: one token each, oldest first; make room by preempting the newest.
        let mut i = 0;
        while i < self.running.len() {
            let pending = self.running[i].tokens.len() - self.running[i].computed;
            if pending != 1 || scheduled.len() == max_seqs || plan.tokens_free() == 0 {
                i += 1;
                continue;
            }
            let needed = self.running[i].tokens.len();
            if !self.make_room(i, needed) {
                // Sequence i itself was preempted (it was the newest); the list shrank.
                continue;
            }
            let slot = &self.running[i];
            let row = plan
                .push_sequence(&slot.tokens[slot.computed..], slot.computed, &slot.blocks, true)
                .expect("room in the plan was checked above");
            scheduled.push(Scheduled { id: slot.id, tokens: 1, logits_row: row });
            i += 1;
        }

        // 2. Prefill chunks: running sequences part-way through their prompt, then new arrivals.
        for i in 0..self.running.len() {
            if scheduled.iter().any(|s| s.id == self.running[i].id) {
                continue;
            }
            if !self.push_prefill_chunk(i, plan, scheduled, max_seqs) {
                break;
            }
        }
        while !self.waiting.is_empty() && scheduled.len() < max_seqs && plan.tokens_free() > 0 {
            let slot = self.waiting.pop_front().expect("checked non-empty");
            self.running.push(slot);
            let i = self.running.len() - 1;
            if !self.push_prefill_chunk(i, plan, scheduled, max_seqs) {
                let slot = self.running.pop().expect("just pushed");
                self.waiting.push_front(slot);
                break;
            }
        }
    }

    /// Records that the scheduled tokens were computed.
    pub fn step_done(&mut self, scheduled: &[Scheduled]) {
        for s in scheduled {
            if let Some(slot) = self.running.iter_mut().find(|slot| slot.id == s.id) {
                slot.computed += s.tokens;
            }
        }
    }

    /// Adds the next prefill chunk of running sequence `i`; false when the step or the cache is full.
    fn push_prefill_chunk(&mut self, i: usize, plan: &mut StepPlan, scheduled: &mut Vec<Scheduled>, max_seqs: usize) -> bool {
        if scheduled.len() == max_seqs || plan.tokens_free() == 0 {
            return false;
        }
        let slot = &mut self.running[i];
        let pending = slot.tokens.len() - slot.computed;
        if pending == 0 {
            return true;
        }
        let chunk = pending.min(plan.tokens_free()).min(self.config.max_prefill_chunk.max(1));
        // Prefill never preempts anyone: it waits for blocks instead.
        if !self.blocks.grow(&mut slot.blocks, slot.computed + chunk) {
            return false;
        }
        let completes = chunk == pending;
        let row = plan
            .push_sequence(&slot.tokens[slot.computed..slot.computed + chunk], slot.computed, &slot.blocks, completes)
            .expect("room in the plan was checked above");
        scheduled.push(Scheduled { id: slot.id, tokens: chunk, logits_row: row });
        true
    }

    /// Ensures running sequence `i` has blocks for `tokens` tokens, preempting the newest
    /// sequences as needed. False when `i` itself had to be preempted.
    fn make_room(&mut self, i: usize, tokens: usize) -> bool {
        loop {
            let slot = &mut self.running[i];
            if self.blocks.grow(&mut slot.blocks, tokens) {
                return true;
            }
            let newest = self.running.len() - 1;
            self.preempt(newest);
            if newest == i {
                return false;
            }
        }
    }

    fn preempt(&mut self, i: usize) {
        let mut slot = self.running.remove(i);
        self.blocks.release(&mut slot.blocks);
        slot.computed = 0;
        self.preemptions += 1;
        self.waiting.push_front(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::plan::PlanLimits;

    fn setup(num_blocks: usize, max_batch_tokens: usize, max_prefill_chunk: usize) -> (Scheduler, StepPlan) {
        let config = SchedulerConfig { max_batch_tokens, max_seqs: 8, max_prefill_chunk };
        let plan = StepPlan::new(PlanLimits { max_batch_tokens, max_seqs: 8, max_blocks_per_seq: 64 }, 4);
        (Scheduler::new(config, KvBlockAllocator::new(num_blocks, 4)), plan)
    }

    /// Runs one step, sampling token 7 for every sequence that gets logits.
    fn step(s: &mut Scheduler, plan: &mut StepPlan) -> Vec<Scheduled> {
        let mut scheduled = Vec::new();
        s.schedule(plan, &mut scheduled);
        s.step_done(&scheduled);
        for x in &scheduled {
            if x.logits_row.is_some() {
                s.append_token(x.id, 7);
            }
        }
        scheduled
    }

    #[test]
    fn chunked_prefill_interleaves_with_decoding() {
        let (mut s, mut plan) = setup(64, 16, 6);
        s.add(1, vec![1; 3]);
        let first = step(&mut s, &mut plan);
        assert_eq!(first, vec![Scheduled { id: 1, tokens: 3, logits_row: Some(0) }]);
        s.add(2, vec![2; 14]);
        // Sequence 1 decodes every step while 2's prompt goes in chunks of 6, 6, 2.
        let steps: Vec<Vec<(SeqId, usize, bool)>> = (0..3)
            .map(|_| step(&mut s, &mut plan).iter().map(|x| (x.id, x.tokens, x.logits_row.is_some())).collect())
            .collect();
        assert_eq!(steps[0], vec![(1, 1, true), (2, 6, false)]);
        assert_eq!(steps[1], vec![(1, 1, true), (2, 6, false)]);
        assert_eq!(steps[2], vec![(1, 1, true), (2, 2, true)]);
        assert_eq!(step(&mut s, &mut plan).len(), 2, "both decode now");
    }

    #[test]
    fn kv_exhaustion_preempts_the_newest_and_recomputes_it_later() {
        // 4 blocks of 4 tokens = 16 tokens of KV.
        let (mut s, mut plan) = setup(4, 32, 32);
        s.add(1, vec![1; 8]);
        s.add(2, vec![2; 8]);
        step(&mut s, &mut plan); // both prefilled: 2 blocks each, all 4 used
        assert_eq!(s.blocks().blocks_free(), 0);
        // Both now need a third block for their 9th token (the one just sampled): 2 is preempted, 1 continues.
        let scheduled = step(&mut s, &mut plan);
        assert_eq!(scheduled.iter().map(|x| x.id).collect::<Vec<_>>(), vec![1]);
        assert_eq!(s.preemptions(), 1);
        assert_eq!((s.num_running(), s.num_waiting()), (1, 1));
        // When 1 finishes, 2 is recomputed from scratch, generated token included (8 + 1).
        s.remove(1);
        let scheduled = step(&mut s, &mut plan);
        assert_eq!(scheduled, vec![Scheduled { id: 2, tokens: 9, logits_row: Some(0) }]);
        s.remove(2);
        assert_eq!(s.blocks().blocks_used(), 0, "every block returns when idle");
        assert!(s.is_idle());
    }

    #[test]
    fn waiting_requests_wait_for_blocks_without_starving_anyone() {
        let (mut s, mut plan) = setup(3, 32, 32);
        s.add(1, vec![1; 8]);
        s.add(2, vec![2; 8]);
        let scheduled = step(&mut s, &mut plan);
        assert_eq!(scheduled.len(), 1, "only 1 fits; 2 waits, nobody fails");
        assert_eq!(s.num_waiting(), 1);
        s.remove(1);
        assert_eq!(step(&mut s, &mut plan)[0].id, 2);
    }

    #[test]
    fn removing_a_waiting_sequence_frees_it() {
        let (mut s, mut plan) = setup(8, 4, 4);
        s.add(1, vec![1; 10]);
        step(&mut s, &mut plan); // first chunk of 4
        assert_eq!(s.blocks().blocks_used(), 1);
        s.remove(1);
        assert!(s.is_idle() && s.blocks().blocks_used() == 0);
        s.add(2, vec![1; 2]);
        s.remove(2);
        assert!(s.is_idle());
    }
}
