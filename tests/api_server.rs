//! The HTTP API over real sockets, against the default model served in-process: OpenAI chat and
//! completions (whole and streamed), stop sequences, n, seeds, logprobs, JSON mode, the native
//! API with its webhook, errors, authentication and disconnect cancellation.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use kiln::cli::serve::{start, ServeArgs};
use kiln::engine::json_schema::{CompiledSchema, SchemaMatcher};
use kiln::server::http::Server;
use serde_json::{json, Value};

const MODEL: &str = "SmolLM2-135M-Instruct";
const FRANCE: &str = "What is the capital of France? Answer in one sentence.";

fn server_with(args: ServeArgs) -> Server {
    start(
        ServeArgs {
            port: 0,
            kv_memory_bytes: Some(256 << 20),
            backend: kiln::cli::load::BackendChoice::Cpu,
            max_batch_tokens: 256,
            max_seqs: 8,
            ..args
        },
        false,
    )
    .expect("the server starts")
}

/// One server for the whole file: loading the model once keeps the suite fast.
fn server() -> SocketAddr {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER
        .get_or_init(|| server_with(ServeArgs { webhook_allow: vec!["127.0.0.1".into()], ..ServeArgs::default() }))
        .local_addr()
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// The `data:` payloads of an SSE body, in order.
    fn events(&self) -> Vec<String> {
        String::from_utf8(self.body.clone())
            .unwrap()
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: ").map(str::to_string))
            .collect()
    }
}

fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        head += &format!("{name}: {value}\r\n");
    }
    head += "\r\n";
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    read_reply(&mut reader, method == "HEAD")
}

fn read_reply(reader: &mut impl BufRead, head_only: bool) -> Reply {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status: u16 = line.split_whitespace().nth(1).expect("a status line").parse().unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        let (name, value) = line.trim_end().split_once(':').unwrap();
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let header = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if head_only {
        // A HEAD reply announces the GET's length but carries no body.
    } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            let size = usize::from_str_radix(line.trim(), 16).unwrap();
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).unwrap();
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(length) = header("content-length") {
        body.resize(length.parse().unwrap(), 0);
        reader.read_exact(&mut body).unwrap();
    }
    Reply { status, headers, body }
}

fn post(path: &str, body: Value) -> Reply {
    request(server(), "POST", path, &[("Content-Type", "application/json")], &body.to_string())
}

fn chat_body(extra: Value) -> Value {
    let mut body =
        json!({"model": MODEL, "messages": [{"role": "user", "content": FRANCE}], "temperature": 0, "max_tokens": 20});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[test]
fn health_models_and_metrics() {
    let addr = server();
    assert_eq!(request(addr, "GET", "/health", &[], "").status, 200);
    let models = request(addr, "GET", "/v1/models", &[], "").json();
    assert_eq!(models["data"][0]["id"], MODEL);
    let head = request(addr, "HEAD", "/v1/openai/models", &[], "");
    assert_eq!((head.status, head.body.len()), (200, 0));
    let metrics = String::from_utf8(request(addr, "GET", "/metrics", &[], "").body).unwrap();
    assert!(metrics.contains("# TYPE kiln_time_to_first_token_seconds histogram"), "{metrics}");
}

#[test]
fn chat_completion_answers_like_the_reference() {
    let reply = post("/v1/chat/completions", chat_body(json!({})));
    assert_eq!(reply.status, 200);
    let v = reply.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], MODEL);
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    // tests/data/smollm2_greedy.json, case chat_capital_france.
    assert_eq!(v["choices"][0]["message"]["content"], "The capital of France is Paris.");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let usage = &v["usage"];
    assert_eq!(usage["completion_tokens"], 7, "the EOS token is not counted as text");
    assert_eq!(usage["total_tokens"], usage["prompt_tokens"].as_u64().unwrap() + 7);
    let cost = usage["estimated_cost"].as_f64().unwrap();
    let expected = (usage["prompt_tokens"].as_f64().unwrap() * 0.64 + 7.0 * 0.80) / 1e6;
    assert!((cost - expected).abs() < 1e-12);
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
}

#[test]
fn streamed_chat_sends_role_deltas_finish_usage_and_done() {
    let reply = post(
        "/v1/openai/chat/completions",
        chat_body(json!({"stream": true, "stream_options": {"include_usage": true}})),
    );
    assert_eq!(reply.status, 200);
    assert!(reply.headers.iter().any(|(k, v)| k == "content-type" && v == "text/event-stream"));
    let events = reply.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks.iter().filter_map(|c| c["choices"].get(0)?["delta"]["content"].as_str()).collect();
    assert_eq!(text, "The capital of France is Paris.");
    let deltas = chunks
        .iter()
        .filter(|c| {
            c["choices"].get(0).is_some_and(|ch| ch["delta"]["content"].as_str().is_some_and(|t| !t.is_empty()))
        })
        .count();
    assert!(deltas >= 5, "tokens arrive one by one, not in one piece ({deltas} deltas)");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 7);
    assert!(!String::from_utf8_lossy(&reply.body).contains("<|im_end|>"), "no special token in the text");
}

#[test]
fn stop_sequences_are_cut_and_never_streamed() {
    let whole = post("/v1/chat/completions", chat_body(json!({"stop": ["Paris"]}))).json();
    assert_eq!(whole["choices"][0]["message"]["content"], "The capital of France is ");
    assert_eq!(whole["choices"][0]["finish_reason"], "stop");
    let streamed = post("/v1/chat/completions", chat_body(json!({"stop": "Paris", "stream": true})));
    let body = String::from_utf8(streamed.body.clone()).unwrap();
    assert!(!body.contains("Paris"), "held-back text that completes a stop string is never sent: {body}");
    let text: String = streamed
        .events()
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| {
            let v: Value = serde_json::from_str(e).unwrap();
            v["choices"][0]["delta"]["content"].as_str().map(str::to_string)
        })
        .collect();
    assert_eq!(text, "The capital of France is ");
    // A stop string that starts like the output but diverges is released in full.
    let partial = post("/v1/chat/completions", chat_body(json!({"stop": ["France was"]}))).json();
    assert_eq!(partial["choices"][0]["message"]["content"], "The capital of France is Paris.");
}

#[test]
fn completions_raw_prompt_echo_and_logprobs() {
    let v = post("/v1/completions", json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 5, "temperature": 0, "echo": true, "logprobs": 2})).json();
    // tests/data/smollm2_greedy.json, case raw_capital_france.
    assert_eq!(v["choices"][0]["text"], "The capital of France is Paris.\n\nThe");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let logprobs = &v["choices"][0]["logprobs"];
    assert_eq!(logprobs["tokens"].as_array().unwrap().len(), 5);
    assert_eq!(logprobs["text_offset"][0], "The capital of France is".len());
    let first = logprobs["token_logprobs"][0].as_f64().unwrap();
    assert!(first < 0.0 && first > -5.0);
    assert_eq!(logprobs["top_logprobs"][0].as_object().unwrap().len(), 2);
    assert_eq!(v["object"], "text_completion");
}

#[test]
fn chat_logprobs_n_and_seeds() {
    let body = chat_body(
        json!({"temperature": 1.0, "n": 2, "seed": 1234, "max_tokens": 8, "logprobs": true, "top_logprobs": 3}),
    );
    let a = post("/v1/chat/completions", body.clone()).json();
    let b = post("/v1/chat/completions", body).json();
    assert_eq!(a["choices"].as_array().unwrap().len(), 2);
    assert_eq!(a["choices"], b["choices"], "the same seed gives the same completions");
    let content = a["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert!(!content.is_empty());
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 3);
    assert_eq!(
        a["usage"]["completion_tokens"].as_u64().unwrap() as usize,
        a["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["logprobs"]["content"].as_array().unwrap().len())
            .sum::<usize>()
    );
}

#[test]
fn json_mode_returns_a_json_object() {
    let v = post(
        "/v1/chat/completions",
        json!({
            "model": MODEL, "temperature": 0, "max_tokens": 100,
            "messages": [
                {"role": "user", "content": "What is the capital of Italy? Answer in JSON."},
                {"role": "assistant", "content": "{\"capital\": \"Rome\"}"},
                {"role": "user", "content": "What is the capital of France? Answer in JSON."},
            ],
            "response_format": {"type": "json_object"},
        }),
    )
    .json();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "the object closed within the budget: {content}");
    let parsed: Value = serde_json::from_str(content).unwrap_or_else(|e| panic!("{e}: {content}"));
    assert!(parsed.is_object(), "{content}");
    // Even a prompt that asks for prose yields JSON: cut by max_tokens, it is a valid prefix.
    let v = post(
        "/v1/chat/completions",
        chat_body(json!({
            "messages": [{"role": "user", "content": "Write a poem about the sea."}],
            "response_format": {"type": "json_object"}, "max_tokens": 24,
        })),
    )
    .json();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    let object = CompiledSchema::compile(&json!({"type": "object"})).unwrap();
    let mut matcher = SchemaMatcher::new(&object);
    assert!(content.trim_start().starts_with('{') && matcher.feed(&object, content.as_bytes()), "{content}");
}

/// The native API takes a JSON schema in both shapes; a schema with an unsupported keyword is
/// refused before anything runs, naming the field and the keyword.
#[test]
fn native_json_schema_outputs_validate() {
    let schema = json!({"type": "object", "properties": {"city": {"enum": ["Paris", "Lyon"]},
                        "year": {"type": "integer"}}, "required": ["city", "year"], "additionalProperties": false});
    for format in [
        json!({"type": "json_object", "schema": schema}),
        json!({"type": "json_schema", "json_schema": {"name": "place", "schema": schema}}),
    ] {
        for seed in 0..4 {
            let v = post(
                &format!("/v1/inference/{MODEL}"),
                json!({"input": "A city in France as JSON:", "max_new_tokens": 200, "temperature": 1, "seed": seed,
                       "response_format": format}),
            )
            .json();
            let text = v["results"][0]["generated_text"].as_str().unwrap();
            let parsed: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
            assert!(["Paris", "Lyon"].contains(&parsed["city"].as_str().unwrap()), "{text}");
            assert!(parsed["year"].is_i64() && parsed.as_object().unwrap().len() == 2, "{text}");
        }
    }
    let refused = post(
        &format!("/v1/inference/{MODEL}"),
        json!({"input": "x", "response_format": {"type": "json_object", "schema": {"type": "integer", "minimum": 3}}}),
    );
    assert_eq!(refused.status, 400);
    let error = refused.json();
    assert_eq!(error["error"]["param"], "response_format.schema", "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("`minimum`"), "{error}");
}

/// A tool whose parameters use a keyword constrained calls cannot follow is named by its index
/// when the output must be a call; with `auto` the schema only goes to the model.
#[test]
fn required_calls_name_the_tool_whose_schema_is_unsupported() {
    let tools = json!([
        {"type": "function", "function": {"name": "ok", "parameters": {"type": "object", "properties": {}}}},
        {"type": "function", "function": {"name": "odd", "parameters": {"type": "object",
            "properties": {"n": {"type": "integer", "minimum": 1}}}}}
    ]);
    let refused = post("/v1/chat/completions", chat_body(json!({"tools": tools, "tool_choice": "required"})));
    assert_eq!(refused.status, 400);
    let error = refused.json();
    assert_eq!(error["error"]["param"], "tools[1].function.parameters", "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("`minimum`"), "{error}");
    let auto = post("/v1/chat/completions", chat_body(json!({"tools": tools, "max_tokens": 4})));
    assert_eq!(auto.status, 200, "{:?}", String::from_utf8_lossy(&auto.body));
}

#[test]
fn errors_have_openai_shape_and_status() {
    let cases = [
        (chat_body(json!({"temperature": 3})), 400, Some("temperature")),
        (chat_body(json!({"n": 9})), 400, Some("n")),
        (chat_body(json!({"model": "gpt-4"})), 404, Some("model")),
        (chat_body(json!({"max_tokens": 9000})), 400, Some("max_tokens")),
        (
            chat_body(
                json!({"messages": [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]}),
            ),
            200,
            None,
        ),
    ];
    for (body, status, param) in cases {
        let reply = post("/v1/chat/completions", body.clone());
        assert_eq!(reply.status, status, "{body}");
        if status != 200 {
            let v = reply.json();
            assert_eq!(v["error"]["param"].as_str(), param, "{v}");
            assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
    }
    let context = post("/v1/chat/completions", chat_body(json!({"max_tokens": 9000}))).json();
    assert_eq!(context["error"]["code"], "context_length_exceeded");
    // The prompt fits, so the field to reduce is the one asking for too much.
    assert_eq!(context["error"]["param"], "max_tokens");
    let bad_json = request(server(), "POST", "/v1/chat/completions", &[], "{nope");
    assert_eq!((bad_json.status, bad_json.json()["error"]["type"].as_str()), (400, Some("invalid_request_error")));
    assert_eq!(request(server(), "GET", "/v1/nothing", &[], "").status, 404);
    assert_eq!(request(server(), "GET", "/v1/chat/completions", &[], "").status, 405);
}

#[test]
fn api_keys_are_required_when_configured() {
    let keyed = server_with(ServeArgs { api_keys: vec!["sk-test".into()], ..ServeArgs::default() });
    let addr = keyed.local_addr();
    let body = chat_body(json!({"max_tokens": 2})).to_string();
    let missing = request(addr, "POST", "/v1/chat/completions", &[], &body);
    assert_eq!((missing.status, missing.json()["error"]["type"].as_str()), (401, Some("authentication_error")));
    assert_eq!(
        request(addr, "POST", "/v1/chat/completions", &[("Authorization", "Bearer sk-wrong")], &body).status,
        401
    );
    assert_eq!(
        request(addr, "POST", "/v1/chat/completions", &[("Authorization", "Bearer sk-test")], &body).status,
        200
    );
    assert_eq!(request(addr, "GET", "/health", &[], "").status, 200, "health needs no key");
    keyed.shutdown_handle().trigger();
}

#[test]
fn native_inference_with_and_without_webhook() {
    let v = post(
        &format!("/v1/inference/{MODEL}"),
        json!({"input": "The capital of France is", "max_new_tokens": 5, "temperature": 0}),
    )
    .json();
    assert_eq!(v["results"][0]["generated_text"], " Paris.\n\nThe");
    assert_eq!(v["num_tokens"], 5);
    assert_eq!(v["inference_status"]["status"], "succeeded");
    assert_eq!(v["inference_status"]["tokens_generated"], 5);
    assert_eq!(v["inference_status"]["tokens_input"], v["num_input_tokens"]);
    assert!(v["inference_status"]["cost"].as_f64().unwrap() > 0.0);
    assert_eq!(post("/v1/inference/other-model", json!({"input": "x"})).status, 404);
    let refused = post(&format!("/v1/inference/{MODEL}"), json!({"input": "x", "webhook": "http://10.0.0.1/hook"}));
    assert_eq!((refused.status, refused.json()["error"]["param"].as_str()), (400, Some("webhook")));

    let receiver = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://127.0.0.1:{}/done", receiver.local_addr().unwrap().port());
    let queued = post(
        &format!("/v1/inference/{MODEL}"),
        json!({"input": "The capital of France is", "max_new_tokens": 5, "temperature": 0, "webhook": url}),
    )
    .json();
    assert_eq!(queued["inference_status"]["status"], "queued");
    let (stream, _) = receiver.accept().unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "POST /done HTTP/1.1\r\n");
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (&stream).write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap();
    let delivered: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(delivered["request_id"], queued["request_id"]);
    assert_eq!(delivered["results"][0]["generated_text"], " Paris.\n\nThe");
}

#[test]
fn native_stream_ends_with_the_full_text() {
    let reply = post(
        &format!("/v1/inference/{MODEL}"),
        json!({"input": "The capital of France is", "max_new_tokens": 5, "temperature": 0, "stream": true}),
    );
    let events = reply.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(last["generated_text"], " Paris.\n\nThe");
    assert_eq!(last["details"]["finish_reason"], "length");
}

#[test]
fn serves_the_default_model_from_its_original_quantized_file() {
    let quantized = server_with(ServeArgs { original_weights: true, ..ServeArgs::default() });
    let reply = request(quantized.local_addr(), "POST", "/v1/chat/completions", &[], &chat_body(json!({})).to_string());
    assert_eq!(reply.json()["choices"][0]["message"]["content"], "The capital of France is Paris.");
    quantized.shutdown_handle().trigger();
}

#[test]
fn health_is_503_until_the_model_is_ready() {
    use std::sync::{Arc, OnceLock};
    let slot = Arc::new(OnceLock::new());
    let loading = Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        kiln::server::http::HttpConfig::default(),
        kiln::server::routes::Routes(slot),
    )
    .unwrap();
    let reply = request(loading.local_addr(), "GET", "/health", &[], "");
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["error"]["code"], "not_ready");
    assert_eq!(request(loading.local_addr(), "POST", "/v1/chat/completions", &[], "{}").status, 503);
    loading.shutdown_handle().trigger();
}

/// A client that leaves while waiting for a whole (non-streamed) answer cancels it too.
#[test]
fn disconnect_cancels_a_non_streamed_generation() {
    let addr = server();
    let metric = |name: &str| -> u64 {
        let text = String::from_utf8(request(addr, "GET", "/metrics", &[], "").body).unwrap();
        text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).unwrap().parse().unwrap()
    };
    let body =
        json!({"model": MODEL, "prompt": "Count from one to one thousand:", "max_tokens": 3000, "temperature": 0})
            .to_string();
    let generated_before = metric("kiln_generated_tokens_total");
    let cancelled_before = metric("kiln_requests_cancelled_total");
    let mut stream = TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    // Leave once generation has visibly started.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while metric("kiln_generated_tokens_total") == generated_before {
        assert!(std::time::Instant::now() < deadline, "generation never started");
        std::thread::yield_now();
    }
    drop(stream);
    while metric("kiln_requests_cancelled_total") == cancelled_before {
        assert!(std::time::Instant::now() < deadline, "the generation was not cancelled");
        std::thread::yield_now();
    }
}

/// A client that disconnects mid-stream cancels its generation and frees its KV blocks.
#[test]
fn disconnect_cancels_generation() {
    let addr = server();
    let metric = |name: &str| -> u64 {
        let text = String::from_utf8(request(addr, "GET", "/metrics", &[], "").body).unwrap();
        text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).unwrap().parse().unwrap()
    };
    let cancelled_before = metric("kiln_requests_cancelled_total");
    // The model answers this in three tokens ("One thousand."): `ignore_eos` keeps it generating,
    // so that only the hang-up can end the request.
    let body = chat_body(json!({"max_tokens": 2000, "stream": true, "ignore_eos": true, "messages": [{"role": "user", "content": "Count from one to one thousand in words."}]})).to_string();
    let mut stream = TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    // Read until the first content delta has arrived, then hang up.
    while !line.contains("\"content\":\"") || line.contains("\"role\"") {
        line.clear();
        reader.read_line(&mut line).unwrap();
    }
    drop(reader);
    drop(stream);
    // The engine cancels within a step; wait on the counter itself (bounded: 60 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while metric("kiln_requests_cancelled_total") == cancelled_before {
        assert!(std::time::Instant::now() < deadline, "the generation was not cancelled");
        std::thread::yield_now();
    }
}
