"""The layout is the architecture: `protocol/` is a leaf, `plugins/` sees only `protocol/`,
and the packages imported are this repository's, not PyPI's namesakes."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "protocol": {"meshd", "plugins", "bootstrap"},
    "plugins": {"meshd", "bootstrap"},
}


def imported_top_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_the_layers_above_it(package: str) -> None:
    modules = sorted((ROOT / package).rglob("*.py"))
    assert modules, f"{package}/ has no modules"
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_top_names(path) & FORBIDDEN[package])
        for path in modules
        if imported_top_names(path) & FORBIDDEN[package]
    }
    assert offenders == {}


@pytest.mark.parametrize("name", ["meshd", "protocol", "plugins", "bootstrap"])
def test_imports_resolve_inside_the_repository(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__file__ is not None
    assert Path(module.__file__).resolve().is_relative_to(ROOT)
