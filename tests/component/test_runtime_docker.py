"""The docker runtime against a real Docker Engine: containers with the right labels, ports
on the droplet's address, secrets as read-only files, re-adoption without restarts, restarts
by the engine counted, and nothing of another mesh or droplet touched."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from plugins.runtimes import (
    InstanceInfo,
    InstancePhase,
    InstanceSpec,
    InstanceStartError,
    RuntimeContext,
    RuntimeUnavailable,
)
from plugins.runtimes.docker import DockerRuntime
from tests import support
from tests.support.docker import example_context, mesh_objects
from tests.support.waiting import until

ADDRESS = "127.0.0.1"
SECRET = b"s3cret-value-that-must-not-leak"
DEADLINE = 30.0

MakeRuntime = Callable[..., DockerRuntime]


def web(image: str, port: int, *, generation: int = 1, **more: Any) -> InstanceSpec:
    values: dict[str, Any] = {
        "project": "shop",
        "env": "test",
        "service": "backend",
        "generation": generation,
        "host": ADDRESS,
        "port": port,
        "image": image,
        "env_vars": {"SERVICE_PORT": str(port), "SERVICE_NAME": "shop-test-backend"},
        "memory_mb": 32,
        "health_path": "/health",
        "service_kind": "web",
    }
    return InstanceSpec(**{**values, **more})


@pytest.fixture
async def make_runtime(docker_mesh: str, tmp_path: Path) -> AsyncIterator[MakeRuntime]:
    made: list[DockerRuntime] = []

    def make(droplet: str = "master", mesh: str = docker_mesh, **config: Any) -> DockerRuntime:
        runtime = DockerRuntime(
            RuntimeContext(
                mesh=mesh,
                droplet=droplet,
                data_dir=tmp_path / mesh / droplet,
                config={"pull": False, **config},
            )
        )
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        await runtime.close()


async def get(url: str) -> tuple[int, str]:
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession() as http, http.get(url, timeout=timeout) as response:
        return response.status, await response.text()


async def answers(url: str) -> str:
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while True:
        try:
            status, text = await get(url)
            if status == 200:
                return text
        except (aiohttp.ClientError, TimeoutError, OSError):
            pass
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{url} did not answer within {DEADLINE} s")
        await asyncio.sleep(0.2)


async def test_an_instance_runs_as_a_labelled_container_on_the_droplet_address(
    make_runtime: MakeRuntime, docker_engine: Any, docker_mesh: str, test_image: str
) -> None:
    runtime = make_runtime()
    port = support.free_port(ADDRESS)

    info = await runtime.ensure(web(test_image, port, secrets={"db_password": SECRET}))

    assert (info.key, info.generation, info.phase) == (
        "shop.test.backend",
        1,
        InstancePhase.RUNNING,
    )
    page = await answers(f"http://{ADDRESS}:{port}/")
    assert "shop-test-backend" in page
    container = docker_engine.containers.get(info.runtime_id)
    assert container.labels == {
        "meshd.mesh": docker_mesh,
        "meshd.local.droplet": "master",
        "meshd.project": "shop",
        "meshd.env": "test",
        "meshd.service": "backend",
        "meshd.generation": "1",
    }
    assert container.name == f"meshd-{docker_mesh}-master-shop-test-backend"
    host_config = container.attrs["HostConfig"]
    assert host_config["PortBindings"] == {
        f"{port}/tcp": [{"HostIp": ADDRESS, "HostPort": str(port)}]
    }
    assert host_config["RestartPolicy"]["Name"] == "unless-stopped"
    assert host_config["Memory"] == 32 * 1024 * 1024
    assert host_config["Init"] is True  # PID 1 passes SIGTERM on: stops take no grace period
    assert container.attrs["Config"]["Healthcheck"]["Test"][0] == "CMD-SHELL"
    networks = container.attrs["NetworkSettings"]["Networks"]
    assert list(networks) == [f"meshd-{docker_mesh}-master-shop-test"]
    assert "backend" in networks[f"meshd-{docker_mesh}-master-shop-test"]["Aliases"]
    env = container.attrs["Config"]["Env"]
    assert f"SERVICE_PORT={port}" in env
    assert not any(SECRET.decode() in variable for variable in env)
    assert SECRET.decode() not in json.dumps(container.attrs)


async def test_secrets_are_read_only_0400_files_under_run_secrets(
    make_runtime: MakeRuntime, docker_engine: Any, test_image: str
) -> None:
    runtime = make_runtime()
    info = await runtime.ensure(
        web(test_image, support.free_port(ADDRESS), secrets={"db_password": SECRET})
    )
    container = docker_engine.containers.get(info.runtime_id)

    code, content = container.exec_run(["cat", "/run/secrets/db_password"])
    assert (code, content) == (0, SECRET)
    code, mode = container.exec_run(["stat", "-c", "%a %u", "/run/secrets/db_password"])
    assert (code, mode.decode().strip()) == (0, "400 0")
    code, output = container.exec_run(["sh", "-c", "echo x > /run/secrets/db_password"])
    assert code != 0 and b"Read-only file system" in output
    mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
    assert mounts["/run/secrets/db_password"]["RW"] is False


async def test_a_healthy_container_is_adopted_by_a_new_runtime_not_restarted(
    make_runtime: MakeRuntime, test_image: str
) -> None:
    port = support.free_port(ADDRESS)
    first = await make_runtime().ensure(web(test_image, port))
    await answers(f"http://{ADDRESS}:{port}/health")

    again = make_runtime()
    (listed,) = await again.list()
    adopted = await again.ensure(web(test_image, port))

    assert listed.runtime_id == adopted.runtime_id == first.runtime_id
    assert listed.phase is InstancePhase.RUNNING


async def test_a_new_generation_replaces_the_container(
    make_runtime: MakeRuntime, docker_engine: Any, test_image: str
) -> None:
    runtime = make_runtime()
    port = support.free_port(ADDRESS)
    first = await runtime.ensure(web(test_image, port))

    second = await runtime.ensure(web(test_image, port, generation=2))

    assert second.runtime_id != first.runtime_id
    (listed,) = await runtime.list()
    assert (listed.generation, listed.runtime_id) == (2, second.runtime_id)
    assert docker_engine.containers.get(second.runtime_id).labels["meshd.generation"] == "2"
    await answers(f"http://{ADDRESS}:{port}/health")


async def test_a_second_slot_runs_beside_the_first_on_its_own_port(
    make_runtime: MakeRuntime, docker_engine: Any, docker_mesh: str, test_image: str
) -> None:
    runtime = make_runtime()
    port, spare = support.free_port(ADDRESS), support.free_port(ADDRESS)
    await runtime.ensure(web(test_image, port))
    inside = {"SERVICE_PORT": str(port), "SERVICE_NAME": "shop-test-backend"}
    second = await runtime.ensure(
        web(test_image, spare, generation=2, slot=1, service_port=port, env_vars=inside)
    )

    assert second.key == "shop.test.backend.1"
    await answers(f"http://{ADDRESS}:{port}/")
    await answers(f"http://{ADDRESS}:{spare}/")
    container = docker_engine.containers.get(second.runtime_id)
    assert container.name == f"meshd-{docker_mesh}-master-shop-test-backend.1"
    assert container.labels["meshd.slot"] == "1"
    assert container.attrs["HostConfig"]["PortBindings"] == {
        f"{port}/tcp": [{"HostIp": ADDRESS, "HostPort": str(spare)}]  # same port inside
    }
    listed = {i.key: i.generation for i in await runtime.list()}
    assert listed == {"shop.test.backend": 1, "shop.test.backend.1": 2}

    await runtime.stop("shop.test.backend")
    assert [i.key for i in await runtime.list()] == ["shop.test.backend.1"]
    await answers(f"http://{ADDRESS}:{spare}/")


async def test_a_killed_container_is_restarted_by_the_engine_and_counted(
    make_runtime: MakeRuntime, docker_engine: Any, test_image: str
) -> None:
    runtime = make_runtime()
    port = support.free_port(ADDRESS)
    info = await runtime.ensure(web(test_image, port))
    await runtime.list()  # follows the engine's events from here on
    await until(lambda: runtime.follows_events, "the engine's events followed")
    pid = docker_engine.containers.get(info.runtime_id).attrs["State"]["Pid"]

    os.kill(pid, signal.SIGKILL)

    async def restarted() -> InstanceInfo | None:
        infos = await runtime.list()
        return infos[0] if infos and infos[0].restarts >= 1 else None

    after = await until(restarted, "the engine's restart", timeout=DEADLINE)
    assert after.phase is InstancePhase.RUNNING
    assert after.exit_code == 137
    assert after.runtime_id == info.runtime_id  # the same container, restarted
    await answers(f"http://{ADDRESS}:{port}/health")


async def test_a_stopped_container_is_listed_as_exited_with_its_output(
    make_runtime: MakeRuntime, docker_engine: Any, test_image: str
) -> None:
    runtime = make_runtime()
    info = await runtime.ensure(
        web(test_image, support.free_port(ADDRESS), command="sh -c 'echo bad config; exit 3'")
    )

    async def exited() -> InstanceInfo | None:
        docker_engine.containers.get(info.runtime_id).stop(timeout=0)
        infos = await runtime.list()
        return infos[0] if infos and infos[0].phase is InstancePhase.EXITED else None

    stopped = await until(exited, "the container to stop", timeout=DEADLINE)
    assert stopped.exit_code == 3
    assert stopped.detail is not None and "bad config" in stopped.detail


async def test_stop_removes_the_container_and_its_secret_files(
    make_runtime: MakeRuntime, docker_engine: Any, test_image: str, tmp_path: Path
) -> None:
    runtime = make_runtime()
    info = await runtime.ensure(
        web(test_image, support.free_port(ADDRESS), secrets={"db_password": SECRET})
    )

    await runtime.stop("shop.test.backend", grace=1)

    assert await runtime.list() == []
    assert not await asyncio.to_thread(lambda: list(tmp_path.rglob("db_password")))
    with pytest.raises(Exception, match="No such container"):
        docker_engine.containers.get(info.runtime_id)
    await runtime.stop("shop.test.backend")  # idempotent


async def test_runtimes_of_other_droplets_and_meshes_never_see_each_others_containers(
    make_runtime: MakeRuntime, docker_mesh: str, docker_engine: Any, test_image: str
) -> None:
    mine = make_runtime("web1")
    other_droplet = make_runtime("web2")
    other_mesh = make_runtime("web1", mesh=f"{docker_mesh}x")
    try:
        await other_droplet.ensure(web(test_image, support.free_port(ADDRESS)))
        await other_mesh.ensure(web(test_image, support.free_port(ADDRESS)))

        assert await mine.list() == []
        await mine.stop("shop.test.backend")
        assert len(await other_droplet.list()) == 1
        assert len(await other_mesh.list()) == 1
        assert mesh_objects(docker_engine, docker_mesh)["networks"] == [
            f"meshd-{docker_mesh}-web2-shop-test"
        ]
    finally:
        await other_mesh.stop("shop.test.backend", grace=0)
    assert mesh_objects(docker_engine, f"{docker_mesh}x") == {
        "containers": [],
        "networks": [],
        "volumes": [],
    }


async def test_a_missing_image_is_a_start_error_that_names_it(
    make_runtime: MakeRuntime,
) -> None:
    runtime = make_runtime()

    with pytest.raises(
        InstanceStartError, match="image nosuch/image:1 not available.*pulling is off"
    ):
        await runtime.ensure(web("nosuch/image:1", support.free_port(ADDRESS)))
    assert await runtime.list() == []


async def test_a_build_context_is_built_once_and_run(
    make_runtime: MakeRuntime, docker_engine: Any, docker_mesh: str, tmp_path: Path
) -> None:
    context = example_context(tmp_path)
    tag = f"{docker_mesh}-backend:abc"
    runtime = make_runtime()
    port = support.free_port(ADDRESS)
    spec = web(tag, port, build_context=str(context), dockerfile=str(context / "Dockerfile"))
    try:
        info = await runtime.ensure(spec)
        assert "shop-test-backend" in await answers(f"http://{ADDRESS}:{port}/")
        assert docker_engine.images.get(tag).labels == {"meshd.mesh": docker_mesh}
        assert info.phase is InstancePhase.RUNNING
    finally:
        await runtime.stop(spec.key, grace=0)
        docker_engine.images.remove(tag, force=True)


async def test_a_build_context_that_is_not_on_this_droplet_is_a_start_error(
    make_runtime: MakeRuntime, tmp_path: Path
) -> None:
    gone = tmp_path / "elsewhere"
    spec = web("shop-backend:elsewhere", support.free_port(ADDRESS), build_context=str(gone))

    with pytest.raises(InstanceStartError, match="build context .* is not on this droplet"):
        await make_runtime().ensure(spec)


async def test_a_broken_build_is_a_start_error_with_the_builds_words(
    make_runtime: MakeRuntime, tmp_path: Path
) -> None:
    context = tmp_path / "broken"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM scratch\nCOPY missing-file /x\n")
    spec = web(
        "shop-backend:broken",
        support.free_port(ADDRESS),
        build_context=str(context),
        dockerfile=str(context / "Dockerfile"),
    )

    with pytest.raises(InstanceStartError, match="cannot build image shop-backend:broken"):
        await make_runtime().ensure(spec)


async def test_a_stateful_service_gets_a_named_volume_that_outlives_its_container(
    make_runtime: MakeRuntime, docker_engine: Any, docker_mesh: str, test_image: str
) -> None:
    runtime = make_runtime()
    port = support.free_port(ADDRESS)
    spec = web(
        test_image,
        port,
        service="database",
        service_kind="database",
        data_path="/data",
        command="serve DB_PORT",
        env_vars={"DB_PORT": str(port), "SERVICE_NAME": "shop-test-database"},
        health_path=None,
    )
    info = await runtime.ensure(spec)
    container = docker_engine.containers.get(info.runtime_id)
    assert container.exec_run(["sh", "-c", "echo kept > /data/file"])[0] == 0

    await runtime.stop(spec.key, grace=0)
    again = await runtime.ensure(spec)

    volume = f"meshd-{docker_mesh}-master-shop-test-database"
    assert docker_engine.volumes.get(volume).attrs["Labels"]["meshd.mesh"] == docker_mesh
    code, content = docker_engine.containers.get(again.runtime_id).exec_run(["cat", "/data/file"])
    assert (code, content) == (0, b"kept\n")
    assert (
        "Healthcheck" not in container.attrs["Config"]
        or not container.attrs["Config"]["Healthcheck"]
    )


async def test_an_engine_that_does_not_answer_is_reported_as_unavailable(
    make_runtime: MakeRuntime, tmp_path: Path
) -> None:
    runtime = make_runtime(docker_host=f"unix://{tmp_path}/no-such.sock")

    with pytest.raises(RuntimeUnavailable, match="no Docker engine answers"):
        await runtime.list()


async def test_an_engine_that_does_not_answer_is_every_instances_error(
    tmp_path: Path,
) -> None:
    from meshd.agent.reconciler import Reconciler
    from plugins.secrets.env import EnvSecrets
    from protocol.messages import Allocation

    runtime = DockerRuntime(
        RuntimeContext(
            mesh="m",
            droplet="master",
            data_dir=tmp_path / "runtime",
            config={"docker_host": f"unix://{tmp_path}/gone.sock"},
        )
    )
    reconciler = Reconciler(runtime, "master", ADDRESS, tmp_path, EnvSecrets())
    backend = Allocation(
        project="shop",
        env="test",
        service="backend",
        generation=1,
        droplets=("master",),
        port=support.free_port(ADDRESS),
        image="shop-backend:1",
        command=None,
        memory_mb=32,
    )
    await reconciler.apply({"shop.test.backend": backend})

    await reconciler.reconcile()

    (status,) = reconciler.statuses()
    assert status.last_error is not None
    assert "no Docker engine answers" in status.last_error
    assert not status.healthy
    await runtime.close()


def allocation_of(spec: InstanceSpec) -> Any:
    from protocol.messages import Allocation

    return Allocation(
        project=spec.project,
        env=spec.env,
        service=spec.service,
        generation=spec.generation,
        droplets=("master",),
        port=spec.port,
        image=spec.image,
        command=None,
        memory_mb=spec.memory_mb,
        env_vars=dict(spec.env_vars),
        health_path=spec.health_path,
    )


async def test_a_removed_allocation_stops_at_once_an_unknown_container_after_a_grace(
    make_runtime: MakeRuntime, test_image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import meshd.agent.reconciler
    from meshd.agent.reconciler import Reconciler
    from plugins.secrets.env import EnvSecrets

    runtime = make_runtime()
    found = web(test_image, support.free_port(ADDRESS), service="stray")
    await runtime.ensure(found)  # on the droplet, never allocated to this agent
    reconciler = Reconciler(runtime, "master", ADDRESS, tmp_path, EnvSecrets())
    wanted = web(test_image, support.free_port(ADDRESS))
    await reconciler.apply({wanted.key: allocation_of(wanted)})
    await reconciler.reconcile()
    assert sorted(i.key for i in await runtime.list()) == ["shop.test.backend", "shop.test.stray"]

    await reconciler.apply({})
    await reconciler.reconcile()
    assert [i.key for i in await runtime.list()] == ["shop.test.stray"]  # in its grace period

    monkeypatch.setattr(meshd.agent.reconciler, "UNWANTED_GRACE_S", 0.0)
    await reconciler.reconcile()
    assert await runtime.list() == []


async def test_engine_calls_run_on_their_own_threads_whatever_else_blocks(
    make_runtime: MakeRuntime,
) -> None:
    """The agent's default thread pool busy (saving files, reloading nginx, a provider call)
    and a build or pull in flight: the engine still answers the reconciler at once."""
    runtime = make_runtime()
    release = threading.Event()
    loop = asyncio.get_running_loop()
    busy = [loop.run_in_executor(None, release.wait, 30) for _ in range(64)]  # all its workers
    slow = asyncio.create_task(runtime._engine.call_slow(lambda _client: release.wait(30)))  # noqa: SLF001
    try:
        assert await asyncio.wait_for(runtime.list(), 10) == []
    finally:
        release.set()
        await asyncio.gather(*busy, slow)


async def test_an_instance_names_its_json_file_log_where_its_output_is(
    make_runtime: MakeRuntime, test_image: str
) -> None:
    runtime = make_runtime()
    port = support.free_port(ADDRESS)
    await runtime.ensure(web(test_image, port))
    page = await answers(f"http://{ADDRESS}:{port}/")
    assert "<h1>shop-test-backend</h1>" in page
    await get(f"http://{ADDRESS}:{port}/health")
    (log,) = await runtime.log_files()
    assert (log.key, log.format) == ("shop.test.backend", "json-file")

    def said() -> list[str]:
        return [json.loads(line)["log"] for line in log.path.read_text().splitlines()]

    await until(lambda: any("request: GET / from" in line for line in said()), what="a line")
    assert any("serve: shop-test-backend on port" in line for line in said())
    assert not any("/health" in line for line in said())  # the probes print nothing
    lines = [json.loads(line) for line in log.path.read_text().splitlines()]
    assert all(line["stream"] in ("stdout", "stderr") and line["time"] for line in lines)
    assert await make_runtime(droplet="web1").log_files() == []  # another droplet's are not
