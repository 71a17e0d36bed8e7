"""Chat templates' own tool formats, detected from the template as OpenVINO Model Server does.

A model whose template has a tool format (Qwen 2.5/3, Hermes, SmolLM3: `<tool_call>` blocks) was
trained on it: it sees its tools the way the template writes them (the template's `tools`), the
conversation's calls and results keep OpenAI's fields for the template to render, and its calls are
generated in its own form:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

under each tool's schema: with `required` or a named tool the whole answer is calls (a grammar of
them), with `auto` the text is free until the model opens a call, and from there the call is
constrained (OpenVINO GenAI's structural tags, triggered by `<tool_call>`). Templates without a format
get ovchat's generic one (ovchat.tools).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .grammar import Unsupported, framed_ebnf, schema_to_ebnf

# The template marks OVMS's chat-template analyzer looks for, in its order (first match wins):
# (all of these substrings, tool parser, reasoning parser).
PARSER_MARKS = (
    (("<|channel|>",), "gptoss", "gptoss"),
    (("<|tool_call>call:",), "gemma4", "gemma4"),
    (("<parameter=", "</parameter>", "<function="), "qwen3coder", None),
    (("functools",), "phi4", None),
    (("[TOOL_CALLS]", "[ARGS]"), "devstral", None),
    (("[TOOL_CALLS]",), "mistral", None),
    (("<|python_tag|>",), "llama3", None),
    (("<tool_call>", "</tool_call>"), "hermes3", None),
)
THINKING_MARKS = ("<think>", "</think>")


def template_parsers(template: str) -> tuple[str | None, str | None]:
    """OVMS's tool and reasoning parsers for a chat template (None: the template has no such format)."""
    thinks = "qwen3" if any(mark in template for mark in THINKING_MARKS) else None
    for marks, tool, reasoning in PARSER_MARKS:
        if all(mark in template for mark in marks):
            return tool, reasoning or (thinks if tool in ("qwen3coder", "hermes3") else None)
    return None, thinks


def chat_template(folder: Path, tokenizer=None) -> str:
    """The template a model folder is used with: chat_template.jinja beside the model first (as OVMS
    reads it), else its tokenizer's."""
    jinja = Path(folder) / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    if tokenizer is None:
        import openvino_genai as ov_genai

        tokenizer = ov_genai.Tokenizer(str(folder))
    return tokenizer.chat_template or ""


@dataclass(frozen=True)
class CallFormat:
    """Calls written as `begin` + {"name": ..., "<args_key>": ...} + `end`, several joined by `separator`;
    a bare JSON call ("" begin) opens at its `{"name"`."""

    name: str
    parser: str  # OVMS's name for it
    begin: str
    end: str
    separator: str = "\n"
    args_key: str = "arguments"
    most: int = 4  # calls one answer may hold (what the template can write back)

    @property
    def trigger(self) -> str:
        return self.begin.strip() or '{"name"'

    def frame(self, tool) -> tuple[str, Any, str]:
        """(text before the arguments, their schema, text after) of one call of `tool`."""
        name = json.dumps(tool.name, ensure_ascii=False)
        return f'{self.begin}{{"name": {name}, "{self.args_key}": ', tool.parameters, "}" + self.end

    def grammar(self, tools: Sequence, most: int) -> tuple[str | None, str | None]:
        """(grammar, None) for answers that are only calls, or (None, structural tags) where a tool's
        schema is beyond the grammar (each tag then holds the JSON schema itself)."""
        try:
            return framed_ebnf([self.frame(t) for t in tools], self.separator, most), None
        except Unsupported:
            return None, self.tags(tools, most, at_least_one=True)

    def tags(self, tools: Sequence, most: int, at_least_one: bool = False) -> str:
        """Structural tags as JSON (the engine builds GenAI's objects from it): free text until the
        trigger, then a call of one of `tools` under its schema."""
        tags = []
        for tool in tools:
            before, schema, after = self.frame(tool)
            try:
                content = {"grammar": schema_to_ebnf(schema)}
            except Unsupported:
                content = {"json_schema": json.dumps(schema)}
            tags.append({"begin": before, "end": after, **content})
        return json.dumps({"triggers": [self.trigger], "tags": tags, "at_least_one": at_least_one,
                           "stop_after_first": most <= 1})

    def read(self, text: str) -> tuple[str | None, list[tuple[str, str]]]:
        """(content, [(name, arguments JSON)]): the calls found in the answer, the rest as content.
        A call that does not parse (an answer cut by its budget) stays in the content."""
        calls, kept, at = [], [], 0
        decoder, closing = json.JSONDecoder(), self.end.strip()
        for found in re.finditer(re.escape(self.trigger), text):
            if found.start() < at:
                continue
            start = found.end() if self.begin else found.start()
            start += len(text[start:]) - len(text[start:].lstrip())
            try:
                call, stop = decoder.raw_decode(text, start)
                name, arguments = call["name"], call.get(self.args_key, {})
                if not isinstance(name, str):
                    raise TypeError(name)
            except (ValueError, KeyError, TypeError):
                continue
            rest = text[stop:].lstrip()
            if closing and rest.startswith(closing):
                stop = len(text) - len(rest) + len(closing)
            kept.append(text[at : found.start()])
            at = stop
            calls.append((name, arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)))
        if not calls:
            return text, []
        return ("".join(kept) + text[at:]).strip() or None, calls


HERMES = CallFormat("hermes", "hermes3", "<tool_call>\n", "\n</tool_call>")
# Llama 3.1-3.3: a bare {"name": ..., "parameters": ...}; the template writes back one call per turn.
LLAMA3 = CallFormat("llama3", "llama3", "", "", args_key="parameters", most=1)
FORMATS = {"hermes3": HERMES, "llama3": LLAMA3}
# Llama 3.2's template lacks 3.1's <|python_tag|> (OVMS's mark); its instruction names the call's form.
LLAMA3_MARK = '"parameters": dictionary of argument name'


def detect(template: str) -> CallFormat | None:
    """The template's own call format, where ovchat writes it (else None: the generic format)."""
    parser = template_parsers(template)[0]
    if parser is None and LLAMA3_MARK in template:
        parser = "llama3"
    return FORMATS.get(parser or "")


def template_messages(messages: Iterable[dict]) -> list[dict]:
    """OpenAI messages as chat templates take them: a call's arguments as an object (Hugging Face's
    convention), a tool result with the name of the call it answers."""
    out, names = [], {}
    for message in messages:
        message = dict(message)
        if message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                function = dict(call["function"])
                names[call.get("id")] = function["name"]
                try:
                    function["arguments"] = json.loads(function.get("arguments") or "{}")
                except json.JSONDecodeError:
                    pass  # as the client sent it
                calls.append({**call, "function": function})
            message["tool_calls"] = calls
            message["content"] = message.get("content") or ""
        elif message.get("role") == "tool":
            message.setdefault("name", names.get(message.get("tool_call_id"), ""))
        out.append(message)
    return out


def openai_tools(tools: Iterable) -> list[dict]:
    return [{"type": "function", "function": {"name": t.name, "description": t.description,
                                              "parameters": t.parameters}} for t in tools]
