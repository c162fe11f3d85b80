//! Every request bound and per-key limit, tried through a live `kiln serve`: each bound at its
//! maximum (answered) and one past it (400 naming the field, or 413 for the body), and each
//! per-key limit reached (429 `rate_limit_exceeded` with `Retry-After`), with no key in the log.

mod serve_support;

use std::time::Duration;

use kiln::server::api::limits::{
    MAX_COMPLETION_LOGPROBS, MAX_JSON_DEPTH, MAX_LOGIT_BIAS, MAX_LOGIT_BIAS_VALUE, MAX_MESSAGES, MAX_N,
    MAX_NATIVE_RESPONSES, MAX_PROMPTS, MAX_STOP_BYTES, MAX_STOP_SEQUENCES, MAX_TOP_LOGPROBS,
};
use serde_json::{json, Value};
use serve_support::{exchange, serve, OpenStream, Reply, MODEL};

const MAX_BODY_BYTES: usize = 64 * 1024;

fn chat(extra: Value) -> Value {
    let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

fn completion(extra: Value) -> Value {
    let mut body = json!({"model": MODEL, "prompt": "Hi", "max_tokens": 1});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

fn post(addr: std::net::SocketAddr, path: &str, body: &str) -> Reply {
    exchange(addr, "POST", path, &[], body)
}

/// `at` is answered 200; `past` is a 400 naming `param`.
fn assert_bound(addr: std::net::SocketAddr, path: &str, at: &Value, past: &Value, param: &str) {
    let ok = post(addr, path, &at.to_string());
    assert_eq!(ok.status, 200, "at the bound of {param}: {}", ok.body);
    let refused = post(addr, path, &past.to_string());
    assert_eq!(refused.status, 400, "one past the bound of {param}: {}", refused.body);
    assert_eq!(refused.json()["error"]["param"], param, "{}", refused.body);
}

#[test]
fn every_request_bound_is_answered_at_and_refused_one_past() {
    let served = serve(&["--backend", "cpu"], &["--max-body-bytes", &MAX_BODY_BYTES.to_string()], &[]);
    let addr = served.addr;
    let chat_path = "/v1/chat/completions";
    let completions_path = "/v1/completions";
    let native_path = &format!("/v1/inference/{MODEL}");

    let n = MAX_N;
    assert_bound(addr, chat_path, &chat(json!({"n": n})), &chat(json!({"n": n + 1})), "n");
    let k = MAX_TOP_LOGPROBS;
    assert_bound(
        addr,
        chat_path,
        &chat(json!({"logprobs": true, "top_logprobs": k})),
        &chat(json!({"logprobs": true, "top_logprobs": k + 1})),
        "top_logprobs",
    );
    let k = MAX_COMPLETION_LOGPROBS;
    assert_bound(
        addr,
        completions_path,
        &completion(json!({"logprobs": k})),
        &completion(json!({"logprobs": k + 1})),
        "logprobs",
    );
    let stops = |count: usize| (0..count).map(|i| format!("#{i}#")).collect::<Vec<_>>();
    assert_bound(
        addr,
        chat_path,
        &chat(json!({"stop": stops(MAX_STOP_SEQUENCES)})),
        &chat(json!({"stop": stops(MAX_STOP_SEQUENCES + 1)})),
        "stop",
    );
    assert_bound(
        addr,
        native_path,
        &json!({"input": "Hi", "max_new_tokens": 1, "stop": "x".repeat(MAX_STOP_BYTES)}),
        &json!({"input": "Hi", "max_new_tokens": 1, "stop": "x".repeat(MAX_STOP_BYTES + 1)}),
        "stop",
    );
    let r = MAX_NATIVE_RESPONSES;
    assert_bound(
        addr,
        native_path,
        &json!({"input": "Hi", "max_new_tokens": 1, "num_responses": r}),
        &json!({"input": "Hi", "max_new_tokens": 1, "num_responses": r + 1}),
        "num_responses",
    );
    let prompts = |count: usize| vec!["Hi"; count];
    assert_bound(
        addr,
        completions_path,
        &completion(json!({"prompt": prompts(MAX_PROMPTS)})),
        &completion(json!({"prompt": prompts(MAX_PROMPTS + 1)})),
        "prompt",
    );
    // So many messages pass the count but not this test server's small context: at the bound the
    // refusal is about the context, one past it about the count.
    let messages = |count: usize| chat(json!({"messages": vec![json!({"role": "user", "content": "x"}); count]}));
    let at = post(addr, chat_path, &messages(MAX_MESSAGES).to_string());
    assert_eq!(at.json()["error"]["code"], "context_length_exceeded", "{}", at.body);
    let past = post(addr, chat_path, &messages(MAX_MESSAGES + 1).to_string());
    assert_eq!((past.status, past.json()["error"]["code"].clone()), (400, json!("invalid_value")), "{}", past.body);
    assert_eq!(past.json()["error"]["param"], "messages");
    // The body is the first level; `metadata` (accepted, changes nothing) and the object it must
    // be carry the nesting.
    let nested = |levels: usize| {
        let mut value = json!(1);
        for _ in 2..levels {
            value = json!([value]);
        }
        chat(json!({"metadata": {"k": value}}))
    };
    assert_bound(addr, chat_path, &nested(MAX_JSON_DEPTH), &nested(MAX_JSON_DEPTH + 1), "metadata");

    let bias = |count: usize| json!((0..count).map(|t| (t.to_string(), json!(0))).collect::<serde_json::Map<_, _>>());
    assert_bound(
        addr,
        completions_path,
        &completion(json!({"logit_bias": bias(MAX_LOGIT_BIAS)})),
        &completion(json!({"logit_bias": bias(MAX_LOGIT_BIAS + 1)})),
        "logit_bias",
    );
    assert_bound(
        addr,
        chat_path,
        &chat(json!({"logit_bias": {"5": MAX_LOGIT_BIAS_VALUE}})),
        &chat(json!({"logit_bias": {"5": MAX_LOGIT_BIAS_VALUE + 0.5}})),
        "logit_bias",
    );

    // Webhooks may not reach the server's own network unless the operator allows it.
    for internal in ["http://169.254.169.254/latest/meta-data", "http://127.0.0.1:9/hook", "http://[::1]/hook"] {
        let body = json!({"input": "Hi", "max_new_tokens": 1, "webhook": internal}).to_string();
        let refused = post(addr, native_path, &body);
        assert_eq!((refused.status, refused.json()["error"]["param"].clone()), (400, json!("webhook")), "{internal}");
    }

    // The context: the prompt (token ids, so its length is exact) plus max_tokens.
    let models = exchange(addr, "GET", "/v1/models", &[], "").json();
    let context = models["data"][0]["max_model_len"].as_u64().expect("max_model_len") as usize;
    let ids = |count: usize| vec![28u32; count];
    assert_bound(
        addr,
        completions_path,
        &completion(json!({"prompt": ids(context - 1), "max_tokens": 1})),
        &completion(json!({"prompt": ids(context - 1), "max_tokens": 2})),
        "max_tokens",
    );
    let too_long = post(addr, completions_path, &completion(json!({"prompt": ids(context)})).to_string());
    assert_eq!((too_long.status, too_long.json()["error"]["param"].clone()), (400, json!("prompt")));
    assert_eq!(too_long.json()["error"]["code"], "context_length_exceeded");
    // Detokenize reads at most a context's worth of ids.
    assert_bound(addr, "/detokenize", &json!({"tokens": ids(context)}), &json!({"tokens": ids(context + 1)}), "tokens");

    // The body: exactly at the limit is read, one byte more is 413.
    let padded = |size: usize| {
        let body = chat(json!({"user": ""})).to_string();
        let padding = size - body.len();
        chat(json!({"user": "u".repeat(padding)})).to_string()
    };
    let at = padded(MAX_BODY_BYTES);
    assert_eq!(at.len(), MAX_BODY_BYTES);
    assert_eq!(post(addr, chat_path, &at).status, 200);
    assert_eq!(post(addr, chat_path, &padded(MAX_BODY_BYTES + 1)).status, 413);
}

#[test]
fn per_key_limits_answer_429_with_retry_after_and_keys_are_never_logged() {
    let keys = tempfile_with(
        "# key            limits\n\
         sk-rpm-7f3a      rpm=2\n\
         sk-tpm-91c2      tpm=20\n\
         sk-one-5d0e      concurrent=1\n\
         sk-free-c4b8\n",
    );
    let served = serve(&["--backend", "cpu"], &["--api-keys-file", keys.to_str().unwrap()], &[]);
    let addr = served.addr;
    let as_key = |key: &str, method: &str, path: &str, body: &str| {
        let bearer = format!("Bearer {key}");
        exchange(addr, method, path, &[("Authorization", &bearer)], body)
    };
    let assert_limited = |reply: &Reply, what: &str| {
        assert_eq!(reply.status, 429, "{what}: {}", reply.body);
        let error = &reply.json()["error"];
        assert_eq!(
            (error["type"].clone(), error["code"].clone()),
            (json!("rate_limit_error"), json!("rate_limit_exceeded"))
        );
        let retry: u64 = reply.header("retry-after").expect("Retry-After").parse().unwrap();
        assert!((1..=60).contains(&retry), "{what}: Retry-After {retry}");
    };

    // Requests per minute: the third in a minute is refused.
    for _ in 0..2 {
        assert_eq!(as_key("sk-rpm-7f3a", "GET", "/v1/models", "").status, 200);
    }
    assert_limited(&as_key("sk-rpm-7f3a", "GET", "/v1/models", ""), "rpm");
    assert_eq!(as_key("sk-free-c4b8", "GET", "/v1/models", "").status, 200, "other keys are not limited");

    // Tokens per minute: prompt and generated tokens count; past 20 the next request waits.
    let small = completion(json!({"max_tokens": 25, "temperature": 0})).to_string();
    let first = as_key("sk-tpm-91c2", "POST", "/v1/completions", &small);
    assert_eq!(first.status, 200, "{}", first.body);
    let refused = as_key("sk-tpm-91c2", "POST", "/v1/completions", &small);
    assert_limited(&refused, "tpm");
    assert!(refused.json()["error"]["message"].as_str().unwrap().contains("20 tokens per minute"));

    // Concurrent requests: a second while one streams is refused; after it, admitted.
    let long = completion(json!({"max_tokens": 200, "stream": true, "prompt": "1, 2, 3, 4, 5,"})).to_string();
    let mut running = OpenStream::start(addr, "/v1/completions", &[("Authorization", "Bearer sk-one-5d0e")], &long);
    running.wait_for_first_event();
    let second = as_key("sk-one-5d0e", "POST", "/v1/completions", &small);
    assert_limited(&second, "concurrent");
    assert_eq!(second.header("retry-after").as_deref(), Some("1"));
    assert_eq!(running.finish().status, 200);
    let started = std::time::Instant::now();
    let mut after = as_key("sk-one-5d0e", "POST", "/v1/completions", &small);
    // The finished request's slot is freed as its handler returns, just after its last byte.
    while after.status == 429 && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
        after = as_key("sk-one-5d0e", "POST", "/v1/completions", &small);
    }
    assert_eq!(after.status, 200, "{}", after.body);

    let log = served.log();
    assert!(log.contains("tokens_out="), "the access log is there to search: {log}");
    for key in ["sk-rpm-7f3a", "sk-tpm-91c2", "sk-one-5d0e", "sk-free-c4b8"] {
        assert!(!log.contains(key), "{key} appears in the log");
    }
    let label = format!("key={}:3", keys.display());
    assert!(log.contains(&label), "keys are named by their line ({label}):\n{log}");
}

/// A file in the target directory's temp folder holding `text`.
fn tempfile_with(text: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("keys-{}.txt", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}
