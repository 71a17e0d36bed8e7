"""The HTTP routes and the app around them: each route reads and validates its body, then asks the
`Serving` object on `app.state` for the answer; the guard, CORS and OpenAI-shaped errors wrap them all."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware

from ..embeddings import Embedder
from . import embeddings, protocol
from .api_error import ApiError, dialect_of
from .batching import BatchEngine
from .dialects import anthropic, ollama
from .dialects.common import read_json, registry_of
from .guard import Guard
from .metrics import Metrics
from .page import add_page
from .registry import Entry, Registry
from .served import Served
from .serving import Serving, chat_input, completion_input, model_card, version
from .settings import Settings

log = logging.getLogger("ovchat.server")
router = APIRouter()


def _cap(request: Request) -> int:
    return request.app.state.settings.max_body_bytes


@router.get("/health")
async def health(request: Request):
    """200 while the default model is ready (or unloaded, to load on demand); every model's state beside."""
    registry = registry_of(request)
    default = registry.default
    if default.serving is not None:
        body, status = default.serving.health()
    else:
        ok = default.state == "unloaded"
        body, status = {"status": "ok" if ok else default.state, "model": default.name}, 200 if ok else 503
    return JSONResponse({**body, "models": registry.states()}, status_code=status)


@router.get("/metrics")
async def metrics_text(request: Request):
    return PlainTextResponse(request.app.state.metrics.render(), media_type="text/plain; version=0.0.4")


async def _card(registry: Registry, entry: Entry) -> dict:
    """A chat model's card, loaded or not (its tokenizer and config are read, no engine started)."""
    with contextlib.suppress(ApiError):  # an unreadable folder: the short card (/health says why)
        served = await registry.served_of(entry)
        return {**model_card(served, registry.settings), "loaded": entry.batch is not None}
    created = int(entry.path.stat().st_mtime) if entry.path.exists() else 0
    return {"id": entry.name, "object": "model", "created": created, "owned_by": "ovchat", "loaded": False}


@router.get("/v1/models")
async def list_models(request: Request):
    registry, embedder = registry_of(request), request.app.state.embedder
    extra = [embedding_card(embedder)] if embedder is not None else []
    return {"object": "list", "data": [await _card(registry, e) for e in registry.entries] + extra}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request):
    embedder = request.app.state.embedder
    if embedder is not None and model_id in (embedder.name, embedder.path.name):
        return embedding_card(embedder)
    registry = registry_of(request)
    return await _card(registry, registry.find(model_id))


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    req = protocol.parse(protocol.ChatRequest, await read_json(request, _cap(request)))
    registry = registry_of(request)
    entry, served = await registry.served_for(req.model)
    prepared = await chat_input(served, req)  # every check before the model's engine is asked for
    async with registry.lease(entry.name) as serving:
        return await serving.chat(request, req, prepared)


@router.post("/v1/completions")
async def completions(request: Request):
    req = protocol.parse(protocol.CompletionRequest, await read_json(request, _cap(request)))
    registry = registry_of(request)
    entry, served = await registry.served_for(req.model)
    ids = await completion_input(served, req)
    async with registry.lease(entry.name) as serving:
        return await serving.complete(request, req, ids)


def embedding_card(embedder: Embedder) -> dict:
    return {"id": embedder.name, "object": "model", "created": embedder.created, "owned_by": "ovchat",
            "kind": "embedding", "dimensions": embedder.dimensions, "max_input_tokens": embedder.settings["max_length"]}


def single(served: Served, batch: BatchEngine, settings: Settings) -> Registry:
    """A registry of one model whose engine is already started (nothing loads or unloads on demand)."""
    entry = Entry(served.name, served.path, pinned=True, served=served, batch=batch, state="ready")
    registry = Registry([entry], settings, Metrics({}), maker=None)
    entry.serving = Serving(served, batch, settings, registry.metrics)
    return registry


def create_app(
    served: Served | None,
    batch: BatchEngine | None,
    settings: Settings,
    embedder: Embedder | None = None,
    registry: Registry | None = None,
) -> FastAPI:
    """The whole HTTP app: for one served model and its started engine, or for a `registry` of models
    loaded on demand; with an embedding model beside them if given."""
    registry = registry or single(served, batch, settings)
    metrics = registry.metrics
    @contextlib.asynccontextmanager
    async def lifespan(app):
        watcher = registry.attach(asyncio.get_running_loop())
        yield
        if watcher is not None:
            watcher.cancel()

    app = FastAPI(title="ovchat", version=version(), docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.registry, app.state.settings, app.state.metrics = registry, settings, metrics
    app.state.embedder = embedder
    _add_error_handlers(app)
    if settings.web_ui:
        add_page(app)
    app.include_router(router)
    app.include_router(ollama.router)
    app.include_router(anthropic.router)
    app.include_router(embeddings.router)
    app.add_middleware(Guard, settings=settings, metrics=metrics)
    if settings.cors_origins:  # never a wildcard with credentials
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=False,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["authorization", "content-type", "x-api-key", "anthropic-version"],
        )
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error, ours or the framework's, answered in the shape of the dialect its path belongs to."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse(exc.body(dialect_of(request.url.path)), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        error = ApiError(400, first.get("msg", "invalid request"), param)
        return JSONResponse(error.body(dialect_of(request.url.path)), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed here"}.get(
            exc.status_code, str(exc.detail)
        )
        return JSONResponse(
            ApiError(exc.status_code, message, code=code).body(dialect_of(request.url.path)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _fault(request: Request, exc: Exception):
        log.exception("internal error on %s", request.url.path)
        error = ApiError(500, "internal server error", kind="server_error")
        return JSONResponse(error.body(dialect_of(request.url.path)), status_code=500)
