//! kiln's OpenAPI document (src/server/openapi.json, served at /openapi.json) against the server
//! it describes: the document names every route the router dispatches, and schemathesis (pinned
//! in tests/openapi/requirements.txt) generates requests for every operation from the document
//! served by a live `kiln serve` and checks that every response has a documented status, content
//! type and body (SSE events included) and that none is a server error; tests/openapi/edge_cases.py
//! then provokes the answers schemathesis does not (401, 404, 405, 413, 429, 431, each request
//! bound one past its limit) and checks them the same way; and the server still answers afterwards.

mod serve_support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use serde_json::Value;
use serve_support::{exchange, request, serve, MODEL};

const DOCUMENT: &str = include_str!("../src/server/openapi.json");
const ROUTER: &str = include_str!("../src/server/routes.rs");

/// Every path the router (src/server/routes.rs) answers, as the document names it.
const ROUTES: &[&str] = &[
    "/health",
    "/health/ready",
    "/health/live",
    "/metrics",
    "/openapi.json",
    "/v1/models",
    "/v1/openai/models",
    "/v1/models/{model}",
    "/v1/openai/models/{model}",
    "/tokenize",
    "/detokenize",
    "/v1/chat/completions",
    "/v1/openai/chat/completions",
    "/v1/completions",
    "/v1/openai/completions",
    "/v1/inference/{model}",
];

/// The default model's vocabulary: token-id prompts are aimed below it.
const VOCAB_SIZE: u32 = 49152;
/// What every response must pass: no 5xx, a status, a content type and a body (each SSE event's
/// too) that the document gives for the operation.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance";
/// Generated requests per operation in the fuzzing phase (the coverage phase adds its boundary
/// cases): about 90 s on two CPU cores with the hooks' limits.
const MAX_EXAMPLES: u32 = 40;

fn document() -> Value {
    serde_json::from_str(DOCUMENT).expect("src/server/openapi.json is JSON")
}

fn documented_paths(document: &Value) -> BTreeSet<String> {
    document["paths"].as_object().expect("the document has paths").keys().cloned().collect()
}

#[test]
fn the_document_is_openapi_3_1_and_names_every_route() {
    let document = document();
    let version = document["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1."), "openapi: {version:?}");
    let documented = documented_paths(&document);
    let routes: BTreeSet<String> = ROUTES.iter().map(|r| r.to_string()).collect();
    assert_eq!(documented, routes, "the document's paths against the router's routes");

    // A path the router matches that the list above misses fails too: every "/..." literal in
    // routes.rs is a documented path, or a prefix of one ("/v1/", "/v1/inference/").
    let literals = ROUTER.match_indices("\"/").filter_map(|(at, _)| ROUTER[at + 1..].split('"').next());
    for literal in literals.filter(|s| !s.contains([' ', '{'])) {
        let prefix_of_one = documented
            .iter()
            .any(|p| p.strip_prefix(literal).is_some_and(|rest| literal.ends_with('/') || rest.starts_with('/')));
        assert!(
            documented.contains(literal) || prefix_of_one,
            "routes.rs matches {literal:?}, which the document does not name"
        );
    }
}

#[test]
fn every_reference_in_the_document_resolves() {
    fn walk(value: &Value, document: &Value, broken: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(target)) = map.get("$ref") {
                    let pointer = target.strip_prefix('#').unwrap_or("!");
                    if document.pointer(pointer).is_none() {
                        broken.push(target.clone());
                    }
                }
                map.values().for_each(|v| walk(v, document, broken));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, document, broken)),
            _ => {}
        }
    }
    let document = document();
    let mut broken = Vec::new();
    walk(&document, &document, &mut broken);
    assert!(broken.is_empty(), "references to nothing: {broken:?}");
}

#[test]
fn every_response_of_a_live_server_matches_the_document() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let setup = Command::new(root.join("tools/setup-python-tests")).status().expect("running tools/setup-python-tests");
    assert!(setup.success(), "tools/setup-python-tests failed: it needs python3 with venv and pip");
    let scratch = tempfile::tempdir().expect("a scratch directory");
    // The key schemathesis sends, without limits, and one allowed a request a minute for the
    // rate-limit answer (edge_cases.py).
    let (key, limited_key) = ("schemathesis-key", "limited-key");
    let keys_file = scratch.path().join("keys");
    std::fs::write(&keys_file, format!("{key}\n{limited_key} rpm=1\n")).expect("writing the keys file");
    let keys_file = keys_file.to_str().expect("a UTF-8 temporary path");
    // Small, so that edge_cases.py sends little to be refused.
    let max_body_bytes = "65536";
    // The CPU backend on every machine, so that the run's length does not depend on one.
    let served = serve(&["--backend", "cpu"], &["--api-keys-file", keys_file, "--max-body-bytes", max_body_bytes], &[]);
    let addr = served.addr;

    // The document the server serves is the one in the tree.
    let reply = exchange(addr, "GET", "/openapi.json", &[], "");
    assert_eq!(reply.status, 200, "GET /openapi.json: {}", reply.body);
    assert_eq!(reply.json(), document(), "the served document differs from src/server/openapi.json");

    let seed = kiln::testing::test_seed();
    let started = Instant::now();
    let output = Command::new(root.join(".venv-sdk/bin/schemathesis"))
        .current_dir(scratch.path())
        .args(["run", &format!("http://{addr}/openapi.json")])
        .args(["--checks", CHECKS])
        .args(["--phases", "examples,coverage,fuzzing", "--max-examples", &MAX_EXAMPLES.to_string()])
        .args(["--seed", &seed.to_string(), "--workers", "1", "--request-timeout", "120"])
        .args(["--header", &format!("Authorization: Bearer {key}")])
        .args(["--generation-with-security-parameters", "false", "--generation-database", "none"])
        // Hypothesis' health checks judge the generator (slow or much-filtered data), not the
        // server; on a busy CI machine they would fail the run for nothing the server did.
        .args(["--suppress-health-check", "all"])
        .args(["--no-color", "--output-truncate", "false"])
        .env("SCHEMATHESIS_HOOKS", "kiln_hooks")
        .env("PYTHONPATH", root.join("tests/openapi"))
        .env("KILN_SCHEMA_MODEL", MODEL)
        .env("KILN_SCHEMA_VOCAB_SIZE", VOCAB_SIZE.to_string())
        .output()
        .expect("running schemathesis");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    eprintln!("schemathesis took {:.0} s", started.elapsed().as_secs_f64());
    assert!(output.status.success(), "schemathesis found responses the document does not describe (above)");
    // All but GET /openapi.json, which schemathesis leaves out when it loads the document from
    // there; the comparison above covers it.
    assert!(stdout.contains("Tested: 15"), "schemathesis did not test the 15 other operations (above)");

    // What schemathesis does not send: wrong keys, unknown routes, bodies and heads over the
    // limits, each bound one past, a key over its rate; each answer checked against the document.
    let output = Command::new(root.join(".venv-sdk/bin/python"))
        .arg(root.join("tests/openapi/edge_cases.py"))
        .args([&format!("http://{addr}"), key, limited_key, max_body_bytes])
        .output()
        .expect("running tests/openapi/edge_cases.py");
    eprintln!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "answers that do not match the document (above)");

    // The server is still up and ready after everything it was sent.
    let (status, body) = request(addr, "GET", "/health", "");
    assert_eq!(status, 200, "/health after the run: {body}\nserver log:\n{}", served.log());
}
