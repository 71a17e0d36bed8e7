"""`ovchat serve` and `ovchat ovms`: a model behind an OpenAI-compatible HTTP API, from ovchat's own
server or from an OpenVINO Model Server repository."""

from __future__ import annotations

import sys

import click

from .. import catalog
from ..config import (
    DEFAULT_MAX_NEW_TOKENS,
    OVMS_CACHE_SIZE_GB,
    OVMS_MAX_NUM_SEQS,
    SERVE_HOST,
    SERVE_KEEPALIVE_SECONDS,
    SERVE_MAX_CONCURRENCY,
    SERVE_MAX_LOADED,
    SERVE_MAX_QUEUE,
    SERVE_PORT,
)
from ..precision import INFERENCE_PRECISIONS
from .options import (
    _log,
    cache_dir_option,
    concurrency_option,
    device_option,
    kv_precision_option,
    model_option,
    precision_option,
)


def _keep_alive(ctx, param, value):
    from ..server.settings import duration_seconds

    try:
        seconds = duration_seconds(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return None if seconds < 0 else seconds


@click.command()
@click.option(
    "--model",
    "-m",
    "models",
    multiple=True,
    default=[catalog.DEFAULT_MODEL],
    show_default=True,
    envvar="OVCHAT_MODEL",
    help="Alias, folder, .gguf file, exported folder or hub id (env OVCHAT_MODEL). Repeat it to serve several: "
    "the first loads at start, the others when a request names them.",
)
@click.option(
    "--all-exported", is_flag=True, help="Also serve every chat model already exported to the models directory."
)
@click.option(
    "--max-loaded",
    type=click.IntRange(1),
    default=SERVE_MAX_LOADED,
    show_default=True,
    help="Chat models loaded at once; loading another unloads the least recently used idle one.",
)
@click.option(
    "--keep-alive",
    default="5m",
    show_default=True,
    callback=_keep_alive,
    help="How long a model loaded on demand stays loaded when idle (seconds or 5m, 1h; -1: forever).",
)
@click.option(
    "--memory-budget-gb",
    type=click.FloatRange(min=0.1),
    help="Memory the loaded models may take together (default: 80% of RAM); a model that cannot fit is refused.",
)
@click.option("--host", default=SERVE_HOST, show_default=True, help="Address to listen on (loopback by default).")
@click.option(
    "--port", "-p", type=click.IntRange(0, 65535), default=SERVE_PORT, show_default=True, help="0 picks a free port."
)
@click.option(
    "--api-key",
    envvar="OVCHAT_API_KEY",
    help="Require 'Authorization: Bearer KEY' on /v1/* and /metrics (env OVCHAT_API_KEY).",
)
@concurrency_option("max_concurrency", SERVE_MAX_CONCURRENCY)
@click.option(
    "--max-queue",
    type=click.IntRange(0),
    default=SERVE_MAX_QUEUE,
    show_default=True,
    help="Requests waiting for a slot; beyond that, 503 at once.",
)
@click.option(
    "--max-tokens-limit",
    type=click.IntRange(1),
    default=DEFAULT_MAX_NEW_TOKENS,
    show_default=True,
    help="Most new tokens per answer (also the default when a request does not say).",
)
@click.option("--context-length", type=click.IntRange(16), help="Cap the context below the model's (less KV memory).")
@click.option(
    "--kv-cache-gb",
    type=click.IntRange(1),
    help="KV cache size (default: every slot's full context, at most a third of RAM).",
)
@precision_option
@kv_precision_option
@click.option(
    "--batch-invariant/--no-batch-invariant",
    default=True,
    show_default=True,
    help="The same greedy answer at any concurrency (KV cache in the inference precision, no int8 activations); "
    "--no-batch-invariant runs the fastest single-stream precision instead (u8 KV cache, int8 activations "
    "where the CPU has VNNI), and an answer may change with what else is in the batch.",
)
@device_option
@cache_dir_option
@click.option(
    "--allowed-host", "allowed_hosts", multiple=True, help="Extra Host header names to accept (e.g. a LAN name)."
)
@click.option(
    "--cors-origin",
    "cors_origins",
    multiple=True,
    help="Browser origin allowed to call the API (repeatable; none by default).",
)
@click.option("--insecure", "allow_insecure", is_flag=True, help="Allow a non-loopback --host without an API key.")
@click.option(
    "--no-web", "web_ui", flag_value=False, default=True, help="Serve the API only, without the chat page at /."
)
@click.option(
    "--sse-keepalive",
    "keepalive_seconds",
    type=click.FloatRange(min=0.05),
    default=SERVE_KEEPALIVE_SECONDS,
    envvar="OVCHAT_SSE_KEEPALIVE",
    show_default=True,
    hidden=True,
    help="Seconds without a token before a keep-alive comment.",
)
@click.option(
    "--embedding-model",
    help="Also serve this embedding model (an alias such as all-minilm-l6-v2, a folder or a hub id) at "
    "/v1/embeddings and /api/embed.",
)
def serve(
    models: tuple[str, ...],
    all_exported: bool,
    device: str,
    cache_dir: str | None,
    allowed_hosts: tuple,
    cors_origins: tuple,
    embedding_model: str | None,
    **settings,
) -> None:
    """Serve MODEL over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, ...),
    with a chat page for the browser at http://HOST:PORT/.

    \b
    ovchat serve --model phi-3-mini
    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{"model": "phi-3-mini", "messages": [{"role": "user", "content": "Hi"}]}'
    """
    import logging

    from ..server import Settings
    from ..server import serve as run_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = Settings(allowed_hosts=list(allowed_hosts), cors_origins=list(cors_origins), **settings)
    sys.exit(run_server(list(models), device, config, cache_dir=cache_dir, embedding_model=embedding_model,
                        all_exported=all_exported, log=_log))


@click.command()
@click.argument("repository", type=click.Path(file_okay=False))
@model_option
@click.option("--name", help="Model name in OVMS (default: ovchat's name for it).")
@device_option
@concurrency_option("max_num_seqs", OVMS_MAX_NUM_SEQS)
@click.option(
    "--kv-cache-gb",
    type=click.IntRange(1),
    default=OVMS_CACHE_SIZE_GB,
    show_default=True,
    help="KV cache size (OVMS cache_size: OVMS allocates it up front, so it has no automatic size).",
)
@click.option(
    "--precision",
    type=click.Choice(INFERENCE_PRECISIONS),
    help="Inference precision (default: f32, which every CPU runs).",
)
@kv_precision_option
@click.option("--force", is_flag=True, help="Replace this model's folder in the repository.")
def ovms(repository: str, model: str, **options) -> None:
    """Write an OpenVINO Model Server repository for MODEL into REPOSITORY (see docs/scaling.md).

    \b
    ovchat ovms ./ovms-models --model phi-3-mini
    docker run -p 8000:8000 -v $PWD/ovms-models:/models openvino/model_server:latest \\
      --rest_port 8000 --config_path /models/config.json
    """
    from ..ovms import write_repository

    config = write_repository(model, repository, log=_log, **options)
    click.echo(str(config))
    _log(
        f"serve it: docker run -p 8000:8000 -v {config.parent.resolve()}:/models openvino/model_server:latest "
        "--rest_port 8000 --config_path /models/config.json   (clients: http://HOST:8000/v3)"
    )
