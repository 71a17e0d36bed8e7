"""The chat models a server can answer for, loaded on demand: each a `Serving` over its own engine
process, at most `max_loaded` at once and within a memory budget, the least recently used idle one
unloaded when room is needed or after its keep-alive, and a dead engine restarted with backoff while
the other models go on serving. A model is never unloaded under a running or queued request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from .api_error import ApiError
from .metrics import Metrics
from .served import Served
from .serving import Serving
from .settings import Settings

log = logging.getLogger("ovchat.server")
GB = 1e9
MAX_BACKOFF = 60.0  # seconds between restarts of an engine that keeps dying, at most
LOAD_TIMEOUT = 900.0  # seconds an engine may take to load before it counts as failed


@dataclass
class Entry:
    """One servable model and, while loaded, its engine."""

    name: str
    path: Path
    info: dict | None = None
    pinned: bool = False  # loaded at start and kept (the first --model), unless a request says otherwise
    keep_alive: float | None = None  # seconds idle before unloading; None: the server's; < 0: forever
    served: Served | None = None
    batch: object | None = None
    serving: Serving | None = None
    state: str = "unloaded"  # unloaded | loading | ready | restarting | failed
    problem: str = ""
    restarts: int = 0
    retry_at: float = 0.0  # a restarting engine's next try (monotonic)
    last_used: float = field(default_factory=time.monotonic)
    leases: int = 0  # requests between choosing this model and their job reaching the engine
    need_bytes: int = 0

    def idle(self) -> bool:
        batch = self.batch
        return self.leases == 0 and (batch is None or not (batch.running or batch.waiting))


class Maker:
    """How a registry starts an engine for an entry, and what one will hold in memory (the server's:
    lifecycle.EngineMaker; tests give a scripted one)."""

    def need_bytes(self, entry: Entry) -> int:  # pragma: no cover - an interface
        raise NotImplementedError

    def start(self, entry: Entry):  # pragma: no cover
        raise NotImplementedError

    def served(self, entry: Entry) -> Served:  # pragma: no cover
        raise NotImplementedError


class Registry:
    def __init__(
        self,
        entries: list[Entry],
        settings: Settings,
        metrics: Metrics,
        maker: Maker | None,
        *,
        budget_bytes: float = float("inf"),
        max_loaded: int = 1,
        keep_alive: float | None = 300.0,
    ):
        self.entries, self.settings, self.metrics, self.maker = entries, settings, metrics, maker
        self.budget, self.max_loaded, self.keep_alive = budget_bytes, max_loaded, keep_alive
        self.default = entries[0]
        self.loop: asyncio.AbstractEventLoop | None = None
        self._loading = asyncio.Lock()
        self.observers: list[Callable] = []  # given each finished job, for every engine (metrics)
        loaded = self.loaded
        metrics.gauges.update({
            "ovchat_requests_running": ("Requests generating in the engines.",
                                        lambda: sum(len(e.batch.running) for e in loaded())),
            "ovchat_queue_depth": ("Requests waiting for a slot.", lambda: sum(len(e.batch.waiting) for e in loaded())),
            "ovchat_models_loaded": ("Chat models loaded now.", lambda: len(loaded())),
        })
        metrics.per_model["ovchat_engine_restarts_total"] = (
            "Times a model's engine ended and was restarted.", "counter", lambda: {e.name: e.restarts for e in entries})

    # -- finding -------------------------------------------------------------------------------------
    def find(self, name: str | None) -> Entry:
        if name is None:
            return self.default
        for entry in self.entries:
            if name in (entry.name, entry.path.name):
                return entry
        shown = name if len(name) <= 80 else name[:80] + "…"
        names = ", ".join(repr(e.name) for e in self.entries)
        raise ApiError(404, f"the model {shown!r} does not exist here; this server serves {names}", "model",
                       "model_not_found")

    async def served_of(self, entry: Entry) -> Served:
        """The model's tokenizer, context and sizes, read without loading its engine."""
        if entry.served is None:
            try:
                entry.served = await asyncio.to_thread(self.maker.served, entry)
            except Exception as exc:  # an unreadable folder, a tokenizer OpenVINO refuses
                raise _failed(entry, str(exc)) from None
        return entry.served

    async def served_for(self, name: str | None) -> tuple[Entry, Served]:
        """The model `name` names, with its tokenizer and template (no engine started): what a request is
        checked and tokenized against before a model is loaded for it."""
        entry = self.find(name)
        return entry, await self.served_of(entry)

    def expire(self, name: str | None) -> None:
        """Unload the model once it is idle (Ollama's keep_alive 0 with nothing to generate)."""
        entry = self.find(name)
        if entry.batch is not None:
            entry.keep_alive = 0.0

    def keep_alive_of(self, entry: Entry) -> float | None:
        """Seconds idle before `entry` is unloaded; None or negative: never."""
        if entry.keep_alive is not None:
            return entry.keep_alive
        return None if entry.pinned else self.keep_alive

    def loaded(self) -> list[Entry]:
        return [e for e in self.entries if e.batch is not None]

    @contextlib.asynccontextmanager
    async def lease(self, name: str | None, keep_alive: float | None = None) -> AsyncIterator[Serving]:
        """The Serving of the model `name` names, loaded first if it is not; it stays loaded while leased
        (and, after, while its jobs run). `keep_alive` is the request's keep-alive (None: the server's)."""
        entry = self.find(name)
        entry.leases += 1
        try:
            entry.keep_alive = keep_alive  # each request sets it, as Ollama's do (None: the server's)
            entry.last_used = time.monotonic()
            if entry.state != "ready":
                await self._ensure_loaded(entry)
            yield entry.serving
        finally:
            entry.leases -= 1
            entry.last_used = time.monotonic()

    # -- loading and unloading -----------------------------------------------------------------------
    async def _ensure_loaded(self, entry: Entry) -> None:
        if entry.state == "restarting":
            wait = max(entry.retry_at - time.monotonic(), 1)
            raise ApiError(503, f"the model {entry.name!r} is restarting after its engine ended ({entry.problem}); "
                           f"retry in {wait:.0f} s", kind="server_error", code="unavailable",
                           headers={"Retry-After": str(round(wait))})
        async with self._loading:  # one load at a time: room is counted once
            if entry.state != "ready":
                await self._load(entry)

    async def _load(self, entry: Entry) -> None:
        await self.served_of(entry)
        entry.need_bytes = need = self.maker.need_bytes(entry)
        if need > self.budget:
            entry.state = "failed"
            entry.problem = (f"the model {entry.name!r} needs about {need / GB:.1f} GB, more than this server's "
                             f"memory budget of {self.budget / GB:.1f} GB (--memory-budget-gb)")
            raise ApiError(507, entry.problem, "model", "insufficient_memory", kind="server_error")
        while len(self.loaded()) >= self.max_loaded or self.used_bytes() + need > self.budget:
            idle = [e for e in self.loaded() if e is not entry and e.idle() and not e.pinned]
            if not idle:
                busy = ", ".join(e.name for e in self.loaded())
                raise ApiError(503, f"no room to load {entry.name!r}: the loaded models ({busy}) are answering "
                               "requests or kept loaded (the first --model); retry shortly, or raise --max-loaded "
                               "or --memory-budget-gb", kind="server_error", code="overloaded",
                               headers={"Retry-After": "2"})
            await self.unload(min(idle, key=lambda e: e.last_used), "to make room")
        entry.state, started = "loading", time.monotonic()
        batch = None
        try:
            batch = self.maker.start(entry)
            batch.attach(self.loop or asyncio.get_running_loop())
            while batch.state == "loading":
                if time.monotonic() - started > LOAD_TIMEOUT:
                    batch.state, batch.problem = "broken", f"it did not load in {LOAD_TIMEOUT:.0f} s"
                    break
                await asyncio.sleep(0.02)
        except BaseException as exc:  # a failed start, or a cancelled one (shutdown): no engine left behind
            if batch is not None:
                await asyncio.shield(asyncio.to_thread(batch.close))
            if not isinstance(exc, Exception):
                entry.state = "unloaded"
                raise
            raise _failed(entry, str(exc)) from None
        if batch.state != "ready":
            await asyncio.to_thread(batch.close)
            raise _failed(entry, batch.problem)
        for observe in self.observers:
            batch.observers.append(observe)
        # Idle time counts from the end of the last answer, not from its start.
        batch.observers.append(lambda job, finish, e=entry: setattr(e, "last_used", time.monotonic()))
        entry.batch, entry.state, entry.problem = batch, "ready", ""
        entry.serving = Serving(entry.served, batch, self.settings, self.metrics)
        entry.last_used = time.monotonic()
        self.metrics.count("ovchat_model_loads_total")
        log.info("loaded %s in %.1f s (%d of at most %d loaded)", entry.name, time.monotonic() - started,
                 len(self.loaded()), self.max_loaded)

    async def unload(self, entry: Entry, why: str) -> None:
        batch, entry.batch, entry.serving = entry.batch, None, None
        if entry.state != "restarting":
            entry.state = "unloaded"
        if batch is not None:
            log.info("unloading %s (%s)", entry.name, why)
            await asyncio.to_thread(batch.close)

    def used_bytes(self) -> int:
        return sum(e.need_bytes for e in self.loaded())

    # -- the watcher ---------------------------------------------------------------------------------
    async def watch(self, period: float = 0.25) -> None:
        """Forever: unload idle models past their keep-alive; restart dead engines, with backoff."""
        while True:
            await asyncio.sleep(period)
            try:
                await self._tend(time.monotonic())
            except Exception:  # the watcher must outlive any one surprise: it keeps every model going
                log.exception("the model watcher hit an error; it goes on")

    async def _tend(self, now: float) -> None:
        """One look at every model: restart the dead, unload the idle past their keep-alive."""
        for entry in list(self.entries):
            batch = entry.batch
            if batch is not None and batch.state == "broken" and entry.state == "ready":
                entry.restarts += 1
                entry.problem = batch.problem
                entry.state = "restarting"
                entry.retry_at = now + min(2.0 ** (entry.restarts - 1), MAX_BACKOFF)
                log.warning("the engine of %s ended (%s); restart %d in %.0f s", entry.name, batch.problem,
                            entry.restarts, entry.retry_at - now)
                await self.unload(entry, "its engine ended")
            elif entry.state == "restarting" and now >= entry.retry_at:
                entry.state = "unloaded"
                try:
                    await self._ensure_loaded(entry)
                except ApiError as exc:
                    entry.restarts += 1  # every try counts: a model that cannot come back waits longer each time
                    entry.state = "restarting"
                    entry.retry_at = time.monotonic() + min(2.0 ** (entry.restarts - 1), MAX_BACKOFF)
                    log.warning("restarting %s failed: %s", entry.name, exc.message)
            elif batch is not None and entry.state == "ready" and entry.idle():
                keep = self.keep_alive_of(entry)
                if keep is not None and keep >= 0 and now - entry.last_used >= keep:
                    await self.unload(entry, f"idle for {keep:g} s")

    def attach(self, loop: asyncio.AbstractEventLoop) -> asyncio.Task | None:
        """Deliver the started engines' messages on `loop`; with a maker, load the default model and watch
        (the watcher task is returned, to cancel at shutdown)."""
        self.loop = loop
        for entry in self.loaded():
            entry.batch.attach(loop)
        if self.maker is None:
            return None
        return loop.create_task(self._run())

    async def _run(self) -> None:
        if self.default.state == "unloaded":
            with contextlib.suppress(ApiError):  # said in /health and by the lifecycle, which stops the server
                async with self.lease(None):
                    pass
        await self.watch()

    def drain(self) -> None:
        """Shutting down: /health says "stopping"; requests in flight go on."""
        for entry in self.loaded():
            entry.batch.closing = True

    def close_all(self) -> None:
        """Stop every engine (after the event loop has ended)."""
        for entry in self.loaded():
            entry.batch.close()
            entry.batch = None

    # -- what it says about itself -------------------------------------------------------------------
    def states(self) -> dict:
        """Each model's state (a loaded one's engine says: ready, loading, broken), restarts and last problem."""
        out = {}
        for e in self.entries:
            state = e.batch.state if e.batch is not None and e.state == "ready" else e.state
            out[e.name] = {"state": state, "restarts": e.restarts, **({"problem": e.problem} if e.problem else {})}
        return out


def _failed(entry: Entry, problem: str) -> ApiError:
    entry.state, entry.problem = "failed", problem
    return ApiError(500, f"the model {entry.name!r} could not be loaded ({problem})", kind="server_error",
                    code="load_failed")
