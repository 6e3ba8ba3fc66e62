"""The docker runtime pointed at podman's Docker-compatible API (`--docker-host`): build,
run, secrets, adoption, restarts by the engine and removal. Podman is optional: without it
(CI does not install it) these tests skip."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshd.cli.up import podman_ulimits
from plugins.runtimes import InstancePhase, InstanceSpec, RuntimeContext
from plugins.runtimes.docker import DockerRuntime
from plugins.runtimes.docker.admin import engine_version, remove_objects
from tests import support
from tests.support.docker import example_context, new_mesh_name

PODMAN = shutil.which("podman")
pytestmark = [
    pytest.mark.skipif(PODMAN is None, reason="podman not installed (optional; not in CI)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="rootful podman needs root"),
]
ADDRESS = "127.0.0.1"


@pytest.fixture(scope="module")
def podman_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    assert PODMAN is not None
    host = f"unix://{tmp_path_factory.mktemp('podman')}/podman.sock"
    service = subprocess.Popen(
        [PODMAN, "system", "service", "--time=0", host],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while engine_version(host) is None:
            assert time.monotonic() < deadline, "podman's API did not answer"
            time.sleep(0.2)
        yield host
    finally:
        service.terminate()
        service.wait(timeout=30)


@pytest.fixture
async def runtime(podman_host: str, tmp_path: Path) -> AsyncIterator[DockerRuntime]:
    mesh = new_mesh_name()
    made = DockerRuntime(
        RuntimeContext(
            mesh=mesh,
            droplet="master",
            data_dir=tmp_path / "runtime",
            config={
                "docker_host": podman_host,
                "pull": False,
                "ulimits": podman_ulimits(),
                "init": False,  # podman's init, catatonit, is not installed with it
            },
        )
    )
    yield made
    await made.close()
    await asyncio.to_thread(remove_objects, mesh, None, docker_host=podman_host, volumes=True)


async def answers(url: str) -> str:
    async with aiohttp.ClientSession() as http:
        for _ in range(100):
            try:
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
                    if response.status == 200:
                        return await response.text()
            except (aiohttp.ClientError, TimeoutError, OSError):
                pass
            await asyncio.sleep(0.2)
    raise AssertionError(f"{url} did not answer")


async def test_the_docker_runtime_runs_heals_and_removes_instances_on_podman(
    runtime: DockerRuntime, podman_host: str, tmp_path: Path
) -> None:
    import docker

    context = example_context(tmp_path)
    port = support.free_port(ADDRESS)
    spec = InstanceSpec(
        project="shop",
        env="test",
        service="backend",
        generation=1,
        host=ADDRESS,
        port=port,
        image=f"shop-backend:{runtime._mesh}",
        build_context=str(context),
        dockerfile=str(context / "Dockerfile"),
        env_vars={"SERVICE_PORT": str(port), "SERVICE_NAME": "shop-test-backend"},
        secrets={"db_password": b"pw-on-podman"},
        memory_mb=32,
        health_path="/health",
    )
    client: Any = docker.DockerClient(base_url=podman_host)
    try:
        info = await runtime.ensure(spec)
        assert "shop-test-backend" in await answers(f"http://{ADDRESS}:{port}/")
        container = client.containers.get(info.runtime_id)
        assert container.exec_run(["cat", "/run/secrets/db_password"])[1] == b"pw-on-podman"
        assert container.exec_run(["sh", "-c", "echo x > /run/secrets/db_password"])[0] != 0

        (listed,) = await runtime.list()
        assert (await runtime.ensure(spec)).runtime_id == listed.runtime_id == info.runtime_id

        os.kill(container.attrs["State"]["Pid"], signal.SIGKILL)
        for _ in range(100):
            (listed,) = await runtime.list()
            if listed.restarts:
                break
            await asyncio.sleep(0.2)
        assert listed.restarts >= 1 and listed.phase is InstancePhase.RUNNING
        await answers(f"http://{ADDRESS}:{port}/health")

        await runtime.stop(spec.key, grace=1)
        assert await runtime.list() == []
    finally:
        client.images.remove(spec.image, force=True)
        client.close()
