//! Engine metrics: counters, gauges and latency histograms, updated lock-free by the engine
//! thread and read by the server's `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Histogram bucket upper bounds in seconds, shared by every latency histogram.
pub const LATENCY_BUCKETS_S: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_S.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        for (bucket, &bound) in self.buckets.iter().zip(&LATENCY_BUCKETS_S) {
            if seconds <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }

    /// Cumulative counts per bucket, total count, and sum in seconds.
    pub fn snapshot(&self) -> (Vec<u64>, u64, f64) {
        (
            self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
            self.count.load(Ordering::Relaxed),
            self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        )
    }
}

#[derive(Default)]
pub struct EngineMetrics {
    pub requests_total: AtomicU64,
    pub requests_rejected: AtomicU64,
    pub requests_cancelled: AtomicU64,
    pub prompt_tokens_total: AtomicU64,
    pub generated_tokens_total: AtomicU64,
    pub steps_total: AtomicU64,
    /// Steps whose tokens the backend sampled on its device (the rest read logits back).
    pub device_sampled_steps_total: AtomicU64,
    pub preemptions_total: AtomicU64,
    /// Prompt tokens taken from the prefix cache instead of being computed.
    pub prefix_cache_hit_tokens_total: AtomicU64,
    pub queue_depth: AtomicU64,
    pub running_sequences: AtomicU64,
    pub kv_blocks_used: AtomicU64,
    pub kv_blocks_total: AtomicU64,
    /// Tokens computed in the last step, for batch occupancy.
    pub last_step_tokens: AtomicU64,
    pub queue_time: Histogram,
    pub time_to_first_token: Histogram,
    pub inter_token_latency: Histogram,
    pub step_time: Histogram,
    /// Working out one constrained sequence's allowed tokens (JSON mode, JSON schemas).
    pub constraint_mask_time: Histogram,
}

impl EngineMetrics {
    pub fn add(counter: &AtomicU64, value: u64) {
        counter.fetch_add(value, Ordering::Relaxed);
    }

    pub fn set(gauge: &AtomicU64, value: u64) {
        gauge.store(value, Ordering::Relaxed);
    }

    pub fn get(value: &AtomicU64) -> u64 {
        value.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(0.003);
        h.observe(0.2);
        h.observe(500.0);
        let (buckets, count, sum) = h.snapshot();
        assert_eq!(buckets[0], 1);
        assert_eq!(buckets[5], 2, "0.25 s bucket holds 0.003 and 0.2");
        assert_eq!(*buckets.last().unwrap(), 2, "500 s is beyond every bucket, counted only in +Inf");
        assert_eq!(count, 3);
        assert!((sum - 500.203).abs() < 1e-3);
    }
}
