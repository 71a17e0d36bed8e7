"""Reading a tool-constrained answer as it streams: a reply's text is shown as it comes, calls are held
until the answer is complete (they are read whole). For the generic format the reply is decoded out of
its JSON string; for a template's own format (ovchat.tool_formats) the text streams until a call opens.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .tools import ToolCall, ToolPlan


class StreamReader:
    """Reads a tool-constrained answer as it streams: a reply's text is passed on as it is decoded
    from its JSON string (generic format) or as it comes until a call opens (a template's format);
    calls are held until the answer is complete (they are read whole)."""

    PREFIX_CHARS = 64  # whitespace the grammar may allow before the first key, and the key itself

    def __init__(self, plan: ToolPlan):
        self.plan = plan
        self.raw = ""
        self.mode: str | None = None if plan.active else "text"  # "reply", "calls", "text" or "native"
        if plan.active and plan.format is not None:
            self.mode = "text" if plan.choice == "none" else "native"
        self.sent = 0  # decoded reply characters passed on
        self.start = 0  # where the reply's string starts in raw

    def push(self, text: str) -> str:
        """More of the answer; returns reply text that can be shown now."""
        if self.mode == "text":
            return text
        self.raw += text
        if self.mode == "native":
            return self._native()
        if self.mode is None:
            self._decide()
        if self.mode != "reply":
            return ""  # calls (read whole at the end)
        decoded = _string_prefix(self.raw[self.start :])
        fresh = decoded[self.sent :]
        self.sent = len(decoded)
        return fresh

    def finish(self) -> tuple[str, list[ToolCall]]:
        """At the answer's end: the text not shown yet (an answer held back that is not a call) and the calls."""
        if self.mode in ("text", "reply"):
            return "", []
        if self.mode in ("native", "native calls"):  # what was shown never holds a call
            content, calls = self.plan.read(self.raw[self.sent :])
            return content or "", calls
        content, calls = self.plan.read(self.raw)
        return content or "", calls

    def _native(self) -> str:
        """Text up to where the calls open (or may be opening: a partial opening is held back)."""
        found = self.plan.format.opening(self.raw, self.sent)
        if found is not None:
            self.mode = "native calls"
            fresh, self.sent = self.raw[self.sent : found], found
            return fresh
        end = max(self.sent, len(self.raw) - self.plan.format.undecided(self.raw))
        fresh, self.sent = self.raw[self.sent : end], end
        return fresh

    def _decide(self) -> None:
        stripped = self.raw.lstrip()
        if not stripped.startswith("{"):
            if stripped:
                self.mode = "calls"  # not the generic form: read whole at the end
            return
        body = stripped[1:].lstrip()
        for key, mode in (('"tool_calls"', "calls"), ('"response"', "reply")):
            if body.startswith(key):
                after = body[len(key) :].lstrip()
                if mode == "calls" or self.plan.reply_schema is not None:
                    self.mode = "calls"  # a structured reply is also read whole
                elif after.startswith(":") and after[1:].lstrip().startswith('"'):
                    self.mode = "reply"
                    self.start = len(self.raw) - len(after[1:].lstrip()) + 1
                return
            if not key.startswith(body[: len(key)]):
                continue
            return  # still a prefix of a key: wait for more
        if len(body) > self.PREFIX_CHARS:
            self.mode = "calls"


def _string_prefix(body: str) -> str:
    """The decoded text of the longest complete part of a JSON string's body (without its quotes),
    stopping at its closing quote, before an unfinished escape, and before half a surrogate pair."""
    end, i = 0, 0
    while i < len(body):
        char = body[i]
        if char == '"':
            break
        if char == "\\":
            width = 6 if body[i + 1 : i + 2] == "u" else 2
            if i + width > len(body):
                break
            i += width
        else:
            i += 1
        end = i
    try:
        text = json.loads('"' + body[:end] + '"')
    except json.JSONDecodeError:
        return ""
    if text and "\ud800" <= text[-1] <= "\udbff":
        text = text[:-1]
    return text
