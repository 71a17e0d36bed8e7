"""Tool calling through a real `ovchat serve` and the official `openai` client: an agent loop on the
real SmolLM2 and on the tiny Phi-3, streamed calls equal to whole ones, and calls that always validate."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import pytest
from helpers import GREEDY_KWARGS, Server

pytestmark = pytest.mark.slow

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two whole numbers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer", "minimum": -1000, "maximum": 1000},
                           "b": {"type": "integer", "minimum": -1000, "maximum": 1000}},
            "required": ["a", "b"],
        },
    },
}


def run_tool(name: str, arguments: dict) -> str:
    if name == "get_weather":
        return json.dumps({"city": arguments["city"], "temperature": 18, "unit": arguments["unit"], "sky": "sunny"})
    return str(arguments["a"] + arguments["b"])


def agent_loop(client, model: str, question: str, parallel: bool = True) -> tuple[list, str]:
    """Call (required), run the tools, answer from their results: the loop an agent framework runs."""
    messages = [{"role": "user", "content": question}]
    first = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER, ADD],
                                           tool_choice="required", parallel_tool_calls=parallel, max_tokens=200,
                                           **GREEDY_KWARGS)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None, choice
    calls = choice.message.tool_calls
    messages.append(choice.message.model_dump(exclude_none=True))
    for call in calls:
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, {"get_weather": WEATHER, "add": ADD}[call.function.name]["function"]
                            ["parameters"])
        messages.append({"role": "tool", "tool_call_id": call.id, "content": run_tool(call.function.name, arguments)})
    final = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER, ADD], tool_choice="none",
                                           max_tokens=40, **GREEDY_KWARGS)
    assert final.choices[0].finish_reason in ("stop", "length") and not final.choices[0].message.tool_calls
    return calls, final.choices[0].message.content


def test_an_agent_loop_on_smollm2(server):
    client = server.client()
    calls, answer = agent_loop(client, "smollm2-135m", "What is the weather in Paris right now, in celsius?")
    assert calls[0].function.name == "get_weather"  # the real model picks the tool the question needs
    assert isinstance(answer, str) and answer.strip()
    # With `auto`, whatever the model chooses is in a valid shape: a call that validates, or text.
    auto = client.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": "Hi there!"}],
                                          tools=[WEATHER, ADD], max_tokens=60, **GREEDY_KWARGS).choices[0]
    if auto.message.tool_calls:
        assert auto.finish_reason == "tool_calls"
    else:
        assert isinstance(auto.message.content, str) and auto.finish_reason in ("stop", "length")


def test_an_agent_loop_on_the_tiny_phi3(tiny_phi3_long_ov, tmp_path):
    running = Server(tiny_phi3_long_ov, log_path=tmp_path / "serve.log")
    try:
        calls, answer = agent_loop(running.client(), tiny_phi3_long_ov.name, "Add 2 and 3, please.")
        assert calls and isinstance(answer, str)
    finally:
        running.stop()


@pytest.mark.parametrize("style", ["hermes", "phi4", "mistral", "qwen3coder"])
def test_an_agent_loop_on_a_template_with_its_own_tool_format(request, style, tmp_path):
    """The template's own format through the real server: the call, the tool result rendered back by the
    template (Mistral's with the 9-character id it was given), the written answer; a streamed call equals
    the whole one."""
    folder = request.getfixturevalue(f"tiny_{style}_ov")
    running = Server(folder, log_path=tmp_path / "serve.log")
    try:
        client = running.client()
        # One call: the random model, free to add calls, would write them until its budget runs out.
        calls, answer = agent_loop(client, folder.name, "Add 2 and 3, please.", parallel=False)
        assert calls and isinstance(answer, str)
        assert style != "mistral" or all(len(c.id) == 9 and c.id.isalnum() for c in calls)
        ask = {"model": folder.name, "messages": [{"role": "user", "content": "Weather?"}],
               "tools": [WEATHER, ADD], "tool_choice": "required", "max_tokens": 200, "temperature": 0.9, "seed": 5}
        whole = client.chat.completions.create(**ask).choices[0].message.tool_calls
        pieces: dict[int, list[str]] = {}
        for chunk in client.chat.completions.create(**ask, stream=True):
            for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                pieces.setdefault(delta.index, ["", ""])
                pieces[delta.index][0] += delta.function.name or ""
                pieces[delta.index][1] += delta.function.arguments or ""
        assert [tuple(p) for p in pieces.values()] == [(c.function.name, c.function.arguments) for c in whole]
    finally:
        running.stop()


def test_a_streamed_call_reassembles_into_the_whole_one(server):
    client = server.client()
    ask = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "What is 12 plus 30?"}],
           "tools": [WEATHER, ADD], "tool_choice": "required", "max_tokens": 200, **GREEDY_KWARGS}
    whole = client.chat.completions.create(**ask).choices[0].message.tool_calls
    calls: dict[int, dict] = {}
    finish = None
    for chunk in client.chat.completions.create(**ask, stream=True):
        if not chunk.choices:
            continue
        finish = chunk.choices[0].finish_reason or finish
        for piece in chunk.choices[0].delta.tool_calls or []:
            call = calls.setdefault(piece.index, {"id": piece.id, "name": piece.function.name, "arguments": ""})
            assert piece.id is None or piece.id == call["id"]
            call["arguments"] += piece.function.arguments or ""
    assert finish == "tool_calls"
    assert [(c["name"], c["arguments"]) for c in calls.values()] == [
        (c.function.name, c.function.arguments) for c in whole]
    assert all(c["id"].startswith("call_") for c in calls.values())


PROMPTS = ["What's the weather in {city}?", "Is it cold in {city} today?", "Add {a} and {b}.",
           "What is {a} plus {b}?", "Book me something in {city}.", "Tell me about {city}, using a tool."]
CITIES = ["Paris", "Lima", "Oslo", "Cairo", "Tokyo", "Quito", "Perth", "Rome", "Accra", "Hanoi"]
SCHEMAS = [
    {"type": "object", "properties": {"room": {"enum": ["single", "double", "suite"]},
                                      "nights": {"type": "integer", "minimum": 1, "maximum": 14}},
     "required": ["room", "nights"], "additionalProperties": False},
    {"type": "object", "properties": {"guest": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 24}, "age": {"type": "integer", "minimum": 18, "maximum": 120}},
        "required": ["name", "age"]}, "vip": {"type": "boolean"}}, "required": ["guest", "vip"]},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"enum": ["quiet", "view", "pets"]},
                                               "minItems": 1, "maxItems": 3},
                                      "budget": {"type": "number", "minimum": 0, "maximum": 999}},
     "required": ["tags"]},
    {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}$"}}, "required": ["code"]},
]


def test_fifty_required_calls_all_validate(server):
    """Validity measured, not hoped: varied prompts and schemas (enums, bounded integers, nested objects,
    arrays, patterns), eight at a time; every call parses and validates against its tool's schema."""
    tools = [WEATHER, ADD] + [
        {"type": "function", "function": {"name": f"book_{i}", "description": "Book a hotel room.", "parameters": s}}
        for i, s in enumerate(SCHEMAS)]
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}

    def ask(i: int) -> list[dict]:
        prompt = PROMPTS[i % len(PROMPTS)].format(city=CITIES[i % len(CITIES)], a=i * 7, b=i + 3)
        choice = "required" if i % 3 else {"type": "function", "function": {"name": tools[i % len(tools)]["function"]
                                                                          ["name"]}}
        body = {"messages": [{"role": "user", "content": prompt}], "tools": tools, "tool_choice": choice,
                "max_tokens": 320, "temperature": 0.8, "seed": i, "parallel_tool_calls": i % 2 == 0}
        answer = httpx.post(server.base_url + "/v1/chat/completions", json=body, timeout=300)
        assert answer.status_code == 200, answer.text
        picked = answer.json()["choices"][0]
        assert picked["finish_reason"] == "tool_calls", picked
        calls = picked["message"]["tool_calls"]
        assert calls and (i % 2 == 0 or len(calls) == 1)
        if isinstance(choice, dict):
            assert {c["function"]["name"] for c in calls} == {choice["function"]["name"]}
        return calls

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(50)))
    for calls in answers:
        for call in calls:
            jsonschema.validate(json.loads(call["function"]["arguments"]), schemas[call["function"]["name"]])
    assert sum(len(calls) for calls in answers) >= 50


def test_a_tool_schema_the_compiler_rejects_is_a_400_naming_tools(server):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "tool_choice": "required",
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {
                "type": "object", "properties": {"n": {"type": "integer", "minimum": 1.5, "maximum": 1.7}},
                "required": ["n"]}}}]}
    answer = httpx.post(server.base_url + "/v1/chat/completions", json=body, timeout=120)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_json_schema" and error["param"] == "tools"


def test_the_openai_agents_sdk_completes_a_two_tool_task(server):
    """A real agent framework from PyPI (the `openai-agents` SDK, over Chat Completions): its tool
    schemas, call parsing, tool execution and history replay against ovchat serve. The first run calls
    both tools at once (`required`; the SDK stops at the tool outputs); the second replays the whole
    conversation, calls and results included, with `tool_choice="none"` for the written answer."""
    import asyncio

    from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    calls: list[tuple[str, str]] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        calls.append(("get_weather", city))
        return json.dumps({"city": city, "sky": "sunny", "celsius": 18})

    @function_tool
    def get_time(city: str) -> str:
        """The local time in a city."""
        calls.append(("get_time", city))
        return json.dumps({"city": city, "time": "14:05"})

    async def run() -> tuple:
        client = AsyncOpenAI(base_url=server.base_url + "/v1", api_key="unused")
        greedy = {"temperature": 0, "max_tokens": 200, "extra_body": {"repetition_penalty": 1.0}}
        agent = Agent(name="helper", instructions="Call every tool the question needs, all at once.",
                      model=OpenAIChatCompletionsModel(model="smollm2-135m", openai_client=client),
                      tools=[get_weather, get_time], tool_use_behavior="stop_on_first_tool",
                      model_settings=ModelSettings(tool_choice="required", **greedy))
        first = await Runner.run(agent, "I need the weather in Paris and the time in Tokyo.", max_turns=2)
        writer = agent.clone(model_settings=ModelSettings(tool_choice="none", **greedy))
        final = await Runner.run(writer, first.to_input_list(), max_turns=1)
        return first, final

    first, final = asyncio.run(run())
    assert {"get_weather", "get_time"} <= {name for name, _ in calls}  # both tools, in the one answer
    assert ("get_weather", "Paris") in calls and ("get_time", "Tokyo") in calls
    replayed = first.to_input_list()
    assert sum(item.get("type") == "function_call_output" for item in replayed) == len(calls)
    assert isinstance(final.final_output, str) and final.final_output.strip()
