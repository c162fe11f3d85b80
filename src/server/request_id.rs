//! Every request's id: the client's `X-Request-Id` when it is safe to echo (printable ASCII
//! without spaces, at most `MAX_REQUEST_ID_BYTES`), else a fresh one. It goes back in the
//! `X-Request-Id` response header, into the access log line, and into the ids of the objects the
//! request creates (`chatcmpl-<id>`, `cmpl-<id>`, the native `request_id`).

use super::http::Headers;

/// The longest client id echoed back: a UUID (36) or a W3C trace id (55) fits with room to spare,
/// and a log line stays short.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// The client's id if it sent a usable one, else a new one of 24 hex digits. An unusable id is
/// replaced rather than refused: the id is for correlation, not worth failing a request over.
pub fn request_id(headers: &Headers) -> String {
    match headers.get("x-request-id") {
        Some(id) if is_echoable(id) => id.to_string(),
        _ => new_id(),
    }
}

/// Visible ASCII only: nothing that could split a header or a log line, or fake another field.
fn is_echoable(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_REQUEST_ID_BYTES && id.bytes().all(|b| b.is_ascii_graphic())
}

/// A fresh id of 24 hex digits (also behind tool call ids, `call_<id>`).
pub fn new_id() -> String {
    let mut rng = crate::engine::rng::Rng::from_entropy();
    format!("{:016x}{:08x}", rng.next_u64(), rng.next_u64() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> Headers {
        let mut headers = Headers::new();
        headers.push("X-Request-Id", value);
        headers
    }

    #[test]
    fn a_usable_client_id_is_echoed_and_anything_else_replaced() {
        assert_eq!(request_id(&with("trace-42/a.b_c:d")), "trace-42/a.b_c:d");
        let at_bound = "x".repeat(MAX_REQUEST_ID_BYTES);
        assert_eq!(request_id(&with(&at_bound)), at_bound);
        let is_generated = |id: &str| id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit());
        for bad in ["", "has space", "tab\there", "é", "line\u{7f}", &"x".repeat(MAX_REQUEST_ID_BYTES + 1)] {
            assert!(is_generated(&request_id(&with(bad))), "{bad:?}");
        }
        assert!(is_generated(&request_id(&Headers::new())));
        assert_ne!(request_id(&Headers::new()), request_id(&Headers::new()));
    }
}
