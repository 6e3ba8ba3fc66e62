"""protocol/ stays a leaf: standard library and msgpack only, and it resolves in this tree."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import protocol

REPO = Path(__file__).resolve().parents[2]
MODULES = sorted((REPO / "protocol").glob("*.py"))
FORBIDDEN = {"meshd", "plugins", "asyncio", "nats", "aiohttp", "docker"}
ALLOWED_THIRD_PARTY = {"msgpack", "protocol"}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every package that `path` imports (relative imports excluded)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names


def test_protocol_has_modules_to_check() -> None:
    assert {p.name for p in MODULES} >= {"__init__.py", "errors.py", "subjects.py", "codec.py"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_protocol_module_imports_no_io_or_higher_layer(path: Path) -> None:
    assert imported_packages(path) & FORBIDDEN == set()


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_protocol_module_imports_only_stdlib_and_msgpack(path: Path) -> None:
    outside = imported_packages(path) - set(sys.stdlib_module_names) - ALLOWED_THIRD_PARTY
    assert outside == set()


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_protocol_module_says_what_it_owns(path: Path) -> None:
    assert ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))


def test_protocol_resolves_inside_this_repository_and_is_typed() -> None:
    assert Path(protocol.__file__).resolve().parent == REPO / "protocol"
    assert (REPO / "protocol" / "py.typed").is_file()
