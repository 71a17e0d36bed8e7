"""`ovchat.load`: from any model source to a compiled `Model`, exporting it once when needed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from . import catalog, runtime
from .config import DEFAULT_DEVICE
from .embeddings import Embedder, embedder_for
from .errors import OvchatError, print_nothing
from .model import Model, compile_folder
from .precision import choose as choose_precision

if TYPE_CHECKING:
    from .build.recipe import Recipe


def prepare(model: str, device: str, recipe: Recipe | None = None, log=print_nothing) -> tuple[Path, dict | None]:
    """Everything before compiling: the device exists, the model is exported, its files are whole."""
    from .build.export import ensure_exported  # light at import; exporting itself needs the extra

    runtime.check_device(device)
    path = ensure_exported(model, recipe, log=log)
    return path, runtime.verify_folder(path)


def load(
    model: str = catalog.DEFAULT_MODEL,
    *,
    device: str = DEFAULT_DEVICE,
    cache_dir: str | None = None,
    config: dict | None = None,
    recipe: Recipe | None = None,
    prompt_lookup: bool = False,
    precision: str | None = None,
    kv_cache_precision: str | None = None,
    log: Callable[[str], None] = print_nothing,
) -> Model:
    """Load a model by alias, path, .gguf file, hub id or exported folder (exporting it once if needed).

    `config` adds OpenVINO properties to the sample's latency config; `cache_dir=""` turns off the
    compiled-model cache (default: under the models directory). `recipe` (an `ovchat.Recipe`) picks
    the export recipe when the model is not exported yet (default: ovchat's for the model's size,
    `ovchat.build.recipe.default_recipe`).
    `prompt_lookup` drafts tokens by matching the last words against the prompt (OpenVINO GenAI's
    prompt-lookup decoding): the same answer, about twice as fast when it quotes or edits the prompt,
    about 15% slower when it does not (docs/speed.md).
    `precision` (f32, bf16, f16) and `kv_cache_precision` (f32, bf16, f16, u8) override the
    precisions ovchat picks for the device (`ovchat.precision.choose`; `model.precision` says which ran).
    """
    chosen = choose_precision(device, precision, kv_cache_precision, config=config)
    if catalog.kind(catalog.resolve(model)) == "embedding":
        raise OvchatError(
            f"{model} is an embedding model, not a chat model: serve it with `ovchat serve --embedding-model` "
            "or load it with ovchat.load_embedder"
        )
    path, info = prepare(model, device, recipe, log)
    properties = runtime.runtime_properties(config, cache_dir, chosen)
    return compile_folder(path, device, info, properties, prompt_lookup=prompt_lookup, precision=chosen)


def load_embedder(model: str, *, device: str = DEFAULT_DEVICE, log: Callable[[str], None] = print_nothing) -> Embedder:
    """An embedding model by alias, folder or hub id (exported once, fp16, if needed), ready to embed."""
    if catalog.kind(catalog.resolve(model)) != "embedding":
        raise OvchatError(f"{model} is not an embedding model (a chat model is loaded with ovchat.load)")
    path, info = prepare(model, device, log=log)
    return embedder_for(path, info, device)
