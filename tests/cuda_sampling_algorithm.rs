//! The kernel's algorithm (sort keys, radix searches over counts and probability mass) written
//! sequentially in Rust and checked against the CPU Sampler without a GPU, ties included: it
//! proves the method; tests/cuda_kernels.rs checks the kernel itself against the Sampler.
#![cfg(feature = "cuda")]

mod sampling_support;

use kiln::backend::cuda::params::{PenaltyEntry, SampleRow, KILN_NONE, MAX_TOP_LOGPROBS};
use kiln::backend::sampling::{HistoryEntry, RowSampling};
use kiln::engine::rng::Rng;
use kiln::engine::sampler::{Sampler, SamplingParams};
use kiln::testing::{seeded_values, test_seed};
use sampling_support::{logit_bias, penalty_entries, sample_row};

fn sort_key(logit: f32, id: u32) -> u64 {
    let bits = logit.to_bits();
    let ordered = if bits & 0x8000_0000 != 0 { !bits } else { bits | 0x8000_0000 };
    ((ordered as u64) << 32) | (u32::MAX - id) as u64
}

fn key_token(key: u64) -> u32 {
    u32::MAX - (key & 0xFFFF_FFFF) as u32
}

/// The key where the running total of `weight` (in descending key order) first reaches
/// `target` (strict: exceeds it), found digit by digit as the kernel does; 0 when never.
fn radix_search(keys: &[u64], weight: &[f64], target: f64, strict: bool) -> u64 {
    let (mut prefix, mut mask, mut above) = (0u64, 0u64, 0.0f64);
    for shift in (0..8).rev().map(|d| d * 8) {
        let mut hist = [0.0f64; 256];
        for (&key, &w) in keys.iter().zip(weight) {
            if w > 0.0 && key & mask == prefix {
                hist[((key >> shift) & 255) as usize] += w;
            }
        }
        let mut running = above;
        let mut chosen = None;
        for b in (0..256).rev() {
            let next = running + hist[b];
            if hist[b] > 0.0 && (if strict { next > target } else { next >= target }) {
                chosen = Some(b as u64);
                break;
            }
            running = next;
        }
        let Some(b) = chosen else { return 0 };
        above = running;
        prefix |= b << shift;
        mask |= 255 << shift;
    }
    prefix
}

/// sample_f32's steps 2 to 4 for one row: bias and penalties, mask, greedy or a draw.
fn sample_like_kernel(logits: &mut [f32], row: &SampleRow, entries: &[PenaltyEntry], mask: Option<&[u32]>) -> u32 {
    for e in entries {
        let mut l = logits[e.token as usize];
        if e.bias != 0.0 {
            l += e.bias;
        }
        if row.repetition_penalty != 1.0 && e.seen != 0 {
            l = if l > 0.0 { l / row.repetition_penalty } else { l * row.repetition_penalty };
        }
        if (row.presence_penalty != 0.0 || row.frequency_penalty != 0.0) && e.generated_count > 0 {
            l -= row.presence_penalty + row.frequency_penalty * e.generated_count as f32;
        }
        logits[e.token as usize] = l;
    }
    if let Some(mask) = mask {
        for (i, l) in logits.iter_mut().enumerate() {
            if (mask[i / 32] >> (i % 32)) & 1 == 0 {
                *l = f32::NEG_INFINITY;
            }
        }
    }
    let best = (0..logits.len())
        .map(|i| sort_key(if logits[i].is_nan() { f32::NEG_INFINITY } else { logits[i] }, i as u32))
        .max()
        .unwrap();
    let candidates = logits.iter().filter(|l| l.is_finite()).count();
    if row.temperature == 0.0 || row.top_k == 1 || candidates == 0 {
        return key_token(best);
    }
    let inverse_temperature = 1.0 / row.temperature;
    let scaled: Vec<f32> = logits.iter().map(|l| l * inverse_temperature).collect();
    let keys: Vec<u64> = scaled.iter().enumerate().map(|(i, &s)| sort_key(s, i as u32)).collect();
    let finite: Vec<bool> = logits.iter().map(|l| l.is_finite()).collect();
    let top_key = keys.iter().zip(&finite).filter(|(_, &f)| f).map(|(&k, _)| k).max().unwrap();
    let max_scaled = scaled[key_token(top_key) as usize];
    let mut k_key = 0;
    if row.top_k > 0 && (row.top_k as usize) < candidates {
        let counts: Vec<f64> = finite.iter().map(|&f| if f { 1.0 } else { 0.0 }).collect();
        k_key = radix_search(&keys, &counts, row.top_k as f64, false);
    }
    let mut weights: Vec<f64> = (0..logits.len())
        .map(|i| if finite[i] && keys[i] >= k_key { ((scaled[i] - max_scaled) as f64).exp() } else { 0.0 })
        .collect();
    let total: f64 = weights.iter().sum();
    if row.min_p > 0.0 {
        for (i, w) in weights.iter_mut().enumerate() {
            if *w > 0.0 && *w < row.min_p as f64 && keys[i] != top_key {
                *w = 0.0;
            }
        }
    }
    if row.top_p < 1.0 {
        let p_key = radix_search(&keys, &weights, row.top_p as f64 * total, false);
        if p_key != 0 {
            for (i, w) in weights.iter_mut().enumerate() {
                if keys[i] < p_key {
                    *w = 0.0;
                }
            }
        }
    }
    let kept_total: f64 = weights.iter().sum();
    let last_key = (0..logits.len()).filter(|&i| weights[i] > 0.0).map(|i| keys[i]).min().unwrap();
    let drawn = radix_search(&keys, &weights, row.uniform * kept_total, true);
    key_token(if drawn != 0 { drawn } else { last_key })
}

#[test]
fn the_kernels_algorithm_picks_the_cpu_samplers_tokens() {
    let seed = test_seed();
    let vocab = 700;
    let base = |temperature: f32| SamplingParams { temperature, ..SamplingParams::greedy() };
    let cases = [
        SamplingParams::greedy(),
        base(1.0),
        SamplingParams { top_k: 30, ..base(0.8) },
        SamplingParams { top_p: 0.85, ..base(1.0) },
        SamplingParams { top_p: 0.2, ..base(2.0) },
        SamplingParams { min_p: 0.1, ..base(1.0) },
        SamplingParams { min_p: 2.0, ..base(1.0) },
        SamplingParams { top_k: 50, top_p: 0.7, min_p: 0.05, ..base(0.7) },
        SamplingParams { repetition_penalty: 1.4, presence_penalty: 0.3, frequency_penalty: 0.2, ..base(0.9) },
        SamplingParams { logit_bias: logit_bias(vocab, 1), ..SamplingParams::greedy() },
        SamplingParams { logit_bias: logit_bias(vocab, 2), top_p: 0.9, ..base(1.0) },
        SamplingParams {
            logit_bias: logit_bias(vocab, 3),
            repetition_penalty: 1.3,
            frequency_penalty: 0.4,
            ..base(0.8)
        },
    ];
    let mut draws = 0;
    for (c, params) in cases.iter().enumerate() {
        for r in 0..120u64 {
            let row_seed = seed.wrapping_add(c as u64 * 1000 + r);
            // Logits on a coarse grid, so many tie and the id order must break them.
            let logits: Vec<f32> = seeded_values(row_seed, vocab).iter().map(|v| (v * 12.0).round() / 4.0).collect();
            let params = SamplingParams { seed: Some(row_seed), ..params.clone() };
            let prompt: Vec<u32> = (0..15).map(|i| ((row_seed as usize + i * 31) % vocab) as u32).collect();
            let generated: Vec<u32> = (0..6).map(|i| ((row_seed as usize + i * 7 % 4) % vocab) as u32).collect();
            let masked = r % 4 == 3;
            let mask: Vec<u32> = (0..vocab.div_ceil(32)).map(|w| 0x0F0F_0F0Fu32.rotate_left(w as u32)).collect();
            let entries = penalty_entries(&params, &prompt, &generated);
            let uniform = if params.is_greedy() { 0.0 } else { Rng::seeded(row_seed).next_f64() };
            let row = sample_row(&params, uniform, 0, entries.len(), masked.then_some(0), None);
            let got = sample_like_kernel(&mut logits.clone(), &row, &entries, masked.then_some(&mask[..]));

            let mut sampler = Sampler::new(params.clone(), &prompt);
            generated.iter().for_each(|&t| sampler.accept(t));
            let allowed = |id: u32| (mask[id as usize / 32] >> (id % 32)) & 1 == 1;
            let expected = sampler.sample(&mut logits.clone(), if masked { Some(&allowed) } else { None });
            assert_eq!(got, expected, "case {c} row {r} ({params:?}), seed {seed}");
            draws += 1;
        }
    }
    assert_eq!(draws, cases.len() * 120);
}

#[test]
fn rows_exported_by_the_engine_convert_to_what_the_kernel_reads() {
    // Sampler::device_row -> SampleRow / PenaltyEntry -> the kernel's algorithm picks the
    // token Sampler::sample picks from the same state.
    let seed = test_seed();
    let vocab = 300;
    let base = |temperature: f32| SamplingParams { temperature, ..SamplingParams::greedy() };
    let cases = [
        SamplingParams::greedy(),
        SamplingParams { top_k: 20, top_p: 0.9, min_p: 0.02, ..base(0.8) },
        SamplingParams { repetition_penalty: 1.3, presence_penalty: 0.4, frequency_penalty: 0.2, ..base(1.1) },
        SamplingParams { repetition_penalty: 0.8, ..SamplingParams::greedy() },
        SamplingParams { frequency_penalty: 0.7, ..base(0.6) },
        SamplingParams { logit_bias: logit_bias(vocab, 4), ..SamplingParams::greedy() },
        SamplingParams { logit_bias: logit_bias(vocab, 5), repetition_penalty: 1.2, ..base(0.9) },
    ];
    for (c, params) in cases.iter().enumerate() {
        let params = SamplingParams { seed: Some(seed.wrapping_add(c as u64)), ..params.clone() };
        let prompt: Vec<u32> = (0..12).map(|i| (i * 37 % vocab) as u32).collect();
        let mut device = Sampler::new(params.clone(), &prompt);
        let mut host = Sampler::new(params.clone(), &prompt);
        let mut history = vec![HistoryEntry::default(); 2]; // earlier rows' entries
        for step in 0..40 {
            let logits: Vec<f32> = seeded_values(seed.wrapping_add(step * 31 + c as u64), vocab)
                .iter()
                .map(|v| (v * 12.0).round() / 4.0)
                .collect();
            history.truncate(2);
            let mut row = device.device_row(&mut history);
            let masked = step % 3 == 1;
            let mut masks = vec![0u32; kiln::backend::sampling::mask_words(vocab)]; // row 0: another row's
            if masked {
                row.mask_row = Some(kiln::backend::sampling::push_mask_row(&mut masks, vocab, |t| t % 5 != 2));
            }
            row.top_logprobs = 3;
            row.want_logprob = true;
            let kernel_row = SampleRow::from(&row);
            assert_eq!((kernel_row.penalty_start, kernel_row.penalty_count), (2, row.history_len as u32));
            assert_eq!((kernel_row.top_logprobs, kernel_row.want_logprobs), (3, 1));
            assert_eq!(kernel_row.mask_row, if masked { 1 } else { KILN_NONE });
            let entries: Vec<PenaltyEntry> = history[row.history()].iter().map(PenaltyEntry::from).collect();
            let mask = masked.then(|| &masks[masks.len() - kiln::backend::sampling::mask_words(vocab)..]);
            let got = sample_like_kernel(&mut logits.clone(), &kernel_row, &entries, mask);
            let allowed = |t: u32| t % 5 != 2;
            let expected = host.sample(&mut logits.clone(), if masked { Some(&allowed) } else { None });
            assert_eq!(got, expected, "case {c} step {step} ({params:?}), seed {seed}");
            device.accept(got);
            host.accept(expected);
        }
    }
    let entry = PenaltyEntry::from(&HistoryEntry { token: 7, generated_count: 2, seen: true, bias: -3.5 });
    assert_eq!(entry, PenaltyEntry { token: 7, generated_count: 2, seen: 1, bias: -3.5, raw_logit: 0.0 });
    let too_many = SampleRow::from(&RowSampling { top_logprobs: 99, mask_row: Some(4), ..RowSampling::greedy() });
    assert_eq!((too_many.top_logprobs, too_many.mask_row), (MAX_TOP_LOGPROBS as u32, 4));
}
