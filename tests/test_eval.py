"""`ovchat eval`: perplexity by hand, window bookkeeping, a model against itself, its reference and a
damaged copy, the report's shape, and the command line."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli

from ovchat import OvchatError, precision
from ovchat.build.calibrate import CALIBRATION_TEXT
from ovchat.eval import report
from ovchat.eval.answers import Embedder, load_prompts
from ovchat.eval.evaluate import evaluate
from ovchat.eval.logits import OpenVINOLogits, TorchLogits, sliding_logits, windows
from ovchat.eval.metrics import Tally, log_softmax
from ovchat.eval.scoring import DEFAULT_PROMPTS, DEFAULT_TEXT

# The tiny Phi-3 is wired to continue "\n" → "Hello" → " world" → "!" → <|end|>: a text it predicts well.
CHAIN_TEXT = "\nHello world!<|end|>" * 30


@pytest.fixture
def chain_text(tmp_path) -> Path:
    path = tmp_path / "chain.txt"
    path.write_text(CHAIN_TEXT)
    return path


@pytest.fixture
def three_prompts(tmp_path) -> Path:
    path = tmp_path / "prompts.jsonl"
    lines = [
        {"prompt": "What is the capital of France?"},
        {"prompt": "Say hi.", "system": "Be brief."},
        {"prompt": "2+2?"},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def test_perplexity_and_agreement_by_hand():
    probs = np.array([[0.25, 0.25, 0.25, 0.25], [0.5, 0.25, 0.125, 0.125], [0.1, 0.2, 0.3, 0.4]])
    targets = np.array([1, 0, 3])
    tally = Tally()
    nll = tally.add(log_softmax(np.log(probs) + 7.0), targets)  # logits are log-probs up to a constant
    expected = [math.log(4), math.log(2), -math.log(0.4)]
    assert nll == pytest.approx(expected, abs=1e-12)
    ppl = tally.perplexity()
    assert ppl["value"] == pytest.approx(20 ** (1 / 3), abs=1e-12)  # exp(mean) = (4 · 2 · 2.5)^(1/3)
    se = statistics.stdev(expected) / math.sqrt(3)
    assert ppl["nll_se"] == pytest.approx(se, abs=1e-12) and ppl["se"] == pytest.approx(20 ** (1 / 3) * se, abs=1e-12)
    assert ppl["tokens"] == 3

    # Against a uniform reference: KL(ref || model) = Σ ¼ ln(¼ / q); ties go to the first token, so the
    # top-1 agrees on rows 0 and 1 (token 0) and not on row 2 (token 3).
    compared = Tally()
    compared.add(log_softmax(np.log(probs)), targets, log_softmax(np.zeros((3, 4))))
    versus = compared.versus_reference()
    kl = [0.0, math.log(2) / 4, sum(0.25 * math.log(0.25 / q) for q in probs[2])]
    assert versus["kl"]["mean"] == pytest.approx(statistics.mean(kl), abs=1e-12)
    assert versus["kl"]["max"] == pytest.approx(max(kl), abs=1e-12)
    assert versus["top1_agreement"]["value"] == pytest.approx(2 / 3, abs=1e-12)
    # The reference's NLL is ln 4 on every token: the ratio is exp(mean(NLL) - ln 4) = 20^(1/3) / 4.
    assert versus["ppl_ratio"]["value"] == pytest.approx(20 ** (1 / 3) / 4, abs=1e-12)
    assert versus["ppl_ratio"]["se"] == pytest.approx(20 ** (1 / 3) / 4 * se, abs=1e-12)


@pytest.mark.parametrize("n", [2, 3, 17, 100, 513, 1000])
@pytest.mark.parametrize(("window", "stride"), [(2, 1), (16, 1), (16, 8), (16, 15), (512, 256), (512, 511)])
def test_windows_score_every_token_once_with_enough_context(n, window, stride):
    scored = []
    for start, end, first in windows(n, window, stride):
        assert 0 <= start < first < end <= n and end - start <= window
        for t in range(first, end):
            assert t - start >= min(t, window - stride)  # context inside the window
        scored += range(first, end)
    assert scored == list(range(1, n))


def test_windows_refuse_a_stride_that_skips_tokens():
    for window, stride in ((16, 16), (16, 0), (1, 1)):
        with pytest.raises(OvchatError, match="stride"):
            windows(100, window, stride)


def test_sliding_windows_equal_a_direct_computation(noisy_dir):
    scorer = TorchLogits(noisy_dir)  # random attention: the context matters (float32 logits up to ~50: atol 1e-4)
    ids = list(np.random.RandomState(0).randint(8, scorer.vocab_size, 70))
    spans = windows(len(ids), 24, 10)
    for (start, end, first), (got_first, got_end, logits) in zip(
        spans, sliding_logits(scorer, ids, 24, 10), strict=True
    ):
        assert (got_first, got_end) == (first, end) and len(logits) == end - first
        for t in range(first, end):  # the distribution of token t, from exactly its window's context
            np.testing.assert_allclose(logits[t - first], scorer(ids[start:t])[-1], atol=1e-4)
    # A text within one window: every token scored with its full context.
    (_, _, whole), *_ = sliding_logits(scorer, ids, 128, 64)
    np.testing.assert_allclose(whole, scorer(ids)[:-1], atol=1e-4)


def test_openvino_scorer_matches_token_by_token_decoding(noisy_ov, noisy_dir):
    ids = list(np.random.RandomState(1).randint(8, 300, 40))
    exact = {"KV_CACHE_PRECISION": "f32"}  # the step-by-step path reads back its KV cache
    full = OpenVINOLogits(noisy_ov, config=exact)
    assert full.vocab_size == TorchLogits(noisy_dir).vocab_size
    once = full(ids)
    np.testing.assert_array_equal(once, full(ids))  # the KV state is reset between calls
    np.testing.assert_allclose(once, OpenVINOLogits(noisy_ov, config=exact, stepwise=True)(ids), atol=1e-4)
    original = TorchLogits(noisy_dir)(ids)  # float32 weights: the fp16 export differs in rounding only
    assert (once.argmax(-1) == original.argmax(-1)).all() and np.abs(once - original).max() < 0.5


def test_a_model_against_itself_agrees_exactly(tiny_phi3_ov, chain_text):
    result = evaluate(str(tiny_phi3_ov), reference=str(tiny_phi3_ov), text=chain_text, prompt_limit=0, window=32)
    (row,) = result["models"]
    assert row["top1_agreement"] == {"value": 1.0, "se": 0.0}
    assert row["kl"]["mean"] == 0.0 and row["kl"]["max"] == 0.0
    assert row["ppl_ratio"]["value"] == 1.0
    assert row["perplexity"] == result["reference"]["perplexity"]
    assert result["reference"]["kind"] == "openvino" and result["prompts"] is None


@pytest.mark.slow  # the command in a child process
def test_as_generate_scores_the_fast_path_against_the_same_reference(tiny_phi3_ov, chain_text, tmp_path):
    done = run_cli("eval", "-m", str(tiny_phi3_ov), "-r", str(tiny_phi3_ov), "--text", str(chain_text),
                   "--prompt-limit", "0", "--window", "32", "--as-generate", "--json", str(tmp_path / "q.json"))
    assert done.returncode == 0, done.stderr
    fast = precision.choose("CPU")  # what generate runs with here
    assert f"precision: {fast} (models), f32 inference, f32 KV cache (reference)" in done.stdout
    (row,) = json.loads((tmp_path / "q.json").read_text())["models"]
    assert row["precision"]["dynamic_quantization"] == fast.dynamic_quantization
    # int8 activations (where the CPU has VNNI) round the tiny model's logits a little, no more.
    assert row["ppl_ratio"]["value"] == pytest.approx(1.0, abs=0.05)


def test_int4_stays_close_to_its_fp32_original_and_a_damaged_copy_does_not(
    tiny_phi3_ov, tiny_phi3_dir, noisy_ov, chain_text, three_prompts
):
    result = evaluate(
        [str(tiny_phi3_ov), str(noisy_ov)], reference=str(tiny_phi3_dir), text=chain_text, prompts=three_prompts
    )
    good, bad = result["models"]
    ref = result["reference"]
    assert ref["kind"] == "transformers-fp32" and ref["precision"]["inference"] == "f32"
    assert good["top1_agreement"]["value"] > 0.95 and good["kl"]["mean"] < 0.02
    assert good["perplexity"]["value"] == pytest.approx(ref["perplexity"]["value"], rel=0.05)
    assert bad["perplexity"]["value"] > 1.5 * good["perplexity"]["value"]
    assert bad["kl"]["mean"] > 10 * good["kl"]["mean"] and bad["top1_agreement"]["value"] < 0.9
    assert good["similarity"]["mean"] == pytest.approx(1.0, abs=1e-5)  # "Hello world!" to every prompt
    assert bad["similarity"]["mean"] < 0.9
    assert [a["answer"] for a in good["answers"]] == ["Hello world!"] * 3
    # Every token of the text scored once, by everyone.
    n = result["text"]["tokens"]
    assert n == good["perplexity"]["tokens"] == bad["perplexity"]["tokens"] == ref["perplexity"]["tokens"]

    # The report's shape, as the module docstring documents it, and that it is JSON.
    assert set(result) == {"format", "reference", "text", "prompts", "models", "device", "machine", "seconds"}
    assert set(ref) == {"name", "spec", "folder", "kind", "precision", "perplexity"}
    assert set(ref["perplexity"]) == {"value", "se", "nll", "nll_se", "tokens"}
    assert set(result["text"]) == {"path", "tokens", "window", "stride", "windows"}
    assert set(result["prompts"]) == {"path", "count", "new_tokens", "items"}
    assert set(result["prompts"]["items"][0]) == {"prompt", "category", "reference_answer"}
    for row in result["models"]:
        assert set(row) == {
            "name",
            "folder",
            "recipe",
            "weights_mb",
            "precision",
            "perplexity",
            "ppl_ratio",
            "top1_agreement",
            "kl",
            "similarity",
            "answers",
        }
        assert set(row["kl"]) == {"mean", "se", "p99", "max"}
        assert set(row["similarity"]) == {"mean", "se", "min", "count"}
        assert len(row["answers"]) == 3 and set(row["answers"][0]) == {"answer", "similarity"}
    assert good["recipe"]["weight_format"] == "int4" and bad["recipe"]["weight_format"] == "fp16"
    assert good["name"] != bad["name"]
    assert json.loads(json.dumps(result)) == result

    table = report.format_table(result)
    assert good["name"] in table and bad["name"] in table and "reference" in table
    worst = report.format_worst(result, 1)
    assert worst.count("── ") == 2 and "Hello world!" in worst


def test_answer_similarity_embeds_offline():
    embed = Embedder()
    vectors = embed(["The capital of France is Paris.", "Paris is the capital of France.", "I like green apples."])
    assert np.linalg.norm(vectors, axis=1) == pytest.approx([1, 1, 1])
    same, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert same > 0.9 and unrelated < 0.3


def test_shipped_data():
    assert len(DEFAULT_TEXT.read_text()) > 50_000 and "Gutenberg" not in DEFAULT_TEXT.read_text()
    prompts = load_prompts(DEFAULT_PROMPTS)
    assert len(prompts) >= 50 and len({p["category"] for p in prompts}) >= 6
    assert len(load_prompts(DEFAULT_PROMPTS, 5)) == 5
    # The calibration text is another book: data-aware recipes never see what eval scores.
    assert len(CALIBRATION_TEXT.read_text()) > 50_000 and CALIBRATION_TEXT.read_text() != DEFAULT_TEXT.read_text()


def test_bad_inputs_are_named(tiny_phi3_ov, tmp_path, chain_text):
    model = str(tiny_phi3_ov)
    with pytest.raises(OvchatError, match="cannot read the text file .*missing.txt"):
        evaluate(model, text=tmp_path / "missing.txt", prompt_limit=0)
    (tmp_path / "empty.txt").write_text(" \n")
    with pytest.raises(OvchatError, match="empty.txt is empty"):
        evaluate(model, text=tmp_path / "empty.txt", prompt_limit=0)
    (tmp_path / "one.txt").write_text("Hello")
    with pytest.raises(OvchatError, match="1 token long; perplexity needs at least 2"):
        evaluate(model, text=tmp_path / "one.txt", prompt_limit=0)
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(OvchatError, match="bad.jsonl, line 2"):
        evaluate(model, prompts=tmp_path / "bad.jsonl")
    with pytest.raises(OvchatError, match="longer than the context of 256"):
        evaluate(model, text=chain_text, prompt_limit=0, window=512)


@pytest.mark.slow
def test_a_reference_with_another_tokenizer_is_refused(tiny_phi3_ov, smollm2_ov, chain_text):
    with pytest.raises(OvchatError, match="tokenizes the text differently"):
        evaluate(str(tiny_phi3_ov), reference=str(smollm2_ov), text=chain_text, prompt_limit=0)


@pytest.mark.slow  # the command in a child process
def test_cli_table_json_and_chart(tiny_phi3_ov, noisy_ov, chain_text, three_prompts, tmp_path):
    out, chart = tmp_path / "eval.json", tmp_path / "eval.png"
    done = run_cli(
        "eval",
        "-m",
        str(tiny_phi3_ov),
        "-m",
        str(noisy_ov),
        "--reference",
        str(tiny_phi3_ov),
        "--text",
        str(chain_text),
        "--prompts",
        str(three_prompts),
        "--new-tokens",
        "8",
        "--worst",
        "1",
        "--json",
        str(out),
        "--plot",
        str(chart),
    )
    assert done.returncode == 0, done.stderr
    assert "perplexity" in done.stdout and "top-1 agree" in done.stdout and "least similar answers" in done.stdout
    result = json.loads(out.read_text())
    assert [m["top1_agreement"]["value"] for m in result["models"]][0] == 1.0
    assert result["prompts"]["new_tokens"] == 8 and result["prompts"]["count"] == 3
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 5000

    bad = run_cli("eval", "-m", str(tiny_phi3_ov), "--text", str(tmp_path / "nothing.txt"))
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("error: cannot read the text file")


@pytest.mark.slow
def test_real_model_against_its_fp32_original(smollm2_ov):
    result = evaluate(str(smollm2_ov), max_tokens=600, prompt_limit=2, new_tokens=24)
    (row,) = result["models"]
    ref = result["reference"]["perplexity"]["value"]
    assert 5 < ref < 60  # SmolLM2-135M on Alice, float32
    # The paired ratio is the two perplexities' ratio (same tokens), and int4 measurably loses:
    # 1.051 ± 0.015 on these 600 tokens with the default recipe (int4 sym g128 r0.8 + AWQ + SE gave
    # 1.119 ± 0.024, the sample's 1.205 ± 0.032), so 1.01 is under three standard errors below.
    assert row["ppl_ratio"]["value"] == pytest.approx(row["perplexity"]["value"] / ref, rel=1e-9)
    assert 1.01 < row["ppl_ratio"]["value"] < 1.5
    assert 0.6 < row["top1_agreement"]["value"] < 1.0 and 0 < row["kl"]["mean"] < 0.5
    assert result["prompts"]["items"][0]["reference_answer"].strip()


def test_cli_help_lists_the_options():
    done = run_cli("eval", "--help")
    assert done.returncode == 0
    for flag in (
        "--reference",
        "--text",
        "--prompts",
        "--max-tokens",
        "--window",
        "--stride",
        "--prompt-limit",
        "--new-tokens",
        "--json",
        "--plot",
    ):
        assert flag in done.stdout
