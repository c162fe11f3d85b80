//! Kernel sampling rows and penalty entries from the engine's `SamplingParams`, for the tests
//! that compare the CUDA sampling kernel (or a sequential model of it) with the CPU sampler.
#![allow(dead_code)] // each test file uses what it needs

use std::collections::BTreeMap;

use kiln::backend::cuda::params::{PenaltyEntry, SampleRow};
use kiln::backend::sampling::RowSampling;
use kiln::engine::sampler::SamplingParams;
use kiln::testing::seeded_values;

/// The flattened settings of one row. `uniform` is the row's draw from its sequence's seeded
/// generator (`Rng::next_f64`), taken only when the row is not greedy, as the CPU sampler does.
pub fn sample_row(
    params: &SamplingParams,
    uniform: f64,
    penalty_start: usize,
    penalty_count: usize,
    mask_row: Option<usize>,
    top_logprobs: Option<usize>,
) -> SampleRow {
    let row = RowSampling {
        mask_row,
        top_logprobs: top_logprobs.unwrap_or(0),
        want_logprob: top_logprobs.is_some(),
        ..params.device_row(uniform, penalty_start..penalty_start + penalty_count)
    };
    SampleRow::from(&row)
}

/// One entry per distinct token the row adjusts, as the CPU sampler counts them: generated tokens
/// get their count (presence / frequency penalties); with a repetition penalty, prompt and
/// generated tokens are marked seen; tokens with a logit bias carry it (the first one given).
pub fn penalty_entries(params: &SamplingParams, prompt: &[u32], generated: &[u32]) -> Vec<PenaltyEntry> {
    let mut entries: BTreeMap<u32, PenaltyEntry> = BTreeMap::new();
    let repetition = params.repetition_penalty != 1.0;
    for &token in prompt {
        if repetition {
            entries.entry(token).or_insert(PenaltyEntry { token, ..PenaltyEntry::default() }).seen = 1;
        }
    }
    for &token in generated {
        let e = entries.entry(token).or_insert(PenaltyEntry { token, ..PenaltyEntry::default() });
        e.generated_count += 1;
        if repetition {
            e.seen = 1;
        }
    }
    let mut biased = std::collections::BTreeSet::new();
    for &(token, bias) in &params.logit_bias {
        if biased.insert(token) && bias != 0.0 {
            entries.entry(token).or_insert(PenaltyEntry { token, ..PenaltyEntry::default() }).bias = bias;
        }
    }
    entries.into_values().collect()
}

/// A logit bias as clients send them: a few tokens pushed to the top or banned (±100), some
/// nudged, one given 0, spread over the vocabulary so that some are in a row's history.
pub fn logit_bias(vocab: usize, salt: u64) -> Vec<(u32, f32)> {
    let values = seeded_values(salt * 7919, 24);
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let token = ((i * 97 + salt as usize * 31) % vocab) as u32;
            let bias = match i % 6 {
                0 => 100.0,
                1 => -100.0,
                2 => 0.0,
                _ => v * 8.0,
            };
            (token, bias)
        })
        .collect()
}
