//! The details OpenAI and vLLM clients rely on, over real sockets against the default model:
//! `logit_bias`, `ignore_eos`, `usage.prompt_tokens_details.cached_tokens`, `/tokenize` and
//! `/detokenize`, `/v1/models/{model}`, `X-Request-Id` (echoed, used as the completion id, in the
//! access log), and OpenAI fields kiln cannot honour refused with a 400 that names them.

mod serve_support;

use std::net::SocketAddr;
use std::sync::OnceLock;

use kiln::cli::serve::{start, ServeArgs};
use kiln::server::http::Server;
use serde_json::{json, Value};
use serve_support::{exchange, serve, sse_events, Reply, MODEL};

const FRANCE: &str = "What is the capital of France? Answer in one sentence.";
/// The default model's vocabulary.
const VOCAB: u64 = 49152;

fn server_with(args: ServeArgs) -> Server {
    let args = ServeArgs {
        port: 0,
        kv_memory_bytes: Some(256 << 20),
        backend: kiln::cli::load::BackendChoice::Cpu,
        max_batch_tokens: 256,
        max_seqs: 8,
        ..args
    };
    start(args, false).expect("the server starts")
}

/// One server for the file: the model loads once.
fn server() -> SocketAddr {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| server_with(ServeArgs::default())).local_addr()
}

fn post(path: &str, body: &Value) -> Reply {
    exchange(server(), "POST", path, &[], &body.to_string())
}

fn post_with(path: &str, headers: &[(&str, &str)], body: &Value) -> Reply {
    exchange(server(), "POST", path, headers, &body.to_string())
}

fn chat(extra: Value) -> Value {
    let mut body =
        json!({"model": MODEL, "messages": [{"role": "user", "content": FRANCE}], "temperature": 0, "max_tokens": 20});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

fn ok(reply: Reply) -> Value {
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()
}

fn content(v: &Value) -> String {
    v["choices"][0]["message"]["content"].as_str().expect("a message").to_string()
}

/// The ids of `text` without BOS, from the server's own tokenizer.
fn token_ids(text: &str) -> Vec<u64> {
    let v = ok(post("/tokenize", &json!({"prompt": text, "add_special_tokens": false})));
    v["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect()
}

fn single_token(text: &str) -> u64 {
    let ids = token_ids(text);
    assert_eq!(ids.len(), 1, "{text:?} is one token: {ids:?}");
    ids[0]
}

/// The chunks of a streamed answer, `[DONE]` checked and left out.
fn chunks(reply: &Reply) -> Vec<Value> {
    assert_eq!(reply.status, 200, "{}", reply.body);
    let events = sse_events(&reply.body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{}", reply.body);
    events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect()
}

#[test]
fn logit_bias_pushes_and_bans_tokens_and_logprobs_stay_the_models() {
    // Greedy, the answer is "The capital of France is Paris." (tests/data/smollm2_greedy.json).
    assert_eq!(content(&ok(post("/v1/chat/completions", &chat(json!({}))))), "The capital of France is Paris.");
    let hello = single_token("Hello");
    let pushed = ok(post(
        "/v1/chat/completions",
        &chat(json!({"max_tokens": 3, "logit_bias": {hello.to_string(): 100}, "logprobs": true, "top_logprobs": 1})),
    ));
    assert_eq!(content(&pushed), "HelloHelloHello", "+100 makes the token every greedy choice");
    // The reported log-probabilities are the model's own, before the bias: "Hello" is not what
    // the model would say, and the top alternative is its real first choice.
    let first = &pushed["choices"][0]["logprobs"]["content"][0];
    assert_eq!(first["token"], "Hello");
    assert!(first["logprob"].as_f64().unwrap() < -1.0, "{first}");
    assert_eq!(first["top_logprobs"][0]["token"], "The", "{first}");

    let the = single_token("The");
    let banned = ok(post("/v1/chat/completions", &chat(json!({"logit_bias": {the.to_string(): -100}}))));
    assert!(!content(&banned).starts_with("The"), "-100 takes the greedy token out: {}", content(&banned));

    // Completions too, and with a draw: the biased token takes all the mass.
    let paris = token_ids(" Paris")[0];
    let body = json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 2, "temperature": 0});
    assert!(ok(post("/v1/completions", &body))["choices"][0]["text"].as_str().unwrap().starts_with(" Paris"));
    let mut no_paris = body.clone();
    no_paris["logit_bias"] = json!({paris.to_string(): -100});
    assert!(!ok(post("/v1/completions", &no_paris))["choices"][0]["text"].as_str().unwrap().starts_with(" Paris"));
    let drawn = json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 4, "temperature": 1.0, "seed": 3,
        "logit_bias": {hello.to_string(): 100}});
    assert_eq!(ok(post("/v1/completions", &drawn))["choices"][0]["text"], "HelloHelloHelloHello");

    for (bias, what) in [
        (json!({VOCAB.to_string(): 1}), "outside the vocabulary"),
        (json!({"abc": 1}), "not a token id"),
        (json!({"5": 101}), "out of range"),
        (json!([5]), "not an object"),
    ] {
        let reply = post("/v1/chat/completions", &chat(json!({"logit_bias": bias})));
        assert_eq!((reply.status, reply.json()["error"]["param"].clone()), (400, json!("logit_bias")), "{what}");
    }
}

#[test]
fn ignore_eos_generates_past_the_end_of_turn_on_chat_and_completions() {
    let stopped = ok(post("/v1/chat/completions", &chat(json!({"max_tokens": 64}))));
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
    assert_eq!(stopped["usage"]["completion_tokens"], 7);
    let ignored = ok(post("/v1/chat/completions", &chat(json!({"max_tokens": 64, "ignore_eos": true}))));
    assert_eq!(ignored["choices"][0]["finish_reason"], "length");
    assert_eq!(ignored["usage"]["completion_tokens"], 64);
    assert!(content(&ignored).starts_with("The capital of France is Paris."), "{}", content(&ignored));
    assert!(!content(&ignored).contains("<|im_end|>"), "the end-of-turn token is still no text");
    // Streamed, as well.
    let streamed = exchange(
        server(),
        "POST",
        "/v1/chat/completions",
        &[],
        &chat(json!({"max_tokens": 24, "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}}))
            .to_string(),
    );
    let chunks = chunks(&streamed);
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 24);

    // Completions: "1, 2, 3," continues past any end-of-text to the limit.
    let body = json!({"model": MODEL, "prompt": "The end.", "max_tokens": 40, "temperature": 0, "ignore_eos": true});
    let v = ok(post("/v1/completions", &body));
    assert_eq!(
        (v["usage"]["completion_tokens"].clone(), v["choices"][0]["finish_reason"].clone()),
        (json!(40), json!("length"))
    );
    let refused = post("/v1/chat/completions", &chat(json!({"ignore_eos": "yes"})));
    assert_eq!((refused.status, refused.json()["error"]["param"].clone()), (400, json!("ignore_eos")));
}

#[test]
fn cached_tokens_count_the_prompt_served_from_the_prefix_cache() {
    // A prefix no other test sends: the first request finds nothing cached.
    let nonce = format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    let system = format!(
        "Session {nonce}. You are a careful assistant for geography questions. Answer with one short sentence, \
         name the city first, and never add a greeting, an apology or a question of your own. Capitals only. \
         When a country has more than one capital, name the seat of government and say so in a few words."
    );
    let body = chat(json!({
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": FRANCE}],
        "max_tokens": 4,
    }));
    let first = ok(post("/v1/chat/completions", &body));
    let prompt_tokens = first["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 64, "a prompt of several KV blocks: {prompt_tokens}");
    assert_eq!(first["usage"]["prompt_tokens_details"], json!({"cached_tokens": 0}));
    let second = ok(post("/v1/chat/completions", &body));
    let cached = second["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
    assert!(cached > 0 && cached < prompt_tokens, "cached {cached} of {prompt_tokens}");
    assert_eq!(second["choices"], first["choices"], "a cached prefix gives the same answer");
    // The streamed usage chunk carries it too.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let reply = post("/v1/chat/completions", &streamed);
    let usage = chunks(&reply).last().unwrap()["usage"].clone();
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], cached, "{usage}");

    // Completions: summed over the prompts of one request.
    let text = format!("{system} Now list the capitals of Europe:");
    let completion = |prompt: Value| {
        ok(post("/v1/completions", &json!({"model": MODEL, "prompt": prompt, "max_tokens": 1, "temperature": 0})))
    };
    assert_eq!(completion(json!(text))["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let twice = completion(json!([text, text]));
    let cached_twice = twice["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
    let once = completion(json!(text))["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
    assert!(once > 0, "the completions prompt was cached");
    assert_eq!(cached_twice, 2 * once, "two cached prompts count twice");
}

#[test]
fn tokenize_and_detokenize_use_the_served_tokenizer() {
    let models = ok(exchange(server(), "GET", "/v1/models", &[], ""));
    let max_model_len = &models["data"][0]["max_model_len"];
    let prompt = "The capital of France is";
    let v = ok(post("/tokenize", &json!({"model": MODEL, "prompt": prompt})));
    let tokens = v["tokens"].as_array().unwrap().clone();
    assert_eq!((&v["count"], &v["max_model_len"]), (&json!(tokens.len()), max_model_len));
    let completion =
        ok(post("/v1/completions", &json!({"model": MODEL, "prompt": prompt, "max_tokens": 1, "temperature": 0})));
    assert_eq!(v["count"], completion["usage"]["prompt_tokens"], "counted as a completions prompt is");
    assert_eq!(ok(post("/detokenize", &json!({"tokens": tokens})))["prompt"], prompt);

    // A chat, rendered through the template as a chat request is.
    let messages = json!([{"role": "user", "content": FRANCE}]);
    let v = ok(post("/tokenize", &json!({"messages": messages})));
    let answer = ok(post("/v1/chat/completions", &chat(json!({"max_tokens": 1}))));
    assert_eq!(v["count"], answer["usage"]["prompt_tokens"], "counted as a chat prompt is");
    let text = ok(post("/detokenize", &json!({"tokens": v["tokens"]})))["prompt"].as_str().unwrap().to_string();
    assert!(text.contains(&format!("<|im_start|>user\n{FRANCE}<|im_end|>")), "special tokens kept: {text}");
    assert!(text.ends_with("<|im_start|>assistant\n"), "the generation prompt: {text}");
    let without = ok(post("/tokenize", &json!({"messages": messages, "add_generation_prompt": false})));
    assert!(without["count"].as_u64() < v["count"].as_u64());

    for (path, body, status, param) in [
        ("/tokenize", json!({}), 400, Some("prompt")),
        ("/tokenize", json!({"prompt": ["a"]}), 400, Some("prompt")),
        ("/tokenize", json!({"messages": [{"role": "robot", "content": "x"}]}), 400, Some("messages[0].role")),
        ("/tokenize", json!({"prompt": "a", "model": "gpt-4"}), 404, Some("model")),
        ("/detokenize", json!({"tokens": [VOCAB]}), 400, Some("tokens")),
        ("/detokenize", json!({"tokens": [-1]}), 400, Some("tokens")),
        ("/detokenize", json!({"tokens": "1 2"}), 400, Some("tokens")),
        ("/detokenize", json!({}), 400, Some("tokens")),
    ] {
        let reply = post(path, &body);
        assert_eq!(reply.status, status, "{path} {body}: {}", reply.body);
        assert_eq!(reply.json()["error"]["param"].as_str(), param, "{path} {body}");
    }
    assert_eq!(exchange(server(), "GET", "/tokenize", &[], "").status, 405);
    assert_eq!(exchange(server(), "POST", "/tokenize", &[], "{nope").status, 400);
}

#[test]
fn models_and_a_model_by_id_have_openais_shape() {
    let list = ok(exchange(server(), "GET", "/v1/models", &[], ""));
    assert_eq!(list["object"], "list");
    let model = &list["data"][0];
    assert_eq!((&model["id"], &model["object"], &model["owned_by"]), (&json!(MODEL), &json!("model"), &json!("kiln")));
    assert!(model["created"].as_u64().unwrap() > 1_700_000_000, "Unix seconds: {model}");
    assert!(model["max_model_len"].as_u64().unwrap() > 0);
    for prefix in ["/v1/models/", "/v1/openai/models/"] {
        assert_eq!(&ok(exchange(server(), "GET", &format!("{prefix}{MODEL}"), &[], "")), model);
    }
    let unknown = exchange(server(), "GET", "/v1/models/gpt-4o", &[], "");
    assert_eq!(unknown.status, 404);
    assert_eq!(
        (&unknown.json()["error"]["code"], &unknown.json()["error"]["param"]),
        (&json!("model_not_found"), &json!("model"))
    );
    assert_eq!(exchange(server(), "POST", &format!("/v1/models/{MODEL}"), &[], "").status, 405);
}

#[test]
fn request_ids_are_echoed_and_name_the_completion() {
    let given = "trace-7f3a/b:c.d_e";
    let reply = post_with("/v1/chat/completions", &[("X-Request-Id", given)], &chat(json!({"max_tokens": 2})));
    assert_eq!(reply.header("x-request-id").as_deref(), Some(given));
    assert_eq!(ok(reply)["id"], format!("chatcmpl-{given}"));
    let completion = json!({"model": MODEL, "prompt": "Hi", "max_tokens": 2});
    let reply = post_with("/v1/completions", &[("X-Request-Id", given)], &completion);
    assert_eq!(ok(reply)["id"], format!("cmpl-{given}"));
    let native = json!({"input": "Hi", "max_new_tokens": 2});
    let reply = post_with(&format!("/v1/inference/{MODEL}"), &[("X-Request-Id", given)], &native);
    assert_eq!(ok(reply)["request_id"], given);

    // Streamed: the header on the head, the id on every chunk.
    let streamed = chat(json!({"max_tokens": 3, "stream": true}));
    let reply = post_with("/v1/chat/completions", &[("X-Request-Id", given)], &streamed);
    assert_eq!(reply.header("x-request-id").as_deref(), Some(given));
    assert!(chunks(&reply).iter().all(|c| c["id"] == format!("chatcmpl-{given}")));

    // Without one, or with one that is not safe to echo, the server makes one.
    let generated = |reply: &Reply| {
        let id = reply.header("x-request-id").expect("every answer has an X-Request-Id");
        assert!(id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        id
    };
    let reply = post("/v1/chat/completions", &chat(json!({"max_tokens": 2})));
    let id = generated(&reply);
    assert_eq!(ok(reply)["id"], format!("chatcmpl-{id}"));
    for bad in ["has space", "x".repeat(129).as_str()] {
        let reply = post_with("/v1/chat/completions", &[("X-Request-Id", bad)], &chat(json!({"max_tokens": 1})));
        generated(&reply);
    }
    let a = generated(&post("/v1/completions", &completion));
    assert_ne!(a, generated(&post("/v1/completions", &completion)), "a fresh id per request");
    // Errors and other routes carry it too.
    let error = post_with("/v1/chat/completions", &[("X-Request-Id", given)], &json!({"messages": []}));
    assert_eq!((error.status, error.header("x-request-id").as_deref()), (400, Some(given)));
    let reply = exchange(server(), "GET", "/v1/nothing", &[("X-Request-Id", given)], "");
    assert_eq!((reply.status, reply.header("x-request-id").as_deref()), (404, Some(given)));
    generated(&exchange(server(), "GET", "/v1/models", &[], ""));
}

#[test]
fn openai_fields_kiln_cannot_honour_are_refused_by_name() {
    for (field, value, needle) in [
        ("functions", json!([{"name": "f"}]), "use `tools`"),
        ("function_call", json!({"name": "f"}), "use `tools`"),
        ("audio", json!({"voice": "alloy", "format": "wav"}), "Audio"),
        ("modalities", json!(["text", "audio"]), "modality"),
        ("prediction", json!({"type": "content", "content": "x"}), "Predicted outputs"),
        ("web_search_options", json!({}), "Web search"),
        ("verbosity", json!("low"), "verbosity"),
    ] {
        let reply = post("/v1/chat/completions", &chat(json!({ field: value })));
        assert_eq!(reply.status, 400, "{field}: {}", reply.body);
        let error = &reply.json()["error"];
        assert_eq!(error["param"], field);
        assert!(error["message"].as_str().unwrap().contains(needle), "{field}: {error}");
    }
    let completion = |extra: Value| {
        let mut body = json!({"model": MODEL, "prompt": "Hi", "max_tokens": 1});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        post("/v1/completions", &body)
    };
    assert_eq!(completion(json!({"suffix": " the end"})).json()["error"]["param"], "suffix");
    assert_eq!(completion(json!({"best_of": 2})).json()["error"]["param"], "best_of");
    assert_eq!(completion(json!({"best_of": 2, "n": 2})).status, 200);
    // Accepted, and they change nothing.
    let quiet = chat(json!({
        "user": "u-1", "metadata": {"team": "a"}, "store": false, "service_tier": "auto", "safety_identifier": "s",
        "prompt_cache_key": "k", "reasoning_effort": "low", "parallel_tool_calls": true, "tool_choice": "none",
        "modalities": ["text"], "verbosity": "medium",
    }));
    assert_eq!(content(&ok(post("/v1/chat/completions", &quiet))), "The capital of France is Paris.");
}

#[test]
fn with_keys_tokenize_needs_one_and_the_access_log_names_the_request() {
    // A child process, so that its log can be read.
    let served = serve(&["--backend", "cpu"], &["--api-key", "sk-clients"], &[]);
    let body = json!({"prompt": "Hi"}).to_string();
    assert_eq!(exchange(served.addr, "POST", "/tokenize", &[], &body).status, 401);
    let auth = [("Authorization", "Bearer sk-clients"), ("X-Request-Id", "log-me-1234")];
    let reply = exchange(served.addr, "POST", "/tokenize", &auth, &body);
    assert_eq!((reply.status, reply.header("x-request-id").as_deref()), (200, Some("log-me-1234")));
    let chat_body = chat(json!({"max_tokens": 1})).to_string();
    assert_eq!(exchange(served.addr, "POST", "/v1/chat/completions", &auth, &chat_body).status, 200);
    let logged = serve_support::wait_until(std::time::Duration::from_secs(30), || {
        served.log().lines().filter(|l| l.contains("id=log-me-1234")).count() >= 2
    });
    assert!(logged, "the access log names the request id:\n{}", served.log());
}
