"""How a chat template's tool calls are written: `CallFormat`, one call's frame (or one list of calls) around
its JSON arguments, the grammar and structural tags it is generated under, and the reading of an answer
back into calls. The styles themselves, and their detection, are in ovchat.tool_formats."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .grammar import Unsupported, framed_ebnf, schema_to_ebnf


@dataclass(frozen=True)
class CallFormat:
    """Calls written as `begin` + {"name": ..., "<args_key>": ...} + `end`, several joined by `separator`;
    a bare JSON call ("" begin) opens at its `{"name"`. A `listed` format writes all of an answer's calls
    as one JSON array after `begin` instead (Phi-4-mini's `functools[...]`, Mistral's `[TOOL_CALLS] [...]`)."""

    name: str
    parser: str  # OVMS's name for it
    begin: str
    end: str
    separator: str = "\n"
    args_key: str = "arguments"
    most: int = 4  # calls one answer may hold (what the template can write back)
    listed: bool = False
    # `begin` is a special token that decoding drops (Mistral's [TOOL_CALLS]): a list of calls that opens
    # the answer is its calls too, as OVMS reads them.
    hidden_begin: bool = False
    arguments_text: bool = False  # the template prints a call's arguments as they are: keep OpenAI's JSON text
    id_length: int = 0  # the template takes only call ids of this many letters and digits (Mistral: 9)
    # A list's opening, where the word alone is common text (Phi-4's "functools" in "import functools").
    list_trigger: str = ""

    @property
    def trigger(self) -> str:
        return self.list_trigger or self.begin.strip() or '{"name"'

    def frame(self, tool) -> tuple[str, Any, str]:
        """(text before the arguments, their schema, text after) of one call of `tool`."""
        name = json.dumps(tool.name, ensure_ascii=False)
        if self.listed:
            return f'{{"name": {name}, "{self.args_key}": ', tool.parameters, "}"
        return f'{self.begin}{{"name": {name}, "{self.args_key}": ', tool.parameters, "}" + self.end

    def _ebnf(self, tools: Sequence, most: int, whole: bool) -> str:
        """The calls as a grammar; `whole`: with a list's opening and closing."""
        around = {"opening": self.begin + "[", "closing": "]" + self.end} if self.listed and whole else {}
        return framed_ebnf([self.frame(t) for t in tools], self.separator, most, **around)

    def grammar(self, tools: Sequence, most: int) -> tuple[str | None, str | None]:
        """(grammar, None) for answers that are only calls, or (None, structural tags) where a tool's
        schema is beyond the grammar (each tag then holds the JSON schema itself)."""
        try:
            return self._ebnf(tools, most, whole=True), None
        except Unsupported:
            return None, self.tags(tools, most, at_least_one=True)

    def tags(self, tools: Sequence, most: int, at_least_one: bool = False) -> str:
        """Structural tags as JSON (the engine builds GenAI's objects from it): free text until the
        trigger, then a call of one of `tools` under its schema (a listed format: one list of calls)."""
        if self.listed:
            try:
                grammar = self._ebnf(tools, most, whole=False)
                tags, trigger = [{"begin": self.begin + "[", "end": "]" + self.end, "grammar": grammar}], self.trigger
            except Unsupported:  # a JSON schema's array brings its own brackets: the tag opens before them
                calls = [{"type": "object", "properties": {"name": {"const": t.name}, self.args_key: t.parameters},
                          "required": ["name", self.args_key], "additionalProperties": False} for t in tools]
                items = calls[0] if len(calls) == 1 else {"anyOf": calls}
                schema = {"type": "array", "items": items, "minItems": 1, "maxItems": most}
                tags = [{"begin": self.begin, "end": self.end, "json_schema": json.dumps(schema)}]
                trigger = self.begin.strip()
        else:
            tags, trigger = [], self.trigger
            for tool in tools:
                before, schema, after = self.frame(tool)
                try:
                    content = {"grammar": schema_to_ebnf(schema)}
                except Unsupported:
                    content = {"json_schema": json.dumps(schema)}
                tags.append({"begin": before, "end": after, **content})
        return json.dumps({"triggers": [trigger], "tags": tags, "at_least_one": at_least_one,
                           "stop_after_first": self.listed or most <= 1})

    def opening(self, text: str, after: int = 0) -> int | None:
        """Where the answer's calls open in `text`, at or after `after` (None: nowhere yet)."""
        found = text.find(self.trigger, after)
        if self.hidden_begin and after == 0 and LIST_START.match(text):
            return 0
        return None if found < 0 else found

    def undecided(self, text: str) -> int:
        """How many characters at the end of `text` may still become an opening (held back from a stream)."""
        if self.hidden_begin and LIST_HEAD.startswith(re.sub(r"\s+", "", text)):
            return len(text)  # the answer may yet be a list of calls whose opening was a special token
        trigger = self.trigger
        return next((k for k in range(min(len(trigger) - 1, len(text)), 0, -1) if trigger.startswith(text[-k:])), 0)

    def takes(self, tools: Sequence) -> bool:
        """Whether calls of these tools can be generated in this form (else the generic format serves)."""
        return True

    def read(self, text: str, tools: Sequence = ()) -> tuple[str | None, list[tuple[str, str]]]:
        """(content, [(name, arguments JSON)]): the calls found in the answer, the rest as content.
        A call that does not parse (an answer cut by its budget) stays in the content."""
        if self.listed:
            return self._read_list(text, {tool.name for tool in tools})
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
            calls.append((name, _arguments_json(arguments)))
        if not calls:
            return text, []
        return ("".join(kept) + text[at:]).strip() or None, calls

    def _read_list(self, text: str, names: set[str]) -> tuple[str | None, list[tuple[str, str]]]:
        """The first list of calls in the answer: after its opening, or opening the answer (hidden_begin).
        Every item must be a call of one of `names` (when given), with its arguments."""
        starts = [(m.start(), m.end()) for m in re.finditer(re.escape(self.begin.strip()) + r"\s*(?=\[)", text)]
        if self.hidden_begin and (bare := re.match(r"\s*(?=\[)", text)):
            starts.insert(0, (0, bare.end()))
        for start, body in starts:
            try:
                items, stop = json.JSONDecoder().raw_decode(text, body)
            except ValueError:
                continue
            if not isinstance(items, list) or not items or not all(self._is_call(c, names) for c in items):
                continue
            if self.end.strip() and text[stop:].lstrip().startswith(self.end.strip()):
                stop = len(text) - len(text[stop:].lstrip()) + len(self.end.strip())
            calls = [(c["name"], _arguments_json(c[self.args_key])) for c in items]
            return (text[:start] + text[stop:]).strip() or None, calls
        return text, []

    def _is_call(self, item: Any, names: set[str]) -> bool:
        return (isinstance(item, dict) and isinstance(item.get("name"), str) and (not names or item["name"] in names)
                and isinstance(item.get(self.args_key), dict))

    def call_id(self, given: str) -> str:
        """A call's id as the template takes it: OpenAI's as they are, or (Mistral) 9 letters and digits,
        the same for the same id on every request (so a conversation's prompt does not change)."""
        if not self.id_length or re.fullmatch(f"[A-Za-z0-9]{{{self.id_length}}}", given or ""):
            return given
        number = int.from_bytes(hashlib.sha256((given or "").encode()).digest()[:8], "big")
        return "".join(ALPHANUMERIC[(number // 62**i) % 62] for i in range(self.id_length))

    def new_id(self) -> str | None:
        """An id for a generated call in the template's form (None: OpenAI's usual `call_...`)."""
        return "".join(secrets.choice(ALPHANUMERIC) for _ in range(self.id_length)) if self.id_length else None


ALPHANUMERIC = string.ascii_letters + string.digits
LIST_HEAD = '[{"name"'  # how a list of calls begins
LIST_START = re.compile(r'\s*\[\s*\{\s*"name"')


def _arguments_json(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
