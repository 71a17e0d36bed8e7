"""An export child's progress bars (NNCF's rich bars, tqdm's), relayed: one live line per step on a
terminal, one line per finished step otherwise. The input is what the child writes into its pipe."""

from __future__ import annotations

import signal
import sys

from ovchat.build import progress
from ovchat.build.converter import failure_reason, run_relayed
from ovchat.build.progress import STEP, Bar, Relay, parse

# As NNCF draws into a pipe told to act as a terminal: cursor codes between the updates, and the last
# state drawn twice when the bar stops.
RICH = (
    "\x1b[?25lStatistics collection            0% 0/64 • 0:00:00 • -:--:--\n"
    "\x1b[2KStatistics collection ━━━╸          12% 8/64 • 0:00:01 • 0:00:09\n"
    "\x1b[2KStatistics collection ━━━━━━━━━━━ 100% 64/64 • 0:00:07 • 0:00:00\n"
    "\x1b[2KStatistics collection ━━━━━━━━━━━ 100% 64/64 • 0:00:07 • 0:00:00\n\x1b[?25h"
    "INFO:nncf:Statistics of the bitwidth distribution:\n"
    "│ int4_sym, group size 32   │ 20% (4 / 11)                │ 30% (4 / 8)   │\n"
    "\x1b[?25lApplying Weight Compression ━━━━━╸    46% • 0:00:00 • 0:00:01\n"
    "\x1b[2KApplying Weight Compression ━━━━━━━━━━ 100% • 0:00:03 • 0:00:00\n"
)
TQDM = (
    "Loading weights:   0%|          | 0/15 [00:00<?, ?it/s]\r"
    "Loading weights: 100%|██████████| 15/15 [00:02<00:00, 7.1it/s]\n"
)


def test_bars_are_read_from_either_library():
    assert parse("Statistics collection ━━━╸   12% 8/64 • 0:00:01 • 0:00:09") == Bar(
        "Statistics collection", 12, 8, 64, "0:00:01", "0:00:09")
    assert parse("Applying Weight Compression    0% • 0:00:00 • -:--:--") == Bar(
        "Applying Weight Compression", 0, None, None, "0:00:00", None)
    assert parse("Loading weights:  53%|█████▎    | 8/15 [00:01<00:01, 5.2it/s]") == Bar(
        "Loading weights", 53, 8, 15, "00:01", "00:01")
    for other in ("│ float │ 0% (1 / 11) │ 0% (0 / 8) │", "INFO:nncf:Statistics", "", "50% done"):
        assert parse(other) is None


def _relay(chunks: list[str], live: bool) -> tuple[list[str], str]:
    lines: list[str] = []
    drawn: list[str] = []
    relay = Relay(lines.append, drawn.append if live else None)
    for chunk in chunks:
        relay.feed(chunk)
    relay.close()
    return lines, "".join(drawn)


def test_not_on_a_terminal_each_step_is_one_line():
    text = f"{STEP}converting to OpenVINO IR\n" + TQDM + f"{STEP}compressing the weights\n" + RICH
    # However the pipe cuts the text, the same lines come out.
    for size in (len(text), 7, 1):
        lines, drawn = _relay([text[i : i + size] for i in range(0, len(text), size)], live=False)
        assert lines == [
            "  converting to OpenVINO IR",
            "  Loading weights: done in 00:02",
            "  compressing the weights",
            "  Statistics collection: done in 0:00:07",
            "  Applying Weight Compression: done in 0:00:03",
        ] and drawn == ""


def test_on_a_terminal_a_line_is_kept_up_to_date_per_step():
    lines, drawn = _relay([f"{STEP}compressing the weights\n", RICH], live=True)
    assert lines == ["  compressing the weights"]
    assert drawn.split("\n") == [
        "\r\x1b[K  Statistics collection: 0% (0/64), 0:00:00"
        "\r\x1b[K  Statistics collection: 12% (8/64), 0:00:01, about 0:00:09 left"
        "\r\x1b[K  Statistics collection: 100% (64/64), 0:00:07",
        "\r\x1b[K  Applying Weight Compression: 46%, 0:00:00, about 0:00:01 left"
        "\r\x1b[K  Applying Weight Compression: 100%, 0:00:03",
        "",
    ]


def test_a_step_cut_short_is_said_where_it_stopped():
    lines, _ = _relay(["Statistics collection ━━━╸   12% 8/64 • 0:00:01 • 0:00:09\nTraceback (most recent call last):"],
                      live=False)
    assert lines == ["  Statistics collection: 12% (8/64), 0:00:01, about 0:00:09 left"]


def test_endless_output_without_line_breaks_stays_cheap():
    lines, _ = _relay(["x" * 100_000] * 50 + ["\rStatistics collection ━ 100% 64/64 • 0:00:07 • 0:00:00\n"], live=False)
    assert lines == ["  Statistics collection: done in 0:00:07"]


def test_a_killed_child_is_said_to_be_killed(tmp_path):
    # The real thing a 3.8B export meets on a small machine: the kernel kills the converter mid-step.
    script = (f"import os, signal; print({STEP!r} + 'compressing the weights', flush=True); "
              "print('Statistics collection ━ 50% 32/64 • 0:00:07 • 0:00:07', flush=True); "
              "os.kill(os.getpid(), signal.SIGKILL)")
    lines: list[str] = []
    log_path = tmp_path / "export.log"
    code, _ = run_relayed([sys.executable, "-c", script], progress.CHILD_ENV, log_path, lines.append)
    assert code == -signal.SIGKILL
    assert lines == ["  compressing the weights", "  Statistics collection: 50% (32/64), 0:00:07, about 0:00:07 left"]
    assert failure_reason(log_path, code).startswith("killed by signal 9 (out of memory?")
    # A child that fails by itself: its last words, not its bars or steps.
    log_path.write_text(f"{STEP}converting\nValueError: no such model\nLoading weights:  50%|█| 1/2 [00:01<00:01]\n")
    assert failure_reason(log_path, 1) == "ValueError: no such model"


def test_a_step_without_a_bar_still_moves_on_a_terminal():
    # Tracing a 3.8B model draws nothing for minutes: the live line shows the step and its time.
    lines: list[str] = []
    drawn: list[str] = []
    relay = Relay(lines.append, drawn.append)
    relay.begin("exporting")
    relay.tick()
    assert drawn == ["\r\x1b[K  exporting: 0:00"]
    relay.feed(f"{STEP}converting to OpenVINO IR\n")
    relay.tick()
    assert lines == ["  converting to OpenVINO IR"] and drawn[-1] == "\r\x1b[K  converting to OpenVINO IR: 0:00"
    relay.feed("Loading weights:  50%|█| 1/2 [00:01<00:01, 1.0it/s]\r")
    relay.tick()  # a bar is drawn: the tick leaves it alone
    assert drawn[-1].endswith("Loading weights: 50% (1/2), 00:01, about 00:01 left")
    relay.close()
    assert drawn[-1] == "\n"
    quiet = Relay(lines.append)  # not a terminal: no ticking lines
    quiet.begin("exporting")
    quiet.tick()
    assert lines == ["  converting to OpenVINO IR"]


def test_the_childs_peak_memory_is_measured(tmp_path):
    # Its own high-water mark, read while it runs (the number the manifest keeps beside the estimate),
    # not this test process's memory, which a fork would bring into the kernel's rusage.
    script = ("import time; b = bytearray(300_000_000); b[::4096] = b'x' * len(b[::4096]); time.sleep(1.5); "
              "print('done', flush=True)")
    lines: list[str] = []
    code, peak = run_relayed([sys.executable, "-c", script], {}, tmp_path / "log", lines.append)
    assert code == 0 and 300e6 < peak < 400e6
