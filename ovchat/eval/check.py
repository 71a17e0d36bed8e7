"""The export's quick quality check: perplexity of the new export against its float source, a few seconds.

`ovchat export` runs it before publishing (when the float model is small enough to be cheap, or
always with --check) and records the result in the manifest; a loss above WARN_RATIO gets a warning
with what to try instead.
"""

from __future__ import annotations

import time
from pathlib import Path

from .. import runtime
from ..config import DEFAULT_DEVICE
from ..errors import OvchatError, describe

CHECK_TOKENS = 1024  # of the shipped Alice chapters: three windows of 512, under 20 s for a 135M model
WARN_RATIO = 1.15  # 15% above the source: more than data-aware recipes at ratio <= 0.8 cost SmolLM2-135M (11%)
AUTO_MAX_SOURCE_BYTES = 2 << 30  # float32 weights up to 2 GiB (~500M parameters): cheap enough to run by default


def source_float_bytes(hf_dir: Path) -> int:
    """About what the source's weights take in float32: the size of its safetensors/bin files, widened."""
    import json

    files = [p for p in hf_dir.glob("*") if p.suffix in (".safetensors", ".bin") and p.is_file()]
    size = sum(p.stat().st_size for p in files)
    try:
        dtype = json.loads((hf_dir / "config.json").read_text()).get("torch_dtype") or "float32"
    except (OSError, ValueError):
        dtype = "float32"
    return size * (1 if dtype == "float32" else 2)


def hint(recipe) -> str:
    """What to try when the export loses too much (recipe: an ovchat.Recipe)."""
    if recipe.weight_format == "int8":
        return "this model is sensitive to 8-bit weights: try --weight-format fp16"
    if recipe.weight_format != "int4":
        return "fp16 should be lossless: check the source model"
    tips = []
    if not recipe.awq:
        tips.append("--awq --scale-estimation (data-aware, calibrated on shipped text)")
    if recipe.group_size > 32:
        tips.append("--group-size 32 (a scale per 32 weights)")
    if recipe.ratio > 0.4:
        tips.append(f"--ratio {max(0.2, round(recipe.ratio - 0.2, 1)):g} (more layers in int8)")
    tips.append("--weight-format int8")
    return "try " + ", or ".join(tips)


def quick_check(folder: Path, source_hf: Path, tokens: int = CHECK_TOKENS, device: str = DEFAULT_DEVICE) -> dict:
    """Perplexity of `folder` (an OpenVINO export) and of `source_hf` (its float original) on the same
    tokens; the paired ratio with its standard error, top-1 agreement and KL."""
    import openvino_genai as ov_genai

    from .logits import OpenVINOLogits, TorchLogits
    from .scoring import DEFAULT_TEXT, DEFAULT_WINDOW, read_text, score_text

    started = time.perf_counter()
    ids = runtime.encode(ov_genai.Tokenizer(str(folder)), read_text(DEFAULT_TEXT))[:tokens]
    model = OpenVINOLogits(folder, device)
    try:
        ref = TorchLogits(source_hf)
    except (RuntimeError, MemoryError) as exc:
        raise OvchatError(f"could not load the source model {source_hf} for the check: {describe(exc)}") from None
    window = min(DEFAULT_WINDOW, model.context_length, ref.context_length)
    ref_tally, tally = score_text([ref, model], ids, window, window // 2)
    versus = tally.versus_reference()
    return {
        "text": DEFAULT_TEXT.name,
        "tokens": tally.tokens,
        "perplexity": round(tally.perplexity()["value"], 3),
        "source_perplexity": round(ref_tally.perplexity()["value"], 3),
        "ppl_ratio": {k: round(v, 4) for k, v in versus["ppl_ratio"].items()},
        "top1_agreement": round(versus["top1_agreement"]["value"], 4),
        "kl_mean": round(versus["kl"]["mean"], 5),
        "seconds": round(time.perf_counter() - started, 1),
    }


def describe_check(result: dict) -> str:
    ratio = result["ppl_ratio"]
    return (
        f"perplexity {result['perplexity']:.2f} against the source's {result['source_perplexity']:.2f} "
        f"({(ratio['value'] - 1) * 100:+.1f}% ± {ratio['se'] * 100:.1f}%), top-1 agreement "
        f"{result['top1_agreement']:.3f}, on {result['tokens']} tokens of {result['text']} ({result['seconds']:.0f} s)"
    )
