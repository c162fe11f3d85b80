//! NCCL, the collective library of GPU tensor parallelism, through cudarc's `nccl` bindings: one
//! communicator per GPU, in-place all-reduces on the ranks' streams ([`NcclCollective`]), and
//! the check that the library loads: tools/setup-cuda installs the pinned wheel
//! (cuda/requirements.txt) and links it under the name cudarc opens, build.rs puts its folder on
//! the library search path.
//!
//! Threads: one host thread per rank drives that rank's GPU (`CudaBackend`), and each calls
//! ncclAllReduce for its own communicator alone. The alternative, one thread driving every rank
//! inside ncclGroupStart/End, would interleave N ranks' launch lists at every all-reduce (two
//! per layer) and issue N × hundreds of launches per step from one core; with a thread per rank
//! the ranks' host work overlaps, each rank's step is the single-GPU code path with the
//! all-reduces inline, and each rank captures its own CUDA graph on its own thread (NCCL ≥ 2.9
//! records its kernels into a capturing stream). Not yet run on GPUs: see docs/tensor_parallel.md.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::CudaContext;
use cudarc::nccl::{result, sys};

use super::collective::DeviceCollective;
use super::device::{DeviceArray, Dtype, Gpu};
use super::CudaError;

/// NCCL's version as (major, minor, patch), or why the library cannot be used.
pub fn nccl_version() -> Result<(u32, u32, u32), String> {
    ensure_loadable()?;
    let code = result::get_nccl_version().map_err(|e| format!("ncclGetVersion failed: {e:?}"))? as u32;
    // NCCL ≥ 2.9 encodes major·10000 + minor·100 + patch.
    Ok((code / 10000, code / 100 % 100, code % 100))
}

/// A fresh unique id, what rank 0 creates and every rank's communicator is built from. It needs
/// no GPU, only the library and a network interface for NCCL's bootstrap.
pub fn nccl_unique_id() -> Result<[u8; 128], String> {
    ensure_loadable()?;
    let id = result::get_uniqueid().map_err(|e| format!("ncclGetUniqueId failed: {e:?}"))?;
    Ok(id.internal.map(|c| c as u8))
}

/// NCCL communicators of ranks 0..N, rank r on `gpus[r]`, all in this process.
pub struct NcclCollective {
    /// Declared before `contexts`: destroyed while their devices' contexts still live.
    comms: Vec<Comm>,
    contexts: Vec<Arc<CudaContext>>,
}

/// One communicator; destroyed (after its outstanding operations) on drop.
struct Comm(sys::ncclComm_t);

// SAFETY: a communicator may be used from any thread, one call at a time: rank r's communicator
// is only ever used by the thread driving rank r (`all_reduce_sum(r, ..)`), and destroyed once.
unsafe impl Send for Comm {}
unsafe impl Sync for Comm {}

impl Drop for Comm {
    fn drop(&mut self) {
        // SAFETY: the communicator came from ncclCommInitAll and is destroyed once.
        let _ = unsafe { result::comm_destroy(self.0) };
    }
}

impl NcclCollective {
    /// One communicator per GPU of `gpus` (rank r on `gpus[r]`, each a different device), created
    /// together by ncclCommInitAll, which makes the one unique id and initialises every rank
    /// inside one group, so a single thread can build them all.
    pub fn new(gpus: &[&Gpu]) -> Result<NcclCollective, CudaError> {
        ensure_loadable().map_err(CudaError::Nccl)?;
        let ordinals: Vec<i32> = gpus.iter().map(|gpu| gpu.info.ordinal as i32).collect();
        let mut distinct = ordinals.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() != ordinals.len() {
            return Err(CudaError::Nccl(format!("ranks must be on different GPUs, they are on {ordinals:?}")));
        }
        let mut comms = vec![std::ptr::null_mut(); gpus.len()];
        // SAFETY: `comms` has room for one communicator per listed device.
        unsafe { result::comm_init_all(comms.as_mut_ptr(), gpus.len() as i32, ordinals.as_ptr()) }
            .map_err(|e| CudaError::Nccl(format!("ncclCommInitAll over GPUs {ordinals:?} failed: {e:?}")))?;
        Ok(NcclCollective {
            comms: comms.into_iter().map(Comm).collect(),
            contexts: gpus.iter().map(|gpu| gpu.context().clone()).collect(),
        })
    }
}

impl DeviceCollective for NcclCollective {
    fn world_size(&self) -> usize {
        self.comms.len()
    }

    fn capturable(&self) -> bool {
        true
    }

    fn all_reduce_sum(&self, rank: usize, gpu: &Gpu, values: DeviceArray) -> Result<(), CudaError> {
        values.expect("an all-reduced array", Dtype::F32, values.len)?;
        self.contexts[rank].bind_to_thread()?;
        let stream = gpu.stream().cu_stream() as sys::cudaStream_t;
        let data = values.ptr as *mut c_void;
        // SAFETY: `values` is a live f32 device array on this rank's GPU; in place (send = receive
        // buffer) is allowed; the stream is this rank's, on the communicator's device.
        unsafe {
            result::all_reduce(
                data,
                data,
                values.len,
                sys::ncclDataType_t::ncclFloat32,
                sys::ncclRedOp_t::ncclSum,
                self.comms[rank].0,
                stream,
            )
        }
        .map_err(|e| CudaError::Nccl(format!("ncclAllReduce of {} values on rank {rank} failed: {e:?}", values.len)))?;
        Ok(())
    }
}

/// Whether NCCL loads, or what to do about it.
pub fn check_loadable() -> Result<(), CudaError> {
    ensure_loadable().map_err(CudaError::Nccl)
}

/// cudarc panics when it cannot open the library; say what to do instead.
fn ensure_loadable() -> Result<(), String> {
    // SAFETY: only opens the library by its candidate names to see whether one loads.
    if unsafe { cudarc::nccl::sys::is_culib_present() } {
        Ok(())
    } else {
        Err("NCCL is not loadable as libnccl.so: run tools/setup-cuda (it installs the pinned NCCL wheel and links \
             libnccl.so beside it) and rebuild, or put a libnccl.so of NCCL for CUDA 13 on LD_LIBRARY_PATH"
            .into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pinned_nccl_loads_and_makes_unique_ids_without_a_gpu() {
        let (major, minor, _) = nccl_version().unwrap();
        assert_eq!((major, minor), (2, 32), "the version cuda/requirements.txt pins");
        let (a, b) = (nccl_unique_id().unwrap(), nccl_unique_id().unwrap());
        assert!(a.iter().any(|&x| x != 0), "an id has content");
        assert_ne!(a, b, "each id is new");
    }
}
