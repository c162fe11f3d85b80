//! Causal grouped-query attention over the paged KV cache, for every sequence of a step:
//! [`attention_runs`] (the SIMD levels: per sequence, query block and KV head, two matrix products
//! on the `gemm` microkernel) and [`attention`] (the portable level: one query token at a time,
//! walking the sequence block by block). The reference is `ops::attention`.

use std::cell::RefCell;
use std::ops::Range;

use half::f16;

use super::{exp, fma, Isa};
use crate::ops::attention::AttentionShape;

thread_local! {
    /// `[num_heads, visible positions]` scores, then softmax weights.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `out[h] = softmax(q[h] · K[kv(h)]ᵀ / √d) · V[kv(h)]` over the positions in `visible`: one
/// query token at a time, in plain Rust. The portable level's attention; the SIMD levels run
/// [`attention_runs`]' matrix products instead.
///
/// q and out are `[num_heads, head_dim]`. `block(i)` returns the f16 keys and values of the
/// sequence's i-th KV block (keys `[num_kv_heads, head_dim, block_size]`, see [`key_column`];
/// values `[num_kv_heads, block_size, head_dim]`, see [`block_row`]), so position p is row
/// `p % block_size` of block `p / block_size`.
pub fn attention<'a>(
    q: &[f32],
    shape: AttentionShape,
    visible: Range<usize>,
    block_size: usize,
    block: impl Fn(usize) -> (&'a [f16], &'a [f16]),
    out: &mut [f32],
) {
    assert_eq!(q.len(), shape.num_heads * shape.head_dim, "query must be [heads, head_dim]");
    assert_eq!(out.len(), q.len(), "attention output must be [heads, head_dim]");
    assert!(!visible.is_empty(), "a query always sees at least its own position");
    assert!(shape.num_kv_heads > 0 && shape.num_heads.is_multiple_of(shape.num_kv_heads), "heads must group evenly");
    SCORES.with_borrow_mut(|scores| {
        scores.resize(shape.num_heads * visible.len(), 0.0);
        attention_body(q, shape, visible, block_size, block, scores, out)
    })
}

/// Where KV head `kv_head`'s value row `row` starts in a KV block's values: they are head-major,
/// `[num_kv_heads, block_size, head_dim]`, so one head's positions are consecutive memory, rows
/// that P·V multiplies in place.
#[inline(always)]
pub fn block_row(block_size: usize, head_dim: usize, kv_head: usize, row: usize) -> usize {
    (kv_head * block_size + row) * head_dim
}

/// Where KV head `kv_head`'s keys start in a KV block's keys: they are head-major and then k-major,
/// `[num_kv_heads, head_dim, block_size]`, element i of the key at row `row` at
/// `key_column(..) + i * block_size + row`. That is the panel Q·Kᵀ multiplies (`gemm`), so
/// attention reads the cache in place instead of gathering and transposing a sequence's keys
/// at every step.
#[inline(always)]
pub fn key_column(block_size: usize, head_dim: usize, kv_head: usize) -> usize {
    kv_head * head_dim * block_size
}

/// `Σ_i a[i] · b[i · stride]`.
#[inline(always)]
fn strided_dot(a: &[f32], b: &[f16], stride: usize) -> f32 {
    let mut partial = [0f32; 16];
    let a_chunks = a.chunks_exact(16);
    let whole = a.len() - a_chunks.remainder().len();
    let tail: f32 = a_chunks.remainder().iter().enumerate().map(|(i, x)| x * b[(whole + i) * stride].to_f32()).sum();
    for (c, a) in a_chunks.enumerate() {
        for l in 0..16 {
            partial[l] = fma::<false>(a[l], b[(16 * c + l) * stride].to_f32(), partial[l]);
        }
    }
    partial.iter().sum::<f32>() + tail
}

#[inline(always)]
fn attention_body<'a, B: Fn(usize) -> (&'a [f16], &'a [f16])>(
    q: &[f32],
    shape: AttentionShape,
    visible: Range<usize>,
    block_size: usize,
    block: B,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let AttentionShape { num_heads, num_kv_heads, head_dim } = shape;
    let (group, len) = (num_heads / num_kv_heads, visible.len());
    let scale = 1.0 / (head_dim as f32).sqrt();
    // Positions are walked block by block, so a block's rows are consecutive memory.
    let mut p = visible.start;
    while p < visible.end {
        let (keys, _) = block(p / block_size);
        let first_row = p % block_size;
        let rows = (block_size - first_row).min(visible.end - p);
        for row in first_row..first_row + rows {
            let i = p + row - first_row - visible.start;
            for g in 0..num_kv_heads {
                let key = &keys[key_column(block_size, head_dim, g) + row..];
                for h in g * group..(g + 1) * group {
                    scores[h * len + i] = strided_dot(&q[h * head_dim..(h + 1) * head_dim], key, block_size) * scale;
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
            *s = exp::<false>(*s - max);
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
            let i = p + row - first_row - visible.start;
            for g in 0..num_kv_heads {
                let value = &values[block_row(block_size, head_dim, g, row)..][..head_dim];
                for h in g * group..(g + 1) * group {
                    let weight = scores[h * len + i];
                    for (o, &v) in out[h * head_dim..(h + 1) * head_dim].iter_mut().zip(value) {
                        *o = fma::<false>(weight, v.to_f32(), *o);
                    }
                }
            }
        }
        p += rows;
    }
}

thread_local! {
    /// Per task of `attention_run`: the scores `[rows, positions]`.
    static PREFILL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Query tokens per task of `attention_run`.
const PREFILL_QUERY_BLOCK: usize = 32;

/// Causal attention for a run of consecutive tokens of one sequence (a prefill chunk, or the one
/// token of a decode step), as two matrix products per (block of up to 32 queries, KV head) on
/// the `gemm` microkernel, reading the KV blocks in place: scores = Q·Kᵀ with each block's keys
/// (stored k-major) as a panel, a masked softmax per row, then out = P·V over each block's value
/// rows, the sums continued block after block. No horizontal sums, which is what a per-token
/// dot-product kernel spends most of its time on, and no copy of a sequence's keys and values
/// per step (which cost a batched decode step more than the products themselves).
///
/// Every query row goes through the same instructions in the same order whether its block holds
/// one query or 32: the microkernel's sums run in order of k, the softmax adds position p into
/// running sum p % 16 (masked positions get weight exactly 0), so a token's output does not depend
/// on the run it is part of. The portable level runs [`attention`] per token, which has the same
/// property.
///
/// q and out are `[tokens, num_heads * head_dim]`; token i is at position `first_position + i`
/// and sees positions from `window`'s start (or 0) to its own. `block(i)` is as in [`attention`].
/// Runs its tasks on the rayon pool.
#[allow(clippy::too_many_arguments)]
pub fn attention_run<'a>(
    isa: Isa,
    q: &[f32],
    shape: AttentionShape,
    first_position: usize,
    window: Option<usize>,
    block_size: usize,
    block: impl Fn(usize) -> (&'a [f16], &'a [f16]) + Sync,
    out: &mut [f32],
) {
    let q_dim = shape.num_heads * shape.head_dim;
    assert!(q.len().is_multiple_of(q_dim), "queries must be [tokens, {q_dim}]");
    let tokens = q.len() / q_dim;
    let run = |_| AttentionRun { first_token: 0, tokens, first_position };
    attention_runs(isa, q, shape, window, block_size, 1, run, |_, i| block(i), out);
}

/// One sequence's part of a step for [`attention_runs`]: its tokens `first_token..first_token +
/// tokens` of the step's queries, the first of them at `first_position`.
#[derive(Clone, Copy, Debug)]
pub struct AttentionRun {
    pub first_token: usize,
    pub tokens: usize,
    pub first_position: usize,
}

/// [`attention_run`] for every sequence of a step at once: `run(s)` describes sequence s (runs
/// cover disjoint tokens of q and out), `block(s, i)` returns its i-th KV block. One parallel loop
/// over all the sequences' tasks, rather than one per sequence: in a batched decode step each
/// sequence has only a task per KV head, too few to share out, and hundreds of fork-joins per step
/// cost more than the attention itself.
#[allow(clippy::too_many_arguments)]
pub fn attention_runs<'a>(
    isa: Isa,
    q: &[f32],
    shape: AttentionShape,
    window: Option<usize>,
    block_size: usize,
    runs: usize,
    run: impl Fn(usize) -> AttentionRun + Sync,
    block: impl Fn(usize, usize) -> (&'a [f16], &'a [f16]) + Sync,
    out: &mut [f32],
) {
    use rayon::prelude::*;
    let AttentionShape { num_heads, num_kv_heads, head_dim } = shape;
    let q_dim = num_heads * head_dim;
    assert!(q.len().is_multiple_of(q_dim) && out.len() == q.len(), "queries and output must be [tokens, {q_dim}]");
    let step_tokens = q.len() / q_dim;
    for s in 0..runs {
        let AttentionRun { first_token, tokens, .. } = run(s);
        assert!(first_token + tokens <= step_tokens, "sequence {s}'s tokens lie outside the step's queries");
    }
    let first_visible = |position: usize| window.map_or(0, |w| (position + 1).saturating_sub(w));
    if isa == Isa::Portable {
        for s in 0..runs {
            let AttentionRun { first_token, tokens, first_position } = run(s);
            for t in first_token..first_token + tokens {
                let position = first_position + t - first_token;
                attention(
                    &q[t * q_dim..(t + 1) * q_dim],
                    shape,
                    first_visible(position)..position + 1,
                    block_size,
                    |i| block(s, i),
                    &mut out[t * q_dim..(t + 1) * q_dim],
                );
            }
        }
        return;
    }
    let out_ptr = SharedOut(out.as_mut_ptr());
    let sequence_tasks = |s: usize| {
        let AttentionRun { first_token, tokens, first_position } = run(s);
        let q = &q[first_token * q_dim..(first_token + tokens) * q_dim];
        (0..tokens.div_ceil(PREFILL_QUERY_BLOCK) * num_kv_heads).into_par_iter().for_each(|task| {
            let (query_block, kv_head) = (task / num_kv_heads, task % num_kv_heads);
            let t0 = query_block * PREFILL_QUERY_BLOCK;
            let rows = PREFILL_QUERY_BLOCK.min(tokens - t0);
            let visible = first_visible(first_position + t0)..first_position + t0 + rows;
            PREFILL.with_borrow_mut(|scores| {
                // SAFETY: this task writes only the columns of heads of `kv_head` for tokens
                // t0..t0 + rows of its sequence's part of `out`; tasks differ in sequence, query
                // block or KV head, so never overlap, and the runs' tokens lie inside `out`
                // (checked above).
                let out = unsafe { out_ptr.get().add(first_token * q_dim) };
                unsafe {
                    prefill_task(
                        isa,
                        q,
                        shape,
                        first_position,
                        window,
                        (t0, rows, kv_head),
                        visible,
                        block_size,
                        &|i| block(s, i),
                        scores,
                        out,
                    )
                }
            });
        });
    };
    if runs == 1 {
        sequence_tasks(0);
    } else {
        (0..runs).into_par_iter().for_each(sequence_tasks);
    }
}

#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint elements through it (see attention_run).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}
impl SharedOut {
    fn get(self) -> *mut f32 {
        self.0
    }
}

#[inline(always)]
fn masked_softmax_body<const FMA: bool>(row: &mut [f32], start: usize, end: usize, scale: f32, first_position: usize) {
    row[..start].fill(0.0);
    row[end..].fill(0.0);
    let live = &mut row[start..end];
    // The maximum is exact whatever the order; sixteen running maxima let it vectorize.
    let mut maxima = [f32::NEG_INFINITY; 16];
    let mut chunks = live.chunks_exact(16);
    for chunk in &mut chunks {
        for l in 0..16 {
            maxima[l] = if chunk[l] > maxima[l] { chunk[l] } else { maxima[l] };
        }
    }
    let max = chunks.remainder().iter().chain(&maxima).fold(f32::NEG_INFINITY, |m, &v| m.max(v)) * scale;
    // The sum is not: position p always adds into running sum p % 16, in order of p, so a
    // query's total is the same bits whichever block of queries it is computed with.
    let first_lane = (first_position + start) % 16;
    let head = ((16 - first_lane) % 16).min(live.len());
    let mut totals = [0f32; 16];
    let (head_values, aligned) = live.split_at_mut(head);
    for (i, v) in head_values.iter_mut().enumerate() {
        *v = exp::<FMA>(fma::<FMA>(*v, scale, -max));
        totals[first_lane + i] += *v;
    }
    let mut chunks = aligned.chunks_exact_mut(16);
    for chunk in &mut chunks {
        for l in 0..16 {
            chunk[l] = exp::<FMA>(fma::<FMA>(chunk[l], scale, -max));
            totals[l] += chunk[l];
        }
    }
    for (l, v) in chunks.into_remainder().iter_mut().enumerate() {
        *v = exp::<FMA>(fma::<FMA>(*v, scale, -max));
        totals[l] += *v;
    }
    let inverse = 1.0 / totals.iter().sum::<f32>();
    for v in live.iter_mut() {
        *v *= inverse;
    }
}

super::multiversion!(
    /// `row[start..end] = softmax(row[start..end] · scale)`, zero elsewhere (scale > 0); `row[0]`
    /// belongs to position `first_position`.
    fn masked_softmax(row: &mut [f32], start: usize, end: usize, scale: f32, first_position: usize) => masked_softmax_body
);

/// Asks for the first `len` values of `panel` (clamped to it) ahead of use. A sequence's KV blocks
/// lie anywhere in the cache, so the hardware prefetcher restarts at each; asking for the next
/// block's panel while the current one multiplies hides that latency.
fn prefetch_panel(panel: &[f16], len: usize) {
    super::prefetch(bytemuck::cast_slice(&panel[..len.min(panel.len())]));
}

/// One (query block, KV head) task of [`attention_run`]; `out` is the whole output.
///
/// # Safety
/// `out` must be the `[tokens, q_dim]` output, written by no other task at this task's elements.
#[allow(clippy::too_many_arguments)]
unsafe fn prefill_task<'a>(
    isa: Isa,
    q: &[f32],
    shape: AttentionShape,
    first_position: usize,
    window: Option<usize>,
    (t0, rows, kv_head): (usize, usize, usize),
    visible: Range<usize>,
    block_size: usize,
    block: &impl Fn(usize) -> (&'a [f16], &'a [f16]),
    scores: &mut Vec<f32>,
    out: *mut f32,
) {
    use super::gemm;
    let AttentionShape { num_heads, num_kv_heads, head_dim: d } = shape;
    let (group, q_dim) = (num_heads / num_kv_heads, num_heads * d);
    let (nr, mt) = (gemm::panel_rows(isa), gemm::block_tokens(isa));
    let len = visible.len();

    // The visible positions as runs inside KV blocks, at most a panel (nr) wide, walked once
    // per pass rather than collected (no allocation per task).
    let runs = || {
        let mut p = visible.start;
        std::iter::from_fn(move || {
            (p < visible.end).then(|| {
                let (keys, values) = block(p / block_size);
                let first_row = p % block_size;
                let count = (block_size - first_row).min(visible.end - p).min(nr);
                assert!(
                    keys.len() >= num_kv_heads * d * block_size && values.len() >= keys.len(),
                    "KV blocks hold [kv heads, head_dim, block_size] keys and values"
                );
                let run = (keys, values, first_row, count, p - visible.start);
                p += count;
                run
            })
        })
    };

    // The task's query rows are its (query head, token) pairs, head-major: row i is head
    // kv_head·group + i / rows at token t0 + i % rows. Blocks of mt rows go through the
    // microkernel together, so a decode step's query heads share each pass over the keys (one
    // call, several independent FMA chains) instead of taking one latency-bound pass each.
    let pairs = group * rows;
    let head_token = |i: usize| (kv_head * group + i / rows, t0 + i % rows);
    scores.resize(pairs * len, 0.0);
    let scale = 1.0 / (d as f32).sqrt();
    let first_visible = |position: usize| window.map_or(0, |w| (position + 1).saturating_sub(w));
    for c0 in (0..pairs).step_by(mt) {
        let count = mt.min(pairs - c0);
        let xs = std::array::from_fn(|i| {
            let (h, t) = head_token((c0 + i).min(pairs - 1));
            q[t * q_dim + h * d..].as_ptr()
        });
        let mut ahead = runs().peekable();
        while let Some((keys, _, first_row, positions, offset)) = ahead.next() {
            if let Some(&(next_keys, _, next_row, _, _)) = ahead.peek() {
                prefetch_panel(&next_keys[key_column(block_size, d, kv_head) + next_row..], d * block_size);
            }
            let panel = keys[key_column(block_size, d, kv_head) + first_row..].as_ptr();
            let outs = std::array::from_fn(|i| scores[((c0 + i).min(pairs - 1)) * len + offset..].as_mut_ptr());
            // SAFETY: each query row holds d values; the panel is this KV head's keys from
            // `first_row`, d rows of block_size floats of which `positions` are read (checked
            // above); the score rows of this block (columns offset.. of rows c0..c0 + count) lie
            // inside `scores` (`[pairs, len]`).
            gemm::microkernel(isa, &xs, d, panel, block_size, &outs, count, positions, false);
        }
    }
    for (i, row) in scores.chunks_exact_mut(len).enumerate() {
        let position = first_position + head_token(i).1;
        masked_softmax(
            isa,
            row,
            first_visible(position) - visible.start,
            position + 1 - visible.start,
            scale,
            visible.start,
        );
    }
    for c0 in (0..pairs).step_by(mt) {
        let count = mt.min(pairs - c0);
        for j in 0..d.div_ceil(nr) {
            let cols = nr.min(d - j * nr);
            let outs = std::array::from_fn(|i| {
                let (h, t) = head_token((c0 + i).min(pairs - 1));
                out.add(t * q_dim + h * d + j * nr)
            });
            let mut ahead = runs().enumerate().peekable();
            while let Some((r, (_, values, first_row, positions, offset))) = ahead.next() {
                if let Some(&(_, (_, next_values, next_row, next_positions, _))) = ahead.peek() {
                    let at = block_row(block_size, d, kv_head, next_row) + j * nr;
                    prefetch_panel(&next_values[at..], (next_positions - 1) * d + cols);
                }
                let xs = std::array::from_fn(|i| scores[(c0 + i).min(pairs - 1) * len + offset..].as_ptr());
                let panel = values[block_row(block_size, d, kv_head, first_row) + j * nr..].as_ptr();
                // SAFETY: each score row holds `positions` values from `offset`; the panel is
                // `positions` value rows of d floats from `first_row`, of which columns
                // j·nr..j·nr + cols are read; each output row is this task's (token t, columns of
                // head h), inside `out` (caller), written by the first run and continued by the
                // others.
                gemm::microkernel(isa, &xs, positions, panel, d, &outs, count, cols, r > 0);
            }
        }
    }
}
