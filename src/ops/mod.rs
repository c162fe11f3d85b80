//! The CPU reference: one plain function per operation of the Llama forward pass, each with unit
//! tests. Every later kernel (fast CPU or CUDA) is tested against these.

pub mod attention;
pub mod embedding;
pub mod logits;
pub mod matmul;
pub mod rmsnorm;
pub mod rope;
pub mod silu_mul;
