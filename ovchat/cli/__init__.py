"""The `ovchat` command: a thin layer over the library; each command calls one function.

Answers go to stdout, progress and diagnostics to stderr.

options.py   the options several commands share (model, device, precisions, sampling)
run.py       generate, chat
models.py    export, models
serving.py   serve, ovms
measure.py   bench, eval
"""

from __future__ import annotations

import os
import signal
import sys

import click

from ..errors import OvchatError
from . import measure, models, run, serving
from .options import _log


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
            _log(f"error: {exc}")
            sys.exit(1)
        except click.UsageError as exc:
            command = f"ovchat {exc.ctx.info_name}" if exc.ctx and exc.ctx.parent else "ovchat"
            _log(f"error: {exc.format_message()} (see `{command} --help`)")
            sys.exit(2)
        except KeyboardInterrupt:
            _log("interrupted")
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


for _command in (
    run.generate,
    run.chat,
    models.export,
    models.models,
    serving.serve,
    serving.ovms,
    measure.bench,
    measure.eval_command,
):
    main.add_command(_command)

__all__ = ["main"]
