"""`ovchat serve` on the real SmolLM2, through the official `openai` client and raw HTTP."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from helpers import EIGHT_PROMPTS, GREEDY, GREEDY_KWARGS, answers_alone_and_together, sse_payloads

from ovchat.sampling import CHAT_SAMPLING

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def sse_events(response: httpx.Response) -> list[str]:
    """The data payloads of an SSE response, checking the framing on the way."""
    return sse_payloads(response.read().decode())


def test_chat_stream_matches_non_stream(server):
    client = server.client()
    whole = client.chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=40, **GREEDY_KWARGS)
    text = whole.choices[0].message.content
    assert "Paris" in text
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.prompt_tokens > 0 and whole.usage.completion_tokens > 0
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    chunks = list(client.chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=40, stream=True,
                                                 **GREEDY_KWARGS))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == [
        whole.choices[0].finish_reason
    ]
    assert len({c.id for c in chunks}) == 1
    assert all(c.usage is None for c in chunks)


def test_stream_framing_and_usage_chunk(server):
    body = {"messages": QUESTION, "max_tokens": 20, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", server.base_url + "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    chunks = [json.loads(e) for e in events]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert all(c["usage"] is None for c in chunks[:-1])
    assert sum(1 for c in chunks for ch in c["choices"] if ch["finish_reason"]) == 1
    contents = [c for c in chunks[:-1] if c["choices"][0]["delta"].get("content")]
    assert chunks[-1]["usage"]["completion_tokens"] >= len(contents) >= 1


def test_completions_stream_and_tokens(server):
    client = server.client()
    greedy = {"model": "smollm2-135m", **GREEDY_KWARGS}
    whole = client.completions.create(prompt="Once upon a time", max_tokens=16, **greedy)
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 16
    streamed = client.completions.create(prompt="Once upon a time", max_tokens=16, stream=True, **greedy)
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text
    # A prompt given as token ids gives the same answer as its text.
    as_text = client.completions.create(prompt="Hello, we can use", max_tokens=8, **greedy)
    as_ids = client.completions.create(prompt=[19556, 28, 392, 416, 722], max_tokens=8, **greedy)
    assert as_ids.choices[0].text == as_text.choices[0].text
    assert as_ids.usage.prompt_tokens == as_text.usage.prompt_tokens == 5


def test_stop_strings_cut_exactly(server):
    client = server.client()
    ask = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
    greedy = {"model": "smollm2-135m", "messages": ask, "max_tokens": 40, **GREEDY_KWARGS}
    full = client.chat.completions.create(**greedy).choices[0].message.content
    assert "4" in full
    cut = client.chat.completions.create(**greedy, stop=["4"])
    assert cut.choices[0].message.content == full[: full.index("4")]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(**greedy, stop="4", stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == full[: full.index("4")]


def test_models_and_health(server):
    client = server.client()
    assert [m.id for m in client.models.list()] == ["smollm2-135m"]
    assert client.models.retrieve("smollm2-135m").id == "smollm2-135m"
    # What a request that leaves the sampling fields out gets: SmolLM2 recommends nothing, so ovchat's default.
    card = client.models.retrieve("smollm2-135m").model_extra
    assert card["sampling_defaults"] == CHAT_SAMPLING and card["sampling_source"] == "ovchat's default"
    for name in ("gpt-4", "../../etc/passwd", "smollm2-135m/../x"):
        with pytest.raises(openai.NotFoundError) as err:
            client.chat.completions.create(model=name, messages=QUESTION, max_tokens=1)
        assert err.value.code == "model_not_found"
    assert httpx.get(server.base_url + "/v1/models/gpt-4").json()["error"]["code"] == "model_not_found"
    health = httpx.get(server.base_url + "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_json_output(server):
    client = server.client()
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                               "age": {"type": "integer"}}, "required": ["name", "age"],
              "additionalProperties": False}
    answer = client.chat.completions.create(
        model="smollm2-135m",
        messages=[{"role": "user", "content": "Give me a person as JSON."}],
        max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
        **GREEDY_KWARGS,
    )
    person = json.loads(answer.choices[0].message.content)
    assert set(person) == {"name", "age"} and isinstance(person["age"], int)
    # A schema the grammar compiler would choke on is refused up front; the engine stays healthy.
    for bad in ({"type": "objec"}, {"type": "string", "pattern": "([a-z"}, False,
                {"type": "string", "minLength": 5, "maxLength": 2}):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(
                model="smollm2-135m", messages=QUESTION, max_tokens=5,
                response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": bad}},
            )
    assert client.chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=2).choices


def _good(server) -> None:
    answer = httpx.post(server.base_url + "/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 2})
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"]


M = [{"role": "user", "content": "hi"}]
F = {"type": "function", "function": {"name": "f"}}


def _tool(parameters) -> dict:
    return {"type": "function", "function": {"name": "f", "parameters": parameters}}


_CALLED = {"role": "assistant", "content": None,
           "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
BAD_TOOLS = [
    ("tools not a list", {"messages": M, "tools": F}, "tools"),
    ("tool not an object", {"messages": M, "tools": ["f"]}, "tools[0]"),
    ("tool of another type", {"messages": M, "tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ("tool without a name", {"messages": M, "tools": [{"type": "function", "function": {}}]},
     "tools[0].function.name"),
    ("tool name with a space", {"messages": M, "tools": [{"type": "function", "function": {"name": "get it"}}]},
     "tools[0].function.name"),
    ("two tools of one name", {"messages": M, "tools": [F, F]}, "tools[1].function.name"),
    ("parameters not an object", {"messages": M, "tools": [_tool([])]}, "tools[0].function.parameters"),
    ("parameters of type string", {"messages": M, "tools": [_tool({"type": "string"})]},
     "tools[0].function.parameters"),
    ("parameters with lookahead", {"messages": M, "tools": [_tool({"type": "object", "properties": {
        "x": {"type": "string", "pattern": "(?=a)b"}}})]}, "tools[0].function.parameters.properties.x"),
    ("parameters with a recursive $ref", {"messages": M, "tools": [_tool({"type": "object", "properties": {
        "next": {"$ref": "#"}}})]}, "tools[0].function.parameters"),
    ("tool_choice unknown word", {"messages": M, "tools": [F], "tool_choice": "always"}, "tool_choice"),
    ("tool_choice required without tools", {"messages": M, "tool_choice": "required"}, "tool_choice"),
    ("tool_choice naming no tool", {"messages": M, "tools": [F],
                                    "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice"),
    ("parallel_tool_calls a string", {"messages": M, "tools": [F], "parallel_tool_calls": "yes"},
     "parallel_tool_calls"),
    ("tool message without its call id", {"messages": [*M, _CALLED, {"role": "tool", "content": "1"}]},
     "messages[2].tool_call_id"),
    ("tool message answering no call", {"messages": [*M, _CALLED, {"role": "tool", "tool_call_id": "call_2",
                                                                  "content": "1"}]}, "messages[2].tool_call_id"),
    ("tool_calls on a user message", {"messages": [{**_CALLED, "role": "user", "content": "x"}]},
     "messages[0].tool_calls"),
]
BAD_CHAT = [
    ("malformed JSON", b"{bad", None),
    ("array body", b"[1, 2]", None),
    ("number body", b"3", None),
    ("null body", b"null", None),
    ("no messages", {}, "messages"),
    ("null messages", {"messages": None}, "messages"),
    ("string messages", {"messages": "hi"}, "messages"),
    ("empty messages", {"messages": []}, "messages"),
    ("number message", {"messages": [123]}, "messages[0]"),
    ("empty message", {"messages": [{}]}, "messages[0].role"),
    ("role not a string", {"messages": [{"role": 1, "content": "x"}]}, "messages[0].role"),
    ("unknown role", {"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ("content a number", {"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ("content an image", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
    ("max_tokens 0", {"messages": M, "max_tokens": 0}, "max_tokens"),
    ("max_tokens -1", {"messages": M, "max_tokens": -1}, "max_tokens"),
    ("max_tokens string", {"messages": M, "max_tokens": "5"}, "max_tokens"),
    ("max_tokens float", {"messages": M, "max_tokens": 1.5}, "max_tokens"),
    ("max_tokens 2**32", {"messages": M, "max_tokens": 2**32}, "max_tokens"),
    ("max_completion_tokens 0", {"messages": M, "max_completion_tokens": 0}, "max_completion_tokens"),
    ("temperature < 0", {"messages": M, "temperature": -0.1}, "temperature"),
    ("temperature > 2", {"messages": M, "temperature": 2.5}, "temperature"),
    ("temperature string", {"messages": M, "temperature": "hot"}, "temperature"),
    ("top_p 0", {"messages": M, "top_p": 0}, "top_p"),
    ("top_p > 1", {"messages": M, "top_p": 1.5}, "top_p"),
    ("stop a number", {"messages": M, "stop": 5}, "stop"),
    ("too many stops", {"messages": M, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("empty stop", {"messages": M, "stop": [""]}, "stop"),
    ("stream not a bool", {"messages": M, "stream": "yes"}, "stream"),
    ("stream_options without stream", {"messages": M, "stream_options": {"include_usage": True}}, "stream_options"),
    ("n 2", {"messages": M, "n": 2}, "n"),
    ("penalty out of range", {"messages": M, "presence_penalty": 3}, "presence_penalty"),
    ("unknown response_format", {"messages": M, "response_format": {"type": "xml"}}, "response_format.type"),
    ("json_schema without schema", {"messages": M, "response_format": {"type": "json_schema"}},
     "response_format.json_schema"),
    ("logprobs not a bool", {"messages": M, "logprobs": "yes"}, "logprobs"),
    ("seed a string", {"messages": M, "seed": "1"}, "seed"),
    ("top_k huge", {"messages": M, "top_k": 2**64}, "top_k"),
    ("repetition_penalty zero", {"messages": M, "repetition_penalty": 0}, "repetition_penalty"),
    ("functions", {"messages": M, "functions": [{"name": "f"}]}, "functions"),
    *BAD_TOOLS,
    ("top_logprobs without logprobs", {"messages": M, "top_logprobs": 3}, "top_logprobs"),
    ("top_logprobs over 20", {"messages": M, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("deeply nested JSON", b"[" * 100000, None),
    ("a 5000-digit number", b'{"messages": [], "max_tokens": ' + b"9" * 5000 + b"}", None),
    ("schema with a dangling $ref", {"messages": M, "response_format": {"type": "json_schema", "json_schema": {
        "schema": {"$ref": "#/$defs/missing"}}}}, "response_format.json_schema.schema"),
    ("schema with lookahead", {"messages": M, "response_format": {"type": "json_schema", "json_schema": {
        "schema": {"type": "string", "pattern": "(?=a)b"}}}}, "response_format.json_schema.schema"),
    ("schema with an empty enum", {"messages": M, "response_format": {"type": "json_schema", "json_schema": {
        "schema": {"enum": []}}}}, "response_format.json_schema.schema"),
]


@pytest.mark.parametrize("body,param", [(b, p) for _, b, p in BAD_CHAT], ids=[n for n, _, _ in BAD_CHAT])
def test_bad_chat_input_is_a_400(server, body, param):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = httpx.post(server.base_url + "/v1/chat/completions", content=raw,
                        headers={"Content-Type": "application/json"})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] == param and error["message"]
    _good(server)


BAD_COMPLETION = [
    ("no prompt", {}, "prompt"),
    ("empty prompt", {"prompt": ""}, "prompt"),
    ("prompt a number", {"prompt": 5}, "prompt"),
    ("negative token id", {"prompt": [-1]}, "prompt"),
    ("token id past the vocabulary", {"prompt": [10**9]}, "prompt"),
    ("several prompts", {"prompt": ["a", "b"]}, "prompt"),
    ("echo", {"prompt": "a", "echo": True}, "echo"),
    ("logprobs over 20", {"prompt": "a", "logprobs": 21}, "logprobs"),
    ("logprobs negative", {"prompt": "a", "logprobs": -1}, "logprobs"),
]


@pytest.mark.parametrize("body,param", [(b, p) for _, b, p in BAD_COMPLETION], ids=[n for n, _, _ in BAD_COMPLETION])
def test_bad_completion_input_is_a_400(server, body, param):
    answer = httpx.post(server.base_url + "/v1/completions", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param
    _good(server)


def test_wrong_content_type_and_big_bodies(server):
    url = server.base_url + "/v1/chat/completions"
    answer = httpx.post(url, content=json.dumps({"messages": M}), headers={"Content-Type": "text/plain"})
    assert answer.status_code == 415 and answer.json()["error"]["message"]
    big = json.dumps({"messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]}).encode()
    answer = httpx.post(url, content=big, headers={"Content-Type": "application/json"})
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "body_too_large"

    def chunks():  # no Content-Length: the cap must hold while reading
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(6):
            yield b"x" * (1024 * 1024)
        yield b'"}]}'

    answer = httpx.post(url, content=chunks(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 413
    assert httpx.post(url, json={"messages": M, "max_tokens": 2}).status_code == 200
    unknown = httpx.post(url, json={"messages": M, "max_tokens": 2, "some_future_field": {"a": 1}})
    assert unknown.status_code == 200


def test_context_window(server):
    client = server.client()
    context = httpx.get(server.base_url + "/v1/models").json()["data"][0]["context_length"]
    huge = "hello " * context
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": huge}])
    assert err.value.code == "context_length_exceeded" and str(context) in err.value.message
    # The refusal comes before any stream bytes: a plain JSON 400, not an event stream.
    body = {"messages": [{"role": "user", "content": huge}], "stream": True}
    with httpx.stream("POST", server.base_url + "/v1/chat/completions", json=body) as response:
        assert response.status_code == 400
        assert response.headers["content-type"].startswith("application/json")
    _good(server)


def test_eight_concurrent_streams_each_get_their_own_answer(server):
    solo, together = answers_alone_and_together(server, EIGHT_PROMPTS)
    assert together == solo  # no token bleed, usage per request, and the same text as alone (greedy)


def test_a_schema_the_compiler_rejects_fails_alone(server):
    """Past the up-front checks, a schema that breaks the grammar compiler mid-step costs only its own
    request: the others in the batch resume where they were and give the same answer."""
    story = {"messages": [{"role": "user", "content": "Tell me a long story about a dragon."}], "max_tokens": 60,
             **GREEDY}
    url = server.base_url + "/v1/chat/completions"
    alone = httpx.post(url, json=story, timeout=120).json()["choices"][0]["message"]["content"]
    results = {}
    neighbour = threading.Thread(target=lambda: results.update(good=httpx.post(url, json=story, timeout=120)))
    neighbour.start()
    time.sleep(0.3)
    bad = httpx.post(url, timeout=120, json={
        "messages": M, "max_tokens": 5,
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {
            "type": "integer", "minimum": 1.5, "maximum": 1.7}}}})
    neighbour.join(120)
    assert bad.status_code == 400, bad.text
    error = bad.json()["error"]
    assert error["code"] == "invalid_json_schema" and error["param"] == "response_format"
    assert "/" not in error["message"] and ".cc" not in error["message"]  # no build paths
    assert results["good"].status_code == 200
    assert results["good"].json()["choices"][0]["message"]["content"] == alone
    _good(server)


def test_unseeded_samples_differ(server):
    client = server.client()
    kwargs = dict(model="smollm2-135m", messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=24,
                  temperature=1.0)
    texts = {client.chat.completions.create(**kwargs).choices[0].message.content for _ in range(3)}
    assert len(texts) > 1


def test_same_seed_same_sample(server):
    client = server.client()
    kwargs = dict(model="smollm2-135m", messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=24,
                  temperature=1.0, seed=1234)
    first = client.chat.completions.create(**kwargs).choices[0].message.content
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        client.chat.completions.create(**kwargs).choices[0].message.content)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [first] * 3


def test_metrics_count_requests_and_tokens(server):
    deadline = time.monotonic() + 30  # an earlier test's cancelled job may still be counting
    while server.metric("ovchat_requests_running") and time.monotonic() < deadline:
        time.sleep(0.05)
    before = server.metric("ovchat_generation_tokens_total")
    server.client().completions.create(model="smollm2-135m", prompt="Hello", max_tokens=5, **GREEDY_KWARGS)
    assert server.metric("ovchat_generation_tokens_total") == before + 5
    text = httpx.get(server.base_url + "/metrics").text
    for name in ("ovchat_requests_total", "ovchat_queue_depth", "ovchat_requests_running",
                 "ovchat_prompt_tokens_total", "ovchat_time_to_first_token_seconds_bucket",
                 "ovchat_time_per_output_token_seconds_count"):
        assert name in text
    assert 'ovchat_requests_total{path="/v1/completions",status="200"}' in text


def test_readme_serve_example_runs(server):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"### Serve\n.*?```python\n(.*?)```", readme, re.S).group(1)
    assert "http://127.0.0.1:8000/v1" in code
    code = code.replace("http://127.0.0.1:8000", server.base_url)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_logprobs_through_the_openai_client(server):
    """The chosen tokens' log-probs (GenAI's) and the five best beside each (the second pass), whole and
    streamed, through the official client's own types; the tokens' bytes add up to the answer."""
    client = server.client()
    ask = {"model": "smollm2-135m", "messages": QUESTION, "max_tokens": 40, "logprobs": True, **GREEDY_KWARGS}
    whole = client.chat.completions.create(**ask, top_logprobs=5).choices[0]
    content = whole.logprobs.content
    assert b"".join(bytes(t.bytes) for t in content).decode() == whole.message.content  # no end-of-turn token
    for token in content:
        alternatives = [t.logprob for t in token.top_logprobs]
        assert len(alternatives) == 5 and alternatives == sorted(alternatives, reverse=True)
        assert token.logprob <= 0 and token.token in {t.token for t in token.top_logprobs}
    streamed = [t for chunk in client.chat.completions.create(**ask, top_logprobs=5, stream=True)
                if chunk.choices and chunk.choices[0].logprobs for t in chunk.choices[0].logprobs.content]
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content]
    chosen_only = client.chat.completions.create(**ask).choices[0]
    assert [t.token for t in chosen_only.logprobs.content] == [t.token for t in content]
    assert all(t.top_logprobs == [] for t in chosen_only.logprobs.content)
    legacy = client.completions.create(model="smollm2-135m", prompt="The capital of France is", max_tokens=8,
                                       logprobs=3, **GREEDY_KWARGS).choices[0]
    assert "".join(legacy.logprobs.tokens) == legacy.text
    assert all(len(alternatives) == 3 for alternatives in legacy.logprobs.top_logprobs)
