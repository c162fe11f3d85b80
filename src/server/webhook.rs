//! Delivering native-API results to webhooks: an HTTP/1.1 POST with retries and timeouts, only to
//! hosts the operator allowed (`--webhook-allow`), so no user can aim the server at its own network.
//! Plain `http://` only: kiln carries no TLS stack; put a TLS-terminating proxy in front of an
//! `https://` receiver and allow the proxy.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

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
    #[error("webhook host `{0}` is not allowed by this server (the operator allows hosts with --webhook-allow)")]
    HostNotAllowed(String),
    #[error("delivering the webhook failed: {0}")]
    Delivery(String),
}

/// The hosts (`host` or `host:port`) the operator allows webhooks to reach.
#[derive(Debug, Clone, Default)]
pub struct WebhookPolicy {
    pub allowed: Vec<String>,
    pub timeout: Duration,
    pub attempts: u32,
    pub retry_backoff: Duration,
}

impl WebhookPolicy {
    pub fn check(&self, url: &str) -> Result<WebhookTarget, WebhookError> {
        let target = parse_http_url(url)?;
        let with_port = format!("{}:{}", target.host, target.port);
        let allowed =
            self.allowed.iter().any(|a| a.eq_ignore_ascii_case(&target.host) || a.eq_ignore_ascii_case(&with_port));
        if !allowed {
            return Err(WebhookError::HostNotAllowed(with_port));
        }
        Ok(target)
    }

    /// POSTs `body` as JSON, retrying failures and non-2xx answers with a growing pause.
    pub fn deliver(&self, target: &WebhookTarget, body: &[u8]) -> Result<u16, WebhookError> {
        let mut last_error = String::new();
        for attempt in 0..self.attempts.max(1) {
            if attempt > 0 {
                std::thread::sleep(self.retry_backoff * attempt);
            }
            match post_once(target, body, self.timeout) {
                Ok(status) if (200..300).contains(&status) => return Ok(status),
                Ok(status) => last_error = format!("the receiver answered {status}"),
                Err(e) => last_error = e,
            }
        }
        Err(WebhookError::Delivery(format!("{} attempts; last: {last_error}", self.attempts.max(1))))
    }
}

fn parse_http_url(url: &str) -> Result<WebhookTarget, WebhookError> {
    if url.starts_with("https://") {
        return Err(WebhookError::HttpsUnsupported(url.to_string()));
    }
    let rest = url.strip_prefix("http://").ok_or_else(|| WebhookError::InvalidUrl(url.to_string()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(WebhookError::InvalidUrl(url.to_string()));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
            (h.to_string(), p.parse::<u16>().map_err(|_| WebhookError::InvalidUrl(url.to_string()))?)
        }
        _ => (authority.to_string(), 80),
    };
    if host.is_empty() {
        return Err(WebhookError::InvalidUrl(url.to_string()));
    }
    Ok(WebhookTarget { host, port, path: path.to_string() })
}

fn post_once(target: &WebhookTarget, body: &[u8], timeout: Duration) -> Result<u16, String> {
    let address = (target.host.trim_start_matches('[').trim_end_matches(']'), target.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", target.host))?
        .next()
        .ok_or_else(|| format!("{} has no address", target.host))?;
    let mut stream = TcpStream::connect_timeout(&address, timeout).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
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
    // Only the status line matters; stop reading once it is in.
    while !reply.windows(2).any(|w| w == b"\r\n") && reply.len() < 8192 {
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
            allowed: allowed.iter().map(|s| s.to_string()).collect(),
            timeout: Duration::from_secs(2),
            attempts: 3,
            retry_backoff: Duration::from_millis(1),
        }
    }

    #[test]
    fn only_allowed_http_hosts() {
        let p = policy(&["hooks.example", "127.0.0.1:9000"]);
        assert_eq!(
            p.check("http://hooks.example/a?b=1").unwrap(),
            WebhookTarget { host: "hooks.example".into(), port: 80, path: "/a?b=1".into() }
        );
        assert!(p.check("http://127.0.0.1:9000").is_ok());
        assert_eq!(p.check("http://127.0.0.1:9001/x"), Err(WebhookError::HostNotAllowed("127.0.0.1:9001".into())));
        assert_eq!(
            p.check("http://169.254.169.254/latest"),
            Err(WebhookError::HostNotAllowed("169.254.169.254:80".into()))
        );
        assert!(matches!(p.check("https://hooks.example/"), Err(WebhookError::HttpsUnsupported(_))));
        assert!(matches!(p.check("ftp://x"), Err(WebhookError::InvalidUrl(_))));
        assert!(matches!(p.check("http://user@hooks.example/"), Err(WebhookError::InvalidUrl(_))));
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
