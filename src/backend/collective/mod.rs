//! The collective operations tensor parallelism needs, behind one small interface: ranks compute
//! their shard of a product and sum the partial results. Two implementations: [`cpu`] (ranks as
//! threads of one process, for the CPU backend and for testing the sharding without GPUs) and
//! NCCL for GPUs (the CUDA backend).

pub mod cpu;

/// A group of `world_size` ranks that reduce together. Every rank calls each operation in the
/// same order with buffers of the same length; a call returns when every rank has its result.
pub trait Collective: Send + Sync {
    fn world_size(&self) -> usize;

    /// `values` becomes the element-wise sum of every rank's `values`, the same bits on every
    /// rank.
    fn all_reduce_sum(&self, rank: usize, values: &mut [f32]);
}
