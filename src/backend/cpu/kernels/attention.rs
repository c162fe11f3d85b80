//! Causal grouped-query attention for one query token, reading keys and values in place from the
//! paged KV cache: the reference (`ops::attention`) looks every position up through a closure,
//! this walks the sequence block by block, so a block's rows are consecutive memory.
//!
//! Per KV head, the key of a position is loaded once for all query heads of its group, and the
//! value rows are accumulated with the softmax weights as vector FMAs along head_dim. Bound by the
//! dot products' horizontal sums at short contexts and by KV bandwidth at long ones.

use std::cell::RefCell;
use std::ops::Range;

use super::{exp, fma, Isa};
use crate::ops::attention::AttentionShape;

thread_local! {
    /// `[num_heads, visible positions]` scores, then softmax weights.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `out[h] = softmax(q[h] · K[kv(h)]ᵀ / √d) · V[kv(h)]` over the positions in `visible`.
///
/// q and out are `[num_heads, head_dim]`. `block(i)` returns the keys and values of the
/// sequence's i-th KV block, each `[block_size, kv_dim]`, so position p is row `p % block_size`
/// of block `p / block_size`.
pub fn attention<'a>(
    isa: Isa,
    q: &[f32],
    shape: AttentionShape,
    visible: Range<usize>,
    block_size: usize,
    block: impl Fn(usize) -> (&'a [f32], &'a [f32]),
    out: &mut [f32],
) {
    assert_eq!(q.len(), shape.num_heads * shape.head_dim, "query must be [heads, head_dim]");
    assert_eq!(out.len(), q.len(), "attention output must be [heads, head_dim]");
    assert!(!visible.is_empty(), "a query always sees at least its own position");
    assert!(shape.num_kv_heads > 0 && shape.num_heads % shape.num_kv_heads == 0, "heads must group evenly");
    SCORES.with_borrow_mut(|scores| {
        scores.resize(shape.num_heads * visible.len(), 0.0);
        match isa {
            // SAFETY: callers pass only levels `Isa::supported` confirmed for this CPU.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { attention_avx512(q, shape, visible, block_size, block, scores, out) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { attention_avx2(q, shape, visible, block_size, block, scores, out) },
            _ => attention_body::<false, _>(q, shape, visible, block_size, block, scores, out),
        }
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
unsafe fn attention_avx512<'a>(
    q: &[f32],
    shape: AttentionShape,
    visible: Range<usize>,
    block_size: usize,
    block: impl Fn(usize) -> (&'a [f32], &'a [f32]),
    scores: &mut [f32],
    out: &mut [f32],
) {
    attention_body::<true, _>(q, shape, visible, block_size, block, scores, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attention_avx2<'a>(
    q: &[f32],
    shape: AttentionShape,
    visible: Range<usize>,
    block_size: usize,
    block: impl Fn(usize) -> (&'a [f32], &'a [f32]),
    scores: &mut [f32],
    out: &mut [f32],
) {
    attention_body::<true, _>(q, shape, visible, block_size, block, scores, out)
}

#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let mut partial = [0f32; 16];
    let (a_chunks, b_chunks) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(x, y)| x * y).sum();
    for (a, b) in a_chunks.zip(b_chunks) {
        for l in 0..16 {
            partial[l] = fma::<FMA>(a[l], b[l], partial[l]);
        }
    }
    partial.iter().sum::<f32>() + tail
}

#[inline(always)]
fn attention_body<'a, const FMA: bool, B: Fn(usize) -> (&'a [f32], &'a [f32])>(
    q: &[f32],
    shape: AttentionShape,
    visible: Range<usize>,
    block_size: usize,
    block: B,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let AttentionShape { num_heads, num_kv_heads, head_dim } = shape;
    let (group, kv_dim, len) = (num_heads / num_kv_heads, num_kv_heads * head_dim, visible.len());
    let scale = 1.0 / (head_dim as f32).sqrt();
    // Positions are walked block by block with plain loops: a closure here would be compiled
    // without the caller's target features and turn every FMA into a library call.
    let mut p = visible.start;
    while p < visible.end {
        let (keys, _) = block(p / block_size);
        let first_row = p % block_size;
        let rows = (block_size - first_row).min(visible.end - p);
        for row in first_row..first_row + rows {
            let key_row = &keys[row * kv_dim..(row + 1) * kv_dim];
            let i = p + row - first_row - visible.start;
            for (g, key) in key_row.chunks_exact(head_dim).enumerate() {
                for h in g * group..(g + 1) * group {
                    scores[h * len + i] = dot::<FMA>(&q[h * head_dim..(h + 1) * head_dim], key) * scale;
                }
            }
        }
        p += rows;
    }
    for head_scores in scores.chunks_exact_mut(len) {
        // Subtracting the maximum keeps exp() in range; it cancels in the normalisation.
        let max = head_scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0.0;
        for s in head_scores.iter_mut() {
            *s = exp::<FMA>(*s - max);
            total += *s;
        }
        let inverse = 1.0 / total;
        for s in head_scores.iter_mut() {
            *s *= inverse;
        }
    }
    out.fill(0.0);
    let mut p = visible.start;
    while p < visible.end {
        let (_, values) = block(p / block_size);
        let first_row = p % block_size;
        let rows = (block_size - first_row).min(visible.end - p);
        for row in first_row..first_row + rows {
            let value_row = &values[row * kv_dim..(row + 1) * kv_dim];
            let i = p + row - first_row - visible.start;
            for (g, value) in value_row.chunks_exact(head_dim).enumerate() {
                for h in g * group..(g + 1) * group {
                    let weight = scores[h * len + i];
                    for (o, &v) in out[h * head_dim..(h + 1) * head_dim].iter_mut().zip(value) {
                        *o = fma::<FMA>(weight, v, *o);
                    }
                }
            }
        }
        p += rows;
    }
}
