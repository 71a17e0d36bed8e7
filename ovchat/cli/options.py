"""What the `ovchat` commands share: the diagnostics channel and the options several commands take.

A flag's Python name is the keyword of the library function it is passed to, and its default is
that keyword's named default.
"""

from __future__ import annotations

import click

from .. import catalog
from ..config import DEFAULT_DEVICE, DEFAULT_MAX_NEW_TOKENS
from ..precision import INFERENCE_PRECISIONS, KV_CACHE_PRECISIONS, PRECISION_ENV
from ..sampling import MAX_STOP_STRINGS


def _log(message: str) -> None:
    """Progress and diagnostics: stderr, so stdout carries only the answer."""
    click.echo(message, err=True)


_log.draws_on_stderr = True  # an export may keep a progress line up to date there (ovchat.build.export)


def _options(*decorators):
    def apply(fn):
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn

    return apply


model_option = click.option(
    "--model",
    "-m",
    default=catalog.DEFAULT_MODEL,
    show_default=True,
    envvar="OVCHAT_MODEL",
    help="Alias, folder, .gguf file, exported folder or hub id (env OVCHAT_MODEL).",
)
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


def concurrency_option(name: str, default: int):
    """`--max-concurrency`, passed on as `name`: the server's max_concurrency, OVMS's max_num_seqs."""
    return click.option(
        "--max-concurrency",
        name,
        type=click.IntRange(1, 256),
        default=default,
        show_default=True,
        help="Requests generating at once (continuous batching; OVMS's max_num_seqs).",
    )


def _stop_strings(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    if len(value) > MAX_STOP_STRINGS:
        raise click.BadParameter(f"at most {MAX_STOP_STRINGS} stop strings, not {len(value)}")
    if not all(value):
        raise click.BadParameter("a stop string cannot be empty")
    return value


# Left out, these four take generate's greedy defaults, or for chat the model's recommendation.
MODEL_DEFAULT = "generate: greedy; chat: the model's, see `ovchat models`"


def given(sampling: dict) -> dict:
    """The sampling flags the user passed (those left out are None)."""
    return {name: value for name, value in sampling.items() if value is not None}


# The fields of ovchat.SamplingParams, by their own names.
sampling_options = _options(
    click.option("--max-new-tokens", type=click.IntRange(min=1), default=DEFAULT_MAX_NEW_TOKENS, show_default=True),
    click.option(
        "--stop",
        multiple=True,
        callback=_stop_strings,
        help=f"End the answer before this text (repeatable, up to {MAX_STOP_STRINGS}).",
    ),
    click.option("--temperature", type=click.FloatRange(0, 2), show_default=MODEL_DEFAULT, help="0 is greedy."),
    click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), show_default=MODEL_DEFAULT),
    click.option("--top-k", type=click.IntRange(min=0), show_default=MODEL_DEFAULT, help="0 means no limit."),
    click.option("--repetition-penalty", type=click.FloatRange(0, min_open=True), show_default=MODEL_DEFAULT),
    click.option(
        "--presence-penalty",
        type=click.FloatRange(-2, 2),
        default=0.0,
        show_default=True,
        help="Lower the odds of every token already generated (negative: raise them).",
    ),
    click.option(
        "--frequency-penalty",
        type=click.FloatRange(-2, 2),
        default=0.0,
        show_default=True,
        help="Lower a token's odds by how often it was generated (negative: raise them).",
    ),
    click.option(
        "--no-repeat-ngram-size",
        type=click.IntRange(min=0),
        default=0,
        show_default=True,
        help="Never generate the same N tokens in a row twice (0: off).",
    ),
    click.option("--seed", type=int, help="Random seed for sampling."),
    click.option(
        "--loop-guard/--no-loop-guard",
        default=True,
        show_default=True,
        help="End an answer that has started repeating itself.",
    ),
)

# What generate and chat share: the model, where it runs, and how tokens are picked.
run_options = _options(
    model_option,
    click.option("--system", help="System prompt."),
    device_option,
    precision_option,
    kv_precision_option,
    cache_dir_option,
    sampling_options,
    click.option(
        "--prompt-lookup",
        is_flag=True,
        help="Draft tokens from the prompt: ~2x faster answers that quote or edit it, ~15% slower otherwise.",
    ),
)
