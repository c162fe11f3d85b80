//! A whole response as a handler builds it, and the serialization of response heads. Framing
//! headers (Content-Length, Transfer-Encoding, Connection) and Date/Server are written here
//! from what the layer knows, never taken from the handler, so a handler cannot desynchronize
//! the connection.

use std::borrow::Cow;
use std::io::Write;
use std::time::SystemTime;

use super::date::http_date;
use super::error::ResponseError;

pub(crate) const SERVER_NAME: &str = concat!("kiln/", env!("CARGO_PKG_VERSION"));

/// Header fields this layer writes itself; a handler's own are dropped.
const MANAGED_HEADERS: [&str; 5] = ["content-length", "transfer-encoding", "connection", "date", "server"];

/// A status, headers and a body. For a streamed response the same type carries the head (its
/// body, if any, is sent as the first chunk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(Cow<'static, str>, Cow<'static, str>)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16) -> Self {
        Response { status, headers: Vec::new(), body: Vec::new() }
    }

    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Response::new(status).header("Content-Type", "application/json").body(body)
    }

    pub fn text(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Response::new(status).header("Content-Type", "text/plain; charset=utf-8").body(body)
    }

    pub fn header(mut self, name: impl Into<Cow<'static, str>>, value: impl Into<Cow<'static, str>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Final statuses only (1xx are the layer's business), and no header that could split the
    /// response.
    pub(crate) fn validate(&self) -> Result<(), ResponseError> {
        if !(200..=599).contains(&self.status) {
            return Err(ResponseError::InvalidStatus(self.status));
        }
        for (name, value) in &self.headers {
            let name_ok = !name.is_empty() && name.bytes().all(is_token_byte);
            let value_ok = !value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0));
            if !name_ok || !value_ok {
                return Err(ResponseError::InvalidHeader(name.to_string()));
            }
        }
        Ok(())
    }

    /// The handler may end the connection after its response with `Connection: close`.
    pub(crate) fn asks_to_close(&self) -> bool {
        self.headers.iter().any(|(name, value)| {
            name.eq_ignore_ascii_case("connection")
                && value.split(',').any(|token| token.trim().eq_ignore_ascii_case("close"))
        })
    }
}

/// An error the layer itself answers (bad framing, limits, handler panics), in the OpenAI
/// error shape so SDK clients can show it. `message` is fixed text, never request content.
pub(crate) fn error_response(status: u16, message: &str) -> Response {
    let kind = if status >= 500 { "server_error" } else { "invalid_request_error" };
    // OpenAI's `code` is a string (or null); clients match on it.
    let code = match status {
        400 => "bad_request",
        408 => "request_timeout",
        413 => "request_too_large",
        417 => "expectation_failed",
        431 => "request_header_fields_too_large",
        501 => "not_implemented",
        503 => "server_busy",
        _ => "internal_error",
    };
    let body = serde_json::json!({ "error": { "message": message, "type": kind, "param": null, "code": code } });
    Response::json(status, body.to_string())
}

/// Appends such an error, always with `Connection: close`: the layer answers only when the
/// connection cannot continue.
pub(crate) fn write_layer_error(out: &mut Vec<u8>, status: u16, message: &str, head_only: bool) {
    let response = error_response(status, message);
    write_head(out, status, &response.headers, BodyLength::Length(response.body.len()), ConnectionHeader::Close);
    if !head_only {
        out.extend_from_slice(&response.body);
    }
}

/// How the body after a head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyLength {
    /// The status has no body (1xx, 204, 304).
    None,
    Length(usize),
    Chunked,
    /// HTTP/1.0 streaming: the body ends when the connection closes.
    UntilClose,
}

/// What the Connection header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectionHeader {
    /// HTTP/1.1 keep-alive is the default: nothing to say.
    Omit,
    KeepAlive,
    Close,
}

pub(crate) fn status_allows_body(status: u16) -> bool {
    !((100..200).contains(&status) || status == 204 || status == 304)
}

/// Appends a response head to `out`. `headers` must have passed [`Response::validate`].
pub(crate) fn write_head(
    out: &mut Vec<u8>,
    status: u16,
    headers: &[(Cow<'static, str>, Cow<'static, str>)],
    length: BodyLength,
    connection: ConnectionHeader,
) {
    // Writes into a Vec cannot fail.
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", reason_phrase(status));
    out.extend_from_slice(b"Date: ");
    out.extend_from_slice(&http_date(SystemTime::now()));
    out.extend_from_slice(b"\r\nServer: ");
    out.extend_from_slice(SERVER_NAME.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if MANAGED_HEADERS.iter().any(|managed| name.eq_ignore_ascii_case(managed)) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match length {
        BodyLength::Length(len) => {
            let _ = write!(out, "Content-Length: {len}\r\n");
        }
        BodyLength::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        BodyLength::None | BodyLength::UntilClose => {}
    }
    match connection {
        ConnectionHeader::Omit => {}
        ConnectionHeader::KeepAlive => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        ConnectionHeader::Close => out.extend_from_slice(b"Connection: close\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// RFC 9110 token characters (header names).
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        // The reason phrase is optional (RFC 9112 §4); clients read the code.
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(response: &Response, length: BodyLength, connection: ConnectionHeader) -> String {
        let mut out = Vec::new();
        write_head(&mut out, response.status, &response.headers, length, connection);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn head_has_status_date_server_and_framing() {
        let response = Response::json(200, "{}").header("Content-Length", "999").header("X-Id", "7");
        let text = head(&response, BodyLength::Length(2), ConnectionHeader::Close);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\nDate: "), "{text}");
        assert!(text.contains(" GMT\r\nServer: kiln/"));
        assert!(text.contains("\r\nContent-Type: application/json\r\nX-Id: 7\r\n"));
        assert!(text.ends_with("\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"));
        assert!(!text.contains("999"), "the handler's framing header is dropped");
    }

    #[test]
    fn validation_refuses_response_splitting() {
        assert!(Response::new(200).header("X", "a\r\nSet-Cookie: x").validate().is_err());
        assert!(Response::new(200).header("Bad Name", "v").validate().is_err());
        assert!(Response::new(101).validate().is_err());
        assert!(Response::text(404, "no").validate().is_ok());
    }

    #[test]
    fn error_body_is_openai_shaped_json() {
        let response = error_response(413, "too big");
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(body["error"]["message"], "too big");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
}
