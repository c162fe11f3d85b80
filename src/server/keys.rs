//! API keys: read once at start-up from `--api-key` flags and the keys file, each with its limits,
//! and matched against what a request presents. A key appears in no log line: it is named by its
//! label (`--api-key #1`, `keys.txt:3`).
//!
//! The keys file has one key per line, optionally followed by its limits, which override the
//! `--key-*` defaults for that key:
//! ```text
//! # key                 limits (each optional)
//! sk-team-a             rpm=600 tpm=200000 concurrent=8
//! sk-batch-job          tpm=1000000
//! ```

use std::path::Path;
use std::sync::Arc;

use thiserror::Error;

use super::rate_limit::{KeyLimits, KeyState};

#[derive(Debug, Error)]
pub enum KeysError {
    #[error("reading the API keys file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}:{line}: {message}")]
    Invalid { path: String, line: usize, message: String },
}

struct ApiKey {
    secret: Vec<u8>,
    state: Arc<KeyState>,
}

/// The accepted keys; empty means the API is open.
#[derive(Default)]
pub struct ApiKeys {
    keys: Vec<ApiKey>,
}

impl ApiKeys {
    /// Keys given as flags (with the default limits) and those of the keys file.
    pub fn load(flag_keys: &[String], file: Option<&Path>, defaults: KeyLimits) -> Result<ApiKeys, KeysError> {
        let mut keys = ApiKeys::default();
        for (index, key) in flag_keys.iter().enumerate() {
            keys.push(key, format!("--api-key #{}", index + 1), defaults);
        }
        if let Some(path) = file {
            let shown = path.display().to_string();
            let text =
                std::fs::read_to_string(path).map_err(|source| KeysError::Read { path: shown.clone(), source })?;
            keys.read_file(&text, &shown, defaults)?;
        }
        Ok(keys)
    }

    fn read_file(&mut self, text: &str, path: &str, defaults: KeyLimits) -> Result<(), KeysError> {
        for (index, line) in text.lines().enumerate() {
            let line_number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let secret = words.next().unwrap_or_default();
            let mut limits = defaults;
            for word in words {
                parse_limit(word, &mut limits).map_err(|message| KeysError::Invalid {
                    path: path.to_string(),
                    line: line_number,
                    message,
                })?;
            }
            self.push(secret, format!("{path}:{line_number}"), limits);
        }
        Ok(())
    }

    fn push(&mut self, secret: &str, label: String, limits: KeyLimits) {
        self.keys.push(ApiKey { secret: secret.as_bytes().to_vec(), state: KeyState::new(label, limits) });
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The key `presented` matches. Every key is compared in full, so the time taken does not
    /// tell how much of a guess was right, nor which key it was close to.
    pub fn find(&self, presented: &str) -> Option<Arc<KeyState>> {
        let mut found = None;
        for key in &self.keys {
            if constant_time_eq(&key.secret, presented.as_bytes()) && found.is_none() {
                found = Some(key.state.clone());
            }
        }
        found
    }
}

/// One `name=value` limit of a keys-file line.
fn parse_limit(word: &str, limits: &mut KeyLimits) -> Result<(), String> {
    let (name, value) = word.split_once('=').ok_or_else(|| format!("`{word}` is not a limit like rpm=60"))?;
    let number: u64 = value
        .parse()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("`{name}` needs a positive whole number, not `{value}`"))?;
    match name {
        "rpm" => limits.requests_per_minute = Some(number),
        "tpm" => limits.tokens_per_minute = Some(number),
        "concurrent" => limits.concurrent_requests = Some(number as usize),
        _ => return Err(format!("unknown limit `{name}`; the limits are rpm, tpm and concurrent")),
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_lines_carry_their_limits_and_errors_name_the_line() {
        let defaults = KeyLimits { requests_per_minute: Some(100), ..KeyLimits::default() };
        let mut keys = ApiKeys::default();
        keys.read_file("# comment\n\nsk-a rpm=5 tpm=1000 concurrent=2\n  sk-b  \n", "keys.txt", defaults).unwrap();
        let a = keys.find("sk-a").unwrap();
        assert_eq!(
            a.limits,
            KeyLimits { requests_per_minute: Some(5), tokens_per_minute: Some(1000), concurrent_requests: Some(2) }
        );
        assert_eq!(a.label, "keys.txt:3");
        assert_eq!(keys.find("sk-b").unwrap().limits, defaults);
        assert!(keys.find("sk-c").is_none() && keys.find("sk-").is_none());

        for (line, expected) in
            [("sk rpm", "is not a limit"), ("sk rpm=0", "positive whole number"), ("sk rps=3", "unknown limit `rps`")]
        {
            let error = ApiKeys::default().read_file(line, "k", defaults).unwrap_err().to_string();
            assert!(error.starts_with("k:1: ") && error.contains(expected), "{error}");
            assert!(!error.contains("sk "), "the key itself is not echoed: {error}");
        }
    }
}
