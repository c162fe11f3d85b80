//! Load and abuse on loopback against a real `kiln serve`, bounded in count and time.
//!
//! - Many concurrent clients (256 by default; `KILN_SOAK_CLIENTS`, `KILN_SOAK_ROUNDS` for the long
//!   run in tools/soak) mix streamed and whole chat, completions and native requests with `n` > 1,
//!   logprobs, stop strings and JSON mode; some disconnect early, some read slowly. Every request
//!   is deterministic (greedy or seeded) and kiln's kernels are batch-invariant, so every answer
//!   that was not cut must equal the one the same request got alone. The queue bound answers 429
//!   (clients retry after `Retry-After`); afterwards the running, waiting and KV gauges are 0,
//!   thread and descriptor counts are back at their idle values, and resident memory stayed under
//!   its bound throughout.
//! - Slow-loris connections (a byte a second) do not stop others from being served.
//! - A client that never reads its stream is cut after `--write-timeout` and its sequence freed.

mod serve_support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use serve_support::{exchange, serve, sse_events, wait_until, Reply, Served, MODEL};

/// How far resident memory may rise above its idle value during the run. The KV cache and
/// weights are allocated at start-up; what grows under load is per-connection (coroutine stacks
/// as touched, request and response buffers) and per-request state.
const RSS_GROWTH_BOUND_MIB: u64 = 512;

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One kind of request in the mix.
struct Kind {
    path: String,
    body: Value,
    stream: bool,
}

fn kinds() -> Vec<Kind> {
    let chat = |extra: Value| {
        let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": "Name three colours."}],
                              "max_tokens": 8, "temperature": 0});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    let completion = |extra: Value| {
        let mut body = json!({"model": MODEL, "prompt": "1, 2, 3, 4, 5,", "max_tokens": 6, "temperature": 0});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    let kind = |path: &str, body: Value| Kind { stream: body["stream"] == json!(true), path: path.into(), body };
    vec![
        kind("/v1/chat/completions", chat(json!({}))),
        kind("/v1/chat/completions", chat(json!({"stream": true, "stream_options": {"include_usage": true}}))),
        kind("/v1/completions", completion(json!({"n": 2, "temperature": 0.8, "seed": 7}))),
        kind("/v1/completions", completion(json!({"logprobs": 2, "stream": true}))),
        kind("/v1/completions", completion(json!({"stop": [" 8"], "max_tokens": 12}))),
        kind("/v1/chat/completions", chat(json!({"response_format": {"type": "json_object"}, "max_tokens": 12}))),
        kind(
            &format!("/v1/inference/{MODEL}"),
            json!({"input": "Once upon a time", "max_new_tokens": 6,
                                                        "temperature": 0, "stream": true}),
        ),
        kind(
            &format!("/v1/inference/{MODEL}"),
            json!({"input": "The sea", "max_new_tokens": 5, "seed": 3,
                                                        "num_responses": 2}),
        ),
    ]
}

/// What must be the same however the request was scheduled: each choice's text and finish
/// reason (and log-probabilities, rounded), without ids and timestamps.
fn canonical(reply: &Reply, stream: bool) -> Result<Value, String> {
    if reply.status != 200 {
        return Err(format!("status {}: {}", reply.status, reply.body));
    }
    let events: Vec<Value> = if stream {
        let raw = sse_events(&reply.body);
        if raw.last().map(String::as_str) != Some("[DONE]") {
            return Err(format!("stream did not end with [DONE]: {:?}", raw.last()));
        }
        raw[..raw.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?
    } else {
        vec![serde_json::from_str(&reply.body).map_err(|e| e.to_string())?]
    };
    let mut texts: HashMap<String, String> = HashMap::new();
    let mut finish: HashMap<String, Value> = HashMap::new();
    let mut logprobs: Vec<i64> = Vec::new();
    for event in &events {
        if let Some(error) = event.get("error") {
            return Err(format!("error event: {error}"));
        }
        for (index, choice) in event["choices"].as_array().into_iter().flatten().enumerate() {
            let index = choice["index"].as_u64().map(|i| i.to_string()).unwrap_or(index.to_string());
            let text = choice["text"]
                .as_str()
                .or(choice["message"]["content"].as_str())
                .or(choice["delta"]["content"].as_str());
            texts.entry(index.clone()).or_default().push_str(text.unwrap_or(""));
            if !choice["finish_reason"].is_null() {
                finish.insert(index, choice["finish_reason"].clone());
            }
            for lp in choice["logprobs"]["token_logprobs"].as_array().into_iter().flatten() {
                logprobs.push((lp.as_f64().unwrap_or(0.0) * 1e3).round() as i64);
            }
        }
        // The native API: results, or the token stream's final `generated_text`.
        for (index, result) in event["results"].as_array().into_iter().flatten().enumerate() {
            texts.insert(index.to_string(), result["generated_text"].as_str().unwrap_or("").into());
        }
        if let Some(text) = event["generated_text"].as_str() {
            texts.insert("0".into(), text.into());
        }
    }
    if texts.is_empty() {
        return Err("no text in the answer".into());
    }
    let mut texts: Vec<_> = texts.into_iter().collect();
    texts.sort();
    let mut finish: Vec<_> = finish.into_iter().collect();
    finish.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(json!({"texts": texts, "finish": finish, "logprobs": logprobs}))
}

/// How one client behaves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Behaviour {
    Normal,
    /// Closes the connection early (a streamed request after its first bytes; a whole one right
    /// after sending it).
    Disconnects,
    /// Reads its stream a little at a time with pauses.
    SlowReader,
}

fn behaviour(client: usize) -> Behaviour {
    match client % 16 {
        5 => Behaviour::Disconnects,
        11 if client % 32 == 11 => Behaviour::SlowReader,
        _ => Behaviour::Normal,
    }
}

/// Sends one request and reads the answer the way `behaviour` says; None when it disconnected.
fn run_request(addr: SocketAddr, kind: &Kind, behaviour: Behaviour) -> Option<Reply> {
    let body = kind.body.to_string();
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: soak\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        kind.path,
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body.as_bytes()).ok()?;
    let mut received = Vec::new();
    let mut buffer = [0u8; 256];
    match behaviour {
        Behaviour::Disconnects => {
            if kind.stream {
                let _ = stream.read(&mut buffer);
            }
            return None;
        }
        Behaviour::SlowReader => loop {
            std::thread::sleep(Duration::from_millis(30));
            match stream.read(&mut buffer[..64]) {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        },
        Behaviour::Normal => {
            let _ = stream.read_to_end(&mut received);
        }
    }
    Some(serve_support::parse_reply(&received))
}

/// Reads `/proc/PID/status` field `name` (a number, first word).
fn proc_status(pid: u32, name: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// The value of an unlabelled metric in `/metrics`.
fn metric(addr: SocketAddr, name: &str) -> f64 {
    let text = exchange(addr, "GET", "/metrics", &[], "").body;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

fn assert_idle_gauges(addr: SocketAddr) {
    for gauge in ["kiln_running_sequences", "kiln_queue_depth", "kiln_kv_blocks_used"] {
        assert!(
            wait_until(Duration::from_secs(30), || metric(addr, gauge) == 0.0),
            "{gauge} stays at {} after the load",
            metric(addr, gauge)
        );
    }
}

fn soak_server() -> Served {
    serve(
        &["--backend", "cpu"],
        &[
            "--kv-memory",
            "0.25",
            "--max-seqs",
            "16",
            "--max-batch-tokens",
            "256",
            "--max-waiting",
            "48",
            // Prefix caching keeps finished prompts' blocks; off, "KV blocks in use" must reach 0.
            "--no-prefix-caching",
            "--max-connections",
            "2000",
        ],
        &[],
    )
}

#[test]
fn hundreds_of_mixed_clients_get_complete_correct_answers_and_leave_nothing_behind() {
    let clients = env_count("KILN_SOAK_CLIENTS", 256);
    let rounds = env_count("KILN_SOAK_ROUNDS", 1);
    let served = soak_server();
    let (addr, pid) = (served.addr, served.pid());
    let kinds = Arc::new(kinds());

    // Each kind alone first: the answers the loaded server must give again.
    let references: Arc<Vec<Value>> = Arc::new(
        kinds
            .iter()
            .map(|kind| {
                let reply = run_request(addr, kind, Behaviour::Normal).expect("a reply");
                canonical(&reply, kind.stream).unwrap_or_else(|e| panic!("{} alone: {e}", kind.path))
            })
            .collect(),
    );
    assert_idle_gauges(addr);
    let idle_threads = proc_status(pid, "Threads");
    let idle_fds = open_fds(pid);
    let idle_rss_kib = proc_status(pid, "VmRSS");

    let peak_rss_kib = Arc::new(AtomicU64::new(idle_rss_kib));
    let running = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, running) = (peak_rss_kib.clone(), running.clone());
        std::thread::spawn(move || {
            while running.load(Ordering::SeqCst) {
                peak.fetch_max(proc_status(pid, "VmRSS"), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    let started = Instant::now();
    let (completed, cut, overloaded) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let threads: Vec<_> = (0..clients)
        .map(|client| {
            let (kinds, references) = (kinds.clone(), references.clone());
            let (completed, cut, overloaded, failures) =
                (completed.clone(), cut.clone(), overloaded.clone(), failures.clone());
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    for round in 0..rounds {
                        let which = (client * 7 + round * 3) % kinds.len();
                        let kind = &kinds[which];
                        let behaviour = behaviour(client + round);
                        loop {
                            let Some(reply) = run_request(addr, kind, behaviour) else {
                                cut.fetch_add(1, Ordering::SeqCst);
                                break;
                            };
                            if reply.status == 429 {
                                // The queue is full: wait as told, then try again.
                                overloaded.fetch_add(1, Ordering::SeqCst);
                                let wait: u64 = reply.header("retry-after").and_then(|v| v.parse().ok()).unwrap_or(1);
                                std::thread::sleep(Duration::from_millis(wait * 1000 / 4 + (client as u64 % 50) * 10));
                                continue;
                            }
                            match canonical(&reply, kind.stream) {
                                Ok(answer) if answer == references[which] => {
                                    completed.fetch_add(1, Ordering::SeqCst);
                                }
                                Ok(answer) => failures.lock().unwrap().push(format!(
                                    "client {client} {} {behaviour:?}: {answer} != alone {}",
                                    kind.path, references[which]
                                )),
                                Err(error) => failures
                                    .lock()
                                    .unwrap()
                                    .push(format!("client {client} {} {behaviour:?}: {error}", kind.path)),
                            }
                            break;
                        }
                    }
                })
                .expect("a client thread")
        })
        .collect();
    for thread in threads {
        thread.join().expect("a client thread panicked");
    }
    let elapsed = started.elapsed();
    running.store(false, Ordering::SeqCst);
    sampler.join().unwrap();

    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} wrong or incomplete answers, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    let (completed, cut, overloaded) =
        (completed.load(Ordering::SeqCst), cut.load(Ordering::SeqCst), overloaded.load(Ordering::SeqCst));
    assert_eq!(completed + cut, clients * rounds);
    assert!(overloaded > 0, "{clients} clients never filled a queue of 48: the bound was not exercised");

    assert_idle_gauges(addr);
    assert!(
        wait_until(Duration::from_secs(30), || open_fds(pid) <= idle_fds),
        "descriptors: {} after the load, {idle_fds} idle",
        open_fds(pid)
    );
    assert_eq!(proc_status(pid, "Threads"), idle_threads, "threads after the load");
    let peak = peak_rss_kib.load(Ordering::SeqCst);
    let growth_mib = peak.saturating_sub(idle_rss_kib) / 1024;
    assert!(
        growth_mib <= RSS_GROWTH_BOUND_MIB,
        "resident memory rose {growth_mib} MiB (idle {} MiB)",
        idle_rss_kib / 1024
    );
    eprintln!(
        "soak: {clients} clients x {rounds} rounds in {:.1} s: {completed} complete and equal to their solo answers, \
         {cut} cut by their clients, {overloaded} answers 429 (retried); RSS idle {} MiB, peak {} MiB; \
         threads {idle_threads}, descriptors {idle_fds} before and after",
        elapsed.as_secs_f64(),
        idle_rss_kib / 1024,
        peak / 1024
    );
}

#[test]
fn slow_loris_connections_do_not_stop_others_and_a_client_that_never_reads_is_cut() {
    let served =
        serve(&["--backend", "cpu"], &["--write-timeout", "2", "--kv-memory", "0.25", "--no-prefix-caching"], &[]);
    let addr = served.addr;

    // 200 connections, each sending its request head a byte a second.
    let trickling = Arc::new(AtomicBool::new(true));
    let loris: Vec<_> = (0..200)
        .map(|_| {
            let trickling = trickling.clone();
            let mut stream = TcpStream::connect(addr).expect("connect");
            std::thread::spawn(move || {
                for byte in b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n".iter().cycle() {
                    if !trickling.load(Ordering::SeqCst) || stream.write_all(&[*byte]).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            })
        })
        .collect();
    // Meanwhile others are served at once.
    let started = Instant::now();
    let body = json!({"model": MODEL, "prompt": "Hello", "max_tokens": 4, "temperature": 0}).to_string();
    for _ in 0..5 {
        assert_eq!(exchange(addr, "POST", "/v1/completions", &[], &body).status, 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "5 requests took {:?} beside the slow clients",
        started.elapsed()
    );
    trickling.store(false, Ordering::SeqCst);

    // A streamed answer far larger than the socket buffers, to a client that never reads (its
    // receive buffer made small, as a stalled mobile client's window would be).
    let cancelled_before = metric(addr, "kiln_requests_cancelled_total");
    let long = json!({"model": MODEL, "prompt": "1, 2, 3, 4, 5,", "max_tokens": 1200, "n": 2, "temperature": 0,
                      "stream": true, "logprobs": 5})
    .to_string();
    let stalled = TcpStream::connect(addr).unwrap();
    shrink_receive_buffer(&stalled);
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{long}",
        long.len()
    );
    (&stalled).write_all(head.as_bytes()).unwrap();
    // Its sequences run, then are freed once the server gives up writing (2 s of no progress).
    assert!(
        wait_until(Duration::from_secs(60), || metric(addr, "kiln_requests_cancelled_total") > cancelled_before),
        "the stalled stream was never cut:\n{}",
        served
            .log()
            .lines()
            .filter(|l| !l.contains("/metrics") && !l.contains("/health"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_idle_gauges(addr);
    assert_eq!(exchange(addr, "POST", "/v1/completions", &[], &body).status, 200, "the server serves on");
    drop(stalled);
    for thread in loris {
        thread.join().unwrap();
    }
}

/// Makes the socket's receive buffer as small as the kernel allows, so that a server writing to
/// a client that does not read stalls after a few kilobytes.
fn shrink_receive_buffer(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 4096;
    // SAFETY: a valid socket descriptor and a c_int option value of the stated size.
    let result = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &size as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(result, 0, "setsockopt SO_RCVBUF");
}
