//! The CUDA backend: our kernels (cuda/, compiled by build.rs) driven through cudarc.
pub mod kernels {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}
