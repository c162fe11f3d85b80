//! A dead engine is never hidden. With a test-only fault (`KILN_TEST_FAULT`) the 4th step of
//! `kiln serve` fails as a broken device would, or panics; then every request in flight ends
//! with an error in OpenAI's shape (a 500, or an error event that ends the stream), readiness
//! answers 503 naming the failure, and kiln drains and exits non-zero for its supervisor to
//! restart it, its log saying why.

mod serve_support;

use std::time::Duration;

use serde_json::{json, Value};
use serve_support::{request, serve, sse_events, MODEL};

fn chat(stream: bool) -> String {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}],
        "max_tokens": 40,
        "temperature": 0,
        "stream": stream,
    })
    .to_string()
}

fn assert_engine_failure_is_never_hidden(fault: &str, cause: &str) {
    let mut served = serve(&["--backend", "cpu"], &[], &[("KILN_TEST_FAULT", fault)]);
    let addr = served.addr;
    // Both requests are in flight when the 4th step fails.
    let streamed = std::thread::spawn(move || request(addr, "POST", "/v1/chat/completions", &chat(true)));
    let whole = request(addr, "POST", "/v1/chat/completions", &chat(false));
    let streamed = streamed.join().unwrap();

    assert_eq!(whole.0, 500, "{fault}: the whole answer: {}", whole.1);
    let error: Value = serde_json::from_str(&whole.1).expect("an OpenAI error body");
    let message = error["error"]["message"].as_str().expect("error.message");
    assert!(message.contains(cause), "{fault}: {message}");
    assert_eq!(error["error"]["type"], "server_error", "{fault}: {error}");

    assert_eq!(streamed.0, 200, "{fault}: the stream had started");
    let events = sse_events(&streamed.1);
    let last: Value = serde_json::from_str(events.last().expect("events")).expect("a JSON event");
    assert!(last["error"]["message"].as_str().is_some_and(|m| m.contains(cause)), "{fault}: {events:?}");
    assert!(!events.iter().any(|e| e == "[DONE]"), "{fault}: a failed stream does not claim to be done");

    // Readiness turns 503 at once and says why; a new request is refused the same way.
    let (status, body) = request(addr, "GET", "/health", "");
    assert_eq!(status, 503, "{fault}: /health after the failure: {body}");
    assert!(body.contains("engine_failed") && body.contains(cause), "{fault}: {body}");
    assert_eq!(request(addr, "POST", "/v1/chat/completions", &chat(false)).0, 503, "{fault}: a new request");

    // Then kiln drains and exits non-zero, its log naming the cause.
    let status = served.wait_exit(Duration::from_secs(60)).expect("kiln exits after its engine failed");
    assert!(!status.success(), "{fault}: exit status {status:?}");
    let log = served.log();
    assert!(log.contains("the engine failed") && log.contains(cause), "{fault}: log:\n{log}");
}

#[test]
fn a_failed_device_step_fails_every_request_and_stops_kiln() {
    assert_engine_failure_is_never_hidden("step-error:4", "injected fault");
}

#[test]
fn an_engine_panic_fails_every_request_and_stops_kiln() {
    assert_engine_failure_is_never_hidden("step-panic:4", "injected engine panic");
}
