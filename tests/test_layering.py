"""The dependency arrow of DESIGN.md, checked on the source: ``experiments -> agents -> wrappers -> rewards ->
reasoning_gym``. A package may import only packages to its right (an ast scan, so lazy imports inside functions
count too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ORDER = ["experiments", "agents", "wrappers", "rewards", "reasoning_gym"]


def imported_packages(path: Path) -> set[str]:
    """Top-level package names a module imports (absolute imports only; relative ones stay in the package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value.split(".")[0])
    return names


def test_scanner_sees_lazy_and_dynamic_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "import os\ndef f():\n    from rewards.judge import MathJudger\n"
        "    import wrappers.x\n    importlib.import_module('agents.engines')\n"
    )
    assert imported_packages(module) == {"os", "rewards", "wrappers", "agents"}


@pytest.mark.parametrize("package", ORDER[1:])
def test_package_imports_nothing_upstream(package):
    upstream = set(ORDER[: ORDER.index(package)])
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & upstream)
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    offenders = {path: names for path, names in offenders.items() if names}
    assert offenders == {}, f"{package} must not import {sorted(upstream)}: {offenders}"
