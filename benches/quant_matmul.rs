//! Quantized matmul speed on the default model's FFN shapes (gate/up 1536×576, down 576×1536), one
//! token (decode) and 16 (batched decode), for every block format that fits the row length: a
//! Q4_K_M file of the model has Q4_K/Q6_K down rows (k = 1536) and, since 576 is not a multiple of
//! 256, Q5_0 gate/up rows; Q4_1 is the reference 32-value format. Rounds alternate between the
//! formats so a neighbour's load spreads over all; each line is the median of its rounds. `cargo bench --bench quant_matmul [-- ROUNDS] [threads=N]`.

use std::time::Instant;

use kiln::backend::cpu::kernels::{matmul, Isa};
use kiln::model::quant::GgmlType;
use kiln::model::weights::{WeightFormat, WeightMatrix};
use kiln::testing::{random_ggml_blocks, seeded_values};

fn matrix(ggml_type: GgmlType, rows: usize, cols: usize) -> WeightMatrix {
    let format = WeightFormat::from_ggml(ggml_type).expect("kiln computes on the type");
    let blocks = random_ggml_blocks(ggml_type, rows * cols, 7);
    let row_bytes = ggml_type.row_bytes(cols).expect("cols is whole blocks");
    WeightMatrix::from_ggml_rows(format, rows, cols, |r| &blocks[r * row_bytes..(r + 1) * row_bytes])
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    // `cargo test --all-targets` runs this without `--bench`: then one quick round as a smoke test.
    let quick = !std::env::args().any(|a| a == "--bench");
    let rounds: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(if quick { 1 } else { 21 });
    let threads: usize =
        std::env::args().find_map(|a| a.strip_prefix("threads=").and_then(|n| n.parse().ok())).unwrap_or(2);
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().expect("pool");
    let isa = Isa::best();
    println!("threads {threads}, level {}, {rounds} rounds, median µs per matmul", isa.name());
    let types = [GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q4_1];
    let cases: [(usize, usize, usize); 4] = [(1536, 576, 1), (1536, 576, 16), (576, 1536, 1), (576, 1536, 16)];
    // Calls per timed sample: enough that one sample takes a few milliseconds.
    let calls = if quick { 1 } else { 100 };
    for (rows, cols, tokens) in cases {
        let weights: Vec<WeightMatrix> =
            types.iter().filter(|t| cols.is_multiple_of(t.block_size())).map(|&t| matrix(t, rows, cols)).collect();
        let x = seeded_values(3, tokens * cols);
        let mut out = vec![0f32; tokens * rows];
        let mut samples = vec![Vec::new(); weights.len()];
        for _ in 0..rounds {
            for (w, samples) in weights.iter().zip(&mut samples) {
                let start = Instant::now();
                for _ in 0..calls {
                    matmul::matmul_with(isa, &x, w, &mut out);
                }
                samples.push(start.elapsed().as_secs_f64() / calls as f64);
            }
        }
        for (w, samples) in weights.iter().zip(samples) {
            let seconds = median(samples);
            println!(
                "{:<5} {rows:>4}x{cols:<4} tokens {tokens:>2}: {:>8.1} µs  {:>6.2} GB/s of weights",
                w.format.name(),
                seconds * 1e6,
                w.size_bytes() as f64 / seconds / 1e9
            );
        }
    }
}
