//! The CPU KV cache: f16 keys and values in fixed-size blocks, allocated once and made resident
//! at start-up. f16, not f32: a batched decode step streams every sequence's keys and values
//! from memory once, so attention's time is their bytes (a quarter of a 16-stream step at 100
//! positions in f32); f16 halves that and doubles the tokens a memory budget holds, as the GPU
//! backend's cache (the model's dtype) and llama.cpp's default do. The rounding (2⁻¹¹ relative) is
//! far below what the products' own f32 sums and the weights' quantization add.
//! Layout per layer: one block contiguous, `[num_blocks, block]`; within a block, keys
//! `[num_kv_heads, head_dim, block_size]` (k-major, the panel attention's Q·Kᵀ reads in place,
//! `kernels::attention::key_column`) and values `[num_kv_heads, block_size, head_dim]`
//! (`kernels::attention::block_row`).

use super::kernels::attention::{block_row, key_column};
use half::f16;

use crate::backend::KvLayout;
use crate::model::ModelConfig;

pub struct CpuKvCache {
    layout: KvLayout,
    kv_dim: usize,
    head_dim: usize,
    /// `[layers][num_blocks * block_size * kv_dim]`
    keys: Vec<Vec<f16>>,
    values: Vec<Vec<f16>>,
}

impl CpuKvCache {
    pub fn new(config: &ModelConfig, layout: KvLayout) -> CpuKvCache {
        let per_layer = layout.num_blocks * layout.block_size * config.kv_dim();
        CpuKvCache {
            layout,
            kv_dim: config.kv_dim(),
            head_dim: config.head_dim,
            keys: (0..config.num_layers).map(|_| resident_zeros(per_layer)).collect(),
            values: (0..config.num_layers).map(|_| resident_zeros(per_layer)).collect(),
        }
    }

    /// Bytes one token occupies across all layers (keys and values).
    pub fn bytes_per_token(config: &ModelConfig) -> usize {
        2 * config.num_layers * config.kv_dim() * std::mem::size_of::<f16>()
    }

    pub fn layout(&self) -> KvLayout {
        self.layout
    }

    /// Where a block starts in a layer's keys or values.
    fn block_start(&self, block: usize) -> usize {
        block * self.layout.block_size * self.kv_dim
    }

    /// Stores one token's `[kv_dim]` key and value (heads side by side, as the projections make
    /// them) at row `offset` of `block`.
    pub fn write(&mut self, layer: usize, block: usize, offset: usize, key: &[f32], value: &[f32]) {
        use half::slice::HalfFloatSliceExt;
        let (d, block_size, start) = (self.head_dim, self.layout.block_size, self.block_start(block));
        // Whole slices convert with F16C where the CPU has it; one value at a time, each
        // conversion is a call that checks for it (5% of a 16-stream step went there).
        const CHUNK: usize = 64;
        let mut key_halves = [f16::ZERO; CHUNK];
        for (kv_head, (key, value)) in key.chunks_exact(d).zip(value.chunks_exact(d)).enumerate() {
            let column = start + key_column(block_size, d, kv_head) + offset;
            for (part, key) in key.chunks(CHUNK).enumerate() {
                let halves = &mut key_halves[..key.len()];
                halves.convert_from_f32_slice(key);
                let first = column + part * CHUNK * block_size;
                for (i, &k) in halves.iter().enumerate() {
                    self.keys[layer][first + i * block_size] = k;
                }
            }
            let row = start + block_row(block_size, d, kv_head, offset);
            self.values[layer][row..row + d].convert_from_f32_slice(value);
        }
    }

    /// The keys and values of one block (layouts above), for the kernels, which read them in place.
    pub fn block(&self, layer: usize, block: usize) -> (&[f16], &[f16]) {
        let (start, len) = (self.block_start(block), self.layout.block_size * self.kv_dim);
        (&self.keys[layer][start..start + len], &self.values[layer][start..start + len])
    }

    /// Copies a whole block (all layers): copy-on-write of shared prompt blocks.
    pub fn copy_block(&mut self, source: usize, destination: usize) {
        let len = self.layout.block_size * self.kv_dim;
        let (from, to) = (self.block_start(source), self.block_start(destination));
        for layer in 0..self.keys.len() {
            self.keys[layer].copy_within(from..from + len, to);
            self.values[layer].copy_within(from..from + len, to);
        }
    }
}

/// `len` zeros whose pages are all resident. A zeroed allocation is only address space until
/// first written: the cache would then fault its pages in during serving (measured: a 16-way
/// decode step slowed by ~2 ms each time the sequences entered new blocks), and a cache larger
/// than the machine's free memory would fail mid-request instead of at start-up.
fn resident_zeros(len: usize) -> Vec<f16> {
    use rayon::prelude::*;
    // Allocated as u16 zeros so the allocator hands out zeroed pages (f16 has no such fast path
    // in `vec!`, which would write every element on one thread); f16's zero is all-zero bits.
    let mut values: Vec<f16> = bytemuck::allocation::cast_vec(vec![0u16; len]);
    const PAGE_FLOATS: usize = 4096 / std::mem::size_of::<f16>();
    values.par_chunks_mut(PAGE_FLOATS << 8).for_each(|chunk| {
        for page in chunk.chunks_mut(PAGE_FLOATS) {
            // SAFETY: `page` is a live, exclusively borrowed, non-empty slice. A volatile write
            // cannot be dropped as redundant (the memory is already zero), so the page is touched.
            unsafe { std::ptr::write_volatile(page.as_mut_ptr(), f16::ZERO) };
        }
    });
    values
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::kernels::attention::{block_row, key_column};

    /// Each written value lands, rounded to f16, where the attention kernels read it: keys
    /// k-major, values as rows. Head sizes below, at and above the conversion chunk (64).
    #[test]
    fn writes_land_in_the_kernels_layout() {
        for head_dim in [16, 64, 80, 128, 256] {
            let mut config = crate::model::random::tiny_test_config();
            config.head_dim = head_dim;
            let (kv_heads, block_size) = (config.num_kv_heads, 4);
            let mut cache = CpuKvCache::new(&config, KvLayout { block_size, num_blocks: 3 });
            let kv_dim = kv_heads * head_dim;
            let key: Vec<f32> = (0..kv_dim).map(|i| i as f32 * 0.5 + 0.25).collect();
            let value: Vec<f32> = (0..kv_dim).map(|i| -(i as f32) - 0.5).collect();
            cache.write(1, 2, 3, &key, &value);
            let (keys, values) = cache.block(1, 2);
            for h in 0..kv_heads {
                for i in 0..head_dim {
                    let stored_key = keys[key_column(block_size, head_dim, h) + i * block_size + 3];
                    assert_eq!(stored_key, f16::from_f32(key[h * head_dim + i]), "key {h}/{i} of head_dim {head_dim}");
                    let stored_value = values[block_row(block_size, head_dim, h, 3) + i];
                    assert_eq!(stored_value, f16::from_f32(value[h * head_dim + i]), "value {h}/{i}");
                }
            }
            // Nothing else in the block, nor in other blocks or layers, was touched.
            let written = |all: &[f16]| all.iter().filter(|v| **v != f16::ZERO).count();
            assert_eq!(written(keys) + written(values), 2 * kv_dim, "head_dim {head_dim}");
            let (other_keys, other_values) = cache.block(0, 2);
            assert_eq!(written(other_keys) + written(other_values), 0);
        }
    }
}
