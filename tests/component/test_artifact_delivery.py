"""A deploy's artifact reaches a droplet's runtime through the artifact store and runs: the
process runtime builds a tarball of a build context and runs an instance inside its unpacked
copy; the docker runtime builds an image, saves it to a file, and a droplet whose engine lacks
the image loads it before its container starts (the image is built `FROM scratch` with a static
busybox; no registry is asked)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshd.agent.reconciler import Reconciler
from plugins.runtimes import ArtifactError, Runtime, RuntimeContext
from plugins.runtimes.docker import DockerRuntime
from plugins.secrets.env import EnvSecrets
from protocol import subjects
from tests import support
from tests.support.docker import example_context
from tests.support.memstore import MemoryStore
from tests.support.mesh import HELLO
from tests.support.reconciling import ADDRESS, allocation
from tests.support.waiting import until

STORE = subjects.ARTIFACTS_STORE


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def published(
    store: MemoryStore, runtime: Runtime, context: Path, image: str, out: Path
) -> str:
    """Build `context` into an artifact as the builder does and put it in the store."""
    await runtime.build_artifact(context, None, image, out)
    digest = sha256(out)
    await store.put_object(STORE, digest, out)
    return digest


def healthy(reconciler: Reconciler) -> bool:
    return any(s.healthy for s in reconciler.statuses())


def waiting_reason(reconciler: Reconciler) -> str | None:
    return next((s.last_error for s in reconciler.statuses() if s.last_error), None)


async def test_the_process_runtime_runs_an_instance_inside_its_fetched_artifact(
    reconciler: Reconciler, tmp_path: Path
) -> None:
    context = tmp_path / "context"
    context.mkdir()
    shutil.copy(HELLO, context / "hello.py")
    store = MemoryStore()
    digest = await published(store, reconciler.runtime, context, "", tmp_path / "app.tar.gz")
    wanted = allocation(
        port=support.free_port(ADDRESS),
        droplets=("web1",),
        command=None,
        process_command=f"{sys.executable} hello.py",  # relative: it runs where it was unpacked
        artifact=digest,
        release=1,
    )
    await reconciler.apply({subjects.alloc_key("shop", "prod", "backend"): wanted})
    reason = await until(lambda: waiting_reason(reconciler), "the instance waiting for the mesh")
    assert "waiting for the mesh to fetch artifact" in reason

    reconciler.artifacts.store = store
    await until(lambda: healthy(reconciler), "the instance healthy, run from its artifact")
    (info,) = await reconciler.runtime.list()
    unpacked = tmp_path / "rt" / "artifacts" / digest
    assert Path(os.readlink(f"/proc/{info.runtime_id}/cwd")) == unpacked
    assert (unpacked / "hello.py").read_bytes() == HELLO.read_bytes()
    assert [e.name for e in store.events] == ["artifact_fetched"]
    assert list((tmp_path / "fetching").iterdir()) == []


@pytest.fixture
async def docker_runtimes(
    docker_engine: Any, docker_mesh: str, tmp_path: Path
) -> AsyncIterator[tuple[DockerRuntime, DockerRuntime, str]]:
    """A builder's runtime and a droplet's, on one engine, and the tag of the image to build
    (removed afterwards)."""
    tag = f"meshd-test-artifact-{docker_mesh}:1"
    made = [
        DockerRuntime(
            RuntimeContext(
                mesh=docker_mesh,
                droplet=name,
                data_dir=tmp_path / name,
                config={"pull": False},
            )
        )
        for name in ("builder", "web1")
    ]
    yield made[0], made[1], tag
    for runtime in made:
        await runtime.close()
    with contextlib.suppress(Exception):
        docker_engine.images.remove(tag, force=True)


async def test_a_droplet_without_the_image_loads_it_from_the_artifact_store_and_runs_it(
    docker_runtimes: tuple[DockerRuntime, DockerRuntime, str], docker_engine: Any, tmp_path: Path
) -> None:
    builder, droplet, tag = docker_runtimes
    store = MemoryStore()
    context = example_context(tmp_path / "context")
    digest = await published(store, builder, context, tag, tmp_path / "image.tar")
    assert await builder.has_artifact(digest, tag)
    docker_engine.images.remove(tag, force=True)  # as on a droplet that never built it
    assert not await droplet.has_artifact(digest, tag)

    (tmp_path / "agent").mkdir()
    reconciler = Reconciler(droplet, "web1", ADDRESS, tmp_path / "agent", EnvSecrets())
    reconciler.artifacts.store = store
    port = support.free_port(ADDRESS)
    wanted = allocation(
        port=port,
        droplets=("web1",),
        image=tag,
        command="serve",
        env_vars={"SERVICE_NAME": "shop-prod-backend", "SERVICE_PORT": str(port)},
        artifact=digest,
        release=1,
    )
    await reconciler.apply({subjects.alloc_key("shop", "prod", "backend"): wanted})
    await reconciler.reconcile()
    (info,) = await droplet.list()
    assert info.key == "shop.prod.backend"
    assert await droplet.has_artifact(digest, tag)
    assert [e.name for e in store.events] == ["artifact_fetched"]
    await until(lambda: serves(f"http://{ADDRESS}:{port}/health"), "the loaded image serving")


async def serves(url: str) -> bool:
    timeout = aiohttp.ClientTimeout(total=2)
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with aiohttp.ClientSession() as http, http.get(url, timeout=timeout) as response:
            return response.status == 200
    return False


async def test_a_failed_docker_build_is_an_artifact_error_with_its_log(
    docker_runtimes: tuple[DockerRuntime, DockerRuntime, str], tmp_path: Path
) -> None:
    builder, _, tag = docker_runtimes
    context = tmp_path / "broken"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM scratch\nCOPY missing-file /x\n")
    with pytest.raises(ArtifactError, match=f"build image {tag}") as raised:
        await builder.build_artifact(context, context / "Dockerfile", tag, tmp_path / "out.tar")
    assert "COPY missing-file" in raised.value.log
    assert not (tmp_path / "out.tar").exists()


async def test_an_archive_without_the_image_is_refused(
    docker_runtimes: tuple[DockerRuntime, DockerRuntime, str], tmp_path: Path
) -> None:
    _, droplet, tag = docker_runtimes
    (tmp_path / "empty.tar").write_bytes(b"\0" * 1024)
    with pytest.raises(ArtifactError, match="load artifact"):
        await droplet.load_artifact("c" * 64, tag, tmp_path / "empty.tar")
