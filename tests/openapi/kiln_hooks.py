"""Schemathesis hooks for tests/openapi_schema.rs: keep generated requests affordable on two CPU
cores, never let one reach outside the machine, and aim most of them at what the served model
accepts, so that they reach the engine instead of stopping at a 404 or a 400. Every response is
still checked against the document as it is; only requests change.

Always:
- token counts between MAX_TOKENS and BEYOND_ANY_CONTEXT become MAX_TOKENS, and chat and the native
  API get MAX_TOKENS when they name none (their defaults are the whole context and 512);
- prompts are cut to PROMPT_BUDGET characters or token ids in all: a CPU prefills about a hundred
  tokens a second, and a generated chat can hold thousands;
- a generated webhook is dropped, or replaced by a loopback URL the server refuses.
For seven cases in eight (the eighth keeps its generated value, chosen by a hash of the value, so a
failing case replays the same way):
- the model named in the body or the path becomes the served model;
- token-id prompts (and /detokenize's `tokens`) get ids below the vocabulary size, and whole numbers
  written as floats (1.0) become integers there and in seeds (the server takes those only as integer
  literals)."""

import os
import zlib

import schemathesis

MODEL = os.environ["KILN_SCHEMA_MODEL"]
VOCAB_SIZE = int(os.environ["KILN_SCHEMA_VOCAB_SIZE"])
# The most tokens one choice may generate: a CPU makes tens per second, and a request may ask for
# 32 prompts times 4 choices.
MAX_TOKENS = int(os.environ.get("KILN_SCHEMA_MAX_TOKENS", "4"))
# Larger counts stay: they exceed any context kiln serves in the test, so they check the
# `context_length_exceeded` answer without generating anything.
BEYOND_ANY_CONTEXT = 1 << 20
TOKEN_COUNT_FIELDS = ("max_tokens", "max_completion_tokens", "max_new_tokens")
PROMPT_BUDGET = int(os.environ.get("KILN_SCHEMA_PROMPT_BUDGET", "256"))
# Loopback: refused by a server started without --webhook-allow, and nothing leaves the machine.
REFUSED_WEBHOOK = "http://127.0.0.1:9/kiln-schema-test"


def _keep_generated(value) -> bool:
    """One generated value in eight is kept as it was, by a hash of the value."""
    return zlib.crc32(repr(value).encode("utf-8", "surrogatepass")) % 8 == 0


def _is_whole(value) -> bool:
    # bool is an int in Python, but JSON true is no number: the server refuses it, keep it.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer()


def _token_id(value):
    if not _is_whole(value) or value < 0:
        return value
    return int(value) % VOCAB_SIZE


def _token_prompt(prompt):
    """A token-id prompt (a list of ids, or a list of such lists) with ids the model has."""
    if not isinstance(prompt, list) or not prompt or _keep_generated(prompt):
        return prompt
    if all(_is_whole(item) for item in prompt):
        return [_token_id(item) for item in prompt]
    if all(isinstance(item, list) and all(_is_whole(i) for i in item) for item in prompt):
        return [[_token_id(i) for i in item] for item in prompt]
    return prompt


class _Budget:
    """Cuts the strings and token lists of one request's prompt to a shared budget; a cut one keeps
    at least one element, so an empty prompt stays the only empty one."""

    def __init__(self, left: int):
        self.left = left

    def cut(self, items):
        keep = max(1, self.left) if items else 0
        self.left -= min(len(items), keep)
        return items[:keep]


def _cut_prompt(body, budget: _Budget):
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        body["prompt"] = budget.cut(prompt)
    elif isinstance(prompt, list) and all(isinstance(item, (list, str)) for item in prompt):
        body["prompt"] = [budget.cut(item) for item in prompt]
    elif isinstance(prompt, list) and all(_is_whole(item) for item in prompt):
        body["prompt"] = budget.cut(prompt)
    if isinstance(body.get("input"), str):
        body["input"] = budget.cut(body["input"])
    messages = body.get("messages")
    if not isinstance(messages, list):
        return
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            message["content"] = budget.cut(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    part["text"] = budget.cut(part["text"])


@schemathesis.hook
def before_call(context, case, kwargs):
    path_parameters = case.path_parameters or {}
    model = path_parameters.get("model")
    if isinstance(model, str) and model != MODEL and not _keep_generated(model):
        path_parameters["model"] = MODEL
    body = case.body
    if not isinstance(body, dict):
        return
    named = body.get("model")
    if isinstance(named, str) and named != MODEL and not _keep_generated(named):
        body["model"] = MODEL
    for field in TOKEN_COUNT_FIELDS:
        value = body.get(field)
        if _is_whole(value) and MAX_TOKENS < value <= BEYOND_ANY_CONTEXT:
            body[field] = MAX_TOKENS
    # A generated webhook could name a public host, which kiln would deliver to: the test never
    # lets one through. Most cases go without; the rest name loopback, which kiln refuses (400)
    # without --webhook-allow, so that answer is checked too.
    if isinstance(body.get("webhook"), str):
        if _keep_generated(body["webhook"]):
            body["webhook"] = REFUSED_WEBHOOK
        else:
            del body["webhook"]
    path = case.operation.path
    if path.endswith("/chat/completions") and body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = MAX_TOKENS
    if path.startswith("/v1/inference/") and body.get("max_new_tokens") is None:
        body["max_new_tokens"] = MAX_TOKENS
    if path.endswith("/completions") and "prompt" in body:
        body["prompt"] = _token_prompt(body["prompt"])
    if path == "/detokenize" and "tokens" in body:
        body["tokens"] = _token_prompt(body["tokens"])
    _cut_prompt(body, _Budget(PROMPT_BUDGET))
    seed = body.get("seed")
    if _is_whole(seed) and isinstance(seed, float) and not _keep_generated(seed):
        body["seed"] = int(seed)
