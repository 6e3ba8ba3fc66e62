"""A droplet's card in the mesh's compact index (KV `mesh_index/<droplet>`): the little every
agent needs of every other droplet (where it is, which life it is in, its size), written as
protocol.messages says. Its full report (`mesh_nodes`) is read only by the droplets that
hold roles and by a droplet's rollout peers (docs/scale.md)."""

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
