"""Sentence embeddings from an exported encoder, run by OpenVINO GenAI's TextEmbeddingPipeline: the
vectors of a list of texts, and how many tokens each took (truncated as sentence-transformers does)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import catalog, runtime
from .config import DEFAULT_DEVICE, LATENCY_CONFIG
from .errors import OvchatError, describe

_POOLING = {"mean": "MEAN", "cls": "CLS", "last": "LAST_TOKEN"}
DEFAULT_MAX_LENGTH = 512  # BERT's positions, for a folder that does not say


def pooling(source: Path) -> dict:
    """How sentence-transformers turns this model's hidden states into a sentence vector: "mean" or "cls"
    pooling, normalised or not, truncated at max_length tokens."""

    def read(name: str) -> dict:
        try:
            return json.loads((source / name).read_text())
        except (OSError, ValueError):
            return {}

    modules = read("modules.json")
    modules = [m for m in modules if isinstance(m, dict)] if isinstance(modules, list) else []
    kinds = [str(m.get("type", "")) for m in modules]
    folder = next((m.get("path") for m in modules if kinds[modules.index(m)].endswith("Pooling")), "1_Pooling")
    pool = read(f"{folder}/config.json")
    if pool.get("pooling_mode_cls_token"):
        mode = "cls"
    elif pool.get("pooling_mode_lasttoken"):
        mode = "last"
    else:
        mode = "mean"  # sentence-transformers' own default, and what most embedding models use
    max_length = read("sentence_bert_config.json").get("max_seq_length")
    if not isinstance(max_length, int):
        max_length = read("config.json").get("max_position_embeddings") or DEFAULT_MAX_LENGTH
    normalize = any(k.endswith("Normalize") for k in kinds) or not kinds
    return {"pooling": mode, "normalize": normalize, "max_length": max_length}


def open_pipeline(folder: Path, device: str, settings: dict, properties: dict | None = None):
    """GenAI's TextEmbeddingPipeline for an exported folder, pooling as `settings` say."""
    import openvino_genai as ov_genai

    kinds = ov_genai.TextEmbeddingPipeline
    config = kinds.Config()
    config.pooling_type = getattr(kinds.PoolingType, _POOLING[settings["pooling"]])
    config.normalize = bool(settings["normalize"])
    config.max_length = int(settings["max_length"])
    try:
        return kinds(str(folder), device, config, **(properties or {}))
    except RuntimeError as exc:
        raise OvchatError(f"OpenVINO could not load the embedding model {folder} on {device}: {describe(exc)}") \
            from None


@dataclass
class Embedder:
    """An embedding model ready to use: `embed(texts)` gives one vector a text (thread-safe, one batch at a
    time; a text past max_length tokens is cut there, as sentence-transformers does)."""

    name: str
    path: Path
    settings: dict  # pooling, normalize, max_length
    dimensions: int
    pipeline: object
    tokenizer: object
    created: int

    def __post_init__(self):
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> np.ndarray:
        with self._lock:  # one pipeline, one batch at a time
            return np.asarray(self.pipeline.embed_documents(list(texts)), dtype=np.float32)

    def lengths(self, texts: list[str]) -> list[int]:
        """Tokens each text is, special tokens included (the model reads the first max_length)."""
        return [len(self.tokenizer.encode(t).input_ids.data[0]) for t in texts]


def embedder_for(path: Path, info: dict | None, device: str = DEFAULT_DEVICE) -> Embedder:
    """An Embedder for an exported embedding folder (its manifest's pooling, else its files')."""
    import openvino_genai as ov_genai

    info = info or {}
    settings = info.get("embedding") or pooling(path)
    properties = {**LATENCY_CONFIG, "CACHE_DIR": str(catalog.compile_cache_dir())}
    if device.upper().startswith("CPU"):
        # f32, no int8 activations, on every CPU: the same vectors as the model's reference (an Intel Xeon
        # would otherwise infer in bf16), and an encoder this small is cheap in f32.
        properties |= {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}
    pipeline = open_pipeline(path, device, settings, properties)
    dimensions = int(np.asarray(pipeline.embed_query("a")).shape[-1])
    name = runtime.model_name(path, info)
    tokenizer = ov_genai.Tokenizer(str(path))
    return Embedder(name, path, settings, dimensions, pipeline, tokenizer, int(path.stat().st_mtime))
