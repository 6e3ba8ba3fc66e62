"""`meshctl backup` asking the backups leader: a leader that loses its role before it answers
(a JetStream election outlasted its lease, its droplet died) never will, so the order is
given up then, not after its 30-minute timeout, and its successor is asked once."""

from __future__ import annotations

import asyncio
import time

import pytest

from meshd.cli import backup
from protocol import subjects
from protocol.backups import BackupOrder, BackupOrderAnswer
from protocol.codec import encode
from protocol.messages import Lease
from tests.support.memstore import MemoryStore

ORDER = BackupOrder(action="now", project="shop", env="prod", by="ana")
KEY = subjects.lease_key(subjects.Role.BACKUPS)


async def lead(store: MemoryStore, holder: str) -> None:
    """`holder` takes (or renews: the same holder, a new `acquired_at`) the role."""
    lease = Lease(role="backups", holder=holder, incarnation=1, acquired_at=time.time())
    await store.put(subjects.LEASES_BUCKET, KEY, encode(lease))


async def test_a_leader_that_loses_its_role_is_not_waited_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(backup, "LEADER_WATCH_S", 0.02)
    store = MemoryStore()
    await lead(store, "web2")
    asked: list[str] = []

    async def request(subject: str, data: bytes, timeout: float) -> bytes | None:
        holder = (await backup._term(store) or ("?",))[0]
        asked.append(str(holder))
        if holder == "web2":
            await asyncio.sleep(3600)  # it lost its role: it never answers
        return encode(BackupOrderAnswer(taken=("database/shop/prod/database/x.enc",)))

    store.request = request  # type: ignore[method-assign]
    asking = asyncio.create_task(backup._asked(store, ORDER))
    await asyncio.sleep(0.1)
    await lead(store, "web2")  # a renewal: still waited for
    await asyncio.sleep(0.1)
    assert not asking.done()
    await lead(store, "master")
    with pytest.raises(backup.LeaderLost, match=r"leader \(web2\) lost its role"):
        await asyncio.wait_for(asking, 5)

    reply = await asyncio.wait_for(backup._asked(store, ORDER), 5)  # the successor answers
    assert reply is not None and asked == ["web2", "master"]
