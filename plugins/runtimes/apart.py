"""A Docker mesh whose built-in datastores run apart, as the host's own PostgreSQL and Redis
under the process runtime (the runtime setting `datastores: process`, which `meshctl up`
sets unless told `--datastores docker`): no registry is needed for them (the official images
are Docker Hub's), and they are backed up, verified and given new passwords in place as on a
process mesh. Everything else runs in containers."""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any

from plugins.runtimes import (
    InstanceInfo,
    InstanceSpec,
    LogFile,
    LogFiles,
    OutputSink,
    Runtime,
    builtin_datastore,
)


class DatastoresApart:
    """Docker for every instance but the built-in datastores, which `datastores` runs."""

    name = "docker"  # what runs is Docker's business but for the datastores

    def __init__(self, docker: Runtime, datastores: Any) -> None:
        self.docker = docker
        self.datastores = datastores  # the process runtime: it dumps, restores, verifies

    def _for(self, spec: InstanceSpec) -> Runtime:
        kind = builtin_datastore("docker", spec)
        return self.datastores if kind is not None else self.docker

    async def ensure(self, spec: InstanceSpec) -> InstanceInfo:
        return await self._for(spec).ensure(spec)

    async def restart(self, spec: InstanceSpec) -> InstanceInfo:
        return await self._for(spec).restart(spec)

    async def stop(self, key: str, *, grace: float = 5.0) -> None:
        # The key alone does not say which runs it; stopping what is not there does nothing.
        await self.docker.stop(key, grace=grace)
        await self.datastores.stop(key, grace=grace)

    async def list(self) -> builtins.list[InstanceInfo]:
        return [*await self.docker.list(), *await self.datastores.list()]

    async def log_files(self) -> builtins.list[LogFile]:
        """Both runtimes' instances' output (the log shipper's `LogFiles`)."""
        found: builtins.list[LogFile] = []
        for runtime in (self.docker, self.datastores):
            if isinstance(runtime, LogFiles):
                found += await runtime.log_files()
        return found

    async def close(self) -> None:
        await self.docker.close()
        await self.datastores.close()

    async def run_once(
        self,
        spec: InstanceSpec,
        command: str,
        timeout: float,  # noqa: ASYNC109
        output: OutputSink | None = None,
    ) -> tuple[int, str]:
        return await self._for(spec).run_once(spec, command, timeout, output)

    async def build_artifact(
        self, context: Path, dockerfile: Path | None, image: str, out: Path
    ) -> str:
        return await self.docker.build_artifact(context, dockerfile, image, out)

    async def has_artifact(self, digest: str, image: str | None) -> bool:
        return await self.docker.has_artifact(digest, image)

    async def load_artifact(self, digest: str, image: str | None, path: Path) -> None:
        await self.docker.load_artifact(digest, image, path)

    async def change_password(self, spec: InstanceSpec) -> None:
        await self.datastores.change_password(spec)

    async def dump_datastore(self, spec: InstanceSpec, out: Path) -> None:
        await self.datastores.dump_datastore(spec, out)

    async def restore_datastore(self, spec: InstanceSpec, source: Path) -> None:
        await self.datastores.restore_datastore(spec, source)

    async def verify_datastore(self, spec: InstanceSpec, source: Path) -> dict[str, Any]:
        return await self.datastores.verify_datastore(spec, source)  # type: ignore[no-any-return]
