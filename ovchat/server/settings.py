"""What `ovchat serve` is told to do (address, limits, key, precision), and which host names are loopback."""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, field

from ..config import (
    DEFAULT_MAX_NEW_TOKENS,
    SERVE_HOST,
    SERVE_KEEP_ALIVE_SECONDS,
    SERVE_KEEPALIVE_SECONDS,
    SERVE_MAX_BODY_BYTES,
    SERVE_MAX_CONCURRENCY,
    SERVE_MAX_LOADED,
    SERVE_MAX_QUEUE,
    SERVE_PORT,
    SERVE_SHUTDOWN_TIMEOUT,
)

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


@dataclass
class Settings:
    host: str = SERVE_HOST
    port: int = SERVE_PORT
    api_key: str | None = None
    max_concurrency: int = SERVE_MAX_CONCURRENCY
    max_queue: int = SERVE_MAX_QUEUE
    max_tokens_limit: int = DEFAULT_MAX_NEW_TOKENS
    context_length: int | None = None  # cap below the model's own (saves KV cache memory)
    kv_cache_gb: int | None = None
    precision: str | None = None  # inference precision (default: ovchat.precision's batch-invariant choice)
    kv_cache_precision: str | None = None  # default: the inference precision (the same answer at any concurrency)
    batch_invariant: bool = True  # False: the fastest single-stream precision (answers may change with the batch)
    allowed_hosts: list[str] = field(default_factory=list)
    cors_origins: list[str] = field(default_factory=list)
    max_body_bytes: int = SERVE_MAX_BODY_BYTES
    shutdown_timeout: float = SERVE_SHUTDOWN_TIMEOUT
    keepalive_seconds: float = SERVE_KEEPALIVE_SECONDS
    allow_insecure: bool = False
    web_ui: bool = True  # the chat page at `/`
    max_loaded: int = SERVE_MAX_LOADED  # chat models loaded at once
    keep_alive: float | None = SERVE_KEEP_ALIVE_SECONDS  # idle seconds before unloading; None or < 0: never
    memory_budget_gb: float | None = None  # the loaded models' memory at most (default: a share of RAM)


_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


def duration_seconds(given) -> float:
    """Seconds from a number or a duration as Ollama writes them ("300", "5m", "1h30m", "-1");
    ValueError if it is neither."""
    if isinstance(given, bool):
        raise ValueError(f"{given!r} is not a duration")
    if isinstance(given, (int, float)):
        return _finite(float(given))
    text = str(given).strip()
    try:
        return _finite(float(text))
    except ValueError as exc:
        if "finite" in str(exc):
            raise
    if not re.fullmatch(r"-?(?:\d+(?:\.\d+)?(?:ms|s|m|h))+", text):
        raise ValueError(f"{text!r} is not a duration (seconds, or like 5m, 1h, -1)")
    seconds = sum(float(n) * _UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text))
    return -seconds if text.startswith("-") else seconds


def _finite(seconds: float) -> float:
    if not math.isfinite(seconds) or abs(seconds) > 10 * 365 * 86400:
        raise ValueError(f"{seconds!r} is not a finite duration (use -1 to keep a model loaded)")
    return seconds


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
