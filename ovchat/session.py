"""A conversation with a model: history, the context-window policy, stats, and transcripts on disk.

The REPL (chat.py) is a thin shell over this; so could a UI be. The model's KV cache is reused
between turns because each turn sends the same conversation plus one message (see model.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .config import format_ms
from .errors import OvchatError, describe
from .model import GenerationResponse, Model
from .runtime import Message
from .sampling import SamplingParams

ROLES = ("system", "user", "assistant")


@dataclass
class TurnStats:
    """What the last answer cost: the numbers `/stats` and `--verbose` show."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    cached_tokens: int = 0
    time_to_first_token: float | None = None
    tokens_per_second: float | None = None
    dropped_turns: int = 0
    cut: bool = False
    stopped_loop: bool = False  # the loop guard ended the answer

    def line(self) -> str:
        rate = f"{self.tokens_per_second:.1f} tok/s" if self.tokens_per_second else "n/a"
        return (
            f"prompt {self.prompt_tokens} tokens ({self.cached_tokens} cached, "
            f"{self.prompt_tokens - self.cached_tokens} new), answer {self.new_tokens} tokens, "
            f"first token {format_ms(self.time_to_first_token)}, {rate}" + (", cut" if self.cut else "")
        )


@dataclass
class ChatSession:
    """A multi-turn conversation. `send` streams the answer and keeps both sides in the history."""

    model: Model
    system: str | None = None
    sampling: SamplingParams | None = None  # None: the model's chat sampling (Model.chat_sampling)
    messages: list[Message] = field(default_factory=list)  # user/assistant turns, oldest first
    stats: TurnStats | None = None

    def __post_init__(self) -> None:
        if self.sampling is None:
            self.sampling = self.model.chat_sampling

    def _head(self) -> list[Message]:
        return [{"role": "system", "content": self.system}] if self.system else []

    def conversation(self) -> list[Message]:
        """What the model sees: the system prompt and the turns (without ovchat's marks)."""
        return self._head() + [{"role": m["role"], "content": m["content"]} for m in self.messages]

    def reset(self) -> None:
        """Forget the conversation; keep the system prompt."""
        self.messages.clear()
        self.stats = None

    def _answer_reserve(self) -> int:
        # Room kept for the answer when fitting the history; a huge max_new_tokens on a small context
        # would otherwise leave no room for any history at all.
        return min(self.sampling.max_new_tokens, self.model.context_length // 2)

    def _fit(self, message: Message) -> tuple[list[Message], int]:
        """The turns to keep so that history + message + answer fit, and how many were dropped.

        The oldest whole turns go first, never the system prompt. Once dropping is needed, a quarter
        of the window more is freed, so the next turns fit without dropping again (each drop changes
        the start of the conversation and so costs one full re-read). Nothing is dropped when the
        message cannot fit even alone: the error loses nothing.
        """
        limit = self.model.context_length
        target = limit - self._answer_reserve()
        kept, dropped = list(self.messages), 0
        while True:
            conversation = self._head() + kept + [message]
            tokens = self.model.count_tokens(self.model.render(conversation), add_special_tokens=False)
            if tokens <= target or not kept:
                break
            # A turn is a user message and the answers that follow it.
            cut = next((i for i, m in enumerate(kept) if i > 0 and m["role"] == "user"), len(kept))
            kept, dropped = kept[cut:], dropped + 1
            target = limit - self._answer_reserve() - limit // 4
        if tokens >= limit:
            what = "this message with the system prompt" if self.system else "this message"
            raise OvchatError(f"{what} is {tokens} tokens; the context holds {limit}: shorten it")
        return kept, dropped

    def send(self, text: str) -> Iterator[GenerationResponse]:
        """Fit the context now (raising if the message cannot fit), then stream the answer.

        `stats.dropped_turns` says at once how many old turns make room. Closing the stream early
        keeps the partial answer in the history, marked as cut.
        """
        message = {"role": "user", "content": text}
        kept, dropped = self._fit(message)
        self.stats = TurnStats(dropped_turns=dropped, cut=True)
        return self._stream(kept, message, self.stats)

    def _stream(self, kept: list[Message], message: Message, stats: TurnStats) -> Iterator[GenerationResponse]:
        previous, self.messages = self.messages, kept + [message]
        pieces: list[str] = []
        stream = self.model.stream_generate(self.conversation(), sampling=self.sampling)
        try:
            for chunk in stream:
                pieces.append(chunk.text)
                stats.prompt_tokens, stats.cached_tokens = chunk.prompt_tokens, chunk.cached_tokens
                stats.new_tokens = chunk.token_count
                if chunk.finish_reason:
                    stats.cut = False
                    stats.time_to_first_token = chunk.time_to_first_token
                    stats.tokens_per_second = chunk.tokens_per_second
                    stats.stopped_loop = chunk.stopped_loop
                yield chunk
        except OvchatError:
            self.messages = previous  # the model never answered: the history stays as it was
            raise
        finally:
            stream.close()  # stops generation now, not whenever the garbage collector runs
            if self.messages and self.messages[-1] is message:
                answer = {"role": "assistant", "content": "".join(pieces)}
                if stats.cut:
                    answer["cut"] = True
                self.messages.append(answer)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the transcript as a JSON list of messages (system prompt first)."""
        path = Path(path).expanduser()
        transcript = self._head() + [dict(m) for m in self.messages]  # cut answers keep their "cut" mark
        partial = path.with_name(f".{path.name}.part")
        try:
            partial.write_text(json.dumps(transcript, indent=2, ensure_ascii=False) + "\n")
            partial.replace(path)
        except OSError as exc:
            raise OvchatError(f"cannot write {path}: {describe(exc)}") from None
        return path

    def load(self, path: str | os.PathLike) -> int:
        """Continue a saved conversation (a JSON list of messages); returns how many were read."""
        path = Path(path).expanduser()
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise OvchatError(f"cannot read {path}: {describe(exc)}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise OvchatError(f"{path} is not a JSON transcript: {exc}") from None
        messages = data
        if not isinstance(messages, list):
            raise OvchatError(f"{path} must hold a JSON list of messages (as /save writes)")
        for i, m in enumerate(messages):
            if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
                raise OvchatError(f"{path}: message {i} needs a role ({', '.join(ROLES)}) and a string content")
        turns = [m["role"] for m in messages if m["role"] != "system"]
        if any(role != ("user", "assistant")[i % 2] for i, role in enumerate(turns)):
            raise OvchatError(f"{path}: after the system prompt, messages must alternate user, assistant, user, ...")
        systems = [m["content"] for m in messages if m["role"] == "system"]
        self.system = systems[-1] if systems else self.system
        self.messages = [dict(m) for m in messages if m["role"] != "system"]
        self.stats = None
        return len(messages)
