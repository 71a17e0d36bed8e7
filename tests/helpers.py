"""Helpers shared by the tests."""

from __future__ import annotations

import os
import subprocess
import sys


def run_cli(*args: str, env: dict | None = None, timeout: float = 600):
    """Run the real `ovchat` command in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "ovchat.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
