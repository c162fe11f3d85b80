//! `kiln serve` as a child process, the way an operator runs it, and a minimal HTTP client for
//! the tests that need the real binary (its exit status, its log, its driver choice).
#![allow(dead_code)] // each test file uses what it needs

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The default model's name, what requests put in `model`.
pub const MODEL: &str = "SmolLM2-135M-Instruct";

/// A `kiln serve` child process, killed when dropped; its log lines are kept.
pub struct Served {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    /// The log so far, one string.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Sends SIGTERM, as a supervisor stopping kiln does.
    pub fn terminate(&self) {
        let sent = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill runs");
        assert!(sent.success(), "kill -TERM failed");
    }

    /// The process id, to read its /proc entries.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

/// Starts `kiln <global args> serve --port 0 <serve args>` with `env`, and waits until /health
/// says the model is ready.
pub fn serve(global: &[&str], args: &[&str], env: &[(&str, &str)]) -> Served {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
    // Small defaults for a 2-core machine; a test's own value of a flag replaces the default.
    let defaults = [("--kv-memory", "0.0625"), ("--max-seqs", "4"), ("--max-batch-tokens", "128")];
    command.args(global).args(["serve", "--port", "0"]);
    for (flag, value) in defaults {
        if !args.contains(&flag) {
            command.args([flag, value]);
        }
    }
    command.args(args).env("KILN_LOG", "info").stdout(Stdio::null()).stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("kiln starts");
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (sender, receiver) = std::sync::mpsc::channel();
    let log = Arc::new(Mutex::new(Vec::new()));
    let kept = log.clone();
    // The log goes on after the address is known: keep draining it so the server never blocks.
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = sender.send(rest.split_whitespace().next().unwrap_or_default().to_string());
            }
            kept.lock().unwrap().push(line);
        }
    });
    let addr: SocketAddr = receiver
        .recv_timeout(Duration::from_secs(120))
        .expect("kiln serve logs its address")
        .parse()
        .expect("a socket address");
    let served = Served { child, addr, log };
    let started = Instant::now();
    while request(addr, "GET", "/health", "").0 != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the server was not ready in 5 minutes:\n{}",
            served.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    served
}

/// One HTTP/1.1 request; returns the status and the body (de-chunked). Status 0: no connection.
pub fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let reply = exchange(addr, method, path, &[], body);
    (reply.status, reply.body)
}

/// A whole response: status 0 when there was no connection.
pub struct Reply {
    pub status: u16,
    /// The status line and headers.
    pub head: String,
    /// De-chunked.
    pub body: String,
}

impl Reply {
    /// The value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_string())
        })
    }

    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One HTTP/1.1 request with extra headers.
pub fn exchange(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let none = Reply { status: 0, head: String::new(), body: String::new() };
    let Ok(mut stream) = send_request(addr, method, path, headers, body) else { return none };
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    parse_reply(&reply)
}

fn send_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(600)))?;
    let extra: String = headers.iter().map(|(name, value)| format!("{name}: {value}\r\n")).collect();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: application/json\r\n\
         {extra}Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    Ok(stream)
}

pub fn parse_reply(reply: &[u8]) -> Reply {
    let reply = String::from_utf8_lossy(reply).into_owned();
    let status = reply.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { unchunk(body) } else { body.into() };
    Reply { status, head: head.to_string(), body }
}

/// A streamed response being read: the test can act once the first event has arrived.
pub struct OpenStream {
    stream: TcpStream,
    received: Vec<u8>,
}

impl OpenStream {
    pub fn start(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> OpenStream {
        let stream = send_request(addr, "POST", path, headers, body).expect("the server takes the request");
        OpenStream { stream, received: Vec::new() }
    }

    /// Reads until the first `data:` event has arrived.
    pub fn wait_for_first_event(&mut self) {
        let mut buffer = [0u8; 4096];
        while !String::from_utf8_lossy(&self.received).contains("data: ") {
            let read = self.stream.read(&mut buffer).expect("reading the stream");
            assert!(read > 0, "the stream ended before its first event: {}", String::from_utf8_lossy(&self.received));
            self.received.extend_from_slice(&buffer[..read]);
        }
    }

    /// Reads to the end of the response.
    pub fn finish(mut self) -> Reply {
        let _ = self.stream.read_to_end(&mut self.received);
        parse_reply(&self.received)
    }
}

fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || rest.len() < size {
            out.push_str(&rest[..size.min(rest.len())]);
            break;
        }
        out.push_str(&rest[..size]);
        body = rest.get(size + 2..).unwrap_or("");
    }
    out
}

/// The `data:` payloads of an SSE body, in order.
pub fn sse_events(body: &str) -> Vec<String> {
    body.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).map(str::to_string).collect()
}

/// Polls `check` until it is true or `timeout` passes (tests wait on the thing, not a fixed sleep).
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check()
}

/// Installs the Debian packages tests drive as real peers (haproxy, promtool) when missing.
pub fn setup_system_packages() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/setup-system-packages");
    let status = Command::new(script).status().unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    assert!(status.success(), "{script} failed ({status})");
}
