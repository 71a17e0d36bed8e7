"""The HTTP side: routes, the guard middleware, and answers as JSON or SSE.

Request → strict validation (protocol.py) → chat template and tokens here → the engine process
(batching.py, engine_process.py) → text deltas (detok.py) → a JSON answer or an SSE stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware

from .. import runtime
from ..config import DEFAULT_MAX_NEW_TOKENS
from ..errors import OvchatError
from ..sampling import StopMatcher
from . import protocol
from .batching import BatchEngine, EngineUnavailable, Job, Overloaded
from .detok import IncrementalDecoder
from .metrics import Metrics
from .page import add_page
from .protocol import ApiError

log = logging.getLogger("ovchat.server")
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_concurrency: int = 8
    max_queue: int = 32
    max_tokens_limit: int = DEFAULT_MAX_NEW_TOKENS
    context_length: int | None = None  # cap below the model's own (saves KV cache memory)
    kv_cache_gb: int | None = None
    precision: str | None = None  # inference precision (default: ovchat.precision's batch-invariant choice)
    kv_cache_precision: str | None = None  # default: the inference precision (the same answer at any concurrency)
    batch_invariant: bool = True  # False: the fastest single-stream precision (answers may change with the batch)
    allowed_hosts: list[str] = field(default_factory=list)
    cors_origins: list[str] = field(default_factory=list)
    max_body_bytes: int = 4 * 1024 * 1024
    shutdown_timeout: float = 60.0
    keepalive_seconds: float = 10.0
    allow_insecure: bool = False
    web_ui: bool = True  # the chat page at `/`


@dataclass
class Served:
    """The one model this server answers for, with what the HTTP side needs of it."""

    name: str
    path: Path
    context_length: int
    tokenizer: object
    stop_ids: set[int]
    vocab_size: int
    created: int  # when the folder was exported (its mtime): OpenAI's model "created"
    config: dict  # config.json: architecture sizes

    @classmethod
    def load(cls, path: Path, info: dict | None, context_cap: int | None) -> Served:
        import openvino_genai as ov_genai

        tokenizer = ov_genai.Tokenizer(str(path))
        config = runtime.model_config(path)
        generation = runtime.read_json(path / "generation_config.json")
        configured = generation.get("eos_token_id", [])
        stops = runtime.stop_token_ids(tokenizer, configured if isinstance(configured, list) else [configured])
        context = runtime.context_length(path)
        if context_cap:
            context = min(context, context_cap)
        vocab = config.get("vocab_size") if isinstance(config.get("vocab_size"), int) else None
        vocab = vocab or len(tokenizer.get_vocab_vector())
        created = int(path.stat().st_mtime)
        return cls(runtime.model_name(path, info), path, context, tokenizer, stops, vocab, created, config)

    def kv_bytes_per_token(self, precision: str) -> int:
        config = self.config
        layers = config.get("num_hidden_layers", 32)
        heads = config.get("num_attention_heads", 32)
        kv_heads = config.get("num_key_value_heads") or heads
        head_dim = config.get("head_dim") or config.get("hidden_size", 4096) // heads
        width = {"f32": 4, "f16": 2, "bf16": 2, "u8": 1}.get(precision, 4)
        return 2 * layers * kv_heads * head_dim * width


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# -- the HTTP guard: Host, API key, body size, request counts ----------------------------------------
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
                return await _send_error(counting_send, refusal)
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
        if self.settings.api_key and (path.startswith("/v1/") or path == "/metrics"):
            given = headers.get("authorization", "")
            token = given[7:] if given[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(token.encode(), self.settings.api_key.encode()):
                why = "no API key provided" if not token else "incorrect API key provided"
                return ApiError(
                    401,
                    f"{why}: send it as 'Authorization: Bearer KEY'",
                    code="invalid_api_key",
                    kind="authentication_error",
                )
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.settings.max_body_bytes:
            return _too_large(self.settings.max_body_bytes)
        return None


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
    known = {"/", "/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions"}
    return path if path in known else "other"


def _too_large(cap: int) -> ApiError:
    return ApiError(413, f"the request body is larger than this server's limit of {cap} bytes", code="body_too_large")


async def _send_error(send, error: ApiError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), str(v).encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# -- generation -------------------------------------------------------------------------------------
@dataclass
class Piece:
    text: str
    finish: str | None = None  # set on the last piece


class Answer:
    """Turns one job's token batches into text pieces: stop strings cut here, exactly."""

    def __init__(self, batch: BatchEngine, job: Job, tokenizer, stops: list[str]):
        self.batch, self.job = batch, job
        self.decoder, self.matcher = IncrementalDecoder(tokenizer), StopMatcher(stops)
        self.done = False
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
        if self.matcher.stopped:  # a stop string: we end the answer here and stop the engine
            if not finish:
                self.batch.cancel(self.job, why="stop string")
            self.done = True
            return Piece(text, "stop")
        if finish:
            self.done = True
            text += self.matcher.push(self.decoder.flush())
            text += self.matcher.flush()
            return Piece(text, "length" if finish == "length" else "stop")
        return Piece(text)

    def close(self) -> None:
        """The client is gone (or we are): stop generating for it."""
        if not self.done:
            self.done = True
            self.batch.cancel(self.job, why="client")


class GenerationFailed(Exception):
    """The engine could not finish this answer. Its message is safe to show (no paths, no internals)."""

    def error(self) -> ApiError:
        message = str(self)
        if message.startswith("schema:"):  # this request's own JSON schema: the client's to fix
            return ApiError(
                400,
                f"the grammar compiler rejected this JSON schema ({message[7:]})",
                "response_format",
                "invalid_json_schema",
            )
        return ApiError(500, f"generation failed: {message}", kind="server_error", code="generation_failed")


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def create_app(served: Served, batch: BatchEngine, settings: Settings):
    metrics = Metrics(
        {
            "ovchat_requests_running": ("Requests generating in the engine.", lambda: len(batch.running)),
            "ovchat_queue_depth": ("Requests waiting for a slot.", lambda: len(batch.waiting)),
        }
    )

    def observe(job: Job, finish: str) -> None:
        metrics.count("ovchat_generation_tokens_total", job.generated)
        if finish == "cancelled" and job.cancel_reason == "client":
            metrics.count("ovchat_requests_cancelled_total")
        if job.first_token:
            metrics.ttft.observe(job.first_token - job.submitted)
            if job.generated > 1:
                metrics.tpot.observe((job.last_token - job.first_token) / (job.generated - 1))

    batch.observers.append(observe)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batch.attach(asyncio.get_running_loop())
        yield

    app = FastAPI(
        title="ovchat", version=_version(), docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    fingerprint = f"ovchat-{_version()}"

    def header(rid: str, kind: str, created: int) -> dict:
        """The fields every answer and every stream chunk starts with."""
        return {"id": rid, "object": kind, "created": created, "model": served.name, "system_fingerprint": fingerprint}

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return JSONResponse(ApiError(400, first.get("msg", "invalid request"), param).body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed here"}.get(
            exc.status_code, str(exc.detail)
        )
        return JSONResponse(
            ApiError(exc.status_code, message, code=code).body(),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _fault(request: Request, exc: Exception):
        log.exception("internal error on %s", request.url.path)
        return JSONResponse(ApiError(500, "internal server error", kind="server_error").body(), status_code=500)

    if settings.web_ui:
        add_page(app)

    @app.get("/health")
    async def health():
        state = batch.state
        if state == "ready" and batch.running and time.monotonic() - batch.last_progress > 120:
            state = "stalled"  # requests in the engine, yet no step finished for two minutes
        if state == "ready" and batch.closing:
            state = "stopping"
        body = {"status": "ok" if state == "ready" else state, "model": served.name}
        return JSONResponse(body, status_code=200 if state == "ready" else 503)

    @app.get("/metrics")
    async def metrics_text():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    def model_card() -> dict:
        return {
            "id": served.name,
            "object": "model",
            "created": served.created,
            "owned_by": "ovchat",
            "context_length": served.context_length,
            "max_tokens_limit": settings.max_tokens_limit,
        }

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        check_model(model_id)
        return model_card()

    def check_model(name: str | None) -> None:
        if name is not None and name not in (served.name, served.path.name):
            shown = name if len(name) <= 80 else name[:80] + "…"
            raise ApiError(
                404,
                f"the model {shown!r} does not exist here; this server serves {served.name!r}",
                "model",
                "model_not_found",
            )

    async def read_json(request: Request):
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise ApiError(415, "send the body as JSON with 'Content-Type: application/json'", code="unsupported_media")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_body_bytes:  # a chunked body, cut off as soon as it passes the cap
                raise _too_large(settings.max_body_bytes)
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:  # malformed, bad UTF-8, absurd nesting or numbers
            reason = "nested too deeply" if isinstance(exc, RecursionError) else exc
            raise ApiError(400, f"the body is not valid JSON ({reason})") from None

    def chat_ids(messages: list[dict]) -> list[int]:
        try:
            prompt = runtime.render(served.tokenizer, served.name, messages)
        except OvchatError as exc:
            raise ApiError(400, str(exc), "messages") from None
        return runtime.encode(served.tokenizer, prompt, add_special_tokens=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = protocol.parse(protocol.ChatRequest, await read_json(request))
        check_model(req.model)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
        ids = await asyncio.to_thread(chat_ids, messages)  # a long prompt must not stall every stream
        return await generate(request, req, ids, chat=True, schema=req.schema())

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = protocol.parse(protocol.CompletionRequest, await read_json(request))
        check_model(req.model)
        if isinstance(req.prompt, str):
            ids = await asyncio.to_thread(runtime.encode, served.tokenizer, req.prompt)
        else:
            bad = next((t for t in req.prompt if not 0 <= t < served.vocab_size), None)
            if bad is not None:
                raise ApiError(
                    400, f"prompt: token id {bad} is outside the vocabulary (0..{served.vocab_size - 1})", "prompt"
                )
            ids = list(req.prompt)
        return await generate(request, req, ids, chat=False, schema=None)

    async def generate(request: Request, req, ids: list[int], chat: bool, schema: str | None):
        context = served.context_length
        if len(ids) >= context:
            raise ApiError(
                400,
                f"this model's maximum context length is {context} tokens, but the prompt has "
                f"{len(ids)} tokens; shorten it",
                "messages" if chat else "prompt",
                "context_length_exceeded",
            )
        asked = req.budget()
        field_name = "max_completion_tokens" if chat and req.max_completion_tokens else "max_tokens"
        if asked is not None and asked > context:
            raise ApiError(400, f"{field_name} must be at most the context length ({context}), not {asked}", field_name)
        # Documented choice: an answer that would not fit (or passes the server's limit) is clamped and
        # ends with finish_reason "length".
        budget = min(asked or settings.max_tokens_limit, settings.max_tokens_limit, context - len(ids))
        try:
            job = batch.submit(ids, req.sampling(budget, schema))
        except Overloaded:
            raise ApiError(
                503,
                "the server is at capacity (all slots and queue places taken); retry shortly",
                kind="server_error",
                code="overloaded",
                headers={"Retry-After": "1"},
            ) from None
        except EngineUnavailable as exc:
            raise ApiError(
                503,
                f"the model is not available ({exc}); retry shortly",
                kind="server_error",
                code="unavailable",
                headers={"Retry-After": "2"},
            ) from None
        metrics.count("ovchat_prompt_tokens_total", len(ids))
        answer = Answer(batch, job, served.tokenizer, req.stops())
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                stream(answer, rid, created, chat, usage, len(ids)),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        text, finish = await collect(request, answer)
        log_done(rid, len(ids), job, finish)
        head = header(rid, "chat.completion" if chat else "text_completion", created)
        if chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish,
            }
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return {**head, "choices": [choice], "usage": _usage(len(ids), answer.tokens)}

    async def collect(request: Request, answer: Answer) -> tuple[str, str]:
        async def client_gone():
            while (await request.receive())["type"] != "http.disconnect":
                pass
            answer.close()

        watcher = asyncio.create_task(client_gone())
        parts = []
        try:
            while True:
                piece = await answer.next()
                parts.append(piece.text)
                if piece.finish:
                    return "".join(parts), piece.finish
        except GenerationFailed as exc:
            log.warning("generation failed: %s", exc)
            raise exc.error() from None
        finally:
            watcher.cancel()
            answer.close()

    async def stream(
        answer: Answer, rid: str, created: int, chat: bool, usage: bool, prompt_tokens: int
    ) -> AsyncIterator[str]:
        head = header(rid, "chat.completion.chunk" if chat else "text_completion", created)

        def event(text: str | None, finish: str | None, role: bool = False) -> str:
            if chat:
                delta = {"role": "assistant", "content": ""} if role else {} if text is None else {"content": text}
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            chunk = {**head, "choices": [choice]}
            if usage:
                chunk["usage"] = None
            return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

        finish = None
        try:
            if chat:
                yield event(None, None, role=True)
            while True:
                piece = await answer.next(settings.keepalive_seconds)
                if piece is None:
                    yield ": keep-alive\n\n"  # long prefill or a queue wait: keep proxies from timing out
                    continue
                if piece.finish:
                    finish = piece.finish
                    if piece.text:
                        yield event(piece.text, None)
                    yield event(None, finish)
                    break
                if piece.text:
                    yield event(piece.text, None)
            if usage:
                totals = _usage(prompt_tokens, answer.tokens)
                yield f"data: {json.dumps({**head, 'choices': [], 'usage': totals})}\n\n"
        except GenerationFailed as exc:
            log.warning("%s failed: %s", rid, exc)
            yield f"data: {json.dumps(exc.error().body())}\n\n"
        finally:
            answer.close()
            log_done(rid, prompt_tokens, answer.job, finish or "cut")
        yield "data: [DONE]\n\n"

    def log_done(rid: str, prompt_tokens: int, job: Job, finish: str) -> None:
        ttft = f"{(job.first_token - job.submitted) * 1000:.0f} ms" if job.first_token else "n/a"
        log.info(
            "%s: %d prompt tokens, %d generated, first token %s, finish %s",
            rid,
            prompt_tokens,
            job.generated,
            ttft,
            finish,
        )

    app.add_middleware(Guard, settings=settings, metrics=metrics)
    if settings.cors_origins:  # never a wildcard with credentials
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=False,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["authorization", "content-type"],
        )
    return app


def _version() -> str:
    from .. import __version__

    return __version__
