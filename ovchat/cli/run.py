"""`ovchat generate` and `ovchat chat`: a model's answers on the terminal."""

from __future__ import annotations

import dataclasses
import sys

import click

from ..config import format_ms
from ..errors import OvchatError
from ..sampling import SamplingParams
from .options import _log, given, run_options


@click.command()
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
    from ..loader import load

    if raw and system is not None:
        raise OvchatError("--system has no effect with --raw (no chat template is applied); drop one of them")
    handle = load(
        model, device=device, precision=precision, kv_cache_precision=kv_cache_precision, cache_dir=cache_dir,
        prompt_lookup=prompt_lookup, log=_log,
    )
    last = None
    pieces = []
    for last in handle.stream_generate(prompt, system=system, raw=raw, sampling=SamplingParams(**given(sampling))):
        if stream:
            click.echo(last.text, nl=False)
            sys.stdout.flush()
        else:
            pieces.append(last.text)
    click.echo("".join(pieces))
    if last is not None and last.stopped_loop:
        _log("[stopped a repeating answer]")
    if verbose and last is not None:
        rate = f"{last.tokens_per_second:.1f} tok/s" if last.tokens_per_second else "n/a"
        _log(
            f"[{last.prompt_tokens} prompt tokens, {last.token_count} new, "
            f"first token {format_ms(last.time_to_first_token)}, {rate}, "
            f"finish: {last.finish_reason}; {handle.precision}]"
        )


@click.command()
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
    from ..chat import answer_piped, repl
    from ..loader import load
    from ..session import ChatSession

    piped = not sys.stdin.isatty()
    text = sys.stdin.read() if piped else ""
    handle = load(
        model, device=device, precision=precision, kv_cache_precision=kv_cache_precision, cache_dir=cache_dir,
        prompt_lookup=prompt_lookup, log=_log,
    )
    session = ChatSession(handle, system=system, sampling=dataclasses.replace(handle.chat_sampling, **given(sampling)))
    if piped:
        answer_piped(session, text, verbose)
    else:
        repl(session, verbose)
