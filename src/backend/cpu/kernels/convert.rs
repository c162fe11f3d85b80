//! Widening f16 and bf16 weight rows to f32 before the float matmul tiles. For batched decode this
//! conversion was a third of the time through `half`'s per-8-element calls; here it is one
//! `vcvtph2ps` per 16 (AVX-512) or 8 (F16C) values, inline in the loop. Memory-bound either way.

use half::{bf16, f16};

use super::Isa;

/// `out[i] = src[i] as f32`.
pub fn f16_to_f32_with(isa: Isa, src: &[f16], out: &mut [f32]) {
    assert_eq!(src.len(), out.len(), "conversion source and destination must have one length");
    match isa {
        // SAFETY: callers only pass levels that `Isa::supported` confirmed for this CPU; both
        // x86 levels include F16C (and Avx512 includes AVX-512F).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::f16_avx512(src, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::f16_f16c(src, out) },
        _ => portable_f16(src, out),
    }
}

/// `out[i] = src[i] as f32`: bf16 is the top half of an f32, so a shift the compiler vectorizes.
pub fn bf16_to_f32(src: &[bf16], out: &mut [f32]) {
    assert_eq!(src.len(), out.len(), "conversion source and destination must have one length");
    for (o, s) in out.iter_mut().zip(src) {
        *o = f32::from_bits((s.to_bits() as u32) << 16);
    }
}

fn portable_f16(src: &[f16], out: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    src.convert_to_f32_slice(out);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    #[target_feature(enable = "avx512f,f16c")]
    pub unsafe fn f16_avx512(src: &[f16], out: &mut [f32]) {
        let whole = src.len() / 16 * 16;
        for i in (0..whole).step_by(16) {
            // SAFETY: i + 16 <= whole <= len for both slices (checked equal by the caller).
            unsafe {
                let halves = _mm256_loadu_si256(src.as_ptr().add(i) as *const __m256i);
                _mm512_storeu_ps(out.as_mut_ptr().add(i), _mm512_cvtph_ps(halves));
            }
        }
        super::portable_f16(&src[whole..], &mut out[whole..]);
    }

    #[target_feature(enable = "avx,f16c")]
    pub unsafe fn f16_f16c(src: &[f16], out: &mut [f32]) {
        let whole = src.len() / 8 * 8;
        for i in (0..whole).step_by(8) {
            // SAFETY: i + 8 <= whole <= len for both slices (checked equal by the caller).
            unsafe {
                let halves = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
                _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_cvtph_ps(halves));
            }
        }
        super::portable_f16(&src[whole..], &mut out[whole..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_level_converts_every_f16_exactly_on_ragged_lengths() {
        // All 65536 bit patterns (NaN payloads, infinities, subnormals included), then ragged tails.
        let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
        for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512].into_iter().filter(|isa| isa.supported()) {
            for len in [all.len(), 0, 1, 7, 8, 9, 15, 16, 17, 33] {
                let src = &all[all.len() - len..];
                let mut out = vec![0.0f32; len];
                f16_to_f32_with(isa, src, &mut out);
                for (s, o) in src.iter().zip(&out) {
                    let expected = s.to_f32();
                    assert!(
                        expected.to_bits() == o.to_bits() || (expected.is_nan() && o.is_nan()),
                        "{isa:?}: {s:?} gave {o}, expected {expected}"
                    );
                }
            }
        }
    }

    #[test]
    fn bf16_widening_is_exact() {
        let src: Vec<bf16> = (0..=u16::MAX).step_by(7).map(bf16::from_bits).collect();
        let mut out = vec![0.0f32; src.len()];
        bf16_to_f32(&src, &mut out);
        for (s, o) in src.iter().zip(&out) {
            assert!(s.to_f32().to_bits() == o.to_bits() || o.is_nan());
        }
    }
}
