"""The `ovchat` command: a thin layer over the library; each command calls one function.

Answers go to stdout, progress and diagnostics to stderr.
"""

from __future__ import annotations

import os
import signal
import sys

import click

from . import catalog
from .build.recipe import WEIGHT_FORMATS, Recipe
from .config import DEFAULT_DEVICE, DEFAULT_MAX_NEW_TOKENS, OVMS_CACHE_SIZE_GB, format_ms
from .errors import OvchatError
from .precision import INFERENCE_PRECISIONS, KV_CACHE_PRECISIONS, PRECISION_ENV
from .sampling import SamplingParams


def _say(message: str) -> None:
    click.echo(message, err=True)


def _terminate(signum, frame) -> None:
    # SIGTERM unwinds like Ctrl-C, so child processes (the exporter) are killed and temp folders go.
    raise KeyboardInterrupt


class _Group(click.Group):
    """Turns user errors into one line on stderr and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context):
        signal.signal(signal.SIGTERM, _terminate)
        try:
            return super().invoke(ctx)
        except OvchatError as exc:
            _say(f"error: {exc}")
            sys.exit(1)
        except click.UsageError as exc:
            command = f"ovchat {exc.ctx.info_name}" if exc.ctx and exc.ctx.parent else "ovchat"
            _say(f"error: {exc.format_message()} (see `{command} --help`)")
            sys.exit(2)
        except KeyboardInterrupt:
            _say("interrupted")
            sys.exit(130)
        except BrokenPipeError:  # `ovchat chat < q.txt | head`: the reader left; no traceback
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ovchat")
def main() -> None:
    """Run local chat models fast on your CPU with OpenVINO.

    \b
    Get started (the default model, SmolLM2-135M-Instruct, works offline):
      ovchat generate "Can you introduce yourself?"
      ovchat export phi-3-mini            # int4 OpenVINO IR (ovchat's recipe; see export --help)
      ovchat generate "Hi" --model phi-3-mini
      ovchat models                       # aliases and what is already exported

    MODEL is an alias, a Hugging Face folder, a .gguf file, an exported folder or a hub id.
    Exports are cached under $OVCHAT_HOME (default ~/.cache/ovchat).
    """


model_option = click.option(
    "--model",
    "-m",
    default=catalog.DEFAULT_MODEL,
    show_default=True,
    envvar="OVCHAT_MODEL",
    help="Alias, folder, .gguf file, exported folder or hub id (env OVCHAT_MODEL).",
)


@main.command()
@click.argument("model", default=catalog.DEFAULT_MODEL)
@click.option("--output", "-o", type=click.Path(file_okay=False), help="Output folder (default: the models directory).")
@click.option("--weight-format", type=click.Choice(WEIGHT_FORMATS), default=Recipe.weight_format, show_default=True)
@click.option(
    "--group-size",
    type=int,
    default=Recipe.group_size,
    show_default=True,
    help="int4 group size; layers it does not divide fall back to the largest power of two that does.",
)
@click.option(
    "--ratio", type=float, default=Recipe.ratio, show_default=True, help="Share of layers in int4 (the rest int8)."
)
@click.option("--sym/--asym", default=Recipe.sym, show_default=True, help="Symmetric int4 (no zero points).")
@click.option(
    "--awq/--no-awq",
    default=None,
    show_default="on for int4",
    help="Data-aware int4: AWQ on the shipped calibration text.",
)
@click.option(
    "--scale-estimation/--no-scale-estimation",
    default=None,
    show_default="on for int4",
    help="Data-aware int4: fit each group's scale to the calibration text.",
)
@click.option(
    "--check/--no-check",
    default=None,
    help="Compare perplexity with the float source on a short text, warn on a big loss (default: small models).",
)
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
def export(model: str, output: str | None, force: bool, check: bool | None, **recipe) -> None:
    """Export MODEL to OpenVINO IR (default: int4 sym group 32 on half of the layers, AWQ + scale estimation).

    The Phi-3 sample's recipe: --group-size 128 --ratio 0.6 --no-awq --no-scale-estimation (faster to export,
    less accurate; see docs/quality.md).
    """
    from .build.export import export as run_export

    path = run_export(model, output, **recipe, force=force, check=check, log=_say)
    click.echo(str(path))


def _options(*decorators):
    def apply(fn):
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn

    return apply


# What generate and chat share: the model, where it runs, and how tokens are picked.
device_option = click.option(
    "--device",
    "-d",
    default=DEFAULT_DEVICE,
    show_default=True,
    envvar="OVCHAT_DEVICE",
    help="OpenVINO device: CPU, GPU, NPU or AUTO (env OVCHAT_DEVICE).",
)
cache_dir_option = click.option(
    "--cache-dir", help='Compiled-model cache folder ("" turns it off; default: in the models directory).'
)
concurrency_option = click.option(
    "--max-concurrency",
    type=click.IntRange(1, 256),
    default=8,
    show_default=True,
    help="Requests generating at once (continuous batching; OVMS's max_num_seqs).",
)
precision_option = click.option(
    "--precision",
    type=click.Choice(INFERENCE_PRECISIONS),
    envvar=PRECISION_ENV,
    help=f"Inference precision (default: the fastest measured for this CPU; env {PRECISION_ENV}).",
)
kv_precision_option = click.option(
    "--kv-cache-precision",
    type=click.Choice(KV_CACHE_PRECISIONS),
    help="KV cache precision (default: u8 for generate, chat and bench; the inference precision for serve, "
    "the same answer at any concurrency).",
)

run_options = _options(
    model_option,
    click.option("--system", help="System prompt."),
    device_option,
    precision_option,
    kv_precision_option,
    cache_dir_option,
    click.option("--max-new-tokens", type=click.IntRange(min=1), default=DEFAULT_MAX_NEW_TOKENS, show_default=True),
    click.option("--temperature", type=click.FloatRange(0, 2), default=0.0, show_default=True, help="0 is greedy."),
    click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True),
    click.option("--top-k", type=click.IntRange(min=0), default=0, show_default=True, help="0 means no limit."),
    click.option("--repetition-penalty", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True),
    click.option("--seed", type=int, help="Random seed for sampling."),
    click.option(
        "--prompt-lookup",
        is_flag=True,
        help="Draft tokens from the prompt: ~2x faster answers that quote or edit it, ~15% slower otherwise.",
    ),
)


@main.command()
@click.argument("prompt")
@run_options
@click.option("--stream/--no-stream", default=True, show_default=True, help="Print the answer as it is generated.")
@click.option("--raw", is_flag=True, help="Send PROMPT as is, without the chat template.")
@click.option("--verbose", "-v", is_flag=True, help="Print timings on stderr.")
def generate(
    prompt: str,
    model: str,
    system: str | None,
    device: str,
    precision: str | None,
    kv_cache_precision: str | None,
    cache_dir: str | None,
    stream: bool,
    raw: bool,
    verbose: bool,
    prompt_lookup: bool,
    **sampling,
) -> None:
    """Answer PROMPT once with MODEL's chat template, streaming the answer to stdout."""
    from .loader import load

    if raw and system is not None:
        raise OvchatError("--system has no effect with --raw (no chat template is applied); drop one of them")
    handle = load(
        model, device=device, precision=precision, kv_cache_precision=kv_cache_precision, cache_dir=cache_dir,
        prompt_lookup=prompt_lookup, log=_say,
    )
    last = None
    pieces = []
    for last in handle.stream_generate(prompt, system=system, raw=raw, sampling=SamplingParams(**sampling)):
        if stream:
            click.echo(last.text, nl=False)
            sys.stdout.flush()
        else:
            pieces.append(last.text)
    click.echo("".join(pieces))
    if verbose and last is not None:
        rate = f"{last.tokens_per_second:.1f} tok/s" if last.tokens_per_second else "n/a"
        _say(
            f"[{last.prompt_tokens} prompt tokens, {last.token_count} new, "
            f"first token {format_ms(last.time_to_first_token)}, {rate}, "
            f"finish: {last.finish_reason}; {handle.precision}]"
        )


@main.command()
@run_options
@click.option("--verbose", "-v", is_flag=True, help="Print a stats line on stderr after each answer.")
def chat(
    model: str,
    system: str | None,
    device: str,
    precision: str | None,
    kv_cache_precision: str | None,
    cache_dir: str | None,
    verbose: bool,
    prompt_lookup: bool,
    **sampling,
) -> None:
    """Chat with MODEL: streaming answers, a conversation it remembers, /help for commands.

    With standard input from a pipe or file, the whole input is one message and only the answer is
    printed: echo "hi" | ovchat chat
    """
    from .chat import answer_piped, repl
    from .loader import load
    from .session import ChatSession

    piped = not sys.stdin.isatty()
    text = sys.stdin.read() if piped else ""
    handle = load(
        model, device=device, precision=precision, kv_cache_precision=kv_cache_precision, cache_dir=cache_dir,
        prompt_lookup=prompt_lookup, log=_say,
    )
    session = ChatSession(handle, system=system, sampling=SamplingParams(**sampling))
    if piped:
        answer_piped(session, text, verbose)
    else:
        repl(session, verbose)


@main.command()
@model_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default).")
@click.option(
    "--port", "-p", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0 picks a free port."
)
@click.option(
    "--api-key",
    envvar="OVCHAT_API_KEY",
    help="Require 'Authorization: Bearer KEY' on /v1/* and /metrics (env OVCHAT_API_KEY).",
)
@concurrency_option
@click.option(
    "--max-queue",
    type=click.IntRange(0),
    default=32,
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
@click.option("--allowed-host", multiple=True, help="Extra Host header names to accept (e.g. a LAN name).")
@click.option(
    "--cors-origin", multiple=True, help="Browser origin allowed to call the API (repeatable; none by default)."
)
@click.option("--insecure", is_flag=True, help="Allow a non-loopback --host without an API key.")
@click.option(
    "--no-web", "web_ui", flag_value=False, default=True, help="Serve the API only, without the chat page at /."
)
@click.option(
    "--sse-keepalive",
    "keepalive_seconds",
    type=click.FloatRange(min=0.05),
    default=10.0,
    envvar="OVCHAT_SSE_KEEPALIVE",
    show_default=True,
    hidden=True,
    help="Seconds without a token before a keep-alive comment.",
)
def serve(
    model: str, device: str, cache_dir: str | None, allowed_host: tuple, cors_origin: tuple, insecure: bool, **options
) -> None:
    """Serve MODEL over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, ...),
    with a chat page for the browser at http://HOST:PORT/.

    \b
    ovchat serve --model phi-3-mini
    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{"model": "phi-3-mini", "messages": [{"role": "user", "content": "Hi"}]}'
    """
    import logging

    from .server import Settings
    from .server import serve as run_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(
        allowed_hosts=list(allowed_host),
        cors_origins=list(cors_origin),
        allow_insecure=insecure,
        **options,
    )
    sys.exit(run_server(model, device, settings, cache_dir=cache_dir, say=_say))


def _int_list(ctx, param, value: str) -> list[int]:
    try:
        numbers = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated token counts like 32,512, not {value!r}") from None
    if not numbers or min(numbers) < 1:
        raise click.BadParameter("every prompt length must be a positive integer")
    return numbers


@main.command()
@model_option
@click.option(
    "--prompt-tokens",
    default="32,512,2048",
    show_default=True,
    callback=_int_list,
    help="Prompt lengths to measure, in tokens (exact).",
)
@click.option(
    "--new-tokens",
    type=click.IntRange(1),
    default=128,
    show_default=True,
    help="Tokens generated per run (end-of-sequence ignored).",
)
@click.option("--runs", type=click.IntRange(1), default=5, show_default=True)
@click.option("--warmup", type=click.IntRange(0), default=1, show_default=True, help="Runs made and discarded first.")
@device_option
@precision_option
@kv_precision_option
@cache_dir_option
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the report as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Also write a PNG chart.")
def bench(model: str, json_path: str | None, plot_path: str | None, **options) -> None:
    """Measure MODEL here: load, time to first token, prefill and decode rates, peak memory."""
    import json

    from . import bench as measure

    with click.progressbar(length=1, label="measuring", file=sys.stderr) as bar:

        def progress(done: int, total: int) -> None:
            bar.length = total
            bar.update(done - bar.pos)

        report = measure.run(model, progress=progress, log=_say, **options)
    click.echo(measure.format_table(report))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=1)
    if plot_path:
        measure.plot(report, plot_path)


@main.command("eval")
@click.option(
    "--model",
    "-m",
    "models",
    multiple=True,
    default=[catalog.DEFAULT_MODEL],
    show_default=True,
    help="Model to evaluate (repeat to compare several in one table).",
)
@click.option("--reference", "-r", help="What to compare with (default: the original the export was made from, fp32).")
@click.option("--text", type=click.Path(dir_okay=False), help="Text for perplexity (default: shipped Alice chapters).")
@click.option("--prompts", type=click.Path(dir_okay=False), help='JSON lines {"prompt": ...} (default: 58 shipped).')
@click.option("--max-tokens", type=click.IntRange(2), default=4096, show_default=True, help="Tokens of the text used.")
@click.option("--window", type=click.IntRange(2), help="Tokens per window (default: min(context, 512)).")
@click.option("--stride", type=click.IntRange(1), help="Tokens between window starts (default: half a window).")
@click.option(
    "--prompt-limit", type=click.IntRange(0), default=16, show_default=True, help="Prompts answered (0: none)."
)
@click.option("--new-tokens", type=click.IntRange(1), default=128, show_default=True, help="Most tokens per answer.")
@click.option("--worst", type=click.IntRange(0), default=3, show_default=True, help="Least similar answers to show.")
@device_option
@click.option(
    "--precision",
    type=click.Choice(INFERENCE_PRECISIONS),
    help="Precision the exported models compute in (default: f32 with an f32 KV cache on every CPU).",
)
@click.option(
    "--as-generate",
    "purpose",
    flag_value="speed",
    default="reference",
    help="Score the models as `generate` runs them (a u8 KV cache, int8 activations where the CPU has VNNI) "
    "instead of in the reference's precision: what the fast path costs.",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the report as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Also write a PNG chart.")
def eval_command(models: tuple, worst: int, json_path: str | None, plot_path: str | None, **options) -> None:
    """How close MODEL stays to its original: perplexity, next-token agreement, answer similarity.

    \b
    ovchat eval                                   # the default int4 export vs its fp32 original
    ovchat eval -m phi-3-mini -m ./phi3-int8-ov --json q.json --plot q.png
    """
    import json

    from .eval import report
    from .eval.evaluate import evaluate

    with click.progressbar(length=1, label="evaluating", file=sys.stderr) as bar:

        def progress(done: int, total: int) -> None:
            bar.length = total
            bar.update(done - bar.pos)

        result = evaluate(list(models), progress=progress, log=_say, **options)
    click.echo(report.format_table(result))
    if worst:
        click.echo(report.format_worst(result, worst))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=1)
    if plot_path:
        report.plot(result, plot_path)


@main.command()
@click.argument("repository", type=click.Path(file_okay=False))
@model_option
@click.option("--name", help="Model name in OVMS (default: ovchat's name for it).")
@device_option
@concurrency_option
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
def ovms(repository: str, model: str, max_concurrency: int, **options) -> None:
    """Write an OpenVINO Model Server repository for MODEL into REPOSITORY (see docs/scaling.md).

    \b
    ovchat ovms ./ovms-models --model phi-3-mini
    docker run -p 8000:8000 -v $PWD/ovms-models:/models openvino/model_server:latest \\
      --rest_port 8000 --config_path /models/config.json
    """
    from .ovms import write_repository

    config = write_repository(model, repository, max_num_seqs=max_concurrency, log=_say, **options)
    click.echo(str(config))
    _say(
        f"serve it: docker run -p 8000:8000 -v {config.parent.resolve()}:/models openvino/model_server:latest "
        "--rest_port 8000 --config_path /models/config.json   (clients: http://HOST:8000/v3)"
    )


@main.command()
def models() -> None:
    """List the catalog aliases and the models already exported."""
    from .build.inventory import exported_models

    click.echo("Aliases:")
    for entry in catalog.CATALOG.values():
        where = entry.repo_id or f"PyPI {entry.wheel[0]}=={entry.wheel[1]}"
        default = " (default)" if entry.alias == catalog.DEFAULT_MODEL else ""
        click.echo(f"  {entry.alias:<14} {where:<36} {entry.description}{default}")
    rows = exported_models()
    click.echo(f"\nExported in {catalog.models_home() / 'models'}:")
    if not rows:
        click.echo("  (none yet: `ovchat export MODEL` or any command with --model makes one)")
    for row in rows:
        click.echo(f"  {row['folder']:<52} {row['size_mb']:>8.1f} MB  {row['recipe']:<22} {row['source']}")


if __name__ == "__main__":
    main()
