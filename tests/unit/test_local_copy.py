"""The local copy of allocations: one writer whatever the number of saves at once, the newest
state on disk, and a copy that cannot be read is unknown, not empty."""

from __future__ import annotations

import asyncio
from pathlib import Path

from meshd.agent.reconciler.local_copy import FILE, LocalCopy
from protocol import subjects
from tests.support.factories import allocation


async def test_many_saves_at_once_leave_the_newest_state_and_no_temporary_file(
    tmp_path: Path,
) -> None:
    copy = LocalCopy(tmp_path)
    states = [
        {subjects.alloc_key("shop", "prod", "backend"): allocation(generation=n)}
        for n in range(1, 41)
    ]
    await asyncio.gather(*(copy.save(state, {"web1": "10.0.0.1"}) for state in states))

    loaded = copy.load()
    assert loaded is not None
    (kept,) = loaded.allocations.values()
    assert kept.generation == 40  # the last save asked for wins
    assert loaded.addresses == {"web1": "10.0.0.1"}
    assert [p.name for p in tmp_path.iterdir()] == [FILE]


def test_a_copy_that_cannot_be_read_is_unknown(tmp_path: Path) -> None:
    assert LocalCopy(tmp_path).load() is None  # none yet
    (tmp_path / FILE).write_bytes(b"")  # what a power loss can leave of a careless write
    assert LocalCopy(tmp_path).load() is None
    (tmp_path / FILE).write_bytes(b"\x93not msgpack of ours")
    assert LocalCopy(tmp_path).load() is None
