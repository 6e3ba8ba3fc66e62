"""Where the builder fetches a mesh-hosted repository from: master's own directory on master,
elsewhere over SSH with the account's key, which it holds only as a mesh secret: written to a
0600 file of its own for ssh, and a clear refusal where the droplet holds none."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from meshd.agent.meshview import MeshView
from meshd.roles.builder.git import GitError
from meshd.roles.builder.source import repository_of
from tests.support import factories


def view() -> MeshView:
    made = MeshView()
    made.nodes = {"master": factories.node("master", address="10.0.0.2")}
    return made


def test_master_fetches_its_own_directory_and_needs_no_key(tmp_path: Path) -> None:
    url, env = repository_of("mesh", "shop", "master", view(), tmp_path)
    assert url.endswith("/git/shop.git") and env == {}


def test_another_droplet_fetches_over_ssh_with_the_key_from_the_mesh_secret(
    tmp_path: Path,
) -> None:
    url, env = repository_of("mesh", "shop", "web1", view(), tmp_path, lambda: b"PRIVATE")
    assert url.startswith("ssh://root@10.0.0.2/")
    key_file = tmp_path / "agent" / "builder" / "ssh" / "infrastructure_key"
    assert f"-i {key_file}" in env["GIT_SSH_COMMAND"]
    assert key_file.read_bytes() == b"PRIVATE"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    repository_of("mesh", "shop", "web1", view(), tmp_path, lambda: b"ROTATED")
    assert key_file.read_bytes() == b"ROTATED"


def test_a_droplet_without_the_key_says_which_secret_it_lacks(tmp_path: Path) -> None:
    with pytest.raises(GitError, match="infrastructure_key"):
        repository_of("mesh", "shop", "web1", view(), tmp_path, lambda: None)
    assert not (tmp_path / "agent").exists()
