"""The command line in a child process, as users run it (`python -m ovchat.cli`, real file
descriptors, a fresh interpreter). The same behaviours are asserted in-process, with more cases, in
test_cli_inprocess.py; here are the ones only a child process shows."""

from __future__ import annotations

import time

import pytest
from helpers import run_cli

pytestmark = pytest.mark.slow


def _fails_cleanly(done, *needles: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    for needle in needles:
        assert needle in done.stderr, done.stderr


@pytest.mark.parametrize("args", [[], ["export"], ["generate"], ["models"]])
def test_help(args):
    done = run_cli(*args, "--help")
    assert done.returncode == 0
    assert "Usage: " in done.stdout


@pytest.mark.parametrize(
    "env",
    [
        {"HF_HUB_OFFLINE": "1"},  # the user said offline
        {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"},  # a hub that does not answer
    ],
)
def test_hub_id_offline_fails_fast_with_advice(env):
    # A fresh process: huggingface_hub reads these variables when it is imported.
    started = time.time()
    done = run_cli("export", "someone/some-model-that-is-not-here", env=env)
    _fails_cleanly(done, "could not download 'someone/some-model-that-is-not-here'", "pass its folder", ".gguf")
    assert time.time() - started < 60


def test_generate_on_tiny_phi3(tiny_phi3_ov):
    done = run_cli("generate", "Can you introduce yourself?", "--model", str(tiny_phi3_ov), "--verbose")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Hello world!\n"
    assert "finish: stop" in done.stderr


def test_a_user_error_is_one_line_and_exit_1(tiny_phi3_ov):
    done = run_cli("generate", "hi", "--model", str(tiny_phi3_ov), "--device", "TPU")
    _fails_cleanly(done, "unknown device 'TPU'", "CPU")
    assert done.returncode == 1
