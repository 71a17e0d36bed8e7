"""`ovchat bench` and `ovchat eval`: how fast a model runs here, and how close it stays to its original."""

from __future__ import annotations

import sys

import click

from .. import bench as benchmark
from .. import catalog
from ..eval import scoring
from ..precision import INFERENCE_PRECISIONS
from .options import _log, cache_dir_option, device_option, kv_precision_option, model_option, precision_option


def _int_list(ctx, param, value: str) -> list[int]:
    try:
        numbers = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated token counts like 32,512, not {value!r}") from None
    if not numbers or min(numbers) < 1:
        raise click.BadParameter("every prompt length must be a positive integer")
    return numbers


def _progress_bar(label: str):
    """A progress bar on stderr and the `progress(done, total)` callback that moves it."""
    bar = click.progressbar(length=1, label=label, file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.length = total
        bar.update(done - bar.pos)

    return bar, progress


@click.command()
@model_option
@click.option(
    "--prompt-tokens",
    default=",".join(str(n) for n in benchmark.DEFAULT_PROMPT_TOKENS),
    show_default=True,
    callback=_int_list,
    help="Prompt lengths to measure, in tokens (exact).",
)
@click.option(
    "--new-tokens",
    type=click.IntRange(1),
    default=benchmark.DEFAULT_NEW_TOKENS,
    show_default=True,
    help="Tokens generated per run (end-of-sequence ignored).",
)
@click.option("--runs", type=click.IntRange(1), default=benchmark.DEFAULT_RUNS, show_default=True)
@click.option(
    "--warmup",
    type=click.IntRange(0),
    default=benchmark.DEFAULT_WARMUP,
    show_default=True,
    help="Runs made and discarded first.",
)
@device_option
@precision_option
@kv_precision_option
@cache_dir_option
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the report as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Also write a PNG chart.")
def bench(model: str, json_path: str | None, plot_path: str | None, **options) -> None:
    """Measure MODEL here: load, time to first token, prefill and decode rates, peak memory."""
    import json

    bar, progress = _progress_bar("measuring")
    with bar:
        report = benchmark.run(model, progress=progress, log=_log, **options)
    click.echo(benchmark.format_table(report))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=1)
    if plot_path:
        benchmark.plot(report, plot_path)


@click.command("eval")
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
@click.option(
    "--max-tokens",
    type=click.IntRange(2),
    default=scoring.DEFAULT_MAX_TOKENS,
    show_default=True,
    help="Tokens of the text used.",
)
@click.option("--window", type=click.IntRange(2), help="Tokens per window (default: min(context, 512)).")
@click.option("--stride", type=click.IntRange(1), help="Tokens between window starts (default: half a window).")
@click.option(
    "--prompt-limit",
    type=click.IntRange(0),
    default=scoring.DEFAULT_PROMPT_LIMIT,
    show_default=True,
    help="Prompts answered (0: none).",
)
@click.option(
    "--new-tokens",
    type=click.IntRange(1),
    default=scoring.DEFAULT_NEW_TOKENS,
    show_default=True,
    help="Most tokens per answer.",
)
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

    from ..eval import report
    from ..eval.evaluate import evaluate

    bar, progress = _progress_bar("evaluating")
    with bar:
        result = evaluate(list(models), progress=progress, log=_log, **options)
    click.echo(report.format_table(result))
    if worst:
        click.echo(report.format_worst(result, worst))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=1)
    if plot_path:
        report.plot(result, plot_path)
