"""`ovchat serve`: an OpenAI-, Ollama- and Anthropic-compatible HTTP server over OpenVINO GenAI's
continuous batching, for several chat models and an embedding model.

settings.py        what the server is told: address, limits, key, precision
served.py          a served model: name, context, tokenizer, stop ids
registry.py        the chat models: loaded on demand, unloaded when idle, restarted when their engine dies
guard.py           the guard middleware: Host, API key, body cap, request counts
routes.py          the FastAPI app: routes, error handlers, CORS, the chat page
serving.py         requests to token ids, admission, JSON and SSE answers
answer.py          one answer's token batches to text pieces (stop strings, loop guard)
logprobs.py        log-probabilities in OpenAI's shapes, token bytes
protocol.py        the OpenAI request shapes, validated strictly
api_error.py       errors, in each dialect's shape
dialects/          Ollama's and Anthropic's APIs, translated to and from the OpenAI shapes
embeddings.py      /v1/embeddings (and the embedding that /api/embed shares)
batching.py        admission, the bounded queue, one token stream per request
engine_process.py  the child process that steps the pipeline
scorer.py          the second pass that gives top_logprobs their alternatives
detok.py           token ids to text deltas
metrics.py         Prometheus text
page.py            the chat page at /
lifecycle.py       start-up checks, uvicorn, SIGTERM drain
"""

from .lifecycle import serve
from .settings import Settings

__all__ = ["Settings", "serve"]
