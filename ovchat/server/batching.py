"""The server's side of the engine: admission, a bounded queue, and one token stream per request.

The engine itself runs in a child process (see engine_process.py). This side lives on the asyncio event
loop: `submit()` admits a request or refuses it at once, and each `Job` is an async stream of token
batches that a reader thread feeds from the engine's pipe.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import multiprocessing
import queue
import threading
import time
from dataclasses import dataclass, field

from ..errors import OvchatError
from ..sampling import SamplingParams
from . import engine_process


class Overloaded(Exception):
    """Every running slot and queue place is taken."""


class EngineUnavailable(Exception):
    """The engine is loading, stopping or broken."""


@dataclass
class Update:
    tokens: list[int]
    finish: str | None = None  # "stop" | "length" | "cancelled" | "error:<message>"
    logprobs: list | None = None  # one per token when asked (see engine_process.py)


@dataclass(eq=False)
class Job:
    """One request's life: waiting, then running in the engine, then finished."""

    rid: int
    ids: list[int]
    sampling: SamplingParams
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    submitted: float = field(default_factory=time.perf_counter)
    state: str = "waiting"  # waiting | running | done
    first_token: float | None = None
    last_token: float | None = None
    generated: int = 0
    cancel_reason: str | None = None  # "client" (it left) | "stop string" | "loop" (the answer is complete)


class BatchEngine:
    """Starts the engine process and shares it between requests: at most `max_running` in it at once,
    at most `max_waiting` more queued in arrival order; beyond that, `Overloaded` at once."""

    def __init__(
        self,
        path,
        device: str,
        properties: dict,
        scheduler: dict,
        stop_ids: list[int],
        max_running: int,
        max_waiting: int,
    ):
        self.max_running, self.max_waiting = max_running, max_waiting
        self.state = "loading"  # loading | ready | broken | closed
        self.closing = False  # draining for shutdown: /health says so, requests in flight go on
        self.problem = ""
        self.waiting: collections.deque[Job] = collections.deque()
        self.running: dict[int, Job] = {}
        self.observers: list = []  # called with each finished Job (metrics)
        self.last_progress = time.monotonic()
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        context = multiprocessing.get_context("spawn")  # no fork after threads and OpenVINO
        # One pipe each way: the reader and writer threads never share a connection.
        engine_in, self._to_engine = context.Pipe(duplex=False)
        self._from_engine, engine_out = context.Pipe(duplex=False)
        self._process = context.Process(
            target=engine_process.main,
            args=(engine_in, engine_out, str(path), device, properties, scheduler, stop_ids),
            name="ovchat-engine",
            daemon=True,
        )
        self._process.start()
        engine_in.close()
        engine_out.close()
        self._reader: threading.Thread | None = None
        # Sends go through a thread: a long prompt can fill the pipe while the engine is mid-step,
        # and the event loop must not wait for that.
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write, name="ovchat-engine-writer", daemon=True)
        self._writer.start()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start delivering engine messages on `loop` (call from the loop, once)."""
        self._loop = loop
        self._reader = threading.Thread(target=self._read, name="ovchat-engine-reader", daemon=True)
        self._reader.start()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the model is loaded; OvchatError if it could not be."""
        if not self._ready.wait(timeout):
            raise OvchatError("the engine did not start in time")
        if self.state != "ready":
            raise OvchatError(self.problem)

    # -- the reader thread ------------------------------------------------------------------------
    def _read(self) -> None:
        while True:
            try:
                message = self._from_engine.recv()
            except (EOFError, OSError):
                message = ("fatal", "the engine process ended")
            try:
                self._loop.call_soon_threadsafe(self._dispatch, message)
            except RuntimeError:  # the event loop is gone: the server has stopped
                return
            if message[0] == "fatal":
                return

    def _write(self) -> None:
        while True:
            message = self._outbox.get()
            try:
                self._to_engine.send(message)
            except OSError:  # the engine is gone; the reader reports it
                return
            if message[0] == "close":
                return

    # -- on the event loop ------------------------------------------------------------------------
    def _dispatch(self, message: tuple) -> None:
        kind = message[0]
        if kind == "ready":
            self.state = "ready"
            self._ready.set()
        elif kind == "step":
            now = time.perf_counter()
            self.last_progress = time.monotonic()
            for rid, tokens, finish, logprobs in message[1]:
                job = self.running.get(rid)
                if job is not None:
                    self._deliver(job, Update(tokens, finish, logprobs), now)
        elif kind == "fatal":
            if self.state != "closed":
                self.state, self.problem = "broken", message[1]
            self._ready.set()
            doomed = [*self.waiting, *self.running.values()]
            self.waiting.clear()
            for job in doomed:
                self._finish(job, Update([], f"error:{message[1]}"))

    def _deliver(self, job: Job, update: Update, now: float) -> None:
        if update.tokens:
            job.first_token = job.first_token or now
            job.last_token = now
            job.generated += len(update.tokens)
        if update.finish:
            self._finish(job, update)
        else:
            job.queue.put_nowait(update)

    def _finish(self, job: Job, update: Update) -> None:
        if job.state == "done":
            return
        job.state = "done"
        self.running.pop(job.rid, None)
        job.queue.put_nowait(update)
        for observe in self.observers:
            observe(job, update.finish)
        self._admit()

    def _admit(self) -> None:
        while self.waiting and len(self.running) < self.max_running and self.state == "ready":
            job = self.waiting.popleft()
            self._start(job)

    def _start(self, job: Job) -> None:
        if not self.running:
            self.last_progress = time.monotonic()  # an idle engine is not a stalled one
        job.state = "running"
        self.running[job.rid] = job
        self._outbox.put(("add", job.rid, job.ids, job.sampling))

    def submit(self, ids: list[int], sampling: SamplingParams) -> Job:
        """Admit a request (running at once or queued), or raise Overloaded / EngineUnavailable."""
        if self.state != "ready":
            raise EngineUnavailable(self.state)
        job = Job(next(self._ids), ids, sampling)
        if len(self.running) < self.max_running and not self.waiting:
            self._start(job)
        elif len(self.waiting) < self.max_waiting:
            self.waiting.append(job)
        else:
            raise Overloaded
        return job

    def cancel(self, job: Job, why: str = "client") -> None:
        """Stop a job: a queued one leaves the queue, a running one stops at the engine's next step."""
        job.cancel_reason = job.cancel_reason or why
        if job.state == "waiting":
            self.waiting.remove(job)
            self._finish(job, Update([], "cancelled"))
        elif job.state == "running":
            self._outbox.put(("cancel", job.rid))

    def close(self, timeout: float = 10) -> None:
        if self.state != "broken":
            self.state = "closed"
        self._outbox.put(("close",))
        self._writer.join(timeout)
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._to_engine.close()
        self._from_engine.close()
