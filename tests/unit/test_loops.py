"""The loops on KV: a broken watch is watched again and the action runs at once for what
changed meanwhile (not only at the next resync); a bug in an action is not swallowed."""

from __future__ import annotations

import asyncio
import logging

import pytest

from meshd.agent.loops import ScopedWatches, mirror_bucket, run_on_changes
from protocol.codec import encode
from protocol.messages import Lease
from tests.support.memstore import MemoryStore
from tests.support.waiting import until

NEVER = 3600.0  # a resync that never comes within a test


async def test_a_change_made_while_the_watch_was_broken_is_acted_on_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    await store.put("b", "k", b"1")
    runs = 0

    async def action() -> None:
        nonlocal runs
        runs += 1

    task = asyncio.create_task(run_on_changes(store, [("b", "k")], action, NEVER))
    try:
        await until(lambda: runs >= 1, "the first run")
        await asyncio.sleep(0.3)  # the initial values have been seen
        before = runs
        with caplog.at_level(logging.INFO, logger="meshd.agent.loops"):
            store.break_watches()
            await store.put("b", "k", b"2")  # while the watch is down
            await until(lambda: runs > before, "a run for the change made meanwhile", timeout=5)
        assert "Watch broken; watching again" in caplog.text
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_when_acts_on_a_key_that_appears_goes_or_changes_what_counts_only() -> None:
    store = MemoryStore()
    await store.put("nodes", "master", b"1")
    runs = 0

    async def action() -> None:
        nonlocal runs
        runs += 1

    task = asyncio.create_task(
        run_on_changes(store, [], action, NEVER, when=[("nodes", ">", lambda v: v[:1])])
    )
    try:
        await until(lambda: runs >= 1, "the first run")
        await asyncio.sleep(0.5)  # the initial values have been seen
        before = runs
        for report in range(5):  # what counts is the first byte: these change nothing
            await store.put("nodes", "master", f"1 report {report}".encode())
        await asyncio.sleep(0.5)
        assert runs == before
        await store.put("nodes", "master", b"2 a new life")
        await until(lambda: runs > before, "a run for the new life", timeout=5)
        renewed = runs
        await store.put("nodes", "web1", b"1")
        await until(lambda: runs > renewed, "a run for the droplet that joined", timeout=5)
        joined = runs
        await store.delete("nodes", "web1")
        await until(lambda: runs > joined, "a run for the droplet that left", timeout=5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_bug_in_the_action_ends_the_loop_with_its_error() -> None:
    store = MemoryStore()

    async def broken() -> None:
        raise ZeroDivisionError("a bug")

    with pytest.raises(ExceptionGroup) as caught:
        await asyncio.wait_for(run_on_changes(store, [("b", ">")], broken, NEVER), 5)
    assert caught.group_contains(ZeroDivisionError)


async def test_a_mirror_hands_over_the_values_again_after_its_watch_broke() -> None:
    store = MemoryStore()
    lease = Lease(role="lb", holder="master", incarnation=1, acquired_at=1.0)
    await store.put("mesh_leases", "lb", encode(lease))
    seen: list[dict[str, Lease]] = []

    async def publish(values: dict[str, Lease]) -> None:
        seen.append(dict(values))

    task = asyncio.create_task(mirror_bucket(store, "mesh_leases", Lease, publish))
    try:
        await until(lambda: seen, "the initial values")
        store.break_watches()
        moved = Lease(role="lb", holder="mesh-2", incarnation=2, acquired_at=2.0)
        await store.put("mesh_leases", "lb", encode(moved))
        await until(lambda: seen[-1].get("lb") == moved, "the value written meanwhile", timeout=5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_scoped_watches_follow_their_scope_and_end_with_a_watch_s_error() -> None:
    """Watches start and stop as the scope changes (told at once, not at the next look), and
    a watch that fails is not lost in a task nobody awaits: `run` ends with its error."""
    scope, started, stopped = {"a", "b"}, [], []

    async def watch(key: str) -> None:
        started.append(key)
        if key == "broken":
            raise KeyError(key)
        await asyncio.Event().wait()

    async def followed(keys: set[str]) -> None:
        stopped.extend(sorted(keys))

    watches = ScopedWatches(lambda: frozenset(scope), watch, followed)
    running = asyncio.create_task(watches.run())
    await until(lambda: sorted(started) == ["a", "b"], "both watches")
    scope.discard("a")
    watches.rescope.set()
    await until(lambda: stopped == ["a"], "a's watch stopped")
    assert set(watches.tasks) == {"b"}
    scope.add("broken")
    watches.rescope.set()
    with pytest.raises(KeyError):
        await asyncio.wait_for(running, 2)  # well within the 5 s between looks


async def test_a_scoped_watch_that_returns_is_started_again() -> None:
    """Watches are meant to run until stopped: one that returns is watched anew, and `run`
    does not spin on a task that is done."""
    runs = 0

    async def watch(key: str) -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            return
        await asyncio.Event().wait()

    async def followed(keys: set[str]) -> None:
        assert not keys

    watches = ScopedWatches(lambda: frozenset({"a"}), watch, followed)
    running = asyncio.create_task(watches.run())
    try:
        await until(lambda: runs == 3, "the watch started a third time", timeout=2)
        await asyncio.sleep(0.2)
        assert runs == 3 and not watches.tasks["a"].done()
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
