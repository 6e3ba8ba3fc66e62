"""A release command run for real: `run_once` of the process runtime (a child in the
artifact's directory with the instance's environment and secret files) and of the docker
runtime (a one-off container of the instance's image, removed after), each with a failing
command and a timeout; and an agent answering the builder's request over the bus with its
allocation of the release service and the release's artifact."""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshd.agent.lease import Term
from meshd.agent.meshview import MeshView
from meshd.agent.reconciler import Reconciler
from meshd.agent.release_commands import ReleaseCommands
from meshd.core.spec import ProjectSpec, ReleaseCommand
from meshd.roles.builder.release_command import ReleaseCommandFailed, run_release_command
from plugins.runtimes import InstanceSpec, InstanceStartError, OneOffTimeout, RuntimeContext
from plugins.runtimes.docker import DockerRuntime
from plugins.runtimes.process import ProcessRuntime
from plugins.runtimes.process import once as process_once
from plugins.runtimes.process.artifacts import pack
from plugins.secrets.env import EnvSecrets
from protocol.releases import Artifact, DeployAction, Release, ReleaseStatus
from tests import support
from tests.support.docker import mesh_objects
from tests.support.memstore import MemoryStore
from tests.support.reconciling import allocation
from tests.support.waiting import until

SECRET = b"s3cret-value-that-must-not-leak"
PYTHON = sys.executable
MIGRATE = """\
import os, pathlib, sys
secret = pathlib.Path(os.environ["DB_PASSWORD_FILE"]).read_bytes()
print("migrating", os.environ["PROJECT"], "in", pathlib.Path.cwd().name[:12])
print("note:", pathlib.Path("note.txt").read_text().strip(), flush=True)
print("secret readable:", secret == SECRET, file=sys.stderr)
sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
""".replace("SECRET", repr(SECRET))


def spec(**more: Any) -> InstanceSpec:
    values: dict[str, Any] = {
        "project": "shop",
        "env": "uat",
        "service": "backend",
        "generation": 1,
        "host": "127.0.0.1",
        "env_vars": {"PROJECT": "shop", "SERVICE_NAME": "backend"},
        "secrets": {"db_password": SECRET},
    }
    return InstanceSpec(**{**values, **more})


async def answers(port: int) -> bool:
    timeout = aiohttp.ClientTimeout(total=2)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(f"http://127.0.0.1:{port}/health") as response,
        ):
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def loaded_artifact(runtime: ProcessRuntime, tmp_path: Path) -> str:
    """A deploy's build of a context holding migrate.py, loaded into `runtime`; its digest."""
    context = tmp_path / "context"
    context.mkdir()
    (context / "migrate.py").write_text(MIGRATE)
    (context / "note.txt").write_text("release 7\n")
    pack(context, tmp_path / "artifact.tar.gz")
    digest = hashlib.sha256((tmp_path / "artifact.tar.gz").read_bytes()).hexdigest()
    await runtime.load_artifact(digest, None, tmp_path / "artifact.tar.gz")
    return digest


@pytest.fixture
async def process(tmp_path: Path) -> AsyncIterator[ProcessRuntime]:
    runtime = ProcessRuntime(RuntimeContext(mesh="m", droplet="web1", data_dir=tmp_path / "rt"))
    yield runtime
    await runtime.close()


# --- the process runtime --------------------------------------------------------------------


async def test_a_process_one_off_runs_in_the_artifact_with_the_instances_environment(
    process: ProcessRuntime, tmp_path: Path
) -> None:
    digest = await loaded_artifact(process, tmp_path)

    code, output = await process.run_once(spec(artifact=digest), f"{PYTHON} migrate.py", 30)

    assert code == 0
    assert f"migrating shop in {digest[:12]}" in output
    assert "note: release 7" in output and "secret readable: True" in output
    assert SECRET.decode() not in output
    assert not (tmp_path / "rt" / "once" / "shop.uat.backend").exists()  # secrets gone too
    assert await process.list() == []  # never an instance


async def test_a_failing_process_one_off_gives_its_exit_code_and_what_it_said(
    process: ProcessRuntime, tmp_path: Path
) -> None:
    digest = await loaded_artifact(process, tmp_path)
    code, output = await process.run_once(spec(artifact=digest), f"{PYTHON} migrate.py 3", 30)
    assert code == 3 and "note: release 7" in output

    with pytest.raises(InstanceStartError, match="cannot run 'no-such-program'"):
        await process.run_once(spec(), "no-such-program --now", 30)
    with pytest.raises(InstanceStartError, match="cannot parse command"):
        await process.run_once(spec(), "python3 'migrate.py", 30)


async def test_a_process_one_off_that_runs_too_long_is_killed_with_what_it_said(
    process: ProcessRuntime, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(process_once, "GRACE_S", 0.5)
    stubborn = (  # ignores SIGTERM: SIGKILL after the grace
        "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('waiting', os.getpid(), flush=True); time.sleep(60)"
    )
    started = time.monotonic()
    with pytest.raises(OneOffTimeout) as caught:
        await process.run_once(spec(), f"{PYTHON} -c {stubborn!r}", 1)
    assert time.monotonic() - started < 10
    assert caught.value.timeout == 1 and "killed after 1 s" in str(caught.value)
    pid = int(caught.value.output.split()[-1])
    assert caught.value.output.startswith("waiting")
    assert not Path(f"/proc/{pid}").exists()


class Followed:
    """What a one-off wrote, as `run_once` passes it on, with when each piece came."""

    def __init__(self) -> None:
        self.pieces: list[tuple[float, bytes]] = []

    async def __call__(self, chunk: bytes) -> None:
        self.pieces.append((time.monotonic(), chunk))

    @property
    def text(self) -> str:
        return b"".join(chunk for _, chunk in self.pieces).decode()

    def when(self, text: str) -> float:
        """When `text` had been passed on."""
        so_far = b""
        for at, chunk in self.pieces:
            so_far += chunk
            if text in so_far.decode():
                return at
        raise AssertionError(f"{text!r} never came")


SLOW_SCRIPT = "echo first; sleep 2; echo second; exit 4"


async def test_a_process_one_offs_output_is_passed_on_as_it_comes(
    process: ProcessRuntime,
) -> None:
    followed = Followed()
    code, tail = await process.run_once(spec(), f"sh -c '{SLOW_SCRIPT}'", 30, followed)
    assert (code, tail) == (4, "first\nsecond")
    assert followed.text == "first\nsecond\n"  # all of it, once
    assert followed.when("second") - followed.when("first") > 1.0  # not held back to the end


# --- the docker runtime ---------------------------------------------------------------------


@pytest.fixture
async def docker_runtime(docker_mesh: str, tmp_path: Path) -> AsyncIterator[DockerRuntime]:
    config = {"pull": False}
    runtime = DockerRuntime(
        RuntimeContext(mesh=docker_mesh, droplet="web1", data_dir=tmp_path / "d", config=config)
    )
    yield runtime
    for info in await runtime.list():
        await runtime.stop(info.key, grace=1.0)
    await runtime.close()


async def test_a_docker_one_off_runs_beside_the_instance_and_leaves_nothing_behind(
    docker_runtime: DockerRuntime, docker_engine: Any, docker_mesh: str, test_image: str
) -> None:
    port = support.free_port("127.0.0.1")
    web = spec(image=test_image, port=port, command="serve", env_vars={
        "PROJECT": "shop", "SERVICE_NAME": "backend", "SERVICE_PORT": str(port)})  # fmt: skip
    instance = await docker_runtime.ensure(web)
    await until(lambda: answers(port), what="the instance to listen")
    script = (
        'echo "migrating $PROJECT"; test -r /run/secrets/db_password && echo secret readable; '
        "wget -q -O - http://backend:$SERVICE_PORT/health; echo; exit 3"
    )

    code, output = await docker_runtime.run_once(web, f"sh -c '{script}'", 60)

    assert code == 3
    assert "migrating shop" in output and "secret readable" in output
    assert '"status": "ok"' in output  # on the instance's network, by its alias
    assert [i.runtime_id for i in await docker_runtime.list()] == [instance.runtime_id]
    assert mesh_objects(docker_engine, docker_mesh)["containers"] == [
        f"meshd-{docker_mesh}-web1-shop-uat-backend"
    ]
    code, output = await docker_runtime.run_once(web, "echo done", 60)
    assert (code, output) == (0, "done")


async def test_a_docker_one_offs_output_is_passed_on_as_it_comes(
    docker_runtime: DockerRuntime, test_image: str
) -> None:
    followed = Followed()
    code, tail = await docker_runtime.run_once(
        spec(image=test_image), f"sh -c '{SLOW_SCRIPT}'", 60, followed
    )
    assert (code, tail) == (4, "first\nsecond")
    assert followed.text == "first\nsecond\n"
    assert followed.when("second") - followed.when("first") > 1.0


async def test_a_docker_one_off_that_runs_too_long_is_stopped_and_removed(
    docker_runtime: DockerRuntime, docker_engine: Any, docker_mesh: str, test_image: str
) -> None:
    started = time.monotonic()
    with pytest.raises(OneOffTimeout) as caught:
        await docker_runtime.run_once(spec(image=test_image), "sh -c 'echo waiting; sleep 60'", 1)
    assert time.monotonic() - started < 20
    assert caught.value.output == "waiting"
    assert mesh_objects(docker_engine, docker_mesh) == {
        "containers": [], "networks": [], "volumes": []}  # fmt: skip
    with pytest.raises(InstanceStartError, match="not-there"):
        await docker_runtime.run_once(spec(image="meshd-test/not-there:1"), "true", 10)


# --- the builder asks an agent over the bus -------------------------------------------------


@pytest.fixture
async def agent(
    process: ProcessRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[MemoryStore, Reconciler]]:
    monkeypatch.setenv("SHOP_DB_PASSWORD", SECRET.decode())
    (tmp_path / "agent").mkdir()
    store = MemoryStore()
    reconciler = Reconciler(process, "web1", "127.0.0.1", tmp_path / "agent", EnvSecrets())
    commands = asyncio.create_task(ReleaseCommands(store, reconciler, "web1").run())
    await asyncio.sleep(0)
    yield store, reconciler
    commands.cancel()
    await asyncio.gather(commands, return_exceptions=True)


def release_of(digest: str) -> Release:
    artifact = Artifact("backend", digest, "process", 1, "process:tree:")
    return Release(project="shop", env="uat", number=7, action=DeployAction.DEPLOY,
                   status=ReleaseStatus.BUILDING, ref="main", sha="ab12", requested_by="ana",
                   created_at=1.0, updated_at=1.0, request_id="r",
                   artifacts=(artifact,))  # fmt: skip


async def test_the_builder_runs_the_command_on_the_droplet_of_the_service_and_judges_it(
    agent: tuple[MemoryStore, Reconciler], process: ProcessRuntime, tmp_path: Path
) -> None:
    store, reconciler = agent
    digest = await loaded_artifact(process, tmp_path)
    backend = allocation(env="uat", droplets=("web1",), secrets=("db_password",),
                         env_vars={"PROJECT": "shop"})  # fmt: skip
    view = MeshView()
    await view.set_allocations({"shop.uat.backend": backend})
    lines: list[str] = []
    say: Callable[[str], Any] = lambda line: asyncio.sleep(0, lines.append(line))  # noqa: E731
    term = Term("builder", 41, time.monotonic() + 60)

    def shop(command: str) -> ProjectSpec:
        return ProjectSpec("shop", 1, "s", "s", (), release_command=ReleaseCommand(command))

    with pytest.raises(ReleaseCommandFailed, match="shop.uat.backend is not allocated to web1"):
        await run_release_command(store, view, term, shop("python3 migrate.py"),
                                  release_of(digest), say)  # fmt: skip
    await reconciler.apply({"shop.uat.backend": backend})
    await run_release_command(store, view, term, shop(f"{PYTHON} migrate.py"),
                              release_of(digest), say)  # fmt: skip
    assert lines[-2:][0] == "running the release command on web1"
    assert lines[-1].startswith("release command exited with 0 on web1 in ")

    with pytest.raises(ReleaseCommandFailed) as caught:
        await run_release_command(store, view, term, shop(f"{PYTHON} migrate.py 4"),
                                  release_of(digest), say)  # fmt: skip
    assert caught.value.reason == "release command exited with 4 on web1"
    assert "note: release 7" in caught.value.tail
    await asyncio.sleep(0.05)  # events are recorded in the background
    ran = [e for e in store.events if e.name == "release_command_ran"]
    assert [e.detail.get("exit_code") for e in ran] == [None, 0, 4]
    assert {(e.subject, e.actor, e.fence) for e in ran} == {("shop.uat", "web1", 41)}
    assert not any("note: release 7" in str(e.detail) for e in ran)  # never the output
