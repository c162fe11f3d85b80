"""Requests schemathesis does not make, each answered by a live kiln and checked against the OpenAPI
document it serves: the status must be the expected one and documented for the operation, and the
body (and `Retry-After` where promised) must match the document. Run by tests/openapi_schema.rs
after schemathesis:

    python edge_cases.py BASE_URL KEY RATE_LIMITED_KEY MAX_BODY_BYTES

RATE_LIMITED_KEY must allow one request a minute; MAX_BODY_BYTES is the server's --max-body-bytes.
Prints one line per case and exits non-zero if any failed."""

import json
import sys

import jsonschema_rs
import requests
import schemathesis

BASE, KEY, LIMITED_KEY, MAX_BODY_BYTES = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
MODEL = "SmolLM2-135M-Instruct"
DOCUMENT = requests.get(BASE + "/openapi.json", timeout=30).json()
SCHEMA = schemathesis.openapi.from_dict(DOCUMENT)
# The error body, for answers on paths the document has no operation for (404, 405).
ERROR = jsonschema_rs.validator_for({"$ref": "#/components/schemas/Error", "components": DOCUMENT["components"]})
failed = []


def case(name, method, path, *, key=KEY, body=None, raw=None, headers=None, status, param=None, code=None,
         operation=None, retry_after=False):
    """Sends one request and checks its answer; `operation` is the documented (path, method) that
    answers it, None for a path or method the document has none for."""
    sent = {"Authorization": f"Bearer {key}"} if key else {}
    sent.update(headers or {})
    data = raw if raw is not None else (json.dumps(body) if body is not None else None)
    response = requests.request(method, BASE + path, headers=sent, data=data, timeout=120)
    problems = []
    if response.status_code != status:
        problems.append(f"status {response.status_code}, expected {status}")
    try:
        error = response.json().get("error", {}) if status >= 400 else {}
    except ValueError:
        error = {}
        problems.append("the body is not JSON")
    if param is not None and error.get("param") != param:
        problems.append(f"param {error.get('param')!r}, expected {param!r}")
    if code is not None and error.get("code") != code:
        problems.append(f"code {error.get('code')!r}, expected {code!r}")
    if retry_after and not response.headers.get("Retry-After", "").isdigit():
        problems.append(f"Retry-After {response.headers.get('Retry-After')!r}, expected whole seconds")
    if operation is None:
        for message in (e.message for e in ERROR.iter_errors(response.json())) if not problems else []:
            problems.append(f"the body is not the document's Error: {message}")
    else:
        documented = SCHEMA[operation[0]][operation[1]]
        if documented.responses.find_by_status_code(response.status_code) is None:
            problems.append(f"status {response.status_code} is not documented for {operation[1]} {operation[0]}")
        else:
            try:
                documented.validate_response(response)
            except Exception as mismatch:  # schemathesis raises a group of failures
                problems.append(f"the answer does not match the document: {mismatch}")
    print(f"{'ok  ' if not problems else 'FAIL'} {name}: {response.status_code} {response.text[:160]}")
    for problem in problems:
        print(f"       {problem}")
    if problems:
        failed.append(name)


CHAT = ("/v1/chat/completions", "POST")
DETOKENIZE = ("/detokenize", "POST")
COMPLETIONS = ("/v1/completions", "POST")
MODELS = ("/v1/models", "GET")
NATIVE = ("/v1/inference/{model}", "POST")
USER = [{"role": "user", "content": "Hi"}]

case("no key", "POST", CHAT[0], key=None, body={"messages": USER}, status=401, code="invalid_api_key", operation=CHAT)
case("a wrong key", "GET", MODELS[0], key="not-a-key", status=401, code="invalid_api_key", operation=MODELS)
case("an unknown route", "GET", "/v1/nothing-here", status=404, code="not_found")
case("a method the route lacks", "DELETE", MODELS[0], status=405)
case("an unknown model", "POST", CHAT[0], body={"model": "gpt-9", "messages": USER}, status=404, param="model",
     code="model_not_found", operation=CHAT)
case("an unknown model in the path", "POST", "/v1/inference/gpt-9", body={"input": "Hi"}, status=404,
     param="model", code="model_not_found", operation=NATIVE)
case("an empty body", "POST", CHAT[0], raw="", status=400, code="invalid_json", operation=CHAT)
case("JSON nested 33 levels", "POST", CHAT[0],
     raw='{"messages": ' + "[" * 32 + "]" * 32 + "}", status=400, param="messages", operation=CHAT)
case("17 stop strings", "POST", CHAT[0], body={"messages": USER, "stop": ["x"] * 17}, status=400, param="stop",
     operation=CHAT)
case("a stop string of 257 bytes", "POST", CHAT[0], body={"messages": USER, "stop": "é" * 128 + "x"}, status=400,
     param="stop", operation=CHAT)
case("33 prompts", "POST", COMPLETIONS[0], body={"prompt": ["x"] * 33}, status=400, param="prompt",
     operation=COMPLETIONS)
case("n = 5", "POST", CHAT[0], body={"messages": USER, "n": 5}, status=400, param="n", operation=CHAT)
case("top_logprobs = 21", "POST", CHAT[0], body={"messages": USER, "logprobs": True, "top_logprobs": 21},
     status=400, param="top_logprobs", operation=CHAT)
case("completions logprobs = 6", "POST", COMPLETIONS[0], body={"prompt": "x", "logprobs": 6}, status=400,
     param="logprobs", operation=COMPLETIONS)
case("logit_bias with 301 tokens", "POST", CHAT[0],
     body={"messages": USER, "logit_bias": {str(t): 0 for t in range(301)}}, status=400, param="logit_bias",
     operation=CHAT)
case("a logit_bias token outside the vocabulary", "POST", CHAT[0],
     body={"messages": USER, "logit_bias": {"49152": 1}}, status=400, param="logit_bias", operation=CHAT)
case("a tool without a function", "POST", CHAT[0], body={"messages": USER, "tools": [{"type": "function"}]}, status=400,
     param="tools[0]", operation=CHAT)
case("129 tools", "POST", CHAT[0],
     body={"messages": USER, "tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)]},
     status=400, param="tools", operation=CHAT)
MAX_MODEL_LEN = requests.get(BASE + "/v1/models", headers={"Authorization": f"Bearer {KEY}"},
                             timeout=30).json()["data"][0]["max_model_len"]
case("detokenize one id past max_model_len", "POST", DETOKENIZE[0], body={"tokens": [28] * (MAX_MODEL_LEN + 1)},
     status=400, param="tokens", operation=DETOKENIZE)
case("max_tokens = 2^32", "POST", CHAT[0], body={"messages": USER, "max_tokens": 2**32}, status=400,
     param="max_tokens", operation=CHAT)
case("max_tokens past the context", "POST", COMPLETIONS[0], body={"prompt": "x", "max_tokens": 1_000_000},
     status=400, param="max_tokens", code="context_length_exceeded", operation=COMPLETIONS)
case("a body over --max-body-bytes", "POST", COMPLETIONS[0], raw='{"prompt": "' + "x" * MAX_BODY_BYTES + '"}',
     status=413, code="request_too_large", operation=COMPLETIONS)
case("a request head over 64 KiB", "GET", MODELS[0], headers={"X-Padding": "x" * 70_000}, status=431,
     code="request_header_fields_too_large", operation=MODELS)
case("a key's first request this minute", "GET", MODELS[0], key=LIMITED_KEY, status=200, operation=MODELS)
case("a key over its requests per minute", "GET", MODELS[0], key=LIMITED_KEY, status=429,
     code="rate_limit_exceeded", retry_after=True, operation=MODELS)
case("a streamed native answer", "POST", "/v1/inference/" + MODEL,
     body={"input": "Hello", "max_new_tokens": 3, "stream": True}, status=200, operation=NATIVE)
case("the whole of a streamed chat", "POST", CHAT[0],
     body={"messages": USER, "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True},
           "logprobs": True, "top_logprobs": 2}, status=200, operation=CHAT)

print(f"edge cases: {len(failed)} failed" + (f": {', '.join(failed)}" if failed else ""))
sys.exit(1 if failed else 0)
