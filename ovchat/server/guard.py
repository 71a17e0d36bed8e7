"""The HTTP guard: Host header, API key and body size are checked, and every request counted, before
any route runs."""

from __future__ import annotations

import hmac
import json

from .api_error import ApiError, dialect_of
from .metrics import Metrics
from .settings import LOOPBACK_NAMES, Settings, is_loopback


class Guard:
    """Pure ASGI middleware (streaming-safe) that answers the cheap refusals before any app code runs."""

    def __init__(self, app, settings: Settings, metrics: Metrics):
        self.app, self.settings, self.metrics = app, settings, metrics
        hosts = {h.lower() for h in settings.allowed_hosts}
        if is_loopback(settings.host):
            hosts |= LOOPBACK_NAMES | {settings.host.lower()}  # DNS rebinding: only our own names
        self.hosts = hosts or None  # None: any Host (a deliberate non-loopback bind)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        label = _route_label(path)
        status = 0

        async def counting_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope, path)
            if refusal is not None:
                return await _send_error(counting_send, refusal, dialect_of(path))
            await self.app(scope, receive, counting_send)
        except Exception:
            status = status or 500  # answered by Starlette's outermost error handler, past this send
            raise
        finally:
            if status:
                self.metrics.request(label, status)

    def _refusal(self, scope, path: str) -> ApiError | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.hosts is not None and _host_name(headers.get("host", "")) not in self.hosts:
            return ApiError(400, "invalid Host header: this server answers only to its own names (see --allowed-host)")
        if self.settings.api_key and (path.startswith(("/v1/", "/api/")) or path == "/metrics"):
            given = headers.get("authorization", "")
            # Bearer for OpenAI's and Ollama's clients, x-api-key for Anthropic's.
            token = given[7:] if given[:7].lower() == "bearer " else headers.get("x-api-key", "")
            if not hmac.compare_digest(token.encode(), self.settings.api_key.encode()):
                why = "no API key provided" if not token else "incorrect API key provided"
                return ApiError(
                    401,
                    f"{why}: send it as 'Authorization: Bearer KEY' or 'x-api-key: KEY'",
                    code="invalid_api_key",
                    kind="authentication_error",
                )
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.settings.max_body_bytes:
            return too_large(self.settings.max_body_bytes)
        return None


def too_large(cap: int) -> ApiError:
    return ApiError(413, f"the request body is larger than this server's limit of {cap} bytes", code="body_too_large")


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8000
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _route_label(path: str) -> str:
    if path.startswith("/v1/models/"):
        return "/v1/models/{id}"
    if path.startswith("/ui/"):
        return "/ui/{file}"
    known = {"/", "/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/messages",
             "/v1/embeddings"}
    if path.startswith("/api/") and path.count("/") == 2:  # Ollama's routes: /api/chat, /api/tags, ...
        return path
    return path if path in known else "other"


async def _send_error(send, error: ApiError, dialect: str) -> None:
    body = json.dumps(error.body(dialect)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), str(v).encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
