"""optimum-intel's exporter as ovchat runs it: in a child process whose progress is relayed to the
person waiting (ovchat.build.progress), whose peak memory is measured, and whose failure is said in
a line (a kill by the kernel, most often for want of memory, or its last words)."""

from __future__ import annotations

import codecs
import json
import os
import re
import select
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from ..config import EXPORT_TASK
from ..errors import OvchatError
from . import progress
from .recipe import Recipe

Log = Callable[[str], None]


def optimum_converter(source_dir: Path, out_dir: Path, recipe: Recipe, log_path: Path, log: Log) -> int:
    # optimum-intel's own command, in a child process: exactly the sample's export, and the memory
    # of the float model is returned to the system when it ends.
    if recipe.data_aware:
        recipe_json = json.dumps(asdict(recipe))
        cmd = [sys.executable, "-m", "ovchat.build.calibrate", str(source_dir), str(out_dir), recipe_json]
        log(f"exporting with optimum-intel ({recipe.tag}, calibrated on shipped text)")
    else:
        cmd = [sys.executable, "-m", "optimum.commands.optimum_cli", "export", "openvino", "-m", str(source_dir)]
        cmd += ["--task", EXPORT_TASK, *recipe.optimum_args(), str(out_dir)]
        log(f"exporting with optimum-intel ({recipe.tag})")
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore", **progress.CHILD_ENV}
    returncode, peak = run_relayed(cmd, env, log_path, log)
    if returncode != 0:
        reason = failure_reason(log_path, returncode)
        raise OvchatError(f"optimum-intel could not export {source_dir}: {reason} (full log: {log_path})")
    log_path.unlink()  # kept only when it explains a failure
    return peak


def failure_reason(log_path: Path, returncode: int) -> str:
    """Why a converter child failed, in a line: its signal, or its last words (not a bar, not a step)."""
    if returncode < 0:  # a signal: the kernel's out-of-memory killer, most often
        return f"killed by signal {-returncode} (out of memory? --no-awq --no-scale-estimation needs less)"
    text = progress.strip_codes(log_path.read_text(errors="replace"))
    lines = [
        ln for ln in re.split(r"[\r\n]", text)
        if ln.strip() and progress.parse(ln) is None and not ln.startswith(progress.STEP)
    ]
    return lines[-1].strip() if lines else f"exit status {returncode}"


def run_relayed(cmd: list[str], env: dict, log_path: Path, log: Log) -> tuple[int, int]:
    """Run the converter's child: its output into `log_path`, its progress to the person (live on a
    terminal, a line per step otherwise). Returns its exit status and its peak resident memory in
    bytes (read while it runs); an interrupt kills it."""
    # Live lines only for a log that writes to this terminal (the CLI's says so): a library caller's
    # log (print_nothing by default) decides what it shows.
    terminal = getattr(log, "draws_on_stderr", False) and sys.stderr.isatty()

    def draw(text: str) -> None:
        sys.stderr.write(text)
        sys.stderr.flush()

    relay = progress.Relay(log, draw if terminal else None)
    relay.begin("exporting")  # until the child names its own steps (optimum-cli's never does)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pipe = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}
    with open(log_path, "w") as fh, subprocess.Popen(cmd, env=env, **pipe) as child:
        try:
            peak = 0
            while True:
                peak = max(peak, _high_water(child.pid))
                # A second without output still moves the live line: minutes of tracing draw no bar.
                if not select.select([child.stdout], [], [], 1.0)[0]:
                    relay.tick()
                    continue
                chunk = child.stdout.read1(65536)
                if not chunk:
                    break
                text = decoder.decode(chunk)
                fh.write(text)
                fh.flush()
                relay.feed(text)
            relay.close()
            return child.wait(), peak
        except BaseException:  # Ctrl-C, a kill of ours: the child goes too
            child.kill()
            child.wait()
            relay.close()
            raise


def _high_water(pid: int) -> int:
    """A running process's peak resident memory in bytes (VmHWM; the kernel's rusage would count the
    parent's memory at fork), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
