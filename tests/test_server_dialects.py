"""`ovchat serve` on the real SmolLM2 in Ollama's and Anthropic's dialects, through their official clients:
the same greedy answer as OpenAI's route, whole and streamed, and a tool call in each dialect's shape."""

from __future__ import annotations

import json

import anthropic
import httpx
import ollama
import pytest
from test_server_tools import WEATHER

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
MODEL = "smollm2-135m"


def openai_answer(server, max_tokens: int) -> tuple[str, int]:
    client = server.client()
    whole = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=max_tokens, temperature=0)
    return whole.choices[0].message.content, whole.usage.prompt_tokens


def test_ollama_answers_as_openai_does_whole_and_streamed(server):
    expected, prompt_tokens = openai_answer(server, 40)
    client = ollama.Client(host=server.base_url)
    options = {"temperature": 0, "num_predict": 40}
    whole = client.chat(model=f"{MODEL}:latest", messages=QUESTION, options=options)
    pieces = list(client.chat(model=MODEL, messages=QUESTION, options=options, stream=True))
    assert "Paris" in expected and whole.message.content == expected
    assert "".join(p.message.content for p in pieces) == expected and pieces[-1].done
    assert whole.prompt_eval_count == pieces[-1].prompt_eval_count == prompt_tokens
    assert whole.eval_count > 0 and whole.eval_duration > 0 and whole.done_reason in ("stop", "length")
    generated = client.generate(model=MODEL, prompt=QUESTION[0]["content"], options=options)
    assert generated.response == expected  # templated like a one-message chat
    assert [m.model for m in client.list().models] == [f"{MODEL}:latest"]
    assert client.show(MODEL).details.parameter_size == "134M"  # SmolLM2-135M's config, counted
    with pytest.raises(ollama.ResponseError) as refused:
        client.chat(model=MODEL, messages=QUESTION, options={"top_p": 2})
    assert refused.value.status_code == 400 and "options.top_p" in refused.value.error


def test_anthropic_answers_as_openai_does_whole_and_streamed(server):
    expected, prompt_tokens = openai_answer(server, 40)
    client = anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0)
    ask = {"model": MODEL, "max_tokens": 40, "messages": QUESTION, "extra_body": {"temperature": 0}}
    whole = client.messages.create(**ask)
    with client.messages.stream(**ask) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert whole.content[0].text == final.content[0].text == "".join(pieces) == expected
    assert whole.usage.input_tokens == final.usage.input_tokens == prompt_tokens
    assert whole.stop_reason in ("end_turn", "max_tokens") and final.stop_reason == whole.stop_reason
    assert client.messages.count_tokens(model=MODEL, messages=QUESTION).input_tokens == prompt_tokens
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(model=MODEL, max_tokens=40, messages=[{"role": "system", "content": "x"}])
    assert refused.value.body["error"]["type"] == "invalid_request_error"


def test_a_tool_call_in_each_dialect(server):
    """The real model, asked with tools, calls the weather tool: Ollama's shape and Anthropic's."""
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    function = WEATHER["function"]
    # Ollama has no tool_choice and SmolLM2 answers in text on "auto": ovchat's tool_choice asks for a call.
    body = {"model": MODEL, "messages": question, "tools": [WEATHER], "tool_choice": "required", "stream": False,
            "options": {"temperature": 0, "num_predict": 200}}
    called = httpx.post(server.base_url + "/api/chat", json=body, timeout=60).json()["message"]
    calls = called["tool_calls"]
    assert calls and all(c["function"]["name"] == "get_weather" for c in calls)
    assert all(isinstance(c["function"]["arguments"], dict) for c in calls)
    # The call and its result go back in Ollama's form (no ids); asked for no more calls, the model answers.
    results = [{"role": "tool", "content": "18 C and sunny", "tool_name": "get_weather"} for _ in calls]
    body |= {"messages": [*question, called, *results], "tool_choice": "none"}
    answered = httpx.post(server.base_url + "/api/chat", json=body, timeout=60).json()
    assert answered["done"] and answered["message"]["content"] and "tool_calls" not in answered["message"]
    client = anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0)
    tools = [{"name": function["name"], "description": function["description"], "input_schema": function["parameters"]}]
    choice = {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}
    used = client.messages.create(model=MODEL, max_tokens=200, messages=question, tools=tools, tool_choice=choice,
                                  extra_body={"temperature": 0})
    (block,) = used.content
    assert block.type == "tool_use" and block.name == "get_weather" and used.stop_reason == "tool_use"
    assert set(block.input) >= set(function["parameters"].get("required", []))
    # A streamed body ends with Anthropic's closing events, in order.
    with httpx.stream("POST", server.base_url + "/v1/messages", json={"model": MODEL, "max_tokens": 8,
                                                                       "messages": question, "stream": True}) as r:
        kinds = [line[7:] for line in r.iter_lines() if line.startswith("event: ")]
    assert kinds[:2] == ["message_start", "ping"] and kinds[-2:] == ["message_delta", "message_stop"]
    assert json.dumps(kinds).count("content_block_start") == json.dumps(kinds).count("content_block_stop") >= 1


def test_readme_ollama_example_runs(server):
    import re
    import subprocess
    import sys
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(import ollama\n.*?)```", readme, re.S).group(1)
    code = code.replace("http://127.0.0.1:8000", server.base_url)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
