//! Bookkeeping of the KV cache's fixed-size blocks: which are free, which a sequence holds.
//! The memory itself belongs to the backend; this only hands out block ids.

#[derive(Debug)]
pub struct KvBlockAllocator {
    block_size: usize,
    num_blocks: usize,
    free: Vec<u32>,
}

impl KvBlockAllocator {
    pub fn new(num_blocks: usize, block_size: usize) -> KvBlockAllocator {
        // Hand out low ids first (pop from the end), which keeps small workloads compact.
        let free = (0..num_blocks as u32).rev().collect();
        KvBlockAllocator { block_size, num_blocks, free }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    pub fn blocks_free(&self) -> usize {
        self.free.len()
    }

    pub fn blocks_used(&self) -> usize {
        self.num_blocks - self.free.len()
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// Grows `table` until it covers `tokens` tokens; on failure nothing is taken.
    pub fn grow(&mut self, table: &mut Vec<u32>, tokens: usize) -> bool {
        let needed = self.blocks_for(tokens).saturating_sub(table.len());
        if needed > self.free.len() {
            return false;
        }
        for _ in 0..needed {
            table.push(self.free.pop().expect("free count was checked above"));
        }
        true
    }

    /// Returns every block of `table` and empties it.
    pub fn release(&mut self, table: &mut Vec<u32>) {
        self.free.append(table);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
