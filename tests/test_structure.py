"""The shape of the package: imports run one way (no cycle, lazy imports included) and no module
grows past what one reader holds in mind."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ovchat"
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _type_checking_only(tree: ast.AST) -> set[int]:
    """Line numbers of imports under `if TYPE_CHECKING:` (never run)."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for child in ast.walk(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    lines.add(child.lineno)
    return lines


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `name` imports, at module level or inside functions."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_only(tree)
    # The package's own __init__ imports the public API from most modules: a module may read a name
    # from it lazily (inside a function, once everything is loaded), never at import time.
    functions = [f for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))]
    lazy = {id(n) for f in functions for n in ast.walk(f)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        root_lazily = id(node) in lazy and "ovchat"
        found |= {t for t in targets if t in known and t != name and t != root_lazily}
    return found


def _defined(path: Path) -> set[str]:
    """Names a module defines at its top level (functions, classes, assignments, imports)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return names


def unresolved(name: str, path: Path, modules: dict[str, Path]) -> list[str]:
    """Imports of the package, lazy ones included, that name no module and nothing the module defines:
    they would fail only when that code path runs."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    missing = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            missing += [a.name for a in node.names if a.name.startswith("ovchat.") and a.name not in modules]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("ovchat"):
                continue
            if base not in modules:
                missing.append(base)
                continue
            defined = _defined(modules[base])
            missing += [
                f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" not in modules and a.name not in defined
            ]
    return missing


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_checker_sees_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    known = {"ovchat", "ovchat.build", "ovchat.build.export", "ovchat.eval", "ovchat.eval.check"}
    export = PACKAGE / "build" / "export.py"
    assert "ovchat.eval.check" in imports("ovchat.build.export", export, known)  # a lazy import counts


def test_only_a_lazy_import_may_read_the_package_root(tmp_path):
    eager, late = tmp_path / "eager.py", tmp_path / "late.py"
    eager.write_text("from . import __version__\n")
    late.write_text("def f():\n    from . import __version__\n")
    known = set(_modules())
    assert imports("ovchat.eager", eager, known) == {"ovchat"}  # ovchat/__init__ imports most modules: a cycle
    assert imports("ovchat.late", late, known) == set()


def test_no_import_cycle_inside_the_package():
    modules = _modules()
    known = set(modules)
    graph = {name: imports(name, path, known) for name, path in modules.items()}
    assert _cycles(graph) == []


def test_every_import_inside_the_package_resolves():
    modules = _modules()
    assert {n: m for n, p in modules.items() if (m := unresolved(n, p, modules))} == {}


def test_the_resolver_sees_a_stale_lazy_import(tmp_path):
    stale = tmp_path / "stale.py"
    stale.write_text("def f():\n    from . import gguf\n    from .build import export, nothing\n")
    modules = {**_modules(), "ovchat.stale": stale}
    assert unresolved("ovchat.stale", stale, modules) == ["ovchat.gguf", "ovchat.build.nothing"]


def test_no_module_is_over_400_lines():
    sizes = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    assert {n: s for n, s in sizes.items() if s > MAX_LINES} == {}
