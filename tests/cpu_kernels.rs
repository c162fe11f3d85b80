//! Every fast CPU kernel against its reference in `kiln::ops`, at every instruction set level this
//! machine runs, on fresh random shapes each run (ragged sizes included: not multiples of the
//! vector width, of the tile, or of the panel). Outputs are poisoned with NaN before each launch.
//!
//! Tolerance (kiln::testing): f32 accumulation in a different order, F32_ACCUMULATION
//! (|got − ref| ≤ 1e-4 + 1e-4·|ref|) for k ≤ 600. Quantized weights are compared with the
//! reference on the same quantized values; since the integer path also rounds the activations to
//! 8 bits, the oracle multiplies those rounded activations (`round_activations`). Integer dots
//! take INTEGER_DOTS (2e-4 + 2e-4·|ref|), for k up to 2816 with weights and activations in ±1.
//!
//! Batch invariance is exact: a token's matmul and attention outputs are the same bits alone as
//! in any batch.

use half::{bf16, f16};
use kiln::backend::cpu::kernels::amx::{self, TileSource};
use kiln::backend::cpu::kernels::{attention, matmul, quant_dot, rmsnorm, rope, silu_mul, Isa};
use kiln::model::packed_quant::PackedQuant;
use kiln::model::quant::GgmlType;
use kiln::model::weights::{WeightFormat, WeightMatrix};
use kiln::ops;
use kiln::ops::attention::AttentionShape;
use kiln::testing::{check_close, random_ggml_blocks, seeded_values, test_seed, F32_ACCUMULATION};

/// A sequence's keys and values, `[positions, kv_dim]` with heads side by side (as the reference
/// reads them), and the same scattered into KV blocks in the cache's layout
/// (keys k-major, `attention::key_column`; values as rows, `attention::block_row`), the blocks in
/// shuffled (reversed) order, as a paged cache holds them.
struct PagedKv {
    keys: Vec<f32>,
    values: Vec<f32>,
    paged_keys: Vec<f16>,
    paged_values: Vec<f16>,
    table: Vec<usize>,
    /// (kv_dim, head_dim, block_size)
    dims: (usize, usize, usize),
}

impl PagedKv {
    fn new(seed: u64, len: usize, shape: AttentionShape, block_size: usize) -> PagedKv {
        let (d, kv_dim) = (shape.head_dim, shape.num_kv_heads * shape.head_dim);
        // The cache holds f16: the reference reads the same rounded values.
        let rounded = |values: Vec<f32>| values.iter().map(|&v| f16::from_f32(v).to_f32()).collect::<Vec<f32>>();
        let (keys, values) =
            (rounded(seeded_values(seed, len * kv_dim)), rounded(seeded_values(seed + 1, len * kv_dim)));
        let num_blocks = len.div_ceil(block_size);
        let table: Vec<usize> = (0..num_blocks).rev().collect();
        let mut paged =
            [vec![f16::NAN; num_blocks * block_size * kv_dim], vec![f16::NAN; num_blocks * block_size * kv_dim]];
        for p in 0..len {
            let block = table[p / block_size] * block_size * kv_dim;
            for kv_head in 0..shape.num_kv_heads {
                let at = p * kv_dim + kv_head * d;
                let column = block + attention::key_column(block_size, d, kv_head) + p % block_size;
                for i in 0..d {
                    paged[0][column + i * block_size] = f16::from_f32(keys[at + i]);
                }
                let row = block + attention::block_row(block_size, d, kv_head, p % block_size);
                for i in 0..d {
                    paged[1][row + i] = f16::from_f32(values[at + i]);
                }
            }
        }
        let [paged_keys, paged_values] = paged;
        PagedKv { keys, values, paged_keys, paged_values, table, dims: (kv_dim, d, block_size) }
    }

    /// The sequence's i-th KV block, as the kernels read it.
    fn block(&self, i: usize) -> (&[f16], &[f16]) {
        let (kv_dim, _, block_size) = self.dims;
        let span = self.table[i] * block_size * kv_dim..(self.table[i] + 1) * block_size * kv_dim;
        (&self.paged_keys[span.clone()], &self.paged_values[span])
    }

    /// The reference's attention for one query over `visible`.
    fn reference(&self, q: &[f32], shape: AttentionShape, visible: std::ops::Range<usize>, out: &mut [f32]) {
        let (kv_dim, d, _) = self.dims;
        ops::attention::attention(
            q,
            shape,
            visible,
            |p, g| &self.keys[p * kv_dim + g * d..p * kv_dim + (g + 1) * d],
            |p, g| &self.values[p * kv_dim + g * d..p * kv_dim + (g + 1) * d],
            &mut Vec::new(),
            out,
        );
    }
}

/// A tiny deterministic generator for shapes.
struct Shapes(u64);

impl Shapes {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n
    }
    fn between(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
}

fn float_matrix(format: WeightFormat, m: usize, k: usize, seed: u64) -> WeightMatrix {
    let values = seeded_values(seed, m * k);
    match format {
        WeightFormat::F32 => WeightMatrix::from_f32(m, k, values),
        WeightFormat::F16 => WeightMatrix::from_f16(m, k, values.into_iter().map(f16::from_f32).collect()),
        WeightFormat::Bf16 => WeightMatrix::from_bf16(m, k, values.into_iter().map(bf16::from_f32).collect()),
        // Q8_0/Q4_0/Q4_1 from values, as a model converter makes them; the rest as random blocks.
        WeightFormat::Packed(q @ (PackedQuant::Q8_0 | PackedQuant::Q4_0 | PackedQuant::Q4_1)) => {
            WeightMatrix::quantized_from_f32(q, m, k, &values)
        }
        WeightFormat::Packed(q) => block_matrix(q.ggml_type(), m, k, seed),
    }
}

/// Random ggml blocks of `ggml_type` (every quant and sub-block scale bit pattern), packed.
fn block_matrix(ggml_type: GgmlType, m: usize, k: usize, seed: u64) -> WeightMatrix {
    let format = WeightFormat::from_ggml(ggml_type).expect("kiln computes on the type");
    let bytes = random_ggml_blocks(ggml_type, m * k, seed);
    let row_bytes = ggml_type.row_bytes(k).expect("k is whole blocks");
    WeightMatrix::from_ggml_rows(format, m, k, |r| &bytes[r * row_bytes..(r + 1) * row_bytes])
}

/// Integer dots multiply the scales in another order than the reference: a few f32 roundings of
/// |ref| more than F32_ACCUMULATION.
const INTEGER_DOTS: kiln::testing::Tolerance = kiln::testing::Tolerance { atol: 2e-4, rtol: 2e-4 };

fn check_matmul(isa: Isa, format: WeightFormat, n: usize, m: usize, k: usize, seed: u64) {
    let w = float_matrix(format, m, k, seed);
    let x = seeded_values(seed + 1, n * k);
    let integer_path = matches!(format, WeightFormat::Packed(_));
    let oracle_x = if integer_path { quant_dot::round_activations(&x) } else { x.clone() };
    let mut reference = vec![f32::NAN; n * m];
    ops::matmul::matmul(&oracle_x, &w, &mut reference);
    let mut got = vec![f32::NAN; n * m];
    matmul::matmul_with(isa, &x, &w, &mut got);
    let tolerance = if integer_path { INTEGER_DOTS } else { F32_ACCUMULATION };
    if let Err(message) = check_close(&got, &reference, tolerance) {
        panic!("matmul {} {} n={n} m={m} k={k}: {message}", isa.name(), format.name());
    }
}

#[test]
fn matmul_matches_the_reference_for_every_format_and_level() {
    let seed = test_seed();
    let mut shapes = Shapes(seed);
    let float_formats = [WeightFormat::F32, WeightFormat::F16, WeightFormat::Bf16];
    let packed = [PackedQuant::Q8_0, PackedQuant::Q4_0, PackedQuant::Q4_1, PackedQuant::Q5_0, PackedQuant::Q5_1]
        .map(WeightFormat::Packed);
    for isa in Isa::available() {
        // Decode, the integer path's edge, small tiles and a full prefill block.
        for (case, n) in [1, 2, 3, 4, 5, 8, 9, 13, 40].into_iter().enumerate() {
            let seed = seed + 100 * case as u64;
            for format in float_formats {
                let (m, k) = (shapes.between(1, 70), shapes.between(1, 200));
                check_matmul(isa, format, n, m, k, seed);
            }
            for format in packed {
                let (m, k) = (shapes.between(1, 70), 32 * shapes.between(1, 19));
                check_matmul(isa, format, n, m, k, seed);
            }
        }
        // The model's shapes, exactly.
        check_matmul(isa, WeightFormat::F16, 1, 576, 576, seed);
        check_matmul(isa, WeightFormat::F16, 37, 192, 576, seed);
        check_matmul(isa, WeightFormat::Packed(PackedQuant::Q4_1), 1, 1536, 576, seed);
        check_matmul(isa, WeightFormat::Packed(PackedQuant::Q8_0), 1, 96, 576, seed);
        check_matmul(isa, WeightFormat::Packed(PackedQuant::Q4_1), 19, 100, 576, seed);
    }
}

/// The formats of a Q4_K_M file: K-quants on k = 256, 512 and 2816 (the last a super-block count
/// that is not a power of two), and the 32-value Q5 blocks llama-quantize falls back to for
/// 576-wide rows; ragged token and row counts (rows not a multiple of the 16-row groups, tokens
/// not of the 16- and 8-token tiles).
#[test]
fn block_quantized_matmul_matches_the_reference_at_every_level() {
    let seed = test_seed();
    let mut shapes = Shapes(seed ^ 5);
    let k_quants = [PackedQuant::Q4_K, PackedQuant::Q5_K, PackedQuant::Q6_K];
    for isa in Isa::available() {
        for (case, n) in [1, 2, 3, 5, 11, 19].into_iter().enumerate() {
            let seed = seed + 100 * case as u64;
            for format in k_quants {
                for k in [256, 512, 2816] {
                    check_matmul(isa, WeightFormat::Packed(format), n, shapes.between(1, 45), k, seed);
                }
            }
            for format in [PackedQuant::Q5_0, PackedQuant::Q5_1] {
                for k in [96, 576] {
                    check_matmul(isa, WeightFormat::Packed(format), n, shapes.between(1, 45), k, seed);
                }
            }
        }
        // The model's FFN shapes as a Q4_K_M file stores them.
        check_matmul(isa, WeightFormat::Packed(PackedQuant::Q5_0), 1, 1536, 576, seed);
        check_matmul(isa, WeightFormat::Packed(PackedQuant::Q4_K), 3, 576, 1536, seed);
        check_matmul(isa, WeightFormat::Packed(PackedQuant::Q6_K), 1, 576, 1536, seed);
    }
}

#[test]
fn matmul_gives_a_token_the_same_bits_in_any_batch() {
    let seed = test_seed();
    let mut shapes = Shapes(seed ^ 4);
    let formats = [
        WeightFormat::F32,
        WeightFormat::F16,
        WeightFormat::Bf16,
        WeightFormat::Packed(PackedQuant::Q4_1),
        WeightFormat::Packed(PackedQuant::Q5_0),
        WeightFormat::Packed(PackedQuant::Q5_1),
        WeightFormat::Packed(PackedQuant::Q4_K),
        WeightFormat::Packed(PackedQuant::Q5_K),
        WeightFormat::Packed(PackedQuant::Q6_K),
    ];
    for isa in Isa::available() {
        for format in formats {
            // Batched-decode sizes take the row-major tiles (8 tokens while the activations fit
            // in L1, else 4), larger ones the token-major tiles; ragged token counts repeat rows.
            let sizes = [(2, 0), (3, 0), (5, 0), (12, 0), (16, 0), (11, 1024), (16, 1536), (20, 0)];
            for (n, fixed_k) in sizes {
                let m = shapes.between(1, 70);
                let k = match format.block_values() {
                    // K-quants: whole super-blocks, 1536 standing in for the fixed sizes.
                    256 => 256 * if fixed_k > 0 { 6 } else { shapes.between(1, 3) },
                    _ if fixed_k > 0 => fixed_k,
                    _ => 32 * shapes.between(1, 10),
                };
                let w = float_matrix(format, m, k, seed);
                let x = seeded_values(seed + 1, n * k);
                let mut batch = vec![f32::NAN; n * m];
                matmul::matmul_with(isa, &x, &w, &mut batch);
                for t in 0..n {
                    let mut alone = vec![f32::NAN; m];
                    matmul::matmul_with(isa, &x[t * k..(t + 1) * k], &w, &mut alone);
                    assert!(
                        alone.iter().zip(&batch[t * m..(t + 1) * m]).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{} {}: token {t} of {n} differs from the same token alone (m={m} k={k})",
                        isa.name(),
                        format.name()
                    );
                }
            }
        }
    }
}

/// Every packed format on `tiles` against the VNNI kernels at AVX-512, for equality: the AMX
/// kernel promises the same bits (`amx::group_tiles`), so the tile path keeps batch invariance
/// and inherits the VNNI kernels' agreement with the reference. Token counts from the tile
/// threshold up, ragged (padding rows in the last tile) and over two tiles; rows ragged against
/// the 16-row groups.
fn check_tiles_against_vnni(tiles: TileSource, seed: u64) {
    let mut shapes = Shapes(seed ^ 9);
    for (case, n) in [amx::MIN_TOKENS, 5, 16, 17, 35].into_iter().enumerate() {
        for format in PackedQuant::ALL {
            let m = shapes.between(1, 70);
            let k = match format.block_values() {
                256 => 256 * [1, 2, 11][case % 3],
                _ => 32 * shapes.between(1, 19),
            };
            let w = float_matrix(WeightFormat::Packed(format), m, k, seed + case as u64);
            let x = seeded_values(seed + 1 + case as u64, n * k);
            let (mut vnni, mut tiled) = (vec![f32::NAN; n * m], vec![f32::NAN; n * m]);
            matmul::matmul_with_tiles(Isa::Avx512, None, &x, &w, &mut vnni);
            matmul::matmul_with_tiles(Isa::Avx512, Some(tiles), &x, &w, &mut tiled);
            if let Some(i) = (0..n * m).find(|&i| vnni[i].to_bits() != tiled[i].to_bits()) {
                panic!(
                    "{tiles:?} {}: n={n} m={m} k={k}: token {} row {}: tiles {} vs VNNI {}",
                    format.name(),
                    i / m,
                    i % m,
                    tiled[i],
                    vnni[i]
                );
            }
        }
    }
}

#[test]
fn amx_kernel_on_emulated_tiles_gives_the_vnni_bits() {
    if !Isa::Avx512.supported() {
        eprintln!("skipped: the AMX kernel's vector half needs AVX-512, which this CPU lacks");
        return;
    }
    check_tiles_against_vnni(TileSource::Emulated, test_seed());
}

/// The same on the CPU's own tiles: run where the CPU has AMX (`cargo test -- --ignored amx`;
/// tools/gpu-check runs it on GPU hosts whose CPU has AMX). Without AMX it fails rather than pass.
#[test]
#[ignore = "needs a CPU with AMX (Sapphire Rapids or later)"]
fn amx_kernel_on_hardware_tiles_gives_the_vnni_bits() {
    let tiles = amx::hardware().unwrap_or_else(|why| panic!("no AMX tiles here: {why}"));
    check_tiles_against_vnni(TileSource::Hardware(tiles), test_seed());
}

/// The per-token kernel (the portable level's attention) over any visible range.
#[test]
fn attention_matches_the_reference_over_paged_blocks() {
    let seed = test_seed();
    let mut shapes = Shapes(seed ^ 1);
    for case in 0..12u64 {
        let kv_heads = shapes.between(1, 3);
        let shape = AttentionShape {
            num_heads: kv_heads * shapes.between(1, 4),
            num_kv_heads: kv_heads,
            head_dim: 2 * shapes.between(1, 40),
        };
        let (block_size, len) = (shapes.between(1, 16), shapes.between(1, 90));
        let start = if case % 3 == 0 { shapes.below(len) } else { 0 };
        let kv = PagedKv::new(seed + 10 * case, len, shape, block_size);
        let q = seeded_values(seed + 10 * case + 2, shape.num_heads * shape.head_dim);
        let mut reference = vec![f32::NAN; q.len()];
        kv.reference(&q, shape, start..len, &mut reference);
        let mut got = vec![f32::NAN; q.len()];
        attention::attention(&q, shape, start..len, block_size, |i| kv.block(i), &mut got);
        if let Err(message) = check_close(&got, &reference, F32_ACCUMULATION) {
            panic!("attention {shape:?} block {block_size} visible {start}..{len}: {message}");
        }
    }
}

#[test]
fn prefill_attention_matches_the_reference_token_by_token() {
    let seed = test_seed();
    let mut shapes = Shapes(seed ^ 3);
    for isa in Isa::available() {
        for case in 0..8u64 {
            let kv_heads = shapes.between(1, 3);
            let shape = AttentionShape {
                num_heads: kv_heads * shapes.between(1, 3),
                num_kv_heads: kv_heads,
                head_dim: 2 * shapes.between(1, 40),
            };
            // A chunk of `tokens` after `earlier` cached positions, sometimes with a window.
            let (block_size, tokens, earlier) = (shapes.between(1, 16), shapes.between(1, 75), shapes.between(0, 40));
            let window = if case % 3 == 1 { Some(shapes.between(1, 30)) } else { None };
            let q_dim = shape.num_heads * shape.head_dim;
            let kv = PagedKv::new(seed + 10 * case, earlier + tokens, shape, block_size);
            let q: Vec<f32> = seeded_values(seed + 10 * case + 2, tokens * q_dim).iter().map(|v| v * 3.0).collect();
            let mut reference = vec![f32::NAN; tokens * q_dim];
            for (t, out) in reference.chunks_exact_mut(q_dim).enumerate() {
                let position = earlier + t;
                let first = window.map_or(0, |w| (position + 1).saturating_sub(w));
                kv.reference(&q[t * q_dim..(t + 1) * q_dim], shape, first..position + 1, out);
            }
            let mut got = vec![f32::NAN; tokens * q_dim];
            attention::attention_run(isa, &q, shape, earlier, window, block_size, |i| kv.block(i), &mut got);
            if let Err(message) = check_close(&got, &reference, F32_ACCUMULATION) {
                panic!("prefill attention {} {shape:?} block {block_size} tokens {tokens} after {earlier} window {window:?}: {message}", isa.name());
            }
            // Each token alone (a decode step at its position) gets the same bits as in the run.
            for t in [0, tokens / 2, tokens - 1] {
                let mut alone = vec![f32::NAN; q_dim];
                attention::attention_run(
                    isa,
                    &q[t * q_dim..(t + 1) * q_dim],
                    shape,
                    earlier + t,
                    window,
                    block_size,
                    |i| kv.block(i),
                    &mut alone,
                );
                assert!(
                    alone.iter().zip(&got[t * q_dim..(t + 1) * q_dim]).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "attention {}: token {t} alone differs from the same token in a run of {tokens}",
                    isa.name()
                );
            }
        }
    }
}

/// Several sequences in one `attention_runs` call (a batched decode step, or decode beside a
/// prefill chunk) get the same bits each as alone.
#[test]
fn attention_over_many_sequences_gives_each_the_bits_it_gets_alone() {
    let seed = test_seed();
    let mut shapes = Shapes(seed ^ 9);
    let shape = AttentionShape { num_heads: 6, num_kv_heads: 2, head_dim: 32 };
    let (kv_dim, q_dim, block_size) = (2 * 32, 6 * 32, 4);
    for isa in Isa::available() {
        // (tokens this step, cached positions before them) per sequence.
        let runs: Vec<(usize, usize)> =
            (0..7).map(|i| (if i == 3 { shapes.between(2, 40) } else { 1 }, shapes.between(0, 50))).collect();
        let halves = |values: Vec<f32>| values.into_iter().map(f16::from_f32).collect::<Vec<f16>>();
        let blocks: Vec<(Vec<f16>, Vec<f16>)> = runs
            .iter()
            .enumerate()
            .map(|(s, &(tokens, earlier))| {
                let len = (earlier + tokens).next_multiple_of(block_size) * kv_dim;
                (halves(seeded_values(seed + 100 + s as u64, len)), halves(seeded_values(seed + 200 + s as u64, len)))
            })
            .collect();
        let block = |s: usize, i: usize| {
            let (keys, values) = &blocks[s];
            let span = i * block_size * kv_dim..(i + 1) * block_size * kv_dim;
            (&keys[span.clone()], &values[span])
        };
        let starts: Vec<usize> =
            runs.iter().scan(0, |next, &(tokens, _)| Some(std::mem::replace(next, *next + tokens))).collect();
        let total: usize = runs.iter().map(|r| r.0).sum();
        let q = seeded_values(seed + 7, total * q_dim);
        let mut together = vec![f32::NAN; total * q_dim];
        let run =
            |s: usize| attention::AttentionRun { first_token: starts[s], tokens: runs[s].0, first_position: runs[s].1 };
        attention::attention_runs(isa, &q, shape, None, block_size, runs.len(), run, block, &mut together);
        for (s, &(tokens, earlier)) in runs.iter().enumerate() {
            let span = starts[s] * q_dim..(starts[s] + tokens) * q_dim;
            let mut alone = vec![f32::NAN; tokens * q_dim];
            attention::attention_run(
                isa,
                &q[span.clone()],
                shape,
                earlier,
                None,
                block_size,
                |i| block(s, i),
                &mut alone,
            );
            assert!(
                alone.iter().zip(&together[span]).all(|(a, b)| a.to_bits() == b.to_bits()),
                "attention {}: sequence {s} ({tokens} tokens after {earlier}) differs beside others",
                isa.name()
            );
        }
    }
}

#[test]
fn elementwise_ops_match_the_reference() {
    let seed = test_seed();
    let mut shapes = Shapes(seed ^ 2);
    for isa in Isa::available() {
        // Sizes on both sides of the threshold where the ops split over threads.
        for rows in [1, 3, 70] {
            let dim = shapes.between(1, 700);
            let x: Vec<f32> = seeded_values(seed, rows * dim).iter().map(|v| v * 4.0).collect();
            let delta = seeded_values(seed + 1, rows * dim);
            let weight = seeded_values(seed + 2, dim);
            let name = |op: &str| format!("{op} {} rows={rows} dim={dim}", isa.name());

            let (mut reference, mut got) = (vec![f32::NAN; x.len()], vec![f32::NAN; x.len()]);
            ops::rmsnorm::rmsnorm(&x, &weight, 1e-5, &mut reference);
            rmsnorm::rmsnorm(isa, &x, &weight, 1e-5, &mut got);
            check_close(&got, &reference, F32_ACCUMULATION).unwrap_or_else(|m| panic!("{}: {m}", name("rmsnorm")));

            let (mut residual_ref, mut residual_got) = (x.clone(), x.clone());
            ops::rmsnorm::rmsnorm_residual(&mut residual_ref, &delta, &weight, 1e-5, &mut reference);
            rmsnorm::rmsnorm_residual(isa, &mut residual_got, &delta, &weight, 1e-5, &mut got);
            assert_eq!(residual_got, residual_ref, "{}", name("residual add"));
            check_close(&got, &reference, F32_ACCUMULATION)
                .unwrap_or_else(|m| panic!("{}: {m}", name("rmsnorm_residual")));

            // Gate values out to ±40 reach the clamped ends of the fast exp.
            let gate: Vec<f32> = x.iter().map(|v| v * 10.0).collect();
            ops::silu_mul::silu_mul(&gate, &delta, &mut reference);
            got.fill(f32::NAN);
            silu_mul::silu_mul(isa, &gate, &delta, &mut got);
            check_close(&got, &reference, F32_ACCUMULATION).unwrap_or_else(|m| panic!("{}: {m}", name("silu_mul")));
        }
        for case in 0..4u64 {
            let head_dim = 2 * shapes.between(1, 48);
            let (heads, tokens) = (shapes.between(1, 9), shapes.between(1, 80));
            let width = heads * head_dim;
            let inv_freq: Vec<f32> =
                (0..head_dim / 2).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / head_dim as f32)).collect();
            let positions: Vec<u32> = (0..tokens as u32).map(|t| t * 37 % 5000).collect();
            let x = seeded_values(seed + 20 + case, tokens * width);
            let mut reference = x.clone();
            for (t, row) in reference.chunks_exact_mut(width).enumerate() {
                ops::rope::apply_rope(row, head_dim, positions[t] as usize, &inv_freq);
            }
            let (mut cos, mut sin) = (vec![f32::NAN; tokens * head_dim / 2], vec![f32::NAN; tokens * head_dim / 2]);
            rope::rope_table(&positions, &inv_freq, &mut cos, &mut sin);
            let mut got = x.clone();
            rope::apply_rope(isa, &mut got, width, head_dim, &cos, &sin);
            assert_eq!(got, reference, "rope {} heads={heads} head_dim={head_dim}: not bit-identical", isa.name());
        }
    }
}

/// The whole forward pass is batch- and chunk-invariant: a sequence's logits are the same bits
/// whether its prompt is computed in one step or token by token, alone or beside other sequences.
#[test]
fn forward_logits_are_the_same_bits_in_any_batch_or_chunking() {
    use kiln::backend::cpu::CpuBackend;
    use kiln::backend::plan::{PlanLimits, StepPlan};
    use kiln::backend::{Backend, KvLayout};
    use kiln::model::random::{random_llama_weights, random_llama_weights_quantized};
    use kiln::model::safetensors_dir::WeightDtype;
    use kiln::model::ModelConfig;

    let config = ModelConfig::from_json(
        r#"{"architectures":["LlamaForCausalLM"],"hidden_size":64,"intermediate_size":96,"num_hidden_layers":2,
        "num_attention_heads":4,"num_key_value_heads":2,"vocab_size":256,"rms_norm_eps":1e-5,
        "max_position_embeddings":512,"rope_theta":10000.0,"tie_word_embeddings":true}"#,
        std::path::Path::new("test config"),
    )
    .unwrap();
    let limits = PlanLimits { max_batch_tokens: 64, max_seqs: 4, max_blocks_per_seq: 16 };
    let layout = KvLayout { block_size: 4, num_blocks: 64 };
    let prompt: Vec<u32> = (0..23u32).map(|i| (i * 37 + 5) % 256).collect();
    let other: Vec<u32> = (0..9u32).map(|i| (i * 11 + 3) % 256).collect();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    for quantized in [false, true] {
        let weights = |seed| {
            if quantized {
                random_llama_weights_quantized(&config, seed, kiln::model::packed_quant::PackedQuant::Q4_1)
            } else {
                random_llama_weights(&config, seed, WeightDtype::F16)
            }
        };
        let mut backend = CpuBackend::new(config.clone(), weights(9), layout, limits);
        let mut plan = StepPlan::new(limits, layout.block_size);
        let mut logits = vec![f32::NAN; 2 * 256];
        // The whole prompt in one step.
        plan.push_sequence(&prompt, 0, &[0, 1, 2, 3, 4, 5], true).unwrap();
        backend.execute(&plan, &mut logits).unwrap();
        let whole = bits(&logits[..256]);
        // The same prompt as a chunk of 22 then one decode step beside another sequence's prefill.
        plan.clear();
        plan.push_sequence(&prompt[..22], 0, &[10, 11, 12, 13, 14, 15], false).unwrap();
        backend.execute(&plan, &mut logits).unwrap();
        plan.clear();
        plan.push_sequence(&other, 0, &[20, 21, 22], true).unwrap();
        let row = plan.push_sequence(&prompt[22..], 22, &[10, 11, 12, 13, 14, 15], true).unwrap().unwrap();
        backend.execute(&plan, &mut logits).unwrap();
        assert_eq!(
            bits(&logits[row * 256..(row + 1) * 256]),
            whole,
            "quantized={quantized}: chunked and batched differs"
        );
    }
}
