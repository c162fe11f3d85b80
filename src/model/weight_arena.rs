//! Moves a model's matrices into one block of anonymous memory backed by 2 MiB pages, in the
//! order a forward pass reads them.
//!
//! Why: every decode step streams all the weights once. Memory-mapped safetensors (and the
//! separate allocations of GGUF or random matrices, most under 2 MiB) sit on 4 KiB pages, so the
//! stream takes a TLB miss and a page walk every 4 KiB, which the hypervisor makes dearer still.
//! Measured on the 2-core build machine, default model, `kiln --threads 2 bench --concurrency 16
//! --decode-prompt-tokens 16 --decode-tokens 64`: 16-request aggregate 647-690 tok/s mapped,
//! 715-733 tok/s with the weights copied onto huge pages (three alternating runs each).
//!
//! The copy costs a pass over the weights at start-up (about 0.1 s for the default model). Each
//! source is let go as soon as it is copied (an owned one dropped, a file mapping's pages
//! released: they stay in the page cache, which the kernel reclaims as needed), so peak memory
//! grows by one matrix, not by the model. Weights that already live in an [`Arena`] (a GGUF's,
//! which `gguf_weights` regroups into one as it reads the file) are not copied again: the second
//! copy held the whole model twice at start-up (measured: peak 524 MiB for the 270 MB f16 GGUF
//! of the default model).

use std::ops::Range;
use std::sync::Arc;

use super::safetensors_dir::{SharedBytes, WeightBytes};
use super::weights::{LlamaWeights, WeightMatrix};

const HUGE_PAGE: usize = 2 << 20;
/// Each matrix starts on a cache line, so row pointers keep the alignment kernels expect.
const MATRIX_ALIGN: usize = 64;

/// Copies every matrix of `weights` into one arena; a matrix that is the same view as one copied
/// before (tied embeddings) stays the same view of the copy. Returns the weights unchanged when
/// the arena cannot be allocated: then the kernels simply run on the original pages.
pub fn into_huge_page_arena(mut weights: LlamaWeights) -> LlamaWeights {
    let mut order: Vec<&mut WeightMatrix> = Vec::new();
    for layer in weights.layers.iter_mut() {
        order.extend([
            &mut layer.q_proj,
            &mut layer.k_proj,
            &mut layer.v_proj,
            &mut layer.o_proj,
            &mut layer.gate_proj,
            &mut layer.up_proj,
            &mut layer.down_proj,
        ]);
    }
    order.push(&mut weights.lm_head);
    let tied = weights.embed_tokens.same_view(order.last().expect("lm_head was pushed"));
    if !tied {
        order.push(&mut weights.embed_tokens);
    }
    if order.iter().all(|m| m.in_weight_arena()) {
        return weights;
    }
    let placements = place(order.iter().map(|m| m.bytes().len()));
    let total = placements.last().map_or(0, |r| r.end);
    let Ok(mut fill) = ArenaFill::new(total) else { return weights };
    for (matrix, range) in order.iter().zip(&placements) {
        fill.bytes_mut()[range.clone()].copy_from_slice(matrix.bytes());
        // A memory-mapped source lets the copied pages go now, so the peak is the arena plus
        // one matrix rather than the model twice.
        matrix.release_source();
    }
    let Ok(arena) = fill.finish() else { return weights };
    let shared: SharedBytes = Arc::new(arena);
    for (matrix, range) in order.into_iter().zip(placements) {
        // Replacing the view drops this matrix's hold on its source right away.
        *matrix = matrix.with_storage(shared.clone(), range);
    }
    if tied {
        weights.embed_tokens = weights.lm_head.clone();
    }
    weights
}

/// Byte ranges for matrices of the given sizes, back to back, each aligned.
fn place(sizes: impl Iterator<Item = usize>) -> Vec<Range<usize>> {
    let mut end = 0usize;
    sizes
        .map(|size| {
            let start = end.next_multiple_of(MATRIX_ALIGN);
            end = start + size;
            start..end
        })
        .collect()
}

/// `len` bytes of anonymous memory advised for transparent huge pages, used from its first 2 MiB
/// boundary, filled once through [`ArenaFill::bytes_mut`] and then read-only ([`Arena`]), shared by
/// the matrices' views.
pub struct ArenaFill {
    map: memmap2::MmapMut,
    start: usize,
    len: usize,
}

impl ArenaFill {
    pub fn new(len: usize) -> std::io::Result<ArenaFill> {
        let map = memmap2::MmapMut::map_anon(len.max(1) + HUGE_PAGE)?;
        // Only a hint: without huge pages the memory works the same.
        let _ = map.advise(memmap2::Advice::HugePage);
        let start = (HUGE_PAGE - map.as_ptr() as usize % HUGE_PAGE) % HUGE_PAGE;
        Ok(ArenaFill { map, start, len })
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.map[self.start..self.start + self.len]
    }

    /// The filled arena, read-only from here on: a stray write to the weights faults.
    pub fn finish(self) -> std::io::Result<Arena> {
        Ok(Arena { map: self.map.make_read_only()?, start: self.start, len: self.len })
    }
}

/// A filled [`ArenaFill`].
pub struct Arena {
    map: memmap2::Mmap,
    start: usize,
    len: usize,
}

impl WeightBytes for Arena {
    fn in_weight_arena(&self) -> bool {
        true
    }
}

impl AsRef<[u8]> for Arena {
    fn as_ref(&self) -> &[u8] {
        &self.map[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::random::{random_llama_weights, tiny_test_config};
    use crate::model::safetensors_dir::WeightDtype;

    #[test]
    fn every_matrix_keeps_its_bytes_and_tied_ones_stay_tied() {
        let mut config = tiny_test_config();
        config.tie_word_embeddings = true;
        let before = random_llama_weights(&config, 5, WeightDtype::F16);
        let expected: Vec<Vec<u8>> = before.layers.iter().map(|l| l.down_proj.bytes().to_vec()).collect();
        let lm_head = before.lm_head.bytes().to_vec();
        let after = into_huge_page_arena(before);
        for (layer, bytes) in after.layers.iter().zip(&expected) {
            assert_eq!(layer.down_proj.bytes(), &bytes[..]);
            assert_eq!(layer.down_proj.bytes().as_ptr() as usize % MATRIX_ALIGN, 0);
        }
        assert_eq!(after.lm_head.bytes(), &lm_head[..]);
        assert!(after.embed_tokens.same_view(&after.lm_head), "tied embeddings share one copy");
        // All in one arena: the first layer's q_proj precedes lm_head in the same memory.
        let q = after.layers[0].q_proj.bytes().as_ptr() as usize;
        let head = after.lm_head.bytes().as_ptr() as usize;
        assert!(q < head && head - q < 64 << 20);
    }

    #[test]
    fn untied_embeddings_are_copied_separately() {
        let mut config = tiny_test_config();
        config.tie_word_embeddings = false;
        let before = random_llama_weights(&config, 6, WeightDtype::F32);
        let (embed, head) = (before.embed_tokens.bytes().to_vec(), before.lm_head.bytes().to_vec());
        let after = into_huge_page_arena(before);
        assert_eq!(after.embed_tokens.bytes(), &embed[..]);
        assert_eq!(after.lm_head.bytes(), &head[..]);
        assert!(!after.embed_tokens.same_view(&after.lm_head));
    }

    /// Weights already in an arena (a GGUF's, or a second call) keep their memory: a second copy
    /// would hold the whole model twice at start-up.
    #[test]
    fn weights_already_in_an_arena_are_not_copied_again() {
        for tie in [true, false] {
            let mut config = tiny_test_config();
            config.tie_word_embeddings = tie;
            let first = into_huge_page_arena(random_llama_weights(&config, 7, WeightDtype::F16));
            assert!(first.layers[0].gate_proj.in_weight_arena() && first.lm_head.in_weight_arena());
            let pointers = |w: &LlamaWeights| {
                let mut all: Vec<usize> = w.layers.iter().map(|l| l.down_proj.bytes().as_ptr() as usize).collect();
                all.extend([w.embed_tokens.bytes().as_ptr() as usize, w.lm_head.bytes().as_ptr() as usize]);
                all
            };
            let before = pointers(&first);
            let second = into_huge_page_arena(first);
            assert_eq!(pointers(&second), before, "tied {tie}");
        }
        // Plain memory is still copied.
        let owned = random_llama_weights(&tiny_test_config(), 8, WeightDtype::F16);
        assert!(!owned.layers[0].q_proj.in_weight_arena());
    }
}
