//! Three `kiln serve` replicas behind a real load balancer (haproxy from Debian's packages,
//! installed by tools/setup-system-packages), health-checked on `/health/ready`, under a bounded
//! mixed load; one replica gets SIGTERM mid-load. What an operator relies on, shown here:
//! - no client request fails: the draining replica finishes what it runs (a stream it was in the
//!   middle of included) and answers 503 `shutting_down` to anything new, which haproxy retries on
//!   another replica (`retry-on 503`) until its health check has taken the replica out;
//! - every answer is right: greedy answers equal those of a replica asked directly before the load;
//! - the balancer stops sending the stopped replica work (its stats show it DOWN), and the replica
//!   exits 0 within its drain time.
//!
//! The README's "Running several replicas" section uses this configuration.

mod serve_support;

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use serve_support::{exchange, serve, setup_system_packages, sse_events, wait_until, OpenStream, Served, MODEL};

const REPLICAS: usize = 3;
const CLIENTS: usize = 6;
const REQUESTS_PER_CLIENT: usize = 8;
/// Each replica's `--shutdown-timeout`.
const DRAIN_S: u64 = 20;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// haproxy in the foreground, killed when dropped.
struct Haproxy {
    child: Child,
    addr: SocketAddr,
    stats: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The balancer configuration an operator would write for kiln replicas (README, "Running several
/// replicas"): least-connections balancing, readiness health checks every 250 ms taking a replica
/// out after one failure, and 503s (a draining replica's answer to new work) retried elsewhere.
fn haproxy_config(port: u16, stats_port: u16, replicas: &[SocketAddr]) -> String {
    let servers: String =
        replicas.iter().enumerate().map(|(i, addr)| format!("    server replica{i} {addr} check\n")).collect();
    format!(
        "global\n    maxconn 256\n\n\
         defaults\n    mode http\n    timeout connect 2s\n    timeout client 120s\n    timeout server 120s\n\
         \x20   retries 3\n    option redispatch 1\n    retry-on 503 conn-failure empty-response\n\n\
         frontend api\n    bind 127.0.0.1:{port}\n    default_backend kiln\n\n\
         frontend stats\n    bind 127.0.0.1:{stats_port}\n    stats enable\n    stats uri /stats\n\n\
         backend kiln\n    balance leastconn\n    option httpchk GET /health/ready\n    http-check expect status 200\n\
         \x20   default-server inter 250ms fall 1 rise 2\n{servers}"
    )
}

fn start_haproxy(replicas: &[SocketAddr]) -> Haproxy {
    let dir = tempfile::tempdir().unwrap();
    let (port, stats_port) = (free_port(), free_port());
    let config = dir.path().join("haproxy.cfg");
    std::fs::write(&config, haproxy_config(port, stats_port, replicas)).unwrap();
    let haproxy = if std::path::Path::new("/usr/sbin/haproxy").exists() { "/usr/sbin/haproxy" } else { "haproxy" };
    let check = Command::new(haproxy).arg("-c").arg("-f").arg(&config).output().expect("haproxy runs");
    assert!(check.status.success(), "haproxy -c: {}", String::from_utf8_lossy(&check.stderr));
    let child = Command::new(haproxy)
        .arg("-db")
        .arg("-f")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy starts");
    let balancer = Haproxy {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        stats: SocketAddr::from(([127, 0, 0, 1], stats_port)),
        _dir: dir,
    };
    let all_up = wait_until(Duration::from_secs(20), || {
        server_statuses(&balancer).iter().filter(|(_, status)| status == "UP").count() == replicas.len()
    });
    assert!(all_up, "haproxy did not see every replica up: {:?}", server_statuses(&balancer));
    balancer
}

/// (server name, status) of each replica, from haproxy's CSV statistics.
fn server_statuses(balancer: &Haproxy) -> Vec<(String, String)> {
    server_stats(balancer).into_iter().map(|fields| (fields[1].clone(), fields[17].clone())).collect()
}

/// Requests haproxy retried on another replica (CSV field `wretr`), over all replicas.
fn retries(balancer: &Haproxy) -> u64 {
    server_stats(balancer).iter().map(|fields| fields[15].parse::<u64>().unwrap_or(0)).sum()
}

/// The CSV statistics rows of the replicas.
fn server_stats(balancer: &Haproxy) -> Vec<Vec<String>> {
    let reply = exchange(balancer.stats, "GET", "/stats;csv", &[], "");
    reply
        .body
        .lines()
        .filter(|line| line.starts_with("kiln,replica"))
        .map(|line| line.split(',').map(String::from).collect())
        .collect()
}

/// The request mix: chat whole, chat streamed, completions; greedy, so each has one right answer.
fn request_body(i: usize) -> (&'static str, String, bool) {
    let questions = ["What is the capital of France?", "Name a colour.", "Count to five.", "Say hello."];
    let question = questions[i % questions.len()];
    match i % 3 {
        0 => (
            "/v1/chat/completions",
            format!(
                r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"{question}"}}],"max_tokens":12,"temperature":0}}"#
            ),
            false,
        ),
        1 => (
            "/v1/chat/completions",
            format!(
                r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"{question}"}}],"max_tokens":12,"temperature":0,"stream":true}}"#
            ),
            true,
        ),
        _ => (
            "/v1/completions",
            format!(r#"{{"model":"{MODEL}","prompt":"{question}","max_tokens":12,"temperature":0}}"#),
            false,
        ),
    }
}

/// The answer text of a reply, or why it is not a complete, successful one.
fn answer(path: &str, streamed: bool, status: u16, body: &str) -> Result<String, String> {
    if status != 200 {
        return Err(format!("status {status}: {body}"));
    }
    let field = |v: &Value| -> String {
        if path == "/v1/completions" {
            v["choices"][0]["text"].as_str().unwrap_or_default().to_string()
        } else if streamed {
            v["choices"][0]["delta"]["content"].as_str().unwrap_or_default().to_string()
        } else {
            v["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_string()
        }
    };
    if !streamed {
        let value: Value = serde_json::from_str(body).map_err(|e| format!("not JSON ({e}): {body}"))?;
        return Ok(field(&value));
    }
    let events = sse_events(body);
    if events.last().map(String::as_str) != Some("[DONE]") {
        return Err(format!("the stream did not end with [DONE]: {body}"));
    }
    let mut text = String::new();
    for event in &events[..events.len() - 1] {
        let value: Value = serde_json::from_str(event).map_err(|e| format!("event not JSON ({e}): {event}"))?;
        if value.get("error").is_some() {
            return Err(format!("error event: {event}"));
        }
        text.push_str(&field(&value));
    }
    Ok(text)
}

#[test]
fn a_replica_stopped_mid_load_costs_no_request() {
    setup_system_packages();
    let started = Instant::now();
    let drain = DRAIN_S.to_string();
    let mut replicas: Vec<Served> =
        (0..REPLICAS).map(|_| serve(&[], &["--max-seqs", "8", "--shutdown-timeout", &drain], &[])).collect();
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();

    // The right answers, from one replica directly, before any load.
    let expected: Vec<String> = (0..4 * 3)
        .map(|i| {
            let (path, body, streamed) = request_body(i);
            let reply = exchange(addrs[0], "POST", path, &[], &body);
            answer(path, streamed, reply.status, &reply.body).expect("a direct request succeeds")
        })
        .collect();
    let expected = Arc::new(expected);

    let balancer = start_haproxy(&addrs);
    let through = balancer.addr;
    let done = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (done, expected) = (done.clone(), expected.clone());
            std::thread::spawn(move || -> Vec<String> {
                let mut failures = Vec::new();
                for n in 0..REQUESTS_PER_CLIENT {
                    let i = client * REQUESTS_PER_CLIENT + n;
                    let (path, body, streamed) = request_body(i);
                    let reply = exchange(through, "POST", path, &[], &body);
                    match answer(path, streamed, reply.status, &reply.body) {
                        Ok(text) if text == expected[i % expected.len()] => {}
                        Ok(text) => failures
                            .push(format!("request {i}: {text:?} instead of {:?}", expected[i % expected.len()])),
                        Err(why) => failures.push(format!("request {i} ({path}): {why}")),
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
                failures
            })
        })
        .collect();

    // Mid-load: a stream runs on the replica about to stop (sent to it directly, so it is surely
    // in flight there), then SIGTERM.
    let total = CLIENTS * REQUESTS_PER_CLIENT;
    assert!(wait_until(Duration::from_secs(120), || done.load(Ordering::SeqCst) >= total / 4));
    let stopping = 1;
    let long_stream = format!(
        r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"Tell me a story."}}],"max_tokens":48,"temperature":0,"stream":true}}"#
    );
    let mut in_flight = OpenStream::start(addrs[stopping], "/v1/chat/completions", &[], &long_stream);
    in_flight.wait_for_first_event();
    let terminated_at = Instant::now();
    replicas[stopping].terminate();

    // The balancer takes it out once its readiness turns 503.
    let out = wait_until(Duration::from_secs(5), || {
        server_statuses(&balancer).iter().any(|(name, status)| name == "replica1" && status.starts_with("DOWN"))
    });
    assert!(out, "haproxy still sends to the draining replica: {:?}", server_statuses(&balancer));
    let drained = in_flight.finish();
    let streamed = answer("/v1/chat/completions", true, drained.status, &drained.body);
    assert!(streamed.is_ok(), "the stream running on the stopped replica was cut: {streamed:?}");

    let failures: Vec<String> = clients.into_iter().flat_map(|c| c.join().expect("client thread")).collect();
    assert!(failures.is_empty(), "{} of {total} requests failed:\n{}", failures.len(), failures.join("\n"));

    let status = replicas[stopping].wait_exit(Duration::from_secs(DRAIN_S + 5));
    let exited_in = terminated_at.elapsed();
    assert!(
        matches!(status, Some(s) if s.success()),
        "the stopped replica exited with {status:?}:\n{}",
        replicas[stopping].log()
    );
    assert!(exited_in < Duration::from_secs(DRAIN_S), "it took {exited_in:?}, beyond its drain time");
    // The others kept serving throughout.
    for (i, replica) in replicas.iter().enumerate().filter(|(i, _)| *i != stopping) {
        assert_eq!(exchange(replica.addr, "GET", "/health/ready", &[], "").status, 200, "replica {i}");
    }
    eprintln!(
        "{total} requests through haproxy, replica {stopping} stopped after {} and exited 0 in {exited_in:?}; \
         haproxy retried {} on another replica; test took {:?}",
        total / 4,
        retries(&balancer),
        started.elapsed()
    );
}
