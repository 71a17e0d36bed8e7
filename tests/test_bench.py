"""`ovchat bench`: exact prompt lengths, warm-up excluded, the report's shape, the chart."""

from __future__ import annotations

import json

import pytest
from helpers import run_cli

from ovchat import OvchatError, bench


@pytest.mark.parametrize("folder", ["tiny_phi3_ov", pytest.param("smollm2_ov", marks=pytest.mark.slow)])
def test_prompts_have_the_exact_length_and_differ_by_variant(request, folder):
    import openvino_genai as ov_genai

    tokenizer = ov_genai.Tokenizer(str(request.getfixturevalue(folder)))
    for length in (1, 7, 100, 513):
        assert len(bench.exact_prompt(tokenizer, length, 1)) == length
    a, b = bench.exact_prompt(tokenizer, 64, 1), bench.exact_prompt(tokenizer, 64, 2)
    first_difference = next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
    assert first_difference < 16  # runs share at most a few leading tokens: prefill is not served from cache


def test_run_measures_only_the_counted_runs(tiny_phi3_ov):
    calls = []
    report = bench.run(str(tiny_phi3_ov), prompt_tokens=(8, 40), new_tokens=4, runs=3, warmup=2,
                       progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (10, 10)  # (3 runs + 2 warm-up) × 2 lengths, all reported as progress
    assert [r["prompt_tokens"] for r in report["results"]] == [8, 40]
    for row in report["results"]:
        for name in bench.METRICS:
            assert len(row["samples"][name]) == 3  # warm-up runs are not in the numbers
            s = row[name]
            assert 0 < s["min"] <= s["median"] <= s["max"]
        assert row["decode_tok_s"]["median"] == pytest.approx(1000 / row["tpot_ms"]["median"], rel=0.2)
    assert report["size_mb"] > 0 and report["load_s"] > 0 and report["peak_rss_mb"] > 0
    assert report["machine"]["cores"] >= 1 and report["machine"]["openvino"]


def test_refuses_prompts_past_the_context(tiny_phi3_ov):
    with pytest.raises(OvchatError, match="context of 256"):
        bench.run(str(tiny_phi3_ov), prompt_tokens=(250,), new_tokens=16, runs=1)


def test_cli_table_json_and_chart(tiny_phi3_ov, tmp_path):
    out, chart = tmp_path / "bench.json", tmp_path / "bench.png"
    done = run_cli("bench", "--model", str(tiny_phi3_ov), "--prompt-tokens", "8,32", "--new-tokens", "4",
                   "--runs", "2", "--json", str(out), "--plot", str(chart))
    assert done.returncode == 0, done.stderr
    assert "decode tok/s" in done.stdout and "first token ms" in done.stdout
    report = json.loads(out.read_text())
    assert {"model", "device", "size_mb", "load_s", "peak_rss_mb", "machine", "results", "runs", "warmup",
            "new_tokens"} <= set(report)
    assert [r["prompt_tokens"] for r in report["results"]] == [8, 32]
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 5000

    bad = run_cli("bench", "--model", str(tiny_phi3_ov), "--prompt-tokens", "8,x")
    assert bad.returncode == 2 and "comma-separated" in bad.stderr
