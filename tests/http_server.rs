//! The HTTP layer against raw sockets (std::net::TcpStream, no HTTP client library), so every
//! byte on the wire is the test's choice. Each error case is followed by a check that the
//! server still answers a normal request. Nothing sleeps to wait: clients read until the server
//! answers (bounded by socket timeouts), and handlers report through channels.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc as std_mpsc;
use std::thread;
use std::time::Duration;

use kiln::server::http::{HttpConfig, HttpError, Request, Responder, Response, ResponseError, Server, WaitError};

/// A broken server fails a test after this long instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on the reads of any one client loop.
const MAX_READS: usize = 100_000;

// ---------------------------------------------------------------------------------------------
// A minimal raw client.

struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The chunks as framed on the wire, for chunked bodies.
    chunks: Vec<Vec<u8>>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect to the test server");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        Client { stream, buf: Vec::new() }
    }

    fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream.write_all(bytes.as_ref()).expect("send to the test server");
    }

    /// One read; false at end of stream (or reset, which ends it too).
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(err) if err.kind() == ErrorKind::ConnectionReset => false,
            Err(err) => panic!("read from the test server failed: {err}"),
        }
    }

    fn fill_or_panic(&mut self, waiting_for: &str) {
        assert!(
            self.fill(),
            "connection closed while waiting for {waiting_for}; buffered: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }

    fn take_head(&mut self) -> (u16, Vec<(String, String)>) {
        for _ in 0..MAX_READS {
            if let Some(at) = find(&self.buf, b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..at + 4).collect();
                let text = String::from_utf8(head).expect("response head is UTF-8");
                let mut lines = text.split("\r\n");
                let status_line = lines.next().unwrap();
                assert!(status_line.starts_with("HTTP/1.1 "), "status line {status_line:?}");
                let status = status_line[9..12].parse().expect("numeric status");
                let headers = lines
                    .filter(|line| !line.is_empty())
                    .map(|line| {
                        let (name, value) = line.split_once(':').expect("header line has a colon");
                        (name.to_owned(), value.trim().to_owned())
                    })
                    .collect();
                return (status, headers);
            }
            self.fill_or_panic("a response head");
        }
        panic!("no response head within {MAX_READS} reads");
    }

    fn take_exact(&mut self, len: usize) -> Vec<u8> {
        for _ in 0..MAX_READS {
            if self.buf.len() >= len {
                return self.buf.drain(..len).collect();
            }
            self.fill_or_panic("the rest of a body");
        }
        panic!("body incomplete after {MAX_READS} reads");
    }

    fn take_line(&mut self) -> String {
        for _ in 0..MAX_READS {
            if let Some(at) = find(&self.buf, b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..at + 2).collect();
                return String::from_utf8_lossy(&line[..at]).into_owned();
            }
            self.fill_or_panic("a chunk size line");
        }
        panic!("no line within {MAX_READS} reads");
    }

    fn take_chunk(&mut self) -> Option<Vec<u8>> {
        let size = usize::from_str_radix(&self.take_line(), 16).expect("hex chunk size");
        if size == 0 {
            assert_eq!(self.take_line(), "", "no trailers after the last chunk");
            return None;
        }
        let data = self.take_exact(size);
        assert_eq!(self.take_exact(2), b"\r\n");
        Some(data)
    }

    fn take_until_eof(&mut self) -> Vec<u8> {
        for _ in 0..MAX_READS {
            if !self.fill() {
                return std::mem::take(&mut self.buf);
            }
        }
        panic!("no end of stream within {MAX_READS} reads");
    }

    /// A response to a request that may have a body.
    fn response(&mut self) -> Reply {
        self.read_reply(true)
    }

    /// A response to HEAD: headers only.
    fn head_response(&mut self) -> Reply {
        self.read_reply(false)
    }

    fn read_reply(&mut self, body_expected: bool) -> Reply {
        let (status, headers) = self.take_head();
        let mut reply = Reply { status, headers, body: Vec::new(), chunks: Vec::new() };
        if !body_expected || status == 204 || status == 304 {
            return reply;
        }
        if reply.header("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
            for _ in 0..MAX_READS {
                match self.take_chunk() {
                    Some(chunk) => {
                        reply.body.extend_from_slice(&chunk);
                        reply.chunks.push(chunk);
                    }
                    None => return reply,
                }
            }
            panic!("chunked body did not end within {MAX_READS} chunks");
        }
        match reply.header("content-length") {
            Some(len) => reply.body = self.take_exact(len.parse().expect("numeric Content-Length")),
            None => reply.body = self.take_until_eof(),
        }
        reply
    }

    /// The server closed the connection with nothing more to say.
    fn assert_closed(&mut self) {
        let rest = self.take_until_eof();
        assert!(rest.is_empty(), "expected a close, got {:?}", String::from_utf8_lossy(&rest));
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")
}

fn post(path: &str, body: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n{body}", body.len())
}

// ---------------------------------------------------------------------------------------------
// Servers and handlers.

fn test_config() -> HttpConfig {
    HttpConfig {
        max_head_bytes: 8 * 1024,
        max_headers: 64,
        max_body_bytes: 64 * 1024,
        max_connections: 256,
        keep_alive_timeout: IO_TIMEOUT,
        request_timeout: IO_TIMEOUT,
        write_timeout: IO_TIMEOUT,
        linger_timeout: Duration::from_millis(500),
        drain_timeout: IO_TIMEOUT,
        ..HttpConfig::default()
    }
}

fn start(config: HttpConfig, handler: impl kiln::server::http::Handler) -> Server {
    Server::bind("127.0.0.1:0".parse().unwrap(), config, handler).expect("bind the test server")
}

fn start_routes() -> Server {
    start(test_config(), routes)
}

/// The shared test handler.
fn routes(request: Request, responder: &mut Responder<'_>) {
    // A write error means the client left; nothing more to do for it.
    let _ = route(request, responder);
}

fn route(request: Request, responder: &mut Responder<'_>) -> Result<(), ResponseError> {
    match request.path.as_str() {
        "/hello" => responder.send(Response::text(200, "hello world")),
        "/echo" => {
            let version = match request.version {
                kiln::server::http::Version::Http10 => "1.0",
                kiln::server::http::Version::Http11 => "1.1",
            };
            let echoed = request.headers.get("x-echo").unwrap_or("").to_owned();
            let response = Response::new(200)
                .header("X-Method", request.method.clone())
                .header("X-Query", request.query.clone().unwrap_or_default())
                .header("X-Version", version)
                .header("X-Header-Count", request.headers.len().to_string())
                .header("X-Echoed", echoed)
                .body(request.body);
            responder.send(response)
        }
        "/stream" => {
            let count: usize = request.query.as_deref().and_then(|q| q.strip_prefix("n=")?.parse().ok()).unwrap_or(3);
            let head = Response::new(200).header("Content-Type", "text/event-stream");
            let mut stream = responder.stream(head)?;
            for i in 0..count {
                stream.send(format!("data: {i}\n\n").as_bytes())?;
            }
            stream.finish()
        }
        // Pipelining: a slow first request must still be answered first.
        "/slow" => {
            may::coroutine::sleep(Duration::from_millis(50));
            responder.send(Response::text(200, "slow"))
        }
        "/panic" => panic!("test handler panics on purpose"),
        "/no-answer" => Ok(()),
        "/bad-header" => {
            let refused = responder.send(Response::new(200).header("X-Split", "a\r\nSet-Cookie: b"));
            assert!(matches!(refused, Err(ResponseError::InvalidHeader(_))), "{refused:?}");
            responder.send(Response::text(200, "refused"))
        }
        // Recursive parse and print on the coroutine stack.
        "/deep-json" => match serde_json::from_slice::<serde_json::Value>(&request.body) {
            Ok(value) => responder.send(Response::json(200, serde_json::to_vec(&value).unwrap_or_default())),
            Err(err) => responder.send(Response::text(400, err.to_string())),
        },
        // A stand-in for a deep handler (template rendering, tokenizer): ~256 KiB of stack.
        "/deep-stack" => responder.send(Response::text(200, use_stack(256).to_string())),
        _ => responder.send(Response::text(404, "not found")),
    }
}

/// Recursion with a 1 KiB frame per level that the optimiser cannot remove.
fn use_stack(depth: usize) -> u32 {
    let frame = std::hint::black_box([depth as u8; 1024]);
    if depth == 0 {
        return 0;
    }
    use_stack(depth - 1) + u32::from(frame[1023] == depth as u8)
}

/// The server still answers a normal request on a new connection.
fn assert_alive(addr: SocketAddr) {
    let mut client = Client::connect(addr);
    client.send(get("/hello"));
    let reply = client.response();
    assert_eq!((reply.status, reply.text().as_str()), (200, "hello world"));
}

/// Sends `request` on a new connection; the server must answer `status` and close.
fn assert_rejected(addr: SocketAddr, request: impl AsRef<[u8]>, status: u16) {
    let mut client = Client::connect(addr);
    client.send(request);
    let reply = client.response();
    assert_eq!(reply.status, status, "body: {}", reply.text());
    assert_eq!(reply.header("connection"), Some("close"));
    let error: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON error body");
    assert!(error["error"]["message"].is_string());
    client.assert_closed();
    assert_alive(addr);
}

// ---------------------------------------------------------------------------------------------
// Basics.

#[test]
fn get_has_date_server_length_and_keeps_alive() {
    let server = start_routes();
    let mut client = Client::connect(server.local_addr());
    for _ in 0..3 {
        client.send(get("/hello"));
        let reply = client.response();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), "hello world");
        assert_eq!(reply.header("content-length"), Some("11"));
        assert_eq!(reply.header("connection"), None, "HTTP/1.1 keep-alive is the default");
        let date = reply.header("date").expect("Date header");
        assert!(date.len() == 29 && date.ends_with(" GMT"), "{date:?}");
        assert!(reply.header("server").expect("Server header").starts_with("kiln/"));
    }
    client.send(get("/missing"));
    assert_eq!(client.response().status, 404);
}

#[test]
fn query_headers_and_body_reach_the_handler() {
    let server = start_routes();
    let mut client = Client::connect(server.local_addr());
    client.send("POST /echo?a=1&b=2 HTTP/1.1\r\nHost: t\r\nX-ECHO: shouted\r\nContent-Length: 5\r\n\r\nhello");
    let reply = client.response();
    assert_eq!(reply.header("x-method"), Some("POST"));
    assert_eq!(reply.header("x-query"), Some("a=1&b=2"));
    assert_eq!(reply.header("x-echoed"), Some("shouted"), "header lookup ignores case");
    assert_eq!(reply.text(), "hello");
}

#[test]
fn openai_sdk_headers_and_up_to_the_limit_are_accepted() {
    let server = start_routes();
    let addr = server.local_addr();
    let body = r#"{"model":"m","messages":[]}"#;
    // What the OpenAI Python SDK sends: 17 header lines.
    let sdk_headers = [
        "Host: test",
        "Accept-Encoding: gzip, deflate",
        "Connection: keep-alive",
        "Accept: application/json",
        "Content-Type: application/json",
        "User-Agent: OpenAI/Python 1.54.0",
        "X-Stainless-Lang: python",
        "X-Stainless-Package-Version: 1.54.0",
        "X-Stainless-OS: Linux",
        "X-Stainless-Arch: x64",
        "X-Stainless-Runtime: CPython",
        "X-Stainless-Runtime-Version: 3.12.3",
        "Authorization: Bearer sk-test",
        "X-Stainless-Async: false",
        "x-stainless-retry-count: 0",
        "x-stainless-read-timeout: 600",
    ];
    let mut request = String::from("POST /echo HTTP/1.1\r\n");
    for header in sdk_headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    let mut client = Client::connect(addr);
    client.send(&request);
    let reply = client.response();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-header-count"), Some("17"));
    assert_eq!(reply.text(), body);

    let many = |count: usize| {
        let lines: String = (0..count).map(|i| format!("X-Extra-{i}: {i}\r\n")).collect();
        format!("GET /echo HTTP/1.1\r\n{lines}\r\n")
    };
    client.send(many(64));
    assert_eq!(client.response().header("x-header-count"), Some("64"));
    assert_rejected(addr, many(65), 431);
}

// ---------------------------------------------------------------------------------------------
// Request framing.

#[test]
fn content_length_must_be_digits_only() {
    let server = start_routes();
    for bad in ["abc", "-1", "+5", "5 5", "0x5", "5, 5", "1.0"] {
        let request = format!("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {bad}\r\n\r\nhello");
        assert_rejected(server.local_addr(), request, 400);
    }
}

#[test]
fn duplicate_content_lengths_must_agree() {
    let server = start_routes();
    let addr = server.local_addr();
    let disagree = "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!";
    assert_rejected(addr, disagree, 400);
    let mut client = Client::connect(addr);
    client.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(client.response().text(), "hello");
}

#[test]
fn chunked_body_with_extensions_and_trailers_is_decoded() {
    let server = start_routes();
    let mut client = Client::connect(server.local_addr());
    // The next request follows in the same packet: the decoder must stop exactly at the end.
    client.send(concat!(
        "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
        "4;name=value\r\nWiki\r\n5 ; flag\r\npedia\r\n0\r\nX-Trailer: t\r\n\r\n",
        "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n",
    ));
    assert_eq!(client.response().text(), "Wikipedia");
    assert_eq!(client.response().text(), "hello world");
}

#[test]
fn malformed_chunked_body_is_400() {
    let server = start_routes();
    let head = "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_rejected(server.local_addr(), format!("{head}zz\r\nWiki\r\n0\r\n\r\n"), 400);
    assert_rejected(server.local_addr(), format!("{head}4\r\nWikiXX0\r\n\r\n"), 400);
}

#[test]
fn transfer_encoding_with_content_length_is_refused_not_smuggled() {
    let server = start_routes();
    let addr = server.local_addr();
    let smuggle = concat!(
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 36\r\nTransfer-Encoding: chunked\r\n\r\n",
        "0\r\n\r\nGET /hello HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    // Exactly one answer, then the close: the hidden GET is never run.
    assert_rejected(addr, smuggle, 400);
    assert_rejected(addr, "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501);
    assert_rejected(addr, "POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400);
}

#[test]
fn body_over_the_limit_is_413() {
    let server = start_routes();
    let addr = server.local_addr();
    // Only part of the announced body is sent: the answer must not wait for the rest.
    assert_rejected(addr, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\nhello", 413);
    let chunk = "x".repeat(40 * 1024);
    let chunked = format!(
        "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{len:x}\r\n{chunk}\r\n{len:x}\r\n{chunk}\r\n0\r\n\r\n",
        len = chunk.len()
    );
    assert_rejected(addr, chunked, 413);
    // The largest allowed body passes.
    let mut client = Client::connect(addr);
    client.send(post("/echo", &"y".repeat(64 * 1024)));
    assert_eq!(client.response().body.len(), 64 * 1024);
}

#[test]
fn head_over_the_limit_is_431() {
    let server = start_routes();
    let huge = format!("GET /hello HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n", "v".repeat(10 * 1024));
    assert_rejected(server.local_addr(), huge, 431);
    // Also when the head never ends.
    let endless = format!("GET /hello HTTP/1.1\r\nX-Big: {}", "v".repeat(10 * 1024));
    assert_rejected(server.local_addr(), endless, 431);
}

#[test]
fn malformed_request_is_400() {
    let server = start_routes();
    // The start of a TLS handshake: refused at once, not after the timeout.
    assert_rejected(server.local_addr(), b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400);
    assert_rejected(server.local_addr(), "GET /hello HTTP/1.1\r\nBad Header: x\r\n\r\n", 400);
    assert_rejected(server.local_addr(), "GET /hello HTTP/9.9\r\n\r\n", 400);
}

// ---------------------------------------------------------------------------------------------
// Connection management.

#[test]
fn pipelined_requests_are_answered_in_order_in_one_write() {
    let server = start_routes();
    let mut client = Client::connect(server.local_addr());
    client.send(format!("{}{}{}", get("/slow"), post("/echo", "two"), get("/hello")));
    // All three responses leave in one write once no further request is buffered, so the
    // first read holds all of them.
    assert!(client.fill());
    let first_read = String::from_utf8_lossy(&client.buf).into_owned();
    assert_eq!(first_read.matches("HTTP/1.1 200 OK").count(), 3, "{first_read}");
    assert_eq!(client.response().text(), "slow");
    assert_eq!(client.response().text(), "two");
    assert_eq!(client.response().text(), "hello world");
}

#[test]
fn malformed_request_after_pipelined_ones_is_answered_after_them() {
    let server = start_routes();
    let mut client = Client::connect(server.local_addr());
    client.send(format!("{}{}GARBAGE\x01\r\n\r\n{}", get("/hello"), get("/slow"), get("/hello")));
    assert_eq!(client.response().text(), "hello world");
    assert_eq!(client.response().text(), "slow");
    let reply = client.response();
    assert_eq!(reply.status, 400);
    assert_eq!(reply.header("connection"), Some("close"));
    client.assert_closed();
    assert_alive(server.local_addr());
}

#[test]
fn connection_close_is_honoured() {
    let server = start_routes();
    let mut client = Client::connect(server.local_addr());
    client.send("GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let reply = client.response();
    assert_eq!(reply.header("connection"), Some("close"));
    assert_eq!(reply.text(), "hello world");
    client.assert_closed();
}

#[test]
fn http10_closes_by_default_and_keeps_alive_when_asked() {
    let server = start_routes();
    let mut client = Client::connect(server.local_addr());
    client.send("GET /echo HTTP/1.0\r\n\r\n");
    let reply = client.response();
    assert_eq!(reply.header("x-version"), Some("1.0"));
    assert_eq!(reply.header("connection"), Some("close"));
    client.assert_closed();

    let mut client = Client::connect(server.local_addr());
    for _ in 0..2 {
        client.send("GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let reply = client.response();
        assert_eq!(reply.header("connection"), Some("keep-alive"));
        assert_eq!(reply.text(), "hello world");
    }
}

#[test]
fn head_gets_the_get_headers_without_a_body() {
    let server = start_routes();
    let mut client = Client::connect(server.local_addr());
    client.send("HEAD /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    let reply = client.head_response();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-length"), Some("11"));
    // Had a body been sent, this response would start with it.
    client.send("HEAD /stream HTTP/1.1\r\nHost: t\r\n\r\n");
    let reply = client.head_response();
    assert_eq!(reply.header("transfer-encoding"), Some("chunked"));
    client.send(get("/hello"));
    assert_eq!(client.response().text(), "hello world");
}

#[test]
fn expect_continue_gets_100_before_the_body_is_sent() {
    let server = start_routes();
    let addr = server.local_addr();
    let mut client = Client::connect(addr);
    client.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    let (status, _) = client.take_head();
    assert_eq!(status, 100);
    client.send("hello");
    assert_eq!(client.response().text(), "hello");

    // Too large: the final status at once, no 100, and the body is never read.
    let mut client = Client::connect(addr);
    client.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\nExpect: 100-continue\r\n\r\n");
    assert_eq!(client.response().status, 413);
    client.assert_closed();

    assert_rejected(addr, "POST /echo HTTP/1.1\r\nHost: t\r\nExpect: telepathy\r\nContent-Length: 1\r\n\r\nx", 417);
}

#[test]
fn stalled_request_gets_408_and_idle_connection_is_closed_quietly() {
    let config = HttpConfig {
        request_timeout: Duration::from_millis(300),
        keep_alive_timeout: Duration::from_millis(300),
        ..test_config()
    };
    let server = start(config, routes);
    let addr = server.local_addr();
    // Stalls in the head.
    let mut client = Client::connect(addr);
    client.send("GET /hello HTTP/1.1\r\nHost: t\r\n");
    assert_eq!(client.response().status, 408);
    client.assert_closed();
    // Stalls in the body.
    let mut client = Client::connect(addr);
    client.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc");
    assert_eq!(client.response().status, 408);
    client.assert_closed();
    // Idle after a request, or from the start: closed without a response.
    let mut client = Client::connect(addr);
    client.send(get("/hello"));
    assert_eq!(client.response().status, 200);
    client.assert_closed();
    Client::connect(addr).assert_closed();
    assert_alive(addr);
}

#[test]
fn connection_cap_answers_503() {
    let config = HttpConfig { max_connections: 2, ..test_config() };
    let server = start(config, routes);
    let addr = server.local_addr();
    let mut first = Client::connect(addr);
    let mut second = Client::connect(addr);
    for client in [&mut first, &mut second] {
        client.send(get("/hello"));
        assert_eq!(client.response().status, 200);
    }
    let mut third = Client::connect(addr);
    third.send(get("/hello"));
    let reply = third.response();
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("connection"), Some("close"));
    third.assert_closed();
    second.send(get("/hello"));
    assert_eq!(second.response().status, 200, "open connections are unaffected");

    drop(first);
    assert!(server.wait_for_open_connections(1, IO_TIMEOUT));
    assert_alive(addr);
}

#[test]
fn a_second_server_cannot_take_the_same_port() {
    let server = start_routes();
    let taken = Server::bind(server.local_addr(), test_config(), routes);
    assert!(matches!(taken, Err(HttpError::Bind { .. })));
}

// ---------------------------------------------------------------------------------------------
// Handlers: panics, misuse, stack, channels.

#[test]
fn handler_panic_becomes_500_and_the_server_lives_on() {
    let server = start_routes();
    assert_rejected(server.local_addr(), get("/panic"), 500);
    assert_rejected(server.local_addr(), get("/no-answer"), 500);
}

#[test]
fn invalid_response_header_is_refused_to_the_handler() {
    let server = start_routes();
    let mut client = Client::connect(server.local_addr());
    client.send(get("/bad-header"));
    let reply = client.response();
    assert_eq!((reply.status, reply.text().as_str()), (200, "refused"));
    assert_eq!(reply.header("set-cookie"), None);
}

/// A 127-deep body parsed and printed takes ~29 KiB of stack here (measured at this crate's
/// opt-level 2; unoptimised builds take several times more), already at may's 32 KiB default.
#[test]
fn deep_json_fits_the_coroutine_stack() {
    let server = start_routes();
    // serde_json's own recursion limit is 128.
    let depth = 127;
    let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let mut client = Client::connect(server.local_addr());
    client.send(post("/deep-json", &nested));
    let reply = client.response();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), nested);
}

/// Fails (the process aborts on the stack guard page) if the configured stack is not applied.
#[test]
fn a_handler_may_use_256_kib_of_stack() {
    let server = start_routes();
    let mut client = Client::connect(server.local_addr());
    client.send(get("/deep-stack"));
    assert_eq!(client.response().text(), "256");
}

/// Every request parks its coroutine on a may channel that a plain thread answers only once all
/// of them are waiting: more requests than may has worker threads, so this finishes only if a
/// waiting handler does not hold an OS thread.
#[test]
fn handlers_wait_on_channels_fed_by_threads_without_blocking_workers() {
    let concurrent = may::config().get_workers() * 2 + 2;
    let (job_tx, job_rx) = std_mpsc::channel::<may::sync::mpsc::Sender<String>>();
    let handler = move |request: Request, responder: &mut Responder<'_>| {
        if request.path != "/engine" {
            return routes(request, responder);
        }
        let (reply_tx, reply_rx) = may::sync::mpsc::channel();
        if job_tx.send(reply_tx).is_ok() {
            if let Ok(text) = responder.wait_for(&reply_rx, Duration::from_millis(50)) {
                let _ = responder.send(Response::text(200, text));
            }
        }
    };
    let server = start(test_config(), handler);
    let engine = thread::spawn(move || {
        let mut waiting = Vec::new();
        while waiting.len() < concurrent {
            match job_rx.recv_timeout(IO_TIMEOUT) {
                Ok(reply_tx) => waiting.push(reply_tx),
                Err(_) => break,
            }
        }
        let arrived = waiting.len();
        for (i, reply_tx) in waiting.into_iter().enumerate() {
            let _ = reply_tx.send(format!("result {i}"));
        }
        arrived
    });
    let mut clients: Vec<Client> = (0..concurrent)
        .map(|_| {
            let mut client = Client::connect(server.local_addr());
            client.send(get("/engine"));
            client
        })
        .collect();
    for client in &mut clients {
        let reply = client.response();
        assert_eq!(reply.status, 200);
        assert!(reply.text().starts_with("result "));
    }
    assert_eq!(engine.join().unwrap(), concurrent);
    assert_alive(server.local_addr());
}

#[test]
fn disconnect_is_seen_while_waiting_for_a_result() {
    let (report_tx, report_rx) = std_mpsc::channel();
    let handler = move |request: Request, responder: &mut Responder<'_>| {
        // Never fed: only the client leaving ends the wait.
        let (_results_tx, results_rx) = may::sync::mpsc::channel::<String>();
        let poll = Duration::from_millis(5);
        let outcome = match request.path.as_str() {
            "/wait" => {
                let _ = report_tx.send(("started", responder.client_disconnected()));
                responder.wait_for(&results_rx, poll)
            }
            // Streaming, before the first token: no write fails yet, the wait must notice.
            "/wait-streaming" => {
                let Ok(events) = responder.stream(Response::new(200)) else {
                    return;
                };
                let _ = report_tx.send(("started", events.client_disconnected()));
                events.wait_for(&results_rx, poll)
            }
            _ => return routes(request, responder),
        };
        let _ = report_tx.send(("gone", outcome == Err(WaitError::ClientGone)));
    };
    let server = start(test_config(), handler);
    for path in ["/wait", "/wait-streaming"] {
        let mut client = Client::connect(server.local_addr());
        client.send(get(path));
        assert_eq!(report_rx.recv_timeout(IO_TIMEOUT).unwrap(), ("started", false), "{path}");
        drop(client);
        assert_eq!(report_rx.recv_timeout(IO_TIMEOUT).unwrap(), ("gone", true), "{path}");
    }
    assert_alive(server.local_addr());
}

// ---------------------------------------------------------------------------------------------
// Streaming.

#[test]
fn streaming_sends_chunks_then_keeps_alive() {
    let server = start_routes();
    let mut client = Client::connect(server.local_addr());
    client.send(get("/stream?n=5"));
    let reply = client.response();
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    assert_eq!(reply.header("content-length"), None);
    let expected: Vec<Vec<u8>> = (0..5).map(|i| format!("data: {i}\n\n").into_bytes()).collect();
    assert_eq!(reply.chunks, expected);
    client.send(get("/hello"));
    assert_eq!(client.response().text(), "hello world");
}

#[test]
fn each_chunk_is_on_the_wire_before_the_next_is_produced() {
    let (gate_tx, gate_rx) = std_mpsc::channel::<may::sync::mpsc::Sender<()>>();
    let handler = move |_request: Request, responder: &mut Responder<'_>| {
        let (open_tx, open_rx) = may::sync::mpsc::channel();
        let _ = gate_tx.send(open_tx);
        let Ok(mut stream) = responder.stream(Response::new(200)) else {
            return;
        };
        let _ = stream.send(b"one");
        // The client must already hold "one" while this waits.
        if open_rx.recv().is_ok() {
            let _ = stream.send(b"two");
            let _ = stream.finish();
        }
    };
    let server = start(test_config(), handler);
    let mut client = Client::connect(server.local_addr());
    client.send(get("/"));
    let (status, headers) = client.take_head();
    assert_eq!(status, 200);
    assert!(headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v == "chunked"));
    assert_eq!(client.take_chunk().as_deref(), Some(&b"one"[..]));
    gate_rx.recv_timeout(IO_TIMEOUT).unwrap().send(()).unwrap();
    assert_eq!(client.take_chunk().as_deref(), Some(&b"two"[..]));
    assert_eq!(client.take_chunk(), None);
}

#[test]
fn streaming_handler_gets_a_write_error_when_the_client_leaves() {
    let (report_tx, report_rx) = std_mpsc::channel();
    let handler = move |request: Request, responder: &mut Responder<'_>| {
        if request.path != "/tokens" {
            return routes(request, responder);
        }
        let Ok(mut stream) = responder.stream(Response::new(200)) else {
            return;
        };
        // One token per millisecond, like a fast model; bounded.
        for token in 0..5_000 {
            if let Err(err) = stream.send(format!("data: {token}\n\n").as_bytes()) {
                let _ = report_tx.send(Some(matches!(err, ResponseError::Io(_))));
                return;
            }
            may::coroutine::sleep(Duration::from_millis(1));
        }
        let _ = report_tx.send(None);
    };
    let server = start(test_config(), handler);
    let mut client = Client::connect(server.local_addr());
    client.send(get("/tokens"));
    client.take_head();
    assert!(client.take_chunk().is_some());
    drop(client);
    assert_eq!(report_rx.recv_timeout(IO_TIMEOUT).unwrap(), Some(true), "the handler saw the write fail");
    assert_alive(server.local_addr());
}

#[test]
fn write_timeout_ends_a_stream_to_a_client_that_does_not_read() {
    let (report_tx, report_rx) = std_mpsc::channel();
    let handler = move |request: Request, responder: &mut Responder<'_>| {
        if request.path != "/flood" {
            return routes(request, responder);
        }
        let chunk = vec![b'x'; 64 * 1024];
        let Ok(mut stream) = responder.stream(Response::new(200)) else {
            return;
        };
        // Bounded at 256 MiB, far beyond any socket buffer.
        for _ in 0..4096 {
            if stream.send(&chunk).is_err() {
                let _ = report_tx.send(true);
                return;
            }
        }
        let _ = report_tx.send(false);
    };
    let config = HttpConfig { write_timeout: Duration::from_millis(200), ..test_config() };
    let server = start(config, handler);
    let mut client = Client::connect(server.local_addr());
    client.send(get("/flood"));
    // The client never reads.
    assert!(report_rx.recv_timeout(Duration::from_secs(30)).unwrap(), "the write timed out");
    drop(client);
    assert_alive(server.local_addr());
}

#[test]
fn http10_stream_is_delimited_by_the_close() {
    let server = start_routes();
    let mut client = Client::connect(server.local_addr());
    client.send("GET /stream?n=3 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let reply = client.response();
    assert_eq!(reply.header("transfer-encoding"), None);
    assert_eq!(reply.header("connection"), Some("close"));
    assert_eq!(reply.text(), "data: 0\n\ndata: 1\n\ndata: 2\n\n");
}

// ---------------------------------------------------------------------------------------------
// Graceful shutdown.

/// A handler whose `/gate` requests wait until the test opens them; each arrival hands the
/// test the sender that opens it.
fn gated(arrivals: std_mpsc::Sender<may::sync::mpsc::Sender<()>>) -> impl kiln::server::http::Handler {
    move |request: Request, responder: &mut Responder<'_>| {
        if request.path != "/gate" {
            return routes(request, responder);
        }
        let (open_tx, open_rx) = may::sync::mpsc::channel();
        if arrivals.send(open_tx).is_ok() && open_rx.recv().is_ok() {
            let _ = responder.send(Response::text(200, "released"));
        }
    }
}

#[test]
fn shutdown_lets_running_requests_finish_and_closes_idle_ones() {
    let (arrivals_tx, arrivals_rx) = std_mpsc::channel();
    let server = start(test_config(), gated(arrivals_tx));
    let addr = server.local_addr();
    let mut busy = Client::connect(addr);
    busy.send(get("/gate"));
    let open_gate = arrivals_rx.recv_timeout(IO_TIMEOUT).unwrap();
    let mut idle = Client::connect(addr);
    idle.send(get("/hello"));
    assert_eq!(idle.response().status, 200);

    let shutdown = server.shutdown_handle();
    shutdown.trigger();
    assert!(shutdown.is_triggered());
    let waiter = thread::spawn(move || server.wait());

    idle.assert_closed();
    open_gate.send(()).unwrap();
    let reply = busy.response();
    assert_eq!((reply.status, reply.text().as_str()), (200, "released"));
    assert_eq!(reply.header("connection"), Some("close"));
    busy.assert_closed();

    let report = waiter.join().unwrap();
    assert_eq!(report.unfinished_connections, 0);
    assert!(TcpStream::connect(addr).is_err(), "no longer accepting");
}

#[test]
fn shutdown_closes_stuck_requests_after_the_drain_timeout() {
    let (arrivals_tx, arrivals_rx) = std_mpsc::channel();
    let config = HttpConfig { drain_timeout: Duration::from_millis(300), ..test_config() };
    let server = start(config, gated(arrivals_tx));
    let mut stuck = Client::connect(server.local_addr());
    stuck.send(get("/gate"));
    let open_gate = arrivals_rx.recv_timeout(IO_TIMEOUT).unwrap();

    server.shutdown_handle().trigger();
    let report = server.wait();
    assert_eq!(report.unfinished_connections, 1);
    stuck.assert_closed();
    // Let the handler finish; its response has nowhere to go.
    let _ = open_gate.send(());
}

#[test]
fn a_dropped_server_stops_accepting() {
    let server = start(test_config(), routes);
    let addr = server.local_addr();
    assert!(TcpStream::connect(addr).is_ok());
    drop(server);
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    // The accept loop sees the flag at its wake-up connection and closes the listener.
    while TcpStream::connect(addr).is_ok() {
        assert!(std::time::Instant::now() < deadline, "a dropped server still accepts");
        thread::sleep(Duration::from_millis(10));
    }
}
