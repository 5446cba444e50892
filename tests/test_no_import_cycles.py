"""The project's modules import each other without a cycle.

A cycle forces imports inside functions to break it at run time and hides which module owns a
concept. Every import anywhere in a module's body counts (inside functions too), absolute
``lavise.`` / ``stages.`` imports and relative ones alike; ``from lavise.data import coco``
names the module ``lavise/data/coco.py``, ``from lavise.data.coco import parse_coco`` names it too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lavise", "stages")


def _module_file(root: Path, dotted: str) -> Path | None:
    """The file that defines module ``dotted`` under ``root`` (a package's ``__init__.py``), or None."""
    base = root.joinpath(*dotted.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _dotted_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(package: str, module: str | None, level: int) -> str:
    """The absolute module of ``from <level dots><module> import ...`` written in ``package``."""
    if not level:
        return module or ""
    parts = package.split(".")
    anchor = parts[: len(parts) - (level - 1)]
    return ".".join([*anchor, module] if module else anchor)


def _imported_modules(root: Path, path: Path, packages: tuple[str, ...]) -> set[Path]:
    """The project module files ``path`` imports anywhere in its body.

    ``import a.b`` names ``a/b.py``; ``from a import b`` names ``a/b.py`` when that module exists
    and ``a`` (its file) otherwise, as ``from a.b import name`` does.
    """
    dotted = _dotted_name(root, path)
    package = dotted if path.name == "__init__.py" else dotted.rpartition(".")[0]
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(package, node.module, node.level)
            for alias in node.names:
                is_module = _module_file(root, f"{module}.{alias.name}") is not None
                names.append(f"{module}.{alias.name}" if is_module else module)
    found = {_module_file(root, name) for name in names if name.split(".")[0] in packages}
    return {target for target in found if target is not None} - {path}


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[Path, set[Path]]:
    """Module file -> the project module files it imports."""
    modules = sorted(p for package in packages for p in (root / package).rglob("*.py"))
    return {path: _imported_modules(root, path, packages) for path in modules}


def find_cycle(graph: dict[Path, set[Path]]) -> list[Path] | None:
    """One import cycle as ``[a, b, ..., a]``, or None (depth-first search, nodes in sorted order)."""
    state: dict[Path, int] = {}  # 1: on the current path, 2: finished
    path: list[Path] = []

    def visit(node: Path) -> list[Path] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_project_has_no_import_cycle() -> None:
    graph = import_graph(ROOT)
    assert ROOT / "lavise" / "data" / "coco.py" in graph[ROOT / "stages" / "annotations.py"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(str(p.relative_to(ROOT)) for p in cycle)


def test_a_planted_cycle_is_found(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def late():\n    from pkg.a import name\n")
    (package / "c.py").write_text("from . import a\nimport pkg\n")
    graph = import_graph(tmp_path, ("pkg",))
    assert graph[package / "c.py"] == {package / "a.py", package / "__init__.py"}  # relative import resolved
    assert graph[package / "a.py"] == {package / "b.py"}  # the submodule, not the package
    assert find_cycle(graph) == [package / "a.py", package / "b.py", package / "a.py"]
    (package / "b.py").write_text("import os\n")
    assert find_cycle(import_graph(tmp_path, ("pkg",))) is None
