//! Continuous batching: which sequences compute which tokens in the next step. Pure bookkeeping
//! over token counts and KV blocks, so it is tested without a model.
//!
//! Policy: every decoding sequence gets its token first (users already streaming keep their pace),
//! then prompts are prefilled in chunks of at most `max_prefill_chunk` tokens, oldest first. When
//! KV blocks run out, the newest running sequence is preempted: its blocks are freed and it goes
//! back to the front of the queue to be recomputed later, so no one fails for lack of memory.
//!
//! Memory is shared where contents are equal: a new sequence starts from the longest run of full
//! prompt blocks already in the prefix cache (a repeated system prompt is not prefilled again), and
//! `fork` makes a sequence that shares all of another's blocks (the `n` completions of one prompt);
//! a shared block is copied only when one of its owners writes into it (copy-on-write).

use std::collections::VecDeque;

use super::kv_blocks::{BlockKey, KvBlockAllocator, ROOT_HASH};
use crate::backend::plan::StepPlan;

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
    /// Leading full blocks registered in (or taken from) the prefix cache, and the chain hash of
    /// the last of them.
    hashed_blocks: usize,
    chain: u64,
}

impl Slot {
    fn new(id: SeqId, tokens: Vec<u32>) -> Slot {
        Slot { id, tokens, computed: 0, blocks: Vec::new(), hashed_blocks: 0, chain: ROOT_HASH }
    }

    fn block_key(&self, block_index: usize, block_size: usize) -> BlockKey {
        let start = block_index * block_size;
        BlockKey { parent: self.chain, tokens: self.tokens[start..start + block_size].to_vec() }
    }
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
    /// Prompt tokens found in the prefix cache instead of being computed.
    cached_prompt_tokens: u64,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig, blocks: KvBlockAllocator) -> Scheduler {
        Scheduler {
            config,
            blocks,
            running: Vec::new(),
            waiting: VecDeque::new(),
            preemptions: 0,
            cached_prompt_tokens: 0,
        }
    }

    pub fn add(&mut self, id: SeqId, prompt: Vec<u32>) {
        assert!(!prompt.is_empty(), "requests are validated to have a prompt");
        self.waiting.push_back(Slot::new(id, prompt));
    }

    /// Starts sequence `child` as a copy of running sequence `parent`: same tokens, same KV
    /// blocks (shared, copied on write). False when the parent is not running.
    pub fn fork(&mut self, parent: SeqId, child: SeqId) -> bool {
        let Some(i) = self.running.iter().position(|s| s.id == parent) else { return false };
        let p = &self.running[i];
        let slot = Slot {
            id: child,
            tokens: p.tokens.clone(),
            computed: p.computed,
            blocks: p.blocks.clone(),
            hashed_blocks: p.hashed_blocks,
            chain: p.chain,
        };
        for &block in &slot.blocks {
            self.blocks.retain(block);
        }
        self.running.insert(i + 1, slot);
        true
    }

    /// Replaces the last token of a running sequence (a fork samples its own first token).
    #[cfg(test)]
    pub fn replace_last_token(&mut self, id: SeqId, token: u32) {
        if let Some(slot) = self.running.iter_mut().find(|s| s.id == id) {
            if let Some(last) = slot.tokens.last_mut() {
                *last = token;
            }
        }
    }

    pub fn cached_prompt_tokens(&self) -> u64 {
        self.cached_prompt_tokens
    }

    /// Tokens of running sequence `id` whose K/V are in the cache before this step computes
    /// (0 when it is not running). Asked in the step that first schedules a sequence, it is the
    /// prompt prefix taken from the prefix cache.
    pub fn computed_tokens(&self, id: SeqId) -> usize {
        self.running.iter().find(|s| s.id == id).map_or(0, |s| s.computed)
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
            if !self.make_room(i, needed, plan) {
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
        loop {
            self.schedule_prefill(plan, scheduled, max_seqs);
            // Sequences part-way through their prompts can hold every block between them and
            // wait for more forever; then the newest gives its blocks back and waits in line.
            if !scheduled.is_empty() || self.running.is_empty() {
                break;
            }
            let newest = self.running.len() - 1;
            self.preempt(newest);
        }
    }

    fn schedule_prefill(&mut self, plan: &mut StepPlan, scheduled: &mut Vec<Scheduled>, max_seqs: usize) {
        for i in 0..self.running.len() {
            if scheduled.iter().any(|s| s.id == self.running[i].id) {
                continue;
            }
            if !self.push_prefill_chunk(i, plan, scheduled, max_seqs) {
                break;
            }
        }
        while !self.waiting.is_empty() && scheduled.len() < max_seqs && plan.tokens_free() > 0 {
            let mut slot = self.waiting.pop_front().expect("checked non-empty");
            if slot.computed == 0 && slot.blocks.is_empty() {
                self.reuse_cached_prefix(&mut slot);
            }
            self.running.push(slot);
            let i = self.running.len() - 1;
            if !self.push_prefill_chunk(i, plan, scheduled, max_seqs) {
                // A waiting sequence holds no blocks: the cached ones it just took go back, or
                // two waiting sequences could each hold what the other needs.
                let mut slot = self.running.pop().expect("just pushed");
                self.blocks.release(&mut slot.blocks);
                slot.computed = 0;
                slot.hashed_blocks = 0;
                slot.chain = ROOT_HASH;
                self.waiting.push_front(slot);
                break;
            }
        }
    }

    /// Records that the scheduled tokens were computed, and caches the blocks they filled.
    pub fn step_done(&mut self, scheduled: &[Scheduled]) {
        let block_size = self.blocks.block_size();
        for s in scheduled {
            let Some(slot) = self.running.iter_mut().find(|slot| slot.id == s.id) else { continue };
            slot.computed += s.tokens;
            while (slot.hashed_blocks + 1) * block_size <= slot.computed {
                let key = slot.block_key(slot.hashed_blocks, block_size);
                slot.chain = key.chain_hash();
                self.blocks.register(slot.blocks[slot.hashed_blocks], key);
                slot.hashed_blocks += 1;
            }
        }
    }

    /// Starts a new sequence from the longest run of its full prompt blocks found in the prefix
    /// cache. At least one token is always left to compute: the step must produce its logits.
    fn reuse_cached_prefix(&mut self, slot: &mut Slot) {
        let block_size = self.blocks.block_size();
        let reusable = (slot.tokens.len() - 1) / block_size;
        while slot.hashed_blocks < reusable {
            let key = slot.block_key(slot.hashed_blocks, block_size);
            let Some(block) = self.blocks.lookup(&key) else { break };
            self.blocks.retain(block);
            slot.blocks.push(block);
            slot.chain = key.chain_hash();
            slot.hashed_blocks += 1;
        }
        slot.computed = slot.hashed_blocks * block_size;
        self.cached_prompt_tokens += slot.computed as u64;
    }

    /// Gives running sequence `i` the blocks to hold `tokens` tokens, copying a shared block it is
    /// about to write into. False, with nothing taken, when too few blocks are free.
    fn prepare_blocks(&mut self, i: usize, tokens: usize, plan: &mut StepPlan) -> bool {
        let slot = &self.running[i];
        let write_block = slot.computed / self.blocks.block_size();
        let shared = slot.blocks.get(write_block).copied().filter(|&b| self.blocks.ref_count(b) > 1);
        let needed = self.blocks.blocks_for(tokens).saturating_sub(slot.blocks.len()) + usize::from(shared.is_some());
        if needed > self.blocks.blocks_free() {
            return false;
        }
        if let Some(source) = shared {
            let copy = self.blocks.allocate().expect("free count was checked above");
            plan.block_copies.push((source, copy));
            self.blocks.release_block(source);
            self.running[i].blocks[write_block] = copy;
        }
        let slot = &mut self.running[i];
        let grown = self.blocks.grow(&mut slot.blocks, tokens);
        debug_assert!(grown, "free count was checked above");
        true
    }

    /// Adds the next prefill chunk of running sequence `i`; false when the step or the cache is full.
    fn push_prefill_chunk(
        &mut self,
        i: usize,
        plan: &mut StepPlan,
        scheduled: &mut Vec<Scheduled>,
        max_seqs: usize,
    ) -> bool {
        if scheduled.len() == max_seqs || plan.tokens_free() == 0 {
            return false;
        }
        let slot = &self.running[i];
        let pending = slot.tokens.len() - slot.computed;
        if pending == 0 {
            return true;
        }
        let chunk = pending.min(plan.tokens_free()).min(self.config.max_prefill_chunk.max(1));
        // Prefill never preempts anyone: it waits for blocks instead.
        if !self.prepare_blocks(i, slot.computed + chunk, plan) {
            return false;
        }
        let slot = &self.running[i];
        let completes = chunk == pending;
        let row = plan
            .push_sequence(&slot.tokens[slot.computed..slot.computed + chunk], slot.computed, &slot.blocks, completes)
            .expect("room in the plan was checked above");
        scheduled.push(Scheduled { id: slot.id, tokens: chunk, logits_row: row });
        true
    }

    /// Ensures running sequence `i` has blocks for `tokens` tokens, preempting the newest
    /// sequences as needed. False when `i` itself had to be preempted.
    fn make_room(&mut self, i: usize, tokens: usize, plan: &mut StepPlan) -> bool {
        loop {
            if self.prepare_blocks(i, tokens, plan) {
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
        // Its full blocks stay in the prefix cache while nobody needs the memory, so the
        // recomputation may find most of them again.
        slot.computed = 0;
        slot.hashed_blocks = 0;
        slot.chain = ROOT_HASH;
        self.preemptions += 1;
        self.waiting.push_front(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::plan::PlanLimits;

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

    #[test]
    fn a_repeated_prompt_prefix_is_not_computed_again() {
        let (mut s, mut plan) = setup(16, 64, 64);
        s.add(1, (0..10).collect());
        step(&mut s, &mut plan);
        s.remove(1);
        assert_eq!(s.blocks().blocks_used(), 0);
        assert_eq!(s.blocks().blocks_cached(), 2, "two full blocks of 4 stay cached");
        // Same first 8 tokens, then different ones: only the rest is computed.
        let mut prompt: Vec<u32> = (0..8).collect();
        prompt.extend([50, 51, 52]);
        s.add(2, prompt);
        let mut scheduled = Vec::new();
        s.schedule(&mut plan, &mut scheduled);
        assert_eq!(s.computed_tokens(2), 8, "before the step: the prefix taken from the cache");
        s.step_done(&scheduled);
        assert_eq!(s.computed_tokens(2), 11);
        assert_eq!(s.computed_tokens(99), 0, "not running");
        assert_eq!(scheduled, vec![Scheduled { id: 2, tokens: 3, logits_row: Some(0) }]);
        assert_eq!(plan.positions, vec![8, 9, 10]);
        assert_eq!(s.cached_prompt_tokens(), 8);
        // A prompt that is entirely cached still computes its last token, for the logits.
        s.remove(2);
        s.add(3, (0..8).collect());
        assert_eq!(step(&mut s, &mut plan)[0].tokens, 4, "blocks end at 8: the last block is recomputed");
    }

    #[test]
    fn forks_share_blocks_and_copy_the_one_they_write() {
        let (mut s, mut plan) = setup(16, 64, 64);
        s.add(1, vec![5; 6]);
        step(&mut s, &mut plan); // 6 tokens in blocks [0, 1]; token 7 appended
        assert!(s.fork(1, 2));
        s.replace_last_token(2, 8);
        assert_eq!(s.blocks().blocks_used(), 2, "the fork shares both blocks");
        let mut scheduled = Vec::new();
        s.schedule(&mut plan, &mut scheduled);
        assert_eq!(scheduled.len(), 2);
        // Sequence 1 writes position 6 into the shared block 1 first: it gets a copy.
        assert_eq!(plan.block_copies.len(), 1);
        let (source, copy) = plan.block_copies[0];
        assert_eq!(plan.block_table(0)[..2], [0, copy]);
        assert_eq!(plan.block_table(1)[..2], [0, source], "the last owner writes in place");
        assert_eq!(plan.token_ids, vec![7, 8]);
        s.step_done(&scheduled);
        s.remove(1);
        s.remove(2);
        assert_eq!(s.blocks().blocks_used(), 0);
    }

    #[test]
    fn prefills_that_hold_every_block_do_not_deadlock() {
        // 4 blocks of 4; two 12-token prompts prefilled 4 tokens per step each take 2 blocks,
        // then both need a third: the newest must give way.
        let (mut s, mut plan) = setup(4, 8, 4);
        s.add(1, vec![1; 12]);
        s.add(2, vec![2; 12]);
        let mut finished = std::collections::HashSet::new();
        for _ in 0..100 {
            let scheduled = step(&mut s, &mut plan);
            assert!(!scheduled.is_empty() || s.is_idle(), "a step scheduled nothing while work remains");
            for x in &scheduled {
                if x.logits_row.is_some() {
                    finished.insert(x.id);
                    s.remove(x.id);
                }
            }
            if s.is_idle() {
                break;
            }
        }
        assert_eq!(finished.len(), 2, "both prompts complete");
        assert_eq!(s.blocks().blocks_used(), 0);
    }
}
