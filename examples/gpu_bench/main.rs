//! GPU measurements for tools/gpu-check, one JSON object per line: the copy bandwidth, every
//! kernel on a model geometry's shapes, and decode throughput on seeded device-side weights.
//!
//!   gpu_bench kernels [--geometry llama2-7b] [--dtype f16]
//!   gpu_bench decode  [--geometry llama2-7b|DIR] [--dtype f16] [--batches 1,8,32,64] [--context 512] [--steps 32]

use clap::{Parser, Subcommand};
mod harness;

use harness::KernelTiming;
use kiln::backend::cuda::device::{Dtype, Gpu};
use kiln::backend::cuda::gemm::GemmVariant;
use kiln::backend::sampling::RowSampling;
use kiln::model::ModelConfig;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Kernels {
        #[arg(long, default_value = "llama2-7b")]
        geometry: String,
        #[arg(long, default_value = "f16")]
        dtype: String,
    },
    Decode {
        #[arg(long, default_value = "llama2-7b")]
        geometry: String,
        #[arg(long, default_value = "f16")]
        dtype: String,
        #[arg(long, value_delimiter = ',', default_value = "1,8,32,64")]
        batches: Vec<usize>,
        #[arg(long, default_value_t = 512)]
        context: usize,
        #[arg(long, default_value_t = 32)]
        steps: usize,
    },
}

fn config(geometry: &str) -> ModelConfig {
    harness::geometry(geometry)
        .or_else(|| ModelConfig::from_dir(std::path::Path::new(geometry)).ok())
        .unwrap_or_else(|| panic!("{geometry} is neither a known geometry nor a model directory"))
}

fn dtype(name: &str) -> Dtype {
    match name {
        "f16" => Dtype::F16,
        "bf16" => Dtype::Bf16,
        other => panic!("dtype {other}: use f16 or bf16"),
    }
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("gpu_bench: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    match args.command {
        Command::Kernels { geometry, dtype: d } => {
            let (config, dtype) = (config(&geometry), dtype(&d));
            let gpu = Gpu::new(0)?;
            println!(
                r#"{{"kind":"device","name":"{}","sms":{},"total_gib":{:.1}}}"#,
                gpu.info.name,
                gpu.info.multiprocessors,
                gpu.info.total_bytes as f64 / (1u64 << 30) as f64
            );
            println!(r#"{{"kind":"copy","gbs":{:.1}}}"#, harness::copy_bandwidth_gbs(&gpu)?);
            let mut timings: Vec<KernelTiming> = Vec::new();
            for m in [1, 8] {
                timings.extend(harness::bench_gemm(&gpu, &config, dtype, m, GemmVariant::Gemv)?);
            }
            for m in [32, 64] {
                timings.extend(harness::bench_gemm(&gpu, &config, dtype, m, GemmVariant::Auto)?);
            }
            for m in [512, 2048] {
                timings.extend(harness::bench_gemm(&gpu, &config, dtype, m, GemmVariant::Auto)?);
            }
            if gpu.info.wgmma {
                // The mma.sync kernel on the same shapes, to show what wgmma buys.
                timings.extend(harness::bench_gemm(&gpu, &config, dtype, 2048, GemmVariant::TensorCoreLarge)?);
            }
            timings.extend(harness::bench_small_kernels(&gpu, &config, dtype, 2048)?);
            for (batch, context) in [(1, 1024), (8, 1024), (32, 1024), (64, 512)] {
                timings.push(harness::bench_attention_decode(&gpu, &config, dtype, batch, context)?);
            }
            for rows in [1, 64] {
                timings.push(harness::bench_sampling(&gpu, rows, config.vocab_size, &RowSampling::greedy(), "greedy")?);
                let top_p =
                    RowSampling { temperature: 0.8, top_p: 0.9, top_k: 50, uniform: 0.5, ..RowSampling::greedy() };
                timings.push(harness::bench_sampling(&gpu, rows, config.vocab_size, &top_p, "top_k_top_p")?);
            }
            for t in &timings {
                println!("{}", t.json());
            }
        }
        Command::Decode { geometry, dtype: d, batches, context, steps } => {
            let (config, dtype) = (config(&geometry), dtype(&d));
            let copy_gbs = {
                let gpu = Gpu::new(0)?;
                harness::copy_bandwidth_gbs(&gpu)?
            };
            println!(r#"{{"kind":"copy","gbs":{copy_gbs:.1}}}"#);
            for result in harness::decode_benchmark(&config, dtype, &batches, context, steps, copy_gbs)? {
                println!("{}", result.json());
            }
            for result in harness::prefill_benchmark(&config, dtype, &[512, 2048])? {
                println!("{}", result.json());
            }
        }
    }
    Ok(())
}
