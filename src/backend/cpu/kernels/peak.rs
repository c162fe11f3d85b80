//! The machine's measured arithmetic peak: what every core of the pool does when it runs nothing
//! but independent f32 FMAs, or nothing but 8-bit dot products (VNNI `vpdpbusd` on AVX-512, the
//! `vpmaddubsw` + `vpmaddwd` + add sequence the AVX2 kernels use). Benchmarks divide their
//! achieved arithmetic by it, so a number like "28% of peak" is measured on the machine at hand,
//! at its real clock under vector load, rather than taken from a data sheet.
//!
//! Each pool thread runs a loop of `CHAINS` independent accumulators (enough to cover the
//! instruction latency on current x86 cores) for a fixed number of iterations and times itself;
//! the threads' rates add up. The results are consumed, so the compiler cannot drop the loop.

use std::time::Instant;

use super::Isa;

/// Independent accumulators per thread: latency 4-5 cycles × 2 ports.
const CHAINS: usize = 12;

/// Arithmetic peaks, in operations per second (a multiply-add counts two).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Peak {
    pub f32_flops: f64,
    /// 8-bit multiply-adds counted as two operations each.
    pub int8_ops: f64,
    /// The same on AMX tiles (`tdpbsud`), where the machine has them: the batched steps' unit.
    pub amx_int8_ops: Option<f64>,
}

impl Peak {
    /// The 8-bit peak of the unit batched steps multiply on: AMX tiles where present.
    pub fn batched_int8_ops(&self) -> f64 {
        self.amx_int8_ops.unwrap_or(self.int8_ops)
    }
}

/// Measures both peaks on every thread of the current rayon pool, at `isa` (~0.2 s in all).
pub fn measure(isa: Isa) -> Peak {
    // `broadcast` runs the loop once on every pool thread. A parallel iterator over `threads`
    // items does not promise that: a thread still waking up lets another take both halves one
    // after the other, and the peak came out halved whenever the pool had been idle before (as
    // after a single-threaded step of loading).
    // Each thread times its own loop, and the rates add up: a thread that picks the loop up late
    // (busy with other work on the pool) then does not count as a slow core.
    let run = |kernel: fn(Isa, usize) -> f32, ops_per_iteration: f64, iterations: usize| {
        // A short warm-up lets the cores reach their vector clock first.
        rayon::broadcast(|_| std::hint::black_box(kernel(isa, iterations / 8)));
        let seconds = rayon::broadcast(|_| {
            let started = Instant::now();
            std::hint::black_box(kernel(isa, iterations));
            started.elapsed().as_secs_f64()
        });
        seconds.iter().map(|s| ops_per_iteration * iterations as f64 / s).sum()
    };
    let amx_int8_ops = match super::amx::detected(isa) {
        Some(super::amx::TileSource::Hardware(_)) => {
            Some(run(amx_loop_on_hardware, (AMX_CHAINS * TILE_MACS * 2) as f64, 200_000))
        }
        _ => None,
    };
    Peak {
        f32_flops: run(fma_loop, (CHAINS * lanes(isa) * 2) as f64, 4_000_000),
        int8_ops: run(int8_loop, (CHAINS * lanes(isa) * 4 * 2) as f64, 2_000_000),
        amx_int8_ops,
    }
}

/// Independent tile accumulators of the AMX loop (tdpbsud's latency is a few times its issue
/// interval).
const AMX_CHAINS: usize = 4;
/// Multiply-adds of one `tdpbsud` on full tiles: 16 × 16 i32 sums of 64 byte products.
const TILE_MACS: usize = 16 * 16 * 64;

fn amx_loop_on_hardware(isa: Isa, iterations: usize) -> f32 {
    match super::amx::detected(isa) {
        Some(super::amx::TileSource::Hardware(mut unit)) => amx_loop(&mut unit, iterations),
        _ => unreachable!("measured only where the hardware has tiles"),
    }
}

/// `iterations` rounds of AMX_CHAINS tile dot products on full 16 × 64-byte tiles (C: tiles 0-3,
/// A: 4, B: 5); returns a value that depends on all of them.
fn amx_loop<U: super::amx::TileUnit>(unit: &mut U, iterations: usize) -> f32 {
    let full = (16, 64);
    let operand = [1u8; 16 * 64];
    let mut sums = [0i32; 16 * 16];
    // SAFETY: configured for the shapes used, released at the end; the operands are 16 rows of
    // 64 bytes.
    unsafe {
        unit.configure(&super::amx::TileConfig::new(&[full; 6]));
        unit.load::<4>(std::hint::black_box(operand.as_ptr()), 64);
        unit.load::<5>(operand.as_ptr(), 64);
        for _ in 0..iterations {
            unit.dot_signed_unsigned::<0, 4, 5>();
            unit.dot_signed_unsigned::<1, 4, 5>();
            unit.dot_signed_unsigned::<2, 4, 5>();
            unit.dot_signed_unsigned::<3, 4, 5>();
        }
        unit.store::<0>(sums.as_mut_ptr() as *mut u8, 64);
        unit.release();
    }
    sums.iter().map(|&v| v as f32).sum()
}

/// f32 lanes per vector at `isa` (the portable loop is written to be vectorized 4 wide).
fn lanes(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => 16,
        Isa::Avx2 => 8,
        Isa::Portable => 4,
    }
}

/// `iterations` rounds of CHAINS vector FMAs; returns a value that depends on all of them.
fn fma_loop(isa: Isa, iterations: usize) -> f32 {
    match isa {
        // SAFETY: callers measure only levels the CPU supports.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::fma_avx512(iterations) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::fma_avx2(iterations) },
        _ => {
            let mut acc = [[1.0f32; 4]; CHAINS];
            let (a, b) = (std::hint::black_box(0.999_999f32), std::hint::black_box(1e-7f32));
            for _ in 0..iterations {
                for chain in acc.iter_mut() {
                    for lane in chain.iter_mut() {
                        *lane = lane.mul_add(a, b);
                    }
                }
            }
            acc.iter().flatten().sum()
        }
    }
}

/// `iterations` rounds of CHAINS vector 8-bit dot products (4 byte products per 32-bit lane).
fn int8_loop(isa: Isa, iterations: usize) -> f32 {
    match isa {
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::int8_avx512(iterations) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::int8_avx2(iterations) },
        _ => {
            let mut acc = [[0i32; 4]; CHAINS];
            let (a, b) = (std::hint::black_box([3u8; 16]), std::hint::black_box([-2i8; 16]));
            for _ in 0..iterations {
                for chain in acc.iter_mut() {
                    for (lane, sum) in chain.iter_mut().enumerate() {
                        let quad = lane * 4..lane * 4 + 4;
                        *sum = sum.wrapping_add(
                            a[quad.clone()].iter().zip(&b[quad]).map(|(&x, &y)| x as i32 * y as i32).sum(),
                        );
                    }
                }
            }
            acc.iter().flatten().map(|&v| v as f32).sum()
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::CHAINS;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma_avx512(iterations: usize) -> f32 {
        let a = _mm512_set1_ps(std::hint::black_box(0.999_999));
        let b = _mm512_set1_ps(std::hint::black_box(1e-7));
        let mut acc = [_mm512_set1_ps(1.0); CHAINS];
        for _ in 0..iterations {
            for chain in acc.iter_mut() {
                *chain = _mm512_fmadd_ps(*chain, a, b);
            }
        }
        acc.iter().map(|&v| _mm512_reduce_add_ps(v)).sum()
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma_avx2(iterations: usize) -> f32 {
        let a = _mm256_set1_ps(std::hint::black_box(0.999_999));
        let b = _mm256_set1_ps(std::hint::black_box(1e-7));
        let mut acc = [_mm256_set1_ps(1.0); CHAINS];
        for _ in 0..iterations {
            for chain in acc.iter_mut() {
                *chain = _mm256_fmadd_ps(*chain, a, b);
            }
        }
        let mut lanes = [0f32; 8];
        let mut total = 0.0;
        for v in acc {
            _mm256_storeu_ps(lanes.as_mut_ptr(), v);
            total += lanes.iter().sum::<f32>();
        }
        total
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn int8_avx512(iterations: usize) -> f32 {
        let a = _mm512_set1_epi8(std::hint::black_box(3));
        let b = _mm512_set1_epi8(std::hint::black_box(-2));
        let mut acc = [_mm512_setzero_si512(); CHAINS];
        for _ in 0..iterations {
            for chain in acc.iter_mut() {
                *chain = _mm512_dpbusd_epi32(*chain, a, b);
            }
        }
        acc.iter().map(|&v| _mm512_reduce_add_epi32(v) as f32).sum()
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn int8_avx2(iterations: usize) -> f32 {
        let a = _mm256_set1_epi8(std::hint::black_box(3));
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_si256(); CHAINS];
        for _ in 0..iterations {
            for chain in acc.iter_mut() {
                // The accumulator is also the signed operand, so nothing can be hoisted.
                let pairs = _mm256_maddubs_epi16(a, *chain);
                *chain = _mm256_add_epi32(*chain, _mm256_madd_epi16(pairs, ones));
            }
        }
        let mut lanes = [0i32; 8];
        let mut total = 0.0;
        for v in acc {
            _mm256_storeu_si256(lanes.as_mut_ptr().cast(), v);
            total += lanes.iter().map(|&x| x as f32).sum::<f32>();
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_are_positive_and_int8_outruns_f32_on_simd_levels() {
        for isa in Isa::available() {
            // The other tests share the two cores: the best of three measurements of each peak.
            let start = Peak { f32_flops: 0.0, int8_ops: 0.0, amx_int8_ops: None };
            let peak = (0..3).map(|_| measure(isa)).fold(start, |best, p| Peak {
                f32_flops: best.f32_flops.max(p.f32_flops),
                int8_ops: best.int8_ops.max(p.int8_ops),
                amx_int8_ops: p.amx_int8_ops.into_iter().chain(best.amx_int8_ops).reduce(f64::max),
            });
            assert!(peak.f32_flops > 1e8 && peak.int8_ops > 1e8, "{isa:?}: {peak:?}");
            if isa != Isa::Portable {
                // Four byte products per 32-bit lane: at least twice the f32 rate even on AVX2.
                assert!(peak.int8_ops > 1.5 * peak.f32_flops, "{isa:?}: {peak:?}");
            }
            if let Some(amx) = peak.amx_int8_ops {
                // A tile product is 256 vector dot products' worth.
                assert!(amx > 2.0 * peak.int8_ops, "{isa:?}: {peak:?}");
            }
        }
    }

    /// The AMX loop's tiles fit each other and its count is right: on the emulator, two rounds
    /// on all-ones operands give each sum 2 × 64.
    #[test]
    fn amx_peak_loop_runs_on_emulated_tiles() {
        let mut unit = super::super::amx::EmulatedTiles::default();
        assert_eq!(amx_loop(&mut unit, 2), (16 * 16 * 2 * 64) as f32);
    }
}
