//! `kiln serve --backend cuda` as an operator starts it, on the default model: the OpenAI API
//! answers greedy requests (whole and streamed) with the same text and token counts as
//! `kiln serve --backend cpu`, and the CUDA server samples on its device. Without a GPU the
//! server runs on kiln's CUDA emulator (`KILN_CUDA_DRIVER=emulator`), so this runs in CI: slow
//! (seconds per token), hence short answers.
#![cfg(feature = "cuda")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln::backend::cuda::driver;
use serde_json::{json, Value};

const MODEL: &str = "SmolLM2-135M-Instruct";

/// A `kiln serve` child process, killed when dropped.
struct Served {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `kiln serve --backend <backend> --port 0` and waits until /health says the model is
/// ready. The CUDA server takes the GPU when there is one and the emulator otherwise, as the
/// other CUDA tests do (`driver::for_tests`).
fn serve(backend: &str) -> Served {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
    command
        .args(["--backend", backend, "serve", "--port", "0", "--kv-memory", "0.0625", "--max-seqs", "4"])
        .args(["--max-batch-tokens", "128"])
        .env("KILN_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if backend == "cuda" {
        let chosen = driver::for_tests().unwrap_or_else(|why| panic!("no CUDA driver for this test: {why}"));
        eprintln!("kiln serve --backend cuda on {chosen}");
        let name = if driver::is_emulator() { "emulator" } else { "system" };
        command.env("KILN_CUDA_DRIVER", name);
    }
    let mut child = command.spawn().expect("kiln starts");
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (sender, receiver) = std::sync::mpsc::channel();
    // The log goes on after the address is known: keep draining it so the server never blocks.
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = sender.send(rest.split_whitespace().next().unwrap_or_default().to_string());
            }
            eprintln!("[kiln serve] {line}");
        }
    });
    let addr: SocketAddr = receiver
        .recv_timeout(Duration::from_secs(120))
        .expect("kiln serve logs its address")
        .parse()
        .expect("a socket address");
    let served = Served { child, addr };
    let started = Instant::now();
    while request(addr, "GET", "/health", "").0 != 200 {
        assert!(started.elapsed() < Duration::from_secs(300), "the {backend} server was not ready in 5 minutes");
        std::thread::sleep(Duration::from_millis(200));
    }
    served
}

/// One HTTP/1.1 request; returns the status and the body.
fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(addr) else { return (0, String::new()) };
    stream.set_read_timeout(Some(Duration::from_secs(600))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut reply = Vec::new();
    BufReader::new(stream).read_to_end(&mut reply).unwrap();
    let reply = String::from_utf8(reply).expect("a UTF-8 reply");
    let status = reply.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { unchunk(body) } else { body.into() };
    (status, body)
}

fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

fn post(addr: SocketAddr, path: &str, body: Value) -> String {
    let (status, reply) = request(addr, "POST", path, &body.to_string());
    assert_eq!(status, 200, "{path}: {reply}");
    reply
}

/// A greedy completion: its text, finish reason and token counts.
fn completion(addr: SocketAddr) -> (String, String, Value) {
    let body = json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0});
    let reply: Value = serde_json::from_str(&post(addr, "/v1/completions", body)).unwrap();
    let choice = &reply["choices"][0];
    (choice["text"].as_str().unwrap().to_string(), choice["finish_reason"].to_string(), reply["usage"].clone())
}

/// A greedy streamed chat answer, joined from its SSE deltas.
fn streamed_chat(addr: SocketAddr) -> String {
    let body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
        "max_tokens": 4,
        "temperature": 0,
        "stream": true,
    });
    let reply = post(addr, "/v1/chat/completions", body);
    let events: Vec<&str> = reply.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{reply}");
    events[..events.len() - 1]
        .iter()
        .filter_map(|e| {
            serde_json::from_str::<Value>(e).unwrap()["choices"][0]["delta"]["content"].as_str().map(String::from)
        })
        .collect()
}

fn metric(addr: SocketAddr, name: &str) -> u64 {
    let (status, text) = request(addr, "GET", "/metrics", "");
    assert_eq!(status, 200);
    let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("no {name}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn the_cuda_server_answers_as_the_cpu_server_does() {
    let cpu = serve("cpu");
    let expected = (completion(cpu.addr), streamed_chat(cpu.addr));
    drop(cpu);
    assert!(expected.0 .0.starts_with(" Paris."), "the CPU server's greedy answer (tests/cli.rs): {:?}", expected.0);

    let cuda = serve("cuda");
    let started = Instant::now();
    let got = (completion(cuda.addr), streamed_chat(cuda.addr));
    eprintln!("the CUDA server answered both requests in {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(got.0, expected.0, "completion: CUDA against CPU");
    assert_eq!(got.1, expected.1, "streamed chat: CUDA against CPU");
    let device_steps = metric(cuda.addr, "kiln_device_sampled_steps_total");
    let steps = metric(cuda.addr, "kiln_steps_total");
    assert!(steps > 0 && device_steps == steps, "{device_steps} of {steps} steps sampled on the device");
}
