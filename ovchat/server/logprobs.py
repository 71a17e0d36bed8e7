"""Log-probabilities in OpenAI's shapes: each token's text and UTF-8 bytes, and the chat and the legacy
completions forms.

A token's bytes come from the export's tokenizer.json: byte-level BPE vocabularies (GPT-2's, SmolLM2's,
Qwen's) spell bytes as printable characters; SentencePiece ones (Llama's, Phi-3's) write a space as
"▁" and a lone byte as "<0xNN>". A token that is part of a character has no text of its own: its
`token` is "bytes:" and the bytes escaped, as vLLM writes it; its `bytes` are exact.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

SPACE_PIECE = "\u2581"  # SentencePiece's "▁"
BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@functools.cache
def _byte_level_table() -> dict[str, int]:
    """GPT-2's printable stand-in for each byte, reversed (character → byte)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


def _style(decoder: dict | None) -> str:
    """"byte-level", "sentencepiece" or "" (unknown: decode each token instead)."""
    if not decoder:
        return ""
    kinds = {d.get("type") for d in decoder.get("decoders", [decoder])}
    if "ByteLevel" in kinds:
        return "byte-level"
    if kinds & {"ByteFallback", "Metaspace", "Replace"}:
        return "sentencepiece"
    return ""


class TokenText:
    """Token id → (text, UTF-8 bytes), for a served model's folder."""

    def __init__(self, folder: Path, tokenizer):
        self.tokenizer = tokenizer
        self.pieces: dict[int, str] = {}
        self.special: set[int] = set()
        self.style = ""
        try:
            spec = json.loads((Path(folder) / "tokenizer.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return  # no tokenizer.json: each token is decoded on its own
        vocab = (spec.get("model") or {}).get("vocab")
        if isinstance(vocab, dict):
            self.pieces = {i: piece for piece, i in vocab.items()}
            self.style = _style(spec.get("decoder"))
        for added in spec.get("added_tokens") or []:
            self.pieces[added["id"]] = added["content"]
            self.special.add(added["id"])

    @functools.lru_cache(maxsize=65536)  # noqa: B019 (one table per server, alive as long as it)
    def __call__(self, token: int) -> tuple[str, list[int]]:
        raw = self._bytes(token)
        try:
            return raw.decode("utf-8"), list(raw)
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw), list(raw)

    def _bytes(self, token: int) -> bytes:
        piece = self.pieces.get(token)
        if piece is None or not self.style or token in self.special:
            if piece is not None:
                return piece.encode("utf-8")
            return self.tokenizer.decode([token], skip_special_tokens=False).encode("utf-8")
        if self.style == "byte-level":
            table = _byte_level_table()
            if all(ch in table for ch in piece):
                return bytes(table[ch] for ch in piece)
            return piece.encode("utf-8")
        if match := BYTE_PIECE.fullmatch(piece):
            return bytes([int(match.group(1), 16)])
        return piece.replace(SPACE_PIECE, " ").encode("utf-8")


def _values(value) -> tuple[float, list[tuple[int, float]]]:
    """The engine's per-token value: a float (GenAI's, no alternatives) or (log-prob, alternatives)."""
    return (float(value), []) if isinstance(value, (int, float)) else (float(value[0]), list(value[1]))


def chat_entries(scored: list, text_of: TokenText) -> list[dict]:
    """Chat's `logprobs.content` items for [(token id, value), ...]."""
    entries = []
    for token, value in scored:
        logprob, alternatives = _values(value)
        entries.append({**_token(token, logprob, text_of), "top_logprobs": [
            _token(other, lp, text_of) for other, lp in alternatives]})
    return entries


def _token(token: int, logprob: float, text_of: TokenText) -> dict:
    text, raw = text_of(token)
    return {"token": text, "logprob": logprob, "bytes": raw}


def completion_logprobs(scored: list, text_of: TokenText, offset: int) -> tuple[dict, int]:
    """The legacy completions' `logprobs` object for [(token id, value), ...] whose text starts at
    `offset` characters into the answer, and the offset after them."""
    tokens, values, alternatives, offsets = [], [], [], []
    for token, value in scored:
        logprob, others = _values(value)
        text = text_of(token)[0]
        tokens.append(text)
        values.append(logprob)
        alternatives.append({text_of(other)[0]: lp for other, lp in others})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": alternatives, "text_offset": offsets}, offset
