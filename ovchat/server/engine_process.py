"""The server's engine process: OpenVINO GenAI's continuous batching, stepped in a loop.

It runs in its own process because `ContinuousBatchingPipeline.step()` holds Python's GIL for the
whole step: in the server's process it would freeze the event loop (accepts, 503s, disconnects)
for tens of milliseconds at a time. Here it owns the GIL, and a crash cannot take the HTTP side
down with it.

Protocol over two one-way pipes (tuples, pickled by multiprocessing):
  server → engine  ("add", rid, token_ids, SamplingParams)  ("cancel", rid)  ("close",)
  engine → server  ("ready", info)  ("fatal", message)
                   ("step", [(rid, new_token_ids, finish, logprobs), ...])
finish: None while running, then "stop" | "length" | "cancelled" | "error:<message>"
        | "error:schema:<message>" (the request's JSON schema broke the grammar compiler).
logprobs: None unless the request asked; then one per new token: GenAI's log-probability of it, or
          with alternatives asked for, (log-prob, [(token id, log-prob), ...]) from scorer.py.
"""

from __future__ import annotations

import re
import signal
import sys
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from ..sampling import SamplingParams, generation_config
from .scorer import ScoreModel, Scorer


def _pipeline(path: str, device: str, properties: dict, scheduler: dict):
    import openvino_genai as ov_genai

    sched = ov_genai.SchedulerConfig()
    for key, value in scheduler.items():
        setattr(sched, key, value)
    return ov_genai.ContinuousBatchingPipeline(path, sched, device, properties)


def main(
    inbox: Connection,
    outbox: Connection,
    path: str,
    device: str,
    properties: dict,
    scheduler: dict,
    stop_ids: list[int],
) -> None:
    # The server decides when to stop (it finishes in-flight requests first); a Ctrl-C or SIGTERM sent
    # to the whole process group must not kill generation under it. EOF on the pipe ends us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        pipe = _pipeline(path, device, properties, scheduler)
        _warm_up(pipe)
    except Exception as exc:  # noqa: BLE001 (reported to the server, which exits with it)
        outbox.send(("fatal", f"OpenVINO could not load the model on {device}: {_line(exc)}"))
        return
    outbox.send(("ready", {}))
    try:
        rebuild = lambda: _pipeline(path, device, properties, scheduler)  # noqa: E731
        _loop(inbox, outbox, _Engine(pipe, rebuild, stop_ids, ScoreModel(path, device, properties)))
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass


WARM_UP_ID = 2**62  # far from the server's request ids, which count up from 1


def _warm_up(pipe) -> None:
    """A process's first inference pays a one-time preparation (~0.7 s on a small CPU): pay it here,
    before /health says ready, not in the first user's time to first token."""
    import openvino_genai as ov_genai

    config = ov_genai.GenerationConfig(max_new_tokens=2)
    config.ignore_eos = True
    handle = pipe.add_request(WARM_UP_ID, pipe.get_tokenizer().encode("hello " * 16).input_ids, config)
    while handle.get_status() == ov_genai.GenerationStatus.RUNNING:
        pipe.step()


def _line(exc: BaseException) -> str:
    """One line for the log: OpenVINO's messages end with their point; build paths are cut off."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    line = lines[-1] if lines else type(exc).__name__
    return re.sub(r"^\[[\d:]+\]\s*|\S*[/\\]\S*:\d+:\s*", "", line)[-300:]


@dataclass
class _Request:
    handle: object
    ids: list[int]  # the prompt
    sampling: SamplingParams
    generated: list[int] = field(default_factory=list)
    cancelled: bool = False
    scorer: Scorer | None = None  # top_logprobs: the second pass


class _Engine:
    """The pipeline and the requests in it. A step that throws (a grammar the compiler rejects is the
    known cause) leaves the pipeline unusable: the requests added with a schema since the last good
    step fail, the pipeline is rebuilt, and the others resume where they were."""

    def __init__(self, pipe, rebuild, stop_ids: list[int], score_model: ScoreModel | None = None):
        import openvino_genai as ov_genai

        self.pipe, self.rebuild, self.stop_ids, self.score_model = pipe, rebuild, stop_ids, score_model
        self.requests: dict[int, _Request] = {}
        self.fresh: set[int] = set()  # added since the last good step
        self.running = ov_genai.GenerationStatus.RUNNING
        self.finished = ov_genai.GenerationStatus.FINISHED
        self.reasons = {ov_genai.GenerationFinishReason.STOP: "stop", ov_genai.GenerationFinishReason.LENGTH: "length"}

    def add(
        self,
        rid: int,
        ids: list[int],
        sampling: SamplingParams,
        generated: list[int] | None = None,
        scorer: Scorer | None = None,
    ) -> str | None:
        """Put a request in the pipeline (resuming after `generated`); an error finish if it cannot be."""
        import numpy as np
        import openvino as ov

        generated = generated or []
        left = sampling.max_new_tokens - len(generated)
        if left <= 0:
            return "length"
        if sampling.top_logprobs and scorer is None:
            try:
                scorer = self.score_model.start(ids, sampling.top_logprobs)
            except Exception as exc:  # noqa: BLE001
                _log(f"request {rid}: no second pass for top_logprobs: {_line(exc)}")
                return f"error:top_logprobs are not available for this model ({_line(exc)})"
        try:
            tensor = ov.Tensor(np.asarray([ids + generated], dtype=np.int64))
            config = generation_config(sampling, self.stop_ids, max_new_tokens=left)
            handle = self.pipe.add_request(rid, tensor, config)
        except Exception as exc:  # noqa: BLE001 (a request the pipeline refuses fails alone)
            _log(f"request {rid} refused: {_line(exc)}")
            return "error:the engine refused this request"
        self.requests[rid] = _Request(handle, ids, sampling, generated, scorer=scorer)
        self.fresh.add(rid)
        return None

    def cancel(self, rid: int) -> None:
        request = self.requests.get(rid)
        if request is not None and not request.cancelled:
            request.handle.cancel()
            request.cancelled = True

    def step(self) -> list[tuple]:
        try:
            self.pipe.step()
        except Exception as exc:  # noqa: BLE001
            return self._recover(exc)
        self.fresh.clear()
        updates = []
        for rid, request in list(self.requests.items()):
            handle, new, finish = request.handle, [], None
            logprobs: list | None = [] if request.sampling.logprobs and request.scorer is None else None
            if handle.can_read():
                for output in handle.read().values():  # one sequence per request (n=1)
                    new += list(output.generated_ids)
                    if logprobs is not None:  # GenAI's own, when no second pass gives them
                        logprobs += list(output.generated_log_probs)
                    finish = self.reasons.get(output.finish_reason, finish)
            status = handle.get_status()
            if status != self.running:
                if request.cancelled:
                    finish = "cancelled"
                elif status != self.finished:  # IGNORED: the prompt cannot fit the KV cache at all
                    finish = "error:the prompt does not fit the KV cache; raise --kv-cache-gb"
                finish = finish or "stop"
            request.generated += new
            if request.scorer is not None:
                logprobs = request.scorer.push(new)
            if new or finish:
                updates.append((rid, new, finish, logprobs))
            if finish:
                del self.requests[rid]
        return updates

    def _recover(self, exc: Exception) -> list[tuple]:
        problem = _line(exc)
        _log(f"a step failed, rebuilding the pipeline: {problem}")
        suspects = {rid for rid in self.fresh if self.requests[rid].sampling.constrained}
        updates = []
        for rid in suspects or set(self.requests):
            finish = f"error:schema:{problem}" if suspects else "error:the engine failed"
            updates.append((rid, [], finish, None))
            del self.requests[rid]
        survivors, self.requests, self.fresh = self.requests, {}, set()
        del self.pipe
        self.pipe = self.rebuild()
        for rid, request in survivors.items():
            if request.cancelled:
                updates.append((rid, [], "cancelled", None))
            elif request.sampling.constrained and request.generated:
                # Resumed, its grammar would start again mid-answer: the JSON would not parse.
                updates.append((rid, [], "error:the engine restarted in the middle of this answer; retry it", None))
            elif finish := self.add(rid, request.ids, request.sampling, request.generated, request.scorer):
                updates.append((rid, [], finish, None))
        return updates


def _log(message: str) -> None:
    print(f"ovchat engine: {message}", file=sys.stderr, flush=True)


def _loop(inbox: Connection, outbox: Connection, engine: _Engine) -> None:
    while True:
        # Take every waiting message; block only when there is nothing to step.
        while inbox.poll(0 if engine.requests else None):
            message = inbox.recv()
            if message[0] == "close":
                return
            if message[0] == "cancel":
                engine.cancel(message[1])
            elif finish := engine.add(*message[1:]):
                outbox.send(("step", [(message[1], [], finish, None)]))
        if engine.requests:
            updates = engine.step()
            if updates:
                outbox.send(("step", updates))
