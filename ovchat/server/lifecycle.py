"""Running the server: checks before the port opens, the engine process, uvicorn, signals."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import uvicorn

from .. import runtime
from ..config import SERVE_KV_CACHE_RAM_SHARE, SERVE_MEMORY_SHARE
from ..embeddings import Embedder
from ..errors import OvchatError, describe
from ..loader import load_embedder, prepare
from ..precision import Precision, not_batch_invariant
from ..precision import choose as choose_precision
from .batching import BatchEngine
from .metrics import Metrics
from .registry import Entry, Maker, Registry
from .routes import create_app
from .served import Served
from .settings import Settings, is_loopback


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise OvchatError(f"cannot listen on {host}:{port} ({describe(exc)}); pick another --port or --host") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class EngineMaker(Maker):
    """Starts a model's engine process with the server's precision and limits, its KV cache sized for
    every slot's full context within its share of memory (shared between the models that may be loaded)."""

    def __init__(self, device: str, settings: Settings, chosen: Precision, cache_dir: str | None, sharing: int):
        self.device, self.settings, self.chosen, self.sharing = device, settings, chosen, max(sharing, 1)
        self.properties = runtime.runtime_properties(None, cache_dir, chosen)

    def served(self, entry: Entry) -> Served:
        served = Served.load(entry.path, entry.info, self.settings.context_length)
        served.name = entry.name  # the registry's name for it, in every answer
        return served

    def scheduler(self, served: Served) -> dict:
        settings = self.settings
        if settings.kv_cache_gb:
            gigabytes = settings.kv_cache_gb
        else:
            wanted = served.kv_bytes_per_token(self.chosen.kv_cache) * served.context_length * settings.max_concurrency
            share = _ram_bytes() * SERVE_KV_CACHE_RAM_SHARE / self.sharing
            gigabytes = max(1, min(math.ceil(wanted / 1e9), int(share / 1e9)))
        return {"cache_size": gigabytes, "max_num_seqs": settings.max_concurrency, "enable_prefix_caching": True}

    def need_bytes(self, entry: Entry) -> int:
        """Weights, the KV cache and the engine process's own (~0.3 GB measured with SmolLM2)."""
        weights = sum(f.stat().st_size for f in entry.path.glob("*.bin"))
        return int(weights + self.scheduler(entry.served)["cache_size"] * 1e9 + 0.3e9)

    def start(self, entry: Entry) -> BatchEngine:
        served, settings = entry.served, self.settings
        return BatchEngine(entry.path, self.device, self.properties, self.scheduler(served), sorted(served.stop_ids),
                           settings.max_concurrency, settings.max_queue)


def _entries(models: list[str], all_exported: bool, device: str, log) -> list[Entry]:
    """The models named (each exported first if it is not: the user asked for it), then with
    `all_exported` every other complete chat export in the models directory."""
    from ..build.inventory import exported_models

    entries, seen = [], set()
    for i, spec in enumerate(models):
        path, info = prepare(spec, device, log=log)
        name = runtime.model_name(path, info)
        if name in seen:  # another export of the same model (another recipe): called by its folder
            name = path.name
        if name in seen:
            raise OvchatError(f"--model {spec} names {name} a second time")
        seen.add(name)
        entries.append(Entry(name, path, info, pinned=i == 0))
    for row in exported_models() if all_exported else []:
        path = Path(row["path"])
        if row["kind"] == "chat" and row["source"] not in seen and path not in {e.path for e in entries}:
            info = runtime.verify_folder(path)
            name = runtime.model_name(path, info)
            entries.append(Entry(path.name if name in seen else name, path, info))
            seen.add(entries[-1].name)
    return entries


def serve(
    model: str | list[str],
    device: str,
    settings: Settings,
    *,
    cache_dir: str | None = None,
    embedding_model: str | None = None,
    all_exported: bool = False,
    log: Callable[[str], None] = print,
) -> int:
    """Run the server until SIGINT/SIGTERM; returns the exit code (0 after a clean shutdown). The first of
    `model` is loaded at start and kept; the others (and with `all_exported`, every chat model in the
    models directory) load when a request names them. An `embedding_model` is served beside them
    (/v1/embeddings, /api/embed)."""
    if not is_loopback(settings.host) and not settings.api_key and not settings.allow_insecure:
        raise OvchatError(
            f"listening on {settings.host} without an API key would let anyone on the network use this machine; "
            "set --api-key (or OVCHAT_API_KEY), or pass --insecure to accept that"
        )
    # A bad precision, then a broken model folder, fail here, before any port opens.
    purpose = "batch-invariant" if settings.batch_invariant else "speed"
    chosen = choose_precision(device, settings.precision, settings.kv_cache_precision, purpose=purpose)
    entries = _entries([model] if isinstance(model, str) else list(model), all_exported, device, log)
    maker = EngineMaker(device, settings, chosen, cache_dir, min(settings.max_loaded, len(entries)))
    entries[0].served = maker.served(entries[0])
    embedder = load_embedder(embedding_model, device=device, log=log) if embedding_model else None
    budget = settings.memory_budget_gb * 1e9 if settings.memory_budget_gb else _ram_bytes() * SERVE_MEMORY_SHARE
    registry = Registry(entries, settings, Metrics({}), maker, budget_bytes=budget, max_loaded=settings.max_loaded,
                        keep_alive=settings.keep_alive)
    sock = _bind(settings.host, settings.port)
    try:
        return _serve_on(sock, device, registry, settings, chosen, log, embedder)
    finally:
        sock.close()


def _serve_on(sock, device: str, registry: Registry, settings: Settings, chosen: Precision, log,
              embedder: Embedder | None = None) -> int:
    default = registry.entries[0]
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    log(
        f"ovchat serve: {default.name} on {device} ({chosen}), context {default.served.context_length}, "
        f"{settings.max_concurrency} at once + {settings.max_queue} queued; http://{shown}:{port}/v1 "
        f"({'API key required' if settings.api_key else 'no API key'})"
        + (f"; chat page http://{shown}:{port}/" if settings.web_ui else "")
    )
    if len(registry.entries) > 1:
        keep = "never" if settings.keep_alive is None or settings.keep_alive < 0 else f"{settings.keep_alive:g} s"
        log(f"ovchat serve: also {', '.join(e.name for e in registry.entries[1:])} on demand (at most "
            f"{registry.max_loaded} loaded, {registry.budget / 1e9:.1f} GB budget, unloaded after {keep} idle)")
    if embedder is not None:
        log(f"ovchat serve: embeddings from {embedder.name} ({embedder.dimensions} dimensions, up to "
            f"{embedder.settings['max_length']} tokens a text) at /v1/embeddings and /api/embed")
    if settings.batch_invariant and (why := not_batch_invariant(chosen)):
        log(f"ovchat serve: an answer may change with what else is in the batch ({why})")
    config = uvicorn.Config(
        create_app(None, None, settings, embedder, registry),
        log_level="info",
        timeout_graceful_shutdown=settings.shutdown_timeout,
        log_config=None,  # uvicorn's loggers go through ours: stderr, one format, access lines included
        server_header=False,
    )
    try:
        return asyncio.run(_run(_Server(config), sock, registry, log))
    finally:
        registry.close_all()


class _Server(uvicorn.Server):
    """uvicorn's server, with signals handled in `_run`: a SIGTERM drains and then exits 0 (uvicorn
    itself re-raises the signal after draining, which would end the process with it)."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


async def _run(server, sock: socket.socket, registry: Registry, log) -> int:
    loop = asyncio.get_running_loop()
    outcome = {"code": 0}

    def stop(sig: int) -> None:
        if server.should_exit:
            server.force_exit = True  # a second signal: stop waiting for in-flight requests
            return
        log("ovchat serve: stopping — finishing in-flight requests (signal again to stop now)")
        registry.drain()
        server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop, sig)

    async def watch_start() -> None:
        """The default model loads after the port opens (/health says so); if it cannot, the server stops.
        Later, an engine that ends is restarted by the registry while the server goes on."""
        default = registry.default
        while default.state in ("unloaded", "loading"):
            await asyncio.sleep(0.05)
        if default.state == "ready":
            log("ovchat serve: model loaded, ready")
        elif not server.should_exit:
            log(f"error: {default.problem}")
            outcome["code"] = 1
            server.should_exit = True

    watcher = asyncio.create_task(watch_start())
    try:
        await server.serve(sockets=[sock])
    finally:
        watcher.cancel()
    return outcome["code"]
