//! The request a handler receives: a plain owned value, so handlers (and their tests) can build
//! and move it freely. The body is already read in full and un-chunked.

use std::net::SocketAddr;

/// The HTTP version of a request; decides the keep-alive default and whether chunked
/// responses are possible (HTTP/1.0 has no chunked encoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// Request headers in arrival order. Lookup ignores ASCII case, as HTTP field names do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, String)>,
}

impl Headers {
    pub fn new() -> Self {
        Headers::default()
    }

    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.entries.push((name.into(), value.into()));
    }

    /// The first value of the field `name`.
    pub fn get<'a>(&'a self, name: &str) -> Option<&'a str> {
        self.entries.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Every value of the field `name`, in arrival order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Whether the comma-separated list field `name` holds `token` (ASCII case ignored), as in
    /// `Connection: keep-alive, Upgrade`.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.get_all(name).flat_map(|value| value.split(',')).any(|item| item.trim().eq_ignore_ascii_case(token))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// One request, head and body, as the handler sees it.
#[derive(Debug, Clone)]
pub struct Request {
    /// As sent, case-sensitive (`GET`, `POST`, `HEAD`, ...).
    pub method: String,
    /// The target's path, not percent-decoded (`/v1/chat/completions`).
    pub path: String,
    /// What followed `?` in the target, not decoded.
    pub query: Option<String>,
    pub version: Version,
    pub headers: Headers,
    /// Complete and un-chunked; empty when the request had none.
    pub body: Vec<u8>,
    pub peer_addr: SocketAddr,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_ignores_case_and_keeps_order() {
        let mut headers = Headers::new();
        headers.push("Content-Type", "application/json");
        headers.push("X-Tag", "a");
        headers.push("x-tag", "b");
        assert_eq!(headers.get("content-type"), Some("application/json"));
        assert_eq!(headers.get_all("X-TAG").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(headers.get("missing"), None);
    }

    #[test]
    fn token_lists_are_split_and_trimmed() {
        let mut headers = Headers::new();
        headers.push("Connection", "Upgrade,  Keep-Alive ");
        assert!(headers.has_token("connection", "keep-alive"));
        assert!(!headers.has_token("connection", "close"));
    }
}
