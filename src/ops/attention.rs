//! Causal grouped-query attention for one query token over the keys and values of its sequence.
//! Where the keys live (a paged cache, a test array) is the caller's business: it passes lookups.

/// Head counts of an attention layer; query head h reads key/value head h / (heads / kv_heads).
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

/// `out[h] = softmax(q[h] · K[kv(h)]ᵀ / √d) · V[kv(h)]` over the positions in `visible`.
///
/// q and out are `[num_heads, head_dim]`; `key(p, kv_head)` and `value(p, kv_head)` return the
/// `[head_dim]` vectors stored for position p. `scores` is scratch, resized as needed.
pub fn attention<'a>(
    q: &[f32],
    shape: AttentionShape,
    visible: std::ops::Range<usize>,
    key: impl Fn(usize, usize) -> &'a [f32],
    value: impl Fn(usize, usize) -> &'a [f32],
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let AttentionShape { num_heads, num_kv_heads, head_dim } = shape;
    assert_eq!(q.len(), num_heads * head_dim, "query must be [heads, head_dim]");
    assert_eq!(out.len(), q.len(), "attention output must be [heads, head_dim]");
    assert!(!visible.is_empty(), "a query always sees at least its own position");
    let group = num_heads / num_kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    for head in 0..num_heads {
        let kv_head = head / group;
        let q_head = &q[head * head_dim..(head + 1) * head_dim];
        scores.clear();
        scores.extend(visible.clone().map(|p| super::matmul::dot(q_head, key(p, kv_head)) * scale));
        // Subtracting the maximum keeps exp() in range; it cancels in the normalisation.
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0.0;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            total += *s;
        }
        let out_head = &mut out[head * head_dim..(head + 1) * head_dim];
        out_head.fill(0.0);
        for (p, &weight) in visible.clone().zip(scores.iter()) {
            let weight = weight / total;
            for (o, &v) in out_head.iter_mut().zip(value(p, kv_head)) {
                *o += weight * v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, seeded_values, test_seed, F32_ACCUMULATION};

    /// Softmax attention written out in f64 with explicit matrices, as the oracle.
    fn naive(q: &[f32], k: &[f32], v: &[f32], shape: AttentionShape, visible: std::ops::Range<usize>) -> Vec<f32> {
        let d = shape.head_dim;
        let kv_dim = shape.num_kv_heads * d;
        let mut out = vec![0.0f32; q.len()];
        for h in 0..shape.num_heads {
            let g = h / (shape.num_heads / shape.num_kv_heads);
            let logits: Vec<f64> = visible
                .clone()
                .map(|p| {
                    (0..d).map(|i| q[h * d + i] as f64 * k[p * kv_dim + g * d + i] as f64).sum::<f64>()
                        / (d as f64).sqrt()
                })
                .collect();
            let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            for i in 0..d {
                out[h * d + i] = visible
                    .clone()
                    .zip(&weights)
                    .map(|(p, w)| w / total * v[p * kv_dim + g * d + i] as f64)
                    .sum::<f64>() as f32;
            }
        }
        out
    }

    #[test]
    fn matches_naive_softmax_attention_with_gqa_and_windows() {
        let seed = test_seed();
        for (case, &(heads, kv_heads, d, len, start)) in
            [(1, 1, 4, 1, 0), (4, 2, 8, 9, 0), (9, 3, 64, 33, 0), (8, 1, 16, 20, 5)].iter().enumerate()
        {
            let shape = AttentionShape { num_heads: heads, num_kv_heads: kv_heads, head_dim: d };
            let q = seeded_values(seed + case as u64, heads * d);
            let k = seeded_values(seed + 10 + case as u64, len * kv_heads * d);
            let v = seeded_values(seed + 20 + case as u64, len * kv_heads * d);
            let kv_dim = kv_heads * d;
            let mut out = vec![f32::NAN; heads * d];
            let mut scores = Vec::new();
            attention(
                &q,
                shape,
                start..len,
                |p, g| &k[p * kv_dim + g * d..p * kv_dim + (g + 1) * d],
                |p, g| &v[p * kv_dim + g * d..p * kv_dim + (g + 1) * d],
                &mut scores,
                &mut out,
            );
            assert_close(&out, &naive(&q, &k, &v, shape, start..len), F32_ACCUMULATION);
        }
    }

    #[test]
    fn single_position_returns_its_value() {
        let shape = AttentionShape { num_heads: 2, num_kv_heads: 1, head_dim: 2 };
        let (k, v) = ([0.3, -0.2], [5.0, -7.0]);
        let mut out = vec![f32::NAN; 4];
        attention(&[1e4, 1e4, -1e4, 3.0], shape, 0..1, |_, _| &k[..], |_, _| &v[..], &mut Vec::new(), &mut out);
        assert_eq!(out, vec![5.0, -7.0, 5.0, -7.0]);
    }
}
