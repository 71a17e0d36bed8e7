"""Tool calling for any chat model: the tools described to the model, its answer constrained to a JSON
object that is either a call or a reply, and that answer read back as calls.

This is ovchat's generic tool format, for templates with no tool format of their own (SmolLM2's,
Phi-3-mini's). The model answers one JSON object:

    {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}   a call (or several)
    {"response": "It is sunny."}                                                a reply to the user

and generation runs under that object's JSON schema, built from the tools' own parameter schemas, so
a call always names a real tool and its arguments always validate. `required` (or a named tool)
leaves only the call form, `none` only the reply; the tools are described the same way whatever
the choice, so a tool loop's prompt only grows (and its cache is reused).
The conversation's earlier calls and tool results are written back in the same form, as plain
assistant and user messages, which every chat template can render.
"""

from __future__ import annotations

import copy
import json
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import OvchatError
from .grammar import Unsupported, schema_to_ebnf
from .tool_formats import CallFormat, openai_tools, template_messages
from .tool_stream import StreamReader

MAX_REF_DEPTH = 16  # $ref expansions nested deeper than this are taken for recursion
# Calls in one answer: a small model, once calling, may go on adding calls until its budget ends.
MAX_PARALLEL_CALLS = 4


class ToolError(OvchatError):
    """A tool definition or tool history ovchat cannot use; `param` names where (OpenAI's style)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Tool:
    name: str
    description: str = ""
    parameters: dict = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON text, as OpenAI sends it

    def as_openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}

    def deltas(self, index: int) -> list[dict]:
        """The call as OpenAI streams it: id, type and name first, then the arguments."""
        return [
            {"index": index, "id": self.id, "type": "function", "function": {"name": self.name, "arguments": ""}},
            {"index": index, "function": {"arguments": self.arguments}},
        ]


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


@dataclass(frozen=True)
class ToolPlan:
    """What a request's tools do to generation: the instructions added to the conversation and the
    JSON schema the answer must follow (None: free text)."""

    tools: tuple[Tool, ...]
    choice: str = "auto"  # "none", "auto", "required", or a tool's name
    parallel: bool = True
    reply_schema: dict | None = None  # the reply's own schema (response_format), else a string
    format: CallFormat | None = None  # the chat template's own call format (None: the generic one)

    @property
    def active(self) -> bool:
        """Tools are in play: described to the model, and its answer in the generic form."""
        return bool(self.tools)

    @property
    def calls_only(self) -> bool:
        return self.active and self.choice not in ("auto", "none")

    def offered(self) -> tuple[Tool, ...]:
        """The tools the answer may call."""
        if self.choice == "none":
            return ()
        if self.choice in ("auto", "required"):
            return self.tools
        return tuple(t for t in self.tools if t.name == self.choice)

    def schema(self) -> dict | None:
        if not self.active:
            return None
        reply = _object({"response": self.reply_schema or {"type": "string"}})
        if self.choice == "none":
            return reply
        calls = [_call_schema(tool) for tool in self.offered()]
        items = calls[0] if len(calls) == 1 else {"anyOf": calls}
        array = {"type": "array", "items": items, "minItems": 1, "maxItems": MAX_PARALLEL_CALLS if self.parallel else 1}
        call_form = _object({"tool_calls": array})
        return call_form if self.calls_only else {"anyOf": [call_form, reply]}

    def constraint(self) -> dict:
        """What generation runs under, as SamplingParams fields. Generic format: the answer's schema as
        a compact grammar (no free whitespace for a small model to loop in), or the schema itself where
        the grammar cannot express it. A template's format: a grammar of calls only, or free text with
        structural tags that constrain a call once it opens."""
        fields = {"json_schema": None, "grammar": None, "tool_tags": None}
        if self.format is not None and self.active:
            offered, most = self.offered(), min(self.format.most, MAX_PARALLEL_CALLS if self.parallel else 1)
            if not offered:  # "none": a plain reply (in its own schema, if response_format gave one)
                return {**fields, "json_schema": None if self.reply_schema is None else json.dumps(self.reply_schema)}
            if self.calls_only:
                grammar, tags = self.format.grammar(offered, most)
                return {**fields, "grammar": grammar, "tool_tags": tags}
            return {**fields, "tool_tags": self.format.tags(offered, most)}
        schema = self.schema()
        if schema is None:
            return fields
        try:
            return {**fields, "grammar": schema_to_ebnf(schema)}
        except Unsupported:
            return {**fields, "json_schema": json.dumps(schema)}

    def template_tools(self) -> list[dict] | None:
        """The tools as a chat template with its own format takes them (its `tools` variable)."""
        return openai_tools(self.tools) if self.format is not None and self.active else None

    def instructions(self) -> str | None:
        """The system text that tells the model its tools and the answer's form. The same whatever
        `choice` is (the grammar enforces the choice), so a tool loop's prompt only grows and the
        earlier turns' cache is reused."""
        if not self.active or self.format is not None:  # the template describes the tools itself
            return None
        lines = [
            "You can call tools. Each tool is listed as JSON: its name, what it does and the JSON schema "
            "of its arguments."
        ]
        lines += [
            json.dumps({"name": t.name, "description": t.description, "parameters": t.parameters}, ensure_ascii=False)
            for t in self.tools
        ]
        call = '{"tool_calls": [{"name": "<tool name>", "arguments": {<arguments>}}]}'
        lines.append(
            f"Answer with one JSON object: either call tools with {call}, or reply to the user "
            'with {"response": "<your reply>"}. Call a tool when it helps answer; once the tool results '
            "you need are in, reply."
        )
        return "\n".join(lines)

    def prepare(self, messages: Sequence[dict]) -> list[dict]:
        """The conversation as plain messages: calls and results written in the generic format, and
        the instructions joined to the system message (or put first). A template with its own format
        takes OpenAI's fields as they are."""
        if self.format is not None and self.active:
            return template_messages(messages, self.format)
        plain = history(messages)
        text = self.instructions()
        if text is None:
            return plain
        if plain and plain[0]["role"] == "system":
            return [{"role": "system", "content": f"{plain[0]['content']}\n\n{text}"}, *plain[1:]]
        return [{"role": "system", "content": text}, *plain]

    def read(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """The finished answer as (content, calls). Text that is not the generic form (an answer cut at
        its length limit, or `none`) is content as it stands."""
        if not self.active:
            return text, []
        if self.format is not None:
            if self.choice == "none":
                return text, []
            content, found = self.format.read(text, self.tools)
            return content, [ToolCall(self.format.new_id() or new_call_id(), name, args) for name, args in found]
        try:
            answer = json.loads(text)
        except json.JSONDecodeError:  # cut short: a reply's decoded part (as streamed), else the text as it is
            reader = StreamReader(self)
            shown = reader.push(text)
            return (shown if reader.mode == "reply" else text), []
        if isinstance(answer, dict) and isinstance(answer.get("tool_calls"), list):
            return None, [
                ToolCall(new_call_id(), call["name"], json.dumps(call.get("arguments", {}), ensure_ascii=False))
                for call in answer["tool_calls"]
                if isinstance(call, dict) and isinstance(call.get("name"), str)
            ]
        if isinstance(answer, dict) and "response" in answer:
            reply = answer["response"]
            return (reply if isinstance(reply, str) else json.dumps(reply, ensure_ascii=False)), []
        return text, []


def make_tool(name: str, description: str | None, parameters: Any, where: str) -> Tool:
    """A tool whose parameters can sit inside the answer's schema: an object schema, references inlined."""
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
        raise ToolError(f"{where}: a tool's parameters must be a JSON schema of type object", where)
    return Tool(name, description or "", inline_refs(parameters, where))


def plan_for(
    given: Iterable[Tool | dict] | None,
    choice: str = "auto",
    parallel: bool = True,
    reply_schema: str | None = None,
    format: CallFormat | None = None,
) -> ToolPlan:
    """The library's way in: tools as `Tool`s, OpenAI's {"type": "function", "function": {...}} or
    {"name", "description", "parameters"} dicts; `choice` "auto", "none", "required" or a tool's name."""
    made = []
    for i, tool in enumerate(given or ()):
        if isinstance(tool, Tool):
            made.append(tool)
            continue
        spec = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
            raise ToolError(f"tools[{i}]: a tool needs a name (a Tool, or a dict with 'name')", f"tools[{i}]")
        made.append(make_tool(spec["name"], spec.get("description"), spec.get("parameters"), f"tools[{i}].parameters"))
    names = [t.name for t in made]
    if choice not in ("auto", "none", "required") and choice not in names:
        raise ToolError(f"tool_choice {choice!r} is none of 'auto', 'none', 'required' or a tool's name", "tool_choice")
    if choice == "required" and not made:
        raise ToolError("tool_choice 'required' needs tools", "tool_choice")
    reply = None if reply_schema is None else json.loads(reply_schema)
    return ToolPlan(tuple(made), choice, parallel, reply, format_for(format, made))


def format_for(format: CallFormat | None, tools: Sequence[Tool]) -> CallFormat | None:
    """The template's call format, unless a tool's schema is beyond it: the generic format then serves."""
    return format if format is None or format.takes(tools) else None


def _object(properties: dict) -> dict:
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def _call_schema(tool: Tool) -> dict:
    return _object({"name": {"const": tool.name}, "arguments": tool.parameters})


def history(messages: Iterable[dict]) -> list[dict]:
    """Messages with OpenAI's tool fields as plain role/content messages in the generic format:
    an assistant's calls become its JSON answer, a tool's result a user message that names the call.
    Other messages pass through as they are."""
    out: list[dict] = []
    names: dict[str, str] = {}
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else None
        calls = message.get("tool_calls") if role == "assistant" else None
        if calls:
            for call in calls:
                names[call.get("id")] = call["function"]["name"]
            written = {"tool_calls": [{"name": c["function"]["name"], "arguments": _arguments(c)} for c in calls]}
            text = message.get("content") or ""
            out.append({"role": "assistant", "content": (text + "\n" if text else "") + json.dumps(written)})
        elif role == "tool":
            result = {
                "tool_call_id": message.get("tool_call_id"),
                "name": names.get(message.get("tool_call_id"), ""),
                "content": message.get("content") or "",
            }
            out.append({"role": "user", "content": json.dumps({"tool_result": result}, ensure_ascii=False)})
        else:
            out.append(message)
    return out


def _arguments(call: dict) -> Any:
    text = call["function"].get("arguments") or "{}"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # as the client sent it; the model sees it verbatim


def check_history(messages: Sequence[dict]) -> None:
    """Every tool result answers an earlier call of the conversation."""
    seen: set[str] = set()
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            continue  # not ours to judge: the chat template's checks name it
        for call in message.get("tool_calls") or []:
            seen.add(call["id"])
        if message["role"] == "tool" and message.get("tool_call_id") not in seen:
            raise ToolError(
                f"messages[{i}].tool_call_id: {message.get('tool_call_id')!r} matches no tool call of an earlier "
                "assistant message",
                f"messages[{i}].tool_call_id",
            )


def inline_refs(schema: Any, where: str) -> Any:
    """The schema with its internal references ("#/$defs/X") replaced by what they point at, so it can
    sit inside the answer's schema (its "#" would no longer be its own root). Recursive ones are refused."""
    root = schema

    def expand(node: Any, depth: int) -> Any:
        if isinstance(node, list):
            return [expand(item, depth) for item in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            if depth >= MAX_REF_DEPTH:
                raise ToolError(f"{where}: recursive $ref is not supported in tool parameters", where)
            target = _pointer(root, node["$ref"], where)
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return expand({**copy.deepcopy(target), **rest}, depth + 1)
        return {k: expand(v, depth) for k, v in node.items() if k not in ("$defs", "definitions")}

    return expand(schema, 0)


def _pointer(root: Any, ref: Any, where: str) -> Any:
    if not isinstance(ref, str) or not ref.startswith("#"):
        raise ToolError(f"{where}.$ref: only references inside the schema (#/...) are supported", where)
    node = root
    for part in [p for p in ref[1:].split("/") if p]:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            raise ToolError(f"{where}.$ref: {ref!r} points at nothing in the schema", where)
        node = node[part]
    return node
