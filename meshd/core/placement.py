"""Which droplets the desired state needs and which droplet runs which instance.

Rules (docs/inputs.md): one `master` of the largest MasterSpec; a
project with N > 1 servers gets N-1 droplets `<project>-web<i>` of its WebSpec. With N = 1
everything of the project runs on master. With N > 1: prod web services on every dedicated
droplet, prod database and redis on `<project>-web1`, prod workers round-robin over the
dedicated droplets, uat and test on master. Every droplet keeps memory for the system; a
placement that does not fit raises `CapacityError`.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshd.core.errors import CapacityError, Overcommit
from meshd.core.resources import EnvKey, EnvResources, allocate
from meshd.core.sizes import SIZES, largest
from meshd.core.spec import (
    ENVIRONMENTS,
    MASTER,
    DesiredState,
    ProjectSpec,
    ServiceKind,
    ServiceSpec,
)


@dataclass(frozen=True, slots=True)
class Droplet:
    name: str
    size: str

    def to_data(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size}


@dataclass(frozen=True, slots=True)
class Instance:
    project: str
    env: str
    service: str
    droplet: str
    port: int | None
    memory_mb: int
    # Changes whenever what the instance runs changes (service spec or allocation), so that a
    # plan can tell a kept instance from one that must be restarted.
    fingerprint: str

    @property
    def service_key(self) -> tuple[str, str, str]:
        return (self.project, self.env, self.service)

    def to_data(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "env": self.env,
            "service": self.service,
            "droplet": self.droplet,
            "port": self.port,
            "memory_mb": self.memory_mb,
            "fingerprint": self.fingerprint,
        }


@dataclass(frozen=True, slots=True)
class Placement:
    droplets: tuple[Droplet, ...]
    instances: tuple[Instance, ...]
    allocations: tuple[EnvResources, ...]

    @property
    def monthly_usd(self) -> float:
        return sum(SIZES[d.size].monthly_usd for d in self.droplets)

    def resources_by_env(self) -> dict[EnvKey, EnvResources]:
        return {a.key: a for a in self.allocations}

    def to_data(self) -> dict[str, Any]:
        return {
            "droplets": [d.to_data() for d in self.droplets],
            "instances": [i.to_data() for i in self.instances],
            "allocations": [a.to_data() for a in self.allocations],
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Placement:
        return cls(
            droplets=tuple(Droplet(**d) for d in data["droplets"]),
            instances=tuple(Instance(**i) for i in data["instances"]),
            allocations=tuple(EnvResources.from_data(a) for a in data["allocations"]),
        )


def desired_droplets(state: DesiredState) -> tuple[Droplet, ...]:
    master = largest([p.master_size for p in state.projects])
    dedicated = [
        Droplet(name, project.web_size)
        for project in sorted(state.projects, key=lambda p: p.name)
        for name in project.dedicated_droplets
    ]
    return (Droplet(MASTER, master.slug), *dedicated)


def place(state: DesiredState, previous: Placement | None = None) -> Placement:
    """The placement of `state`; allocations of `previous` that are still wanted are kept."""
    wanted = [(p.name, env) for p in state.projects for env in ENVIRONMENTS]
    allocations = allocate(wanted, previous.resources_by_env() if previous else None)
    droplets = desired_droplets(state)
    instances = tuple(
        instance
        for project in state.projects
        for env in ENVIRONMENTS
        for instance in _instances(project, env, allocations[(project.name, env)])
    )
    overcommits = check_capacity(droplets, instances)
    if overcommits:
        raise CapacityError(overcommits)
    ordered = tuple(allocations[key] for key in wanted)
    return Placement(droplets=droplets, instances=instances, allocations=ordered)


def check_capacity(droplets: Sequence[Droplet], instances: Sequence[Instance]) -> list[Overcommit]:
    needed: dict[str, int] = defaultdict(int)
    for instance in instances:
        needed[instance.droplet] += instance.memory_mb
    return [
        Overcommit(d.name, d.size, needed[d.name], SIZES[d.size].allocatable_mb)
        for d in droplets
        if needed[d.name] > SIZES[d.size].allocatable_mb
    ]


def _instances(project: ProjectSpec, env: str, alloc: EnvResources) -> list[Instance]:
    dedicated = project.dedicated_droplets
    instances = []
    workers = 0
    for service in project.services:
        if env != "prod" or not dedicated:
            targets: Sequence[str] = (MASTER,)
        elif service.kind is ServiceKind.WEB:
            targets = dedicated
        elif service.kind is ServiceKind.WORKER:
            targets = (dedicated[workers % len(dedicated)],)
            workers += 1
        else:
            targets = (dedicated[0],)
        port = alloc.ports.get(service.name)
        fingerprint = _fingerprint(service, alloc)
        instances += [
            Instance(project.name, env, service.name, droplet, port, service.memory_mb, fingerprint)
            for droplet in targets
        ]
    return instances


def _fingerprint(service: ServiceSpec, alloc: EnvResources) -> str:
    blob = json.dumps([service.to_data(), alloc.to_data()], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
