"""Precision: chosen in one place, stated, overridable, a bad choice a clear error, on either CPU kind.

Tests that depend on bf16 run where OpenVINO reports BF16 for the CPU (AVX-512 BF16: Intel Xeon, AMD
EPYC Zen 4) and are skipped, with the reason, elsewhere; f32 runs everywhere. bf16 gives the same
answer at any concurrency only with AMX (Intel Xeon since Sapphire Rapids); elsewhere the server says so.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import EIGHT_PROMPTS, GREEDY_FLAGS, GREEDY_KWARGS, Server, answers_alone_and_together, run_cli

from ovchat import OvchatError, precision
from ovchat.eval.logits import OpenVINOLogits

HAS_BF16 = "BF16" in precision.capabilities("CPU")
NO_BF16 = "this CPU has no bf16 (OpenVINO reports no BF16 capability): the bf16 run is skipped"
needs_bf16 = pytest.mark.skipif(not HAS_BF16, reason=NO_BF16)
EVERY_PRECISION = ["f32", pytest.param("bf16", marks=needs_bf16)]
BF16_INVARIANT = HAS_BF16 and precision.has_amx()


@pytest.fixture(autouse=True)
def no_precision_env(monkeypatch):
    monkeypatch.delenv(precision.PRECISION_ENV, raising=False)


def test_each_purpose_gets_its_precision():
    reference = precision.choose("CPU", purpose="reference")
    assert reference == precision.Precision("f32", "f32", 0)  # a measuring instrument: the same on every CPU
    served = precision.choose("CPU", purpose="batch-invariant")
    # Batch invariance needs the KV cache in the inference precision and no int8 activations.
    assert served.kv_cache == served.inference and served.dynamic_quantization == 0
    assert served.inference == ("bf16" if BF16_INVARIANT else "f32")
    assert precision.not_batch_invariant(served) is None
    fast = precision.choose("CPU")
    assert fast.kv_cache == "u8"
    assert fast.dynamic_quantization == (precision.DYNAMIC_QUANTIZATION_GROUP if precision.has_vnni() else 0)


def test_overrides_win_in_order(monkeypatch):
    assert precision.choose("CPU", "f32", "f16") == precision.Precision("f32", "f16", 0 if not precision.has_vnni()
                                                                       else precision.DYNAMIC_QUANTIZATION_GROUP)
    # An OpenVINO property a caller passes through counts as asked, in OpenVINO's spelling too.
    config = {"INFERENCE_PRECISION_HINT": "float32", "KV_CACHE_PRECISION": "u8", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 64}
    assert precision.choose("CPU", config=config, purpose="reference") == precision.Precision("f32", "u8", 64)
    monkeypatch.setenv(precision.PRECISION_ENV, "f32")
    assert precision.choose("CPU", purpose="batch-invariant").inference == "f32"
    assert precision.choose("CPU", "f32", purpose="batch-invariant").kv_cache == "f32"
    # A preference for running models does not move the measuring instrument.
    monkeypatch.setenv(precision.PRECISION_ENV, "f16")
    assert precision.choose("CPU", purpose="reference") == precision.Precision("f32", "f32", 0)


@pytest.mark.parametrize(
    ("inference", "kv_cache", "config", "message"),
    [
        ("f64", None, None, "the precision must be one of f32, bf16, f16, not 'f64'"),
        ("f32", "int4", None, "the KV-cache precision must be one of f32, bf16, f16, u8, not 'int4'"),
        ("f16", None, None, "f16 inference on the CPU gives empty answers; use bf16 (if the CPU has it) or f32"),
        ("f32", "bf16", None, "a bf16 KV cache does not go with f32 inference; use f32, f16 or u8"),
        ("f32", None, {"DYNAMIC_QUANTIZATION_GROUP_SIZE": "lots"}, "must be a whole number, not 'lots'"),
    ],
)
def test_a_bad_precision_is_a_clear_error(inference, kv_cache, config, message):
    with pytest.raises(OvchatError, match=message.replace("(", r"\(").replace(")", r"\)")):
        precision.choose("CPU", inference, kv_cache, config=config)


def test_bf16_where_the_cpu_has_it_and_a_clear_no_where_it_does_not():
    if HAS_BF16:
        assert precision.choose("CPU", "bf16", purpose="batch-invariant") == precision.Precision("bf16", "bf16", 0)
    else:
        with pytest.raises(OvchatError, match="cannot infer in bf16 .*AVX-512 BF16"):
            precision.choose("CPU", "bf16")


def test_the_command_line_refuses_a_bad_precision_before_loading(tiny_phi3_ov):
    done = run_cli("generate", "--model", str(tiny_phi3_ov), "--precision", "f16", "Hi")
    assert done.returncode != 0 and "f16 inference on the CPU gives empty answers" in done.stderr
    assert "Traceback" not in done.stderr
    done = run_cli("generate", "--model", str(tiny_phi3_ov), "Hi", env={precision.PRECISION_ENV: "f64"})
    assert done.returncode == 2 and "'f64' is not one of" in done.stderr
    done = run_cli("serve", "--model", str(tiny_phi3_ov), "--port", "0", "--precision", "f32",
                   "--kv-cache-precision", "bf16")
    assert done.returncode != 0 and "a bf16 KV cache does not go with f32 inference" in done.stderr
    assert "http://" not in done.stdout + done.stderr  # refused before any port opened


def test_what_breaks_batch_invariance_is_named():
    assert precision.not_batch_invariant(precision.Precision("f32", "f32", 0)) is None
    assert "int8 activations" in precision.not_batch_invariant(precision.Precision("f32", "f32", 32))
    assert "a u8 KV cache rounds" in precision.not_batch_invariant(precision.Precision("f32", "u8", 0))
    bf16 = precision.not_batch_invariant(precision.Precision("bf16", "bf16", 0))
    assert (bf16 is None) == precision.has_amx()


@pytest.mark.slow  # real servers
def test_serve_can_trade_batch_invariance_for_speed(tiny_phi3_ov, tmp_path):
    fast = Server(tiny_phi3_ov, "--no-batch-invariant", log_path=tmp_path / "fast.log")
    try:
        assert f"({precision.choose('CPU')})" in fast.log() and "may change" not in fast.log()
        client = fast.client()
        answer = client.chat.completions.create(model=client.models.list().data[0].id, max_tokens=4, **GREEDY_KWARGS,
                                                messages=[{"role": "user", "content": "Hi"}])
        assert answer.usage.completion_tokens == 4
    finally:
        assert fast.stop() == 0
    # Asking the invariant server for a cache that breaks it: it runs, and says what that costs.
    mixed = Server(tiny_phi3_ov, "--precision", "f32", "--kv-cache-precision", "u8", log_path=tmp_path / "mixed.log")
    try:
        assert "an answer may change with what else is in the batch (a u8 KV cache rounds" in mixed.log()
    finally:
        assert mixed.stop() == 0


@pytest.mark.parametrize("chosen", EVERY_PRECISION)
def test_generate_says_which_precision_ran(tiny_phi3_ov, chosen):
    done = run_cli("generate", "-v", "--model", str(tiny_phi3_ov), "--precision", chosen, "--max-new-tokens", "8",
                   "Hi")
    assert done.returncode == 0, done.stderr
    assert f"{chosen} inference, u8 KV cache" in done.stderr
    done = run_cli("generate", "-v", "--model", str(tiny_phi3_ov), "--precision", chosen, "--kv-cache-precision",
                   chosen, "--max-new-tokens", "8", "Hi")
    assert done.returncode == 0, done.stderr
    assert f"{chosen} inference, {chosen} KV cache" in done.stderr


@needs_bf16
def test_the_compile_cache_keeps_precisions_apart(tiny_phi3_ov, tmp_path, monkeypatch):
    """OpenVINO's compiled-model cache does not key on the inference precision: without a folder per
    precision, an f32 load after a bf16 one would run the cached bf16 blob."""
    ids = list(range(3, 60))
    monkeypatch.setenv("OVCHAT_HOME", str(tmp_path / "fresh"))
    f32_alone = OpenVINOLogits(tiny_phi3_ov, precision="f32")(ids)
    monkeypatch.setenv("OVCHAT_HOME", str(tmp_path / "shared"))
    bf16 = OpenVINOLogits(tiny_phi3_ov, precision="bf16")(ids)
    assert np.abs(bf16 - f32_alone).max() > 1e-3  # the two precisions do differ on this model
    f32_after_bf16 = OpenVINOLogits(tiny_phi3_ov, precision="f32")(ids)
    np.testing.assert_array_equal(f32_after_bf16, f32_alone)


# --- the real small model: the server and the chat path, once per precision the CPU has ---------


@pytest.mark.slow
@pytest.mark.parametrize("chosen", EVERY_PRECISION)
def test_server_gives_the_same_answer_at_any_concurrency(smollm2_ov, tmp_path, chosen):
    server = Server(smollm2_ov, "--precision", chosen, log_path=tmp_path / "serve.log")
    try:
        assert f"({chosen} inference, {chosen} KV cache)" in server.log()  # stated at startup
        solo, together = answers_alone_and_together(server, EIGHT_PROMPTS)
        assert any("Paris" in text for text, _ in solo.values())  # the answers are answers
        if chosen == "bf16" and not BF16_INVARIANT:
            # bf16 without AMX: answers may change with the batch, and the server says so when it starts.
            assert "may change with what else is in the batch (bf16 without AMX" in server.log()
        else:
            assert together == solo
            assert "may change" not in server.log()
    finally:
        assert server.stop() == 0


@pytest.mark.slow
@pytest.mark.parametrize("chosen", EVERY_PRECISION)
def test_chat_answers_in_every_precision(smollm2_ov, chosen):
    done = run_cli("chat", "--model", str(smollm2_ov), "--precision", chosen, "--max-new-tokens", "32", *GREEDY_FLAGS,
                   input="What is the capital of France?\n")
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout
