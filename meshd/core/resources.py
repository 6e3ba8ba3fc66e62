"""Ports, database name and user of every project environment (seed "Resource Allocation").

The seed's formula gives each project-environment a hash `h` and ports `base + int(h) % 1000`.
Two environments can hash to the same port, so allocation is a function of the previous
allocation too: existing allocations never move (sticky), and a newcomer whose port is taken or
reserved by the mesh probes to the next free port of its family (docs/decisions.md).

Web services also get a spare port from their family: a rolling restart starts the new
instance on it while the old one still serves on the other (docs/load-balancer.md).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from protocol.errors import MeshError

PORT_BASES: dict[str, int] = {"backend": 8000, "frontend": 9000, "database": 5000, "redis": 6000}
FAMILY_SIZE = 1000
# Ports the mesh itself listens on: nginx, NATS client/cluster/monitoring, meshd's HTTP API,
# Vault, OpenSearch.
RESERVED_PORTS = frozenset({80, 443, 4222, 6222, 8222, 8080, 8200, 9200, 9600})
SPARE_FAMILIES = ("backend", "frontend")  # web services: replaced next to the old instance
SPARE_OFFSET = FAMILY_SIZE // 2  # spares start half a family away from the seed's ports

EnvKey = tuple[str, str]


class AllocationError(MeshError):
    """No free port is left in a family."""


@dataclass(frozen=True, slots=True)
class EnvResources:
    project: str
    env: str
    hash: str
    ports: dict[str, int]
    db_name: str
    db_user: str
    spare_ports: dict[str, int] = field(default_factory=dict)

    @property
    def key(self) -> EnvKey:
        return (self.project, self.env)

    def to_data(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "env": self.env,
            "hash": self.hash,
            "ports": dict(self.ports),
            "db_name": self.db_name,
            "db_user": self.db_user,
            "spare_ports": dict(self.spare_ports),
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> EnvResources:
        return cls(
            project=data["project"],
            env=data["env"],
            hash=data["hash"],
            ports={k: int(v) for k, v in data["ports"].items()},
            db_name=data["db_name"],
            db_user=data["db_user"],
            spare_ports={k: int(v) for k, v in data.get("spare_ports", {}).items()},
        )


def resource_hash(project: str, env: str) -> str:
    """The seed's 12-hex-digit hash of a project environment."""
    return hashlib.md5(f"{project}-{env}".encode(), usedforsecurity=False).hexdigest()[:12]


def seed_port(family: str, digest: str) -> int:
    """The port the seed's formula gives, before collisions are resolved."""
    return PORT_BASES[family] + int(digest, 16) % FAMILY_SIZE


def database_name(project: str, env: str, digest: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", f"{project}_{env}_{digest[:8]}")


def allocate(
    wanted: Iterable[EnvKey], previous: Mapping[EnvKey, EnvResources] | None = None
) -> dict[EnvKey, EnvResources]:
    """Allocations for `wanted` project environments, keeping every previous one that is still
    wanted unchanged; newcomers are served in name order, then spare ports are given to
    whoever lacks them (allocations made before spares existed get theirs here)."""
    previous = previous or {}
    wanted_keys = set(wanted)
    result = {key: alloc for key, alloc in previous.items() if key in wanted_keys}
    taken = {
        family: {a.ports[family] for a in result.values()}
        | {a.spare_ports[family] for a in result.values() if family in a.spare_ports}
        for family in PORT_BASES
    }
    for project, env in _by_name(wanted_keys - result.keys()):
        digest = resource_hash(project, env)
        ports = {}
        for family in PORT_BASES:
            port = _free_port(family, int(digest, 16), taken[family])
            taken[family].add(port)
            ports[family] = port
        result[(project, env)] = EnvResources(
            project=project,
            env=env,
            hash=digest,
            ports=ports,
            db_name=database_name(project, env, digest),
            db_user=f"user_{digest[:8]}",
        )
    for key in _by_name(result):
        alloc = result[key]
        spares = dict(alloc.spare_ports)
        for family in SPARE_FAMILIES:
            if family not in spares:
                spares[family] = _free_port(
                    family, int(alloc.hash, 16) + SPARE_OFFSET, taken[family]
                )
                taken[family].add(spares[family])
        if spares != alloc.spare_ports:
            result[key] = replace(alloc, spare_ports=spares)
    return result


def _by_name(keys: Iterable[EnvKey]) -> list[EnvKey]:
    return sorted(keys, key=lambda k: f"{k[0]}-{k[1]}")


def _free_port(family: str, start: int, taken: set[int]) -> int:
    base = PORT_BASES[family]
    offset = start % FAMILY_SIZE
    for step in range(FAMILY_SIZE):
        port = base + (offset + step) % FAMILY_SIZE
        if port not in taken and port not in RESERVED_PORTS:
            return port
    raise AllocationError(f"no free {family} port left in {base}-{base + FAMILY_SIZE - 1}")
