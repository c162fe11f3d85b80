//! Limits and timeouts of the HTTP layer: parsed once at start-up, shared read-only by every
//! connection. The defaults suit an LLM server: few, long requests with large prompt bodies and
//! long-lived streamed responses.

use std::time::Duration;

use super::error::HttpError;

/// Limits and timeouts for [`Server`](super::Server). Every field has a default; tests shorten
/// the timeouts.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest request head (request line and headers) in bytes; over it the answer is 431.
    pub max_head_bytes: usize,
    /// Most header lines in one request; over it the answer is 431. Real clients send far fewer
    /// (the OpenAI Python SDK sends 17) but proxies add their own, so the default is generous.
    pub max_headers: usize,
    /// Largest request body in bytes, counted after chunked decoding; over it the answer is 413.
    pub max_body_bytes: usize,
    /// Most connections open at once; a connection over it is answered 503 and closed.
    pub max_connections: usize,
    /// How long an idle keep-alive connection waits for its next request before it is closed
    /// (silently: no request is in progress, so there is no one to answer).
    pub keep_alive_timeout: Duration,
    /// Once the first byte of a request has arrived, how long its head and body may take to
    /// arrive in full; past it the answer is 408. A deadline, not a per-read stall limit, so a
    /// client trickling one byte at a time cannot hold a connection forever.
    pub request_timeout: Duration,
    /// How long one write may stall (client not reading) before it fails. While streaming, the
    /// failure is returned to the handler, which is how it learns the client is gone.
    pub write_timeout: Duration,
    /// After an error response we half-close and read (and drop) what the client still sends
    /// for up to this long, so that closing does not reset the connection and destroy the
    /// response before the client reads it.
    pub linger_timeout: Duration,
    /// On shutdown, how long running requests may take to finish before their connections are
    /// closed under them.
    pub drain_timeout: Duration,
    /// Stack of each connection coroutine, in bytes; the handler runs on it. See
    /// [`DEFAULT_COROUTINE_STACK_BYTES`](HttpConfig::DEFAULT_COROUTINE_STACK_BYTES).
    pub coroutine_stack_bytes: usize,
}

impl HttpConfig {
    /// 512 KiB. Handlers parse JSON (serde_json recurses up to 128 levels) and render chat
    /// templates (minijinja recurses through nested blocks and macros) on this stack. may's own
    /// default is 32 KiB, and a 127-deep JSON body parsed and printed already takes ~29 KiB here
    /// (measured at this crate's opt-level 2; unoptimised code takes several times more). An
    /// overflow hits a guard page: may abandons the coroutine, so the connection hangs until the
    /// client gives up. The stack is reserved with mmap and committed only as it is touched, so
    /// 10,000 connections reserve 5 GiB of address space but use physical memory only for what
    /// their handlers reach. 1 MiB would double the worst-case resident memory of may's pool of
    /// recycled coroutines (1,000 by default) for no handler we have.
    pub const DEFAULT_COROUTINE_STACK_BYTES: usize = 512 * 1024;

    /// Checks the values that would otherwise make the server misbehave (a zero limit rejects
    /// every request; a zero timeout is refused by the socket layer).
    pub fn validate(&self) -> Result<(), HttpError> {
        let checks: [(bool, &'static str); 9] = [
            (self.max_head_bytes >= 256, "max_head_bytes must be at least 256"),
            (self.max_headers >= 1, "max_headers must be at least 1"),
            (self.max_connections >= 1, "max_connections must be at least 1"),
            (!self.keep_alive_timeout.is_zero(), "keep_alive_timeout must be positive"),
            (!self.request_timeout.is_zero(), "request_timeout must be positive"),
            (!self.write_timeout.is_zero(), "write_timeout must be positive"),
            (!self.linger_timeout.is_zero(), "linger_timeout must be positive"),
            (!self.drain_timeout.is_zero(), "drain_timeout must be positive"),
            (self.coroutine_stack_bytes >= 64 * 1024, "coroutine_stack_bytes must be at least 64 KiB"),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, why)) => Err(HttpError::Config(why)),
            None => Ok(()),
        }
    }

    /// The stack size in the unit may takes: machine words, not bytes. Kept even, because may
    /// treats an odd size as a request to trace stack usage on every coroutine exit.
    pub(crate) fn coroutine_stack_words(&self) -> usize {
        (self.coroutine_stack_bytes / std::mem::size_of::<usize>()) & !1
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_head_bytes: 64 * 1024,
            max_headers: 100,
            // A 128k-token prompt is well under 1 MiB of JSON; base64 images need more.
            max_body_bytes: 32 * 1024 * 1024,
            // Below the common 1024 open-file soft limit, leaving room for model files and logs.
            max_connections: 1000,
            keep_alive_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            linger_timeout: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(30),
            coroutine_stack_bytes: Self::DEFAULT_COROUTINE_STACK_BYTES,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_allow_real_clients() {
        let config = HttpConfig::default();
        config.validate().unwrap();
        assert!(config.max_headers >= 64);
        assert_eq!(config.coroutine_stack_words() % 2, 0);
    }

    #[test]
    fn zero_timeout_is_rejected() {
        let config = HttpConfig { request_timeout: Duration::ZERO, ..HttpConfig::default() };
        assert!(matches!(config.validate(), Err(HttpError::Config(_))));
    }
}
