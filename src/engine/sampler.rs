//! Choosing the next token from a row of logits: logit bias, penalties, temperature, top-k, top-p,
//! min-p and a seeded draw. This is the reference the GPU sampling kernel is tested against; for a
//! backend that samples on its device, `device_row` exports the same settings and state.

use std::collections::HashMap;

use super::rng::Rng;
use crate::backend::sampling::{HistoryEntry, RowSampling};

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// 0 means no top-k cut.
    pub top_k: usize,
    /// 1 means no nucleus cut.
    pub top_p: f32,
    /// 0 means no min-p cut.
    pub min_p: f32,
    /// Hugging Face's multiplicative penalty over prompt and generated tokens; 1 means off.
    pub repetition_penalty: f32,
    /// OpenAI's additive penalties over generated tokens; 0 means off.
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub seed: Option<u64>,
    /// OpenAI's `logit_bias`: (token, amount) pairs added to the raw logits before the penalties,
    /// greedy included. `Sampler::new` keeps one entry per token (the first), sorted by id.
    pub logit_bias: Vec<(u32, f32)>,
}

impl SamplingParams {
    /// These settings as a device-sampled row with draw `uniform` and history entries `history`
    /// of the step's history slice; no mask and no log-probabilities (the caller's to set).
    pub fn device_row(&self, uniform: f64, history: std::ops::Range<usize>) -> RowSampling {
        RowSampling {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            uniform,
            history_start: history.start,
            history_len: history.len(),
            mask_row: None,
            top_logprobs: 0,
            want_logprob: false,
        }
    }

    pub fn greedy() -> SamplingParams {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            logit_bias: Vec::new(),
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }
}

/// Per-sequence sampling state: the parameters, the random stream and the token counts the
/// penalties need, updated as tokens are accepted rather than recounted each step.
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// How often each token was generated (presence / frequency penalties).
    generated_counts: HashMap<u32, u32>,
    /// Every token of the prompt and the output (repetition penalty).
    seen: HashMap<u32, ()>,
    /// Per-draw scratch, kept between tokens so sampling does not allocate: the (scaled logit,
    /// token) candidates and their weights relative to the best.
    candidates: Vec<(f32, u32)>,
    weights: Vec<f64>,
}

impl Sampler {
    pub fn new(mut params: SamplingParams, prompt: &[u32]) -> Sampler {
        // Sorted and distinct: looked up by binary search, and a device applies each entry once.
        params.logit_bias.sort_by_key(|&(token, _)| token);
        params.logit_bias.dedup_by_key(|&mut (token, _)| token);
        let rng = params.seed.map(Rng::seeded).unwrap_or_else(Rng::from_entropy);
        let seen =
            if params.repetition_penalty != 1.0 { prompt.iter().map(|&t| (t, ())).collect() } else { HashMap::new() };
        Sampler { params, rng, generated_counts: HashMap::new(), seen, candidates: Vec::new(), weights: Vec::new() }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Records a generated token for the penalties of later steps.
    pub fn accept(&mut self, token: u32) {
        *self.generated_counts.entry(token).or_insert(0) += 1;
        if self.params.repetition_penalty != 1.0 {
            self.seen.insert(token, ());
        }
    }

    /// Picks the next token. `logits` is modified (bias, penalties, temperature).
    /// `allowed` masks tokens out when it returns false (JSON mode); it must allow at least one.
    pub fn sample(&mut self, logits: &mut [f32], allowed: Option<&dyn Fn(u32) -> bool>) -> u32 {
        self.apply_logit_bias(logits);
        self.apply_penalties(logits);
        if let Some(allowed) = allowed {
            for (id, logit) in logits.iter_mut().enumerate() {
                if !allowed(id as u32) {
                    *logit = f32::NEG_INFINITY;
                }
            }
        }
        let Some(uniform) = self.draw() else {
            return argmax(logits);
        };
        let inverse_temperature = 1.0 / self.params.temperature;
        self.candidates.clear();
        self.candidates.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| l.is_finite())
                .map(|(id, &l)| (l * inverse_temperature, id as u32)),
        );
        if self.candidates.is_empty() {
            return argmax(logits);
        }
        let by_logit_desc = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        let k = self.params.top_k;
        if k > 0 && k < self.candidates.len() {
            self.candidates.select_nth_unstable_by(k - 1, by_logit_desc);
            self.candidates.truncate(k);
        }
        self.candidates.sort_unstable_by(by_logit_desc);
        // Probabilities relative to the best candidate, in f64 so long tails still sum correctly.
        let max = self.candidates[0].0;
        let weights = &mut self.weights;
        weights.clear();
        weights.extend(self.candidates.iter().map(|&(l, _)| ((l - max) as f64).exp()));
        let total: f64 = weights.iter().sum();
        let mut keep = weights.len();
        if self.params.min_p > 0.0 {
            // Best weight is 1, so min_p compares directly.
            keep = weights.iter().take_while(|&&w| w >= self.params.min_p as f64).count().max(1);
        }
        if self.params.top_p < 1.0 {
            let mut cumulative = 0.0;
            for (i, w) in weights[..keep].iter().enumerate() {
                cumulative += w / total;
                if cumulative >= self.params.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
        }
        let kept_total: f64 = weights[..keep].iter().sum();
        let mut draw = uniform * kept_total;
        for (i, w) in weights[..keep].iter().enumerate() {
            if draw < *w {
                return self.candidates[i].1;
            }
            draw -= w;
        }
        self.candidates[keep - 1].1
    }

    /// The row's uniform draw, taken exactly when the row is not greedy: every non-greedy row
    /// takes one, even one left with no candidate, so that a sequence's random stream does not
    /// depend on the logits and a device sampler can be handed the draw before it sees them.
    fn draw(&mut self) -> Option<f64> {
        (!self.params.is_greedy()).then(|| self.rng.next_f64())
    }

    /// This step's row for a backend that samples on its device: the parameters, the draw
    /// (taken as `sample` takes it, so a sequence gets the same tokens either way) and the
    /// entries the logit bias and the penalties need, appended to `history`. Mask and
    /// log-probabilities are the caller's to set.
    pub fn device_row(&mut self, history: &mut Vec<HistoryEntry>) -> RowSampling {
        let uniform = self.draw().unwrap_or(0.0);
        let history_start = history.len();
        self.history_entries(history);
        self.params.device_row(uniform, history_start..history.len())
    }

    /// Appends the tokens `apply_logit_bias` and `apply_penalties` would touch, one entry per
    /// distinct token (none when neither is on), in no particular order: the penalised tokens
    /// with their bias, then the biased tokens no penalty touches.
    pub fn history_entries(&self, out: &mut Vec<HistoryEntry>) {
        let p = &self.params;
        let repetition = p.repetition_penalty != 1.0;
        let additive = p.presence_penalty != 0.0 || p.frequency_penalty != 0.0;
        if repetition {
            // Every generated token is also in `seen`.
            out.extend(self.seen.keys().map(|&token| HistoryEntry {
                token,
                generated_count: self.generated_counts.get(&token).copied().unwrap_or(0),
                seen: true,
                bias: self.bias_of(token),
            }));
        } else if additive {
            out.extend(self.generated_counts.iter().map(|(&token, &generated_count)| HistoryEntry {
                token,
                generated_count,
                seen: false,
                bias: self.bias_of(token),
            }));
        }
        let penalised = |token: u32| {
            if repetition {
                self.seen.contains_key(&token)
            } else {
                additive && self.generated_counts.contains_key(&token)
            }
        };
        out.extend(
            self.params
                .logit_bias
                .iter()
                .filter(|&&(token, bias)| bias != 0.0 && !penalised(token))
                .map(|&(token, bias)| HistoryEntry { token, generated_count: 0, seen: false, bias }),
        );
    }

    /// The token's logit bias; 0 when it has none.
    fn bias_of(&self, token: u32) -> f32 {
        let bias = &self.params.logit_bias;
        bias.binary_search_by_key(&token, |&(t, _)| t).map_or(0.0, |i| bias[i].1)
    }

    /// Adds each biased token's amount to its logit. A zero bias is skipped, as on the device:
    /// adding 0 would turn a -0.0 logit into +0.0, which orders differently there.
    fn apply_logit_bias(&self, logits: &mut [f32]) {
        for &(token, bias) in &self.params.logit_bias {
            if let Some(l) = logits.get_mut(token as usize).filter(|_| bias != 0.0) {
                *l += bias;
            }
        }
    }

    fn apply_penalties(&self, logits: &mut [f32]) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            for &token in self.seen.keys() {
                if let Some(l) = logits.get_mut(token as usize) {
                    *l = if *l > 0.0 { *l / p.repetition_penalty } else { *l * p.repetition_penalty };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&token, &count) in &self.generated_counts {
                if let Some(l) = logits.get_mut(token as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * count as f32;
                }
            }
        }
    }
}

/// The index of the largest logit; ties go to the lowest id, as in every reference implementation.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams { temperature, seed: Some(7), ..SamplingParams::greedy() }
    }

    #[test]
    fn greedy_is_argmax_with_low_id_ties() {
        let mut s = Sampler::new(SamplingParams::greedy(), &[]);
        assert_eq!(s.sample(&mut [0.1, 3.0, 3.0, -1.0], None), 1);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_follows_the_distribution() {
        let logits = [0.0f32, (3.0f32).ln(), f32::NEG_INFINITY]; // probabilities 1/4, 3/4, 0
        let draw = |seed| {
            let mut s = Sampler::new(SamplingParams { seed: Some(seed), ..params(1.0) }, &[]);
            (0..4000).map(|_| s.sample(&mut logits.clone(), None)).collect::<Vec<_>>()
        };
        let a = draw(1);
        assert_eq!(a, draw(1));
        assert_ne!(a, draw(2));
        let ones = a.iter().filter(|&&t| t == 1).count() as f64 / 4000.0;
        assert!((ones - 0.75).abs() < 0.03, "{ones}");
        assert!(!a.contains(&2), "a -inf logit is never drawn");
    }

    #[test]
    fn top_k_top_p_and_min_p_cut_the_tail() {
        let logits = [4.0f32, 3.0, 2.0, 1.0, 0.0];
        let seen = |p: SamplingParams| {
            let mut s = Sampler::new(p, &[]);
            let mut ids: Vec<u32> = (0..2000).map(|_| s.sample(&mut logits.clone(), None)).collect();
            ids.sort();
            ids.dedup();
            ids
        };
        assert_eq!(seen(SamplingParams { top_k: 2, ..params(1.0) }), vec![0, 1]);
        // Probabilities ≈ 0.64, 0.24, 0.09, …: top_p 0.8 keeps the first two.
        assert_eq!(seen(SamplingParams { top_p: 0.8, ..params(1.0) }), vec![0, 1]);
        // min_p 0.3 keeps tokens with at least 0.3 × the best probability: e^-1 ≈ 0.37 passes, e^-2 not.
        assert_eq!(seen(SamplingParams { min_p: 0.3, ..params(1.0) }), vec![0, 1]);
        // A high temperature flattens the distribution so all five appear.
        assert_eq!(seen(params(50.0)), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_non_greedy_row_takes_its_draw_even_without_candidates() {
        // Row 1 has no finite logit; row 2 must still draw what the stream's third value gives.
        let mut with_empty_row = Sampler::new(params(1.0), &[]);
        let mut reference = Sampler::new(params(1.0), &[]);
        let logits = [0.0f32, 0.1, 0.2, 0.3];
        let first = with_empty_row.sample(&mut logits.clone(), None);
        assert_eq!(first, reference.sample(&mut logits.clone(), None));
        with_empty_row.sample(&mut [f32::NEG_INFINITY; 4], None);
        reference.rng.next_f64();
        for _ in 0..20 {
            assert_eq!(with_empty_row.sample(&mut logits.clone(), None), reference.sample(&mut logits.clone(), None));
        }
    }

    #[test]
    fn penalties_and_mask() {
        // Repetition penalty divides positive logits and multiplies negative ones of seen tokens.
        let mut s = Sampler::new(SamplingParams { repetition_penalty: 2.0, ..SamplingParams::greedy() }, &[0]);
        let mut logits = [3.0f32, 2.0, -1.0];
        assert_eq!(s.sample(&mut logits, None), 1);
        assert_eq!(logits, [1.5, 2.0, -1.0]);
        // Frequency penalty grows with each generated repeat; presence penalty applies once.
        let mut s = Sampler::new(
            SamplingParams { frequency_penalty: 0.5, presence_penalty: 1.0, ..SamplingParams::greedy() },
            &[],
        );
        s.accept(0);
        s.accept(0);
        let mut logits = [3.0f32, 1.5];
        assert_eq!(s.sample(&mut logits, None), 1);
        assert_eq!(logits[0], 1.0);
        // The mask removes tokens even when they are the best.
        let mut s = Sampler::new(params(0.0), &[]);
        assert_eq!(s.sample(&mut [5.0, 1.0, 0.0], Some(&|id| id != 0)), 1);
    }

    #[test]
    fn logit_bias_is_added_before_the_penalties_greedy_included() {
        let biased = |logit_bias: Vec<(u32, f32)>| SamplingParams { logit_bias, ..SamplingParams::greedy() };
        // +100 makes a token the greedy choice, -100 takes the best one out.
        let logits = [2.0f32, 1.0, 0.5, -1.0];
        assert_eq!(Sampler::new(biased(vec![]), &[]).sample(&mut logits.clone(), None), 0);
        assert_eq!(Sampler::new(biased(vec![(3, 100.0)]), &[]).sample(&mut logits.clone(), None), 3);
        assert_eq!(Sampler::new(biased(vec![(0, -100.0)]), &[]).sample(&mut logits.clone(), None), 1);
        // Out-of-vocabulary ids change nothing (the API refuses them first); unsorted and repeated
        // entries keep the first of each token.
        let mut s = Sampler::new(biased(vec![(9, 50.0), (2, 1.0), (1, 0.25), (2, 7.0)]), &[]);
        assert_eq!(s.params().logit_bias, vec![(1, 0.25), (2, 1.0), (9, 50.0)]);
        let mut got = logits;
        assert_eq!(s.sample(&mut got, None), 0);
        assert_eq!(got, [2.0, 1.25, 1.5, -1.0]);
        // The bias comes first: a repetition penalty divides the biased logit (1 + 3 = 4, / 2).
        let mut s = Sampler::new(
            SamplingParams { repetition_penalty: 2.0, logit_bias: vec![(1, 3.0)], ..SamplingParams::greedy() },
            &[1],
        );
        let mut got = logits;
        assert_eq!(s.sample(&mut got, None), 0);
        assert_eq!(got, [2.0, 2.0, 0.5, -1.0]);
        // With temperature the biased token is drawn (it holds nearly all the mass).
        let mut s = Sampler::new(SamplingParams { logit_bias: vec![(2, 30.0)], ..params(1.0) }, &[]);
        assert!((0..200).all(|_| s.sample(&mut logits.clone(), None) == 2));
        // A zero bias changes nothing, not even the sign of a zero.
        let mut s = Sampler::new(biased(vec![(0, 0.0)]), &[]);
        let mut zero = [-0.0f32, -1.0];
        s.sample(&mut zero, None);
        assert!(zero[0].is_sign_negative());
    }

    /// The bias and penalties as a device applies them from exported entries (cuda/sampling.cu
    /// step 2).
    fn apply_entries(row: &RowSampling, entries: &[HistoryEntry], logits: &mut [f32]) {
        for e in entries {
            let l = &mut logits[e.token as usize];
            if e.bias != 0.0 {
                *l += e.bias;
            }
            if row.repetition_penalty != 1.0 && e.seen {
                *l = if *l > 0.0 { *l / row.repetition_penalty } else { *l * row.repetition_penalty };
            }
            if (row.presence_penalty != 0.0 || row.frequency_penalty != 0.0) && e.generated_count > 0 {
                *l -= row.presence_penalty + row.frequency_penalty * e.generated_count as f32;
            }
        }
    }

    #[test]
    fn exported_history_gives_the_bias_and_penalties_sample_applies() {
        // Token 5 is generated and biased, 11 biased only, 3 biased with 0 (no entry of its own).
        let bias = vec![(11, -2.5), (5, 1.5), (3, 0.0)];
        let cases = [
            SamplingParams::greedy(),
            SamplingParams { logit_bias: bias.clone(), ..SamplingParams::greedy() },
            SamplingParams { repetition_penalty: 1.2, logit_bias: bias.clone(), ..params(0.9) },
            SamplingParams { frequency_penalty: 0.5, logit_bias: bias.clone(), ..params(1.0) },
            SamplingParams { repetition_penalty: 1.3, ..params(0.0) },
            SamplingParams { presence_penalty: 0.5, ..params(1.0) },
            SamplingParams { frequency_penalty: -0.25, ..params(1.0) },
            SamplingParams { repetition_penalty: 0.7, presence_penalty: 0.4, frequency_penalty: 0.3, ..params(0.8) },
        ];
        let prompt = [3, 9, 3, 0];
        let generated = [9, 5, 5, 7, 5];
        for p in cases {
            let mut sampler = Sampler::new(p.clone(), &prompt);
            generated.iter().for_each(|&t| sampler.accept(t));
            // Another row's entry comes first.
            let mut history = vec![HistoryEntry { token: 99, generated_count: 9, seen: true, bias: 1.0 }];
            let row = sampler.device_row(&mut history);
            let entries = &history[row.history()];
            assert_eq!(history[0].token, 99, "appends after what is there");
            let mut tokens: Vec<u32> = entries.iter().map(|e| e.token).collect();
            tokens.sort();
            tokens.dedup();
            assert_eq!(tokens.len(), entries.len(), "{p:?}: one entry per distinct token");
            let logits: Vec<f32> = (0..12).map(|i| i as f32 * 0.75 - 4.0).collect();
            let mut expected = logits.clone();
            sampler.apply_logit_bias(&mut expected);
            sampler.apply_penalties(&mut expected);
            let mut got = logits.clone();
            apply_entries(&row, entries, &mut got);
            assert_eq!(got, expected, "{p:?}");
            let any_penalty = p.repetition_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0;
            let any = any_penalty || !p.logit_bias.is_empty();
            assert_eq!(entries.is_empty(), !any, "{p:?}: entries only when a penalty or a bias is on");
            for (token, bias) in [(11, -2.5), (5, 1.5)].into_iter().filter(|_| !p.logit_bias.is_empty()) {
                let entry = entries.iter().find(|e| e.token == token).expect("a biased token has an entry");
                assert_eq!(entry.bias, bias, "{p:?}: token {token}");
            }
            assert!(entries.iter().all(|e| e.token != 3 || any_penalty), "{p:?}: a zero bias alone needs no entry");
            assert_eq!((row.temperature, row.top_k, row.top_p, row.min_p), (p.temperature, p.top_k, p.top_p, p.min_p));
            assert_eq!(
                (row.repetition_penalty, row.presence_penalty, row.frequency_penalty),
                (p.repetition_penalty, p.presence_penalty, p.frequency_penalty)
            );
            assert_eq!((row.mask_row, row.top_logprobs, row.want_logprob), (None, 0, false));
        }
    }

    #[test]
    fn a_device_row_takes_the_draw_sample_would_take() {
        let logits = [0.5f32, 0.1, 0.9, -0.3, 0.2];
        // Non-greedy: the row carries the stream's next value, and the sampler goes on from there
        // exactly as one that sampled that step on the host.
        let mut device = Sampler::new(params(0.9), &[]);
        let mut host = Sampler::new(params(0.9), &[]);
        let mut history = Vec::new();
        for _ in 0..5 {
            let mut expected_rng = host.rng.clone();
            host.sample(&mut logits.clone(), None);
            assert_eq!(device.device_row(&mut history).uniform, expected_rng.next_f64());
        }
        assert_eq!(device.sample(&mut logits.clone(), None), host.sample(&mut logits.clone(), None));
        // Greedy (temperature 0, or top-k 1): no draw, the stream stays where it was.
        for p in [SamplingParams::greedy(), SamplingParams { top_k: 1, ..params(0.9) }] {
            let mut greedy = Sampler::new(SamplingParams { seed: Some(3), ..p }, &[]);
            let untouched = greedy.rng.clone().next_u64();
            assert_eq!(greedy.device_row(&mut history).uniform, 0.0);
            assert_eq!(greedy.rng.next_u64(), untouched);
        }
    }
}
