//! The `kiln` command line: parses arguments and calls the library.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "kiln", version, about = "A kernel-first LLM inference server for Llama-family models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure prefill and decode speed and peak memory of a model on this machine.
    Bench(kiln::cli::bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Bench(args) => kiln::cli::bench::run(&args).map(|_| ()),
    }
}
