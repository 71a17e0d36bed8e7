"""Token ids to text as they arrive: whole characters only (stop strings: ovchat.sampling.StopMatcher)."""

from __future__ import annotations

from collections.abc import Sequence


class IncrementalDecoder:
    """Decodes a growing list of ids into text deltas, decoding about one short window per token.

    The window begins a few tokens back, so tokenizers that drop a leading space at the start of a
    decode (SentencePiece) still produce it mid-answer; text is held back while it ends in a partial
    UTF-8 character.
    """

    WINDOW = 32  # tokens decoded at most per push (plus what arrived)
    CONTEXT = 4  # tokens kept left of a slid window: enough for a leading space or a multi-token character

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
            self.start = len(self.ids) - self.CONTEXT
            self.shown = self._decode(self.ids[self.start :])
        return delta

    def flush(self) -> str:
        """What is still held back at the end (a character the budget cut in half is dropped)."""
        text = self._decode(self.ids[self.start :]).rstrip("\ufffd")
        return text[len(self.shown) :] if text.startswith(self.shown) else ""
