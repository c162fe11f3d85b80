//! `kiln serve` as a supervisor sees it: liveness and readiness, the drain after SIGTERM (readiness
//! 503 at once, short streams finish, long ones are cut with an error event at
//! `--shutdown-timeout`, exit 0), a stalled engine step turning liveness 503, and the access log.

mod serve_support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use serve_support::{exchange, request, serve, sse_events, wait_until, OpenStream, MODEL};

/// A prompt the default model continues for as long as it is let (greedy counting).
fn counting(max_tokens: usize, stream: bool) -> String {
    json!({
        "model": MODEL,
        "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,",
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    })
    .to_string()
}

#[test]
fn sigterm_drains_readiness_503_short_streams_finish_long_ones_are_cut() {
    let mut served = serve(&["--backend", "cpu"], &["--shutdown-timeout", "3"], &[]);
    let addr = served.addr;
    for path in ["/health", "/health/ready"] {
        assert_eq!(request(addr, "GET", path, "").0, 200, "{path}");
    }
    assert_eq!(exchange(addr, "GET", "/health/live", &[], "").json()["status"], "alive");

    let mut long = OpenStream::start(addr, "/v1/completions", &[], &counting(1400, true));
    let mut short = OpenStream::start(addr, "/v1/completions", &[], &counting(12, true));
    long.wait_for_first_event();
    short.wait_for_first_event();
    served.terminate();
    let signalled = Instant::now();

    // Readiness turns 503 (new connections are still answered while draining), liveness stays
    // 200, and new work is refused with a hint to retry elsewhere.
    let mut ready = exchange(addr, "GET", "/health/ready", &[], "");
    assert!(
        wait_until(Duration::from_secs(10), || {
            ready = exchange(addr, "GET", "/health/ready", &[], "");
            ready.status == 503
        }),
        "readiness while draining: {} {}",
        ready.status,
        ready.body
    );
    assert_eq!(ready.json()["error"]["code"], "shutting_down");
    assert_eq!(ready.header("retry-after").as_deref(), Some("1"));
    assert_eq!(request(addr, "GET", "/health", "").0, 503);
    assert_eq!(request(addr, "GET", "/health/live", "").0, 200, "draining is alive");
    let refused = exchange(addr, "POST", "/v1/completions", &[], &counting(4, false));
    assert_eq!((refused.status, refused.json()["error"]["code"].clone()), (503, json!("shutting_down")));

    // The short stream finishes normally.
    let short = short.finish();
    let events = sse_events(&short.body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "short stream: {} events", events.len());

    // The long one is cut at the shutdown timeout with an error event, not [DONE].
    let long = long.finish();
    let cut_after = signalled.elapsed();
    let events = sse_events(&long.body);
    let tail = &events[events.len().saturating_sub(2)..];
    let last: Value = serde_json::from_str(events.last().expect("events")).expect("the last event is JSON");
    assert_eq!(last["error"]["code"], "shutting_down", "the last of {} events: {tail:?}", events.len());
    assert!(!events.iter().any(|e| e == "[DONE]"));
    assert!(events.len() > 5, "it streamed before it was cut: {tail:?}");
    assert!(
        cut_after >= Duration::from_millis(2500) && cut_after < Duration::from_secs(30),
        "cut {cut_after:?} after SIGTERM with --shutdown-timeout 3"
    );

    let status = served.wait_exit(Duration::from_secs(30)).expect("kiln exits after the drain");
    assert!(status.success(), "a drain is a clean stop: {status:?}\n{}", served.log());
    assert!(request(addr, "GET", "/health/live", "").0 == 0, "the listener is closed after the drain");
}

#[test]
fn a_stalled_step_turns_liveness_503_until_the_engine_moves_again() {
    // The 2nd step sleeps 4 s (KILN_TEST_FAULT=step-stall), past a 1 s liveness limit.
    let served = serve(&["--backend", "cpu"], &["--liveness-timeout", "1"], &[("KILN_TEST_FAULT", "step-stall:2")]);
    let addr = served.addr;
    assert_eq!(request(addr, "GET", "/health/live", "").0, 200, "an idle engine beats");
    let answer = std::thread::spawn(move || request(addr, "POST", "/v1/completions", &counting(6, false)));
    let mut live = exchange(addr, "GET", "/health/live", &[], "");
    assert!(
        wait_until(Duration::from_secs(10), || {
            live = exchange(addr, "GET", "/health/live", &[], "");
            live.status == 503
        }),
        "liveness never saw the stall"
    );
    assert_eq!(live.json()["error"]["code"], "engine_stalled", "{}", live.body);
    let (status, body) = answer.join().unwrap();
    assert_eq!(status, 200, "the stalled request still completes: {body}");
    assert!(wait_until(Duration::from_secs(5), || request(addr, "GET", "/health/live", "").0 == 200));
}

#[test]
fn every_request_gets_one_access_log_line_without_the_runtimes_chatter() {
    let served = serve(&["--backend", "cpu"], &[], &[]);
    let addr = served.addr;
    let reply = exchange(addr, "POST", "/v1/completions", &[], &counting(5, false));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let id = reply.header("x-request-id").expect("every answer carries its request id");
    assert_eq!(request(addr, "GET", "/nowhere?secret=1", "").0, 404);
    // The line is written after the response; wait for it.
    assert!(wait_until(Duration::from_secs(10), || served.log().contains("\"/nowhere\" 404")), "{}", served.log());
    let log = served.log();
    let completion =
        log.lines().find(|l| l.contains("POST \"/v1/completions\" 200")).unwrap_or_else(|| panic!("{log}"));
    assert!(completion.contains("tokens_out=5") && completion.contains(&format!(" id={id} ")), "{completion}");
    assert_eq!(reply.json()["id"], format!("cmpl-{id}"), "the log's id is the completion's, unprefixed");
    assert!(!completion.contains("tokens_in=0"), "{completion}");
    assert!(!log.contains("secret=1"), "query strings are not logged");
    assert!(!log.contains("epoll"), "the coroutine runtime's per-connection lines are filtered:\n{log}");
}
