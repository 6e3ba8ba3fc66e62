"""The process runtime runs real processes: a tiny HTTP service (tests/support/httpapp.py)
started, replaced, killed, re-adopted and stopped. Every test stops what it started."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import stat
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from plugins.runtimes import (
    InstanceInfo,
    InstancePhase,
    InstanceSpec,
    InstanceStartError,
    RuntimeContext,
    UnknownRuntimeError,
    load_runtime,
)
from plugins.runtimes.process import WORKLOAD_NICE, ProcessRuntime, create
from protocol.errors import MeshError
from tests import support

HOST = "127.0.0.1"
HTTPAPP = Path(__file__).parents[1] / "support" / "httpapp.py"
KEY = "shop.test.backend"
SECRET = b"s3cret-value-that-must-not-leak"
DEADLINE = 10.0

MakeRuntime = Callable[[], ProcessRuntime]


def app_command(*options: str) -> str:
    return shlex.join([sys.executable, str(HTTPAPP), *options])


def web_spec(
    port: int | None = None,
    *,
    generation: int = 1,
    command: str | None = None,
    secrets: dict[str, bytes] | None = None,
) -> InstanceSpec:
    return InstanceSpec(
        project="shop",
        env="test",
        service="backend",
        generation=generation,
        host=HOST,
        port=port,
        command=app_command() if command is None else command,
        env_vars={"SERVICE_NAME": "backend", "PROJECT": "shop"},
        secrets=secrets or {},
        memory_mb=64,
        health_path="/health",
    )


def pid_of(info: InstanceInfo) -> int:
    return int(info.runtime_id)


def process_runs(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def environ_of(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")


async def http_get(port: int, path: str) -> tuple[int, str]:
    """GET a path of the instance, retrying until it listens."""
    timeout = aiohttp.ClientTimeout(total=1)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with asyncio.timeout(DEADLINE):
            while True:
                try:
                    async with session.get(f"http://{HOST}:{port}{path}") as response:
                        return response.status, await response.text()
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)


async def listed(runtime: ProcessRuntime, key: str = KEY) -> InstanceInfo | None:
    return next((info for info in await runtime.list() if info.key == key), None)


async def wait_until_exited(runtime: ProcessRuntime, key: str = KEY) -> InstanceInfo:
    async with asyncio.timeout(DEADLINE):
        while True:
            info = await listed(runtime, key)
            if info is not None and info.phase is InstancePhase.EXITED:
                return info
            await asyncio.sleep(0.05)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "runtime"


@pytest.fixture
async def runtimes(data_dir: Path) -> AsyncIterator[MakeRuntime]:
    """Makes runtimes over one data directory; stops every instance they know at the end."""
    made: list[ProcessRuntime] = []

    def make() -> ProcessRuntime:
        made.append(create(RuntimeContext(mesh="test", droplet="master", data_dir=data_dir)))
        return made[-1]

    yield make
    for runtime in made:
        for info in await runtime.list():
            await runtime.stop(info.key, grace=1.0)
    for runtime in made:
        await runtime.close()


@pytest.fixture
def runtime(runtimes: MakeRuntime) -> ProcessRuntime:
    return runtimes()


async def test_ensure_starts_an_instance_that_answers_http_with_its_environment(
    runtime: ProcessRuntime, data_dir: Path
) -> None:
    port = support.free_port(HOST)
    info = await runtime.ensure(web_spec(port))

    assert (info.key, info.generation, info.phase) == (KEY, 1, InstancePhase.RUNNING)
    assert process_runs(pid_of(info))
    assert await http_get(port, "/health") == (200, '{"status": "ok"}')
    assert await http_get(port, "/") == (200, "hello from backend\n")
    environment = json.loads((await http_get(port, "/env"))[1])
    assert environment["SERVICE_HOST"] == HOST
    assert environment["SERVICE_PORT"] == str(port)
    assert environment["PROJECT"] == "shop"
    assert environment["SECRETS_DIR"] == str(data_dir / "instances" / KEY / "secrets")
    assert await runtime.list() == [info]


async def test_a_worker_without_port_gets_no_service_port(runtime: ProcessRuntime) -> None:
    info = await runtime.ensure(web_spec(None))

    environ = environ_of(pid_of(info))
    assert f"SERVICE_HOST={HOST}".encode() in environ
    assert not any(entry.startswith(b"SERVICE_PORT=") for entry in environ)


async def test_an_instance_yields_the_cpu_to_its_agent(runtime: ProcessRuntime) -> None:
    info = await runtime.ensure(web_spec(None))
    # /proc/<pid>/stat field 19 is the nice value; the agent's (ours) is 0
    nice = int(Path(f"/proc/{pid_of(info)}/stat").read_text().rpartition(")")[2].split()[16])
    assert nice == WORKLOAD_NICE == 10
    assert os.getpriority(os.PRIO_PROCESS, 0) == 0


async def test_ensure_twice_with_the_same_generation_keeps_the_same_process(
    runtime: ProcessRuntime,
) -> None:
    port = support.free_port(HOST)
    first = await runtime.ensure(web_spec(port))
    await http_get(port, "/health")

    second = await runtime.ensure(web_spec(port))

    assert second == first
    assert process_runs(pid_of(first))


async def test_ensure_with_a_new_generation_replaces_the_process(
    runtime: ProcessRuntime,
) -> None:
    port = support.free_port(HOST)
    old = await runtime.ensure(web_spec(port, generation=1))
    await http_get(port, "/health")

    new = await runtime.ensure(web_spec(port, generation=2))

    assert new.generation == 2
    assert pid_of(new) != pid_of(old)
    assert not process_runs(pid_of(old))
    assert await http_get(port, "/health") == (200, '{"status": "ok"}')
    assert await runtime.list() == [new]


async def test_secrets_arrive_as_private_files_and_nowhere_else(
    runtime: ProcessRuntime, data_dir: Path
) -> None:
    port = support.free_port(HOST)
    spec = web_spec(port, command=app_command("--print-secrets"), secrets={"db_password": SECRET})
    info = await runtime.ensure(spec)
    await http_get(port, "/health")

    instance_dir = data_dir / "instances" / KEY
    secrets_dir = instance_dir / "secrets"
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((secrets_dir / "db_password").stat().st_mode) == 0o400
    assert (secrets_dir / "db_password").read_bytes() == SECRET
    assert "secret file: db_password" in (instance_dir / "output.log").read_text()
    for leak_site in (
        Path(f"/proc/{pid_of(info)}/environ"),
        instance_dir / "state.json",
        instance_dir / "output.log",
    ):
        assert SECRET not in leak_site.read_bytes(), leak_site
    assert SECRET.decode() not in repr(spec)


async def test_a_killed_instance_is_listed_exited_and_ensure_brings_it_back(
    runtime: ProcessRuntime,
) -> None:
    port = support.free_port(HOST)
    first = await runtime.ensure(web_spec(port))
    os.kill(pid_of(first), signal.SIGKILL)

    exited = await wait_until_exited(runtime)
    again = await runtime.ensure(web_spec(port))

    assert (exited.exit_code, exited.runtime_id) == (-signal.SIGKILL, first.runtime_id)
    assert again.phase is InstancePhase.RUNNING
    assert pid_of(again) != pid_of(first)
    assert await http_get(port, "/health") == (200, '{"status": "ok"}')


async def test_a_crashed_instance_reports_its_exit_code_and_last_output(
    runtime: ProcessRuntime,
) -> None:
    crash = "import sys; print('loading'); print('boom: no database'); sys.exit(3)"
    await runtime.ensure(web_spec(command=shlex.join([sys.executable, "-c", crash])))

    exited = await wait_until_exited(runtime)

    assert exited.exit_code == 3
    assert exited.detail is not None
    assert exited.detail.endswith("loading\nboom: no database")
    assert len(exited.detail) <= 300


async def test_a_new_runtime_readopts_a_running_instance_without_restarting_it(
    runtimes: MakeRuntime,
) -> None:
    port = support.free_port(HOST)
    first_agent = runtimes()
    started = await first_agent.ensure(web_spec(port))
    await first_agent.close()

    second_agent = runtimes()
    adopted = await listed(second_agent)
    ensured = await second_agent.ensure(web_spec(port))

    assert adopted == started
    assert ensured == started
    assert await http_get(port, "/health") == (200, '{"status": "ok"}')


async def test_a_readopted_instance_that_dies_is_seen_exited_by_polling(
    runtimes: MakeRuntime,
) -> None:
    port = support.free_port(HOST)
    started = await runtimes().ensure(web_spec(port))
    second_agent = runtimes()
    assert (await listed(second_agent)) == started

    os.kill(pid_of(started), signal.SIGKILL)
    exited = await wait_until_exited(second_agent)
    again = await second_agent.ensure(web_spec(port))

    assert (exited.runtime_id, exited.exit_code) == (started.runtime_id, None)
    assert pid_of(again) != pid_of(started)
    assert await http_get(port, "/health") == (200, '{"status": "ok"}')


async def test_a_reused_pid_is_never_taken_for_the_instance(
    runtime: ProcessRuntime, data_dir: Path
) -> None:
    stranger = await asyncio.create_subprocess_exec("sleep", "30")
    try:
        state_file = data_dir / "instances" / KEY / "state.json"
        state_file.parent.mkdir(parents=True)
        state = {
            "key": KEY,
            "generation": 1,
            "pid": stranger.pid,
            "start_ticks": 1,  # not when `stranger` started: its pid was reused
            "started_at": 0.0,
            "command": "app",
        }
        state_file.write_text(json.dumps(state))

        seen = await listed(runtime)
        await runtime.stop(KEY, grace=0.2)

        assert seen is not None
        assert seen.phase is InstancePhase.EXITED
        assert process_runs(stranger.pid)
    finally:
        stranger.kill()
        await stranger.wait()


async def test_stop_terminates_the_instance_keeps_its_log_and_is_idempotent(
    runtime: ProcessRuntime, data_dir: Path
) -> None:
    info = await runtime.ensure(web_spec(support.free_port(HOST), secrets={"token": SECRET}))
    instance_dir = data_dir / "instances" / KEY

    await runtime.stop(KEY)
    await runtime.stop(KEY)
    await runtime.stop("shop.test.never-started")

    assert not process_runs(pid_of(info))
    assert await runtime.list() == []
    assert sorted(path.name for path in instance_dir.iterdir()) == ["output.log"]


async def test_stop_kills_an_instance_that_ignores_sigterm_after_the_grace(
    runtime: ProcessRuntime,
) -> None:
    port = support.free_port(HOST)
    info = await runtime.ensure(web_spec(port, command=app_command("--ignore-term")))
    await http_get(port, "/health")

    await runtime.stop(KEY, grace=0.3)

    assert not process_runs(pid_of(info))


async def test_stop_terminates_an_adopted_instance(runtimes: MakeRuntime) -> None:
    port = support.free_port(HOST)
    started = await runtimes().ensure(web_spec(port))
    await http_get(port, "/health")
    second_agent = runtimes()

    await second_agent.stop(KEY, grace=1.0)

    assert not process_runs(pid_of(started))
    assert await second_agent.list() == []


async def test_restart_replaces_a_hung_instance_of_the_same_generation(
    runtime: ProcessRuntime,
) -> None:
    port = support.free_port(HOST)
    hung = await runtime.ensure(web_spec(port, command=app_command("--hang")))
    assert await http_get(port, "/") == (200, "hello from backend\n")

    restarted = await runtime.restart(web_spec(port))

    assert restarted.generation == hung.generation
    assert pid_of(restarted) != pid_of(hung)
    assert not process_runs(pid_of(hung))
    assert await http_get(port, "/health") == (200, '{"status": "ok"}')


async def test_a_missing_executable_gives_a_start_error_with_the_reason(
    runtime: ProcessRuntime,
) -> None:
    with pytest.raises(InstanceStartError) as caught:
        await runtime.ensure(web_spec(command="/nonexistent/bin/app --serve"))

    assert caught.value.key == KEY
    assert caught.value.reason == "cannot run '/nonexistent/bin/app': No such file or directory"
    assert str(caught.value).startswith(f"start instance {KEY}: ")
    assert await runtime.list() == []


@pytest.mark.parametrize("command", [None, "", "   "])
async def test_an_empty_command_gives_a_start_error(
    runtime: ProcessRuntime, command: str | None
) -> None:
    spec = InstanceSpec(
        project="shop", env="test", service="worker", generation=1, host=HOST, command=command
    )

    with pytest.raises(InstanceStartError, match="has no command; .* needs a process_command"):
        await runtime.ensure(spec)


async def test_an_image_without_a_process_command_gives_a_start_error(
    runtime: ProcessRuntime,
) -> None:
    spec = InstanceSpec(
        project="shop",
        env="test",
        service="worker",
        generation=1,
        host=HOST,
        image="shop-worker:1",
        command="python worker.py",  # meant for inside the image, not for this machine
    )

    with pytest.raises(InstanceStartError, match="runs the image shop-worker:1; .*process_command"):
        await runtime.ensure(spec)


def test_load_runtime_creates_the_process_runtime_by_name(data_dir: Path) -> None:
    runtime = load_runtime("process", RuntimeContext(mesh="m", droplet="d", data_dir=data_dir))

    assert isinstance(runtime, ProcessRuntime)
    assert runtime.name == "process"


def test_load_runtime_refuses_an_unknown_name_and_names_the_known_ones(data_dir: Path) -> None:
    with pytest.raises(UnknownRuntimeError) as caught:
        load_runtime("nope", RuntimeContext(mesh="m", droplet="d", data_dir=data_dir))

    assert isinstance(caught.value, MeshError)
    assert caught.value.known == ["docker", "process"]
    assert str(caught.value) == (
        "configure runtime 'nope': no such runtime; known runtimes: docker, process"
    )
