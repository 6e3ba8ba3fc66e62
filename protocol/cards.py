"""The mesh's compact index (KV `mesh_index`), written as protocol.messages says: a droplet's
card (`<droplet>`), the little every agent needs of every other droplet (where it is, which
life it is in, its size), and the keys of the allocations that name it (`placed.<droplet>`),
which is all of `mesh_alloc` that a droplet without roles reads. Its full report
(`mesh_nodes`) is read only by the droplets that hold roles and by a droplet's rollout peers
(docs/scale.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from protocol.base import Message


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeCard(Message):
    """Written by the droplet's agent when one of these changes (at its start, after a
    resize), by the provisioner when it creates the droplet (incarnation 0: not booted)."""

    KIND: ClassVar[str] = "node_card"

    droplet: str
    address: str
    incarnation: int
    size: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PlacedKeys(Message):
    """Written by the scheduler after the allocations themselves, for every droplet of the
    placement (none named: no keys): the keys in `mesh_alloc` of the services it runs."""

    KIND: ClassVar[str] = "placed_keys"

    droplet: str
    keys: tuple[str, ...]
    fence: int
