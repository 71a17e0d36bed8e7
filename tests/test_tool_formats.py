"""A chat template's own tool format (Hermes-style `<tool_call>` blocks, Llama 3.x's bare JSON, Phi-4-mini's
`functools[...]`, Mistral's `[TOOL_CALLS] [...]`): detected from the template, the tools and the
conversation's calls and results rendered by the template, answers read back whole and streamed, OpenAI's
shapes over HTTP (scripted engine), and calls the real engine writes in the template's form that always
validate, with `required`, a named tool, and the structural tags of `auto`."""

from __future__ import annotations

import json
import random
import re

import jsonschema
import pytest
from conftest import (
    HERMES_STYLE_TEMPLATE,
    LLAMA3_STYLE_TEMPLATE,
    MISTRAL_STYLE_TEMPLATE,
    PHI4_STYLE_TEMPLATE,
    QWEN3_CODER_STYLE_TEMPLATE,
)
from test_api import client, sse_events
from test_tools import ASK, SCHEMAS, TIME, WEATHER, anyio_backend, last, scripted  # noqa: F401

from ovchat import runtime, synthetic, tool_formats, tool_xml, tools
from ovchat.grammar import RuleBuilder
from ovchat.server.served import Served
from ovchat.tool_formats import HERMES, LLAMA3, MISTRAL, PHI4
from ovchat.tool_stream import StreamReader
from ovchat.tool_xml import QWEN3_CODER

CALL_BLOCK = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>'
TIME_BLOCK = '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'


def native(*given: dict, choice: str = "auto", parallel: bool = True, format=HERMES) -> tools.ToolPlan:
    return tools.plan_for(given, choice, parallel, format=format)


@pytest.mark.parametrize(("template", "expected"), [
    (HERMES_STYLE_TEMPLATE, HERMES),
    (LLAMA3_STYLE_TEMPLATE, LLAMA3),
    ("{{ bos_token }}{{ '<|python_tag|>' }}", LLAMA3),  # Llama 3.1's mark, as OVMS reads it
    (synthetic.PHI3_CHAT_TEMPLATE, None),  # no tool format: the generic one
    ("{{ '<tool_call>' }}<function=x><parameter=y></parameter>{{ '</tool_call>' }}", QWEN3_CODER),  # OVMS's marks
    (QWEN3_CODER_STYLE_TEMPLATE, QWEN3_CODER),
    (PHI4_STYLE_TEMPLATE, PHI4),
    (MISTRAL_STYLE_TEMPLATE, MISTRAL),
    ("{{ '[TOOL_CALLS]' + name + '[ARGS]' }}", None),  # Devstral / Mistral Small 3.2's per-call form: generic
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


LIST = '[{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}, {"name": "get_time", "arguments": {}}]'


@pytest.mark.parametrize("format", [PHI4, MISTRAL], ids=["phi4", "mistral"])
def test_reading_a_list_of_calls(format):
    read = native(WEATHER, TIME, format=format).read
    content, (one, two) = read(format.begin + LIST)
    assert content is None and (one.name, two.name) == ("get_weather", "get_time")
    assert json.loads(one.arguments) == {"city": "Paris", "unit": "c"}
    assert read(f"Let me look.\n{format.begin}{LIST}")[0] == "Let me look."
    cut = format.begin + LIST[:40]
    assert read(cut) == (cut, [])  # cut by the budget: text, never a call
    not_calls = f'{format.begin}[{{"city": "Paris"}}]'
    assert read(not_calls) == (not_calls, [])
    assert read("Numbers [1, 2] and [3].") == ("Numbers [1, 2] and [3].", [])


def test_a_mistral_list_whose_opening_decoding_dropped():
    """[TOOL_CALLS] is a special token: decoded without special tokens, a call list opens the answer bare."""
    content, calls = native(WEATHER, TIME, format=MISTRAL).read(" " + LIST)
    assert content is None and [c.name for c in calls] == ["get_weather", "get_time"]
    assert all(len(c.id) == 9 and c.id.isalnum() for c in calls)  # the ids Mistral's template takes back
    assert native(WEATHER, format=PHI4).read(LIST) == (LIST, [])  # "functools" is text: a bare list is not a call
    assert native(WEATHER, format=MISTRAL).read(f"Sure. {LIST}")[1] == []  # only where it opens the answer
    people = '[{"name": "Alice", "age": 30}]'  # a list of dicts with a name is not a call of these tools
    assert native(WEATHER, TIME, format=MISTRAL).read(people) == (people, [])
    no_arguments = '[{"name": "get_time"}]'
    assert native(WEATHER, TIME, format=MISTRAL).read(no_arguments) == (no_arguments, [])


@pytest.mark.parametrize("step", [1, 4])
@pytest.mark.parametrize("format", [PHI4, MISTRAL], ids=["phi4", "mistral"])
def test_a_streamed_list_is_held_and_read_whole(format, step):
    answers = [("Two [1] notes, then: " + format.begin + LIST, "Two [1] notes, then: ")]
    if format.hidden_begin:
        answers.append((" " + LIST, ""))
    for answer, text in answers:
        reader = StreamReader(native(WEATHER, TIME, format=format))
        shown = "".join(reader.push(answer[i : i + step]) for i in range(0, len(answer), step))
        rest, calls = reader.finish()
        assert (shown, rest, [c.name for c in calls]) == (text, "", ["get_weather", "get_time"])
    plain = StreamReader(native(WEATHER, format=format))  # text that only looks like an opening at first
    assert "".join(plain.push(c) for c in "[note] functool") + plain.finish()[0] == "[note] functool"


def test_python_s_functools_is_text_for_phi4():
    prose = "Use functools.lru_cache here, or import functools [twice]."
    reader = StreamReader(native(WEATHER, format=PHI4))
    assert "".join(reader.push(c) for c in prose) + reader.finish()[0] == prose
    assert native(WEATHER, format=PHI4).read(prose) == (prose, [])
    assert json.loads(native(WEATHER, format=PHI4).constraint()["tool_tags"])["triggers"] == ["functools["]


@pytest.mark.parametrize("format", [PHI4, MISTRAL], ids=["phi4", "mistral"])
def test_a_list_format_is_constrained_as_one_list(format):
    grammar = native(WEATHER, TIME, choice="required", format=format).constraint()["grammar"]
    assert grammar.startswith(f'root ::= "{format.begin}[" ') and '(", " ' in grammar and '"]"' in grammar
    tags = json.loads(native(WEATHER, TIME, format=format).constraint()["tool_tags"])
    assert tags["triggers"] == [format.trigger] and tags["stop_after_first"]  # one list holds every call
    (tag,) = tags["tags"]
    assert (tag["begin"], tag["end"]) == (format.begin + "[", "]") and "get_time" in tag["grammar"]
    beyond = {"type": "object", "allOf": [{"properties": {"n": {"type": "integer"}}}]}  # beyond the grammar
    tool = {"type": "function", "function": {"name": "pick", "parameters": beyond}}
    (tag,) = json.loads(native(tool, format=format).constraint()["tool_tags"])["tags"]
    schema = json.loads(tag["json_schema"])
    assert tag["begin"] == format.begin and schema["type"] == "array" and schema["items"]["properties"]["arguments"]
    assert json.loads(native(tool, format=format).constraint()["tool_tags"])["triggers"] == [format.begin.strip()]


def test_mistral_history_gets_ids_its_template_takes():
    messages = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "snow"}]
    prepared = native(WEATHER, format=MISTRAL).prepare(messages)
    short = prepared[1]["tool_calls"][0]["id"]
    assert len(short) == 9 and short.isalnum() and prepared[2]["tool_call_id"] == short
    assert native(WEATHER, format=MISTRAL).prepare(messages)[1]["tool_calls"][0]["id"] == short  # the same every time
    kept = [{**messages[1], "tool_calls": [{**messages[1]["tool_calls"][0], "id": "abcDEF123"}]}]
    assert native(WEATHER, format=MISTRAL).prepare(kept)[0]["tool_calls"][0]["id"] == "abcDEF123"
    phi4 = native(WEATHER, format=PHI4).prepare(messages)
    assert phi4[1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Oslo"}'  # printed as given: JSON text
    assert "tool_calls" not in native(WEATHER, format=MISTRAL).prepare([{"role": "assistant", "content": "Hi",
                                                                         "tool_calls": None}])[0]


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


@pytest.fixture(scope="module")
def served_mistral(tiny_mistral_ov) -> Served:
    return Served.load(tiny_mistral_ov, info=None, context_cap=None)


@pytest.mark.anyio
async def test_a_mistral_call_comes_back_with_ids_its_template_takes(served_mistral):
    assert served_mistral.tool_format == MISTRAL
    assert len(runtime.encode(served_mistral.tokenizer, "[TOOL_CALLS]", add_special_tokens=False)) == 1
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_9", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_9", "content": "noon"}]
    body = {"messages": history, "tools": [WEATHER, TIME], "tool_choice": "required"}
    batch = scripted(served_mistral, "[TOOL_CALLS] " + LIST)
    async with client(served_mistral, batch) as http:
        whole = (await http.post("/v1/chat/completions", json=body)).json()
        streamed = await http.post("/v1/chat/completions", json={**body, "stream": True})
    choice = whole["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    calls = choice["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert all(len(c["id"]) == 9 and c["id"].isalnum() for c in calls)
    prompt = served_mistral.tokenizer.decode(batch.prompts[0], skip_special_tokens=False)
    short = MISTRAL.call_id("call_9")  # OpenAI's id, in the 9 characters the template requires
    assert f'[TOOL_CALLS] [{{"name": "get_time", "arguments": {{}}, "id": "{short}"}}]' in prompt
    assert f'[TOOL_RESULTS] {{"content": "noon", "call_id": "{short}"}}[/TOOL_RESULTS]' in prompt
    assert prompt.index("[AVAILABLE_TOOLS]") < prompt.index("[INST] Weather in Paris?")
    deltas = [d for c in sse_events(streamed.text) if c["choices"] for d in c["choices"][0]["delta"].get(
        "tool_calls") or []]
    assert [(d["index"], len(d["id"])) for d in deltas if "id" in d] == [(0, 9), (1, 9)]


# -- the real engine ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def styled(request):
    """The tiny model with each style's template, loaded once: styled("hermes")."""
    import ovchat

    loaded = {}

    def load(style: str):
        if style not in loaded:
            loaded[style] = ovchat.load(str(request.getfixturevalue(f"tiny_{style}_ov")))
        return loaded[style]

    return load


STYLES = {"hermes": HERMES, "llama3": LLAMA3, "phi4": PHI4, "mistral": MISTRAL, "qwen3coder": QWEN3_CODER}


@pytest.mark.parametrize("choice", ["required", "named"])
@pytest.mark.parametrize("style", list(STYLES))
def test_calls_in_the_templates_form_always_validate(styled, style, choice):
    model = styled(style)
    assert model.tool_format == STYLES[style]
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


def test_a_schema_beyond_the_grammar_still_validates_through_structural_tags(styled):
    """`allOf` is beyond ovchat's grammar: the call then runs under GenAI's structural tags, one that
    must open at once, holding the tool's JSON schema."""
    model = styled("hermes")
    schema = {"type": "object", "allOf": [{"properties": {"n": {"type": "integer", "minimum": 3, "maximum": 5}},
                                           "required": ["n"]}]}
    given = [{"type": "function", "function": {"name": "pick", "parameters": schema}}]
    assert native(*given, choice="required").constraint()["tool_tags"] is not None
    final = last(model.stream_generate("Pick.", tools=given, tool_choice="required", max_new_tokens=200,
                                              temperature=1.0, seed=3))
    (call, *_) = final.tool_calls
    jsonschema.validate(json.loads(call.arguments), schema)


@pytest.mark.parametrize("style", ["hermes", "phi4"])
def test_auto_leaves_the_text_free(styled, style):
    model = styled(style)
    final = list(model.stream_generate(ASK, tools=[WEATHER], max_new_tokens=20))
    assert "".join(p.text for p in final) == "Hello world!" and final[-1].tool_calls == ()


def test_a_llama3_style_loop(styled):
    """A bare JSON call, its result as the template writes it back, the written answer; the KV cache
    of the conversation so far is reused."""
    model = styled("llama3")
    final = last(model.stream_generate(ASK, tools=[WEATHER], tool_choice="required", max_new_tokens=120,
                                              temperature=1.0, seed=1))
    (call,) = final.tool_calls
    jsonschema.validate(json.loads(call.arguments), WEATHER["function"]["parameters"])
    messages = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call.as_openai()]},
                {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    prompt = runtime.render(model.tokenizer, "tiny", tool_formats.template_messages(messages),
                            tools=tool_formats.openai_tools(tools.plan_for([WEATHER]).tools))
    assert '<|assistant|>\n{"name": "get_weather", "parameters": {' in prompt and "[ipython] sunny" in prompt
    answer = list(model.stream_generate(messages, tools=[WEATHER], tool_choice="none", max_new_tokens=20))
    assert answer[-1].tool_calls == () and answer[-1].cached_tokens > 100


def test_a_mistral_style_loop(styled):
    """A call whose opening is a special token, its 9-character id taken back by the template with the
    result, the written answer; the KV cache of the conversation so far is reused."""
    model = styled("mistral")
    final = last(model.stream_generate(ASK, tools=[WEATHER], tool_choice="required", max_new_tokens=200,
                                               parallel_tool_calls=False, temperature=1.0, seed=0))
    (call,) = final.tool_calls
    assert len(call.id) == 9 and call.id.isalnum()
    jsonschema.validate(json.loads(call.arguments), WEATHER["function"]["parameters"])
    messages = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call.as_openai()]},
                {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    answer = list(model.stream_generate(messages, tools=[WEATHER], tool_choice="none", max_new_tokens=20))
    assert answer[-1].tool_calls == () and answer[-1].cached_tokens > 100


def test_a_template_beside_the_model_is_the_one_used(tmp_path, tiny_phi3_long_ov):
    """chat_template.jinja beside an export (how OVMS's Phi-4-mini tool template is used) wins over the
    tokenizer's own, for the tool format and for the prompt the pipeline itself renders."""
    import shutil

    import ovchat

    folder = tmp_path / "with-template"
    shutil.copytree(tiny_phi3_long_ov, folder)
    # The prompt ends in "Hello": the tiny model goes on with " world!" (it answers "Hello world!" otherwise).
    template = PHI4_STYLE_TEMPLATE.replace("<|assistant|>\n{% endif %}", "<|assistant|>\nHello{% endif %}")
    (folder / "chat_template.jinja").write_text(template)
    model = ovchat.load(str(folder))
    assert model.tool_format == PHI4
    assert "".join(p.text for p in model.stream_generate("Hi", max_new_tokens=8)) == " world!"
    assert Served.load(folder, info=None, context_cap=None).tool_format == PHI4
    (folder / "chat_template.jinja").write_text("functools{% for m in messages %}{{ m.content | no_such_filter }}"
                                                "{% endfor %}")
    fallback = ovchat.load(str(folder))  # a template GenAI cannot run: the tokenizer's own stays, and its format
    assert fallback.render(ASK).endswith("<|assistant|>\n") and fallback.tool_format is None


# -- Qwen3-Coder's XML ---------------------------------------------------------------------------------------
XML_CALL = ("<tool_call>\n<function=get_weather>\n<parameter=city>\nNew <b>York</b>\n</parameter>\n"
            "<parameter=unit>\nc\n</parameter>\n</function>\n</tool_call>")
COUNTS = {"type": "function", "function": {"name": "count", "parameters": {"type": "object", "properties": {
    "n": {"type": "integer"}, "label": {"type": "string"}, "items": {"type": "array", "items": {"type": "integer"}}},
    "required": ["n"]}}}


def test_reading_xml_calls():
    read = native(WEATHER, COUNTS, format=QWEN3_CODER).read
    content, (one, two) = read(f"Looking.\n{XML_CALL}\n<tool_call>\n<function=count>\n<parameter=n>\n7\n</parameter>\n"
                               "<parameter=label>\n12\n</parameter>\n<parameter=items>\n[1, 2]\n</parameter>\n"
                               "</function>\n</tool_call>")
    assert content == "Looking." and json.loads(one.arguments) == {"city": "New <b>York</b>", "unit": "c"}
    assert json.loads(two.arguments) == {"n": 7, "label": "12", "items": [1, 2]}  # a string stays text, "12" too
    cut = XML_CALL[:60]
    assert read(cut) == (cut, [])
    multiline = XML_CALL.replace("New <b>York</b>", "line one\n\nline three")
    assert json.loads(read(multiline)[1][0].arguments)["city"] == "line one\n\nline three"
    code = XML_CALL.replace("New <b>York</b>", "x</function>\n</tool_call>y")  # read parameter by parameter
    assert json.loads(read(code)[1][0].arguments) == {"city": "x</function>\n</tool_call>y", "unit": "c"}


def test_the_xml_grammar_holds_parameters_in_order_and_strings_as_text():
    grammar = native(WEATHER, COUNTS, choice="required", format=QWEN3_CODER).constraint()["grammar"]
    assert '"<tool_call>\\n<function=count>\\n" "<parameter=n>\\n" integer' in grammar
    assert '("c" | "f")' in grammar  # an enum of strings: its values, unquoted
    tags = json.loads(native(WEATHER, COUNTS, format=QWEN3_CODER).constraint()["tool_tags"])
    assert tags["triggers"] == ["<tool_call>"] and [t["begin"] for t in tags["tags"]] == [
        "<tool_call>\n<function=get_weather>\n", "<tool_call>\n<function=count>\n"]
    either = {"type": "function", "function": {"name": "maybe", "parameters": {
        "type": "object", "properties": {"v": {"type": ["string", "null"]}}}}}
    assert native(either, format=QWEN3_CODER).format is None  # text or JSON? the generic format serves it
    assert native(either, format=QWEN3_CODER).instructions() is not None  # described in the generic words


@pytest.mark.parametrize("parameters", [
    {"type": "object", "properties": {"v": {"type": ["string", "null"]}}},  # text, or JSON?
    {"type": "object"},  # free-form
    {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a", "b"]},  # b has no schema
    {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
     "anyOf": [{"required": ["a"]}, {"required": ["b"]}]},  # over the parameters as a whole
    {"type": "object", "properties": {"a": {"type": "string", "pattern": "^a.c$"}}},  # "." could write "<"
    {"type": "object", "properties": {"a": {"type": "string", "pattern": '^"x"$'}}},  # JSON's escaping
    {"type": "object", "properties": {"n": {"type": "integer", "minimum": "5"}}},  # a keyword's odd value
])
def test_what_the_xml_form_cannot_hold_gets_the_generic_format(parameters):
    tool = {"type": "function", "function": {"name": "f", "parameters": parameters}}
    plan = native(tool, choice="required", format=QWEN3_CODER)
    assert plan.format is None and "tool_calls" in (plan.constraint()["grammar"] or plan.constraint()["json_schema"])


@pytest.fixture(scope="module")
def served_qwen3coder(tiny_qwen3coder_ov) -> Served:
    return Served.load(tiny_qwen3coder_ov, info=None, context_cap=None)


@pytest.mark.anyio
async def test_the_server_falls_back_to_the_generic_format_too(served_qwen3coder):
    either = {"type": "function", "function": {"name": "maybe", "parameters": {
        "type": "object", "properties": {"v": {"type": ["string", "null"]}}, "required": ["v"]}}}
    batch = scripted(served_qwen3coder, '{"tool_calls": [{"name": "maybe", "arguments": {"v": null}}]}')
    async with client(served_qwen3coder, batch) as http:
        answer = await http.post("/v1/chat/completions", json={"messages": ASK, "tools": [either, TIME],
                                                               "tool_choice": "required"})
    assert answer.status_code == 200, answer.text
    (call,) = answer.json()["choices"][0]["message"]["tool_calls"]
    assert (call["function"]["name"], json.loads(call["function"]["arguments"])) == ("maybe", {"v": None})
    assert "You can call tools" in served_qwen3coder.tokenizer.decode(batch.prompts[0])  # the generic words


def test_xml_history_is_written_by_the_template(styled):
    model = styled("qwen3coder")
    messages = [*ASK, {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "count", "arguments": '{"n": 2, "label": "two"}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "ok"}]
    plan = native(COUNTS, format=QWEN3_CODER)
    prompt = runtime.render(model.tokenizer, "tiny", plan.prepare(messages), tools=plan.template_tools())
    assert ("<tool_call>\n<function=count>\n<parameter=n>\n2\n</parameter>\n<parameter=label>\ntwo\n</parameter>\n"
            "</function>\n</tool_call>") in prompt and "<tool_response>\nok\n</tool_response>" in prompt


def _ebnf_as_regex(rule: str, rules: dict[str, str]) -> str:
    """A rule of the XML grammar (literals, classes, groups, |, *) as a Python regex, its named rules inlined."""
    out = re.sub(r'"((?:[^"\\]|\\.)*)"', lambda m: "(?:" + re.escape(json.loads(f'"{m.group(1)}"')) + ")", rule)
    out = re.sub(r"\b(partial\d+|broken\d+)\b", lambda m: _ebnf_as_regex(rules[m.group(1)], rules), out)
    return out.replace(" ", "").replace("(", "(?:").replace("(?:?:", "(?:")


def test_free_text_in_an_xml_parameter_is_anything_but_its_end():
    """A string parameter's text is free but for `</parameter>`, which would end it early: the grammar's
    rule, read as a regex, takes exactly the texts without it (the real engine runs it in the tests above)."""
    builder = RuleBuilder()
    rule = builder.rules[tool_xml._free_text(builder)]
    pattern = re.compile(_ebnf_as_regex(rule, builder.rules), re.S)
    pieces = ["<", "/", "</", "</param", "</parameter", "</parameter>", ">", "p", "a", "x", "\n", "<<", "</parameters"]
    rng = random.Random(0)
    texts = ["", "</paramete", "a</parameter>b", "<</parameter>", "</parameter", "x<y</div>",
             *("".join(rng.choice(pieces) for _ in range(rng.randint(1, 8))) for _ in range(3000))]
    for text in texts:
        assert bool(pattern.fullmatch(text)) == ("</parameter>" not in text), text


@pytest.mark.parametrize("choice", ["auto", "required"])
def test_the_engine_takes_the_free_text_rule(styled, choice):
    model = styled("qwen3coder")
    note = {"type": "function", "function": {"name": "note", "parameters": {
        "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}}
    final = last(model.stream_generate(ASK, tools=[note], tool_choice=choice, max_new_tokens=24))
    assert final.finish_reason in ("stop", "length")  # compiled and run (the tiny model's text never ends)
