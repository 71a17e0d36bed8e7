"""`ovchat serve`: an OpenAI-compatible HTTP server over OpenVINO GenAI's continuous batching.

app.py             routes, guard middleware (Host, API key, body cap), JSON and SSE answers
protocol.py        the OpenAI request shapes, validated strictly; OpenAI-shaped errors
batching.py        admission, the bounded queue, one token stream per request
engine_process.py  the child process that steps the pipeline
detok.py           token ids to text deltas; stop strings
metrics.py         Prometheus text
lifecycle.py       start-up checks, uvicorn, SIGTERM drain
"""

from .app import Settings
from .lifecycle import serve

__all__ = ["Settings", "serve"]
