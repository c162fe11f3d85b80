//! Per-key limits: requests per minute, tokens per minute (prompt and generated, counted as they
//! are produced) and requests in flight. Over a limit a request gets 429 `rate_limit_exceeded`
//! with `Retry-After` saying when it would pass. Windows slide by the second over the last 60.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::api::error::ApiError;

/// One key's limits; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyLimits {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    /// Requests of this key running at once (streamed or not).
    pub concurrent_requests: Option<usize>,
}

const WINDOW_SECONDS: u64 = 60;

/// Counts over the last 60 seconds, one bucket per second (60 buckets: constant memory per key
/// whatever its traffic).
#[derive(Debug)]
struct MinuteWindow {
    /// `(second, count)`: the bucket of second `s` lives at `s % 60`.
    buckets: [(u64, u64); WINDOW_SECONDS as usize],
}

impl MinuteWindow {
    fn new() -> Self {
        MinuteWindow { buckets: [(u64::MAX, 0); WINDOW_SECONDS as usize] }
    }

    fn add(&mut self, second: u64, count: u64) {
        let bucket = &mut self.buckets[(second % WINDOW_SECONDS) as usize];
        if bucket.0 != second {
            *bucket = (second, 0);
        }
        bucket.1 += count;
    }

    fn live(&self, now: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.buckets.iter().copied().filter(move |&(second, _)| second <= now && now - second < WINDOW_SECONDS)
    }

    fn total(&self, now: u64) -> u64 {
        self.live(now).map(|(_, count)| count).sum()
    }

    /// Seconds until the total falls below `limit`, as the oldest buckets leave the window.
    fn seconds_until_below(&self, now: u64, limit: u64) -> u64 {
        let mut live: Vec<(u64, u64)> = self.live(now).collect();
        live.sort_unstable();
        let mut total: u64 = live.iter().map(|(_, count)| count).sum();
        for (second, count) in live {
            if total < limit {
                break;
            }
            total -= count;
            if total < limit {
                return second + WINDOW_SECONDS - now;
            }
        }
        1
    }
}

#[derive(Debug)]
struct Windows {
    requests: MinuteWindow,
    tokens: MinuteWindow,
}

/// One key's limits and usage. Its log name is `label` (the key's line in the keys file), never
/// the key itself.
#[derive(Debug)]
pub struct KeyState {
    pub label: String,
    pub limits: KeyLimits,
    clock: Instant,
    windows: Mutex<Windows>,
    in_flight: AtomicUsize,
}

/// A request admitted under its key's limits; dropping it ends it for the concurrency limit.
pub struct Admitted {
    key: Arc<KeyState>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.key.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl KeyState {
    pub fn new(label: String, limits: KeyLimits) -> Arc<KeyState> {
        Arc::new(KeyState {
            label,
            limits,
            clock: Instant::now(),
            windows: Mutex::new(Windows { requests: MinuteWindow::new(), tokens: MinuteWindow::new() }),
            in_flight: AtomicUsize::new(0),
        })
    }

    fn now(&self) -> u64 {
        self.clock.elapsed().as_secs()
    }

    fn windows(&self) -> MutexGuard<'_, Windows> {
        // Counters only: a poisoned lock still holds usable counts.
        self.windows.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Admits one request, or says which limit it is over and when to retry.
    pub fn admit(self: &Arc<Self>) -> Result<Admitted, ApiError> {
        let limits = self.limits;
        if let Some(max) = limits.concurrent_requests {
            let running = self.in_flight.fetch_add(1, Ordering::SeqCst);
            if running >= max {
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                return Err(ApiError::rate_limited(
                    format!("This API key has {running} requests running, its limit; retry when one finishes."),
                    1,
                ));
            }
        } else {
            self.in_flight.fetch_add(1, Ordering::SeqCst);
        }
        let admitted = Admitted { key: self.clone() };
        let now = self.now();
        let mut windows = self.windows();
        if let Some(rpm) = limits.requests_per_minute {
            if windows.requests.total(now) >= rpm {
                let wait = windows.requests.seconds_until_below(now, rpm);
                return Err(ApiError::rate_limited(
                    format!("This API key is limited to {rpm} requests per minute; retry in {wait} s."),
                    wait,
                ));
            }
        }
        if let Some(tpm) = limits.tokens_per_minute {
            let used = windows.tokens.total(now);
            if used >= tpm {
                let wait = windows.tokens.seconds_until_below(now, tpm);
                return Err(ApiError::rate_limited(
                    format!(
                        "This API key is limited to {tpm} tokens per minute and used {used} in the last minute; retry in {wait} s."
                    ),
                    wait,
                ));
            }
        }
        windows.requests.add(now, 1);
        Ok(admitted)
    }

    /// Counts tokens against the per-minute limit (prompt tokens when a request is submitted,
    /// generated tokens as they are produced).
    pub fn count_tokens(&self, tokens: u64) {
        if self.limits.tokens_per_minute.is_some() {
            let now = self.now();
            self.windows().tokens.add(now, tokens);
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_forgets_after_a_minute_and_says_when() {
        let mut window = MinuteWindow::new();
        window.add(10, 3);
        window.add(30, 2);
        assert_eq!(window.total(30), 5);
        // Below 4 once second 10's three leave: at 70.
        assert_eq!(window.seconds_until_below(30, 4), 40);
        assert_eq!(window.seconds_until_below(30, 2), 60);
        assert_eq!(window.total(70), 2);
        assert_eq!(window.total(90), 0);
        // The bucket of second 70 reuses second 10's slot.
        window.add(70, 1);
        assert_eq!(window.total(70), 3);
    }

    #[test]
    fn each_limit_refuses_with_retry_after() {
        let key = KeyState::new("key 1".into(), KeyLimits { requests_per_minute: Some(2), ..KeyLimits::default() });
        let first = key.admit().unwrap();
        let _second = key.admit().unwrap();
        let refused = key.admit().err().unwrap();
        assert_eq!((refused.status, refused.code), (429, Some("rate_limit_exceeded")));
        assert!((1..=60).contains(&refused.retry_after_secs.unwrap()));
        drop(first);

        let key = KeyState::new("key 2".into(), KeyLimits { concurrent_requests: Some(1), ..KeyLimits::default() });
        let running = key.admit().unwrap();
        assert_eq!(key.admit().err().unwrap().retry_after_secs, Some(1));
        drop(running);
        assert!(key.admit().is_ok());
        assert_eq!(key.in_flight(), 0);

        let key = KeyState::new("key 3".into(), KeyLimits { tokens_per_minute: Some(10), ..KeyLimits::default() });
        let _admitted = key.admit().unwrap();
        key.count_tokens(10);
        assert!(key.admit().err().unwrap().message.contains("10 tokens per minute"));
    }
}
