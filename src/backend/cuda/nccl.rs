//! NCCL, the collective library GPU tensor parallelism will use (through cudarc's `nccl` module:
//! one communicator per GPU from one unique id, in-place all-reduces on device buffers). This file
//! checks that the library loads: tools/setup-cuda installs the pinned wheel (cuda/requirements.txt)
//! and links it under the name cudarc opens, build.rs puts its folder on the library search path.
//! The communicators themselves are not built yet (docs/tensor_parallel.md).

use cudarc::nccl::result;

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
