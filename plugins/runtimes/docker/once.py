"""One-off containers of the docker runtime (`Runtime.run_once`: a project's release command),
mixed into `DockerRuntime`, whose images, networks and container creation they use.

A one-off is the container its instance would be (`container_spec`, with the command in place
of the instance's: the same image, environment, secret files, network, volume and memory
limit), named `<instance's container>.once`, with no port, restart policy or health check,
not known on the network by the service's name (requests for the service never reach it),
and labelled `meshd.once` instead of `meshd.service`, so that it is never listed as an
instance. Its state is polled rather than waited for (a wait would hold one of the runtime's
few engine threads for minutes); after its timeout it is stopped (SIGTERM, SIGKILL after a
grace). Once it has exited it is removed with its secret files, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import docker.errors

from plugins.fs import remove_tree
from plugins.runtimes import (
    ONE_OFF_OUTPUT_CHARS,
    InstanceInfo,
    InstanceSpec,
    InstanceStartError,
    OneOffTimeout,
    OutputSink,
)
from plugins.runtimes.docker.containers import (
    LABEL_GENERATION,
    LABEL_SERVICE,
    LABEL_SLOT,
    ContainerSpec,
    ContainerSpecError,
    container_spec,
)
from plugins.runtimes.docker.engine import Engine, short
from plugins.runtimes.docker.images import Images
from plugins.runtimes.docker.networks import Networks

LABEL_ONCE = "meshd.once"  # the service whose one-off the container is
SUFFIX = ".once"
POLL_S = 0.25
GRACE_S = 5
LOG_LINES = 200
EXITED = frozenset({"exited", "dead"})


def one_off_spec(spec: InstanceSpec, command: str, mesh: str, droplet: str) -> ContainerSpec:
    """The container that runs `command` once as `spec`'s instance; `ContainerSpecError`."""
    wanted = container_spec(dataclasses.replace(spec, command=command, slot=0), mesh, droplet)
    dropped = (LABEL_SERVICE, LABEL_GENERATION, LABEL_SLOT)
    labels = {k: v for k, v in wanted.labels.items() if k not in dropped}
    name = wanted.name + SUFFIX
    return dataclasses.replace(
        wanted,
        name=name,
        alias=name,  # not the service's: nothing that asks for the service may reach it
        labels={**labels, LABEL_ONCE: spec.service},
        ports={},
        restart_policy="no",
        healthcheck=None,
    )


class OneOffs:
    """`run_once` of `DockerRuntime` (the attributes below are the runtime's)."""

    _mesh: str
    _droplet: str
    _engine: Engine
    _images: Images
    _networks: Networks
    _secrets_root: Path
    _log: logging.Logger

    if TYPE_CHECKING:

        def _create(
            self, client: docker.DockerClient, spec: InstanceSpec, wanted: ContainerSpec, user: str
        ) -> InstanceInfo: ...

    async def run_once(
        self,
        spec: InstanceSpec,
        command: str,
        timeout: float,  # noqa: ASYNC109
        output: OutputSink | None = None,
    ) -> tuple[int, str]:
        try:
            wanted = one_off_spec(spec, command, self._mesh, self._droplet)
        except ContainerSpecError as err:
            raise InstanceStartError(spec.key, str(err)) from None
        try:
            return await self._run_once(spec, wanted, timeout, output)
        except docker.errors.APIError as err:
            raise InstanceStartError(spec.key, short(err)) from None

    async def _run_once(
        self, spec: InstanceSpec, wanted: ContainerSpec, limit_s: float, output: OutputSink | None
    ) -> tuple[int, str]:
        pull = spec.artifact is None  # an artifact's image is loaded, never pulled
        user = await self._images.ensure(
            spec.key, wanted, spec.build_secrets, pull=pull, auth=spec.registry_auth
        )
        container: str | None = None
        try:
            async with self._networks.joined(wanted):
                container = (await self._engine.call(self._create, spec, wanted, user)).runtime_id
            self._log.info("Running once. key=%s container=%s", spec.key, container)
            sent = 0
            loop = asyncio.get_running_loop()
            deadline = loop.time() + limit_s
            while (code := await self._exited(container, deadline)) is False:
                if output is not None:
                    sent = await self._pass_on(container, sent, output)
            if output is not None:
                await self._pass_on(container, sent, output)
            tail = await self._engine.call(_output, container)
        finally:
            await self._engine.call(self._discard, wanted.name, container)
            await self._networks.left(spec.project, spec.env)
        if code is None:
            raise OneOffTimeout(spec.key, limit_s, tail)
        return code, tail

    async def _exited(self, container: str, deadline: float) -> int | None | bool:
        """Its exit code; None when it ran out of time (then it is stopped); False while it
        runs (after a pause)."""
        state = await self._engine.call(_state, container)
        if state.get("Status") in EXITED:
            return int(state.get("ExitCode", -1))
        if asyncio.get_running_loop().time() >= deadline:
            await self._engine.call(_stop, container)
            return None
        await asyncio.sleep(POLL_S)
        return False

    async def _pass_on(self, container: str, sent: int, output: OutputSink) -> int:
        """What it wrote since the first `sent` bytes, to `output`; how much is sent now. The
        engine gives its whole log each time: fine for a one-off's output."""
        written = await self._engine.call(_all_output, container)
        if len(written) > sent:
            await output(written[sent:])
        return max(sent, len(written))

    def _discard(self, client: docker.DockerClient, name: str, container: str | None) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_container(name, force=True)
        remove_tree(self._secrets_root / name)
        if container is not None:
            self._engine.forget(container)


def _state(client: docker.DockerClient, container: str) -> dict[str, Any]:
    state: dict[str, Any] = client.api.inspect_container(container)["State"]
    return state


def _stop(client: docker.DockerClient, container: str) -> None:
    with contextlib.suppress(docker.errors.NotFound):
        client.api.stop(container, timeout=GRACE_S)


def _all_output(client: docker.DockerClient, container: str) -> bytes:
    return bytes(client.api.logs(container, stdout=True, stderr=True))


def _output(client: docker.DockerClient, container: str) -> str:
    """The last lines it wrote (stdout and stderr), and whether it ran out of memory."""
    text: bytes = client.api.logs(container, stdout=True, stderr=True, tail=LOG_LINES)
    output = text.decode(errors="replace").strip()
    if len(output) > ONE_OFF_OUTPUT_CHARS:
        output = output[-ONE_OFF_OUTPUT_CHARS:].partition("\n")[2]
    if client.api.inspect_container(container)["State"].get("OOMKilled"):
        output = f"{output}\n[meshd] killed: out of memory".strip()
    return output
