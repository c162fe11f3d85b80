//! Delivering native-API results to webhooks: an HTTP/1.1 POST with retries and timeouts, never
//! to the server's own network unless the operator allows it (`webhook_destination`). Redirects
//! are not followed and only the status line of the answer is read, within a deadline.
//! Plain `http://` only: kiln carries no TLS stack; put a TLS-terminating proxy in front of an
//! `https://` receiver and allow the proxy.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::webhook_destination::{is_internal, Allowed};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    pub host: String,
    pub port: u16,
    pub path: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookError {
    #[error("webhook URL `{0}` is not a valid http:// URL")]
    InvalidUrl(String),
    #[error(
        "webhook URL `{0}` uses https; kiln delivers webhooks over plain http (put a TLS proxy in front and allow it)"
    )]
    HttpsUnsupported(String),
    #[error("webhook host `{0}` is an internal address that webhooks may not reach (the operator allows one with --webhook-allow)")]
    HostNotAllowed(String),
    #[error("delivering the webhook failed: {0}")]
    Delivery(String),
}

/// Where webhooks may go and how hard delivery tries.
#[derive(Debug, Clone, Default)]
pub struct WebhookPolicy {
    pub allowed: Allowed,
    /// For connecting, and for the whole answer of one attempt.
    pub timeout: Duration,
    pub attempts: u32,
    pub retry_backoff: Duration,
}

/// The most of a receiver's answer read: its status line must fit.
const MAX_REPLY_BYTES: usize = 8192;

impl WebhookPolicy {
    /// Checks what can be checked when the request arrives, without a DNS lookup (which would
    /// block the connection's coroutine): the URL, and an address written in it. A name is
    /// checked when delivery resolves it.
    pub fn check(&self, url: &str) -> Result<WebhookTarget, WebhookError> {
        let target = parse_http_url(url)?;
        let literal = target.host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>();
        if let Ok(address) = literal {
            if is_internal(address) && !self.allowed.names(&target.host, target.port) && !self.allowed.permits(address)
            {
                return Err(WebhookError::HostNotAllowed(format!("{}:{}", target.host, target.port)));
            }
        }
        Ok(target)
    }

    /// Resolves the host once, then POSTs `body` as JSON to that address, retrying failures and
    /// 5xx/429 answers with a growing pause. A redirect or another 4xx ends delivery at once.
    pub fn deliver(&self, target: &WebhookTarget, body: &[u8]) -> Result<u16, WebhookError> {
        let address = self.allowed.resolve(&target.host, target.port).map_err(WebhookError::Delivery)?;
        let mut last_error = String::new();
        for attempt in 0..self.attempts.max(1) {
            if attempt > 0 {
                std::thread::sleep(self.retry_backoff * attempt);
            }
            match post_once(address, target, body, self.timeout) {
                Ok(status) if (200..300).contains(&status) => return Ok(status),
                Ok(status) if (300..400).contains(&status) => {
                    return Err(WebhookError::Delivery(format!(
                        "the receiver answered {status}; redirects are not followed"
                    )))
                }
                Ok(status) if status != 429 && (400..500).contains(&status) => {
                    return Err(WebhookError::Delivery(format!("the receiver answered {status}")))
                }
                Ok(status) => last_error = format!("the receiver answered {status}"),
                Err(e) => last_error = e,
            }
        }
        Err(WebhookError::Delivery(format!("{} attempts; last: {last_error}", self.attempts.max(1))))
    }
}

pub(crate) fn parse_http_url(url: &str) -> Result<WebhookTarget, WebhookError> {
    let invalid = || WebhookError::InvalidUrl(url.to_string());
    if url.starts_with("https://") {
        return Err(WebhookError::HttpsUnsupported(url.to_string()));
    }
    let rest = url.strip_prefix("http://").ok_or_else(invalid)?;
    // The authority ends where the path, the query or the fragment starts (RFC 3986 §3.2).
    let (authority, path) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    // The fragment is the client's own; it is never sent.
    let path = path.split('#').next().unwrap_or_default();
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid());
    }
    let (host, port) = host_and_port(authority).ok_or_else(invalid)?;
    let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
    Ok(WebhookTarget { host: host.to_string(), port, path })
}

/// `host[:port]`: a DNS name or IPv4 address, or an IPv6 address in brackets. Nothing else is a
/// host, which keeps user info (`user@`), spaces and control characters out of the Host header
/// and the allow-list comparison.
fn host_and_port(authority: &str) -> Option<(&str, u16)> {
    let host_end = if authority.starts_with('[') {
        let end = authority.find(']')? + 1;
        authority[1..end - 1].parse::<std::net::Ipv6Addr>().ok()?;
        end
    } else {
        let end = authority.find(':').unwrap_or(authority.len());
        let name_byte = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
        if end == 0 || !authority[..end].bytes().all(name_byte) {
            return None;
        }
        end
    };
    let (host, port) = authority.split_at(host_end);
    let port = match port.strip_prefix(':') {
        None if port.is_empty() => 80,
        // Digits only: `u16::from_str` would also take a sign.
        Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => digits.parse().ok()?,
        _ => return None,
    };
    Some((host, port))
}

/// One POST to `address` (already resolved and checked); the status of the answer.
fn post_once(address: SocketAddr, target: &WebhookTarget, body: &[u8], timeout: Duration) -> Result<u16, String> {
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&address, timeout).map_err(|e| format!("connect to {address}: {e}"))?;
    stream.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: kiln-webhook\r\n\r\n",
        target.path,
        target.host,
        target.port,
        body.len()
    );
    stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(body)).map_err(|e| format!("send: {e}"))?;
    let mut reply = Vec::new();
    let mut buffer = [0u8; 1024];
    // Only the status line matters: stop once it is in, at the size bound, or at the deadline (a
    // receiver trickling bytes cannot hold the delivery thread longer).
    while !reply.windows(2).any(|w| w == b"\r\n") {
        if reply.len() >= MAX_REPLY_BYTES {
            return Err(format!("no status line in the first {MAX_REPLY_BYTES} bytes of the answer"));
        }
        let left = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero());
        let left = left.ok_or_else(|| format!("no answer within {} s", timeout.as_secs_f64()))?;
        stream.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        let n = stream.read(&mut buffer).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buffer[..n]);
    }
    let line = String::from_utf8_lossy(&reply);
    line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| "no HTTP status in the reply".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn policy(allowed: &[&str]) -> WebhookPolicy {
        WebhookPolicy {
            allowed: Allowed::parse(&allowed.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap(),
            timeout: Duration::from_secs(2),
            attempts: 3,
            retry_backoff: Duration::from_millis(1),
        }
    }

    #[test]
    fn internal_addresses_need_the_operators_leave() {
        let p = policy(&["127.0.0.1:9000", "192.168.7.0/24"]);
        assert_eq!(
            p.check("http://hooks.example/a?b=1").unwrap(),
            WebhookTarget { host: "hooks.example".into(), port: 80, path: "/a?b=1".into() }
        );
        assert!(p.check("http://8.8.8.8/hook").is_ok(), "public addresses need no rule");
        assert!(p.check("http://127.0.0.1:9000").is_ok());
        assert!(p.check("http://192.168.7.9/x").is_ok());
        for refused in [
            "http://127.0.0.1:9001/x",
            "http://169.254.169.254/latest/meta-data",
            "http://10.0.0.1/",
            "http://192.168.8.1/",
            "http://[::1]/",
            "http://[fd00::1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://0.0.0.0:8000/",
        ] {
            assert!(matches!(p.check(refused), Err(WebhookError::HostNotAllowed(_))), "{refused}");
        }
        assert!(matches!(p.check("https://hooks.example/"), Err(WebhookError::HttpsUnsupported(_))));
        assert!(matches!(p.check("ftp://x"), Err(WebhookError::InvalidUrl(_))));
        assert!(matches!(p.check("http://user@hooks.example/"), Err(WebhookError::InvalidUrl(_))));
    }

    /// A local receiver that answers each connection with the next of `answers` (raw bytes after
    /// reading the request) and counts connections.
    fn receiver(answers: Vec<Vec<u8>>) -> (u16, std::thread::JoinHandle<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let thread = std::thread::spawn(move || {
            let mut connections = 0;
            listener.set_nonblocking(false).unwrap();
            for answer in answers {
                let Ok((mut s, _)) = listener.accept() else { break };
                connections += 1;
                let mut data = Vec::new();
                let mut buf = [0u8; 4096];
                while !String::from_utf8_lossy(&data).contains("{}") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => data.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(&answer);
            }
            connections
        });
        (port, thread)
    }

    #[test]
    fn a_name_resolving_inside_is_refused_at_delivery() {
        let (port, receiver) = receiver(vec![b"HTTP/1.1 200 OK\r\n\r\n".to_vec()]);
        let refused = policy(&[]);
        let target = refused.check(&format!("http://localhost:{port}/hook")).expect("a name passes the first check");
        let error = refused.deliver(&target, b"{}").unwrap_err().to_string();
        assert!(error.contains("internal address"), "{error}");
        // Allowed by name, it is delivered, to the address resolved once.
        let allowed = policy(&["localhost"]);
        assert_eq!(allowed.deliver(&target, b"{}"), Ok(200));
        assert_eq!(receiver.join().unwrap(), 1, "the refused delivery never connected");
    }

    #[test]
    fn redirects_are_not_followed_and_the_answer_is_bounded() {
        let redirect = b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/\r\n\r\n".to_vec();
        let endless = vec![b'x'; 100_000];
        let (port, receiver) = receiver(vec![redirect, endless]);
        let p = policy(&["127.0.0.1"]);
        let target = p.check(&format!("http://127.0.0.1:{port}/hook")).unwrap();
        let error = p.deliver(&target, b"{}").unwrap_err().to_string();
        assert!(error.contains("redirects are not followed"), "{error}");
        let p = WebhookPolicy { attempts: 1, ..p };
        let error = p.deliver(&target, b"{}").unwrap_err().to_string();
        assert!(error.contains("no status line in the first 8192 bytes"), "{error}");
        assert_eq!(receiver.join().unwrap(), 2, "one connection each: a redirect is not retried");
    }

    /// Found by the `webhook_url` fuzz target: control characters reached the host (and so the
    /// Host header), and a host ending in `]` read back with a port as a different host.
    #[test]
    fn fuzz_found_hosts_are_refused() {
        for url in [&b"http://\0\0\0\0[::1]:450\x10/x"[..], b"http://1&]", b"http://a b/", b"http://[::1/"] {
            let url = std::str::from_utf8(url).unwrap();
            assert!(matches!(parse_http_url(url), Err(WebhookError::InvalidUrl(_))), "{url:?}");
        }
        let v6 = parse_http_url("http://[::1]/hook").unwrap();
        assert_eq!((v6.host.as_str(), v6.port, v6.path.as_str()), ("[::1]", 80, "/hook"));
        let query = parse_http_url("http://hooks.example?token=1").unwrap();
        assert_eq!((query.host.as_str(), query.path.as_str()), ("hooks.example", "/?token=1"));
    }

    #[test]
    fn delivers_with_retries() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let mut bodies = Vec::new();
            // First attempt gets a 503, the second a 200.
            for status in ["503 Service Unavailable", "200 OK"] {
                let (mut s, _) = listener.accept().unwrap();
                let mut data = Vec::new();
                let mut buf = [0u8; 4096];
                while !String::from_utf8_lossy(&data).contains("{\"ok\":true}") {
                    let n = s.read(&mut buf).unwrap();
                    assert!(n > 0, "client closed early");
                    data.extend_from_slice(&buf[..n]);
                }
                s.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes()).unwrap();
                bodies.push(String::from_utf8(data).unwrap());
            }
            bodies
        });
        let p = policy(&[&format!("127.0.0.1:{port}")]);
        let target = p.check(&format!("http://127.0.0.1:{port}/hook")).unwrap();
        assert_eq!(p.deliver(&target, br#"{"ok":true}"#), Ok(200));
        let bodies = server.join().unwrap();
        assert!(bodies[1].starts_with("POST /hook HTTP/1.1\r\n"));
    }
}
