//! Speed of the CPU kernels on the default model's shapes: GB/s of weights streamed in decode
//! (one token), GFLOP/s for a batched decode step (16 tokens) and in prefill (512 tokens), per weight format, for the detected level and
//! optionally the portable one. `cargo bench --bench cpu_kernels [-- THREADS] [portable]`.

use std::time::Instant;

use half::f16;
use kiln::backend::cpu::kernels::{matmul, Isa};
use kiln::model::packed_quant::PackedQuant;
use kiln::model::weights::WeightMatrix;
use kiln::testing::seeded_values;

fn matrix(format: &str, m: usize, k: usize) -> WeightMatrix {
    let values = seeded_values(7, m * k);
    match format {
        "f16" => WeightMatrix::from_f16(m, k, values.into_iter().map(f16::from_f32).collect()),
        "q8_0" => WeightMatrix::quantized_from_f32(PackedQuant::Q8_0, m, k, &values),
        "q4_1" => WeightMatrix::quantized_from_f32(PackedQuant::Q4_1, m, k, &values),
        _ => unreachable!(),
    }
}

/// Best of `reps` timings of `f`, in seconds.
fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    // `cargo test --all-targets` runs this without `--bench`: then one quick pass as a smoke test.
    let quick = !std::env::args().any(|a| a == "--bench");
    let threads: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(1);
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().expect("pool");
    println!("threads {threads}, best level {}", Isa::best().name());
    // (name, rows, cols): the model's projections, and the tied lm_head.
    let shapes = [("gate/up", 1536, 576), ("down", 576, 1536), ("q/o", 576, 576), ("lm_head", 49152, 576)];
    let portable = std::env::args().any(|a| a == "portable");
    // `format=q4_1` measures one format only (with more repetitions, for profiling).
    let only = std::env::args().find_map(|a| a.strip_prefix("format=").map(str::to_string));
    let decode_reps = if quick {
        1
    } else if only.is_some() {
        20_000
    } else {
        50
    };
    let prefill_reps = if quick { 1 } else { 3 };
    let levels = if portable { vec![Isa::best(), Isa::Portable] } else { vec![Isa::best()] };
    for isa in levels {
        for format in ["f16", "q8_0", "q4_1"] {
            if only.as_deref().is_some_and(|f| f != format) {
                continue;
            }
            for &(name, m, k) in shapes.iter().filter(|(name, ..)| !quick || *name == "q/o") {
                let w = matrix(format, m, k);
                let x = seeded_values(3, 512 * k);
                let mut out = vec![0f32; 512 * m];
                let decode =
                    best_of(decode_reps, || rayon::scope(|_| matmul::matmul_with(isa, &x[..k], &w, &mut out[..m])));
                let gbs = w.size_bytes() as f64 / decode / 1e9;
                // Batched decode: 16 sequences, one token each (the concurrency benchmark's step).
                let batch = best_of(decode_reps, || {
                    rayon::scope(|_| matmul::matmul_with(isa, &x[..16 * k], &w, &mut out[..16 * m]))
                });
                let batch_gflops = 2.0 * 16.0 * (m * k) as f64 / batch / 1e9;
                // The same from memory: as in a real step, the weights were last touched a whole
                // forward pass ago, so cycle through copies that together overflow the caches.
                let copies: Vec<WeightMatrix> =
                    (0..(96 << 20) / w.size_bytes().max(1)).map(|_| matrix(format, m, k)).collect();
                let cold = if copies.len() < 2 {
                    batch
                } else {
                    let mut next = 0;
                    best_of(decode_reps.min(copies.len() - 1), || {
                        next = (next + 1) % copies.len();
                        rayon::scope(|_| matmul::matmul_with(isa, &x[..16 * k], &copies[next], &mut out[..16 * m]))
                    })
                };
                let cold_gflops = 2.0 * 16.0 * (m * k) as f64 / cold / 1e9;
                let line = format!(
                    "{:<8} {:<5} {:<8} decode {:>7.1} us {:>6.1} GB/s   batch(16) {:>7.1} us {:>6.1} GFLOP/s, cold {:>6.1}",
                    isa.name(),
                    format,
                    name,
                    decode * 1e6,
                    gbs,
                    batch * 1e6,
                    batch_gflops,
                    cold_gflops
                );
                if name == "lm_head" {
                    println!("{line}");
                    continue;
                }
                let prefill = best_of(prefill_reps, || rayon::scope(|_| matmul::matmul_with(isa, &x, &w, &mut out)));
                let gflops = 2.0 * 512.0 * (m * k) as f64 / prefill / 1e9;
                println!("{line}   prefill(512) {:>7.2} ms {:>6.1} GFLOP/s", prefill * 1e3, gflops);
            }
        }
    }
}
