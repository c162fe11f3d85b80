//! The fast matmul op, `out = x · Wᵀ` with f32 accumulation, for every weight format: the same
//! contract as `ops::matmul::matmul`, which stays its test oracle.
//!
//! Launch geometry: weight rows are cut into tasks for the rayon pool (two per thread,
//! and, with many tokens, few enough rows per task that they stay in L2 while every block of tokens
//! streams past them). Inside a task:
//! - float weights (f32/f16/bf16): tiles of dot products (`dot_tile`), 1 token × 8 rows (decode,
//!   converting the weights in registers, bound by memory bandwidth), else 8 tokens × 3 rows on
//!   AVX-512 and 4 × 4 on AVX2 (bound by FMA throughput), converting f16 rows in registers up to
//!   16 tokens (batched decode) and converting the task's rows to f32 first beyond (prefill);
//! - block quantizations (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K): the activations are
//!   rounded to 8 bits once per call (`quant_dot`), then integer kernels on groups of 16 rows
//!   (`group_dot`: 16 rows per vector lane set, up to 16 tokens per call, at every batch size).
//!
//! Batch invariance: a (token, row) result goes through the same instructions in the same order
//! whichever path, tile shape or task it lands in, so a token's outputs do not depend on how many
//! other tokens share its step. Seeded sampling then gives the same text under any load, chunking
//! or prefix caching. (An outer-product GEMM microkernel sums in another order: it serves
//! attention, where the same kernel handles every token; see `attention`.)

use std::cell::RefCell;

use rayon::prelude::*;

use super::amx::{self, TileSource};
use super::dot_tile::{self, BF16, F16, F32};
use super::group_dot;
use super::quant_dot::QuantizedActivations;
use super::Isa;
use crate::model::packed_groups::{self, GROUP_ROWS};
use crate::model::packed_quant::PackedQuant;
use crate::model::weights::{WeightFormat, WeightMatrix};

/// From this many tokens on, float weights run as 4×4 tiles over f32 rows rather than one token at
/// a time (the results are the same bits either way).
const TILE_MIN_TOKENS: usize = 4;
/// Bytes of a task's weight rows that should stay cache-resident while token blocks stream by.
const TASK_WEIGHT_BYTES: usize = 384 << 10;
/// Tasks per pool thread: two leaves room to even out a core that is busy with something else,
/// while each task still streams a long run of rows (more, shorter tasks measured slower).
const TASKS_PER_THREAD: usize = 2;

thread_local! {
    /// A task's rows converted or dequantized to f32, `[rows, k]`.
    static CONVERTED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Quantized activations, taken out for the duration of a call (see `matmul_with`).
    static ACTIVATIONS: RefCell<QuantizedActivations> = RefCell::new(QuantizedActivations::default());
}

/// `out[i, j] = Σ_k x[i, k] · w[j, k]`; x is `[n, w.cols]`, out is `[n, w.rows]`.
pub fn matmul(x: &[f32], w: &WeightMatrix, out: &mut [f32]) {
    matmul_with(Isa::best(), x, w, out)
}

/// [`matmul`] on a chosen instruction set level (tests compare every level with the reference),
/// with AMX tiles where the machine has them.
pub fn matmul_with(isa: Isa, x: &[f32], w: &WeightMatrix, out: &mut [f32]) {
    matmul_group_with(isa, x, &[w], &mut [out]);
}

/// [`matmul_with`] with the tiles chosen: none (VNNI), the hardware's, or the emulator's (tests).
pub fn matmul_with_tiles(isa: Isa, tiles: Option<TileSource>, x: &[f32], w: &WeightMatrix, out: &mut [f32]) {
    matmul_group_on(isa, tiles, x, &[w], &mut [out]);
}

/// Several matmuls of the same input, `outs[i] = x · ws[i]ᵀ`, as one parallel loop over all
/// their rows: q/k/v and gate/up share one fork-join instead of three or two, which matters in
/// decode, where a step is hundreds of short matmuls.
pub fn matmul_group_with(isa: Isa, x: &[f32], ws: &[&WeightMatrix], outs: &mut [&mut [f32]]) {
    matmul_group_on(isa, amx::detected(isa), x, ws, outs)
}

fn matmul_group_on(isa: Isa, tiles: Option<TileSource>, x: &[f32], ws: &[&WeightMatrix], outs: &mut [&mut [f32]]) {
    assert_eq!(ws.len(), outs.len(), "one output per weight matrix");
    assert!(tiles.is_none() || isa == Isa::Avx512, "AMX tiles run beside AVX-512 only");
    assert!(isa.supported(), "{} kernels do not run on this CPU", isa.name());
    let Some(first) = ws.first() else { return };
    let k = first.cols;
    assert!(k > 0 && x.len().is_multiple_of(k), "matmul input must be [n, {k}]");
    let n = x.len() / k;
    let threads = rayon::current_num_threads();
    // (matrix, rows per task, first task) for each matrix.
    let mut plans = [(0usize, 0usize, 0usize); 8];
    assert!(ws.len() <= plans.len(), "at most {} matrices per group", plans.len());
    let mut tasks = 0;
    for (i, (w, out)) in ws.iter().zip(outs.iter()).enumerate() {
        assert_eq!(w.cols, k, "matrices of a group share their input");
        assert_eq!(out.len(), n * w.rows, "matmul output {i} must be [{n}, {}]", w.rows);
        let rows_per_task = rows_per_task(w, n, threads);
        plans[i] = (i, rows_per_task, tasks);
        tasks += w.rows.div_ceil(rows_per_task);
    }
    if n == 0 || tasks == 0 {
        return;
    }
    // The integer path quantizes the activations once, here, for all tasks. The buffer is taken
    // out of its thread-local slot rather than borrowed: while this thread waits for the tasks,
    // rayon may run another step's matmul on it, which then simply finds the slot empty.
    let integer = ws.iter().any(|w| matches!(w.format, WeightFormat::Packed(_)));
    let mut xq = if integer { ACTIVATIONS.with_borrow_mut(std::mem::take) } else { QuantizedActivations::default() };
    if integer {
        xq.quantize(isa, x, k);
    }
    let out_ptrs: [OutPtr; 8] =
        std::array::from_fn(|i| OutPtr(outs.get_mut(i).map_or(std::ptr::null_mut(), |o| o.as_mut_ptr())));
    let plans = &plans[..ws.len()];
    let run = |task: usize| {
        let &(i, rows_per_task, first_task) =
            plans.iter().rev().find(|plan| plan.2 <= task).expect("task 0 is the first matrix's");
        let w = ws[i];
        let local = task - first_task;
        let rows = local * rows_per_task..((local + 1) * rows_per_task).min(w.rows);
        // SAFETY: task `task` writes only columns `rows` of output i (`[n, rows of matrix i]`),
        // and the tasks of one matrix have disjoint row ranges, so no two tasks write the same
        // element.
        let sink = OutColumns { out: out_ptrs[i].get(), m: w.rows, n };
        compute_rows(isa, tiles, x, &xq, n, w, rows, &sink);
    };
    if tasks == 1 {
        run(0);
    } else {
        (0..tasks).into_par_iter().for_each(run);
    }
    if integer {
        ACTIVATIONS.with_borrow_mut(|slot| *slot = xq);
    }
}

fn rows_per_task(w: &WeightMatrix, n: usize, threads: usize) -> usize {
    let balanced = w.rows.div_ceil(TASKS_PER_THREAD * threads.max(1));
    // In prefill a task's rows are re-read for every token block: keep them in L2.
    // With many tokens a task's rows are converted to f32 first.
    let bytes_per_row = 4 * w.cols;
    if matches!(w.format, WeightFormat::Packed(_)) {
        // Whole groups of 16 rows.
        return balanced.next_multiple_of(GROUP_ROWS);
    }
    if n < TILE_MIN_TOKENS {
        return balanced.next_multiple_of(8);
    }
    let resident = (TASK_WEIGHT_BYTES / bytes_per_row).max(8);
    balanced.min(resident).next_multiple_of(8)
}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the pointer is only written through `OutColumns`, at disjoint columns per task.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}
impl OutPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Writes into columns of the `[n, m]` output.
struct OutColumns {
    out: *mut f32,
    m: usize,
    n: usize,
}

impl OutColumns {
    /// Columns `j..j + values.len()` of output row t.
    fn store_run(&self, t: usize, j: usize, values: &[f32]) {
        assert!(t < self.n && j + values.len() <= self.m, "output run inside [n, m]");
        // SAFETY: the run lies inside the output (checked); see matmul_with for why tasks never
        // write the same element.
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), self.out.add(t * self.m + j), values.len()) }
    }

    /// The sums of group g of a task's `rows` (`sums[t][r]`: token t0 + t, the group's row r),
    /// without the padding rows past the task's last row.
    fn store_group(&self, rows: &std::ops::Range<usize>, g: usize, t0: usize, sums: &[[f32; GROUP_ROWS]]) {
        let first_row = rows.start + g * GROUP_ROWS;
        let count = GROUP_ROWS.min(rows.end - first_row);
        for (t, row_sums) in sums.iter().enumerate() {
            self.store_run(t0 + t, first_row, &row_sums[..count]);
        }
    }

    fn store(&self, t: usize, j: usize, value: f32) {
        debug_assert!(t < self.n && j < self.m);
        // SAFETY: t < n and j < m (the callers iterate within the output's shape); see matmul_with
        // for why tasks never write the same element.
        unsafe { *self.out.add(t * self.m + j) = value }
    }
}

#[allow(clippy::too_many_arguments)]
fn compute_rows(
    isa: Isa,
    tiles: Option<TileSource>,
    x: &[f32],
    xq: &QuantizedActivations,
    n: usize,
    w: &WeightMatrix,
    rows: std::ops::Range<usize>,
    out: &OutColumns,
) {
    let k = w.cols;
    let row_bytes = w.row_bytes();
    let bytes = w.bytes();
    // Tasks start at multiples of the format's row group (`rows_per_task`).
    let task_bytes = &bytes[w.format.matrix_bytes(rows.start, k)..][..w.format.matrix_bytes(rows.len(), k)];
    let few_tokens = n < TILE_MIN_TOKENS;
    match w.format {
        WeightFormat::F32 => float_rows::<F32>(isa, x, n, k, task_bytes, row_bytes, rows.start, out),
        // The portable level converts half-precision rows with `half`'s slice conversion (which
        // finds F16C at run time) below, rather than element by element in the tile.
        // Up to 16 tokens (batched decode) the tile widens f16 in registers: re-widening per
        // token group costs less than writing and re-reading an f32 copy (16-request aggregate
        // +15%). Both forms sum in the same order, so results do not depend on the batch size.
        WeightFormat::F16 if n <= 16 && isa != Isa::Portable => {
            float_rows::<F16>(isa, x, n, k, task_bytes, row_bytes, rows.start, out)
        }
        WeightFormat::Bf16 if few_tokens && isa != Isa::Portable => {
            float_rows::<BF16>(isa, x, n, k, task_bytes, row_bytes, rows.start, out)
        }
        WeightFormat::Packed(format) => match tiles {
            Some(tiles) if n >= amx::MIN_TOKENS => tiled_rows(tiles, xq, n, format, task_bytes, k, rows, out),
            _ => grouped_rows(isa, xq, n, format, task_bytes, k, rows, out),
        },
        // Batched decode (a few tokens): convert and multiply a few rows at a time, asking for the
        // next rows' bytes before the multiply, so the stream from memory overlaps the FMAs and
        // the converted rows stay in L1/L2. (Prefill re-reads each task's rows for every token
        // block, so there the whole task is converted once, below.)
        format if n <= CHUNKED_CONVERSION_MAX_TOKENS => CONVERTED.with_borrow_mut(|buffer| {
            const CHUNK_ROWS: usize = 16;
            buffer.resize(CHUNK_ROWS.min(rows.len()) * k, 0.0);
            for (chunk, stored) in task_bytes.chunks(CHUNK_ROWS * row_bytes).enumerate() {
                let next = ((chunk + 1) * CHUNK_ROWS * row_bytes).min(task_bytes.len())
                    ..((chunk + 2) * CHUNK_ROWS * row_bytes).min(task_bytes.len());
                let chunk_rows = stored.len() / row_bytes;
                let values = &mut buffer[..chunk_rows * k];
                for (row, row_values) in stored.chunks_exact(row_bytes).zip(values.chunks_exact_mut(k)) {
                    row_to_f32(isa, format, row, row_values);
                }
                super::prefetch(&task_bytes[next]);
                float_rows::<F32>(
                    isa,
                    x,
                    n,
                    k,
                    bytemuck::cast_slice(values),
                    4 * k,
                    rows.start + chunk * CHUNK_ROWS,
                    out,
                );
            }
        }),
        format => CONVERTED.with_borrow_mut(|buffer| {
            buffer.resize(rows.len() * k, 0.0);
            for (row, values) in task_bytes.chunks_exact(row_bytes).zip(buffer.chunks_exact_mut(k)) {
                row_to_f32(isa, format, row, values);
            }
            float_rows::<F32>(isa, x, n, k, bytemuck::cast_slice(buffer), 4 * k, rows.start, out);
        }),
    }
}

/// A task's groups of 16 rows (`packed_groups`), each against every token, the level's widest
/// tile while the tokens last (`group_dot::widest_tile`: 16 at AVX-512; then 8, 4, 2, 1): the
/// group's weights (k = 576: 6 KiB of Q4_1) stay in L1 while the tokens pass, so each weight byte
/// comes from memory once per step, and a 16-token step unpacks each block's nibbles once rather
/// than twice (measured 5-10% on the FFN shapes, more on Q6_K, whose high bits cost most).
#[allow(clippy::too_many_arguments)]
fn grouped_rows(
    isa: Isa,
    xq: &QuantizedActivations,
    n: usize,
    format: PackedQuant,
    task_bytes: &[u8],
    k: usize,
    rows: std::ops::Range<usize>,
    out: &OutColumns,
) {
    let group_bytes = packed_groups::group_bytes(format, k);
    let widest = group_dot::widest_tile(isa);
    for (g, group, next) in packed_groups::groups_with_next(task_bytes, group_bytes) {
        let store = |t0: usize, sums: &[[f32; GROUP_ROWS]]| out.store_group(&rows, g, t0, sums);
        let mut t0 = 0;
        while t0 < n {
            // The widest tile the level takes that fits the tokens left.
            let width = [16, 8, 4, 2, 1].into_iter().find(|&w| w <= widest && w <= n - t0).expect("a token is left");
            macro_rules! tile {
                ($w:literal) => {
                    store(
                        t0,
                        &group_dot::group_tile(
                            isa,
                            format,
                            group,
                            xq,
                            std::array::from_fn::<_, $w, _>(|i| t0 + i),
                            // The first tile streams in the next group.
                            if t0 == 0 { next } else { &[] },
                        ),
                    )
                };
            }
            match width {
                16 => tile!(16),
                8 => tile!(8),
                4 => tile!(4),
                2 => tile!(2),
                _ => tile!(1),
            }
            t0 += width;
        }
    }
}

/// [`grouped_rows`] on AMX tiles, 16 tokens per tile (the same bits; `amx::group_tiles`).
#[allow(clippy::too_many_arguments)]
fn tiled_rows(
    tiles: TileSource,
    xq: &QuantizedActivations,
    n: usize,
    format: PackedQuant,
    task_bytes: &[u8],
    k: usize,
    rows: std::ops::Range<usize>,
    out: &OutColumns,
) {
    // Tokens past n are the tile's padding.
    let store = |g: usize, t0: usize, sums: &[[f32; GROUP_ROWS]; amx::TILE_TOKENS]| {
        out.store_group(&rows, g, t0, &sums[..amx::TILE_TOKENS.min(n - t0)])
    };
    match tiles {
        TileSource::Hardware(mut unit) => amx::amx_rows(&mut unit, format, xq, n, task_bytes, k, store),
        TileSource::Emulated => amx::amx_rows(&mut amx::EmulatedTiles::default(), format, xq, n, task_bytes, k, store),
    }
}

/// Up to this many tokens, float rows are converted in small chunks interleaved with the multiply.
const CHUNKED_CONVERSION_MAX_TOKENS: usize = 64;

/// One stored row (`row`, in `format`) as f32.
fn row_to_f32(isa: Isa, format: WeightFormat, row: &[u8], out: &mut [f32]) {
    match format {
        WeightFormat::F32 => out.copy_from_slice(bytemuck::cast_slice(row)),
        WeightFormat::F16 => super::convert::f16_to_f32_with(isa, bytemuck::cast_slice::<u8, half::f16>(row), out),
        WeightFormat::Bf16 => super::convert::bf16_to_f32(bytemuck::cast_slice::<u8, half::bf16>(row), out),
        WeightFormat::Packed(q) => unreachable!("{} runs on the integer path", q.name()),
    }
}

/// Dot products of every token with `weights` (`rows × row_bytes`, element type DT), written to
/// output columns `first_row..`.
#[allow(clippy::too_many_arguments)]
fn float_rows<const DT: u8>(
    isa: Isa,
    x: &[f32],
    n: usize,
    k: usize,
    weights: &[u8],
    row_bytes: usize,
    first_row: usize,
    out: &OutColumns,
) {
    let rows = weights.len() / row_bytes;
    // Ragged edges repeat the last row (of x or w) and drop the repeated results.
    let w_row = |r: usize| weights[r.min(rows - 1) * row_bytes..].as_ptr();
    let x_row = |t: usize| x[t.min(n - 1) * k..].as_ptr();
    if n < TILE_MIN_TOKENS {
        // As in batched decode below: the task's first rows at once, then 8 rows ahead.
        super::prefetch(&weights[..(8 * row_bytes).min(weights.len())]);
        for t in 0..n {
            for r0 in (0..rows).step_by(8) {
                if t == 0 {
                    let ahead = ((r0 + 8) * row_bytes).min(weights.len())..((r0 + 16) * row_bytes).min(weights.len());
                    super::prefetch(&weights[ahead]);
                }
                let w = std::array::from_fn(|i| w_row(r0 + i));
                // SAFETY: every pointer starts a full row of k elements inside x or weights.
                let [sums] = unsafe { dot_tile::tile::<1, 8, DT>(isa, [x_row(t)], w, k) };
                for (i, &sum) in sums.iter().enumerate().take(rows - r0) {
                    out.store(t, first_row + r0 + i, sum);
                }
            }
        }
        return;
    }
    // One MR × NR tile at tokens t0.., rows r0.. (a macro rather than a generic closure).
    macro_rules! tile {
        ($mr:literal, $nr:literal, $t0:expr, $r0:expr) => {{
            let (t0, r0) = ($t0, $r0);
            let xs = std::array::from_fn(|i| x_row(t0 + i));
            let w = std::array::from_fn(|i| w_row(r0 + i));
            // SAFETY: as above.
            let sums = unsafe { dot_tile::tile::<$mr, $nr, DT>(isa, xs, w, k) };
            for (ti, row_sums) in sums.iter().enumerate().take(n - t0) {
                for (i, &sum) in row_sums.iter().enumerate().take(rows - r0) {
                    out.store(t0 + ti, first_row + r0 + i, sum);
                }
            }
        }};
    }
    // Weight rows may come from memory (batched decode streams each once per step): the task's
    // first rows are asked for all at once, so its start does not wait for them one demand miss
    // at a time (+3% on the 16-request aggregate), and the first pass over the rows asks for the
    // rows PREFETCH_ROWS ahead of the block it multiplies, so the stream overlaps the FMAs.
    super::prefetch(&weights[..(PREFETCH_ROWS * row_bytes).min(weights.len())]);
    let prefetch_ahead = |r0: usize, count: usize| {
        let ahead = ((r0 + PREFETCH_ROWS) * row_bytes).min(weights.len())
            ..((r0 + PREFETCH_ROWS + count) * row_bytes).min(weights.len());
        super::prefetch(&weights[ahead]);
    };
    if isa == Isa::Avx512 {
        // 8 tokens × 3 rows (24 accumulators of 32 registers) load 11 vectors and widen 3 f16
        // rows per 24 FMAs, where 4 × 4 loads 8 and widens 4 per 16. Token groups outer: a group's
        // 8 activation rows stay in L1 while the task's rows stream past (from memory for the
        // first group, from L2 after). Measured on the 2-core machine: 16-request aggregate
        // 774-785 -> 847-859 tok/s against 8 × 2 tiles with all 16 tokens per row block;
        // 512-token prefill ~1250 -> ~1390 tok/s against 4 × 4.
        let mut t0 = 0;
        while t0 < n {
            for r0 in (0..rows).step_by(3) {
                if t0 == 0 {
                    prefetch_ahead(r0, 3);
                }
                if t0 + 8 <= n {
                    tile!(8, 3, t0, r0);
                } else {
                    tile!(4, 3, t0, r0);
                    if t0 + 4 < n {
                        tile!(4, 3, t0 + 4, r0);
                    }
                }
            }
            t0 += 8;
        }
        return;
    }
    if n <= ROW_MAJOR_MAX_TOKENS {
        // AVX2's 16 registers hold a 4 × 4 tile: with few tokens, all of them per block of rows,
        // so each block is fetched once.
        for r0 in (0..rows).step_by(4) {
            prefetch_ahead(r0, 4);
            for t0 in (0..n).step_by(4) {
                tile!(4, 4, t0, r0);
            }
        }
        return;
    }
    for t0 in (0..n).step_by(4) {
        for r0 in (0..rows).step_by(4) {
            tile!(4, 4, t0, r0);
        }
    }
}

/// Up to this many tokens, AVX2's tiles run row block by row block (all tokens per block).
const ROW_MAJOR_MAX_TOKENS: usize = 16;
/// How far ahead of the current row block the first pass over a task's rows asks for more.
const PREFETCH_ROWS: usize = 8;
