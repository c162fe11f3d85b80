//! The `kiln` command line: parses arguments and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use kiln::cli::load::BackendChoice;
use kiln::engine::sampler::SamplingParams;

#[derive(Parser)]
#[command(name = "kiln", version, about = "A kernel-first LLM inference server for Llama-family models")]
struct Cli {
    /// Worker threads for the CPU backend (default: every core).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Which backend runs the model: CUDA when built with it and a GPU is present (auto), or one
    /// named explicitly.
    #[arg(long, global = true, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// Run the default model from its original Q4_1 GGUF, quantized, instead of its f16 directory
    /// (a `--model FILE.gguf` always runs from the file's own weights on the CPU).
    #[arg(long, global = true)]
    original_weights: bool,
    /// Split the model over N tensor-parallel ranks (attention heads, KV heads and the MLP divided
    /// N ways; N must divide them). On the CPU the ranks are threads; on GPUs one rank per GPU.
    #[arg(long, global = true, default_value_t = 1, value_name = "N")]
    tensor_parallel: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch the default model (SmolLM2-135M-Instruct) into $KILN_HOME and print its directory.
    Pull,
    /// Serve the OpenAI-compatible and native HTTP APIs.
    Serve(ServeOptions),
    /// Measure prefill and decode speed and peak memory of a model on this machine (CPU backend).
    Bench(kiln::cli::bench::BenchArgs),
    /// Generate text from a prompt; only the generated text goes to stdout.
    Generate {
        /// A Hugging Face model directory or a GGUF file (default: the default model, pulled if needed).
        #[arg(long)]
        model: Option<PathBuf>,
        /// The text to continue, or with --chat the user's message.
        #[arg(long)]
        prompt: String,
        /// Send the prompt as one user message through the model's chat template.
        #[arg(long)]
        chat: bool,
        /// A system message (with --chat).
        #[arg(long, requires = "chat")]
        system: Option<String>,
        #[arg(long, default_value_t = 256)]
        max_tokens: usize,
        /// 0 means greedy decoding.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        /// 0 means no top-k cut.
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        #[arg(long, default_value_t = 1.0)]
        repetition_penalty: f32,
        /// Seed for sampled decoding (same seed, same text).
        #[arg(long)]
        seed: Option<u64>,
        /// Text that ends the answer and is not printed (repeatable), as the API's `stop`.
        #[arg(long)]
        stop: Vec<String>,
    },
}

#[derive(clap::Args)]
struct ServeOptions {
    /// A Hugging Face model directory or a GGUF file (default: the default model, pulled if needed).
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// An accepted API key (repeatable); with none, the API is open.
    #[arg(long = "api-key")]
    api_keys: Vec<String>,
    /// A file of accepted API keys, one per line.
    #[arg(long)]
    api_keys_file: Option<PathBuf>,
    /// The model id clients use (default: the model directory's name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// An internal destination webhooks may reach (repeatable): a host, host:port, address or CIDR
    /// range. Public addresses need none; loopback, private, link-local and unique-local ones do.
    #[arg(long = "webhook-allow")]
    webhook_allow: Vec<String>,
    /// KV cache size in GiB (default: 1 on the CPU, most of the free memory on a GPU).
    #[arg(long)]
    kv_memory: Option<f64>,
    /// Most tokens computed in one step (prefill chunks and decodes together).
    #[arg(long, default_value_t = 512)]
    max_batch_tokens: usize,
    /// Most sequences in one step.
    #[arg(long, default_value_t = 16)]
    max_seqs: usize,
    /// Most prompt tokens of one sequence per step, so decoding users keep getting tokens.
    #[arg(long, default_value_t = 256)]
    max_prefill_chunk: usize,
    /// Requests that may wait for a place; beyond it clients get 429.
    #[arg(long, default_value_t = 256)]
    max_waiting: usize,
    #[arg(long, default_value_t = 1000)]
    max_connections: usize,
    /// Recompute every prompt instead of reusing the KV blocks of repeated prefixes.
    #[arg(long)]
    no_prefix_caching: bool,
    /// Sample tokens on the CPU from logits read back, even on a GPU that samples them itself
    /// (for debugging the GPU sampler; slower).
    #[arg(long)]
    host_sampling: bool,
    /// Default per-key limit of requests per minute (a keys-file line may set its own: rpm=N).
    #[arg(long)]
    key_rpm: Option<u64>,
    /// Default per-key limit of tokens per minute, prompt and generated (keys file: tpm=N).
    #[arg(long)]
    key_tpm: Option<u64>,
    /// Default per-key limit of requests running at once (keys file: concurrent=N).
    #[arg(long)]
    key_concurrent: Option<usize>,
    /// Seconds running requests may take to finish after SIGTERM; then they are cut with an error.
    #[arg(long, default_value_t = 30.0)]
    shutdown_timeout: f64,
    /// Seconds a response write may stall (a client not reading) before the request is cut.
    #[arg(long, default_value_t = 30.0)]
    write_timeout: f64,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, default_value_t = 32 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Seconds the engine may spend inside one step before /health/live answers 503.
    #[arg(long, default_value_t = 120.0)]
    liveness_timeout: f64,
    /// How the model writes tool calls: hermes (<tool_call> JSON, SmolLM2 and Qwen2) or
    /// llama3_json (Llama 3.1). Default: read from the chat template; hermes when it has none.
    #[arg(long)]
    tool_call_parser: Option<String>,
    /// USD per million prompt tokens.
    #[arg(long, default_value_t = 0.64)]
    price_input: f64,
    /// USD per million generated tokens.
    #[arg(long, default_value_t = 0.80)]
    price_output: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    kiln::cli::init_logging();
    let result = kiln::cli::init_threads(cli.threads)
        .and_then(|_| run(cli.command, cli.backend, cli.original_weights, cli.tensor_parallel));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kiln: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command, backend: BackendChoice, original_weights: bool, tensor_parallel: usize) -> anyhow::Result<()> {
    if tensor_parallel == 0 {
        anyhow::bail!("--tensor-parallel must be at least 1");
    }
    match command {
        Command::Pull => {
            let dir = kiln::model::pull::pull_default_model()?;
            println!("{}", dir.display());
            Ok(())
        }
        Command::Serve(o) => {
            if o.kv_memory.is_some_and(|gib| !(gib > 0.0 && gib.is_finite())) {
                anyhow::bail!("--kv-memory must be a positive number of GiB");
            }
            if o.max_batch_tokens == 0 || o.max_seqs == 0 || o.max_prefill_chunk == 0 {
                anyhow::bail!("--max-batch-tokens, --max-seqs and --max-prefill-chunk must be positive");
            }
            let seconds = |flag: &str, value: f64| {
                if value > 0.0 && value.is_finite() && value < 1e9 {
                    Ok(std::time::Duration::from_secs_f64(value))
                } else {
                    Err(anyhow::anyhow!("--{flag} must be a positive number of seconds"))
                }
            };
            if o.key_rpm == Some(0) || o.key_tpm == Some(0) || o.key_concurrent == Some(0) {
                anyhow::bail!(
                    "--key-rpm, --key-tpm and --key-concurrent must be positive (leave one out for no limit)"
                );
            }
            kiln::cli::serve::run(kiln::cli::serve::ServeArgs {
                model: o.model,
                host: o.host,
                port: o.port,
                api_keys: o.api_keys,
                api_keys_file: o.api_keys_file,
                served_model_name: o.served_model_name,
                webhook_allow: o.webhook_allow,
                kv_memory_bytes: o.kv_memory.map(|gib| (gib * (1u64 << 30) as f64) as usize),
                backend,
                original_weights,
                tensor_parallel,
                max_batch_tokens: o.max_batch_tokens,
                max_seqs: o.max_seqs,
                max_prefill_chunk: o.max_prefill_chunk,
                max_waiting: o.max_waiting,
                prefix_caching: !o.no_prefix_caching,
                host_sampling: o.host_sampling,
                max_connections: o.max_connections,
                prices: kiln::server::api::pricing::Prices {
                    input_per_million_usd: o.price_input,
                    output_per_million_usd: o.price_output,
                },
                key_limits: kiln::server::rate_limit::KeyLimits {
                    requests_per_minute: o.key_rpm,
                    tokens_per_minute: o.key_tpm,
                    concurrent_requests: o.key_concurrent,
                },
                shutdown_timeout: seconds("shutdown-timeout", o.shutdown_timeout)?,
                write_timeout: seconds("write-timeout", o.write_timeout)?,
                max_body_bytes: o.max_body_bytes,
                liveness_timeout: seconds("liveness-timeout", o.liveness_timeout)?,
                tool_call_parser: o.tool_call_parser,
            })
        }
        Command::Bench(args) => {
            // The GPU has its own harness (examples/gpu_bench, run by tools/gpu-check): say so
            // rather than measure the CPU under a name that says CUDA.
            if tensor_parallel > 1 {
                anyhow::bail!("`kiln bench` measures one rank; --tensor-parallel applies to serve and generate");
            }
            if matches!(backend, BackendChoice::Cuda) {
                anyhow::bail!(
                    "`kiln bench` measures the CPU backend only; GPU kernels and decode are measured by \
                     `cargo run --release --features cuda --example gpu_bench` (tools/gpu-check runs it)"
                );
            }
            kiln::cli::bench::run(&args).map(|_| ())
        }
        Command::Generate {
            model,
            prompt,
            chat,
            system,
            max_tokens,
            temperature,
            top_p,
            top_k,
            repetition_penalty,
            seed,
            stop,
        } => {
            let checks = [
                (temperature >= 0.0 && temperature.is_finite(), "--temperature must be 0 or more"),
                (top_p > 0.0 && top_p <= 1.0, "--top-p must be in (0, 1]"),
                (repetition_penalty > 0.0 && repetition_penalty.is_finite(), "--repetition-penalty must be positive"),
            ];
            if let Some((_, message)) = checks.iter().find(|(ok, _)| !ok) {
                anyhow::bail!("{message}");
            }
            let sampling =
                SamplingParams { temperature, top_p, top_k, repetition_penalty, seed, ..SamplingParams::greedy() };
            kiln::cli::generate::run(kiln::cli::generate::GenerateArgs {
                model,
                prompt,
                chat,
                system,
                max_tokens,
                sampling,
                stop,
                backend,
                original_weights,
                tensor_parallel,
            })
        }
    }
}
