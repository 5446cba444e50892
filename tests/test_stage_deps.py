"""dvc.yaml declares, for each stage, exactly the Python files the stage runs.

A module a stage imports but does not declare would leave `dvc status` clean after an edit that
changes the stage's results; one declared but never imported re-runs the stage for nothing. The
closure follows every ``lavise`` import, including imports inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _lavise_imports(path: Path) -> set[Path]:
    """The lavise modules ``path`` imports anywhere in its body."""
    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name == "lavise" or not name.startswith("lavise."):
                continue
            module = ROOT / Path(*name.split(".")).with_suffix(".py")
            if module.is_file():
                found.add(module)
    return found


def import_closure(entry: Path) -> set[Path]:
    closure, pending = {entry}, [entry]
    while pending:
        for module in _lavise_imports(pending.pop()) - closure:
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
    module = ROOT / "lavise" / "sources.py"
    assert ROOT / "lavise" / "demo.py" in _lavise_imports(module)  # imported inside a function
