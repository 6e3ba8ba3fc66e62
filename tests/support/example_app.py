"""The example app's own modules, which belong to no package (the process runtime runs them
with the system's python): loaded by path for the tests that speak their protocols."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

APP = Path(__file__).resolve().parents[2] / "examples" / "app"


def load_visits() -> ModuleType:
    """examples/app/visits.py: the visit counter, with its PostgreSQL and Redis clients."""
    spec = importlib.util.spec_from_file_location("example_visits", APP / "visits.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module
