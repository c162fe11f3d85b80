//! `kiln bench`: prefill and decode speed of one model on this machine, the numbers
//! benches/compare_llama_cpp.py sets beside llama.cpp's.
//!
//! Prefill is one step over a `--prompt-tokens` prompt (logits for its last token included);
//! decode is `--decode-tokens` greedy steps after a `--decode-prompt-tokens` prompt, each step
//! feeding the argmax of the previous logits. Token ids are synthetic (speed does not depend on
//! them). Times are wall-clock around `Backend::execute` and the argmax, after a short warm-up.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::backend::plan::{PlanLimits, StepPlan};
use crate::backend::Backend;
use crate::engine::json_schema::SchemaCache;
use crate::engine::request::ConstraintFactory;
use crate::launch::{cpu_backend, load_cpu_backend, load_cpu_backend_from_gguf, CpuLimits};
use crate::model::packed_quant::PackedQuant;
use crate::model::random::{random_llama_weights, random_llama_weights_quantized};
use crate::model::safetensors_dir::WeightDtype;
use crate::model::ModelConfig;
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// A Hugging Face model directory, or a .gguf file (run with its weights as stored, quantized
    /// ones included). Default: the default model's directory.
    #[arg(long, conflicts_with_all = ["model_geometry", "default_gguf"])]
    pub model: Option<PathBuf>,
    /// The default model's original GGUF (Q4_1), pulled if needed, instead of its f16 directory.
    #[arg(long, conflicts_with = "model_geometry")]
    pub default_gguf: bool,
    /// Tokens of the prefill prompt.
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: usize,
    /// Tokens generated one step at a time.
    #[arg(long, default_value_t = 128)]
    pub decode_tokens: usize,
    /// Tokens of the prompt that precedes the decode steps.
    #[arg(long, default_value_t = 8)]
    pub decode_prompt_tokens: usize,
    /// Measurements of each phase; the median is reported.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// A known model shape (with --random-weights) instead of a model from disk.
    #[arg(long, value_enum, requires = "random_weights")]
    pub model_geometry: Option<Geometry>,
    /// Seeded random weights in the --model-geometry shape (speed does not depend on values).
    #[arg(long, requires = "model_geometry")]
    pub random_weights: bool,
    /// Storage format of the random weights.
    #[arg(long, value_enum, default_value_t = RandomFormat::F16)]
    pub weights_format: RandomFormat,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Instead of one sequence: N requests at once through the serving engine (continuous
    /// batching), each `--decode-tokens` long after a `--decode-prompt-tokens` prompt, against
    /// one request alone; reports aggregate and single-request tokens/s.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// With --concurrency: run the requests again constrained by this JSON Schema (a file) and
    /// report what working out the allowed tokens costs per step. Needs the model's tokenizer
    /// (a model directory, the default model's included).
    #[arg(long, requires = "concurrency")]
    pub json_schema: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Geometry {
    #[value(name = "smollm2-135m")]
    Smollm2_135m,
    #[value(name = "tinyllama-1.1b")]
    Tinyllama1_1b,
    #[value(name = "llama2-7b")]
    Llama2_7b,
    #[value(name = "llama3-8b")]
    Llama3_8b,
}

impl Geometry {
    fn config(self) -> ModelConfig {
        // (hidden, intermediate, layers, heads, kv heads, vocab, rope theta, context, tied)
        let (h, ffn, layers, heads, kv_heads, vocab, theta, context, tied) = match self {
            Geometry::Smollm2_135m => (576, 1536, 30, 9, 3, 49152, 100000.0, 8192, true),
            Geometry::Tinyllama1_1b => (2048, 5632, 22, 32, 4, 32000, 10000.0, 2048, false),
            Geometry::Llama2_7b => (4096, 11008, 32, 32, 32, 32000, 10000.0, 4096, false),
            Geometry::Llama3_8b => (4096, 14336, 32, 32, 8, 128256, 500000.0, 8192, false),
        };
        let json = format!(
            r#"{{"architectures":["LlamaForCausalLM"],"hidden_size":{h},"intermediate_size":{ffn},
            "num_hidden_layers":{layers},"num_attention_heads":{heads},"num_key_value_heads":{kv_heads},
            "vocab_size":{vocab},"rms_norm_eps":1e-5,"rope_theta":{theta},"max_position_embeddings":{context},
            "tie_word_embeddings":{tied}}}"#
        );
        ModelConfig::from_json(&json, std::path::Path::new("built-in geometry")).expect("built-in geometries are valid")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RandomFormat {
    F32,
    F16,
    Bf16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q4_1")]
    Q4_1,
}

/// What one bench run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    pub model: String,
    pub weights_format: String,
    pub isa: String,
    pub threads: usize,
    pub load_s: f64,
    pub prefill_tokens: usize,
    pub prefill_tok_s: f64,
    pub decode_tokens: usize,
    pub decode_tok_s: f64,
    pub peak_rss_mib: Option<f64>,
}

/// Runs the benchmark and prints its report.
///
/// The thread count is the global pool's (`kiln --threads N bench`, see `cli::init_threads`).
/// Returns the single-sequence report (None for a `--concurrency` run, which prints its own).
pub fn run(args: &BenchArgs) -> anyhow::Result<Option<BenchReport>> {
    anyhow::ensure!(args.prompt_tokens > 0 && args.decode_prompt_tokens > 0, "prompts need at least one token");
    let context = args.prompt_tokens.max(args.decode_prompt_tokens + args.decode_tokens) + 16;
    // KV for exactly the benchmark's sequences (the cache is resident from start-up, so slack
    // would count in the peak memory).
    let sequences = args.concurrency.unwrap_or(1).max(1);
    let limits = CpuLimits {
        kv_memory_bytes: usize::MAX,
        kv_max_tokens: Some(sequences * context.next_multiple_of(crate::backend::KV_BLOCK_SIZE)),
        max_batch_tokens: args.prompt_tokens.max(16),
        max_seqs: sequences,
    };

    let start = Instant::now();
    let (backend, plan_limits, model) = match (&args.model, args.model_geometry) {
        (_, Some(geometry)) => {
            let config = geometry.config();
            let weights = match args.weights_format {
                RandomFormat::F32 => random_llama_weights(&config, 1, WeightDtype::F32),
                RandomFormat::F16 => random_llama_weights(&config, 1, WeightDtype::F16),
                RandomFormat::Bf16 => random_llama_weights(&config, 1, WeightDtype::Bf16),
                RandomFormat::Q8_0 => random_llama_weights_quantized(&config, 1, PackedQuant::Q8_0),
                RandomFormat::Q4_0 => random_llama_weights_quantized(&config, 1, PackedQuant::Q4_0),
                RandomFormat::Q4_1 => random_llama_weights_quantized(&config, 1, PackedQuant::Q4_1),
            };
            let (backend, plan_limits) = cpu_backend(config, weights, limits);
            let name = geometry.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default();
            (backend, plan_limits, format!("{name} geometry, random weights"))
        }
        (_, None) if args.default_gguf => {
            let path = crate::model::pull::pull_default_gguf_into(&crate::model::pull::kiln_home()?)?;
            let (backend, plan_limits) = load_cpu_backend_from_gguf(&path, limits)?;
            (backend, plan_limits, path.display().to_string())
        }
        (Some(path), None) if path.is_file() => {
            let (backend, plan_limits) = load_cpu_backend_from_gguf(path, limits)?;
            (backend, plan_limits, path.display().to_string())
        }
        (path, None) => {
            let dir = crate::model::pull::resolve_model(path.as_deref())?;
            let (backend, plan_limits) = load_cpu_backend(&dir, limits)?;
            (backend, plan_limits, dir.display().to_string())
        }
    };
    let load_s = start.elapsed().as_secs_f64();
    let weights_format = backend.weights().layers[0].gate_proj.format.name().to_string();
    let isa = backend.isa().name().to_string();
    if let Some(concurrency) = args.concurrency {
        let constraint = match &args.json_schema {
            None => None,
            Some(path) => Some(schema_constraint(path, args.model.as_deref(), args.model_geometry.is_some())?),
        };
        // Measured before the run, on the pool the run uses.
        let peak = crate::backend::cpu::kernels::peak::measure(backend.isa());
        let (report, constrained) = super::bench_concurrency::run(
            Box::new(backend),
            concurrency,
            args.decode_prompt_tokens,
            args.decode_tokens,
            plan_limits.max_batch_tokens,
            constraint,
            Some(peak),
        )?;
        if args.json {
            println!("{}", serde_json::json!({"concurrency": report, "json_schema": constrained}));
        } else {
            println!("model        {model}");
            println!(
                "weights      {weights_format} ({isa} kernels, AMX tiles {}, {} threads)",
                crate::backend::cpu::kernels::amx::describe(),
                rayon::current_num_threads()
            );
            println!(
                "single       {:>8.1} tokens/s  (one request of {} tokens)",
                report.single_tokens_per_s, report.new_tokens
            );
            println!(
                "concurrent   {:>8.1} tokens/s  ({} requests at once, {:.2}x one request)",
                report.aggregate_tokens_per_s, report.concurrency, report.speedup
            );
            println!(
                "arithmetic   {:>8.1} GFLOP/s  ({:.1}% of the measured f32 FMA peak {:.0} GFLOP/s, {:.1}% of the \
                 8-bit {} peak {:.0} GOP/s; {:.2} GFLOP per token)",
                report.aggregate_tokens_per_s * report.flops_per_token / 1e9,
                100.0 * report.share_of_f32_peak.unwrap_or(0.0),
                peak.f32_flops / 1e9,
                100.0 * report.share_of_int8_peak.unwrap_or(0.0),
                if peak.amx_int8_ops.is_some() { "AMX tile" } else { "vector dot" },
                peak.batched_int8_ops() / 1e9,
                report.flops_per_token / 1e9
            );
            if let Some(c) = constrained {
                println!(
                    "json schema  {:.3} ms of masks per step of {:.2} ms ({:.1}% of the rest of the step; \
                     first run of the schema {:.3} ms per step), {} steps, {} tokens",
                    c.mask_ms_per_step,
                    c.step_ms,
                    c.overhead * 100.0,
                    c.first_run_mask_ms_per_step,
                    c.steps,
                    c.generated_tokens
                );
            }
        }
        return Ok(None);
    }
    let mut bench = Bench::new(Box::new(backend), plan_limits);

    // Warm-up: touches every weight page and wakes the pool.
    bench.prefill(16);
    bench.decode(4, 4);
    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    for _ in 0..args.runs.max(1) {
        prefill.push(args.prompt_tokens as f64 / bench.prefill(args.prompt_tokens));
        decode.push(args.decode_tokens as f64 / bench.decode(args.decode_prompt_tokens, args.decode_tokens));
    }
    let report = BenchReport {
        model,
        weights_format,
        isa,
        threads: rayon::current_num_threads(),
        load_s,
        prefill_tokens: args.prompt_tokens,
        prefill_tok_s: median(&mut prefill),
        decode_tokens: args.decode_tokens,
        decode_tok_s: median(&mut decode),
        peak_rss_mib: peak_rss_mib(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(Some(report))
}

/// The constraint of the JSON Schema in `path`, over the tokenizer of the model directory.
fn schema_constraint(
    path: &std::path::Path,
    model: Option<&std::path::Path>,
    random_geometry: bool,
) -> anyhow::Result<ConstraintFactory> {
    anyhow::ensure!(
        !random_geometry && !model.is_some_and(|m| m.is_file()),
        "--json-schema needs a tokenizer: use a model directory (or the default model), not random weights or a GGUF file"
    );
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let schema: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let dir = crate::model::pull::resolve_model(model)?;
    let tokenizer = Tokenizer::from_dir(&dir).with_context(|| format!("loading the tokenizer of {}", dir.display()))?;
    let schemas = SchemaCache::for_tokenizer(&tokenizer);
    schemas.json_schema(&schema).with_context(|| format!("the schema in {}", path.display()))
}

fn print_table(r: &BenchReport) {
    println!("model        {}", r.model);
    println!("weights      {} ({} kernels, {} threads)", r.weights_format, r.isa, r.threads);
    println!("load         {:.2} s", r.load_s);
    println!("prefill      {:>8.1} tokens/s  ({} tokens in one step)", r.prefill_tok_s, r.prefill_tokens);
    println!(
        "decode       {:>8.1} tokens/s  ({} tokens, {:.2} ms per token)",
        r.decode_tok_s,
        r.decode_tokens,
        1000.0 / r.decode_tok_s
    );
    match r.peak_rss_mib {
        Some(mib) => println!("peak memory  {mib:.1} MiB resident"),
        None => println!("peak memory  unknown on this platform"),
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// The process's peak resident set (Linux `VmHWM`).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// One sequence driven step by step through a backend, with all buffers made up front.
struct Bench {
    backend: Box<dyn Backend>,
    plan: StepPlan,
    blocks: Vec<u32>,
    logits: Vec<f32>,
    vocab: usize,
}

impl Bench {
    fn new(backend: Box<dyn Backend>, limits: PlanLimits) -> Bench {
        let vocab = backend.config().vocab_size;
        let plan = StepPlan::new(limits, backend.kv_layout().block_size);
        let blocks = (0..limits.max_blocks_per_seq as u32).collect();
        Bench { backend, plan, blocks, logits: vec![0.0; vocab], vocab }
    }

    fn prompt(&self, len: usize) -> Vec<u32> {
        // Spread over the vocabulary, clear of the special tokens at the start.
        (0..len).map(|i| (17 + (i * 7919) % (self.vocab - 17)) as u32).collect()
    }

    fn step(&mut self, tokens: &[u32], position: usize) -> u32 {
        self.plan.clear();
        self.plan
            .push_sequence(tokens, position, &self.blocks, true)
            .expect("the bench sized its plan for its prompts");
        self.backend.execute(&self.plan, &mut self.logits).expect("the bench's plans fit its backend");
        let (argmax, _) =
            self.logits
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best });
        argmax as u32
    }

    /// Seconds for one prefill step of `len` tokens.
    fn prefill(&mut self, len: usize) -> f64 {
        let prompt = self.prompt(len);
        let start = Instant::now();
        self.step(&prompt, 0);
        start.elapsed().as_secs_f64()
    }

    /// Seconds for `steps` decode steps after a prompt of `prompt_len` tokens.
    fn decode(&mut self, prompt_len: usize, steps: usize) -> f64 {
        let prompt = self.prompt(prompt_len);
        let mut token = self.step(&prompt, 0);
        let start = Instant::now();
        for i in 0..steps {
            token = self.step(&[token], prompt_len + i);
        }
        start.elapsed().as_secs_f64()
    }
}
