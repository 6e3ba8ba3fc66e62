"""Where the builder fetches a project from: its `git_repo`, or, for a repository the mesh
hosts (`"git_repo": "mesh"`, docs/deploys.md), master's copy: on master itself the
repository, from any other droplet over SSH to master's private address with the key the
account put on every droplet."""

from __future__ import annotations

import shlex
from pathlib import Path

from meshd.agent.bootstrapping import KEY_FILE
from meshd.agent.meshview import MeshView
from meshd.core.git_hosting import GIT_HOST, MESH_HOSTED, REPOSITORIES, fetch_url
from meshd.roles.builder.git import GitError


def repository_of(
    git_repo: str, project: str, droplet: str, view: MeshView, droplet_dir: Path | None
) -> tuple[str, dict[str, str]]:
    """The URL to fetch `project` from and the environment git needs for it."""
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
    ssh = [
        "ssh", "-i", str(droplet_dir / KEY_FILE), "-o", "IdentitiesOnly=yes",
        "-o", "BatchMode=yes", "-o", "ConnectTimeout=15",
        # Inside the mesh's private network; master's key is learnt at the first fetch.
        "-o", "StrictHostKeyChecking=accept-new",
        "-o", f"UserKnownHostsFile={droplet_dir / 'agent' / 'builder' / 'known_hosts'}",
    ]  # fmt: skip
    url = fetch_url(project, repositories, master.address)
    return url, {"GIT_SSH_COMMAND": shlex.join(ssh)}
