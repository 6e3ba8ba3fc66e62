"""A real Docker Engine for tests: skipped with a reason on a machine without one, a failure
in CI (`CI=true`), where `.ci/run` starts it. The test image is the examples' own, built
`FROM scratch` with Debian's static busybox: no registry is ever asked."""

from __future__ import annotations

import contextlib
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import unavailable

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_APP = ROOT / "examples" / "app"
BUSYBOX = Path("/bin/busybox")
TEST_IMAGE = "meshd-test-busybox:1"


def docker_client() -> Any:
    try:
        import docker
        import docker.errors

        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as err:  # no SDK, no socket, no daemon: all mean "no engine here"
        unavailable(f"no Docker engine answers: {str(err).splitlines()[0][:200]}")
    return client


def static_busybox() -> Path:
    if not BUSYBOX.is_file() or b"/lib" in BUSYBOX.read_bytes()[:4096]:
        unavailable("no static busybox at /bin/busybox (Debian package busybox-static)")
    return BUSYBOX


def example_context(directory: Path) -> Path:
    """A copy of examples/app with the busybox binary the Dockerfile copies."""
    context = directory / "app"
    if not context.exists():
        ignored = shutil.ignore_patterns("busybox", "__pycache__")
        shutil.copytree(EXAMPLE_APP, context, ignore=ignored)
        shutil.copy2(static_busybox(), context / "busybox")
    return context


def build_test_image(client: Any, directory: Path, tag: str = TEST_IMAGE) -> str:
    context = example_context(directory)
    client.images.build(path=str(context), tag=tag, rm=True, forcerm=True)
    return tag


def new_mesh_name() -> str:
    return f"t{secrets.token_hex(4)}"


def remove_mesh_objects(client: Any, mesh: str) -> None:
    """Every container, network and volume labelled with this mesh."""
    import docker.errors

    label = {"label": [f"meshd.mesh={mesh}"]}
    for container in client.containers.list(all=True, sparse=True, filters=label):
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)
    for network in client.networks.list(filters=label):
        network.remove()
    for volume in client.volumes.list(filters=label):
        volume.remove(force=True)


def mesh_objects(client: Any, mesh: str) -> dict[str, list[str]]:
    label = {"label": [f"meshd.mesh={mesh}"]}
    return {
        "containers": [
            c.attrs["Names"][0].lstrip("/")
            for c in client.containers.list(all=True, sparse=True, filters=label)
        ],
        "networks": [n.name for n in client.networks.list(filters=label)],
        "volumes": [v.name for v in client.volumes.list(filters=label)],
    }


@pytest.fixture(scope="session")
def docker_engine() -> Any:
    return docker_client()


@pytest.fixture(scope="session")
def test_image(docker_engine: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_test_image(docker_engine, tmp_path_factory.mktemp("image"))


@pytest.fixture
def docker_mesh(docker_engine: Any) -> Iterator[str]:
    """A mesh name of its own; whatever it left on the engine is removed afterwards."""
    mesh = new_mesh_name()
    yield mesh
    remove_mesh_objects(docker_engine, mesh)
