"""Waiting for a condition, the one way tests do it: poll until it holds or a generous
timeout passes, then fail saying what did not happen and the last value seen."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

Check = Callable[[], Any] | Callable[[], Awaitable[Any]]


async def until(check: Check, what: str, timeout: float = 20.0, every: float = 0.05) -> Any:
    """Await `check()` (plain or async) until it is truthy; its value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}"
            )
        await asyncio.sleep(every)


def wait_for(
    predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition", every: float = 0.3
) -> Any:
    """`until` for tests without an event loop (driving `meshctl` and local meshes)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; {last=}")
