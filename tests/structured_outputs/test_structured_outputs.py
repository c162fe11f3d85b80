"""Structured outputs through the official OpenAI SDK against a running `kiln serve`: for every
supported schema feature, hundreds of seeded generations at temperature 1, streamed and not,
each checked by a real validator (the `jsonschema` package; formats checked by Python's own
parsers, which jsonschema may skip when optional packages are missing).

Run by tests/structured_outputs.rs, which starts the server and passes its address in
KILN_BASE_URL. Every schema here bounds its output (string lengths, array sizes, bounded
patterns), so every generation must finish within `MAX_TOKENS`: a cut one is a failure too.
"""
import concurrent.futures
import datetime
import json
import os
import unittest
import uuid
from typing import List, Literal, Optional

import jsonschema
import openai
import pydantic

BASE_URL = os.environ["KILN_BASE_URL"]
MODEL = os.environ.get("KILN_MODEL", "SmolLM2-135M-Instruct")
# Generations per feature: half whole answers, half streamed, `N` choices per request.
GENERATIONS = int(os.environ.get("KILN_SCHEMA_GENERATIONS", "200"))
N = 4
WORKERS = 12
MAX_TOKENS = 768
PROMPT = [{"role": "user", "content": "Describe a person, a place and a thing as JSON."}]

# Each schema covers several features; each feature gets its `GENERATIONS` through one of them.
SCHEMAS = {
    # Required and optional properties, additionalProperties false, every scalar type, nesting.
    "objects": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "age": {"type": "integer"},
            "height": {"type": "number"},
            "admin": {"type": "boolean"},
            "nothing": {"type": "null"},
            "nick": {"type": ["string", "null"], "maxLength": 12},
            "place": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 20},
                    "location": {
                        "type": "object",
                        "properties": {"lat": {"type": "number"}},
                        "required": ["lat"],
                        "additionalProperties": False,
                    },
                },
                "required": ["location"],
                "additionalProperties": False,
            },
        },
        "required": ["name", "age", "admin", "place"],
        "additionalProperties": False,
    },
    # enum and const; arrays with items, minItems and maxItems.
    "enums_and_arrays": {
        "type": "object",
        "properties": {
            "color": {"enum": ["red", "green", "blue"]},
            "kind": {"const": "pixel"},
            "level": {"enum": [1, 2.5, None, True, "max"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 1, "maxItems": 3},
            # Small items: the default model writes every digit as its own token.
            "matrix": {
                "type": "array",
                "items": {"type": "array", "items": {"enum": [0, 1, 2]}, "maxItems": 3},
                "minItems": 2,
                "maxItems": 2,
            },
            "empty": {"type": "array", "maxItems": 0},
        },
        "required": ["color", "kind", "level", "tags", "matrix"],
        "additionalProperties": False,
    },
    # anyOf; $ref into $defs.
    "any_of_and_refs": {
        "$defs": {
            "address": {
                "type": "object",
                "properties": {"street": {"type": "string", "maxLength": 20}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                "required": ["street", "zip"],
                "additionalProperties": False,
            },
            "person": {
                "type": "object",
                "properties": {"name": {"type": "string", "maxLength": 16}, "home": {"$ref": "#/$defs/address"}},
                "required": ["name", "home"],
                "additionalProperties": False,
            },
        },
        "type": "object",
        "properties": {
            "owner": {"$ref": "#/$defs/person"},
            "work": {"$ref": "#/$defs/address"},
            "value": {
                "anyOf": [
                    {"type": "integer"},
                    {"type": "string", "maxLength": 10},
                    {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"], "additionalProperties": False},
                ]
            },
        },
        "required": ["owner", "value"],
        "additionalProperties": False,
    },
    # pattern, format date/date-time/uuid, minLength/maxLength.
    "patterns_and_formats": {
        "type": "object",
        "properties": {
            "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2,4}$"},
            "day": {"type": "string", "format": "date"},
            "at": {"type": "string", "format": "date-time"},
            "id": {"type": "string", "format": "uuid"},
            "initials": {"type": "string", "minLength": 2, "maxLength": 3},
        },
        "required": ["code", "day", "at", "id", "initials"],
        "additionalProperties": False,
    },
}


def client():
    return openai.OpenAI(base_url=BASE_URL, api_key=os.environ.get("KILN_API_KEY", "unused"), max_retries=0, timeout=600)


def response_format(name, schema):
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def check_formats(root, schema, value):
    """What jsonschema's format checker may skip: the formats, by Python's own parsers."""
    if "$ref" in schema:
        return check_formats(root, root["$defs"][schema["$ref"].split("/")[-1]], value)
    fmt = schema.get("format")
    if fmt == "date":
        datetime.date.fromisoformat(value)
    elif fmt == "date-time":
        datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    elif fmt == "uuid":
        uuid.UUID(value)
    if isinstance(value, dict):
        for key, item in value.items():
            check_formats(root, schema.get("properties", {}).get(key, {}), item)


def validate(name, schema, text):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise AssertionError(f"{name}: not JSON ({e}): {text!r}")
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(value), key=str)
    if errors:
        raise AssertionError(f"{name}: {errors[0].message} in {text!r}")
    check_formats(schema, schema, value)
    return value


def generate(name, schema, seed, stream):
    """N seeded generations of one request: (text, finish_reason) per choice."""
    kwargs = dict(
        model=MODEL,
        messages=PROMPT,
        temperature=1.0,
        max_tokens=MAX_TOKENS,
        n=N,
        seed=seed,
        response_format=response_format(name, schema),
    )
    if not stream:
        r = client().chat.completions.create(**kwargs)
        return [(c.message.content, c.finish_reason) for c in sorted(r.choices, key=lambda c: c.index)]
    texts, finishes = [""] * N, [None] * N
    for chunk in client().chat.completions.create(stream=True, **kwargs):
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            finishes[c.index] = c.finish_reason or finishes[c.index]
    return list(zip(texts, finishes))


class SampledGenerations(unittest.TestCase):
    def run_feature(self, name):
        schema = SCHEMAS[name]
        requests = [(seed, seed % 2 == 1) for seed in range(GENERATIONS // N)]
        with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
            # Choice i of seed s samples as choice 0 of seed s + i does: seeds N apart.
            results = list(pool.map(lambda r: generate(name, schema, 1000 + N * r[0], r[1]), requests))
        outputs = [output for result in results for output in result]
        self.assertEqual(len(outputs), GENERATIONS)
        distinct = set()
        for text, finish in outputs:
            self.assertEqual(finish, "stop", f"{name}: cut at {MAX_TOKENS} tokens: {text!r}")
            distinct.add(json.dumps(validate(name, schema, text), sort_keys=True))
        # Sampling at temperature 1 explores: the outputs are not one document repeated.
        self.assertGreater(len(distinct), GENERATIONS // 10, f"{name}: only {len(distinct)} distinct documents")
        print(f"{name}: {GENERATIONS} valid, {len(distinct)} distinct; e.g. {outputs[0][0]}", flush=True)
        return outputs

    def test_objects_scalars_and_nesting(self):
        self.run_feature("objects")

    def test_enums_consts_and_arrays(self):
        outputs = self.run_feature("enums_and_arrays")
        colors = {json.loads(text)["color"] for text, _ in outputs}
        self.assertEqual(colors, {"red", "green", "blue"}, "every enum value stays reachable")

    def test_any_of_and_refs(self):
        outputs = self.run_feature("any_of_and_refs")
        kinds = {type(json.loads(text)["value"]).__name__ for text, _ in outputs}
        self.assertGreater(len(kinds), 1, f"more than one alternative of anyOf is taken: {kinds}")

    def test_patterns_formats_and_lengths(self):
        self.run_feature("patterns_and_formats")

    def test_an_enum_yields_only_its_values(self):
        schema = {"enum": ["yes", "no", "maybe"]}
        seen = set()
        for seed in range(0, 12 * N, N):
            for text, finish in generate("answer", schema, seed, stream=seed % (2 * N) == N):
                self.assertEqual(finish, "stop")
                self.assertIn(json.loads(text), ["yes", "no", "maybe"], text)
                seen.add(text)
        self.assertGreater(len(seen), 1, f"sampling reaches more than one value: {seen}")


class OtherEndpoints(unittest.TestCase):
    def test_completions_and_the_hosted_shape(self):
        schema = SCHEMAS["enums_and_arrays"]
        r = client().completions.create(
            model=MODEL,
            prompt="A pixel as JSON:",
            temperature=1.0,
            max_tokens=MAX_TOKENS,
            n=N,
            seed=7,
            extra_body={"response_format": response_format("pixel", schema)},
        )
        for c in r.choices:
            self.assertEqual(c.finish_reason, "stop")
            validate("completions", schema, c.text)
        # The hosted service's shape: json_object with a schema.
        r = client().chat.completions.create(
            model=MODEL,
            messages=PROMPT,
            temperature=1.0,
            max_tokens=MAX_TOKENS,
            seed=8,
            response_format={"type": "json_object", "schema": schema},
        )
        validate("json_object with schema", schema, r.choices[0].message.content)

    def test_the_sdk_parse_helper_with_a_pydantic_model(self):
        class Item(pydantic.BaseModel):
            name: str = pydantic.Field(max_length=16)
            quantity: int
            unit: Literal["kg", "g", "piece"]

        class Order(pydantic.BaseModel):
            customer: str = pydantic.Field(max_length=20)
            items: List[Item] = pydantic.Field(max_length=3)
            note: Optional[str] = pydantic.Field(max_length=20)

        for seed in range(8):
            r = client().chat.completions.parse(
                model=MODEL,
                messages=[{"role": "user", "content": "Order two apples and some flour."}],
                response_format=Order,
                temperature=1.0,
                seed=seed,
                max_tokens=MAX_TOKENS,
            )
            self.assertIsInstance(r.choices[0].message.parsed, Order, r.choices[0].message.content)

    def test_unsupported_schemas_are_refused_naming_the_keyword(self):
        for schema, keyword in [
            ({"type": "number", "minimum": 0}, "minimum"),
            ({"type": "object", "patternProperties": {"a": {}}}, "patternProperties"),
            ({"type": "string", "pattern": "(a)\\1"}, "pattern"),
            ({"oneOf": [{"type": "integer"}]}, "oneOf"),
            ({"$ref": "https://example.com/schema"}, "$ref"),
        ]:
            with self.assertRaises(openai.BadRequestError) as caught:
                client().chat.completions.create(
                    model=MODEL, messages=PROMPT, max_tokens=8, response_format=response_format("x", schema)
                )
            error = caught.exception.body
            self.assertEqual(error["param"], "response_format.json_schema.schema", error)
            self.assertIn(keyword, error["message"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
