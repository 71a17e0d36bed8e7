"""A chat template's own tool format (Hermes-style `<tool_call>` blocks): detected from the template, the
tools and the conversation's calls and results rendered by the template, answers read back whole and
streamed, OpenAI's shapes over HTTP (scripted engine), and calls the real engine writes in the template's
form that always validate, with `required`, a named tool, and the structural tags of `auto`."""

from __future__ import annotations

import json

import jsonschema
import pytest
from conftest import HERMES_STYLE_TEMPLATE, LLAMA3_STYLE_TEMPLATE
from test_api import client, sse_events
from test_tools import ASK, SCHEMAS, TIME, WEATHER, anyio_backend, last, scripted  # noqa: F401

from ovchat import runtime, synthetic, tool_formats, tools
from ovchat.server.served import Served
from ovchat.tool_formats import HERMES, LLAMA3
from ovchat.tool_stream import StreamReader

CALL_BLOCK = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>'
TIME_BLOCK = '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'


def native(*given: dict, choice: str = "auto", parallel: bool = True, format=HERMES) -> tools.ToolPlan:
    return tools.plan_for(given, choice, parallel, format=format)


@pytest.mark.parametrize(("template", "expected"), [
    (HERMES_STYLE_TEMPLATE, HERMES),
    (LLAMA3_STYLE_TEMPLATE, LLAMA3),
    ("{{ bos_token }}{{ '<|python_tag|>' }}", LLAMA3),  # Llama 3.1's mark, as OVMS reads it
    (synthetic.PHI3_CHAT_TEMPLATE, None),  # no tool format: the generic one
    ("{{ '<tool_call>' }}<function=x><parameter=y></parameter>{{ '</tool_call>' }}", None),  # Qwen3-Coder's XML
])
def test_the_format_is_detected_from_the_template(template, expected):
    assert tool_formats.detect(template) == expected


def test_reading_calls_and_the_text_around_them():
    read = native(WEATHER, TIME).read
    (content, (one, two)) = read(f"Let me look.\n{CALL_BLOCK}\n{TIME_BLOCK}")
    assert content == "Let me look." and (one.name, json.loads(one.arguments)) == ("get_weather", {"city": "Paris",
                                                                                                  "unit": "c"})
    assert (two.name, two.arguments) == ("get_time", "{}") and one.id != two.id
    assert read(CALL_BLOCK)[0] is None  # only calls: content null, as OpenAI sends it
    cut = '<tool_call>\n{"name": "get_weather", "arguments": {"ci'
    assert read(cut) == (cut, [])  # cut by the budget: text, never a call
    assert read("Sunny, 18 degrees.") == ("Sunny, 18 degrees.", [])
    assert native(WEATHER, choice="none").read(CALL_BLOCK) == (CALL_BLOCK, [])


def test_reading_a_bare_json_call():
    read = native(WEATHER, format=LLAMA3).read
    content, (call,) = read('{"name": "get_weather", "parameters": {"city": "Paris", "unit": "c"}}')
    assert content is None and json.loads(call.arguments) == {"city": "Paris", "unit": "c"}
    assert read('Sure: {"name": "get_weather", "parameters": {}}')[0] == "Sure:"
    assert read('{"name": "get_weather", "parameters": {"ci') == ('{"name": "get_weather", "parameters": {"ci', [])
    assert read('Use {"name"} as a key.') == ('Use {"name"} as a key.', [])
    grammar = native(WEATHER, TIME, choice="required", format=LLAMA3).constraint()["grammar"]
    assert '\\"parameters\\": ' in grammar and "{0," not in grammar.split("\n")[0]  # one call per turn


@pytest.mark.parametrize("step", [1, 3, 7])
def test_streamed_text_stops_where_a_call_opens(step):
    answer = f"Let me look <toolbox> up.\n{CALL_BLOCK}"
    reader = StreamReader(native(WEATHER))
    shown = "".join(reader.push(answer[i : i + step]) for i in range(0, len(answer), step))
    assert shown == "Let me look <toolbox> up.\n"  # a "<tool" that opens no call is text
    rest, calls = reader.finish()
    assert rest == "" and [c.name for c in calls] == ["get_weather"]
    plain = StreamReader(native(WEATHER))
    assert "".join(plain.push(c) for c in "All <tool") + plain.finish()[0] == "All <tool"


def test_the_constraint_follows_the_choice():
    grammar = native(WEATHER, TIME, choice="required").constraint()
    assert grammar["grammar"].startswith("root ::= ") and grammar["tool_tags"] is None
    assert "<tool_call>" in grammar["grammar"] and "{0,3}" in grammar["grammar"]  # up to four calls
    assert "{0," not in native(WEATHER, TIME, choice="required", parallel=False).constraint()["grammar"].split("\n")[0]
    tags = json.loads(native(WEATHER, TIME).constraint()["tool_tags"])  # auto: free text, then a call
    assert tags["triggers"] == ["<tool_call>"] and not tags["at_least_one"]
    assert [t["begin"] for t in tags["tags"]] == ['<tool_call>\n{"name": "get_weather", "arguments": ',
                                                 '<tool_call>\n{"name": "get_time", "arguments": ']
    named = native(WEATHER, TIME, choice="get_time").constraint()["grammar"]
    assert "get_time" in named and "get_weather" not in named
    assert native(WEATHER, choice="none").constraint() == {"json_schema": None, "grammar": None, "tool_tags": None}
    assert native(WEATHER).instructions() is None  # the template describes the tools itself


def test_history_keeps_openais_fields_for_the_template():
    messages = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "snow"}]
    prepared = native(WEATHER).prepare(messages)
    assert prepared[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}  # an object, as templates take
    assert prepared[1]["content"] == "" and prepared[2]["name"] == "get_weather"
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Oslo"}'  # the caller's are untouched


# -- over HTTP, the scripted engine -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def served_hermes(tiny_hermes_ov) -> Served:
    return Served.load(tiny_hermes_ov, info=None, context_cap=None)


@pytest.mark.anyio
async def test_a_call_in_the_templates_form_comes_back_in_openais_shape(served_hermes):
    assert served_hermes.tool_format == HERMES
    assert len(runtime.encode(served_hermes.tokenizer, "<tool_call>", add_special_tokens=False)) == 1
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_9", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_9", "content": "noon"}]
    body = {"messages": history, "tools": [WEATHER, TIME], "tool_choice": "required"}
    batch = scripted(served_hermes, "\n".join([CALL_BLOCK, TIME_BLOCK]))
    async with client(served_hermes, batch) as http:
        whole = (await http.post("/v1/chat/completions", json=body)).json()
        streamed = await http.post("/v1/chat/completions", json={**body, "stream": True})
    choice = whole["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in choice["message"]["tool_calls"]] == [
        ("get_weather", '{"city": "Paris", "unit": "c"}'), ("get_time", "{}")]
    prompt = served_hermes.tokenizer.decode(batch.prompts[0])
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"' in prompt  # the template's own words
    assert '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>' in prompt  # the earlier call
    assert "<tool_response>\nnoon\n</tool_response>" in prompt
    assert "You can call tools" not in prompt  # no generic instructions
    assert batch.sampling[0].grammar.startswith("root ::= ")
    deltas = [d for c in sse_events(streamed.text) if c["choices"] for d in c["choices"][0]["delta"].get(
        "tool_calls") or []]
    assert [(d["index"], d["function"]["name"]) for d in deltas if "id" in d] == [(0, "get_weather"), (1, "get_time")]


@pytest.mark.anyio
async def test_auto_streams_the_text_and_holds_the_call(served_hermes):
    batch = scripted(served_hermes, f"Checking now.\n{CALL_BLOCK}")
    async with client(served_hermes, batch) as http:
        streamed = await http.post("/v1/chat/completions", json={"messages": ASK, "tools": [WEATHER], "stream": True})
    chunks = [c for c in sse_events(streamed.text) if c["choices"]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "Checking now.\n"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]] == ["tool_calls"]
    assert batch.sampling[0].tool_tags is not None and batch.sampling[0].grammar is None


# -- the real engine ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hermes_model(tiny_hermes_ov):
    import ovchat

    return ovchat.load(str(tiny_hermes_ov))


@pytest.fixture(scope="module")
def llama3_model(tiny_llama3_ov):
    import ovchat

    return ovchat.load(str(tiny_llama3_ov))


@pytest.mark.parametrize("choice", ["required", "named"])
@pytest.mark.parametrize("style", ["hermes", "llama3"])
def test_calls_in_the_templates_form_always_validate(request, style, choice):
    model = request.getfixturevalue(f"{style}_model")
    assert model.tool_format == {"hermes": HERMES, "llama3": LLAMA3}[style]
    given = [{"type": "function", "function": {"name": f"tool_{i}", "parameters": s}} for i, s in enumerate(SCHEMAS)]
    by_name = {t["function"]["name"]: t["function"]["parameters"] for t in given}
    for i in range(len(SCHEMAS)):
        named = "required" if choice == "required" else f"tool_{i}"
        final = last(model.stream_generate(f"Use tool_{i} ({i}).", tools=given, tool_choice=named,
                                                  parallel_tool_calls=i % 2 == 0, max_new_tokens=300,
                                                  temperature=1.0, seed=i))
        assert final.finish_reason == "tool_calls" and final.tool_calls, final
        for call in final.tool_calls:
            jsonschema.validate(json.loads(call.arguments), by_name[call.name])
            assert choice == "required" or call.name == f"tool_{i}"


def test_a_schema_beyond_the_grammar_still_validates_through_structural_tags(hermes_model):
    """`allOf` is beyond ovchat's grammar: the call then runs under GenAI's structural tags, one that
    must open at once, holding the tool's JSON schema."""
    schema = {"type": "object", "allOf": [{"properties": {"n": {"type": "integer", "minimum": 3, "maximum": 5}},
                                           "required": ["n"]}]}
    given = [{"type": "function", "function": {"name": "pick", "parameters": schema}}]
    assert native(*given, choice="required").constraint()["tool_tags"] is not None
    final = last(hermes_model.stream_generate("Pick.", tools=given, tool_choice="required", max_new_tokens=200,
                                              temperature=1.0, seed=3))
    (call, *_) = final.tool_calls
    jsonschema.validate(json.loads(call.arguments), schema)


def test_auto_leaves_the_text_free(hermes_model):
    final = list(hermes_model.stream_generate(ASK, tools=[WEATHER], max_new_tokens=20))
    assert "".join(p.text for p in final) == "Hello world!" and final[-1].tool_calls == ()


def test_a_llama3_style_loop(llama3_model):
    """A bare JSON call, its result as the template writes it back, the written answer; the KV cache
    of the conversation so far is reused."""
    final = last(llama3_model.stream_generate(ASK, tools=[WEATHER], tool_choice="required", max_new_tokens=120,
                                              temperature=1.0, seed=1))
    (call,) = final.tool_calls
    jsonschema.validate(json.loads(call.arguments), WEATHER["function"]["parameters"])
    messages = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call.as_openai()]},
                {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    prompt = runtime.render(llama3_model.tokenizer, "tiny", tool_formats.template_messages(messages),
                            tools=tool_formats.openai_tools(tools.plan_for([WEATHER]).tools))
    assert '<|assistant|>\n{"name": "get_weather", "parameters": {' in prompt and "[ipython] sunny" in prompt
    answer = list(llama3_model.stream_generate(messages, tools=[WEATHER], tool_choice="none", max_new_tokens=20))
    assert answer[-1].tool_calls == () and answer[-1].cached_tokens > 100
