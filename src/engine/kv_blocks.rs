//! Bookkeeping of the KV cache's fixed-size blocks: reference counts (blocks shared between
//! sequences, copy-on-write), and the prefix cache (full blocks remembered by their content, so a
//! request repeating an earlier prompt prefix reuses its keys and values instead of recomputing).
//! The memory itself belongs to the backend; this only hands out block ids.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

/// What a full block holds: its tokens and, through the hash of the block before it, everything
/// before them. Keys and values depend on the whole prefix, so equal keys mean equal contents.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlockKey {
    pub parent: u64,
    pub tokens: Vec<u32>,
}

impl BlockKey {
    /// The hash that identifies this block as the parent of the next one.
    pub fn chain_hash(&self) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut hasher);
        hasher.finish()
    }
}

/// The chain hash before a sequence's first block.
pub const ROOT_HASH: u64 = 0x6b69_6c6e; // "kiln"

#[derive(Debug)]
pub struct KvBlockAllocator {
    block_size: usize,
    ref_counts: Vec<u32>,
    /// Unreferenced blocks with no cached contents.
    free: Vec<u32>,
    /// Unreferenced blocks whose contents are cached, by release time: evicted oldest first.
    evictable: BTreeMap<u64, u32>,
    evictable_since: Vec<u64>,
    clock: u64,
    /// The prefix cache: contents → block, and each cached block's key.
    cached: HashMap<BlockKey, u32>,
    key_of_block: Vec<Option<BlockKey>>,
    prefix_caching: bool,
}

impl KvBlockAllocator {
    pub fn new(num_blocks: usize, block_size: usize) -> KvBlockAllocator {
        KvBlockAllocator {
            block_size,
            ref_counts: vec![0; num_blocks],
            // Hand out low ids first (pop from the end), which keeps small workloads compact.
            free: (0..num_blocks as u32).rev().collect(),
            evictable: BTreeMap::new(),
            evictable_since: vec![0; num_blocks],
            clock: 0,
            cached: HashMap::new(),
            key_of_block: vec![None; num_blocks],
            prefix_caching: true,
        }
    }

    pub fn without_prefix_caching(mut self) -> KvBlockAllocator {
        self.prefix_caching = false;
        self
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.ref_counts.len()
    }

    /// Blocks that can be handed out: never used, or holding only cached contents.
    pub fn blocks_free(&self) -> usize {
        self.free.len() + self.evictable.len()
    }

    /// Blocks some sequence holds.
    pub fn blocks_used(&self) -> usize {
        self.num_blocks() - self.blocks_free()
    }

    #[cfg(test)]
    pub fn blocks_cached(&self) -> usize {
        self.cached.len()
    }

    pub fn ref_count(&self, block: u32) -> u32 {
        self.ref_counts[block as usize]
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// One block for a new owner: a never-used one if any, else the oldest cached one (its
    /// cached contents are forgotten).
    pub fn allocate(&mut self) -> Option<u32> {
        let block = match self.free.pop() {
            Some(block) => block,
            None => {
                let (&since, &block) = self.evictable.iter().next()?;
                self.evictable.remove(&since);
                if let Some(key) = self.key_of_block[block as usize].take() {
                    self.cached.remove(&key);
                }
                block
            }
        };
        self.ref_counts[block as usize] = 1;
        Some(block)
    }

    /// One more owner of `block` (a fork, or a prefix-cache hit).
    pub fn retain(&mut self, block: u32) {
        let count = &mut self.ref_counts[block as usize];
        if *count == 0 {
            self.evictable.remove(&self.evictable_since[block as usize]);
        }
        *count += 1;
    }

    /// One owner fewer; an unowned block is free again, keeping its cached contents if any.
    pub fn release_block(&mut self, block: u32) {
        let count = &mut self.ref_counts[block as usize];
        assert!(*count > 0, "block {block} released more often than it was taken");
        *count -= 1;
        if *count == 0 {
            if self.key_of_block[block as usize].is_some() {
                self.clock += 1;
                self.evictable_since[block as usize] = self.clock;
                self.evictable.insert(self.clock, block);
            } else {
                self.free.push(block);
            }
        }
    }

    /// Grows `table` until it covers `tokens` tokens; on failure nothing is taken.
    pub fn grow(&mut self, table: &mut Vec<u32>, tokens: usize) -> bool {
        let needed = self.blocks_for(tokens).saturating_sub(table.len());
        if needed > self.blocks_free() {
            return false;
        }
        for _ in 0..needed {
            table.push(self.allocate().expect("free count was checked above"));
        }
        true
    }

    /// Releases every block of `table` and empties it.
    pub fn release(&mut self, table: &mut Vec<u32>) {
        for block in table.drain(..) {
            self.release_block(block);
        }
    }

    /// The cached block holding exactly `key`, if any (not yet retained).
    pub fn lookup(&self, key: &BlockKey) -> Option<u32> {
        if !self.prefix_caching {
            return None;
        }
        self.cached.get(key).copied()
    }

    /// Remembers that `block`, now full, holds `key`. A block already cached, or contents already
    /// cached in another block, stay as they are.
    pub fn register(&mut self, block: u32, key: BlockKey) {
        if !self.prefix_caching || self.key_of_block[block as usize].is_some() || self.cached.contains_key(&key) {
            return;
        }
        self.cached.insert(key.clone(), block);
        self.key_of_block[block as usize] = Some(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(parent: u64, tokens: &[u32]) -> BlockKey {
        BlockKey { parent, tokens: tokens.to_vec() }
    }

    #[test]
    fn grows_releases_and_refuses_without_partial_allocation() {
        let mut blocks = KvBlockAllocator::new(4, 16);
        let mut a = Vec::new();
        assert!(blocks.grow(&mut a, 17));
        assert_eq!(a.len(), 2);
        assert!(blocks.grow(&mut a, 32), "already covered: takes nothing");
        assert_eq!(blocks.blocks_used(), 2);
        let mut b = Vec::new();
        assert!(!blocks.grow(&mut b, 48), "needs 3, only 2 free");
        assert!(b.is_empty() && blocks.blocks_free() == 2);
        blocks.release(&mut a);
        assert!(a.is_empty() && blocks.blocks_used() == 0);
        assert!(blocks.grow(&mut b, 64));
    }

    #[test]
    fn shared_blocks_are_freed_by_their_last_owner() {
        let mut blocks = KvBlockAllocator::new(2, 4);
        let b = blocks.allocate().unwrap();
        blocks.retain(b);
        assert_eq!(blocks.ref_count(b), 2);
        blocks.release_block(b);
        assert_eq!(blocks.blocks_used(), 1);
        blocks.release_block(b);
        assert_eq!(blocks.blocks_used(), 0);
    }

    #[test]
    fn cached_blocks_survive_release_until_evicted_oldest_first() {
        let mut blocks = KvBlockAllocator::new(3, 2);
        let (a, b) = (blocks.allocate().unwrap(), blocks.allocate().unwrap());
        blocks.register(a, key(ROOT_HASH, &[1, 2]));
        blocks.register(b, key(7, &[3, 4]));
        blocks.release_block(a);
        blocks.release_block(b);
        assert_eq!((blocks.blocks_used(), blocks.blocks_cached()), (0, 2));
        // A hit takes the block back without copying anything.
        assert_eq!(blocks.lookup(&key(ROOT_HASH, &[1, 2])), Some(a));
        blocks.retain(a);
        assert_eq!(blocks.blocks_used(), 1);
        // Allocation prefers never-used blocks, then evicts the oldest cached one (b).
        let c = blocks.allocate().unwrap();
        assert!(c != a && c != b);
        assert_eq!(blocks.allocate(), Some(b));
        assert_eq!(blocks.lookup(&key(7, &[3, 4])), None, "evicted contents are forgotten");
        assert_eq!(blocks.allocate(), None);
        let disabled = KvBlockAllocator::new(1, 2).without_prefix_caching();
        assert_eq!(disabled.lookup(&key(ROOT_HASH, &[1, 2])), None);
    }
}
