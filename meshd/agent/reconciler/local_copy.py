"""The agent's local copy of its allocations and the droplets' addresses, on its own disk:
instances come back after an agent restart even while no NATS server answers.

One writer: saves are serialized, and a save asked for while one is being written is folded
into the next (the newest state wins, nothing is written twice). Each save replaces the file
atomically and durably (`plugins.fs.atomic_write`), so after a power loss the copy is the old
one or the new one. A copy that cannot be read is *unknown*, not empty: the reconciler then
stops nothing until the mesh answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import msgpack

from plugins.fs import atomic_write
from protocol import subjects
from protocol.codec import decode, encode
from protocol.errors import ProtocolError
from protocol.messages import Allocation

log = logging.getLogger(__name__)
FILE = "allocations.msgpack"


@dataclass(frozen=True, slots=True)
class Copy:
    allocations: dict[str, Allocation]
    addresses: dict[str, str]


class LocalCopy:
    def __init__(self, directory: Path) -> None:
        self.path = directory / FILE
        self._lock = asyncio.Lock()
        self._pending: bytes | None = None

    async def save(
        self, allocations: Mapping[str, Allocation], addresses: Mapping[str, str]
    ) -> None:
        """Write this state (or a newer one asked for meanwhile); a disk that refuses is
        logged, and the agent goes on: the copy is only the fallback for the next start."""
        self._pending = msgpack.packb(
            {"allocations": [encode(a) for a in allocations.values()], "addresses": dict(addresses)}
        )
        async with self._lock:
            data, self._pending = self._pending, None
            if data is None:
                return  # written by the save that held the lock
            try:
                await asyncio.to_thread(atomic_write, self.path, data, 0o600)
            except OSError as err:
                log.error("Local copy of allocations not saved. path=%s error=%s", self.path, err)

    def load(self) -> Copy | None:
        """The copy, or None when there is none or it cannot be read (unknown)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            log.error("Local copy of allocations unreadable; waiting for the mesh. error=%s", err)
            return None
        try:
            copy = msgpack.unpackb(raw)
            items = [decode(data, Allocation) for data in copy["allocations"]]
            addresses = {str(k): str(v) for k, v in copy["addresses"].items()}
        except (ProtocolError, ValueError, TypeError, KeyError, msgpack.UnpackException) as err:
            log.error("Local copy of allocations unreadable; waiting for the mesh. error=%s", err)
            return None
        allocations = {subjects.alloc_key(a.project, a.env, a.service): a for a in items}
        return Copy(allocations, addresses)
