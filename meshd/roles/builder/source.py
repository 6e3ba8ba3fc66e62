"""Where the builder fetches a project from: its `git_repo`, or, for a repository the mesh
hosts (`"git_repo": "mesh"`, docs/deploys.md), master's copy: on master itself the
repository, from any other droplet over SSH to master's private address with the key the
account put on every droplet. That key is a mesh secret (`infrastructure_key`), sealed only to
trusted droplets, where a cloud mesh's builder runs (meshd/agent/trust.py): ssh reads it from
a 0600 file in the builder's own 0700 directory, written when a fetch needs it."""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from pathlib import Path

from meshd.agent.meshview import MeshView
from meshd.core.git_hosting import GIT_HOST, MESH_HOSTED, REPOSITORIES, fetch_url
from meshd.roles.builder.git import GitError


def repository_of(
    git_repo: str,
    project: str,
    droplet: str,
    view: MeshView,
    droplet_dir: Path | None,
    key: Callable[[], bytes | None] = lambda: None,
) -> tuple[str, dict[str, str]]:
    """The URL to fetch `project` from and the environment git needs for it; `key` gives the
    SSH key that reaches master."""
    if git_repo != MESH_HOSTED:
        return git_repo, {}
    if droplet_dir is None:
        raise GitError(f"{project}'s repository is the mesh's, and this droplet cannot reach it")
    repositories = str(droplet_dir / REPOSITORIES)
    if droplet == GIT_HOST:
        return fetch_url(project, repositories, None), {}
    master = view.nodes.get(GIT_HOST)
    if master is None:
        raise GitError(f"{project}'s repository is on {GIT_HOST}, which is not reporting")
    private = key()
    if not private:
        raise GitError(f"{project}'s repository is on {GIT_HOST}, and this droplet holds no key "
                       "to reach it (the mesh secret infrastructure_key)")  # fmt: skip
    key_file = _key_file(droplet_dir / "agent" / "builder" / "ssh", private)
    ssh = [
        "ssh", "-i", str(key_file), "-o", "IdentitiesOnly=yes",
        "-o", "BatchMode=yes", "-o", "ConnectTimeout=15",
        # Inside the mesh's private network; master's key is learnt at the first fetch.
        "-o", "StrictHostKeyChecking=accept-new",
        "-o", f"UserKnownHostsFile={droplet_dir / 'agent' / 'builder' / 'known_hosts'}",
    ]  # fmt: skip
    url = fetch_url(project, repositories, master.address)
    return url, {"GIT_SSH_COMMAND": shlex.join(ssh)}


def _key_file(directory: Path, private: bytes) -> Path:
    """`private` in a 0600 file of a 0700 `directory` (rewritten: the secret may be rotated)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / "infrastructure_key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private)
    return path
