"""Data-aware recipes (AWQ, scale estimation on the shipped calibration text) and export's quality check."""

from __future__ import annotations

import json
import math
import re

import pytest
from helpers import copying_converter, headers_only, phi3_mini_shapes, run_cli, terminal

import ovchat
from ovchat import OvchatError, Recipe
from ovchat.build.calibrate import CALIBRATION_TEXT, calibration_samples, quantization_config
from ovchat.build.inventory import recipe_tag
from ovchat.build.recipe import SAMPLE_RECIPE
from ovchat.eval import check


def test_recipe_tags_name_the_data_aware_steps():
    assert Recipe().tag == "int4-sym-g32-r0.5-awq-se"  # the default, chosen in benchmarks/recipes.py
    assert SAMPLE_RECIPE.tag == "int4-sym-g128-r0.6" and not SAMPLE_RECIPE.data_aware
    assert Recipe(group_size=128, ratio=1.0, awq=False).tag == "int4-sym-g128-r1-se"
    assert Recipe(awq=True, scale_estimation=False).data_aware


def test_formats_without_int4_layers_have_nothing_to_calibrate():
    assert Recipe(weight_format="int8").tag == "int8" and not Recipe(weight_format="int8").data_aware
    # Asked for explicitly, calibration without int4 layers is an error, not silently dropped.
    with pytest.raises(OvchatError, match="awq calibrates int4 layers and fp16 has none: drop --awq"):
        Recipe(weight_format="fp16", awq=True)
    with pytest.raises(OvchatError, match="scale_estimation calibrates int4 layers and int8 has none"):
        Recipe(weight_format="int8", scale_estimation=True)
    assert Recipe(weight_format="int8", awq=False) == Recipe(weight_format="int8")
    with pytest.raises(OvchatError, match="ratio must be in"):
        Recipe(ratio=0)


def test_the_default_recipe_goes_by_the_models_size(tmp_path):
    from ovchat import catalog
    from ovchat.build.export import _recipe_for
    from ovchat.build.recipe import LARGE_RECIPE, default_recipe, with_defaults

    assert default_recipe(135e6) == Recipe() == default_recipe(None)
    assert default_recipe(3.82e9) == LARGE_RECIPE == SAMPLE_RECIPE and not LARGE_RECIPE.data_aware
    # A field given overrides the default's; int8 has no int4 layers to calibrate.
    assert with_defaults(3.82e9, ratio=1.0).tag == "int4-sym-g128-r1"
    assert with_defaults(135e6, weight_format="int8").tag == "int8"
    assert with_defaults(135e6, awq=False).tag == "int4-sym-g32-r0.5-se"
    # Known without a download: the catalog's count, or the files' own headers.
    assert _recipe_for(catalog.resolve("phi-3-mini"), {}) == LARGE_RECIPE
    assert _recipe_for(catalog.resolve("smollm2-135m"), {}) == Recipe()
    # The small-model layout asked for on a large model: calibration still follows the size unless asked.
    shape = {"weight_format": "int4", "group_size": 32, "ratio": 0.5, "sym": True}
    assert _recipe_for(catalog.resolve("phi-3-mini"), shape).tag == "int4-sym-g32-r0.5"
    folder = headers_only(tmp_path / "Phi-3-mini-4k-instruct", phi3_mini_shapes())
    (folder / "config.json").write_text("{}")
    assert _recipe_for(catalog.resolve(str(folder)), {"awq": True}).tag == "int4-sym-g128-r0.6-awq"


def test_manifests_from_before_awq_keep_their_tag():
    old = {"weight_format": "int4", "group_size": 128, "ratio": 0.6, "sym": True, "task": "x"}
    assert recipe_tag(old) == "int4-sym-g128-r0.6"
    assert recipe_tag({**old, "awq": True, "scale_estimation": False}) == "int4-sym-g128-r0.6-awq"
    assert recipe_tag({}) == "?" and recipe_tag({"weight_format": "int4", "ratio": 7}) == "?"


def test_calibration_samples_are_whole_paragraphs_spread_over_the_text():
    text = CALIBRATION_TEXT.read_text(encoding="utf-8")
    samples = calibration_samples(text)
    assert len(samples) == 64
    assert len(set(samples)) == 64
    assert all(600 <= len(s) <= 2400 for s in samples)
    flat = " ".join(text.split())
    for s in samples:  # each paragraph of a sample appears in the text as it is
        assert all(p in flat for p in s.split("\n\n"))
    positions = [flat.index(s.split("\n\n")[0]) for s in samples]
    assert positions == sorted(positions)
    assert positions[0] < len(flat) * 0.05 and positions[-1] > len(flat) * 0.9
    assert calibration_samples(text) == samples  # the same every time: exports are reproducible


def test_calibration_samples_of_short_or_odd_text():
    assert calibration_samples("One.\n\nTwo.", count=8) == ["One.\n\nTwo."]
    giant = "word " * 5000  # one paragraph far longer than a sample: cut, not kept whole
    assert [len(s) for s in calibration_samples(giant, count=4, chars=100)] == [200]


def test_quantization_config_says_what_optimum_intel_needs():
    cfg = quantization_config(Recipe(scale_estimation=False).__dict__, ["a", "b"])
    assert cfg["quant_method"] == "awq" and cfg["scale_estimation"] is None
    assert cfg["dataset"] == ["a", "b"] and cfg["num_samples"] == 2
    assert (cfg["bits"], cfg["ratio"], cfg["group_size"], cfg["sym"]) == (4, 0.5, 32, True)
    cfg = quantization_config(Recipe(awq=False, sym=False).__dict__, ["a"])
    assert cfg["quant_method"] == "default" and cfg["scale_estimation"] is True and cfg["sym"] is False


def test_hints_point_to_the_next_recipe_to_try():
    assert "--awq --scale-estimation" in check.hint(SAMPLE_RECIPE)
    assert "--ratio 0.4" in check.hint(SAMPLE_RECIPE)
    assert "--group-size 32" in check.hint(SAMPLE_RECIPE)
    assert "--awq" not in check.hint(Recipe()) and "--group-size" not in check.hint(Recipe())
    assert "--ratio 0.3" in check.hint(Recipe())
    assert "fp16" in check.hint(Recipe(weight_format="int8"))


@pytest.mark.slow  # a real terminal
def test_data_aware_export_of_the_tiny_model(tiny_phi3_dir, tiny_phi3_ov, tmp_path):
    import pexpect

    # AWQ + SE: the default. In a terminal, each step's progress is one line kept up to date.
    child = terminal("-m", "ovchat.cli", "export", str(tiny_phi3_dir), "-o", str(tmp_path / "awq"), "--ratio", "1")
    child.expect(pexpect.EOF)
    shown = child.before
    assert child.proc.wait(60) == 0, shown
    assert "calibrated on shipped text" in shown and "  converting to OpenVINO IR" in shown
    # Known before it starts: the estimate against the memory there is.
    assert re.search(r"this export \(int4-sym-g32-r1-awq-se, \d+ M parameters\) needs about [\d.]+ GB of memory "
                     r"at its peak and about a minute on 2 cores; [\d.]+ GB available", shown), shown[:2000]
    # Between bars, a step that draws none still moves: its name and time, kept up to date.
    assert re.search(r"\r\x1b\[K  converting to OpenVINO IR: \d+:\d\d", shown), shown[-3000:]
    for step in ("Statistics collection", "Applying data-aware AWQ", "Applying Scale Estimation"):
        assert re.search(rf"\r\x1b\[K  {step}: 100% \(\d+/\d+\), [\d:]+\r\n", shown), (step, shown[-2000:])
    assert "━" not in shown and "it/s" not in shown  # the libraries' own bars are not shown as well
    info = json.loads((tmp_path / "awq" / "ovchat_manifest.json").read_text())
    assert info["recipe"]["awq"] is True and info["recipe"]["scale_estimation"] is True
    # Calibration moved the weights: the data-aware IR differs from the plain one of the same recipe.
    # Not in a terminal: one line per finished step.
    lines: list[str] = []
    plain = ovchat.export(str(tiny_phi3_dir), tmp_path / "plain", ratio=1.0, awq=False, scale_estimation=False,
                          log=lines.append)
    assert len([line for line in lines if line.startswith("  Applying Weight Compression: done in ")]) == 1, lines
    assert (plain / "openvino_model.bin").read_bytes() != (tmp_path / "awq" / "openvino_model.bin").read_bytes()
    # ... in the same layout: at ratio 1 every layer but the embeddings and the head is int4 in both.
    assert info["weights"] == json.loads((plain / "ovchat_manifest.json").read_text())["weights"]
    assert info["weights"]["int8 per-channel"] <= 2
    assert ovchat.load(str(tmp_path / "awq")).generate("Hi", max_new_tokens=4)  # and it still runs


def test_quick_check_against_the_source(tiny_phi3_dir, tiny_phi3_ov):
    result = check.quick_check(tiny_phi3_ov, tiny_phi3_dir)
    assert result["tokens"] > 100
    # The paired ratio is exactly the two perplexities' ratio (both from the same tokens).
    assert math.isclose(result["ppl_ratio"]["value"], result["perplexity"] / result["source_perplexity"], rel_tol=1e-3)
    assert 0 <= result["top1_agreement"] <= 1 and result["kl_mean"] >= 0


@pytest.mark.slow
def test_fp16_export_checks_out_lossless(tiny_phi3_dir, tmp_path):
    done = run_cli("export", str(tiny_phi3_dir), "-o", str(tmp_path / "fp16"), "--weight-format", "fp16")
    assert done.returncode == 0, done.stderr
    assert "quality: perplexity" in done.stderr and "warning" not in done.stderr
    result = json.loads((tmp_path / "fp16" / "ovchat_manifest.json").read_text())["quality_check"]
    assert abs(result["ppl_ratio"]["value"] - 1) < 0.01 and result["top1_agreement"] > 0.98


def test_no_check_skips_it(tiny_phi3_dir, tiny_phi3_ov, tmp_path):
    logs: list[str] = []
    out = ovchat.export(str(tiny_phi3_dir), tmp_path / "out", check=False, converter=copying_converter(tiny_phi3_ov),
                        log=logs.append)
    assert logs and not [line for line in logs if "quality" in line]
    assert "quality_check" not in json.loads((out / "ovchat_manifest.json").read_text())


def test_the_check_runs_by_default_on_a_small_source(tiny_phi3_dir, tiny_phi3_ov, tmp_path):
    logs: list[str] = []
    out = ovchat.export(str(tiny_phi3_dir), tmp_path / "out", converter=copying_converter(tiny_phi3_ov),
                        log=logs.append)
    assert [line for line in logs if line.startswith("quality: perplexity")]
    assert json.loads((out / "ovchat_manifest.json").read_text())["quality_check"]["tokens"] > 100


def test_a_lossy_export_warns_with_a_hint(tiny_phi3_dir, noisy_ov, tmp_path):
    # The conversion hands back a damaged model (noise on every weight): far past the threshold, as
    # plain int4 group 128 everywhere is for SmolLM2-135M (+30%, docs/quality.md).
    logs: list[str] = []
    recipe = {"group_size": 128, "ratio": 1.0, "awq": False, "scale_estimation": False}
    out = ovchat.export(str(tiny_phi3_dir), tmp_path / "r1", **recipe, check=True,
                        converter=copying_converter(noisy_ov), log=logs.append)
    said = "\n".join(logs)
    assert "warning: this export's perplexity is more than 15% above its source's" in said
    assert "try --awq --scale-estimation" in said and "--group-size 32" in said
    result = json.loads((out / "ovchat_manifest.json").read_text())["quality_check"]
    assert result["warning"] is True and result["ppl_ratio"]["value"] > 1.15
