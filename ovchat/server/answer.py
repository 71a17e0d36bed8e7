"""One request's answer as it comes out of the engine: token batches to text pieces, with stop strings
cut exactly, the loop guard, and each token's log-probabilities when the request asked."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from fastapi import Request

from ..sampling import LoopGuard, StopMatcher
from ..tools import ToolPlan
from .batching import BatchEngine, Job
from .detok import IncrementalDecoder
from .protocol import ApiError

log = logging.getLogger("ovchat.server")


@dataclass
class Piece:
    text: str
    finish: str | None = None  # set on the last piece
    logprobs: list = field(default_factory=list)  # (token id, log-probs) of the tokens behind this piece


class Answer:
    """Turns one job's token batches into text pieces: stop strings cut here, exactly, and the loop
    guard ends an answer that repeats itself."""

    def __init__(
        self,
        batch: BatchEngine,
        job: Job,
        tokenizer,
        on_loop: Callable[[], None] = lambda: None,
        hidden: Collection[int] = (),
    ):
        self.batch, self.job, self.on_loop = batch, job, on_loop
        self.hidden = hidden  # token ids that are not part of the text (the end of a turn): no log-probs shown
        self.decoder, self.matcher = IncrementalDecoder(tokenizer), StopMatcher(job.sampling.stop)
        self.guard = LoopGuard() if job.sampling.guards_loops else None
        self.done = False
        self.looped = False  # the loop guard ended the answer
        self.tokens = 0  # tokens behind the text so far (after a stop string, no more are counted)

    async def next(self, timeout: float | None = None) -> Piece | None:
        """The next piece, or None when `timeout` passes first. Raises GenerationFailed."""
        try:
            update = await asyncio.wait_for(self.job.queue.get(), timeout)
        except asyncio.TimeoutError:
            return None
        text = self.matcher.push(self.decoder.push(update.tokens)) if update.tokens else ""
        self.tokens += len(update.tokens)
        finish = update.finish
        if finish and finish.startswith("error:"):
            self.done = True
            raise GenerationFailed(finish.removeprefix("error:"))
        logprobs = update.logprobs or ()
        scored = [(t, v) for t, v in zip(update.tokens, logprobs, strict=bool(logprobs)) if t not in self.hidden]
        looped = not self.matcher.stopped and self.guard is not None and self.guard.push(update.tokens)
        if self.matcher.stopped or looped:  # a stop string or a loop: we end the answer here and stop the engine
            if not finish:
                self.batch.cancel(self.job, why="stop string" if self.matcher.stopped else "loop")
            if looped:  # the text held back so far is part of the answer (a stop string's is not)
                text += self.matcher.push(self.decoder.flush()) + self.matcher.flush()
                self.looped = True
                self.on_loop()
            self.done = True
            return Piece(text, "stop", scored)
        if finish:
            self.done = True
            text += self.matcher.push(self.decoder.flush())
            text += self.matcher.flush()
            return Piece(text, "length" if finish == "length" else "stop", scored)
        return Piece(text, None, scored)

    def close(self) -> None:
        """The client is gone (or we are): stop generating for it."""
        if not self.done:
            self.done = True
            self.batch.cancel(self.job, why="client")


class GenerationFailed(Exception):
    """The engine could not finish this answer. Its message is safe to show (no paths, no internals)."""

    def error(self, schema_param: str = "response_format") -> ApiError:
        message = str(self)
        if message.startswith("schema:"):  # this request's own JSON schema: the client's to fix
            return ApiError(
                400,
                f"the grammar compiler rejected this JSON schema ({message[7:]})",
                schema_param,
                "invalid_json_schema",
            )
        return ApiError(500, f"generation failed: {message}", kind="server_error", code="generation_failed")


@dataclass
class Event:
    """What a streamed answer does next, in no dialect's words."""

    text: str = ""
    logprobs: list = field(default_factory=list)
    finish: str | None = None
    calls: list = field(default_factory=list)
    waiting: bool = False


async def collect(request: Request, answer: Answer, plan: ToolPlan) -> tuple[str, str, list]:
    """The whole answer, for a client that did not ask for a stream (its leaving still stops the job)."""

    async def client_gone():
        while (await request.receive())["type"] != "http.disconnect":
            pass
        answer.close()

    watcher = asyncio.create_task(client_gone())
    parts, scored = [], []
    try:
        while True:
            piece = await answer.next()
            parts.append(piece.text)
            scored += piece.logprobs
            if piece.finish:
                return "".join(parts), piece.finish, scored
    except GenerationFailed as exc:
        log.warning("generation failed: %s", exc)
        raise exc.error(schema_param(plan)) from None
    finally:
        watcher.cancel()
        answer.close()


def schema_param(plan: ToolPlan) -> str:
    """The request field whose schema the grammar compiler would have rejected."""
    return "tools" if plan.active else "response_format"
