"""The docker runtime pulls an image from a real private registry (Debian's docker-registry
with an htpasswd login, started by the test) with the instance's login: the right password
runs the instance, a wrong one is a one-line error naming the registry and the user with
nothing started, and the password is in no log, container or ~/.docker/config.json."""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from plugins.runtimes import (
    InstancePhase,
    InstanceSpec,
    InstanceStartError,
    RegistryAuth,
    RuntimeContext,
)
from plugins.runtimes.docker import DockerRuntime
from tests import support
from tests.support.docker import mesh_objects
from tests.support.registry import Registry, push, running_registry
from tests.support.waiting import until

ADDRESS = "127.0.0.1"
DOCKER_CONFIG = Path.home() / ".docker" / "config.json"


def web(image: str, auth: RegistryAuth, generation: int = 1) -> InstanceSpec:
    port = support.free_port(ADDRESS)
    return InstanceSpec(
        project="shop",
        env="test",
        service="backend",
        generation=generation,
        host=ADDRESS,
        port=port,
        image=image,
        env_vars={"SERVICE_PORT": str(port), "SERVICE_NAME": "shop-test-backend"},
        memory_mb=32,
        health_path="/health",
        registry_auth=auth,
    )


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with running_registry(tmp_path / "registry") as running:
        yield running


@pytest.fixture
def private_image(docker_engine: Any, test_image: str, registry: Registry) -> Iterator[str]:
    """The test image in the registry only: pushed with the login, then removed here."""
    import docker.errors

    reference = push(docker_engine, test_image, registry, "shop/backend", secrets.token_hex(4))
    docker_engine.images.remove(reference)
    yield reference
    with contextlib.suppress(docker.errors.ImageNotFound):
        docker_engine.images.remove(reference, force=True)


@pytest.fixture
async def runtime(docker_mesh: str, tmp_path: Path) -> AsyncIterator[DockerRuntime]:
    made = DockerRuntime(
        RuntimeContext(
            mesh=docker_mesh, droplet="master", data_dir=tmp_path / "rt", config={"pull": True}
        )
    )
    yield made
    await made.close()


def present(client: Any, image: str) -> bool:
    import docker.errors

    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        return False
    return True


async def test_an_image_from_a_private_registry_is_pulled_with_the_instances_login(
    runtime: DockerRuntime,
    docker_engine: Any,
    docker_mesh: str,
    registry: Registry,
    private_image: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    before = DOCKER_CONFIG.read_bytes() if DOCKER_CONFIG.exists() else None
    auth = RegistryAuth(registry.server, registry.username, registry.password)
    assert not present(docker_engine, private_image)

    spec = web(private_image, auth)
    info = await runtime.ensure(spec)

    assert info.phase is InstancePhase.RUNNING
    assert present(docker_engine, private_image)
    await until(lambda: healthy(f"http://{ADDRESS}:{spec.port}/health"), "the instance to answer")
    container = docker_engine.containers.get(info.runtime_id)
    assert registry.password not in json.dumps(container.attrs)
    assert registry.password not in caplog.text
    assert "Pulling image with a registry login" in caplog.text
    assert (DOCKER_CONFIG.read_bytes() if DOCKER_CONFIG.exists() else None) == before


async def test_a_wrong_password_is_a_clear_error_and_nothing_starts(
    runtime: DockerRuntime,
    docker_engine: Any,
    docker_mesh: str,
    registry: Registry,
    private_image: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "not-" + registry.password
    auth = RegistryAuth(registry.server, registry.username, wrong)

    with pytest.raises(InstanceStartError) as caught:
        await runtime.ensure(web(private_image, auth))

    message = str(caught.value)
    assert message.startswith(
        f"start instance shop.test.backend: registry {registry.server} refused the login for "
        f"{registry.username} ("
    )
    assert "\n" not in message and wrong not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert wrong not in caplog.text
    assert not present(docker_engine, private_image)
    assert mesh_objects(docker_engine, docker_mesh)["containers"] == []


async def healthy(url: str) -> bool:
    timeout = aiohttp.ClientTimeout(total=2)
    try:
        async with aiohttp.ClientSession() as http, http.get(url, timeout=timeout) as answer:
            return answer.status == 200
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False
