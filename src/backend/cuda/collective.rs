//! The all-reduce that tensor-parallel ranks of the CUDA executor run between their launches: an
//! in-place sum of an f32 device array, ordered on the rank's stream. Two implementations: NCCL
//! (`nccl::NcclCollective`: GPUs, capturable into CUDA graphs) and [`HostStaged`] (through host
//! memory and the CPU `ThreadCollective`: any device, the emulator included, for testing the
//! sharding where NCCL cannot run).

use std::sync::Mutex;

use super::device::{DeviceArray, Dtype, Gpu};
use super::CudaError;
use crate::backend::collective::cpu::ThreadCollective;
use crate::backend::collective::Collective;

/// A group of ranks, each driven by a host thread of its own, that sum device arrays together.
/// Every rank calls `all_reduce_sum` for arrays of the same length in the same order.
pub trait DeviceCollective: Send + Sync {
    fn world_size(&self) -> usize;

    /// Whether the all-reduce may be recorded into a CUDA graph: it only enqueues work on the
    /// stream and never waits on the host.
    fn capturable(&self) -> bool;

    /// Enqueues on `gpu`'s stream: `values` becomes the element-wise sum of every rank's
    /// `values`. May return before the sum is done (NCCL) or after (host-staged).
    fn all_reduce_sum(&self, rank: usize, gpu: &Gpu, values: DeviceArray) -> Result<(), CudaError>;
}

/// Device → host, the CPU collective's rank-ordered sum, host → device: every rank waits for its
/// stream at each all-reduce, so it cannot be captured (run with graphs off). Slow and simple:
/// it proves the sharding and the places of the all-reduces on any driver, the emulator
/// included, where NCCL needs real GPUs. Its sum is the CPU backend's, bit for bit.
pub struct HostStaged {
    ranks: ThreadCollective,
    /// Each rank's host copy of the array being reduced; only rank r's thread locks `staging[r]`,
    /// and it keeps its capacity, so steps after the first allocate nothing.
    staging: Vec<Mutex<Vec<f32>>>,
}

impl HostStaged {
    pub fn new(world_size: usize) -> HostStaged {
        HostStaged {
            ranks: ThreadCollective::new(world_size),
            staging: (0..world_size).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }
}

impl DeviceCollective for HostStaged {
    fn world_size(&self) -> usize {
        self.ranks.world_size()
    }

    fn capturable(&self) -> bool {
        false
    }

    fn all_reduce_sum(&self, rank: usize, gpu: &Gpu, values: DeviceArray) -> Result<(), CudaError> {
        values.expect("an all-reduced array", Dtype::F32, values.len)?;
        let mut host = self.staging[rank].lock().expect("only this rank's thread uses its staging buffer");
        host.resize(values.len, 0.0);
        gpu.copy_to_host(bytemuck::cast_slice_mut(&mut host[..]), values)?;
        gpu.synchronize()?;
        self.ranks.all_reduce_sum(rank, &mut host);
        gpu.copy_to_device(values, bytemuck::cast_slice(&host[..]))?;
        // The copy reads pageable memory this rank rewrites at its next all-reduce.
        gpu.synchronize()
    }
}
