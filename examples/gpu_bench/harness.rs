//! The GPU measurements `tools/gpu-check` reports: the copy bandwidth that bounds every
//! memory-bound kernel, each kernel on Llama-2-7B shapes (time, GB/s or TFLOP/s), and whole-model
//! decode throughput on seeded device-side weights. Device-event timing after warm-up; inputs
//! rotate through more memory than L2 holds, so the numbers are DRAM numbers.

use kiln::backend::cuda::attention;
use kiln::backend::cuda::backend::{CudaBackend, CudaOptions, WeightSource};
use kiln::backend::cuda::device::{DeviceBuffer, Dtype, Gpu, Launch};
use kiln::backend::cuda::gemm::{self, GemmVariant};
use kiln::backend::cuda::params::SampleRow;
use kiln::backend::cuda::random::fill_random;
use kiln::backend::cuda::rope::{DevicePlan, KvGeometry};
use kiln::backend::cuda::sampling;
use kiln::backend::cuda::CudaError;
use kiln::backend::plan::{PlanLimits, StepPlan};
use kiln::backend::sampling::RowSampling;
use kiln::backend::KvLayout;
use kiln::model::ModelConfig;

/// One kernel measurement.
#[derive(Debug, Clone)]
pub struct KernelTiming {
    pub kernel: String,
    pub shape: String,
    pub ms: f64,
    /// Bytes the kernel must move at least (inputs read once, outputs written once).
    pub bytes: f64,
    /// Floating-point operations (0 for data movement).
    pub flops: f64,
}

impl KernelTiming {
    pub fn gb_per_s(&self) -> f64 {
        self.bytes / self.ms / 1e6
    }

    pub fn tflop_per_s(&self) -> f64 {
        self.flops / self.ms / 1e9
    }

    /// One JSON object per line, for tools/gpu-check.
    pub fn json(&self) -> String {
        format!(
            r#"{{"kind":"kernel","kernel":"{}","shape":"{}","ms":{:.6},"gbs":{:.1},"tflops":{:.2}}}"#,
            self.kernel,
            self.shape,
            self.ms,
            self.gb_per_s(),
            self.tflop_per_s()
        )
    }
}

/// Mean milliseconds per call of `launches` (run in order), over `reps` after `warmup` calls;
/// the median of three such means.
pub fn time_launches(gpu: &Gpu, launches: &[Launch], warmup: usize, reps: usize) -> Result<f64, CudaError> {
    for _ in 0..warmup {
        launches.iter().try_for_each(|l| gpu.launch(l))?;
    }
    gpu.synchronize()?;
    let mut means = Vec::new();
    for _ in 0..3 {
        let ms = gpu.time_ms(|| {
            for _ in 0..reps {
                launches.iter().try_for_each(|l| gpu.launch(l))?;
            }
            Ok(())
        })?;
        means.push(ms as f64 / reps as f64);
    }
    means.sort_by(f64::total_cmp);
    Ok(means[1])
}

/// Device-to-device copy bandwidth in GB/s, counting bytes read plus bytes written.
pub fn copy_bandwidth_gbs(gpu: &Gpu) -> Result<f64, CudaError> {
    let bytes = 1usize << 30;
    let src = gpu.alloc(Dtype::U8, bytes)?;
    let dst = gpu.alloc(Dtype::U8, bytes)?;
    gpu.memset(src.array(), 1)?;
    for _ in 0..3 {
        gpu.copy_device(dst.array(), src.array(), bytes)?;
    }
    let reps = 10;
    let ms = gpu.time_ms(|| (0..reps).try_for_each(|_| gpu.copy_device(dst.array(), src.array(), bytes)))?;
    Ok(2.0 * bytes as f64 * reps as f64 / ms as f64 / 1e6)
}

fn random_buffer(gpu: &Gpu, dtype: Dtype, len: usize, seed: u64) -> Result<DeviceBuffer, CudaError> {
    let buffer = gpu.alloc(dtype, len)?;
    gpu.launch(&fill_random(gpu, buffer.array(), seed, 1.0 / 64.0, 0.0)?)?;
    Ok(buffer)
}

/// Copies of a weight matrix so that rotating through them defeats the L2 cache.
fn rotation(bytes: usize) -> usize {
    (512usize << 20).div_ceil(bytes.max(1)).clamp(1, 16)
}

/// The matrix products of one Llama layer plus the head, at `m` rows: (name, n, k).
pub fn projection_shapes(config: &ModelConfig) -> Vec<(&'static str, usize, usize)> {
    let h = config.hidden_size;
    vec![
        ("qkv", config.q_dim() + 2 * config.kv_dim(), h),
        ("o_proj", h, config.q_dim()),
        ("gate_up", 2 * config.intermediate_size, h),
        ("down", h, config.intermediate_size),
        ("lm_head", config.vocab_size, h),
    ]
}

/// GEMV / GEMM timings at `m` rows for every projection shape of `config`.
pub fn bench_gemm(
    gpu: &Gpu,
    config: &ModelConfig,
    dtype: Dtype,
    m: usize,
    variant: GemmVariant,
) -> Result<Vec<KernelTiming>, CudaError> {
    let kernels = gemm::kernels(gpu, dtype)?;
    let mut out = Vec::new();
    for (name, n, k) in projection_shapes(config) {
        let copies = rotation(n * k * 2);
        let weights: Vec<DeviceBuffer> =
            (0..copies).map(|i| random_buffer(gpu, dtype, n * k, 10 + i as u64)).collect::<Result<_, _>>()?;
        let x = random_buffer(gpu, dtype, m * k, 1)?;
        let y = gpu.alloc(dtype, m * n)?;
        let launches: Vec<Launch> = weights
            .iter()
            .map(|w| gemm::gemm(&kernels, variant, x.array(), w.array(), y.array(), m, n, k, false))
            .collect::<Result<_, _>>()?;
        let ms = time_launches(gpu, &launches, 3, 20)? / copies as f64;
        let chosen = if variant == GemmVariant::Auto { kernels.choose(m, n) } else { variant };
        out.push(KernelTiming {
            kernel: format!("{chosen:?}").to_lowercase(),
            shape: format!("{name} m={m} n={n} k={k}"),
            ms,
            bytes: ((n * k + m * k + m * n) * 2) as f64,
            flops: 2.0 * (m * n * k) as f64,
        });
    }
    Ok(out)
}

/// Decode attention over `context` cached tokens for `batch` sequences (Llama-2-7B heads).
pub fn bench_attention_decode(
    gpu: &Gpu,
    config: &ModelConfig,
    dtype: Dtype,
    batch: usize,
    context: usize,
) -> Result<KernelTiming, CudaError> {
    let block_size = 16;
    let blocks_per_seq = context.div_ceil(block_size);
    let g = KvGeometry {
        num_heads: config.num_heads,
        num_kv_heads: config.num_kv_heads,
        head_dim: config.head_dim,
        block_size,
        num_blocks: batch * blocks_per_seq,
        max_blocks_per_seq: blocks_per_seq,
    };
    let kernels = attention::kernels(gpu, dtype, config.head_dim)?;
    let k_cache = random_buffer(gpu, dtype, g.cache_len(), 2)?;
    let v_cache = random_buffer(gpu, dtype, g.cache_len(), 3)?;
    let q = random_buffer(gpu, dtype, batch * config.q_dim(), 4)?;
    let out = gpu.alloc(dtype, batch * config.q_dim())?;
    let plan = bench_plan(gpu, batch, context, blocks_per_seq)?;
    let splits = attention::decode_splits(batch, config.num_heads, gpu.info.multiprocessors);
    let partial = gpu.alloc(Dtype::F32, attention::partial_len(splits, batch, config.num_heads, config.head_dim))?;
    let launches = attention::decode(
        &kernels,
        g,
        q.array(),
        k_cache.array(),
        v_cache.array(),
        out.array(),
        partial.array(),
        &plan.0,
        batch,
        splits,
        None,
    )?;
    let ms = time_launches(gpu, &launches, 3, 20)?;
    Ok(KernelTiming {
        kernel: "attention_decode".into(),
        shape: format!("batch={batch} context={context} heads={} splits={splits}", config.num_heads),
        ms,
        bytes: (2 * batch * context * config.kv_dim() * 2) as f64,
        flops: (4 * batch * context * config.q_dim()) as f64,
    })
}

/// The elementwise and normalisation kernels and the prefill attention over `tokens` tokens
/// (one sequence) of `config`'s shapes.
pub fn bench_small_kernels(
    gpu: &Gpu,
    config: &ModelConfig,
    dtype: Dtype,
    tokens: usize,
) -> Result<Vec<KernelTiming>, CudaError> {
    use kiln::backend::cuda::{embedding, rmsnorm, rope, silu_mul};
    let (h, ffn, q_dim, kv_dim) = (config.hidden_size, config.intermediate_size, config.q_dim(), config.kv_dim());
    let t = dtype.size_bytes();
    let mut out = Vec::new();
    let mut record = |kernel: &str, launches: &[Launch], bytes: usize, flops: f64| -> Result<(), CudaError> {
        let ms = time_launches(gpu, launches, 3, 20)?;
        out.push(KernelTiming {
            kernel: kernel.into(),
            shape: format!("tokens={tokens}"),
            ms,
            bytes: bytes as f64,
            flops,
        });
        Ok(())
    };

    let residual = random_buffer(gpu, Dtype::F32, tokens * h, 20)?;
    let delta = random_buffer(gpu, Dtype::F32, tokens * h, 21)?;
    let weight = random_buffer(gpu, Dtype::F32, h, 22)?;
    let normed = gpu.alloc(dtype, tokens * h)?;
    let launch = rmsnorm::rmsnorm_residual(
        &rmsnorm::kernel(gpu, dtype)?,
        residual.array(),
        Some(delta.array()),
        weight.array(),
        normed.array(),
        None,
        tokens,
        1e-5,
    )?;
    record("rmsnorm_residual", &[launch], tokens * h * (4 + 4 + 4 + t), 0.0)?;

    let gate_up = random_buffer(gpu, dtype, tokens * 2 * ffn, 23)?;
    let act = gpu.alloc(dtype, tokens * ffn)?;
    let launch = silu_mul::silu_mul(&silu_mul::kernel(gpu, dtype)?, gate_up.array(), act.array(), tokens, ffn)?;
    record("silu_mul", &[launch], tokens * ffn * 3 * t, 0.0)?;

    let table = random_buffer(gpu, dtype, config.vocab_size * h, 24)?;
    let block_size = 16;
    let blocks = tokens.div_ceil(block_size);
    let (plan, _plan_owner) = prefill_plan(gpu, tokens, blocks, config.vocab_size)?;
    let hidden = gpu.alloc(Dtype::F32, tokens * h)?;
    let launch = embedding::embedding(
        &embedding::kernel(gpu, dtype)?,
        table.array(),
        h,
        plan.token_ids,
        hidden.array(),
        tokens,
    )?;
    record("embedding", &[launch], tokens * h * (t + 4), 0.0)?;

    let g = KvGeometry {
        num_heads: config.num_heads,
        num_kv_heads: config.num_kv_heads,
        head_dim: config.head_dim,
        block_size,
        num_blocks: blocks,
        max_blocks_per_seq: blocks,
    };
    let qkv = random_buffer(gpu, dtype, tokens * (q_dim + 2 * kv_dim), 25)?;
    let q = gpu.alloc(dtype, tokens * q_dim)?;
    let k_cache = gpu.alloc(dtype, g.cache_len())?;
    let v_cache = gpu.alloc(dtype, g.cache_len())?;
    let inv_freq = gpu.upload_f32(&kiln::ops::rope::rope_inv_freq(config))?;
    let launch = rope::rope_kv_write(
        &rope::kernel(gpu, dtype)?,
        g,
        qkv.array(),
        q.array(),
        k_cache.array(),
        v_cache.array(),
        inv_freq.array(),
        &plan,
        tokens,
    )?;
    record("rope_kv_write", &[launch], tokens * (q_dim + 2 * kv_dim) * 2 * t, 0.0)?;

    let attn = gpu.alloc(dtype, tokens * q_dim)?;
    let kernels = attention::kernels(gpu, dtype, config.head_dim)?;
    let launch = attention::prefill(
        &kernels,
        g,
        q.array(),
        k_cache.array(),
        v_cache.array(),
        attn.array(),
        &plan,
        tokens,
        1,
        tokens,
        None,
    )?;
    // Causal: half of the tokens × tokens score matrix, two products (QKᵀ and PV) per head.
    let flops = 2.0 * 2.0 * (tokens * tokens / 2) as f64 * (config.head_dim * config.num_heads) as f64;
    record("attention_prefill", &[launch], tokens * (2 * q_dim + 2 * kv_dim) * t, flops)?;
    Ok(out)
}

/// A device plan of one sequence of `tokens` tokens from position 0 (prefill).
fn prefill_plan(
    gpu: &Gpu,
    tokens: usize,
    blocks: usize,
    vocab: usize,
) -> Result<(DevicePlan, DeviceBuffer), CudaError> {
    upload_plan(
        gpu,
        [
            &(0..tokens as u32).map(|i| (i * 7919) % vocab as u32).collect::<Vec<_>>(),
            &(0..tokens as u32).collect::<Vec<_>>(),
            &vec![0; tokens],
            &[0],
            &[tokens as u32],
            &(0..blocks as u32).collect::<Vec<_>>(),
            &[tokens as u32 - 1],
        ],
    )
}

/// A device plan of `batch` sequences, each one token at position `context - 1`, with distinct
/// blocks; the owner buffer comes along.
fn bench_plan(
    gpu: &Gpu,
    batch: usize,
    context: usize,
    blocks_per_seq: usize,
) -> Result<(DevicePlan, DeviceBuffer), CudaError> {
    let sequences: Vec<u32> = (0..batch as u32).collect();
    upload_plan(
        gpu,
        [
            &vec![1; batch],
            &vec![(context - 1) as u32; batch],
            &sequences,
            &sequences,
            &vec![1; batch],
            &(0..(batch * blocks_per_seq) as u32).collect::<Vec<_>>(),
            &sequences,
        ],
    )
}

/// Uploads a plan's arrays (token ids, positions, token sequence, sequence token starts and
/// counts, block tables, logit tokens) into one buffer, each 16-byte aligned, and views them.
fn upload_plan(gpu: &Gpu, arrays: [&[u32]; 7]) -> Result<(DevicePlan, DeviceBuffer), CudaError> {
    let mut words: Vec<u32> = Vec::new();
    let mut at = [(0, 0); 7];
    for (slot, values) in at.iter_mut().zip(arrays) {
        *slot = (words.len(), values.len());
        words.extend_from_slice(values);
        words.resize(words.len().div_ceil(4) * 4, 0);
    }
    let buffer = gpu.upload_u32(&words)?;
    let a = buffer.array();
    let view = |(start, len): (usize, usize)| a.slice(start, len);
    let plan = DevicePlan {
        token_ids: view(at[0]),
        positions: view(at[1]),
        token_seq: view(at[2]),
        seq_token_start: view(at[3]),
        seq_token_count: view(at[4]),
        block_tables: view(at[5]),
        logit_tokens: view(at[6]),
    };
    Ok((plan, buffer))
}

/// The sampling kernel over `rows` rows of `vocab` logits, greedy or with top-p.
pub fn bench_sampling(
    gpu: &Gpu,
    rows: usize,
    vocab: usize,
    params: &RowSampling,
    label: &str,
) -> Result<KernelTiming, CudaError> {
    let logits = random_buffer(gpu, Dtype::F32, rows * vocab, 5)?;
    let row: Vec<SampleRow> = (0..rows).map(|_| SampleRow::from(params)).collect();
    let row_bytes = gpu.upload_bytes(Dtype::U8, rows * std::mem::size_of::<SampleRow>(), bytemuck::cast_slice(&row))?;
    let out = gpu.alloc(Dtype::U32, rows * 2 + rows * 40)?;
    let weights = gpu.alloc(Dtype::F64, rows * vocab)?;
    let penalties = gpu.alloc(Dtype::U8, 16)?;
    let mask = gpu.alloc(Dtype::U32, 1)?;
    let o = out.array();
    let buffers = sampling::SampleBuffers {
        rows: row_bytes.array(),
        penalties: penalties.array(),
        mask: mask.array(),
        tokens_out: o.slice(0, rows),
        logprobs_out: o.slice(rows, rows).reinterpret(Dtype::F32),
        top_out: o.slice(2 * rows, rows * 40).reinterpret(Dtype::U8),
        weights: weights.array(),
    };
    let launch = sampling::sample(&sampling::kernel(gpu)?, logits.array(), vocab, rows, &buffers)?;
    let ms = time_launches(gpu, &[launch], 2, 10)?;
    Ok(KernelTiming {
        kernel: format!("sample_{label}"),
        shape: format!("rows={rows} vocab={vocab}"),
        ms,
        bytes: (rows * vocab * 4) as f64,
        flops: 0.0,
    })
}

/// Whole-model decode throughput at one batch size.
#[derive(Debug, Clone)]
pub struct DecodeResult {
    pub batch: usize,
    pub context: usize,
    pub ms_per_step: f64,
    pub tokens_per_s: f64,
    /// Weight bytes a step must stream over the measured copy bandwidth.
    pub floor_ms: f64,
}

impl DecodeResult {
    pub fn fraction_of_floor(&self) -> f64 {
        self.floor_ms / self.ms_per_step
    }

    pub fn json(&self) -> String {
        format!(
            r#"{{"kind":"decode","batch":{},"context":{},"ms_per_step":{:.4},"tokens_per_s":{:.1},"floor_ms":{:.4},"fraction":{:.3}}}"#,
            self.batch,
            self.context,
            self.ms_per_step,
            self.tokens_per_s,
            self.floor_ms,
            self.fraction_of_floor()
        )
    }
}

/// Decode steps (forward, greedy sampling on the GPU, ids back to the host) for each batch size,
/// every sequence at `context` tokens, on seeded weights generated on the device; `copy_gbs` is
/// the measured bandwidth that defines the floor. One backend serves all batches (sized for the
/// largest), as a server would.
pub fn decode_benchmark(
    config: &ModelConfig,
    dtype: Dtype,
    batches: &[usize],
    context: usize,
    steps: usize,
    copy_gbs: f64,
) -> Result<Vec<DecodeResult>, CudaError> {
    let max_batch = batches.iter().copied().max().unwrap_or(1);
    let block_size = kiln::backend::KV_BLOCK_SIZE;
    let blocks_per_seq = (context + steps + 4).div_ceil(block_size);
    let layout = KvLayout { block_size, num_blocks: max_batch * blocks_per_seq };
    let limits =
        PlanLimits { max_batch_tokens: max_batch.max(64), max_seqs: max_batch, max_blocks_per_seq: blocks_per_seq };
    let mut backend = CudaBackend::new(
        config.clone(),
        WeightSource::RandomSeed(7),
        layout,
        limits,
        CudaOptions { dtype, graphs: true },
    )?;
    let floor_ms = kiln::backend::cuda::weights::DeviceWeights::streamed_bytes(config, dtype) as f64 / copy_gbs / 1e6;
    let greedy = SampleRow::from(&RowSampling::greedy());
    let mut results = Vec::new();
    let mut plan = StepPlan::new(limits, block_size);
    for &batch in batches {
        let rows: Vec<SampleRow> = vec![greedy; batch];
        let tables: Vec<Vec<u32>> =
            (0..batch).map(|s| ((s * blocks_per_seq) as u32..((s + 1) * blocks_per_seq) as u32).collect()).collect();
        let mut tokens: Vec<u32> = vec![1; batch];
        let mut step = |position: usize, tokens: &mut Vec<u32>, backend: &mut CudaBackend| -> Result<(), CudaError> {
            plan.clear();
            for (s, table) in tables.iter().enumerate() {
                plan.push_sequence(&[tokens[s]], position, table, true).map_err(|e| CudaError::Shape(e.to_string()))?;
            }
            let out = backend.execute_and_sample_rows(&plan, &rows, &[], &[])?;
            tokens.copy_from_slice(out.tokens);
            Ok(())
        };
        // Warm-up captures this bucket's graph.
        for i in 0..3 {
            step(context + i, &mut tokens, &mut backend)?;
        }
        let start = std::time::Instant::now();
        for i in 0..steps {
            step(context + 3 + i, &mut tokens, &mut backend)?;
        }
        let ms_per_step = start.elapsed().as_secs_f64() * 1e3 / steps as f64;
        results.push(DecodeResult {
            batch,
            context,
            ms_per_step,
            tokens_per_s: batch as f64 * 1e3 / ms_per_step,
            floor_ms,
        });
    }
    Ok(results)
}

/// Whole-model prefill throughput for one prompt length.
#[derive(Debug, Clone)]
pub struct PrefillResult {
    pub tokens: usize,
    pub ms: f64,
    pub tokens_per_s: f64,
    /// Matrix-product TFLOP/s (2 × parameters × tokens, attention not counted).
    pub tflops: f64,
}

impl PrefillResult {
    pub fn json(&self) -> String {
        format!(
            r#"{{"kind":"prefill","tokens":{},"ms":{:.3},"tokens_per_s":{:.0},"tflops":{:.1}}}"#,
            self.tokens, self.ms, self.tokens_per_s, self.tflops
        )
    }
}

/// Prefill of one prompt of each length (one step each, logits of the last token back to the
/// host), on seeded device-side weights; the median of five runs after a warm-up.
pub fn prefill_benchmark(
    config: &ModelConfig,
    dtype: Dtype,
    lengths: &[usize],
) -> Result<Vec<PrefillResult>, CudaError> {
    let max_len = lengths.iter().copied().max().unwrap_or(1);
    let block_size = kiln::backend::KV_BLOCK_SIZE;
    let blocks_per_seq = max_len.div_ceil(block_size);
    let layout = KvLayout { block_size, num_blocks: blocks_per_seq };
    let limits = PlanLimits { max_batch_tokens: max_len, max_seqs: 1, max_blocks_per_seq: blocks_per_seq };
    let mut backend = CudaBackend::new(
        config.clone(),
        WeightSource::RandomSeed(7),
        layout,
        limits,
        CudaOptions { dtype, graphs: true },
    )?;
    let table: Vec<u32> = (0..blocks_per_seq as u32).collect();
    let mut logits = vec![0.0f32; config.vocab_size];
    let mut plan = StepPlan::new(limits, block_size);
    // Per prompt token: every layer's projections (the embedding is a gather, the head runs once).
    let embeddings = if config.tie_word_embeddings { 1 } else { 2 } * config.vocab_size * config.hidden_size;
    let matmul_flops = 2.0 * (config.num_parameters() - embeddings) as f64;
    let mut results = Vec::new();
    for &len in lengths {
        let prompt: Vec<u32> = (0..len as u32).map(|i| (i * 7919) % config.vocab_size as u32).collect();
        plan.clear();
        plan.push_sequence(&prompt, 0, &table, true).map_err(|e| CudaError::Shape(e.to_string()))?;
        let mut times = Vec::new();
        for run in 0..6 {
            let start = std::time::Instant::now();
            kiln::backend::Backend::execute(&mut backend, &plan, &mut logits)
                .map_err(|e| CudaError::Shape(e.to_string()))?;
            if run > 0 {
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        times.sort_by(f64::total_cmp);
        let ms = times[times.len() / 2];
        results.push(PrefillResult {
            tokens: len,
            ms,
            tokens_per_s: len as f64 * 1e3 / ms,
            tflops: matmul_flops * len as f64 / ms / 1e9,
        });
    }
    Ok(results)
}

/// Model geometries benchmarks can name instead of a model directory.
pub fn geometry(name: &str) -> Option<ModelConfig> {
    let (hidden, ffn, layers, heads, kv_heads, vocab, theta) = match name {
        "llama2-7b" => (4096, 11008, 32, 32, 32, 32000, 10_000.0),
        "llama2-13b" => (5120, 13824, 40, 40, 40, 32000, 10_000.0),
        "llama2-70b" => (8192, 28672, 80, 64, 8, 32000, 10_000.0),
        "llama3-8b" => (4096, 14336, 32, 32, 8, 128_256, 500_000.0),
        _ => return None,
    };
    let json = format!(
        r#"{{"architectures":["LlamaForCausalLM"],"hidden_size":{hidden},"intermediate_size":{ffn},"num_hidden_layers":{layers},
        "num_attention_heads":{heads},"num_key_value_heads":{kv_heads},"vocab_size":{vocab},"rms_norm_eps":1e-5,
        "max_position_embeddings":4096,"rope_theta":{theta:.1}}}"#
    );
    Some(ModelConfig::from_json(&json, std::path::Path::new(name)).expect("built-in geometries are valid"))
}
