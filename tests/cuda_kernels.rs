//! Every CUDA kernel against its CPU reference in `kiln::ops` (and the engine's sampler), on
//! fresh random inputs each run (seed printed; replay with KILN_TEST_SEED), outputs poisoned with
//! NaN before each launch, compared with `|got - ref| <= atol + rtol * |ref|` at the dtype's
//! tolerance (`testing::tolerance`). Without a GPU they run on kiln's CUDA emulator, where the
//! sampling kernel also runs under several thread schedules (a race shows as a schedule that
//! gives other results).
#![cfg(feature = "cuda")]

mod sampling_support;

use half::{bf16, f16};
use kiln::backend::cuda::attention::{self, HEAD_DIMS};
use kiln::backend::cuda::device::{DeviceArray, Dtype, Gpu};
use kiln::backend::cuda::driver::{self, Schedule};
use kiln::backend::cuda::gemm::{self, GemmVariant};
use kiln::backend::cuda::params::{PenaltyEntry, SampleRow, TopLogprob, MAX_TOP_LOGPROBS};
use kiln::backend::cuda::rope::{DevicePlan, KvGeometry};
use kiln::backend::cuda::testing::{gpu_for_test, tolerance};
use kiln::backend::cuda::{embedding, random, rmsnorm, rope, sampling, silu_mul};
use kiln::engine::rng::Rng;
use kiln::engine::sampler::{Sampler, SamplingParams};
use kiln::model::config::ModelConfig;
use kiln::model::weights::WeightMatrix;
use kiln::ops::attention::{attention as attention_ref, AttentionShape};
use kiln::testing::{assert_close, seeded_values, test_seed, Tolerance};
use sampling_support::{logit_bias, penalty_entries, sample_row};

const DTYPES: [Dtype; 2] = [Dtype::F16, Dtype::Bf16];

/// Whether the emulator runs instrumented (tools/emu-sanitizers sets KILN_EMU_SANITIZER): every
/// access then costs tens of times more, so the tests keep every shape class (tails, ragged
/// tiles, splits, masks) but drop their largest sizes, which only repeat the same code paths.
fn under_sanitizer() -> bool {
    std::env::var_os("KILN_EMU_SANITIZER").is_some()
}

/// Values as the device stores them in `dtype`.
fn round(values: &[f32], dtype: Dtype) -> Vec<f32> {
    match dtype {
        Dtype::F16 => values.iter().map(|&v| f16::from_f32(v).to_f32()).collect(),
        Dtype::Bf16 => values.iter().map(|&v| bf16::from_f32(v).to_f32()).collect(),
        _ => values.to_vec(),
    }
}

fn matrix(rows: usize, cols: usize, values: &[f32], dtype: Dtype) -> WeightMatrix {
    match dtype {
        Dtype::F16 => WeightMatrix::from_f16(rows, cols, values.iter().map(|&v| f16::from_f32(v)).collect()),
        Dtype::Bf16 => WeightMatrix::from_bf16(rows, cols, values.iter().map(|&v| bf16::from_f32(v)).collect()),
        _ => WeightMatrix::from_f32(rows, cols, values.to_vec()),
    }
}

fn scaled(seed: u64, len: usize, scale: f32) -> Vec<f32> {
    seeded_values(seed, len).into_iter().map(|v| v * scale).collect()
}

fn run(gpu: &Gpu, launches: &[kiln::backend::cuda::device::Launch]) {
    for launch in launches {
        gpu.launch(launch).unwrap_or_else(|e| panic!("{}: {e}", launch.name));
    }
    gpu.synchronize().expect("kernels ran without a device error");
}

#[test]
fn embedding_gathers_rows() {
    let gpu = gpu_for_test("embedding_gathers_rows");
    let seed = test_seed();
    let (vocab, hidden) = (300, 136);
    let ids: Vec<u32> = seeded_values(seed, 9).iter().map(|v| ((v + 1.0) * 150.0) as u32 % vocab as u32).collect();
    for dtype in DTYPES {
        let table = round(&seeded_values(seed + 1, vocab * hidden), dtype);
        let table_device = gpu.upload_as(&table, dtype).unwrap();
        let ids_device = gpu.upload_u32(&ids).unwrap();
        let out = gpu.alloc(Dtype::F32, ids.len() * hidden).unwrap();
        gpu.poison(out.array()).unwrap();
        let k = embedding::kernel(&gpu, dtype).unwrap();
        run(
            &gpu,
            &[embedding::embedding(&k, table_device.array(), hidden, ids_device.array(), out.array(), ids.len())
                .unwrap()],
        );
        let mut expected = vec![f32::NAN; ids.len() * hidden];
        kiln::ops::embedding::embedding(&matrix(vocab, hidden, &table, dtype), &ids, &mut expected);
        assert_eq!(gpu.download_f32(out.array()).unwrap(), expected, "{dtype:?}: a gather is exact");
    }
}

#[test]
fn rmsnorm_residual_matches_reference() {
    let gpu = gpu_for_test("rmsnorm_residual_matches_reference");
    let seed = test_seed();
    for dtype in DTYPES {
        for (rows, dim) in [(1, 64), (5, 4096), (3, 200)] {
            let residual = scaled(seed, rows * dim, 3.0);
            let delta = seeded_values(seed + 1, rows * dim);
            let weight = seeded_values(seed + 2, dim).iter().map(|v| 1.0 + 0.2 * v).collect::<Vec<_>>();
            let k = rmsnorm::kernel(&gpu, dtype).unwrap();
            let (r, d, w) =
                (gpu.upload_f32(&residual).unwrap(), gpu.upload_f32(&delta).unwrap(), gpu.upload_f32(&weight).unwrap());
            let out = gpu.alloc(dtype, rows * dim).unwrap();
            gpu.poison(out.array()).unwrap();
            run(
                &gpu,
                &[rmsnorm::rmsnorm_residual(&k, r.array(), Some(d.array()), w.array(), out.array(), None, rows, 1e-5)
                    .unwrap()],
            );
            let mut expected_residual = residual.clone();
            let mut expected = vec![f32::NAN; rows * dim];
            kiln::ops::rmsnorm::rmsnorm_residual(&mut expected_residual, &delta, &weight, 1e-5, &mut expected);
            assert_close(&gpu.download_f32(out.array()).unwrap(), &expected, tolerance(dtype));
            assert_close(&gpu.download_f32(r.array()).unwrap(), &expected_residual, Tolerance { atol: 0.0, rtol: 0.0 });

            // Gathered rows (the logits rows): residual rows read, not written.
            let rows_wanted: Vec<u32> = (0..rows as u32).rev().collect();
            let index = gpu.upload_u32(&rows_wanted).unwrap();
            let r2 = gpu.upload_f32(&residual).unwrap();
            gpu.poison(out.array()).unwrap();
            run(
                &gpu,
                &[rmsnorm::rmsnorm_residual(
                    &k,
                    r2.array(),
                    Some(d.array()),
                    w.array(),
                    out.array(),
                    Some(index.array()),
                    rows,
                    1e-5,
                )
                .unwrap()],
            );
            let gathered: Vec<f32> =
                rows_wanted.iter().flat_map(|&i| expected[i as usize * dim..(i as usize + 1) * dim].to_vec()).collect();
            assert_close(&gpu.download_f32(out.array()).unwrap(), &gathered, tolerance(dtype));
            assert_eq!(gpu.download_f32(r2.array()).unwrap(), residual, "gathered rows leave the residual alone");
        }
    }
}

#[test]
fn silu_mul_matches_reference() {
    let gpu = gpu_for_test("silu_mul_matches_reference");
    let seed = test_seed();
    for dtype in DTYPES {
        let (n, ffn) = (7, 11008);
        let gate_up = round(&scaled(seed, n * 2 * ffn, 6.0), dtype);
        let device = gpu.upload_as(&gate_up, dtype).unwrap();
        let out = gpu.alloc(dtype, n * ffn).unwrap();
        gpu.poison(out.array()).unwrap();
        run(
            &gpu,
            &[silu_mul::silu_mul(&silu_mul::kernel(&gpu, dtype).unwrap(), device.array(), out.array(), n, ffn)
                .unwrap()],
        );
        let (mut gate, mut up) = (Vec::new(), Vec::new());
        for row in gate_up.chunks(2 * ffn) {
            gate.extend_from_slice(&row[..ffn]);
            up.extend_from_slice(&row[ffn..]);
        }
        let mut expected = vec![f32::NAN; n * ffn];
        kiln::ops::silu_mul::silu_mul(&gate, &up, &mut expected);
        assert_close(&gpu.download_f32(out.array()).unwrap(), &expected, tolerance(dtype));
    }
}

fn llama3_config(heads: usize, kv_heads: usize, head_dim: usize) -> ModelConfig {
    let json = format!(
        r#"{{"architectures":["LlamaForCausalLM"],"hidden_size":{},"intermediate_size":64,"num_hidden_layers":1,
        "num_attention_heads":{heads},"num_key_value_heads":{kv_heads},"head_dim":{head_dim},"vocab_size":64,"rope_theta":500000.0,
        "rope_scaling":{{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}}}}"#,
        heads * head_dim
    );
    ModelConfig::from_json(&json, std::path::Path::new("test")).unwrap()
}

/// A device plan holding the given arrays (the executor packs plans the same way).
struct TestPlan {
    plan: DevicePlan,
    _owner: kiln::backend::cuda::DeviceBuffer,
}

fn device_plan(
    gpu: &Gpu,
    positions: &[u32],
    token_seq: &[u32],
    starts: &[u32],
    counts: &[u32],
    tables: &[u32],
) -> TestPlan {
    let mut words: Vec<u32> = Vec::new();
    let mut spans = Vec::new();
    for array in [
        &vec![0u32; positions.len()][..],
        positions,
        token_seq,
        starts,
        counts,
        tables,
        &vec![0u32; positions.len()][..],
    ] {
        spans.push((words.len(), array.len()));
        words.extend_from_slice(array);
        words.resize(words.len().div_ceil(4) * 4 + 4, 0);
    }
    let owner = gpu.upload_u32(&words).unwrap();
    let a = owner.array();
    let v = |i: usize| a.slice(spans[i].0, spans[i].1);
    TestPlan {
        plan: DevicePlan {
            token_ids: v(0),
            positions: v(1),
            token_seq: v(2),
            seq_token_start: v(3),
            seq_token_count: v(4),
            block_tables: v(5),
            logit_tokens: v(6),
        },
        _owner: owner,
    }
}

#[test]
fn rope_kv_write_matches_reference_with_llama3_scaling() {
    let gpu = gpu_for_test("rope_kv_write_matches_reference_with_llama3_scaling");
    let seed = test_seed();
    for dtype in DTYPES {
        let config = llama3_config(8, 2, 64);
        let (hd, q_dim, kv_dim) = (64, 8 * 64, 2 * 64);
        let g = KvGeometry {
            num_heads: 8,
            num_kv_heads: 2,
            head_dim: hd,
            block_size: 16,
            num_blocks: 400,
            max_blocks_per_seq: 320,
        };
        // Two sequences and a padding token; positions far apart so long angles are exercised.
        let positions: Vec<u32> = vec![0, 1, 2, 77, 5000, 9];
        let token_seq: Vec<u32> = vec![0, 0, 0, 1, 1, u32::MAX];
        let width = g.max_blocks_per_seq;
        let tables: Vec<u32> = (0..width as u32).chain((0..width as u32).map(|b| 399 - b)).collect();
        let n = positions.len();
        let qkv = round(&seeded_values(seed, n * (q_dim + 2 * kv_dim)), dtype);
        let plan = device_plan(&gpu, &positions, &token_seq, &[0, 3], &[3, 2], &tables);
        let inv_freq = kiln::ops::rope::rope_inv_freq(&config);
        let qkv_d = gpu.upload_as(&qkv, dtype).unwrap();
        let q_out = gpu.alloc(dtype, n * q_dim).unwrap();
        let k_cache = gpu.alloc(dtype, g.cache_len()).unwrap();
        let v_cache = gpu.alloc(dtype, g.cache_len()).unwrap();
        for a in [q_out.array(), k_cache.array(), v_cache.array()] {
            gpu.poison(a).unwrap();
        }
        let inv = gpu.upload_f32(&inv_freq).unwrap();
        let k = rope::kernel(&gpu, dtype).unwrap();
        run(
            &gpu,
            &[rope::rope_kv_write(
                &k,
                g,
                qkv_d.array(),
                q_out.array(),
                k_cache.array(),
                v_cache.array(),
                inv.array(),
                &plan.plan,
                n,
            )
            .unwrap()],
        );
        let q_got = gpu.download_f32(q_out.array()).unwrap();
        let k_got = gpu.download_f32(k_cache.array()).unwrap();
        let v_got = gpu.download_f32(v_cache.array()).unwrap();
        for t in 0..n - 1 {
            let row = &qkv[t * (q_dim + 2 * kv_dim)..(t + 1) * (q_dim + 2 * kv_dim)];
            let (mut q, mut kk) = (row[..q_dim].to_vec(), row[q_dim..q_dim + kv_dim].to_vec());
            kiln::ops::rope::apply_rope(&mut q, hd, positions[t] as usize, &inv_freq);
            kiln::ops::rope::apply_rope(&mut kk, hd, positions[t] as usize, &inv_freq);
            assert_close(&q_got[t * q_dim..(t + 1) * q_dim], &q, tolerance(dtype));
            let seq = token_seq[t] as usize;
            let block = tables[seq * width + positions[t] as usize / 16] as usize;
            for head in 0..2 {
                let at = ((block * 2 + head) * 16 + positions[t] as usize % 16) * hd;
                assert_close(&k_got[at..at + hd], &kk[head * hd..(head + 1) * hd], tolerance(dtype));
                assert_eq!(
                    &v_got[at..at + hd],
                    &row[q_dim + kv_dim + head * hd..q_dim + kv_dim + (head + 1) * hd],
                    "v is copied"
                );
            }
        }
    }
}

#[test]
fn gemm_every_variant_matches_reference() {
    let gpu = gpu_for_test("gemm_every_variant_matches_reference");
    let seed = test_seed();
    let cases: &[(GemmVariant, &[usize], usize, usize)] = &[
        (GemmVariant::Gemv, &[1, 2, 3, 4, 5, 6, 7, 8], 136, 264),
        (GemmVariant::Gemv, &[1, 8], 4096, 4096),
        (GemmVariant::TensorCoreSmall, &[1, 9, 64, 100], 136, 264),
        (GemmVariant::TensorCoreSmall, &[33], 4096, 1000),
        (GemmVariant::TensorCoreLarge, &[1, 130, 300], 264, 72),
        (GemmVariant::TensorCoreLarge, &[512], 1024, 4096),
        (GemmVariant::Auto, &[3, 40, 700], 520, 40),
        (GemmVariant::Wgmma, &[1, 77, 128, 300], 264, 72),
        (GemmVariant::Wgmma, &[512], 1024, 4096),
    ];
    // Under a sanitizer: the cases up to 20M multiply-adds (every variant, every tail class).
    let small = |&(_, ms, n, k): &(GemmVariant, &[usize], usize, usize)| ms.iter().max().unwrap() * n * k <= 20 << 20;
    let cases: Vec<_> = cases.iter().copied().filter(|case| !under_sanitizer() || small(case)).collect();
    for dtype in DTYPES {
        let kernels = gemm::kernels(&gpu, dtype).unwrap();
        for (case, &(variant, ms, n, k)) in cases.iter().enumerate() {
            if variant == GemmVariant::Wgmma && !kernels.has_wgmma() {
                eprintln!("skipped the wgmma cases: not a compute capability 9.0 GPU (or KILN_NO_WGMMA is set)");
                continue;
            }
            let w = round(&seeded_values(seed + case as u64, n * k), dtype);
            let w_device = gpu.upload_as(&w, dtype).unwrap();
            let w_host = matrix(n, k, &w, dtype);
            for &m in ms {
                let x = round(&seeded_values(seed + 100 + m as u64, m * k), dtype);
                let x_device = gpu.upload_as(&x, dtype).unwrap();
                let mut expected = vec![f32::NAN; m * n];
                kiln::ops::matmul::matmul(&x, &w_host, &mut expected);
                for out_f32 in [true, false] {
                    let out = gpu.alloc(if out_f32 { Dtype::F32 } else { dtype }, m * n).unwrap();
                    gpu.poison(out.array()).unwrap();
                    run(
                        &gpu,
                        &[gemm::gemm(
                            &kernels,
                            variant,
                            x_device.array(),
                            w_device.array(),
                            out.array(),
                            m,
                            n,
                            k,
                            out_f32,
                        )
                        .unwrap()],
                    );
                    // f32 output differs from the reference only in summation order.
                    let tol = if out_f32 {
                        Tolerance { atol: 2e-4 * (k as f32).sqrt(), rtol: 1e-4 }
                    } else {
                        tolerance(dtype)
                    };
                    let got = gpu.download_f32(out.array()).unwrap();
                    if let Err(e) = kiln::testing::check_close(&got, &expected, tol) {
                        panic!("{dtype:?} {variant:?} m={m} n={n} k={k} f32 out={out_f32}: {e}");
                    }
                }
            }
        }
    }
}

/// A paged cache holding the given per-position K and V (`[positions, kv_dim]`) of sequences.
struct Cache {
    k: Vec<f32>,
    v: Vec<f32>,
    tables: Vec<u32>,
}

#[allow(clippy::too_many_arguments)]
fn attention_case(
    gpu: &Gpu,
    dtype: Dtype,
    head_dim: usize,
    heads: usize,
    kv_heads: usize,
    contexts: &[usize],
    queries: &[usize],
    window: Option<usize>,
    seed: u64,
) {
    let block_size = 16;
    let max_blocks = contexts.iter().map(|c| c.div_ceil(block_size)).max().unwrap();
    let num_blocks = contexts.len() * max_blocks + 3;
    let g = KvGeometry {
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim,
        block_size,
        num_blocks,
        max_blocks_per_seq: max_blocks,
    };
    let q_dim = heads * head_dim;
    // Blocks of different sequences interleave, in reverse, to catch table mistakes.
    let mut tables = vec![u32::MAX; contexts.len() * max_blocks];
    for (s, &c) in contexts.iter().enumerate() {
        for b in 0..c.div_ceil(block_size) {
            tables[s * max_blocks + b] = (num_blocks - 1 - (b * contexts.len() + s)) as u32;
        }
    }
    let cache = Cache {
        k: round(&scaled(seed, g.cache_len(), 2.0), dtype),
        v: round(&seeded_values(seed + 1, g.cache_len()), dtype),
        tables,
    };
    // Query tokens: the last `queries[s]` positions of each sequence, sequence after sequence.
    let (mut positions, mut token_seq, mut starts, mut counts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (s, (&c, &nq)) in contexts.iter().zip(queries).enumerate() {
        starts.push(positions.len() as u32);
        counts.push(nq as u32);
        for p in c - nq..c {
            positions.push(p as u32);
            token_seq.push(s as u32);
        }
    }
    let n = positions.len();
    let q = round(&seeded_values(seed + 2, n * q_dim), dtype);
    let plan = device_plan(gpu, &positions, &token_seq, &starts, &counts, &cache.tables);
    let (kc, vc, qd) = (
        gpu.upload_as(&cache.k, dtype).unwrap(),
        gpu.upload_as(&cache.v, dtype).unwrap(),
        gpu.upload_as(&q, dtype).unwrap(),
    );
    let out = gpu.alloc(dtype, n * q_dim).unwrap();
    let kernels = attention::kernels(gpu, dtype, head_dim).unwrap();

    // Reference: ops::attention over the same paged cache.
    let shape = AttentionShape { num_heads: heads, num_kv_heads: kv_heads, head_dim };
    let slot = |s: usize, p: usize, head: usize| -> usize {
        let block = cache.tables[s * max_blocks + p / block_size] as usize;
        ((block * kv_heads + head) * block_size + p % block_size) * head_dim
    };
    let mut expected = vec![f32::NAN; n * q_dim];
    for t in 0..n {
        let (s, p) = (token_seq[t] as usize, positions[t] as usize);
        let first = window.map_or(0, |w| (p + 1).saturating_sub(w));
        attention_ref(
            &q[t * q_dim..(t + 1) * q_dim],
            shape,
            first..p + 1,
            |pos, head| &cache.k[slot(s, pos, head)..slot(s, pos, head) + head_dim],
            |pos, head| &cache.v[slot(s, pos, head)..slot(s, pos, head) + head_dim],
            &mut Vec::new(),
            &mut expected[t * q_dim..(t + 1) * q_dim],
        );
    }
    let label = format!(
        "{dtype:?} hd={head_dim} heads={heads}/{kv_heads} contexts={contexts:?} queries={queries:?} window={window:?}"
    );
    let max_queries = *queries.iter().max().unwrap();
    gpu.poison(out.array()).unwrap();
    run(
        gpu,
        &[attention::prefill(
            &kernels,
            g,
            qd.array(),
            kc.array(),
            vc.array(),
            out.array(),
            &plan.plan,
            n,
            contexts.len(),
            max_queries,
            window,
        )
        .unwrap()],
    );
    if let Err(e) = kiln::testing::check_close(&gpu.download_f32(out.array()).unwrap(), &expected, tolerance(dtype)) {
        panic!("prefill {label}: {e}");
    }
    if queries.iter().all(|&nq| nq == 1) {
        for splits in [1, 3, 32] {
            let partial = gpu.alloc(Dtype::F32, attention::partial_len(splits, n, heads, head_dim)).unwrap();
            gpu.poison(out.array()).unwrap();
            gpu.poison(partial.array()).unwrap();
            let launches = attention::decode(
                &kernels,
                g,
                qd.array(),
                kc.array(),
                vc.array(),
                out.array(),
                partial.array(),
                &plan.plan,
                n,
                splits,
                window,
            )
            .unwrap();
            run(gpu, &launches);
            if let Err(e) =
                kiln::testing::check_close(&gpu.download_f32(out.array()).unwrap(), &expected, tolerance(dtype))
            {
                panic!("decode splits={splits} {label}: {e}");
            }
        }
    }
}

#[test]
fn attention_decode_and_prefill_match_reference() {
    let gpu = gpu_for_test("attention_decode_and_prefill_match_reference");
    let seed = test_seed();
    for dtype in DTYPES {
        for head_dim in HEAD_DIMS {
            // Decode: one query per sequence, contexts from 1 to several hundred, GQA and MHA.
            let long = if under_sanitizer() { 70 } else { 300 };
            attention_case(&gpu, dtype, head_dim, 8, 2, &[1, 17, long, 64], &[1, 1, 1, 1], None, seed);
            attention_case(&gpu, dtype, head_dim, 6, 6, &[33, 5], &[1, 1], None, seed + 1);
            attention_case(&gpu, dtype, head_dim, 8, 1, &[long - 10], &[1], Some(50), seed + 2);
            // Prefill: whole prompts, a chunk after cached context, ragged query tiles.
            attention_case(&gpu, dtype, head_dim, 8, 2, &[37, 100, 16], &[37, 20, 1], None, seed + 3);
            let prompt = if under_sanitizer() { 65 } else { 129 };
            attention_case(&gpu, dtype, head_dim, 4, 4, &[prompt], &[prompt], Some(40), seed + 4);
        }
    }
}

#[test]
fn device_random_weights_equal_host_seeded_values() {
    let gpu = gpu_for_test("device_random_weights_equal_host_seeded_values");
    let seed = test_seed();
    for dtype in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
        let (scale, offset) = if dtype == Dtype::F32 { (0.1, 1.0) } else { (1.0 / 4096f32.sqrt(), 0.0) };
        let out = gpu.alloc(dtype, 10_007).unwrap();
        gpu.poison(out.array()).unwrap();
        run(&gpu, &[random::fill_random(&gpu, out.array(), seed, scale, offset).unwrap()]);
        let host: Vec<f32> = seeded_values(seed, 10_007).iter().map(|&v| offset + scale * v).collect();
        assert_eq!(gpu.download_f32(out.array()).unwrap(), round(&host, dtype), "{dtype:?}");
    }
}

// Sampling: the GPU kernel against engine::sampler::Sampler on the same logits and seed.

fn sampling_cases() -> Vec<(SamplingParams, &'static str)> {
    let base = |temperature: f32| SamplingParams { temperature, ..SamplingParams::greedy() };
    vec![
        (SamplingParams::greedy(), "greedy"),
        (base(1.0), "temperature 1"),
        (base(0.7), "temperature 0.7"),
        (SamplingParams { top_k: 40, ..base(0.9) }, "top-k 40"),
        (SamplingParams { top_k: 1, ..base(0.9) }, "top-k 1"),
        (SamplingParams { top_p: 0.9, ..base(1.0) }, "top-p 0.9"),
        (SamplingParams { top_p: 0.3, ..base(1.3) }, "top-p 0.3"),
        (SamplingParams { min_p: 0.05, ..base(1.0) }, "min-p 0.05"),
        (SamplingParams { top_k: 100, top_p: 0.8, min_p: 0.02, ..base(0.8) }, "all cuts"),
        (
            SamplingParams { repetition_penalty: 1.3, presence_penalty: 0.5, frequency_penalty: 0.3, ..base(0.9) },
            "penalties",
        ),
        (SamplingParams { repetition_penalty: 1.5, ..SamplingParams::greedy() }, "greedy with penalty"),
    ]
}

/// The cases again with a logit bias (`vocab` bounds its token ids): the bias is added before the
/// penalties, greedy included, and log-probabilities stay the raw logits'.
fn biased_sampling_cases(vocab: usize) -> Vec<(SamplingParams, &'static str)> {
    let base = |temperature: f32| SamplingParams { temperature, ..SamplingParams::greedy() };
    vec![
        (SamplingParams { logit_bias: logit_bias(vocab, 1), ..SamplingParams::greedy() }, "greedy with bias"),
        (SamplingParams { logit_bias: logit_bias(vocab, 2), top_k: 40, ..base(0.9) }, "top-k with bias"),
        (
            SamplingParams {
                logit_bias: logit_bias(vocab, 3),
                repetition_penalty: 1.3,
                presence_penalty: 0.5,
                frequency_penalty: 0.3,
                ..base(1.0)
            },
            "bias and penalties",
        ),
    ]
}

#[test]
fn sampling_matches_the_cpu_sampler() {
    let gpu = gpu_for_test("sampling_matches_the_cpu_sampler");
    let seed = test_seed();
    let (vocab, rows_per_case) = if under_sanitizer() { (1003, 3) } else { (5003, 12) };
    let kernel = sampling::kernel(&gpu).unwrap();
    for (case, (params, label)) in sampling_cases().into_iter().chain(biased_sampling_cases(vocab)).enumerate() {
        let n = rows_per_case;
        let logits: Vec<f32> = scaled(seed + case as u64, n * vocab, 6.0);
        let mut rows = Vec::new();
        let mut penalties: Vec<PenaltyEntry> = Vec::new();
        let mut mask = Vec::new();
        let mut expected = Vec::new();
        let mut expected_logprobs = Vec::new();
        for r in 0..n {
            let row_seed = seed.wrapping_mul(31).wrapping_add((case * 100 + r) as u64);
            let params = SamplingParams { seed: Some(row_seed), ..params.clone() };
            let prompt: Vec<u32> = (0..20).map(|i| ((row_seed as usize + i * 97) % vocab) as u32).collect();
            let generated: Vec<u32> = (0..8).map(|i| ((row_seed as usize / 3 + i * 13 % 5) % vocab) as u32).collect();
            // Every third row is masked to the tokens with an even id.
            let masked = r % 3 == 2;
            let entries = penalty_entries(&params, &prompt, &generated);
            let mask_row = masked.then(|| {
                mask.extend((0..vocab.div_ceil(32)).map(|_| 0x5555_5555u32));
                mask.len() / vocab.div_ceil(32) - 1
            });
            let uniform = if params.is_greedy() { 0.0 } else { Rng::seeded(row_seed).next_f64() };
            rows.push(sample_row(&params, uniform, penalties.len(), entries.len(), mask_row, Some(5)));
            penalties.extend(entries);

            let mut sampler = Sampler::new(params.clone(), &prompt);
            for &t in &generated {
                sampler.accept(t);
            }
            let row_logits = &logits[r * vocab..(r + 1) * vocab];
            let mut lp = vec![0.0; vocab];
            kiln::ops::logits::log_softmax(row_logits, &mut lp);
            expected_logprobs.push(lp);
            let even = |id: u32| id.is_multiple_of(2);
            let allowed: Option<&dyn Fn(u32) -> bool> = if masked { Some(&even) } else { None };
            expected.push(sampler.sample(&mut row_logits.to_vec(), allowed));
        }
        let (tokens, logprobs, top) = run_sampling(&gpu, &kernel, &logits, vocab, &rows, &penalties, &mask);
        assert_eq!(tokens, expected, "{label}: GPU tokens differ from the CPU sampler's (seed {seed})");
        for r in 0..n {
            let lp = &expected_logprobs[r];
            let tol = Tolerance { atol: 1e-4, rtol: 1e-5 };
            assert_close(&[logprobs[r]], &[lp[tokens[r] as usize]], tol);
            let mut order: Vec<u32> = (0..vocab as u32).collect();
            order.sort_by(|&a, &b| lp[b as usize].total_cmp(&lp[a as usize]).then(a.cmp(&b)));
            for (i, alt) in top[r * MAX_TOP_LOGPROBS..r * MAX_TOP_LOGPROBS + 5].iter().enumerate() {
                assert_eq!(alt.token, order[i], "{label}: row {r} alternative {i}");
                assert_close(&[alt.logprob], &[lp[order[i] as usize]], tol);
            }
        }
    }
}

/// Runs sample_f32 over `logits` (`[rows, vocab]`) and returns the tokens, the chosen tokens'
/// log-probabilities and the top alternatives (`MAX_TOP_LOGPROBS` per row).
fn run_sampling(
    gpu: &Gpu,
    kernel: &kiln::backend::cuda::device::Kernel,
    logits: &[f32],
    vocab: usize,
    rows: &[SampleRow],
    penalties: &[PenaltyEntry],
    mask: &[u32],
) -> (Vec<u32>, Vec<f32>, Vec<TopLogprob>) {
    let n = rows.len();
    let logits_d = gpu.upload_f32(logits).unwrap();
    let rows_d = gpu.upload_bytes(Dtype::U8, std::mem::size_of_val(rows), bytemuck::cast_slice(rows)).unwrap();
    let entry = std::mem::size_of::<PenaltyEntry>();
    let penalty_bytes = [bytemuck::cast_slice(penalties), &vec![0u8; entry][..]].concat();
    let pen_d = gpu
        .upload_bytes(Dtype::U8, penalties.len().max(1) * entry, &penalty_bytes[..penalties.len().max(1) * entry])
        .unwrap();
    let mask_d = gpu.upload_u32(if mask.is_empty() { &[0] } else { mask }).unwrap();
    let outputs = gpu.alloc(Dtype::U32, 2 * n + n * MAX_TOP_LOGPROBS * 2).unwrap();
    let weights = gpu.alloc(Dtype::F64, n * vocab).unwrap();
    gpu.poison(outputs.array()).unwrap();
    let o: DeviceArray = outputs.array();
    let buffers = sampling::SampleBuffers {
        rows: rows_d.array(),
        penalties: pen_d.array(),
        mask: mask_d.array(),
        tokens_out: o.slice(0, n),
        logprobs_out: o.slice(n, n).reinterpret(Dtype::F32),
        top_out: o.slice(2 * n, n * MAX_TOP_LOGPROBS * 2).reinterpret(Dtype::U8),
        weights: weights.array(),
    };
    run(gpu, &[sampling::sample(kernel, logits_d.array(), vocab, n, &buffers).unwrap()]);
    let tokens = gpu.download_u32(buffers.tokens_out).unwrap();
    let logprobs = gpu.download_f32(buffers.logprobs_out).unwrap();
    let top_words = gpu.download_u32(buffers.top_out.reinterpret(Dtype::U32)).unwrap();
    (tokens, logprobs, bytemuck::cast_slice(&top_words).to_vec())
}

/// The thread orders a test's kernels run under: on the emulator forward, reverse and random
/// (a race between threads shows as an order that gives other results); on a GPU its own.
fn schedules() -> Vec<Option<Schedule>> {
    if driver::is_emulator() {
        vec![Some(Schedule::Forward), Some(Schedule::Reverse), Some(Schedule::Random { seed: test_seed() })]
    } else {
        vec![None]
    }
}

fn set_schedule(schedule: Option<Schedule>) {
    if let Some(schedule) = schedule {
        driver::set_schedule(schedule).unwrap();
    }
}

#[test]
fn sampling_top_logprobs_are_the_raw_logits_under_every_schedule() {
    // The best five tokens are all in the penalty history, at entries 35..39, which threads of
    // the second warp penalise in place: the alternatives must still report raw log-probabilities.
    let gpu = gpu_for_test("sampling_top_logprobs_are_the_raw_logits_under_every_schedule");
    let seed = test_seed();
    let vocab = 300;
    let kernel = sampling::kernel(&gpu).unwrap();
    let mut logits: Vec<f32> = scaled(seed, vocab, 2.0);
    for (i, token) in (135..140).enumerate() {
        logits[token] = 10.0 - 0.5 * i as f32;
    }
    let params = SamplingParams { repetition_penalty: 1.3, ..SamplingParams::greedy() };
    let prompt: Vec<u32> = (100..140).collect();
    let entries = penalty_entries(&params, &prompt, &[]);
    assert_eq!(entries[35].token, 135, "history entries are in token order");
    let row = sample_row(&params, 0.0, 0, entries.len(), None, Some(5));
    let mut lp = vec![0.0; vocab];
    kiln::ops::logits::log_softmax(&logits, &mut lp);
    for schedule in schedules() {
        set_schedule(schedule);
        let (tokens, logprobs, top) = run_sampling(&gpu, &kernel, &logits, vocab, &[row], &entries, &[]);
        let mut sampler = Sampler::new(params.clone(), &prompt);
        assert_eq!(tokens[0], sampler.sample(&mut logits.clone(), None), "{schedule:?}: token");
        let tol = Tolerance { atol: 1e-4, rtol: 1e-5 };
        assert_close(&[logprobs[0]], &[lp[tokens[0] as usize]], tol);
        for (i, alt) in top[..5].iter().enumerate() {
            assert_eq!(alt.token, 135 + i as u32, "{schedule:?}: alternative {i}");
            if let Err(e) = kiln::testing::check_close(&[alt.logprob], &[lp[alt.token as usize]], tol) {
                panic!("{schedule:?}: alternative {i} (token {}) is not its raw log-probability: {e}", alt.token);
            }
        }
    }
    if driver::is_emulator() {
        set_schedule(Some(Schedule::Random { seed }));
    }
}

#[test]
fn sampling_top_logprobs_break_ties_of_equal_logprobs_by_token_id() {
    // Tokens 5 and 6 have different logits (6's is one ulp higher) whose log-probabilities round
    // to the same f32: ranked by log-probability then id, as the CPU does, 5 comes first.
    let gpu = gpu_for_test("sampling_top_logprobs_break_ties_of_equal_logprobs_by_token_id");
    let vocab = 64;
    let kernel = sampling::kernel(&gpu).unwrap();
    let mut logits = vec![0.0f32; vocab];
    logits[0] = 50.0;
    logits[6] = 10.0;
    logits[5] = f32::from_bits(10.0f32.to_bits() - 1);
    let mut lp = vec![0.0; vocab];
    kiln::ops::logits::log_softmax(&logits, &mut lp);
    assert!(logits[5] < logits[6] && lp[5] == lp[6], "the case needs equal log-probabilities of unequal logits");
    let row = sample_row(&SamplingParams::greedy(), 0.0, 0, 0, None, Some(3));
    let (tokens, _, top) = run_sampling(&gpu, &kernel, &logits, vocab, &[row], &[], &[]);
    assert_eq!(tokens[0], 0);
    let ranked: Vec<u32> = top[..3].iter().map(|alt| alt.token).collect();
    assert_eq!(ranked, vec![0, 5, 6], "ties of equal log-probabilities go to the lower id");
}
