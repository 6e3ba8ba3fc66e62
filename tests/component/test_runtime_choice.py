"""`meshctl up` picks the runtime: docker when an engine answers, else process, and
says which; asking for docker where none answers is an error, not a silent fallback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meshd.cli.up import choose_runtime, podman_ulimits
from protocol.errors import MeshError


async def test_auto_takes_docker_when_the_engine_answers(
    docker_engine: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    runtime = await choose_runtime("auto", None, pull=False)

    # The built-in datastores run apart, as the host's own servers: no registry needed.
    assert runtime == {"name": "docker", "config": {"pull": False, "datastores": "process"}}
    assert "Runtime: docker (Docker Engine" in capsys.readouterr().out
    images = await choose_runtime("docker", None, pull=True, datastores="docker")
    assert images == {"name": "docker", "config": {"pull": True}}


async def test_auto_falls_back_to_processes_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    runtime = await choose_runtime("auto", None, pull=True)

    assert runtime == {"name": "process"}
    out = " ".join(capsys.readouterr().out.split())
    assert "Runtime: process: no Docker engine answers" in out


async def test_docker_where_no_engine_answers_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(MeshError, match="no Docker engine answers at unix://.*--runtime process"):
        await choose_runtime("docker", f"unix://{tmp_path}/nothing.sock", pull=True)


async def test_process_is_taken_without_asking_any_engine(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert await choose_runtime("process", None, pull=True) == {"name": "process"}
    assert "Runtime: process" in capsys.readouterr().out


def test_podman_limits_never_exceed_this_machines_hard_limits() -> None:
    import resource

    limits = podman_ulimits()
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert limits.get("nofile", nofile) <= nofile or nofile == resource.RLIM_INFINITY
    assert 0 < limits["nproc"] <= 32768


async def test_an_engine_with_the_process_runtime_is_refused() -> None:
    with pytest.raises(MeshError, match="--docker-host names an engine"):
        await choose_runtime("process", "unix:///run/podman/podman.sock", pull=True)
