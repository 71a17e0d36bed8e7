"""ovchat's named defaults: every command, the library and the server read them from here.

A flag's default is the keyword's default: `--max-new-tokens` and `max_new_tokens=` agree because
both say `DEFAULT_MAX_NEW_TOKENS`.
"""

from __future__ import annotations

from pathlib import Path

# The texts ovchat ships (evaluation, calibration, chat prompts): inside the package, installed with it.
DATA = Path(__file__).resolve().parent / "data"

# -- loading and generating ---------------------------------------------------------------------------
DEFAULT_DEVICE = "CPU"
DEFAULT_MAX_NEW_TOKENS = 1024  # the OpenVINO Phi-3 chat sample's budget
DEFAULT_CONTEXT_LENGTH = 2048  # when config.json does not say
# The OpenVINO Phi-3 chat sample's runtime config: lowest latency for one user.
LATENCY_CONFIG = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
# Prompt-lookup decoding: up to 5 drafted tokens per step, found by matching the last 3 tokens
# earlier in the text (the settings of OpenVINO GenAI's prompt-lookup sample).
PROMPT_LOOKUP_TOKENS = 5
PROMPT_LOOKUP_NGRAM = 3

# -- exporting ----------------------------------------------------------------------------------------
EXPORT_TASK = "text-generation-with-past"
# Free disk an export asks for before it starts, as a multiple of its source: GGUF weights are
# dequantized to float32 first (~8x a 4-bit file); a float folder is read once and written smaller.
DISK_FACTOR_GGUF = 10
DISK_FACTOR_FOLDER = 2
DISK_MARGIN_BYTES = 64 << 20

# -- serving (`ovchat serve`) -------------------------------------------------------------------------
SERVE_HOST = "127.0.0.1"
SERVE_PORT = 8000
SERVE_MAX_CONCURRENCY = 8  # sequences in one batch
SERVE_MAX_QUEUE = 32  # requests waiting beyond those
SERVE_MAX_BODY_BYTES = 4 * 1024 * 1024
SERVE_SHUTDOWN_TIMEOUT = 60.0  # seconds in-flight requests get after a signal
SERVE_KEEPALIVE_SECONDS = 10.0  # SSE comment lines while a request waits, so proxies keep the stream
SERVE_STALL_SECONDS = 120.0  # /health says "stalled" when running sequences made no progress this long
SERVE_KV_CACHE_RAM_SHARE = 1 / 3  # the KV cache's default ceiling: this share of the machine's memory
SERVE_MEMORY_SHARE = 0.8  # the models a server holds at once stay within this share of memory (--memory-budget-gb)
SERVE_MAX_LOADED = 3  # chat models loaded at once (--max-loaded)
SERVE_KEEP_ALIVE_SECONDS = 300.0  # a model loaded on demand is unloaded after this long idle (--keep-alive)

# -- OVMS repositories (`ovchat ovms`) ----------------------------------------------------------------
OVMS_MAX_NUM_SEQS = 8
OVMS_CACHE_SIZE_GB = 2  # OVMS sizes its KV cache up front; 2 GB holds 8 SmolLM2-size contexts
OVMS_PRECISION = "f32"  # OVMS may run on another CPU kind: f32 loads on every one


def format_ms(seconds: float | None) -> str:
    """A time to first token as people read it: "412 ms", or "n/a" when there was none."""
    return f"{seconds * 1000:.0f} ms" if seconds is not None else "n/a"
