"""The official OpenAI Python SDK, unchanged, against a running `kiln serve` on the default model.

Run by tests/openai_sdk.rs, which starts the server and passes its address in KILN_BASE_URL.
"""
import json
import os
import unittest
import urllib.request

import openai

BASE_URL = os.environ["KILN_BASE_URL"]
MODEL = os.environ.get("KILN_MODEL", "SmolLM2-135M-Instruct")
FRANCE = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


def tokenize(body):
    """POST /tokenize (vLLM's route, beside /v1), which the SDK has no method for."""
    url = BASE_URL.rsplit("/v1", 1)[0] + "/tokenize"
    headers = {"Content-Type": "application/json", "Authorization": "Bearer " + os.environ.get("KILN_API_KEY", "unused")}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def client(**kwargs):
    return openai.OpenAI(base_url=BASE_URL, api_key=os.environ.get("KILN_API_KEY", "unused"), max_retries=0, **kwargs)


class Chat(unittest.TestCase):
    def test_chat(self):
        r = client().chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=20)
        self.assertEqual(r.choices[0].message.content, "The capital of France is Paris.")
        self.assertEqual(r.choices[0].finish_reason, "stop")
        self.assertEqual(r.usage.completion_tokens, 7)
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + 7)

    def test_chat_stream_with_usage(self):
        stream = client().chat.completions.create(
            model=MODEL, messages=FRANCE, temperature=0, max_tokens=20, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, "The capital of France is Paris.")
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        self.assertEqual(finishes, ["stop"])
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.completion_tokens, 7)

    def test_stop_is_not_returned(self):
        r = client().chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=20, stop=["Paris"])
        self.assertEqual(r.choices[0].message.content, "The capital of France is ")
        stream = client().chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=20, stop="Paris", stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        self.assertEqual(text, "The capital of France is ")

    def test_n_and_seed(self):
        kwargs = dict(model=MODEL, messages=FRANCE, temperature=1.0, max_tokens=10, n=3, seed=42)
        a = client().chat.completions.create(**kwargs)
        b = client().chat.completions.create(**kwargs)
        self.assertEqual(len(a.choices), 3)
        self.assertEqual([c.index for c in a.choices], [0, 1, 2])
        self.assertEqual([c.message.content for c in a.choices], [c.message.content for c in b.choices])

    def test_logprobs(self):
        r = client().chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=20, logprobs=True, top_logprobs=2)
        content = r.choices[0].logprobs.content
        self.assertEqual(len(content), r.usage.completion_tokens)
        self.assertEqual(len(content[0].top_logprobs), 2)
        self.assertLessEqual(content[0].logprob, 0.0)
        # Greedy picks the most likely token, so it leads its own top list.
        self.assertEqual(content[0].top_logprobs[0].token, content[0].token)

    def test_json_mode(self):
        messages = [
            {"role": "user", "content": "What is the capital of Italy? Answer in JSON."},
            {"role": "assistant", "content": '{"capital": "Rome"}'},
            {"role": "user", "content": "What is the capital of France? Answer in JSON."},
        ]
        r = client().chat.completions.create(
            model=MODEL, messages=messages, temperature=0, max_tokens=100, response_format={"type": "json_object"}
        )
        self.assertIsInstance(json.loads(r.choices[0].message.content), dict)

    def test_logit_bias_ignore_eos_and_cached_tokens(self):
        # Banning the greedy first token ("The", its id from /tokenize) changes the answer.
        ids = tokenize({"prompt": "The", "add_special_tokens": False})["tokens"]
        self.assertEqual(len(ids), 1)
        banned = client().chat.completions.create(
            model=MODEL, messages=FRANCE, temperature=0, max_tokens=5, logit_bias={str(ids[0]): -100}
        )
        self.assertFalse(banned.choices[0].message.content.startswith("The"), banned.choices[0].message.content)
        # vLLM's ignore_eos through extra_body: generation runs to max_tokens.
        long = client().chat.completions.create(
            model=MODEL, messages=FRANCE, temperature=0, max_tokens=30, extra_body={"ignore_eos": True}
        )
        self.assertEqual((long.choices[0].finish_reason, long.usage.completion_tokens), ("length", 30))
        # The repeated prompt's prefix comes from the cache, and the SDK reads the count.
        again = client().chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=1)
        self.assertGreater(again.usage.prompt_tokens_details.cached_tokens, 0)

    def test_request_id_and_unsupported_fields(self):
        raw = client().chat.completions.with_raw_response.create(
            model=MODEL, messages=FRANCE, temperature=0, max_tokens=2, extra_headers={"X-Request-Id": "sdk-trace-1"}
        )
        self.assertEqual(raw.headers["x-request-id"], "sdk-trace-1")
        self.assertEqual(raw.parse().id, "chatcmpl-sdk-trace-1")
        functions = [{"name": "f", "parameters": {"type": "object", "properties": {}}}]
        with self.assertRaises(openai.BadRequestError) as e:
            client().chat.completions.create(model=MODEL, messages=FRANCE, functions=functions)
        self.assertEqual(e.exception.body["param"], "functions")
        # Accepted fields that change nothing.
        r = client().chat.completions.create(
            model=MODEL, messages=FRANCE, temperature=0, max_tokens=20, user="u", store=False, metadata={"a": "b"}
        )
        self.assertEqual(r.choices[0].message.content, "The capital of France is Paris.")

    def test_errors(self):
        with self.assertRaises(openai.BadRequestError) as e:
            client().chat.completions.create(model=MODEL, messages=FRANCE, temperature=5)
        self.assertEqual(e.exception.body["param"], "temperature")
        with self.assertRaises(openai.NotFoundError):
            client().chat.completions.create(model="gpt-4o", messages=FRANCE)
        with self.assertRaises(openai.BadRequestError) as e:
            client().chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=100000)
        self.assertEqual(e.exception.body["code"], "context_length_exceeded")


class Completions(unittest.TestCase):
    def test_completion(self):
        r = client().completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0)
        self.assertEqual(r.choices[0].text, " Paris.\n\nThe")
        self.assertEqual(r.choices[0].finish_reason, "length")

    def test_completion_stream(self):
        stream = client().completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0, stream=True)
        self.assertEqual("".join(c.choices[0].text for c in stream), " Paris.\n\nThe")

    def test_completion_logprobs_and_echo(self):
        r = client().completions.create(model=MODEL, prompt="1, 2, 3,", max_tokens=4, temperature=0, logprobs=1, echo=True)
        self.assertTrue(r.choices[0].text.startswith("1, 2, 3, 4"))
        self.assertEqual(len(r.choices[0].logprobs.tokens), 4)


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
CLOCK = {"type": "function", "function": {"name": "get_time", "description": "The time now.", "parameters": {"type": "object", "properties": {}}}}
ASK = [{"role": "user", "content": "What is the weather in Paris? Use the tool."}]


def streamed_turn(**kwargs):
    """One streamed chat turn, assembled as OpenAI's docs show: (content, tool calls, finish reason)."""
    content, calls, finish = "", {}, None
    for chunk in client().chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for call in choice.delta.tool_calls or []:
                entry = calls.setdefault(call.index, {"id": None, "name": "", "arguments": ""})
                entry["id"] = call.id or entry["id"]
                entry["name"] += (call.function.name or "") if call.function else ""
                entry["arguments"] += (call.function.arguments or "") if call.function else ""
            finish = choice.finish_reason or finish
    return content, [calls[i] for i in sorted(calls)], finish


class Tools(unittest.TestCase):
    """A two-turn tool conversation: the model calls a tool, gets its result, answers."""

    def second_turn(self, call_id, name, arguments, stream):
        messages = ASK + [
            {"role": "assistant", "content": None,
             "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": call_id, "content": json.dumps({"temperature": 18, "sky": "clear"})},
        ]
        kwargs = dict(model=MODEL, messages=messages, tools=[WEATHER, CLOCK], temperature=0, max_tokens=40)
        if stream:
            content, calls, finish = streamed_turn(**kwargs, tool_choice="none")
        else:
            r = client().chat.completions.create(**kwargs, tool_choice="none")
            content, calls, finish = r.choices[0].message.content, r.choices[0].message.tool_calls, r.choices[0].finish_reason
        self.assertFalse(calls)
        self.assertIn(finish, ("stop", "length"))
        self.assertTrue(content.strip(), "the final answer is text")

    def test_two_turns_with_a_required_call(self):
        r = client().chat.completions.create(
            model=MODEL, messages=ASK, tools=[WEATHER, CLOCK], tool_choice="required", temperature=0, max_tokens=100
        )
        choice = r.choices[0]
        self.assertEqual(choice.finish_reason, "tool_calls")
        self.assertIsNone(choice.message.content)
        call = choice.message.tool_calls[0]
        self.assertEqual(call.type, "function")
        self.assertIn(call.function.name, ("get_weather", "get_time"))
        arguments = json.loads(call.function.arguments)
        if call.function.name == "get_weather":
            self.assertEqual(set(arguments), {"city", "unit"})
            self.assertIn(arguments["unit"], ("celsius", "fahrenheit"))
        self.assertTrue(call.id.startswith("call_"))
        self.second_turn(call.id, call.function.name, call.function.arguments, stream=False)

    def test_two_turns_streamed_with_a_named_call(self):
        named = {"type": "function", "function": {"name": "get_weather"}}
        content, calls, finish = streamed_turn(
            model=MODEL, messages=ASK, tools=[WEATHER, CLOCK], tool_choice=named, temperature=0, max_tokens=100
        )
        self.assertEqual((content, finish), ("", "tool_calls"))
        self.assertEqual(len(calls), 1)
        self.assertEqual(calls[0]["name"], "get_weather")
        arguments = json.loads(calls[0]["arguments"])
        self.assertEqual(set(arguments), {"city", "unit"})
        # The same request whole gives the same call.
        r = client().chat.completions.create(
            model=MODEL, messages=ASK, tools=[WEATHER, CLOCK], tool_choice=named, temperature=0, max_tokens=100
        )
        self.assertEqual(r.choices[0].message.tool_calls[0].function.arguments, calls[0]["arguments"])
        self.second_turn(calls[0]["id"], "get_weather", calls[0]["arguments"], stream=True)

    def test_one_call_when_parallel_calls_are_off(self):
        for seed in range(4):
            r = client().chat.completions.create(
                model=MODEL, messages=ASK, tools=[WEATHER, CLOCK], tool_choice="required", parallel_tool_calls=False,
                temperature=1, seed=seed, max_tokens=100,
            )
            self.assertEqual(len(r.choices[0].message.tool_calls), 1)

    def test_auto_answers_with_text_or_calls(self):
        # The small model decides; whichever it does, the answer has OpenAI's shape.
        for stream in (False, True):
            kwargs = dict(model=MODEL, messages=ASK, tools=[WEATHER], temperature=0, max_tokens=60)
            if stream:
                content, calls, finish = streamed_turn(**kwargs)
            else:
                r = client().chat.completions.create(**kwargs)
                content, calls, finish = r.choices[0].message.content, r.choices[0].message.tool_calls or [], r.choices[0].finish_reason
            self.assertEqual(finish == "tool_calls", bool(calls), (content, calls, finish))


class Models(unittest.TestCase):
    def test_models(self):
        self.assertEqual([m.id for m in client().models.list()], [MODEL])
        model = client().models.retrieve(MODEL)
        self.assertEqual((model.id, model.object, model.owned_by), (MODEL, "model", "kiln"))
        with self.assertRaises(openai.NotFoundError):
            client().models.retrieve("gpt-4o")


if __name__ == "__main__":
    unittest.main(verbosity=2)
