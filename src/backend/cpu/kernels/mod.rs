//! Fast CPU kernels behind the same operations as the reference in `crate::ops`, which stays the
//! plain fallback and the oracle every kernel is tested against (tests/cpu_kernels.rs).
//!
//! Dispatch: [`Isa::best`] picks AVX-512, AVX2 or the portable path once at run time; every op has
//! a `*_with(isa, ..)` form so tests can run each level on the same inputs. The matmul and the
//! quantized dot products are written with intrinsics; the cheap element-wise ops and attention are
//! plain Rust compiled once per level through [`multiversion!`], so the compiler vectorizes the
//! same source for each instruction set. Work is split over rayon's global pool, whose threads
//! live as long as the process: a step creates no threads.

pub mod amx;
pub mod attention;
pub mod convert;
mod dot_tile;
mod gemm;
pub mod group_dot;
mod isa;
pub mod matmul;
pub mod peak;
pub mod quant_dot;
pub mod rmsnorm;
pub mod rope;
pub mod silu_mul;

pub use isa::Isa;

/// Below this many elements an op runs on the calling thread.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 15;

/// Rows per rayon task for a row-wise op over `len` elements of `dim`-wide rows: two tasks per
/// thread, so that uneven rows still balance.
pub(crate) fn rows_per_task(dim: usize, len: usize) -> usize {
    let rows = len / dim;
    rows.div_ceil(2 * rayon::current_num_threads()).max(1)
}

/// Defines `$name(isa, args..)` that runs `$body_fn(args..)` compiled for the given level: plain
/// Rust, inlined into a `#[target_feature]` wrapper per x86 level so LLVM vectorizes it with that
/// level's registers. `$body_fn` takes a `const FMA: bool` telling it whether `mul_add` is a
/// single instruction (without FMA it would be a slow library call).
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $body_fn:ident) => {
        $(#[$meta])*
        $vis fn $name(isa: $crate::backend::cpu::kernels::Isa, $($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
            unsafe fn avx512($($arg: $ty),*) $(-> $ret)? { $body_fn::<true>($($arg),*) }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { $body_fn::<true>($($arg),*) }
            match isa {
                // SAFETY: callers only pass levels that `Isa::supported` confirmed for this CPU.
                #[cfg(target_arch = "x86_64")]
                $crate::backend::cpu::kernels::Isa::Avx512 => unsafe { avx512($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                $crate::backend::cpu::kernels::Isa::Avx2 => unsafe { avx2($($arg),*) },
                _ => $body_fn::<false>($($arg),*),
            }
        }
    };
}
pub(crate) use multiversion;

/// Asks for `bytes` to be brought into cache ahead of use: decode streams weights from memory with
/// enough arithmetic between loads that the hardware prefetcher alone falls behind.
#[inline]
pub(crate) fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        // SAFETY: a prefetch is only a hint; the address is inside a live slice.
        unsafe { std::arch::x86_64::_mm_prefetch(line.as_ptr() as *const i8, std::arch::x86_64::_MM_HINT_T0) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// `a·b + c`, fused where the level has FMA.
#[inline(always)]
pub(crate) fn fma<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// eˣ to about 2 ulp for x in [−87, 88] (clamped outside), branch-free so it vectorizes:
/// x = n·ln2 + r with |r| ≤ ln2/2, eʳ by a degree-6 polynomial, 2ⁿ by building the exponent.
#[inline(always)]
pub(crate) fn exp<const FMA: bool>(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    // ln2 split in two so n·ln2 is exact to f32 precision.
    let r = fma::<FMA>(n, -0.693_145_75, x);
    let r = fma::<FMA>(n, -1.428_606_8e-6, r);
    let mut p = 1.0 / 720.0;
    p = fma::<FMA>(p, r, 1.0 / 120.0);
    p = fma::<FMA>(p, r, 1.0 / 24.0);
    p = fma::<FMA>(p, r, 1.0 / 6.0);
    p = fma::<FMA>(p, r, 0.5);
    p = fma::<FMA>(p, r, 1.0);
    p = fma::<FMA>(p, r, 1.0);
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    #[test]
    fn fast_exp_matches_std_within_a_few_ulp() {
        let mut worst = 0f32;
        for i in -87_000..=88_000 {
            let x = i as f32 / 1000.0;
            let (got, want) = (super::exp::<false>(x), x.exp());
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        let floor = super::exp::<false>(-1000.0);
        assert!(floor > 0.0 && (floor / (-87f32).exp() - 1.0).abs() < 1e-6, "clamped below: {floor}");
    }
}
