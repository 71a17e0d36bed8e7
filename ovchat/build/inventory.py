"""What the models directory holds: complete exports (those with a manifest) and their recipes."""

from __future__ import annotations

from dataclasses import fields

from .. import catalog, manifest, runtime
from ..errors import OvchatError
from .recipe import Recipe


def recipe_tag(recipe: dict) -> str:
    """The short name of a manifest's recipe (int4-sym-g128-r0.6, fp16, ...), or "?"."""
    if "weight_format" not in recipe:
        return "?"
    try:
        # Manifests written before data-aware recipes existed have no awq/scale_estimation: they had none.
        known = {"awq": False, "scale_estimation": False, **recipe}
        return Recipe(**{f.name: known[f.name] for f in fields(Recipe) if f.name in known}).tag
    except (TypeError, OvchatError):
        return "?"


def _sampling(folder, info: dict) -> str:
    params, source = runtime.recommended_sampling(folder, info)
    return f"{params.summary()} ({source})"


def exported_models() -> list[dict]:
    """One row per complete export: folder, size on disk, recipe, source. Partial folders are skipped."""
    root = catalog.models_home() / "models"
    rows = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        try:
            info = manifest.read(folder)
        except OvchatError:
            continue
        if info is None:
            continue
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        rows.append(
            {
                "folder": folder.name,
                "path": str(folder),
                "size_mb": size / 1e6,
                "recipe": recipe_tag(info.get("recipe", {})),
                "source": info.get("source", {}).get("spec", "?"),
                "kind": info.get("kind", "chat"),
                "sampling": _sampling(folder, info) if info.get("kind", "chat") == "chat" else "",
            }
        )
    return rows
