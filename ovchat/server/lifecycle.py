"""Running the server: checks before the port opens, the engine process, uvicorn, signals."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import socket
from collections.abc import Callable

import uvicorn

from .. import runtime
from ..config import SERVE_KV_CACHE_RAM_SHARE
from ..embeddings import Embedder
from ..errors import OvchatError, describe
from ..loader import load_embedder, prepare
from ..precision import Precision, not_batch_invariant
from ..precision import choose as choose_precision
from .batching import BatchEngine
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


def _scheduler(served: Served, settings: Settings, kv_cache_precision: str) -> dict:
    per_token = served.kv_bytes_per_token(kv_cache_precision)
    if settings.kv_cache_gb:
        gigabytes = settings.kv_cache_gb
    else:
        # Room for every slot's full context, up to a share of this machine's memory.
        wanted = per_token * served.context_length * settings.max_concurrency / 1e9
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
        gigabytes = max(1, min(math.ceil(wanted), int(ram * SERVE_KV_CACHE_RAM_SHARE)))
    return {"cache_size": gigabytes, "max_num_seqs": settings.max_concurrency, "enable_prefix_caching": True}


def serve(
    model: str,
    device: str,
    settings: Settings,
    *,
    cache_dir: str | None = None,
    embedding_model: str | None = None,
    log: Callable[[str], None] = print,
) -> int:
    """Run the server until SIGINT/SIGTERM; returns the exit code (0 after a clean shutdown). An
    `embedding_model` is served beside the chat model (/v1/embeddings, /api/embed)."""
    if not is_loopback(settings.host) and not settings.api_key and not settings.allow_insecure:
        raise OvchatError(
            f"listening on {settings.host} without an API key would let anyone on the network use this machine; "
            "set --api-key (or OVCHAT_API_KEY), or pass --insecure to accept that"
        )
    # A bad precision, then a broken model folder, fail here, before any port opens.
    purpose = "batch-invariant" if settings.batch_invariant else "speed"
    chosen = choose_precision(device, settings.precision, settings.kv_cache_precision, purpose=purpose)
    path, info = prepare(model, device, log=log)
    served = Served.load(path, info, settings.context_length)
    embedder = load_embedder(embedding_model, device=device, log=log) if embedding_model else None
    sock = _bind(settings.host, settings.port)
    try:
        return _serve_on(sock, path, device, served, settings, chosen, cache_dir, log, embedder)
    finally:
        sock.close()


def _serve_on(
    sock, path, device: str, served: Served, settings: Settings, chosen: Precision, cache_dir: str | None, log,
    embedder: Embedder | None = None,
) -> int:
    properties = runtime.runtime_properties(None, cache_dir, chosen)
    scheduler = _scheduler(served, settings, chosen.kv_cache)
    batch = BatchEngine(
        path, device, properties, scheduler, sorted(served.stop_ids), settings.max_concurrency, settings.max_queue
    )
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    log(
        f"ovchat serve: {served.name} on {device} ({chosen}), context {served.context_length}, "
        f"{settings.max_concurrency} at once + {settings.max_queue} queued; http://{shown}:{port}/v1 "
        f"({'API key required' if settings.api_key else 'no API key'})"
        + (f"; chat page http://{shown}:{port}/" if settings.web_ui else "")
    )
    if embedder is not None:
        log(f"ovchat serve: embeddings from {embedder.name} ({embedder.dimensions} dimensions, up to "
            f"{embedder.settings['max_length']} tokens a text) at /v1/embeddings and /api/embed")
    if settings.batch_invariant and (why := not_batch_invariant(chosen)):
        log(f"ovchat serve: an answer may change with what else is in the batch ({why})")
    config = uvicorn.Config(
        create_app(served, batch, settings, embedder),
        log_level="info",
        timeout_graceful_shutdown=settings.shutdown_timeout,
        log_config=None,  # uvicorn's loggers go through ours: stderr, one format, access lines included
        server_header=False,
    )
    try:
        return asyncio.run(_run(_Server(config), sock, batch, log))
    finally:
        batch.close()


class _Server(uvicorn.Server):
    """uvicorn's server, with signals handled in `_run`: a SIGTERM drains and then exits 0 (uvicorn
    itself re-raises the signal after draining, which would end the process with it)."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


async def _run(server, sock: socket.socket, batch: BatchEngine, log) -> int:
    loop = asyncio.get_running_loop()
    outcome = {"code": 0}

    def stop(sig: int) -> None:
        if server.should_exit:
            server.force_exit = True  # a second signal: stop waiting for in-flight requests
            return
        log("ovchat serve: stopping — finishing in-flight requests (signal again to stop now)")
        batch.closing = True
        server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop, sig)

    async def watch_engine() -> None:
        while batch.state == "loading":
            await asyncio.sleep(0.05)
        if batch.state == "ready":
            log("ovchat serve: model loaded, ready")
        while batch.state == "ready":
            await asyncio.sleep(0.5)
        if batch.state == "broken" and not server.should_exit:
            log(f"error: {batch.problem}")
            outcome["code"] = 1
            server.should_exit = True

    watcher = asyncio.create_task(watch_engine())
    try:
        await server.serve(sockets=[sock])
    finally:
        watcher.cancel()
    return outcome["code"]
