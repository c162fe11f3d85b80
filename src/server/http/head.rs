//! Request head parsing: bytes → method, target, headers, and the framing decision (how long
//! the body is, keep-alive, 100-continue). Pure functions, so every smuggling rule is unit
//! tested without a socket.

use super::error::RequestError;
use super::request::{Headers, Version};

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    Empty,
    /// Content-Length; saturated at `u64::MAX` when the digits overflow (it is over any limit).
    Length(u64),
    Chunked,
}

#[derive(Debug)]
pub(crate) struct ParsedHead {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub version: Version,
    pub headers: Headers,
    pub framing: BodyFraming,
    /// What the request allows; the server may still close (shutdown, errors).
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// Bytes the head took in the buffer, leading blank lines included.
    pub len: usize,
}

/// Parses a head from the start of `buf`. `Ok(None)`: not complete yet.
pub(crate) fn parse_head(buf: &[u8], max_headers: usize) -> Result<Option<ParsedHead>, RequestError> {
    let mut slots = vec![httparse::EMPTY_HEADER; max_headers];
    let mut raw = httparse::Request::new(&mut slots);
    let len = match raw.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::TooManyHeaders { limit: max_headers }),
        Err(err) => return Err(RequestError::MalformedHead(err)),
    };
    // A complete parse fills all three; `expect` states the invariant, not user input.
    let method = raw.method.expect("complete head has a method").to_owned();
    let target = raw.path.expect("complete head has a target");
    let version = match raw.version.expect("complete head has a version") {
        0 => Version::Http10,
        _ => Version::Http11,
    };
    let mut headers = Headers::new();
    for header in raw.headers.iter() {
        let value = String::from_utf8_lossy(header.value);
        headers.push(header.name, value.trim_matches([' ', '\t']));
    }
    let (path, query) = split_target(target);
    let framing = body_framing(&headers, version)?;
    let keep_alive = match version {
        Version::Http11 => !headers.has_token("connection", "close"),
        Version::Http10 => headers.has_token("connection", "keep-alive") && !headers.has_token("connection", "close"),
    };
    let expect_continue = expect_continue(&headers, version)?;
    Ok(Some(ParsedHead { method, path, query, version, headers, framing, keep_alive, expect_continue, len }))
}

/// Splits `/path?query`; an absolute-form target (`http://host/path`) keeps only its path.
fn split_target(target: &str) -> (String, Option<String>) {
    let origin_form = strip_scheme_and_authority(target).unwrap_or(target);
    let (path, query) = match origin_form.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (origin_form, None),
    };
    // `http://host?q` has an empty path, which means the root.
    (if path.is_empty() { "/" } else { path }.to_owned(), query)
}

fn strip_scheme_and_authority(target: &str) -> Option<&str> {
    let scheme_len = ["http://", "https://"].into_iter().find_map(|scheme| {
        // `get` rather than indexing: a target may hold non-ASCII bytes.
        let head = target.get(..scheme.len())?;
        head.eq_ignore_ascii_case(scheme).then_some(scheme.len())
    })?;
    let rest = &target[scheme_len..];
    Some(rest.find(['/', '?']).map_or("/", |at| &rest[at..]))
}

/// RFC 9112 §6: Transfer-Encoding wins over Content-Length, but a request carrying both is the
/// classic smuggling vector, so it is refused rather than resolved.
fn body_framing(headers: &Headers, version: Version) -> Result<BodyFraming, RequestError> {
    let mut content_length: Option<u64> = None;
    for value in headers.get_all("content-length") {
        let length = parse_content_length(value)?;
        if content_length.is_some_and(|seen| seen != length) {
            return Err(RequestError::ConflictingContentLength);
        }
        content_length = Some(length);
    }
    let mut codings = headers
        .get_all("transfer-encoding")
        .flat_map(|value| value.split(','))
        .map(|coding| coding.trim_matches([' ', '\t']))
        .peekable();
    if codings.peek().is_none() && headers.get("transfer-encoding").is_none() {
        return Ok(match content_length {
            Some(0) | None => BodyFraming::Empty,
            Some(length) => BodyFraming::Length(length),
        });
    }
    if content_length.is_some() {
        return Err(RequestError::LengthAndTransferEncoding);
    }
    if version == Version::Http10 {
        return Err(RequestError::TransferEncodingInHttp10);
    }
    let codings: Vec<&str> = codings.filter(|coding| !coding.is_empty()).collect();
    match codings.split_last() {
        Some((last, before)) if last.eq_ignore_ascii_case("chunked") => {
            if before.iter().any(|coding| coding.eq_ignore_ascii_case("chunked")) {
                Err(RequestError::BadTransferEncoding)
            } else if !before.is_empty() {
                Err(RequestError::UnsupportedTransferCoding)
            } else {
                Ok(BodyFraming::Chunked)
            }
        }
        _ => Err(RequestError::BadTransferEncoding),
    }
}

/// Digits only: no sign, no spaces inside, no list (`5, 5`). Too many digits saturate, which
/// the body limit then refuses with 413.
fn parse_content_length(value: &str) -> Result<u64, RequestError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RequestError::BadContentLength);
    }
    Ok(value.bytes().fold(0u64, |acc, digit| acc.saturating_mul(10).saturating_add(u64::from(digit - b'0'))))
}

/// HTTP/1.0 has no 100-continue (RFC 9110 §10.1.1 says to ignore it there).
fn expect_continue(headers: &Headers, version: Version) -> Result<bool, RequestError> {
    if version == Version::Http10 {
        return Ok(false);
    }
    let mut expect = false;
    for value in headers.get_all("expect") {
        if value.eq_ignore_ascii_case("100-continue") {
            expect = true;
        } else if !value.is_empty() {
            return Err(RequestError::UnsupportedExpectation);
        }
    }
    Ok(expect)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<ParsedHead>, RequestError> {
        parse_head(text.as_bytes(), 64)
    }

    fn framing(text: &str) -> Result<BodyFraming, RequestError> {
        parse(text).map(|head| head.expect("complete head").framing)
    }

    #[test]
    fn parses_target_headers_and_length() {
        let text = "POST /v1/chat?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\nbody";
        let head = parse(text).unwrap().unwrap();
        assert_eq!(head.method, "POST");
        assert_eq!(head.path, "/v1/chat");
        assert_eq!(head.query.as_deref(), Some("x=1"));
        assert_eq!(head.version, Version::Http11);
        assert_eq!(head.headers.get("host"), Some("a"));
        assert_eq!(head.framing, BodyFraming::Length(12));
        assert_eq!(head.len, text.len() - 4);
        assert!(head.keep_alive && !head.expect_continue);
    }

    #[test]
    fn partial_head_is_not_an_error() {
        assert!(parse("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
    }

    #[test]
    fn content_length_must_be_digits_and_agree() {
        for bad in ["abc", "-1", "+5", "5 5", "0x10", "5, 5", ""] {
            let text = format!("POST / HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n");
            assert!(matches!(framing(&text), Err(RequestError::BadContentLength)), "{bad:?}");
        }
        let twice = "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n";
        assert!(matches!(framing(twice), Err(RequestError::ConflictingContentLength)));
        let agree = "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 003\r\n\r\n";
        assert_eq!(framing(agree).unwrap(), BodyFraming::Length(3));
        let huge = "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n";
        assert_eq!(framing(huge).unwrap(), BodyFraming::Length(u64::MAX));
    }

    #[test]
    fn transfer_encoding_rules() {
        let chunked = "POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n";
        assert_eq!(framing(chunked).unwrap(), BodyFraming::Chunked);
        let both = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n";
        assert!(matches!(framing(both), Err(RequestError::LengthAndTransferEncoding)));
        let old = "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(framing(old), Err(RequestError::TransferEncodingInHttp10)));
        let gzip = "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert!(matches!(framing(gzip), Err(RequestError::UnsupportedTransferCoding)));
        let not_last = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n";
        assert!(matches!(framing(not_last), Err(RequestError::BadTransferEncoding)));
        let twice = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(framing(twice), Err(RequestError::BadTransferEncoding)));
        let empty = "POST / HTTP/1.1\r\nTransfer-Encoding: \r\n\r\n";
        assert!(matches!(framing(empty), Err(RequestError::BadTransferEncoding)));
    }

    #[test]
    fn keep_alive_defaults_follow_the_version() {
        let keep = |text: &str| parse(text).unwrap().unwrap().keep_alive;
        assert!(keep("GET / HTTP/1.1\r\n\r\n"));
        assert!(!keep("GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!keep("GET / HTTP/1.0\r\n\r\n"));
        assert!(keep("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    }

    #[test]
    fn expectations() {
        let head = parse("POST / HTTP/1.1\r\nExpect: 100-Continue\r\n\r\n").unwrap().unwrap();
        assert!(head.expect_continue);
        let other = parse("POST / HTTP/1.1\r\nExpect: magic\r\n\r\n");
        assert!(matches!(other, Err(RequestError::UnsupportedExpectation)));
        let old = parse("POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").unwrap().unwrap();
        assert!(!old.expect_continue);
    }

    #[test]
    fn header_limit_and_garbage() {
        let many: String = (0..65).map(|i| format!("X-{i}: v\r\n")).collect();
        let text = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(parse(&text), Err(RequestError::TooManyHeaders { limit: 64 })));
        assert!(matches!(parse("\x16\x03\x01 hello\r\n\r\n"), Err(RequestError::MalformedHead(_))));
        assert!(matches!(parse("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"), Err(RequestError::MalformedHead(_))));
    }

    #[test]
    fn absolute_form_target_keeps_the_path() {
        assert_eq!(split_target("http://host:80/a/b?c"), ("/a/b".to_owned(), Some("c".to_owned())));
        assert_eq!(split_target("HTTPS://host"), ("/".to_owned(), None));
        assert_eq!(split_target("/plain"), ("/plain".to_owned(), None));
    }
}
