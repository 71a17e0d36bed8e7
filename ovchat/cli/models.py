"""`ovchat export` and `ovchat models`: making OpenVINO folders and listing what there is."""

from __future__ import annotations

import click

from .. import catalog
from ..build.recipe import WEIGHT_FORMATS
from ..sampling import SamplingParams
from .options import _log

BY_SIZE = "by model size"


@click.command()
@click.argument("model", default=catalog.DEFAULT_MODEL)
@click.option("--output", "-o", type=click.Path(file_okay=False), help="Output folder (default: the models directory).")
@click.option("--weight-format", type=click.Choice(WEIGHT_FORMATS), default=None, show_default="int4")
@click.option(
    "--group-size",
    type=int,
    default=None,
    show_default=BY_SIZE,
    help="int4 group size; layers it does not divide fall back to the largest power of two that does.",
)
@click.option(
    "--ratio", type=float, default=None, show_default=BY_SIZE, help="Share of layers in int4 (the rest int8)."
)
@click.option("--sym/--asym", default=None, show_default="sym", help="Symmetric int4 (no zero points).")
@click.option(
    "--awq/--no-awq",
    default=None,
    show_default=BY_SIZE,
    help="Data-aware int4: AWQ on the shipped calibration text.",
)
@click.option(
    "--scale-estimation/--no-scale-estimation",
    default=None,
    show_default=BY_SIZE,
    help="Data-aware int4: fit each group's scale to the calibration text.",
)
@click.option(
    "--check/--no-check",
    default=None,
    help="Compare perplexity with the float source on a short text, warn on a big loss (default: small models).",
)
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option(
    "--skip-memory-check",
    is_flag=True,
    help="Export even when the estimated peak memory is more than this machine has available (it may be killed).",
)
def export(model: str, output: str | None, force: bool, check: bool | None, skip_memory_check: bool, **recipe) -> None:
    """Export MODEL to OpenVINO IR with int4 weights, by default the recipe for its size.

    Under 2 B parameters: int4 sym group 32 on half of the layers (the rest int8), AWQ + scale estimation
    calibrated on shipped text. From 2 B on (Phi-3-mini): the OpenVINO Phi-3 sample's recipe, int4 sym
    group 128 on 60% of the layers, not calibrated (--group-size 128 --ratio 0.6 --no-awq
    --no-scale-estimation), which fits in 16 GB and exports in minutes. Any option given overrides that
    field. Before converting, the export's peak memory is estimated; one that cannot fit is refused
    (docs/quality.md).
    """
    from ..build.export import export as run_export

    path = run_export(
        model, output, **recipe, force=force, check=check, memory_check=not skip_memory_check, log=_log
    )
    click.echo(str(path))


@click.command()
def models() -> None:
    """List the catalog aliases and the models already exported."""
    from ..build.inventory import exported_models

    click.echo("Aliases:")
    for entry in catalog.CATALOG.values():
        where = entry.repo_id or f"PyPI {entry.wheel[0]}=={entry.wheel[1]}"
        default = " (default)" if entry.alias == catalog.DEFAULT_MODEL else ""
        default += "; an embedding model (serve --embedding-model)" if entry.kind == "embedding" else ""
        card = ""
        if entry.sampling is not None:
            card = f"; its card's chat sampling: {SamplingParams(**entry.sampling).summary()}"
        click.echo(f"  {entry.alias:<14} {where:<36} {entry.description}{default}{card}")
    rows = exported_models()
    click.echo(f"\nExported in {catalog.models_home() / 'models'}:")
    if not rows:
        click.echo("  (none yet: `ovchat export MODEL` or any command with --model makes one)")
    for row in rows:
        click.echo(f"  {row['folder']:<52} {row['size_mb']:>8.1f} MB  {row['recipe']:<22} {row['source']}")
        click.echo(f"    chat sampling: {row['sampling']}" if row["kind"] == "chat" else f"    {row['kind']} model")
    click.echo(
        "\nChat sampling is what `chat`, `serve` and the chat page use unless told otherwise (`generate` is greedy):"
        "\nthe model's generation_config.json where it samples, else its model card's, else ovchat's default."
    )
