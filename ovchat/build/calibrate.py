"""Data-aware int4 (AWQ, scale estimation) calibrated on text that ships with ovchat.

optimum-intel's command line takes only hub dataset names for calibration, and hubs are out of
reach offline; its Python API takes a list of strings. `python -m ovchat.build.calibrate SRC OUT RECIPE`
runs the same two steps as `optimum-cli export openvino` (export, then quantize the exported model)
with the shipped calibration text, in a child process like the plain export.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from ..config import DATA
from .progress import STEP

CALIBRATION_TEXT = DATA / "pride_and_prejudice_ch1-39.txt"
SAMPLES = 64  # nncf's AWQ uses 32 samples, scale estimation 64
SAMPLE_CHARS = 1200  # ~300 tokens: whole paragraphs, so each sample reads as ordinary prose


def calibration_samples(text: str, count: int = SAMPLES, chars: int = SAMPLE_CHARS) -> list[str]:
    """`count` pieces of about `chars` characters, each made of whole paragraphs, spread over the text."""
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]
    pieces: list[str] = []
    current = ""
    for para in paragraphs:
        current = f"{current}\n\n{para}" if current else para
        if len(current) >= chars:
            pieces.append(current[: chars * 2])  # a giant paragraph must not make a giant sample
            current = ""
    if current:
        pieces.append(current)
    if len(pieces) <= count:
        return pieces
    step = len(pieces) / count
    return [pieces[int(i * step)] for i in range(count)]


def quantization_config(recipe: dict, samples: list[str]) -> dict:
    """The weight-compression config optimum-intel's CLI would build, with our samples as the dataset."""
    return {
        "bits": 4,
        "sym": recipe["sym"],
        "group_size": recipe["group_size"],
        "ratio": recipe["ratio"],
        "dataset": samples,
        "num_samples": len(samples),
        "quant_method": "awq" if recipe["awq"] else "default",
        "scale_estimation": recipe["scale_estimation"] or None,
        "group_size_fallback": "adjust",
        "dtype": "int4",
    }


def main(argv: list[str]) -> int:
    source, output, recipe_json = argv
    from optimum.exporters.openvino.__main__ import _main_quantize, main_export
    from optimum.intel.openvino.configuration import OVConfig

    from ..config import EXPORT_TASK

    samples = calibration_samples(CALIBRATION_TEXT.read_text(encoding="utf-8"))
    config = quantization_config(json.loads(recipe_json), samples)
    print(f"calibrating on {len(samples)} samples of {CALIBRATION_TEXT.name}", flush=True)
    # The same two calls as optimum-intel's `export openvino` command (optimum-intel 2.1).
    print(f"{STEP}converting to OpenVINO IR", flush=True)
    main_export(
        model_name_or_path=source,
        output=output,
        task=EXPORT_TASK,
        ov_config=OVConfig(quantization_config=config),
        library_name="transformers",
        stateful=True,
        convert_tokenizer=True,
    )
    print(f"{STEP}compressing the weights, calibrated on {len(samples)} samples", flush=True)
    _main_quantize(
        model_name_or_path=source,
        task=EXPORT_TASK,
        library_name="transformers",
        quantization_config=config,
        output=Path(output),
        cache_dir=None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
