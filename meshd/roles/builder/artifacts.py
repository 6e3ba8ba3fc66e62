"""Building a release's artifacts: each distinct build context of the project (and its
Dockerfile) at the pushed commit is exported from the git cache, built by the mesh's runtime
and stored in the artifact store under the SHA-256 of its bytes. A context whose git tree is
the one an earlier release built from is not built again: its artifact is reused."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import shutil
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from meshd.agent.store import Store
from meshd.core.spec import ProjectSpec, ServiceSpec
from meshd.roles.builder.git import GitCache
from protocol import subjects
from protocol.errors import MeshError
from protocol.releases import Artifact

Say = Callable[[str], Awaitable[None]]


class ArtifactBuilder(Protocol):
    """The runtime's side of a build (`plugins.runtimes.Runtime`)."""

    name: str

    async def build_artifact(
        self, context: Path, dockerfile: Path | None, image: str, out: Path
    ) -> str: ...


class BuildFailed(MeshError):
    """A build context could not be built; `log` is the build's output."""

    def __init__(self, message: str, log: str) -> None:
        self.log = log
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class BuildGroup:
    """Services built from one context and Dockerfile: one build serves them all."""

    context: str
    dockerfile: str | None
    services: tuple[str, ...]


def build_groups(project: ProjectSpec) -> list[BuildGroup]:
    """The project's services built from its repository, grouped by what they build from."""
    groups: dict[tuple[str, str | None], list[str]] = {}
    for service in project.services:
        context = service.repository_context
        if context is None or service.uses_template:
            continue
        groups.setdefault((context, service.repository_dockerfile), []).append(service.name)
    return [BuildGroup(c, d, tuple(names)) for (c, d), names in groups.items()]


def built_services(project: ProjectSpec) -> list[ServiceSpec]:
    return [s for s in project.services if s.repository_context and not s.uses_template]


async def build_release(
    store: Store,
    runtime: ArtifactBuilder,
    cache: GitCache,
    project: ProjectSpec,
    sha: str,
    earlier: Iterable[Artifact],
    work: Path,
    say: Say,
) -> tuple[tuple[Artifact, ...], str]:
    """The artifacts of every service built from the repository at `sha`, and the build log."""
    earlier = list(earlier)
    images = runtime.name != "process"  # docker and podman build images from a Dockerfile
    stored = await store.object_names(subjects.ARTIFACTS_STORE)
    artifacts: list[Artifact] = []
    log: list[str] = []
    for group in build_groups(project):
        dockerfile = group.dockerfile or f"{group.context.rstrip('/')}/Dockerfile"
        tree = await cache.object_id(sha, group.context)
        if tree is None:
            raise BuildFailed(f"{group.context!r} is not a directory at {sha[:12]}", "")
        blob = await cache.object_id(sha, dockerfile) if images else None
        if images and blob is None:
            raise BuildFailed(f"no Dockerfile at {dockerfile!r} in {sha[:12]}", "")
        source = f"{runtime.name}:{tree}:{blob or ''}"
        found = next((a for a in earlier if a.source == source and a.digest in stored), None)
        if found is None:
            image = f"{project.name}-{group.services[0]}:{sha[:12]}" if images else ""
            found, output = await _build(
                store, runtime, cache, sha, group, dockerfile, image, source, work, say
            )
            log.append(output)
        else:
            await say(f"{', '.join(group.services)}: unchanged, reusing {found.digest[:12]}")
        artifacts += [dataclasses.replace(found, service=s) for s in group.services]
    return tuple(artifacts), "\n".join(log)


async def _build(
    store: Store,
    runtime: ArtifactBuilder,
    cache: GitCache,
    sha: str,
    group: BuildGroup,
    dockerfile: str,
    image: str,
    source: str,
    work: Path,
    say: Say,
) -> tuple[Artifact, str]:
    await asyncio.to_thread(shutil.rmtree, work, True)
    await asyncio.to_thread(work.mkdir, parents=True)
    try:
        await say(f"{', '.join(group.services)}: building {group.context} at {sha[:12]}")
        started = time.monotonic()
        context = await cache.export(sha, group.context, work / "src")
        docker_file = None
        if runtime.name != "process":
            inside = Path(dockerfile).is_relative_to(group.context)
            docker_file = context / Path(dockerfile).relative_to(group.context) if inside else None
            if docker_file is None or not docker_file.is_file():  # a Dockerfile outside the context
                docker_file = await cache.export(sha, dockerfile, work / "df")
        out = work / "artifact"
        try:
            output = await runtime.build_artifact(context, docker_file, image, out)
        except MeshError as err:
            raise BuildFailed(f"build of {group.context} failed: {err}", str(err)) from err
        digest, size = await asyncio.to_thread(_digest, out)
        if digest not in await store.object_names(subjects.ARTIFACTS_STORE):
            await store.put_object(
                subjects.ARTIFACTS_STORE, digest, out, {"image": image, "source": source}
            )
        took = time.monotonic() - started
        await say(f"{', '.join(group.services)}: built {digest[:12]} ({size / 2**20:.1f} MB) "
                  f"in {took:.1f} s")  # fmt: skip
        built = Artifact(group.services[0], digest, runtime.name, size, source, image or None)
        return built, output
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)


def _digest(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(2**20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size
