"""The pure parts of `bootstrap.py`: what it uploads, installs and writes."""

from __future__ import annotations

import gzip
import io
import tarfile

import bootstrap


def test_the_code_archive_is_the_same_for_the_same_source() -> None:
    name, archive = bootstrap.code_archive()
    bootstrap.code_archive.cache_clear()

    assert bootstrap.code_archive() == (name, archive)
    assert len(name) == 16


def test_the_code_archive_holds_the_packages_and_templates_without_caches() -> None:
    _, archive = bootstrap.code_archive()

    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(archive))) as unpacked:
        names = unpacked.getnames()

    assert "bootstrap.py" in names
    assert "meshd/agent/__main__.py" in names
    assert "templates/systemd/meshd.service.j2" in names
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in names)
    assert not any(name.startswith(("tests/", "sim/")) for name in names)


def test_requirements_are_meshds_own_without_extras() -> None:
    found = bootstrap.requirements()

    assert "asyncssh>=2.14" in found
    assert not any("pytest" in line or "extra" in line for line in found)
    assert [bootstrap.distribution(r) for r in found][:2] == ["acme", "aiohttp"]


def test_the_docker_runtime_needs_the_engine_as_well() -> None:
    assert set(bootstrap.packages_needed("process").values()) == {"nginx-light", "iptables"}
    assert bootstrap.packages_needed("docker")["dockerd"] == "docker.io"


def test_the_unit_runs_the_supervisor_from_the_release_with_a_memory_cap() -> None:
    unit = bootstrap.render_unit("/opt/meshd/venv/bin/python", "/opt/meshd/releases/abc", "d1")

    assert "ExecStart=/opt/meshd/venv/bin/python -m meshd.agent droplet /var/lib/meshd" in unit
    assert "Environment=PYTHONPATH=/opt/meshd/releases/abc MESHD_RELEASE=d1" in unit
    assert "Restart=always" in unit
    assert f"MemoryMax={bootstrap.MEMORY_MAX}" in unit
    assert "WantedBy=multi-user.target" in unit
    assert unit != bootstrap.render_unit("/opt/meshd/venv/bin/python", "/opt/meshd/releases/abc",
                                         "d2")  # fmt: skip
