"""Ollama's and Anthropic's APIs over the same app, in-process, driven by their official clients: the tiny
Phi-3's real tokenizer and chat template, a scripted engine (test_api.FakeBatch). The real server and
model answer them in test_server_dialects.py."""

from __future__ import annotations

import json

import anthropic
import httpx
import ollama
import pytest
from test_api import FakeBatch, chat_ids
from test_tools import CALL, WEATHER, scripted

from ovchat import runtime
from ovchat.server.routes import create_app
from ovchat.server.served import Served
from ovchat.server.settings import Settings

pytestmark = pytest.mark.anyio
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def served(tiny_phi3_ov) -> Served:
    return Served.load(tiny_phi3_ov, info=None, context_cap=None)


@pytest.fixture(scope="module")
def served_long(tiny_phi3_long_ov) -> Served:
    """Room for the tools' description in the prompt."""
    return Served.load(tiny_phi3_long_ov, info=None, context_cap=None)


@pytest.fixture
def batch(served) -> FakeBatch:
    return scripted(served, "Hello world!")


def transport(served: Served, batch: FakeBatch, **settings) -> httpx.ASGITransport:
    return httpx.ASGITransport(app=create_app(served, batch, Settings(**settings)))


def ollama_client(served, batch, **settings) -> ollama.AsyncClient:
    return ollama.AsyncClient(host="http://127.0.0.1:11434", transport=transport(served, batch, **settings))


def anthropic_client(served, batch, key: str = "unused", **settings) -> anthropic.AsyncAnthropic:
    import httpx2  # the SDK's own HTTP client package

    app = create_app(served, batch, Settings(**settings))
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app))
    return anthropic.AsyncAnthropic(base_url="http://127.0.0.1:8000", api_key=key, http_client=http, max_retries=0)


def raw(served, batch, **settings) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=transport(served, batch, **settings), base_url="http://127.0.0.1")


# -- Ollama --------------------------------------------------------------------------------------------------
async def test_ollama_chat_whole_and_streamed(served, batch):
    client = ollama_client(served, batch)
    whole = await client.chat(model=f"{served.name}:latest", messages=HI, stream=False)
    pieces = [part async for part in await client.chat(model=served.name, messages=HI, stream=True)]
    async with raw(served, batch) as http:  # a body without "stream" streams, as Ollama's does
        lines = (await http.post("/api/chat", json={"model": served.name, "messages": HI})).text.splitlines()
    assert [json.loads(line)["done"] for line in lines] == [p.done for p in pieces]
    assert whole.message.role == "assistant" and whole.message.content == "Hello world!"
    assert whole.done and whole.done_reason == "stop" and whole.model == f"{served.name}:latest"
    assert whole.prompt_eval_count == len(chat_ids(served, HI)) and whole.eval_count == len(batch.script)
    assert whole.total_duration >= whole.eval_duration >= 0 and whole.load_duration == 0
    assert batch.prompts[0] == batch.prompts[1] == chat_ids(served, HI)  # the same prompt as OpenAI's route
    assert "".join(p.message.content for p in pieces) == "Hello world!" and len(pieces) > 3
    assert [p.done for p in pieces] == [False] * (len(pieces) - 1) + [True]
    assert pieces[-1].done_reason == "stop" and pieces[-1].eval_count == len(batch.script)


async def test_ollama_options_reach_the_engine(served, batch):
    options = {"temperature": 0.5, "top_p": 0.9, "top_k": 7, "num_predict": 3, "seed": 11, "repeat_penalty": 1.2,
               "stop": ["zzz"], "num_ctx": 4096}  # num_ctx: the model's own context is used
    answer = await ollama_client(served, batch).chat(model=served.name, messages=HI, options=options, stream=False)
    sampled = batch.sampling[0]
    assert (sampled.temperature, sampled.top_p, sampled.top_k, sampled.seed) == (0.5, 0.9, 7, 11)
    assert sampled.max_new_tokens == 3 and sampled.repetition_penalty == 1.2 and sampled.stop == ("zzz",)
    assert answer.done_reason == "length" and answer.eval_count == 3


async def test_ollama_format_constrains_the_answer(served, batch):
    client = ollama_client(served, batch)
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    await client.chat(model=served.name, messages=HI, format="json", stream=False)
    await client.chat(model=served.name, messages=HI, format=schema, stream=False)
    assert json.loads(batch.sampling[0].json_schema) == {"type": "object"}
    assert json.loads(batch.sampling[1].json_schema) == schema


async def test_ollama_generate_templated_raw_and_load(served, batch):
    client = ollama_client(served, batch)
    templated = await client.generate(model=served.name, prompt="Hi", system="Be brief.", stream=False)
    as_is = await client.generate(model=served.name, prompt="Once upon", raw=True, stream=False)
    pieces = [p async for p in await client.generate(model=served.name, prompt="Hi", stream=True)]
    loaded = await client.generate(model=served.name, prompt="")
    assert templated.response == as_is.response == "".join(p.response for p in pieces) == "Hello world!"
    system = [{"role": "system", "content": "Be brief."}, *HI]
    assert batch.prompts[0] == chat_ids(served, system)
    assert batch.prompts[1] == runtime.encode(served.tokenizer, "Once upon")  # no chat template
    assert loaded.done and loaded.done_reason == "load" and len(batch.prompts) == 3


async def test_ollama_tools_round_trip(served_long):
    served = served_long
    batch = scripted(served, json.dumps(CALL))
    client = ollama_client(served, batch)
    asked = [{"role": "user", "content": "Weather in Paris?"}]
    answer = await client.chat(model=served.name, messages=asked, tools=[WEATHER], stream=False)
    (call,) = answer.message.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris", "unit": "c"}
    # The call and its result go back in Ollama's form (arguments as an object, no ids) and reach the prompt.
    history = [*asked, answer.message.model_dump(exclude_none=True),
               {"role": "tool", "content": "18 C", "tool_name": "get_weather"}]
    await client.chat(model=served.name, messages=history, tools=[WEATHER], stream=False)
    prompt = served.tokenizer.decode(batch.prompts[1])
    assert '"tool_result": {"tool_call_id": "call_1", "name": "get_weather", "content": "18 C"}' in prompt


async def test_ollama_model_listing(served, batch):
    client = ollama_client(served, batch)
    listed, running, shown = await client.list(), await client.ps(), await client.show(served.name)
    (model,) = listed.models
    assert model.model == f"{served.name}:latest" and model.size > 0 and len(model.digest) == 64
    assert model.details.format == "openvino" and model.details.family == served.config["model_type"]
    assert running.models[0].model == model.model
    assert shown.modelinfo[f"{model.details.family}.context_length"] == served.context_length
    assert "tools" in shown.capabilities and "<|assistant|>" in shown.template
    async with raw(served, batch) as http:
        assert (await http.get("/api/version")).json()["version"]


@pytest.mark.parametrize("body,words", [
    ({"model": "nope", "messages": HI}, "does not exist"),
    ({"messages": HI}, "model is required"),
    ({"model": "M", "messages": []}, "messages must be a non-empty list"),
    ({"model": "M", "messages": HI, "options": {"temperature": 9}}, "options.temperature"),
    ({"model": "M", "messages": HI, "options": {"top_k": "many"}}, "options.top_k"),
    ({"model": "M", "messages": HI, "format": "yaml"}, "format must be"),
    ({"model": "M", "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]}, "images are not supported"),
    ({"model": "M", "messages": [{"role": "tool", "content": "18 C"}]}, "answers no call"),
])
async def test_ollama_bad_input_is_refused_in_its_shape(served, batch, body, words):
    body = {**body, "model": served.name} if body.get("model") == "M" else body
    async with raw(served, batch) as http:
        answer = await http.post("/api/chat", json=body)
    assert answer.status_code in (400, 404) and set(answer.json()) == {"error"}, answer.text
    assert words in answer.json()["error"]
    if "model" in body and "format" not in body:  # the client sends what it does not check itself
        with pytest.raises(ollama.ResponseError) as refused:
            await ollama_client(served, batch).chat(**body, stream=False)
        assert refused.value.status_code == answer.status_code
    assert not batch.prompts  # nothing reached the engine


# -- Anthropic -----------------------------------------------------------------------------------------------
async def test_anthropic_message_whole_and_streamed(served, batch):
    client = anthropic_client(served, batch)
    ask = {"model": served.name, "max_tokens": 64, "system": "Be brief.", "messages": HI}
    whole = await client.messages.create(**ask)
    async with client.messages.stream(**ask) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert whole.role == "assistant" and [b.type for b in whole.content] == ["text"]
    assert whole.content[0].text == final.content[0].text == "".join(pieces) == "Hello world!" and len(pieces) > 1
    assert whole.stop_reason == final.stop_reason == "end_turn" and whole.stop_sequence is None
    prompt = chat_ids(served, [{"role": "system", "content": "Be brief."}, *HI])
    assert batch.prompts[0] == batch.prompts[1] == prompt
    assert whole.usage.input_tokens == final.usage.input_tokens == len(prompt)
    assert whole.usage.output_tokens == final.usage.output_tokens == len(batch.script)
    counted = await client.messages.count_tokens(model=served.name, system="Be brief.", messages=HI)
    assert counted.input_tokens == len(prompt) and len(batch.prompts) == 2  # counted, not generated


async def test_anthropic_stop_reasons_and_sampling(served, batch):
    client = anthropic_client(served, batch)
    # temperature, top_p and top_k are in the Messages API; this SDK sends them as extra fields.
    sampling = {"temperature": 0.3, "top_p": 0.8, "top_k": 5}
    stopped = await client.messages.create(model=served.name, max_tokens=64, messages=HI,
                                           stop_sequences=["xyz", " wor"], extra_body=sampling)
    cut = await client.messages.create(model=served.name, max_tokens=2, messages=HI)
    assert stopped.content[0].text == "Hello" and stopped.stop_reason == "stop_sequence"
    assert stopped.stop_sequence == " wor"
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 2
    # Anthropic's max_tokens is a ceiling: past the context, the answer is clamped (Claude Code sends 32000).
    async with raw(served, batch) as http:
        ceiling = await http.post("/v1/messages", json={"model": served.name, "max_tokens": 32000, "messages": HI})
    assert ceiling.status_code == 200 and ceiling.json()["content"][0]["text"] == "Hello world!"
    sampled = batch.sampling[0]
    assert (sampled.temperature, sampled.top_p, sampled.top_k, sampled.stop) == (0.3, 0.8, 5, ("xyz", " wor"))


async def test_anthropic_tool_use_round_trip(served_long):
    served = served_long
    batch = scripted(served, json.dumps(CALL))
    client = anthropic_client(served, batch)
    weather = WEATHER["function"]
    tools = [{"name": weather["name"], "description": weather["description"], "input_schema": weather["parameters"]}]
    asked = [{"role": "user", "content": "Weather in Paris?"}]
    whole = await client.messages.create(model=served.name, max_tokens=256, messages=asked, tools=tools,
                                         tool_choice={"type": "any"})
    async with client.messages.stream(model=served.name, max_tokens=256, messages=asked, tools=tools) as stream:
        final = await stream.get_final_message()
    for message in (whole, final):
        (use,) = message.content
        assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"city": "Paris", "unit": "c"}
        assert message.stop_reason == "tool_use"
    assert batch.sampling[0].grammar is not None  # "any" is OpenAI's required: generated under the schema
    result = {"type": "tool_result", "tool_use_id": whole.content[0].id, "content": [{"type": "text", "text": "18 C"}]}
    history = [*asked, {"role": "assistant", "content": [b.model_dump() for b in whole.content]},
               {"role": "user", "content": [result]}]
    await client.messages.create(model=served.name, max_tokens=256, messages=history, tools=tools)
    prompt = served.tokenizer.decode(batch.prompts[-1])
    assert f'"tool_call_id": "{whole.content[0].id}", "name": "get_weather", "content": "18 C"' in prompt


@pytest.mark.parametrize("body,param", [
    ({"messages": HI}, "max_tokens"),
    ({"max_tokens": 0, "messages": HI}, "max_tokens"),
    ({"max_tokens": 8, "messages": HI, "temperature": 1.5}, "temperature"),
    ({"max_tokens": 8, "messages": []}, "messages"),
    ({"max_tokens": 8, "messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
    ({"max_tokens": 8, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, "image"),
    ({"max_tokens": 8, "messages": HI, "stop_sequences": [""]}, "stop_sequences"),
    ({"max_tokens": 8, "messages": HI, "tool_choice": {"type": "tool", "name": "x"}}, "tool_choice"),
])
async def test_anthropic_bad_input_is_refused_in_its_shape(served, batch, body, param):
    async with raw(served, batch) as http:
        answer = await http.post("/v1/messages", json={"model": served.name, **body})
    assert answer.status_code == 400 and answer.json()["type"] == "error", answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and param in error["message"]
    client = anthropic_client(served, batch)
    with pytest.raises(anthropic.BadRequestError) as refused:
        await client.messages.create(model=served.name, max_tokens=8, messages=HI, stop_sequences=[""])
    assert "stop_sequences" in refused.value.body["error"]["message"]
    with pytest.raises(anthropic.NotFoundError) as missing:
        await client.messages.create(model="nope", max_tokens=8, messages=HI)
    assert missing.value.body["error"]["type"] == "not_found_error"
    assert not batch.prompts


async def test_keys_are_asked_of_every_dialect(served, batch):
    with pytest.raises(anthropic.AuthenticationError):
        await anthropic_client(served, batch, key="wrong", api_key="sekret").messages.create(
            model=served.name, max_tokens=8, messages=HI)
    kept = await anthropic_client(served, batch, key="sekret", api_key="sekret").messages.create(
        model=served.name, max_tokens=8, messages=HI)
    assert kept.content[0].text == "Hello world!"
    with pytest.raises(ollama.ResponseError) as refused:
        await ollama_client(served, batch, api_key="sekret").list()
    assert refused.value.status_code == 401
    async with raw(served, batch, api_key="sekret") as http:
        listed = await http.get("/api/tags", headers={"Authorization": "Bearer sekret"})
    assert listed.status_code == 200 and listed.json()["models"]
