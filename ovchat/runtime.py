"""Facts of an exported folder and the OpenVINO runtime around it: config, context, tokens, stop ids,
chat template, device and compile properties. No model is compiled here.

Runtime only: this module imports OpenVINO's packages, never torch or optimum.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from . import catalog, manifest
from .config import DEFAULT_CONTEXT_LENGTH, LATENCY_CONFIG
from .errors import OvchatError, describe
from .precision import Precision
from .sampling import CHAT_SAMPLING, RECOMMENDED_FIELDS, SamplingParams

# End-of-turn markers of common chat formats; those present in a vocabulary stop generation.
END_OF_TURN_TOKENS = ("<|end|>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|eom_id|>")

Message = dict[str, str]


def check_device(device: str) -> None:
    import openvino as ov

    available = ov.Core().available_devices
    base = device.split(".")[0].split(":")[0]
    if device in available or base in available or base in ("AUTO", "HETERO", "MULTI"):
        return
    raise OvchatError(f"unknown device '{device}': this machine has {', '.join(available)} (or AUTO)")


def read_json(path: Path) -> dict:
    """A JSON object from a file of the exported folder, or {} when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def model_config(folder: Path) -> dict:
    """The exported folder's config.json (architecture sizes), or {}."""
    return read_json(folder / "config.json")


def context_length(folder: Path) -> int:
    config = model_config(folder)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(config.get(key), int):
            return config[key]
    return DEFAULT_CONTEXT_LENGTH


def model_name(path: Path, info: dict | None) -> str:
    """What a model is called (in answers, in /v1/models): the alias or hub id it was exported from; for a
    local source, the export's folder name (a path names a machine's layout, not a model)."""
    spec = (info or {}).get("source", {}).get("spec")
    local = (info or {}).get("source", {}).get("kind") in ("hf", "gguf")
    if not spec or (local and "/" in str(spec)):
        return path.name
    return spec


def verify_folder(path: Path) -> dict | None:
    """The folder's manifest once its files are checked whole, and the tokenizer OpenVINO GenAI needs."""
    info = manifest.verify(path)
    if not (path / "openvino_tokenizer.xml").is_file():
        raise OvchatError(
            f"{path} has no openvino_tokenizer.xml (OpenVINO GenAI needs it): re-export it with `ovchat export`"
        )
    return info


def configured_stop_ids(path: Path) -> list[int]:
    """The stop ids the folder's generation_config.json names, read by OpenVINO GenAI's own parser: the
    ids a pipeline on this folder starts with, so a reader without a pipeline (the server) stops where
    `ovchat.model.Model` does."""
    import openvino_genai as ov_genai

    file = path / "generation_config.json"
    if not file.is_file():
        return []
    try:
        return sorted(ov_genai.GenerationConfig(str(file)).stop_token_ids)
    except RuntimeError:  # unreadable: eos and the end-of-turn markers still stop
        return []


# transformers' values for the sampling fields a generation_config.json leaves out
_TRANSFORMERS_SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": 50, "repetition_penalty": 1.0}


def _configured_sampling(path: Path) -> dict | None:
    """The sampling the folder's generation_config.json recommends (do_sample true), or None."""
    config = read_json(path / "generation_config.json")
    if config.get("do_sample") is not True:
        return None
    chosen = {}
    for name, default in _TRANSFORMERS_SAMPLING.items():
        value = config.get(name, default)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        chosen[name] = type(default)(value) if ok else default  # json reads NaN and Infinity too
    chosen["temperature"] = min(max(chosen["temperature"], 0.0), 2.0)  # within what SamplingParams takes
    chosen["top_p"] = chosen["top_p"] if 0 < chosen["top_p"] <= 1 else 1.0
    chosen["top_k"] = min(max(chosen["top_k"], 0), 2**31 - 1)
    chosen["repetition_penalty"] = chosen["repetition_penalty"] if chosen["repetition_penalty"] > 0 else 1.0
    return chosen


def recommended_sampling(path: Path, info: dict | None) -> tuple[SamplingParams, str]:
    """How a chat with this model picks tokens unless told otherwise, and where that comes from: the
    folder's generation_config.json when it recommends sampling, else the catalog entry's (its model
    card), else ovchat's measured default. `ovchat generate` does not use it: it stays greedy."""
    source = (info or {}).get("source", {})
    entry = catalog.entry_for(source.get("spec"), source.get("identity"))
    configured = _configured_sampling(path)
    if configured is not None:
        return SamplingParams(**configured), "the model's generation_config.json"
    if entry is not None and entry.sampling is not None:
        fields = {k: v for k, v in entry.sampling.items() if k in RECOMMENDED_FIELDS}
        return SamplingParams(**fields), f"the {entry.alias} model card"
    return SamplingParams(**CHAT_SAMPLING), "ovchat's default"


def encode(tokenizer, text: str, add_special_tokens: bool = True) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=add_special_tokens).input_ids.data[0].tolist()


def stop_token_ids(tokenizer, configured: Sequence[int] = ()) -> set[int]:
    """The configured stop ids, eos, and the end-of-turn markers this vocabulary has as single tokens."""
    stops = set(configured) | {tokenizer.get_eos_token_id()}
    for marker in END_OF_TURN_TOKENS:
        ids = encode(tokenizer, marker, add_special_tokens=False)
        if len(ids) == 1:  # a single id means the vocabulary has it as a special token
            stops.add(ids[0])
    return {t for t in stops if t >= 0}


def use_folder_template(tokenizer, folder: Path):
    """The tokenizer, with a chat_template.jinja beside the model in place of its own template (as OVMS
    and transformers take it: how a model gets a template with its tool format, e.g. Phi-4-mini's)."""
    jinja = Path(folder) / "chat_template.jinja"
    own = tokenizer.chat_template
    template = jinja.read_text(encoding="utf-8") if jinja.is_file() else own
    if template == own:
        return tokenizer
    tokenizer.set_chat_template(template)
    try:
        tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    except RuntimeError:  # beyond GenAI's template engine: the template the export converted stays
        tokenizer.set_chat_template(own)
    return tokenizer


def render(
    tokenizer, name: str, messages: Sequence[Message], add_generation_prompt: bool = True, tools: list | None = None
) -> str:
    """The prompt text the model sees: the messages (and tools, for a template that writes them) in the
    model's own chat template."""
    try:
        return tokenizer.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt, tools=tools)
    except RuntimeError as exc:  # no template, or the template itself refuses (e.g. no system role)
        raise OvchatError(f"{name} cannot format these messages ({describe(exc)}); use raw mode") from None


def runtime_properties(config: dict | None, cache_dir: str | None, precision: Precision | None = None) -> dict:
    """The sample's latency config, the caller's additions, the precision (which wins: it was chosen with
    the caller's additions in view) and the compiled-model cache ("" turns it off)."""
    properties = {**LATENCY_CONFIG, **(config or {}), **(precision.properties() if precision else {})}
    cache = str(catalog.compile_cache_dir()) if cache_dir is None else cache_dir
    if cache:
        # One cache folder per precision: OpenVINO's cache does not key its blobs on the inference
        # precision, and serves (and runs) a bf16 blob to a later f32 request.
        properties["CACHE_DIR"] = str(Path(cache) / precision.tag) if precision else cache
    return properties
