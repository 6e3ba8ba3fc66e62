"""Fixtures shared by several test modules, and the tiers: a test's marker comes from its
folder. `unit`: pure code (and in-memory stand-ins), seconds in all; `component`: one real
server or real processes (nats-server, nginx, Docker, SMTP); `mesh`: local meshes of real
droplets, with faults. `pytest -m unit` is the fast loop."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = [
    "tests.support.digitalocean",
    "tests.support.docker",
    "tests.support.jetstream",
    "tests.support.reconciling",
]
TIERS = ("unit", "component", "mesh")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier not in TIERS:
            raise pytest.UsageError(
                f"{item.nodeid}: every test lives in tests/{{{','.join(TIERS)}}}/"
            )
        item.add_marker(getattr(pytest.mark, tier))
