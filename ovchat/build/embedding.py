"""Exporting a sentence-embedding model: optimum-intel exports the encoder (`--task feature-extraction`,
its hidden states); OpenVINO GenAI's TextEmbeddingPipeline pools and normalises them as the model's
sentence-transformers files say (ovchat.embeddings.pooling, kept in the manifest)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..embeddings import open_pipeline
from ..errors import OvchatError
from . import progress
from .converter import Log, failure_reason, run_relayed
from .recipe import Recipe

EMBEDDING_TASK = "feature-extraction"
DEFAULT_WEIGHTS = "fp16"  # an encoder this small loses nothing measurable at fp16 (cosine 0.99999)


def recipe(weight_format: str | None) -> Recipe:
    if weight_format == "int4":
        raise OvchatError("an embedding model exports with fp16 (the default) or int8 weights, not int4")
    return Recipe(weight_format=weight_format or DEFAULT_WEIGHTS)


def convert(source_dir: Path, out_dir: Path, recipe: Recipe, log_path: Path, log: Log) -> int:
    """optimum-intel's exporter for an encoder, in a child process (as ovchat.build.converter runs it)."""
    cmd = [sys.executable, "-m", "optimum.commands.optimum_cli", "export", "openvino", "-m", str(source_dir),
           "--task", EMBEDDING_TASK, "--library", "transformers", *recipe.optimum_args(), str(out_dir)]
    log(f"exporting the embedding model with optimum-intel ({recipe.tag})")
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore", **progress.CHILD_ENV}
    returncode, peak = run_relayed(cmd, env, log_path, log)
    if returncode != 0:
        raise OvchatError(f"optimum-intel could not export {source_dir}: {failure_reason(log_path, returncode)} "
                          f"(full log: {log_path})")
    log_path.unlink()
    return peak


def self_check(folder: Path, settings: dict) -> dict:
    """Before publishing: the pipeline loads and gives a unit vector (if normalised) of finite numbers."""
    import numpy as np

    vector = np.asarray(open_pipeline(folder, "CPU", settings).embed_query("The cat sat on the mat."))
    if not np.isfinite(vector).all() or (settings["normalize"] and abs(np.linalg.norm(vector) - 1) > 1e-3):
        raise OvchatError(f"the exported embedding model gives a bad vector (norm {np.linalg.norm(vector):.3f})")
    return {"embedding_dimensions": int(vector.shape[-1])}
