"""Token ids to text as they arrive: whole characters only, and stop strings cut exactly."""

from __future__ import annotations

from collections.abc import Sequence


class IncrementalDecoder:
    """Decodes a growing list of ids into text deltas, decoding about one short window per token.

    The window begins a few tokens back, so tokenizers that drop a leading space at the start of a
    decode (SentencePiece) still produce it mid-answer; text is held back while it ends in a partial
    UTF-8 character.
    """

    WINDOW = 32  # tokens decoded at most per push (plus what arrived)

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.start = 0  # window start
        self.shown = ""  # the text of the window already emitted

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True) if ids else ""

    def push(self, ids: Sequence[int]) -> str:
        self.ids.extend(ids)
        text = self._decode(self.ids[self.start :])
        if text.endswith("\ufffd") or not text.startswith(self.shown):
            return ""  # half a character so far (or the window's start still settling): wait
        delta, self.shown = text[len(self.shown) :], text
        if len(self.ids) - self.start > self.WINDOW:  # slide: keep a few tokens of left context
            self.start = len(self.ids) - 4
            self.shown = self._decode(self.ids[self.start :])
        return delta

    def flush(self) -> str:
        """What is still held back at the end (a character the budget cut in half is dropped)."""
        text = self._decode(self.ids[self.start :]).rstrip("\ufffd")
        return text[len(self.shown) :] if text.startswith(self.shown) else ""


class StopMatcher:
    """Cuts text at the first stop string, holding back any tail that could still become one."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.pending = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """The text that is safe to emit now; after a stop string, nothing more."""
        if self.stopped or not self.stops:
            return "" if self.stopped else text
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            out, self.pending = self.pending[: min(hits)], ""
            return out
        cut = max(len(self.pending) - self.hold, 0)
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return "" if self.stopped else out
