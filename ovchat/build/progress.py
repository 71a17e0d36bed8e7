"""What an export's child process is doing, relayed to the person waiting for it.

The child (optimum-intel, NNCF, transformers) draws its own progress bars: NNCF's with rich, the
loaders' with tqdm. They are told to draw as on a terminal (so every update reaches the pipe), and
each update is parsed here: on a terminal, one line kept up to date per step (name, share done,
time spent, time left); otherwise one line per finished step. Everything the child prints still goes
to its log file, verbatim. The child names its own long steps that draw no bar with a STEP line.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

STEP = "ovchat-step: "  # a child's line announcing a step that draws no bar (converting, saving)
HOLD = 4096  # characters kept of a line not yet ended (a bar is ~120): endless lines stay cheap
# What the child's libraries need to draw live bars into a pipe (rich reads these; tqdm always does).
CHILD_ENV = {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "NO_COLOR": "1", "COLUMNS": "120"}

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
# NNCF (rich): "Applying Scale Estimation ━━━━╸     12% 3/26 • 0:00:04 • 0:00:30" (the count may be absent)
_RICH = re.compile(
    r"^(?P<name>\S.*?)\s+[━╸╺ ]*\s*(?P<pct>\d+)%(?: (?P<done>\d+)/(?P<total>\d+))?"
    r" • (?P<spent>[\d:]+) • (?P<left>[-\d:]+)"
)
# tqdm: "Loading weights:  53%|█████▎    | 8/15 [00:01<00:01, 5.2it/s]"
_TQDM = re.compile(
    r"^(?P<name>[^:|]+?):\s+(?P<pct>\d+)%\|[^|]*\|\s*(?P<done>\d+)/(?P<total>\d+) \[(?P<spent>[\d:]+)<(?P<left>[\d:?]+)"
)


@dataclass
class Bar:
    name: str
    pct: int
    done: int | None
    total: int | None
    spent: str
    left: str | None  # None while unknown

    def line(self) -> str:
        count = f" ({self.done}/{self.total})" if self.total else ""
        left = f", about {self.left} left" if self.left and self.pct < 100 else ""
        return f"  {self.name}: {self.pct}%{count}, {self.spent}{left}"


def strip_codes(text: str) -> str:
    """The text without terminal control sequences."""
    return _ANSI.sub("", text)


def parse(fragment: str) -> Bar | None:
    """A progress bar's state from one line of a child's output, or None when it is not one."""
    for pattern in (_RICH, _TQDM):
        match = pattern.match(fragment.strip())
        if match:
            g = match.groupdict()
            known = g["left"] if g["left"] and "?" not in g["left"] and "-" not in g["left"] else None
            done, total = (int(g["done"]), int(g["total"])) if g["done"] else (None, None)
            return Bar(g["name"].strip(), int(g["pct"]), done, total, g["spent"], known)
    return None


class Relay:
    """Feed it the child's output as it arrives; it calls `log` with whole lines (steps that started or
    finished) and, when `live`, `draw` with the line kept up to date (no newline)."""

    def __init__(self, log: Callable[[str], None], live: Callable[[str], None] | None = None):
        self.log, self.live = log, live
        self.pending = ""
        self.bar: Bar | None = None  # the step being drawn
        self.finished: str | None = None  # the step that just ended (rich draws its last state twice)
        self.drawn = False  # a live line is on the screen, not yet ended
        self.step: str | None = None  # the last named step (a STEP line), drawn with its time while no bar runs
        self.step_started = 0.0

    def feed(self, text: str) -> None:
        # Control codes hold no line breaks: they are removed from whole fragments, never cut in two.
        *fragments, pending = re.split(r"[\r\n]", self.pending + text)
        self.pending = pending[-HOLD:]
        for fragment in fragments:
            self._take(_ANSI.sub("", fragment))

    def _take(self, fragment: str) -> None:
        if fragment.startswith(STEP):
            self._finish()
            self._end_live()
            self.begin(fragment[len(STEP):].strip())
            self.log(f"  {self.step}")
            return
        bar = parse(fragment)
        if bar is None or (bar.name == self.finished and bar.pct >= 100):
            return
        self.finished = None
        if self.bar is not None and bar.name != self.bar.name:
            self._finish()
        self.bar = bar
        if self.live is not None:
            self.live("\r\x1b[K" + bar.line())
            self.drawn = True
        if bar.pct >= 100:
            self._finish()

    def begin(self, step: str) -> None:
        """Name the step under way (already said to the person) until the child names one."""
        self.step, self.step_started = step, time.monotonic()

    def tick(self) -> None:
        """Called about every second: a named step that draws no bar still shows that it is alive."""
        if self.live is None or self.bar is not None or self.step is None:
            return
        spent = int(time.monotonic() - self.step_started)
        self.live(f"\r\x1b[K  {self.step}: {spent // 60}:{spent % 60:02d}")
        self.drawn = True

    def _finish(self) -> None:
        """The step drawn so far is over: end its live line, or say it once."""
        bar, self.bar = self.bar, None
        if bar is None:
            return
        self.finished = bar.name
        if self.drawn:
            self._end_live()
        else:
            self.log(f"  {bar.name}: done in {bar.spent}" if bar.pct >= 100 else bar.line())

    def _end_live(self) -> None:
        if self.drawn and self.live is not None:
            self.live("\n")
        self.drawn = False

    def close(self) -> None:
        if self.pending:
            self._take(_ANSI.sub("", self.pending))
            self.pending = ""
        self._finish()
        self._end_live()
