//! Which vector instructions the kernels use, detected once at run time.
//!
//! `Portable` is plain Rust written so the compiler can vectorize it for the build target (SSE2 on
//! x86-64, NEON on aarch64); the x86 levels use explicit intrinsics. `KILN_CPU_KERNELS=portable`
//! (or `avx2`) caps the level, to compare paths or to rule a kernel out when chasing a bug.

use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    Portable,
    /// AVX2 + FMA + F16C (Haswell, Zen 1 and later).
    Avx2,
    /// AVX-512 F/BW/VL/VNNI + FMA + F16C (Ice Lake, Zen 4 and later).
    Avx512,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Whether this machine can run the level.
    pub fn supported(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.supported()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Every level this machine runs, lowest first: what the kernel tests iterate over.
    pub fn available() -> Vec<Isa> {
        [Isa::Portable, Isa::Avx2, Isa::Avx512].into_iter().filter(|isa| isa.supported()).collect()
    }

    /// The best supported level, capped by `KILN_CPU_KERNELS`; detected on first use.
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            let cap = match std::env::var("KILN_CPU_KERNELS").as_deref() {
                Ok("portable") => Isa::Portable,
                Ok("avx2") => Isa::Avx2,
                _ => Isa::Avx512,
            };
            Isa::available().into_iter().filter(|&isa| isa <= cap).max().unwrap_or(Isa::Portable)
        })
    }
}
