//! `kiln serve --backend cuda` as an operator starts it, on the default model: the OpenAI API
//! answers greedy requests (whole and streamed) with the same text and token counts as
//! `kiln serve --backend cpu`, and the CUDA server samples on its device. Without a GPU the
//! server runs on kiln's CUDA emulator (`KILN_CUDA_DRIVER=emulator`), so this runs in CI: slow
//! (seconds per token), hence short answers.
#![cfg(feature = "cuda")]

mod serve_support;

use std::net::SocketAddr;
use std::time::Instant;

use kiln::backend::cuda::driver;
use serde_json::{json, Value};
use serve_support::{request, sse_events, Served, MODEL};

/// `kiln --backend <backend> serve`; the CUDA server takes the GPU when there is one and the
/// emulator otherwise, as the other CUDA tests do (`driver::for_tests`).
fn serve(backend: &str) -> Served {
    let mut env = Vec::new();
    if backend == "cuda" {
        let chosen = driver::for_tests().unwrap_or_else(|why| panic!("no CUDA driver for this test: {why}"));
        eprintln!("kiln serve --backend cuda on {chosen}");
        env.push(("KILN_CUDA_DRIVER", if driver::is_emulator() { "emulator" } else { "system" }));
    }
    serve_support::serve(&["--backend", backend], &[], &env)
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
    let events = sse_events(&reply);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{reply}");
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
