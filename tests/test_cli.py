"""The command line in a child process, as users run it: help for every command, and bad input answered
with one clear line, never a traceback. (test_cli_inprocess.py asserts the same in the fast tier.)"""

from __future__ import annotations

import time

import pytest
from helpers import run_cli

from ovchat import catalog

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("args", [[], ["export"], ["generate"], ["models"]])
def test_help(args):
    done = run_cli(*args, "--help")
    assert done.returncode == 0
    assert "Usage: " in done.stdout


def test_main_help_is_a_getting_started_guide():
    out = run_cli("--help").stdout
    assert 'ovchat generate "Can you introduce yourself?"' in out
    for command in ("export", "generate", "models"):
        assert command in out


def _fails_cleanly(done, *needles: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    for needle in needles:
        assert needle in done.stderr, done.stderr


def test_unknown_alias_lists_known_ones():
    done = run_cli("generate", "hi", "--model", "no-such-model")
    _fails_cleanly(done, "unknown model 'no-such-model'", "smollm2-135m", "phi-3-mini")


def test_missing_path(tmp_path):
    _fails_cleanly(run_cli("export", str(tmp_path / "nothing.gguf")), "no such file or folder")


def test_file_that_is_not_gguf(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_text("hello, I am text")
    _fails_cleanly(run_cli("export", str(fake), "-o", str(tmp_path / "out")), "is not a GGUF file")
    assert not (tmp_path / "out").exists()


def test_unsupported_gguf_architecture(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "mamba.gguf"
    writer = gguf.GGUFWriter(str(path), "mamba")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    _fails_cleanly(run_cli("export", str(path), "-o", str(tmp_path / "out")), "mamba", "llama")


def test_folder_that_is_neither_hf_nor_exported(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    _fails_cleanly(run_cli("generate", "hi", "--model", str(tmp_path)), "neither a Hugging Face model folder")


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--group-size", "0"], "group size must be a positive power of two"),
        (["--group-size", "-8"], "group size must be a positive power of two"),
        (["--group-size", "48"], "group size must be a positive power of two"),
        (["--ratio", "0"], "ratio must be in (0, 1]"),
        (["--ratio", "1.5"], "ratio must be in (0, 1]"),
        (["--weight-format", "int3"], "'int3' is not one of"),
    ],
)
def test_bad_recipe(tiny_phi3_dir, tmp_path, flags, needle):
    _fails_cleanly(run_cli("export", str(tiny_phi3_dir), "-o", str(tmp_path / "out"), *flags), needle)
    assert not (tmp_path / "out").exists()


def test_unknown_device_lists_available(tiny_phi3_ov):
    _fails_cleanly(
        run_cli("generate", "hi", "--model", str(tiny_phi3_ov), "--device", "TPU"), "unknown device 'TPU'", "CPU"
    )


def test_max_new_tokens_must_be_positive(tiny_phi3_ov):
    _fails_cleanly(run_cli("generate", "hi", "--model", str(tiny_phi3_ov), "--max-new-tokens", "0"), "--max-new-tokens")


@pytest.mark.parametrize(
    "env",
    [
        {"HF_HUB_OFFLINE": "1"},  # the user said offline
        {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"},  # a hub that does not answer
    ],
)
def test_hub_id_offline_fails_fast_with_advice(env):
    started = time.time()
    done = run_cli("export", "someone/some-model-that-is-not-here", env=env)
    _fails_cleanly(done, "could not download 'someone/some-model-that-is-not-here'", "pass its folder", ".gguf")
    assert time.time() - started < 60


def test_generate_on_tiny_phi3(tiny_phi3_ov):
    done = run_cli("generate", "Can you introduce yourself?", "--model", str(tiny_phi3_ov), "--verbose")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Hello world!\n"
    assert "finish: stop" in done.stderr


def test_generate_no_stream_and_raw(tiny_phi3_ov):
    done = run_cli("generate", "Hi", "--model", str(tiny_phi3_ov), "--no-stream", "--max-new-tokens", "2")
    assert done.returncode == 0 and done.stdout == "Hello world\n"
    done = run_cli("generate", "Hi", "--model", str(tiny_phi3_ov), "--raw", "--system", "x")
    _fails_cleanly(done, "--system has no effect with --raw")


def test_models_lists_aliases_and_exports(tiny_phi3_ov):
    done = run_cli("models")
    assert done.returncode == 0
    for alias in catalog.CATALOG:
        assert alias in done.stdout
    assert tiny_phi3_ov.name in done.stdout and "int4-sym-g128-r0.6" in done.stdout
