"""What `ovchat serve` is told to do (address, limits, key, precision), and which host names are loopback."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ..config import (
    DEFAULT_MAX_NEW_TOKENS,
    SERVE_HOST,
    SERVE_KEEPALIVE_SECONDS,
    SERVE_MAX_BODY_BYTES,
    SERVE_MAX_CONCURRENCY,
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


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
