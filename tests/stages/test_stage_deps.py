"""dvc.yaml declares, for each stage, exactly the Python files the stage runs.

A module a stage imports but does not declare would leave `dvc status` clean after an edit that
changes the stage's results; one declared but never imported re-runs the stage for nothing. The
closure follows every ``lavise`` and ``stages`` import, including imports inside functions, and
counts each imported module's package ``__init__.py`` files (Python runs them on import).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
PACKAGES = ("lavise", "stages")


def module_files(name: str) -> set[Path]:
    """The files Python runs to import the dotted ``name``: its package ``__init__``s and itself."""
    parts = name.split(".")
    found: set[Path] = set()
    for depth in range(1, len(parts) + 1):
        base = ROOT / Path(*parts[:depth])
        if (base / "__init__.py").is_file():
            found.add(base / "__init__.py")
        elif base.with_suffix(".py").is_file() and depth == len(parts):
            found.add(base.with_suffix(".py"))
    return found


def _project_imports(path: Path) -> set[Path]:
    """The project modules (and their packages' ``__init__``) ``path`` imports anywhere in its body."""
    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name.split(".")[0] in PACKAGES:
                found |= module_files(name)
    return found


def import_closure(entry: Path) -> set[Path]:
    closure = {entry} | module_files(".".join(entry.relative_to(ROOT).with_suffix("").parts))
    pending = list(closure)
    while pending:
        for module in _project_imports(pending.pop()) - closure:
            closure.add(module)
            pending.append(module)
    return closure


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_python_deps_are_the_import_closure(stage: str) -> None:
    declared = {ROOT / dep for dep in STAGES[stage]["deps"] if dep.endswith(".py")}
    entry = ROOT / "stages" / f"{stage}.py"
    assert entry in declared, f"{stage}: its entry point {entry.name} is not a dependency"
    closure = import_closure(entry)
    missing = sorted(str(p.relative_to(ROOT)) for p in closure - declared)
    unused = sorted(str(p.relative_to(ROOT)) for p in declared - closure)
    assert not missing and not unused, f"{stage}: undeclared {missing}, declared but not imported {unused}"


def test_closure_follows_imports_inside_functions() -> None:
    module = ROOT / "lavise" / "data" / "sources.py"
    assert ROOT / "lavise" / "data" / "demo.py" in _project_imports(module)  # imported inside a function


def test_closure_counts_package_inits() -> None:
    files = module_files("lavise.data.coco")
    assert files == {
        ROOT / "lavise" / "__init__.py",
        ROOT / "lavise" / "data" / "__init__.py",
        ROOT / "lavise" / "data" / "coco.py",
    }
