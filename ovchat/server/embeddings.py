"""Embeddings beside the chat model: OpenAI's /v1/embeddings here (Ollama's /api/embed translates to the
same `embed`). Texts are embedded off the event loop, a chunk at a time, so a big request does not
hold up the others."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
from fastapi import APIRouter, Request

from ..embeddings import Embedder
from .api_error import ApiError
from .dialects.common import read_body

router = APIRouter()
MAX_INPUTS = 2048  # OpenAI's limit on inputs in one request
CHUNK = 32  # texts embedded together: a request this big shares the pipeline with others between chunks


def embedder_of(request: Request, name) -> Embedder:
    """The served embedding model, if `name` names it (a chat model's name is a clear 400)."""
    embedder: Embedder | None = request.app.state.embedder
    chat = {n for e in request.app.state.registry.entries for n in (e.name, e.path.name)}
    if embedder is None:
        raise ApiError(404, "this server has no embedding model: start it with --embedding-model all-minilm-l6-v2",
                       "model", "model_not_found")
    if name is not None and not isinstance(name, str):
        raise ApiError(400, "model: must be a string", "model")
    if name in chat:
        raise ApiError(400, f"{name!r} is a chat model; the embedding model here is {embedder.name!r}", "model")
    if name is not None and name not in (embedder.name, embedder.path.name):
        shown = name if isinstance(name, str) and len(name) <= 80 else str(name)[:80] + "…"
        raise ApiError(404, f"the model {shown!r} does not exist here; embeddings come from {embedder.name!r}",
                       "model", "model_not_found")
    return embedder


def texts_of(given, field: str = "input") -> list[str]:
    """A string or a list of strings, each non-empty, at most MAX_INPUTS."""
    texts = [given] if isinstance(given, str) else given
    if not isinstance(texts, list) or not texts:
        raise ApiError(400, f"{field}: must be a string or a non-empty list of strings", field)
    if len(texts) > MAX_INPUTS:
        raise ApiError(400, f"{field}: at most {MAX_INPUTS} inputs in one request, not {len(texts)}", field)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            what = "token ids" if isinstance(text, (int, list)) else type(text).__name__
            raise ApiError(400, f"{field}[{i}]: send text, not {what}", f"{field}[{i}]")
        if not text.strip():
            raise ApiError(400, f"{field}[{i}]: an empty string has no embedding", f"{field}[{i}]")
    return texts


async def embed(embedder: Embedder, texts: list[str], truncate: bool = True) -> tuple[np.ndarray, int]:
    """The texts' vectors and the tokens read; `truncate=False` refuses a text longer than the model reads."""
    lengths = await asyncio.to_thread(embedder.lengths, texts)
    cap = embedder.settings["max_length"]
    over = next((i for i, n in enumerate(lengths) if n > cap), None)
    if not truncate and over is not None:
        raise ApiError(400, f"input[{over}] has {lengths[over]} tokens, more than this model reads ({cap}); "
                       "shorten it or allow truncation", f"input[{over}]")
    parts = [await asyncio.to_thread(embedder.embed, texts[i : i + CHUNK]) for i in range(0, len(texts), CHUNK)]
    return np.concatenate(parts), sum(min(n, cap) for n in lengths)


@router.post("/v1/embeddings")
async def embeddings(request: Request):
    body = await read_body(request)
    embedder = embedder_of(request, body.get("model"))
    texts = texts_of(body.get("input"))
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise ApiError(400, "encoding_format: must be 'float' or 'base64'", "encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and dimensions != embedder.dimensions:
        raise ApiError(400, f"dimensions: this model's vectors have {embedder.dimensions}; it cannot give "
                       f"{dimensions}", "dimensions")
    vectors, tokens = await embed(embedder, texts)

    def shown(vector: np.ndarray):
        if encoding == "base64":  # little-endian float32, as OpenAI's clients decode it
            return base64.b64encode(vector.astype("<f4").tobytes()).decode()
        return vector.tolist()

    data = [{"object": "embedding", "index": i, "embedding": shown(v)} for i, v in enumerate(vectors)]
    return {"object": "list", "data": data, "model": embedder.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
