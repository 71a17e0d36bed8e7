"""The command line, run in this process with click's CliRunner: help for every command, usage errors
(exit 2) and library errors (exit 1) answered with one `error:` line and never a traceback, and the
answers of generate and chat on the tiny Phi-3."""

from __future__ import annotations

import signal

import pytest
from click.testing import CliRunner
from helpers import write_mamba_gguf

from ovchat import SamplingParams, catalog
from ovchat.cli import main
from ovchat.sampling import CHAT_SAMPLING

COMMANDS = ["generate", "chat", "export", "serve", "bench", "eval", "ovms", "models"]


@pytest.fixture(autouse=True)
def _keep_sigterm():
    # The command group makes SIGTERM raise KeyboardInterrupt; give pytest its own handler back.
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


def ovchat(*args: str, input: str | None = None):
    """`ovchat ARGS` in this process; an exception the command lets through fails the test."""
    return CliRunner().invoke(main, [str(a) for a in args], input=input, catch_exceptions=False)


def fails_cleanly(result, code: int, *needles: str) -> None:
    """Exit `code`, nothing on stdout, one `error:` line on stderr saying each needle."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


# --- help ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help(command):
    result = ovchat(*([command] if command else []), "--help")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("Usage: ")
    assert result.stderr == ""


def test_main_help_is_a_getting_started_guide():
    out = ovchat("-h").stdout
    assert 'ovchat generate "Can you introduce yourself?"' in out
    for command in COMMANDS:
        assert f"  {command} " in out


@pytest.mark.parametrize("command", ["generate", "chat"])
def test_sampling_options_in_help(command):
    out = ovchat(command, "--help").stdout
    for flag in ("--stop TEXT", "--presence-penalty FLOAT RANGE", "--frequency-penalty FLOAT RANGE", "-2<=x<=2"):
        assert flag in out


# --- usage errors: click refuses, exit 2 -----------------------------------------------------------


@pytest.mark.parametrize(
    "args, command, needle",
    [
        (["no-such-command"], "ovchat", "No such command 'no-such-command'"),
        (["generate"], "ovchat generate", "Missing argument 'PROMPT'"),
        (["generate", "hi", "--temperature", "3"], "ovchat generate", "'--temperature': 3.0 is not in the range"),
        (["generate", "hi", "--max-new-tokens", "0"], "ovchat generate", "--max-new-tokens"),
        (["chat", "--presence-penalty", "-2.5"], "ovchat chat", "'--presence-penalty'"),
        (["generate", "hi", "--frequency-penalty", "2.5"], "ovchat generate", "'--frequency-penalty'"),
        (["generate", "hi", *["--stop", "x"] * 5], "ovchat generate", "at most 4 stop strings"),
        (["generate", "hi", "--stop", ""], "ovchat generate", "a stop string cannot be empty"),
        (["export", "--weight-format", "int3"], "ovchat export", "'int3' is not one of"),
        (["serve", "--port", "70000"], "ovchat serve", "'--port'"),
        (["bench", "--prompt-tokens", "32,x"], "ovchat bench", "comma-separated token counts"),
        (["eval", "--worst", "-1"], "ovchat eval", "'--worst'"),
        (["ovms"], "ovchat ovms", "Missing argument 'REPOSITORY'"),
        (["models", "extra"], "ovchat models", "unexpected extra argument"),
    ],
)
def test_usage_error(args, command, needle):
    fails_cleanly(ovchat(*args), 2, needle, f"(see `{command} --help`)")


# --- library errors: one line, exit 1 --------------------------------------------------------------


def test_unknown_alias_lists_known_ones():
    fails_cleanly(
        ovchat("generate", "hi", "--model", "no-such-model"), 1, "unknown model 'no-such-model'", *catalog.CATALOG
    )


def test_missing_path(tmp_path):
    fails_cleanly(ovchat("export", tmp_path / "nothing.gguf"), 1, "no such file or folder")


def test_file_that_is_not_gguf(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_text("hello, I am text")
    fails_cleanly(ovchat("export", fake, "-o", tmp_path / "out"), 1, "is not a GGUF file")
    assert not (tmp_path / "out").exists()


def test_unsupported_gguf_architecture(tmp_path):
    path = tmp_path / "mamba.gguf"
    write_mamba_gguf(path)
    fails_cleanly(ovchat("export", path, "-o", tmp_path / "out"), 1, "mamba", "llama")


def test_folder_that_is_neither_hf_nor_exported(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    fails_cleanly(ovchat("generate", "hi", "--model", tmp_path), 1, "neither a Hugging Face model folder")


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--group-size", "0"], "group size must be a positive power of two"),
        (["--group-size", "-8"], "group size must be a positive power of two"),
        (["--group-size", "48"], "group size must be a positive power of two"),
        (["--ratio", "0"], "ratio must be in (0, 1]"),
        (["--ratio", "1.5"], "ratio must be in (0, 1]"),
    ],
)
def test_bad_recipe(tiny_phi3_dir, tmp_path, flags, needle):
    fails_cleanly(ovchat("export", tiny_phi3_dir, "-o", tmp_path / "out", *flags), 1, needle)
    assert not (tmp_path / "out").exists()


def test_unknown_device_lists_available(tiny_phi3_ov):
    result = ovchat("generate", "hi", "--model", tiny_phi3_ov, "--device", "TPU")
    fails_cleanly(result, 1, "unknown device 'TPU'", "CPU")


def test_raw_with_system_is_refused(tiny_phi3_ov):
    result = ovchat("generate", "Hi", "--model", tiny_phi3_ov, "--raw", "--system", "x")
    fails_cleanly(result, 1, "--system has no effect with --raw")


def test_chat_with_nothing_piped_in(tiny_phi3_ov):
    fails_cleanly(ovchat("chat", "--model", tiny_phi3_ov, input=""), 1, "no message on standard input")


# --- answers on the tiny Phi-3 ("Hello world!") ----------------------------------------------------


def test_generate_on_tiny_phi3(tiny_phi3_ov):
    result = ovchat("generate", "Can you introduce yourself?", "--model", tiny_phi3_ov, "--verbose")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "Hello world!\n"
    assert "finish: stop" in result.stderr


def test_generate_no_stream(tiny_phi3_ov):
    result = ovchat("generate", "Hi", "--model", tiny_phi3_ov, "--no-stream", "--max-new-tokens", "2")
    assert (result.exit_code, result.stdout) == (0, "Hello world\n"), result.stderr


@pytest.mark.parametrize("stream", ["--stream", "--no-stream"])
def test_generate_stop_cuts_the_answer_before_it(tiny_phi3_ov, stream):
    result = ovchat("generate", "Hi", "--model", tiny_phi3_ov, stream, "--stop", "world", "--stop", "xyz", "-v")
    assert (result.exit_code, result.stdout) == (0, "Hello \n"), result.stderr
    assert "finish: stop" in result.stderr


def test_generate_takes_the_penalties(tiny_phi3_ov):
    result = ovchat(
        "generate", "Hi", "--model", tiny_phi3_ov, "--presence-penalty", "0.5", "--frequency-penalty", "-0.5"
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("Hello")


def test_chat_piped_prints_only_the_answer(tiny_phi3_ov):
    result = ovchat("chat", "--model", tiny_phi3_ov, input="Hi\n")
    assert (result.exit_code, result.stdout) == (0, "Hello world!\n"), result.stderr
    stopped = ovchat("chat", "--model", tiny_phi3_ov, "--stop", "world", input="Hi\n")
    assert (stopped.exit_code, stopped.stdout) == (0, "Hello \n"), stopped.stderr


def test_models_lists_aliases_and_exports(tiny_phi3_ov):
    result = ovchat("models")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("Aliases:\n")
    for alias in catalog.CATALOG:
        assert f"  {alias} " in result.stdout
    assert tiny_phi3_ov.name in result.stdout and "int4-sym-g128-r0.6" in result.stdout
    assert "Phi-3-mini-4k-instruct (3.8B, the OpenVINO sample's); its card's chat sampling: greedy" in result.stdout
    # Each export says how a chat with it samples, and why.
    assert f"chat sampling: {SamplingParams(**CHAT_SAMPLING).summary()} (ovchat's default)" in result.stdout


# --- each flag is the keyword it is passed to, with that keyword's default --------------------------

# Environment variables that would change a default.
OPTION_ENV = ("OVCHAT_MODEL", "OVCHAT_DEVICE", "OVCHAT_PRECISION", "OVCHAT_API_KEY", "OVCHAT_SSE_KEEPALIVE")


def _record(monkeypatch, module, name: str) -> list:
    """Replace `module.name` by a stand-in that checks its call binds to the real signature, records
    it, and stops the command with an ovchat error."""
    import inspect

    from ovchat.errors import OvchatError

    real = getattr(module, name)
    calls = []

    def stand_in(*args, **kwargs):
        calls.append(inspect.signature(real).bind(*args, **kwargs))
        raise OvchatError("recorded")

    monkeypatch.setattr(module, name, stand_in)
    return calls


def _plain(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _run_recorded(calls: list, *args: str):
    result = CliRunner(env=dict.fromkeys(OPTION_ENV)).invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 1 and result.stderr.endswith("error: recorded\n"), result.stderr
    assert len(calls) == 1
    return calls[0]


def _assert_library_defaults(bound, *, skip: tuple = ("log", "progress")) -> None:
    for name, value in bound.arguments.items():
        default = bound.signature.parameters[name].default
        if name not in skip and default is not bound.signature.parameters[name].empty:
            assert _plain(value) == _plain(default), name


@pytest.mark.parametrize(
    "module, name, args",
    [
        ("ovchat.build.export", "export", ["export"]),
        ("ovchat.bench", "run", ["bench"]),
        ("ovchat.eval.evaluate", "evaluate", ["eval"]),
        ("ovchat.ovms", "write_repository", ["ovms", "repo"]),
        ("ovchat.loader", "load", ["generate", "hi"]),
        ("ovchat.loader", "load", ["chat"]),
    ],
)
def test_flag_defaults_are_the_library_defaults(monkeypatch, module, name, args):
    import importlib

    calls = _record(monkeypatch, importlib.import_module(module), name)
    bound = _run_recorded(calls, *args)
    _assert_library_defaults(bound)


def test_flags_reach_their_keywords(monkeypatch):
    import ovchat.bench
    import ovchat.ovms

    calls = _record(monkeypatch, ovchat.ovms, "write_repository")
    bound = _run_recorded(calls, "ovms", "repo", "--max-concurrency", "3", "--kv-cache-gb", "5", "--name", "x")
    assert (bound.arguments["max_num_seqs"], bound.arguments["kv_cache_gb"], bound.arguments["name"]) == (3, 5, "x")
    calls = _record(monkeypatch, ovchat.bench, "run")
    bound = _run_recorded(calls, "bench", "--prompt-tokens", "8,16", "--runs", "2", "--warmup", "0")
    assert (bound.arguments["prompt_tokens"], bound.arguments["runs"], bound.arguments["warmup"]) == ([8, 16], 2, 0)


def _serve_settings(monkeypatch, *flags: str):
    import ovchat.server

    seen = {}

    def stand_in(model, device, settings, *, cache_dir=None, embedding_model=None, all_exported=False, log=print):
        seen.update(model=model, device=device, settings=settings, cache_dir=cache_dir)
        if embedding_model:
            seen["embedding_model"] = embedding_model
        return 0

    monkeypatch.setattr(ovchat.server, "serve", stand_in)
    result = CliRunner(env=dict.fromkeys(OPTION_ENV)).invoke(main, ["serve", *flags], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return seen


def test_serve_defaults_are_the_settings_defaults(monkeypatch):
    from ovchat.config import DEFAULT_DEVICE
    from ovchat.server import Settings

    seen = _serve_settings(monkeypatch)
    expected = {"model": [catalog.DEFAULT_MODEL], "device": DEFAULT_DEVICE, "settings": Settings(), "cache_dir": None}
    assert seen == expected


def test_serve_flags_reach_the_settings(monkeypatch):
    from ovchat.server import Settings

    seen = _serve_settings(
        monkeypatch, "--host", "0.0.0.0", "--port", "0", "--max-concurrency", "2", "--max-queue", "0",
        "--allowed-host", "a", "--allowed-host", "b", "--cors-origin", "http://c", "--insecure", "--no-web",
        "--sse-keepalive", "0.5", "--no-batch-invariant", "--embedding-model", "all-minilm-l6-v2",
        "--model", "a", "--model", "b", "--max-loaded", "2", "--keep-alive", "1m30s", "--memory-budget-gb", "6",
    )  # fmt: skip
    assert seen["embedding_model"] == "all-minilm-l6-v2" and seen["model"] == ["a", "b"]
    assert seen["settings"] == Settings(
        host="0.0.0.0", port=0, max_concurrency=2, max_queue=0, allowed_hosts=["a", "b"], cors_origins=["http://c"],
        allow_insecure=True, web_ui=False, keepalive_seconds=0.5, batch_invariant=False, max_loaded=2,
        keep_alive=90.0, memory_budget_gb=6.0,
    )  # fmt: skip


class _Handle:
    """A loaded model's stand-in: records the sampling it is asked for and answers nothing."""

    def __init__(self):
        self.sampling = None

    def stream_generate(self, prompt, *, system=None, raw=False, sampling=None):
        self.sampling = sampling
        return iter(())


@pytest.mark.parametrize(
    "flags, expected",
    [
        ([], {}),
        (
            ["--stop", "a", "--stop", "bc", "--presence-penalty", "0.5", "--frequency-penalty", "-1", "--top-k", "3",
             "--temperature", "0.7", "--top-p", "0.9", "--repetition-penalty", "1.1", "--seed", "7",
             "--max-new-tokens", "9"],
            {"stop": ("a", "bc"), "presence_penalty": 0.5, "frequency_penalty": -1.0, "top_k": 3, "temperature": 0.7,
             "top_p": 0.9, "repetition_penalty": 1.1, "seed": 7, "max_new_tokens": 9},
        ),
    ],
)  # fmt: skip
def test_generate_sampling_flags_are_sampling_params(monkeypatch, flags, expected):
    import ovchat.loader
    from ovchat import SamplingParams

    handle = _Handle()
    monkeypatch.setattr(ovchat.loader, "load", lambda model, **options: handle)
    result = CliRunner(env=dict.fromkeys(OPTION_ENV)).invoke(main, ["generate", "hi", *flags], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert handle.sampling == SamplingParams(**expected)


@pytest.mark.parametrize(
    "flags, changed",
    [([], {}), (["--temperature", "0", "--top-k", "5", "--max-new-tokens", "9"],
                {"temperature": 0.0, "top_k": 5, "max_new_tokens": 9})],
)  # fmt: skip
def test_chat_samples_as_the_model_recommends_unless_told(monkeypatch, tiny_phi3_ov, flags, changed):
    import dataclasses

    from ovchat import session as session_module

    sessions = []

    class Recorded(session_module.ChatSession):
        def __post_init__(self):
            super().__post_init__()
            sessions.append(self)

    monkeypatch.setattr(session_module, "ChatSession", Recorded)
    result = ovchat("chat", "--model", tiny_phi3_ov, *flags, input="Hi\n")
    assert (result.exit_code, result.stdout) == (0, "Hello world!\n"), result.stderr
    (session,) = sessions
    recommended = session.model.chat_sampling
    assert session.model.chat_sampling_source == "ovchat's default" and recommended.temperature > 0
    assert session.sampling == dataclasses.replace(recommended, **changed)
