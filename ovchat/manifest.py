"""The manifest an export writes last: its presence means the folder is complete.

It records the source, the recipe (with any group-size fallback), tool versions, and every file
with its size and sha256, so a truncated or missing file is named at load time.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

from .catalog import MANIFEST_NAME
from .errors import OvchatError

FORMAT_VERSION = 1
TOOLS = (
    "ovchat",
    "openvino",
    "openvino-genai",
    "openvino-tokenizers",
    "optimum-intel",
    "nncf",
    "transformers",
    "torch",
)
# Files a user may replace after the export: a chat template with a tool format of its own goes beside the
# model as chat_template.jinja (as OVMS's and vLLM's documents have it). Not checked against the manifest.
EDITABLE = frozenset({"chat_template.jinja"})


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def tool_versions() -> dict[str, str]:
    versions = {}
    for name in TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def write(folder: Path, info: dict) -> dict:
    """Hash every file in `folder` and write the manifest (last, atomically)."""
    files = {
        str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": sha256(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }
    manifest = {"format": FORMAT_VERSION, **info, "tools": tool_versions(), "files": files}
    partial = folder / (MANIFEST_NAME + ".part")
    partial.write_text(json.dumps(manifest, indent=2) + "\n")
    partial.replace(folder / MANIFEST_NAME)
    return manifest


def read(folder: Path) -> dict | None:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OvchatError(f"{path} is not valid JSON ({exc}); re-export the model with --force") from None


def verify(folder: Path, *, hashes: bool = False) -> dict | None:
    """Check every file the manifest lists exists with its size (and hash, if asked).

    Returns the manifest, or None for a folder exported by other tools (no manifest to check).
    """
    manifest = read(folder)
    if manifest is None:
        return None
    hint = "re-export it (ovchat export ... --force)"
    for name, entry in manifest.get("files", {}).items():
        if name in EDITABLE:
            continue
        path = folder / name
        if not path.is_file():
            raise OvchatError(f"model folder {folder} is incomplete: {name} is missing; {hint}")
        size = path.stat().st_size
        if size != entry["size"]:
            raise OvchatError(
                f"model folder {folder} is damaged: {name} has {size} bytes, the manifest says {entry['size']}; {hint}"
            )
        if hashes and sha256(path) != entry["sha256"]:
            raise OvchatError(f"model folder {folder} is damaged: {name} does not match its sha256; {hint}")
    return manifest
