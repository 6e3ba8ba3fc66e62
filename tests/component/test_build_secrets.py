"""Build-time secrets against a real Docker Engine: the docker runtime builds an image whose
Dockerfile reads a secret (`RUN --mount=type=secret`) through `DOCKER_BUILDKIT=1 docker build
--secret`, and the value is in no layer, no history, no inspect output, no saved tarball, not
in the build context, not in the running container, and its temporary file is gone."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from docker.constants import DEFAULT_UNIX_SOCKET

from plugins.runtimes import InstancePhase, InstanceSpec, InstanceStartError, RuntimeContext
from plugins.runtimes.docker import DockerRuntime
from plugins.runtimes.docker.buildkit import SCRATCH_PREFIX
from tests.support import unavailable
from tests.support.docker import static_busybox
from tests.support.forwarding import pipe
from tests.support.waiting import until

SECRET_ID = "canary_token"
DOCKERFILE = """FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY nonce /nonce
RUN --mount=type=secret,id=canary_token sh -c 'sha256sum /run/secrets/canary_token > /digest'
CMD ["sleep", "600"]
"""
LEAKING_DOCKERFILE = """FROM scratch
COPY busybox /bin/busybox
COPY nonce /nonce
RUN --mount=type=secret,id=canary_token ["/bin/busybox", "sh", "-c", \
"/bin/busybox cat /run/secrets/canary_token; exit 3"]
"""

SLOW_DOCKERFILE = """FROM scratch
COPY busybox /bin/busybox
COPY nonce /nonce
RUN --mount=type=secret,id=canary_token ["/bin/busybox", "sleep", "120"]
"""

MakeRuntime = Callable[..., DockerRuntime]


def buildkit_cli() -> str:
    """The first docker command on PATH that builds with BuildKit: a 20.10 client (Debian's
    docker.io) or a newer one with the buildx plugin (without it, 23 and later refuse)."""
    seen: set[str] = set()
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        found = shutil.which("docker", path=directory)
        if found is None or os.path.realpath(found) in seen:
            continue
        seen.add(os.path.realpath(found))
        version = re.search(r"version (\d+)\.", _output([found, "--version"]))
        major = int(version.group(1)) if version else 0
        if 0 < major < 23 or _output([found, "buildx", "version"]):
            return found
    unavailable("no docker command that builds with BuildKit (docker.io 20.10, or with buildx)")


def _output(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


@pytest.fixture(scope="module")
def docker_cli(docker_engine: Any) -> str:
    return buildkit_cli()


@pytest.fixture
async def make_runtime(
    docker_mesh: str, docker_cli: str, tmp_path: Path
) -> AsyncIterator[MakeRuntime]:
    made: list[DockerRuntime] = []

    def make(**config: Any) -> DockerRuntime:
        context = RuntimeContext(
            mesh=docker_mesh,
            droplet="master",
            data_dir=tmp_path / "runtime",
            config={"pull": False, "docker_cli": docker_cli, **config},
        )
        made.append(DockerRuntime(context))
        return made[-1]

    yield make
    for runtime in made:
        await runtime.close()


@pytest.fixture
def canary() -> bytes:
    return f"canary-{secrets.token_hex(16)}".encode()


@pytest.fixture
def image_tag(docker_engine: Any, docker_mesh: str) -> Any:
    tag = f"{docker_mesh}-worker:{secrets.token_hex(4)}"
    yield tag
    for image in docker_engine.images.list(filters={"label": [f"meshd.mesh={docker_mesh}"]}):
        docker_engine.images.remove(image.id, force=True)


def context_with(directory: Path, dockerfile: str) -> Path:
    """A build context: busybox, the Dockerfile, and a nonce that keeps BuildKit from reusing
    a cached step built with another run's secret (its cache keys ignore secret values)."""
    context = directory / "context"
    context.mkdir()
    shutil.copy2(static_busybox(), context / "busybox")
    (context / "nonce").write_text(secrets.token_hex(8))
    (context / "Dockerfile").write_text(dockerfile)
    return context


def worker(tag: str, context: Path, canary: bytes) -> InstanceSpec:
    return InstanceSpec(
        project="shop",
        env="test",
        service="worker",
        generation=1,
        host="127.0.0.1",
        image=tag,
        memory_mb=32,
        service_kind="worker",
        build_context=str(context),
        dockerfile=str(context / "Dockerfile"),
        build_secrets={SECRET_ID: canary},
    )


def files_holding(directory: Path, value: bytes) -> list[str]:
    return [str(p) for p in directory.rglob("*") if p.is_file() and value in p.read_bytes()]


async def test_a_build_reads_its_secret_and_no_trace_of_it_remains(
    make_runtime: MakeRuntime,
    docker_engine: Any,
    docker_cli: str,
    image_tag: str,
    canary: bytes,
    tmp_path: Path,
) -> None:
    context = context_with(tmp_path, DOCKERFILE)
    runtime = make_runtime()

    info = await runtime.ensure(worker(image_tag, context, canary))
    history = await asyncio.to_thread(
        subprocess.run, [docker_cli, "history", "--no-trunc", image_tag], capture_output=True
    )

    assert info.phase is InstancePhase.RUNNING
    container = docker_engine.containers.get(info.runtime_id)
    code, digest = container.exec_run(["cat", "/digest"])
    assert code == 0
    assert digest.split()[0].decode() == hashlib.sha256(canary).hexdigest()  # the build saw it
    code, listing = container.exec_run(["ls", "-A", "/run/secrets"])
    assert SECRET_ID.encode() not in listing  # the build's secret is not the container's
    assert b"RUN" in history.stdout and canary not in history.stdout + history.stderr
    assert canary.decode() not in json.dumps(docker_engine.api.inspect_image(image_tag))
    assert canary.decode() not in json.dumps(docker_engine.api.inspect_container(container.id))
    saved = b"".join(docker_engine.images.get(image_tag).save())
    assert hashlib.sha256(canary).hexdigest().encode() in saved  # the raw bytes are searched
    assert canary not in saved
    assert files_holding(context, canary) == []
    secrets_dir = tmp_path / "runtime" / "secrets"
    assert files_holding(tmp_path / "runtime", canary) == []
    assert list(secrets_dir.glob(f"{SCRATCH_PREFIX}*")) == []
    await runtime.stop(info.key, grace=0)


async def test_a_failed_build_says_why_with_the_value_scrubbed_and_leaves_no_file(
    make_runtime: MakeRuntime, image_tag: str, canary: bytes, tmp_path: Path
) -> None:
    context = context_with(tmp_path, LEAKING_DOCKERFILE)

    with pytest.raises(InstanceStartError) as caught:
        await make_runtime().ensure(worker(image_tag, context, canary))

    message = str(caught.value)
    assert f"cannot build image {image_tag}: docker build exited with 1" in message
    assert "exit code: 3" in message
    assert canary.decode() not in message
    assert "[secret]" in message  # the step printed it; the error shows where, not what
    assert files_holding(tmp_path / "runtime", canary) == []
    assert list((tmp_path / "runtime" / "secrets").glob(f"{SCRATCH_PREFIX}*")) == []


async def test_a_cancelled_build_kills_the_command_and_removes_the_secret_files(
    make_runtime: MakeRuntime, image_tag: str, canary: bytes, tmp_path: Path
) -> None:
    context = context_with(tmp_path, SLOW_DOCKERFILE)
    scratch = tmp_path / "runtime" / "secrets"
    building = asyncio.create_task(make_runtime().ensure(worker(image_tag, context, canary)))
    await until(lambda: _commands_naming(image_tag), "docker build running")
    assert list(scratch.glob(f"{SCRATCH_PREFIX}*/{SECRET_ID}"))

    building.cancel()
    with pytest.raises(asyncio.CancelledError):
        await building

    assert list(scratch.glob(f"{SCRATCH_PREFIX}*")) == []
    assert _commands_naming(image_tag) == []


async def test_the_build_reaches_the_engine_at_the_runtimes_docker_host(
    make_runtime: MakeRuntime,
    image_tag: str,
    canary: bytes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = (os.environ.get("DOCKER_HOST") or DEFAULT_UNIX_SOCKET).split("unix://", 1)
    if len(engine) != 2:
        pytest.skip("the engine is not on a unix socket")
    socket = tmp_path / "engine.sock"
    connections: list[int] = []

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        upstream_reader, upstream_writer = await asyncio.open_unix_connection(engine[1])
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    server = await asyncio.start_unix_server(forward, path=str(socket))
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # not the agent's
    try:
        runtime = make_runtime(docker_host=f"unix://{socket}")
        info = await runtime.ensure(worker(image_tag, context_with(tmp_path, DOCKERFILE), canary))
        assert info.phase is InstancePhase.RUNNING and connections
        await runtime.stop(info.key, grace=0)
    finally:
        server.close()


def _commands_naming(tag: str) -> list[str]:
    """The command lines of running processes that mention `tag`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            words = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if tag.encode() in words:
            found.append(b" ".join(words).decode(errors="replace"))
    return found
