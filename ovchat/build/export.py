"""Hugging Face / GGUF → OpenVINO IR with int4 weights, published atomically with a manifest.

The flow: check the recipe and the target → lock → convert GGUF if needed → optimum-intel's
exporter into a temporary folder beside the target → self-check → manifest (last) → rename.
A kill at any moment leaves the old folder or none, never a half folder that passes for complete.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import catalog, manifest
from ..config import DISK_FACTOR_FOLDER, DISK_FACTOR_GGUF, DISK_MARGIN_BYTES, EXPORT_TASK
from ..embeddings import pooling
from ..errors import OvchatError, describe, print_nothing
from . import embedding, estimate
from .converter import optimum_converter
from .recipe import FIELDS, Recipe, with_defaults

Log = Callable[[str], None]
# Writes an OpenVINO folder (IR, tokenizer, detokenizer, configs) for a float Hugging Face folder:
# converter(source_dir, out_dir, recipe, log_path, log), returning the peak memory in bytes it measured
# (or None). The default is optimum-intel's exporter; the rest of an export (room, memory, lock,
# self-check, manifest, atomic publish) is the same for any converter.
Converter = Callable[[Path, Path, Recipe, Path, Log], "int | None"]


def _need_export_extra() -> None:
    import importlib.util

    missing = [
        m
        for m in ("torch", "optimum.intel", "nncf", "transformers")
        if importlib.util.find_spec(m.split(".")[0]) is None
    ]
    if missing:
        raise OvchatError(
            f"exporting needs {', '.join(missing)}: install the export extra (pip install 'ovchat[export]'), "
            "or pass a folder that is already exported"
        )


def _bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _check_room(parent: Path, source: Path) -> None:
    # Asked for before any long work starts (see the factors in ovchat.config).
    size = _bytes(source)
    need = size * (DISK_FACTOR_GGUF if source.is_file() else DISK_FACTOR_FOLDER) + DISK_MARGIN_BYTES
    free = shutil.disk_usage(parent).free
    if free < need:
        raise OvchatError(
            f"not enough free disk space in {parent}: about {need / 1e9:.2f} GB needed, {free / 1e9:.2f} GB free; "
            "free some space or pass another output folder with -o"
        )


def _prepare_parent(parent: Path) -> None:
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".ovchat-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OvchatError(
            f"cannot write to {parent} ({describe(exc)}); pass an output folder you can write with -o"
        ) from None


@contextmanager
def _locked(target: Path, wait: bool, log: Log) -> Iterator[None]:
    lock_path = target.parent / f".{target.name}.lock"
    with open(lock_path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise OvchatError(f"another export to {target} is running; wait for it to finish") from None
            log(f"waiting for another export of this model to finish ({target})")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _clean_stale(target: Path) -> None:
    # Under the lock no one else writes beside this target: these folders are from killed runs.
    for pattern in ("tmp", "src", "old"):
        for stale in target.parent.glob(f".{target.name}.{pattern}-*"):
            if pattern == "old" and not target.exists() and manifest.read(stale) is not None:
                stale.rename(target)  # killed between the two renames of --force: the old folder comes back
            else:
                shutil.rmtree(stale, ignore_errors=True)


def _check_replaceable(target: Path, source: Path | None) -> None:
    # --force swaps whole folders: never let it delete something that is not an export.
    if source is not None and (target == source or target in source.parents):
        raise OvchatError(f"the output folder {target} holds the source model; pick another one with -o")
    if target.is_file():
        raise OvchatError(f"{target} is a file; pass a folder with -o")
    if target.is_dir() and any(target.iterdir()) and not catalog.is_exported(target):
        raise OvchatError(
            f"{target} is not empty and is not an exported model folder; refusing to replace it: pick a new folder"
        )


def weight_summary(xml: Path) -> dict:
    """What the IR really holds: compressed layers by precision and group size (read from the IR)."""
    import openvino as ov

    layers: Counter[str] = Counter()
    for op in ov.Core().read_model(xml).get_ordered_ops():
        if op.get_type_name() != "Constant":
            continue
        kind = op.get_element_type().get_type_name()
        shape = list(op.get_output_partial_shape(0).to_shape())
        if kind in ("i4", "u4") and len(shape) == 3 and shape[-1] > 1:
            layers[f"int4 group {shape[-1]}"] += 1
        elif kind in ("i8", "u8") and len(shape) == 2 and min(shape) > 1:
            layers["int8 per-channel"] += 1
    return dict(sorted(layers.items()))


def self_check(folder: Path) -> dict:
    """Before publishing: every artifact non-empty, each IR reads, the tokenizer round-trips, one token generates."""
    import openvino as ov
    import openvino_genai as ov_genai
    import openvino_tokenizers  # noqa: F401  (registers the tokenizer ops with OpenVINO)

    for name in ("openvino_model", "openvino_tokenizer", "openvino_detokenizer"):
        for suffix in (".xml", ".bin"):
            path = folder / (name + suffix)
            if not path.is_file() or path.stat().st_size == 0:
                raise OvchatError(f"export produced no usable {path.name} in {folder}")
        ov.Core().read_model(folder / f"{name}.xml")
    pipe = ov_genai.LLMPipeline(str(folder), "CPU")
    tokenizer = pipe.get_tokenizer()
    sample = "Hello, world! 12 + 7 = 19.\nÉté — ok"
    ids = tokenizer.encode(sample, add_special_tokens=False).input_ids
    back = tokenizer.decode(ids.data[0].tolist(), skip_special_tokens=True)
    if back != sample:
        raise OvchatError(f"the exported tokenizer does not round-trip text: {sample!r} came back as {back!r}")
    config = ov_genai.GenerationConfig(max_new_tokens=1, apply_chat_template=False)
    if pipe.generate(["Hello"], config).perf_metrics.get_num_generated_tokens() != 1:
        raise OvchatError("the exported model did not generate a token")
    return {"tokenizer_round_trip": True, "one_token_generation": True}


def _publish(tmp: Path, target: Path) -> None:
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        target.rename(old)  # --force swaps whole folders: old and new files never mix
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(target)


def export(
    model: str = catalog.DEFAULT_MODEL,
    output: str | os.PathLike | None = None,
    *,
    weight_format: str | None = None,
    group_size: int | None = None,
    ratio: float | None = None,
    sym: bool | None = None,
    awq: bool | None = None,
    scale_estimation: bool | None = None,
    force: bool = False,
    check: bool | None = None,
    memory_check: bool = True,
    converter: Converter | None = None,
    log: Log = print_nothing,
) -> Path:
    """Export `model` to an OpenVINO folder and return it.

    Recipe fields left None take the default for the model's size (`ovchat.build.recipe.default_recipe`).
    Without `output` the export goes to the models directory, keyed by source and recipe, and an
    existing complete export there is returned as is (unless `force`). `check` compares the new
    export's perplexity with its float source on a short text (None: when the source is small enough
    for that to take seconds) and warns when it lost too much. Before optimum-intel's exporter starts,
    its peak memory is estimated (ovchat.build.estimate) and an export that cannot fit is refused
    (`memory_check=False` tries anyway). `converter` replaces optimum-intel's exporter (see
    `Converter`); everything around it stays.
    """
    source = catalog.resolve(model)
    if source.kind == "exported":
        raise OvchatError(f"{source.location} is already exported: use it directly (--model {model})")
    local_source = Path(source.location) if source.kind in ("hf", "gguf") else None
    if source.kind == "gguf":
        from . import gguf

        gguf.check_gguf(local_source)  # not GGUF, or an architecture we cannot convert: say so at once
    given = dict(weight_format=weight_format, group_size=group_size, ratio=ratio, sym=sym, awq=awq,
                 scale_estimation=scale_estimation)
    kind = catalog.kind(source)
    recipe = _recipe_for(source, given, log, kind)
    cached = output is None
    target = catalog.export_dir(source, recipe.tag) if cached else Path(output).expanduser().resolve()
    if not cached and target.exists() and not force:
        raise OvchatError(f"{target} already exists: pass --force to replace it")
    if not cached:
        _check_replaceable(target, local_source)
    _prepare_parent(target.parent)
    with _locked(target, wait=cached, log=log):
        _clean_stale(target)
        # Checked again under the lock: another process may have published meanwhile.
        if cached and not force and manifest.read(target) is not None:
            log(f"already exported: {target} (--force exports again)")
            return target
        if not cached and target.exists() and not force:
            raise OvchatError(f"{target} already exists: pass --force to replace it")
        if converter is None:
            _need_export_extra()
        try:
            plan = _Plan(recipe, check, memory_check and converter is None and kind == "chat", model, kind)
            converter = converter or (embedding.convert if kind == "embedding" else optimum_converter)
            return _export_locked(source, target, plan, converter, log)
        except (OSError, RuntimeError) as exc:
            raise OvchatError(f"exporting {model} to {target} failed: {describe(exc)}") from None


@dataclass(frozen=True)
class _Plan:
    recipe: Recipe
    check: bool | None  # the quick quality check: None decides by size
    memory_check: bool  # estimate the converter's peak memory first, refuse what cannot fit
    name: str  # the model as the user named it, for messages
    kind: str = "chat"  # or "embedding"


def _export_locked(source: catalog.Source, target: Path, plan: _Plan, converter: Converter, log: Log) -> Path:
    started = time.time()
    recipe = plan.recipe
    local = catalog.materialize(source, log)
    _check_room(target.parent, local)
    cost = estimate.check(local, recipe, plan.name, log) if plan.memory_check else None
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    hf_tmp = target.parent / f".{target.name}.src-{os.getpid()}"
    try:
        tmp.mkdir()
        hf_dir = local
        if local.is_file():
            from . import gguf

            log(f"reading {local.name} (weights and tokenizer from the GGUF metadata)")
            hf_dir = gguf.gguf_to_hf(local, hf_tmp)
        peak = converter(hf_dir, tmp, recipe, target.parent / f".{target.name}.log", log)
        encoder = plan.kind == "embedding"
        if encoder:
            settings = pooling(hf_dir)
            log("checking the export (the pipeline embeds a sentence)")
            checks = embedding.self_check(tmp, settings)
        else:
            log("checking the export (IR, tokenizer round trip, one token)")
            checks = self_check(tmp)
        weights = weight_summary(tmp / "openvino_model.xml")
        # Layers whose width the group size does not divide got a smaller group: say which were used.
        adjusted = sorted({int(k.split()[-1]) for k in weights if k.startswith("int4 group")} - {recipe.group_size})
        shipped = source.kind == "wheel" or source.identity.startswith("wheel:")  # named by its alias
        spec = source.name if shipped else source.location
        task = embedding.EMBEDDING_TASK if encoder else EXPORT_TASK
        info = {
            "kind": plan.kind,
            "source": {"spec": spec, "kind": source.kind, "identity": source.identity},
            "recipe": {**asdict(recipe), "task": task, "adjusted_group_sizes": adjusted},
            "weights": weights,
            "checks": checks,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "export_seconds": round(time.time() - started, 1),
        }
        if peak:  # measured against the estimate: how docs/quality.md's cost table is kept honest
            info["export_peak_memory_gb"] = round(peak / estimate.GB, 2)
        if cost is not None:
            info["export_estimate"] = {"peak_memory_gb": round(cost.peak_bytes / estimate.GB, 2),
                                       "seconds": round(cost.seconds)}
        if encoder:
            info["embedding"] = settings  # how the pipeline pools: read at load, no sentence-transformers needed
        quality = None if encoder else _quality_check(tmp, hf_dir, recipe, plan.check, log)
        if quality is not None:
            info["quality_check"] = quality
        manifest.write(tmp, info)
        _publish(tmp, target)
        log(f"exported to {target}")
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(hf_tmp, ignore_errors=True)


def _quality_check(folder: Path, hf_dir: Path, recipe: Recipe, check: bool | None, log: Log) -> dict | None:
    """Perplexity against the float source (see ovchat.eval.check); a warning and a hint when it lost too much."""
    from ..eval import check as quality

    if check is False or (check is None and quality.source_float_bytes(hf_dir) > quality.AUTO_MAX_SOURCE_BYTES):
        if check is None:
            log("skipping the quick quality check (a large model; --check runs it, `ovchat eval` measures more)")
        return None
    log(f"checking quality: perplexity against the float source on {quality.CHECK_TOKENS} tokens")
    try:
        result = quality.quick_check(folder, hf_dir)
    except OvchatError as exc:
        if check:
            raise
        log(f"skipping the quick quality check: {exc}")
        return None
    log(f"quality: {quality.describe_check(result)}")
    if result["ppl_ratio"]["value"] > quality.WARN_RATIO:
        result["warning"] = True
        log(
            f"warning: this export's perplexity is more than {(quality.WARN_RATIO - 1) * 100:.0f}% above its source's; "
            f"{quality.hint(recipe)}"
        )
    return result


def _recipe_for(source: catalog.Source, given: dict, log: Log = print_nothing, kind: str | None = None) -> Recipe:
    """The fields given over the default for the source's size (counted without a download where it can be)."""
    if (kind or catalog.kind(source)) == "embedding":
        extra = [name for name in FIELDS if name != "weight_format" and given.get(name) is not None]
        if extra:
            verb = "applies" if len(extra) == 1 else "apply"
            raise OvchatError(f"{', '.join(extra)} {verb} to a chat model's int4 weights, not to an embedding model")
        return embedding.recipe(given.get("weight_format"))
    if all(given.get(name) is not None for name in FIELDS):
        return with_defaults(None, **given)  # every field given: the size changes nothing
    size = catalog.parameters(source)
    if size is None:  # a hub id ovchat does not know: its files tell
        from .estimate import parameters

        size = float(parameters(catalog.materialize(source, log))[0])
    return with_defaults(size, **given)


def ensure_exported(model: str, recipe: Recipe | None = None, log: Log = print_nothing) -> Path:
    """An exported folder for `model`: itself if already exported, else its cached export (made once),
    with `recipe` (default: ovchat's for the model's size)."""
    source = catalog.resolve(model)
    if source.kind == "exported":
        return Path(source.location)
    kind = catalog.kind(source)
    recipe = recipe or _recipe_for(source, {}, log, kind)
    cached = catalog.export_dir(source, recipe.tag)
    if manifest.read(cached) is not None:
        return cached  # the common case, quietly
    fields = asdict(recipe) if kind == "chat" else {"weight_format": recipe.weight_format}
    return export(model, **fields, log=log)
