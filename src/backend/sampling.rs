//! Sampling on the backend's device (`Backend::execute_and_sample`): per-row settings in plain
//! numbers, and what comes back (ids, and log-probabilities when asked) instead of the logits.
//! The semantics are engine::sampler::Sampler's; the engine fills these from its samplers.

use std::ops::Range;

/// The most alternatives a device-sampled row reports (the OpenAI API's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;
/// The most logit-bias entries a row carries (the OpenAI API's limit): with the row's history,
/// what a device sizes its entry buffers for.
pub const MAX_LOGIT_BIAS: usize = 300;

/// One logits row's sampling settings for this step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowSampling {
    /// 0 means greedy (argmax, lowest id on ties), as does `top_k == 1`.
    pub temperature: f32,
    /// 0 means no top-k cut.
    pub top_k: usize,
    /// 1 means no nucleus cut.
    pub top_p: f32,
    /// 0 means no min-p cut.
    pub min_p: f32,
    /// Multiplicative, over history entries marked `seen`; 1 means off.
    pub repetition_penalty: f32,
    /// Additive, over history entries with a generated count; 0 means off.
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// The row's draw in [0, 1) from its sequence's seeded stream (ignored when greedy).
    pub uniform: f64,
    /// The row's entries in the step's history slice (its penalised and biased tokens): one per
    /// distinct token, none twice.
    pub history_start: usize,
    pub history_len: usize,
    /// The row of the step's allowed-token mask (`mask_words(vocab)` words, bit set: allowed);
    /// None: every token is allowed. A mask allows at least one token.
    pub mask_row: Option<usize>,
    /// How many of the most likely tokens to report (at most `MAX_TOP_LOGPROBS`).
    pub top_logprobs: usize,
    /// Report the chosen token's log-probability. Log-probabilities are the model's own: of the
    /// raw logits, before penalties, mask and temperature.
    pub want_logprob: bool,
}

impl RowSampling {
    /// Argmax with nothing else: the row of a step slot nobody samples from.
    pub fn greedy() -> RowSampling {
        RowSampling {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            uniform: 0.0,
            history_start: 0,
            history_len: 0,
            mask_row: None,
            top_logprobs: 0,
            want_logprob: false,
        }
    }

    pub fn history(&self) -> Range<usize> {
        self.history_start..self.history_start + self.history_len
    }
}

/// One distinct token whose logit a row adjusts before choosing: a token of the sequence's
/// history (its prompt and what it generated so far) that a penalty applies to, or a token with a
/// logit bias, or both. The bias is added first, then the penalties.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct HistoryEntry {
    pub token: u32,
    /// How often it was generated (presence and frequency penalties).
    pub generated_count: u32,
    /// The repetition penalty applies to it (a prompt or generated token).
    pub seen: bool,
    /// Added to the raw logit before the penalties (`logit_bias`); 0 means none.
    pub bias: f32,
}

/// Words of one allowed-token mask row.
pub fn mask_words(vocab: usize) -> usize {
    vocab.div_ceil(32)
}

/// Appends a mask row allowing the tokens `allows` accepts; returns the row's index.
pub fn push_mask_row(masks: &mut Vec<u32>, vocab: usize, allows: impl Fn(u32) -> bool) -> usize {
    push_mask_words(masks, vocab, |words| {
        for (w, word) in words.iter_mut().enumerate() {
            for bit in 0..32 {
                let token = w * 32 + bit;
                if token < vocab && allows(token as u32) {
                    *word |= 1 << bit;
                }
            }
        }
    })
}

/// Appends a zeroed mask row, lets `fill` set its allowed bits (bit `t % 32` of word `t / 32`)
/// and clears any set past the vocabulary; returns the row's index.
pub fn push_mask_words(masks: &mut Vec<u32>, vocab: usize, fill: impl FnOnce(&mut [u32])) -> usize {
    let words = mask_words(vocab);
    let start = masks.len();
    debug_assert!(start.is_multiple_of(words), "mask rows are whole rows");
    masks.resize(start + words, 0);
    let row = &mut masks[start..];
    fill(row);
    if !vocab.is_multiple_of(32) {
        row[words - 1] &= (1u32 << (vocab % 32)) - 1;
    }
    start / words
}

/// A step's sampled rows in plan order; kept by the caller and refilled every step, so the
/// per-token path does not allocate.
#[derive(Debug, Default)]
pub struct SampledRows {
    tokens: Vec<u32>,
    logprobs: Vec<Option<f32>>,
    /// Row r's alternatives are `top[top_end[r - 1]..top_end[r]]`.
    top_end: Vec<usize>,
    top: Vec<(u32, f32)>,
}

impl SampledRows {
    pub fn with_capacity(rows: usize) -> SampledRows {
        SampledRows {
            tokens: Vec::with_capacity(rows),
            logprobs: Vec::with_capacity(rows),
            top_end: Vec::with_capacity(rows),
            top: Vec::with_capacity(rows * MAX_TOP_LOGPROBS),
        }
    }

    pub fn clear(&mut self) {
        self.tokens.clear();
        self.logprobs.clear();
        self.top_end.clear();
        self.top.clear();
    }

    /// Adds the next row's result: its token, its log-probability when asked, and the most
    /// likely tokens (best first) when asked.
    pub fn push(&mut self, token: u32, logprob: Option<f32>, top: impl IntoIterator<Item = (u32, f32)>) {
        self.tokens.push(token);
        self.logprobs.push(logprob);
        self.top.extend(top);
        self.top_end.push(self.top.len());
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn token(&self, row: usize) -> u32 {
        self.tokens[row]
    }

    pub fn logprob(&self, row: usize) -> Option<f32> {
        self.logprobs[row]
    }

    /// The row's most likely tokens and their log-probabilities, best first.
    pub fn top(&self, row: usize) -> &[(u32, f32)] {
        let start = if row == 0 { 0 } else { self.top_end[row - 1] };
        &self.top[start..self.top_end[row]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_rows_set_the_allowed_bits_and_nothing_past_the_vocabulary() {
        let mut masks = Vec::new();
        assert_eq!(push_mask_row(&mut masks, 40, |t| t % 3 == 0), 0);
        assert_eq!(push_mask_row(&mut masks, 40, |_| true), 1);
        assert_eq!(push_mask_words(&mut masks, 40, |words| words.fill(u32::MAX)), 2);
        assert_eq!(masks.len(), 3 * mask_words(40));
        for t in 0..64u32 {
            let bit = |row: usize| (masks[row * 2 + t as usize / 32] >> (t % 32)) & 1 == 1;
            assert_eq!(bit(0), t < 40 && t % 3 == 0, "row 0, token {t}");
            assert_eq!(bit(1), t < 40, "row 1, token {t}");
            assert_eq!(bit(2), t < 40, "row 2, token {t}: nothing past the vocabulary");
        }
    }

    #[test]
    fn sampled_rows_keep_each_rows_alternatives_and_reuse_their_memory() {
        let mut out = SampledRows::with_capacity(3);
        for _ in 0..2 {
            out.clear();
            out.push(5, None, []);
            out.push(7, Some(-0.5), [(7, -0.5), (2, -1.5)]);
            out.push(1, Some(-2.0), [(3, -0.1)]);
            assert_eq!(out.len(), 3);
            assert_eq!((out.token(0), out.logprob(0), out.top(0)), (5, None, &[][..]));
            assert_eq!((out.token(1), out.logprob(1), out.top(1)), (7, Some(-0.5), &[(7, -0.5), (2, -1.5)][..]));
            assert_eq!((out.token(2), out.logprob(2), out.top(2)), (1, Some(-2.0), &[(3, -0.1)][..]));
        }
        assert_eq!(out.top.capacity(), 3 * MAX_TOP_LOGPROBS, "refilled in place");
    }

    #[test]
    fn a_greedy_row_has_no_history_mask_or_logprobs() {
        let row = RowSampling::greedy();
        assert_eq!(row.history(), 0..0);
        assert_eq!((row.mask_row, row.top_logprobs, row.want_logprob), (None, 0, false));
        let row = RowSampling { history_start: 4, history_len: 3, ..row };
        assert_eq!(row.history(), 4..7);
    }
}
