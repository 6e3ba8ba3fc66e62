"""The docker runtime's networks: one per project-environment on each droplet, created when its
first instance starts and removed when its last one is gone. An instance that is joining keeps
its network from being removed under it (a count per network, under a lock per network)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator

import docker
import docker.errors

from plugins.runtimes.docker.containers import (
    LABEL_ENV,
    LABEL_PROJECT,
    ContainerSpec,
    network_name,
    owner_labels,
)
from plugins.runtimes.docker.engine import Engine


class Networks:
    def __init__(self, engine: Engine, mesh: str, droplet: str) -> None:
        self._engine = engine
        self._mesh = mesh
        self._droplet = droplet
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._joining: defaultdict[str, int] = defaultdict(int)  # network -> instances joining

    @contextlib.asynccontextmanager
    async def joined(self, wanted: ContainerSpec) -> AsyncIterator[None]:
        """The instance's network exists, and stays while the block creates the container."""
        self._joining[wanted.network] += 1
        try:
            async with self._locks[wanted.network]:
                await self._engine.call(self._ensure, wanted)
            yield
        finally:
            self._joining[wanted.network] -= 1

    async def left(self, project: str, env: str) -> None:
        """An instance of project-env was removed: remove its network if nothing uses it."""
        network = network_name(self._mesh, self._droplet, project, env)
        async with self._locks[network]:
            if not self._joining[network]:
                await self._engine.call(_remove_if_unused, network)

    def _ensure(self, client: docker.DockerClient, wanted: ContainerSpec) -> None:
        if client.networks.list(names=[wanted.network]):
            return
        labels = {k: v for k, v in wanted.labels.items() if k in (LABEL_PROJECT, LABEL_ENV)}
        client.networks.create(
            wanted.network,
            driver="bridge",
            labels={**owner_labels(self._mesh, self._droplet), **labels},
            check_duplicate=True,
        )


def _remove_if_unused(client: docker.DockerClient, network: str) -> None:
    for found in client.networks.list(names=[network]):
        if found.name == network and not found.attrs.get("Containers"):
            found.reload()  # the list leaves out the containers
            if not found.attrs.get("Containers"):
                with contextlib.suppress(docker.errors.APIError):
                    found.remove()
