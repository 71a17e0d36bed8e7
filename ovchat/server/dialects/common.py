"""What every dialect's routes share: reading a JSON body, and naming a problem in the dialect's terms."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

from fastapi import Request

from ..api_error import ApiError
from ..guard import too_large


async def read_json(request: Request, cap: int, any_type: bool = False):
    """The decoded JSON body, or an ApiError: not JSON (415, unless `any_type`), over `cap` bytes (413),
    malformed (400)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json" and not any_type:
        raise ApiError(415, "send the body as JSON with 'Content-Type: application/json'", code="unsupported_media")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:  # a chunked body, cut off as soon as it passes the cap
            raise too_large(cap)
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # malformed, bad UTF-8, absurd nesting or numbers
        reason = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise ApiError(400, f"the body is not valid JSON ({reason})") from None


def registry_of(request: Request):
    """The server's chat models (ovchat.server.registry.Registry)."""
    return request.app.state.registry


async def read_body(request: Request) -> dict:
    """A dialect's JSON object body (what OpenAI's clients send, others send too, so the same checks)."""
    # Ollama's own examples (curl -d without a Content-Type) are answered, as Ollama answers them.
    any_type = request.url.path.startswith("/api/")
    body = await read_json(request, request.app.state.settings.max_body_bytes, any_type)
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {type(body).__name__}")
    return body


@contextlib.contextmanager
def renamed(names: dict[str, str]) -> Iterator[None]:
    """ApiErrors raised inside name a field as the dialect does: {"max_tokens": "options.num_predict"}."""
    try:
        yield
    except ApiError as exc:
        head = (exc.param or "").split(".")[0].split("[")[0]
        if head in names:
            theirs = names[head] + (exc.param or "")[len(head) :]
            exc.message = exc.message.replace(exc.param, theirs, 1) if exc.param in exc.message else exc.message
            exc.param = theirs
        raise
