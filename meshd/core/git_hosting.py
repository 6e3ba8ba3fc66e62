"""Repositories the mesh hosts itself (pure): a project whose `git_repo` is `"mesh"` is pushed
to the mesh's master droplet over SSH, as Dokku and Piku do (`git push root@<master>:shop
main`). The key a pusher uses is restricted on master to one forced command, the git shell
(`meshd git-shell`), which reads what git asked for from `SSH_ORIGINAL_COMMAND`, lets only
`git-receive-pack` and `git-upload-pack` of a project's repository through, and makes the
repository (with meshd's post-receive hook) at its first push. docs/deploys.md, "Pushing to
the mesh"."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from protocol.errors import MeshError

MESH_HOSTED = "mesh"  # the `git_repo` of a project whose repository master keeps
GIT_HOST = "master"  # the droplet that keeps them
REPOSITORIES = "git"  # in the droplet's directory: `<project>.git`
KEY_MARK = "meshd-git"  # the comment of the authorized_keys lines meshd writes (and rewrites)
PROGRAMS = ("git-receive-pack", "git-upload-pack")
_PROJECT = re.compile(r"[a-z][a-z0-9-]{0,29}\Z")  # the CSV's project names


class GitShellRefused(MeshError):
    """What the pusher asked for is not a push or fetch of a project's repository."""


@dataclass(frozen=True, slots=True)
class GitCommand:
    program: str  # git-receive-pack (a push) or git-upload-pack (a fetch or clone)
    project: str

    @property
    def pushes(self) -> bool:
        return self.program == "git-receive-pack"


def parse_git_command(original: str | None) -> GitCommand:
    """What git asked for over SSH (`git-receive-pack 'shop'`, `git upload-pack '/shop.git'`),
    or GitShellRefused saying what is allowed: an interactive login or any other command."""
    if not original:
        raise GitShellRefused(
            "this key only pushes and fetches the mesh's repositories: "
            "git push root@<master>:<project> <branch>"
        )
    try:
        words = shlex.split(original)
    except ValueError:
        words = []
    if len(words) == 3 and words[0] == "git":  # `git receive-pack ...`, as older clients send
        words = [f"git-{words[1]}", words[2]]
    if len(words) != 2 or words[0] not in PROGRAMS:
        raise GitShellRefused(
            f"{original.split()[0]!r} is not allowed: this key only runs git-receive-pack and "
            "git-upload-pack of a project's repository"
        )
    name = words[1].strip("/").removesuffix(".git").removesuffix("/")
    if not _PROJECT.match(name):
        raise GitShellRefused(
            f"{words[1]!r} is not a project's repository; use the project's name, as in "
            "root@<master>:shop"
        )
    return GitCommand(words[0], name)


def authorized_key_line(public_key: str, command: str) -> str:
    """One line of master's `authorized_keys`: `public_key` may only run `command` (the git
    shell), with no terminal, forwarding or agent (`restrict`)."""
    kind, blob = public_key.split()[:2]
    escaped = command.replace("\\", "\\\\").replace('"', '\\"')
    return f'command="{escaped}",restrict {kind} {blob} {KEY_MARK}'


def with_git_keys(authorized: str, lines: list[str]) -> str:
    """`authorized` (the file's text) with meshd's earlier git lines replaced by `lines`; every
    other line kept as it was."""
    kept = [
        line
        for line in authorized.splitlines()
        if not (line.strip() and line.split()[-1] == KEY_MARK and line.startswith("command="))
    ]
    return "\n".join([*kept, *lines]) + "\n"


def fetch_url(project: str, repositories: str, master_address: str | None) -> str:
    """Where the builder fetches a mesh-hosted project from: the repository itself when it
    runs on master (`master_address` None), else over SSH to master's private address."""
    path = f"{repositories}/{project}.git"
    return path if master_address is None else f"ssh://root@{master_address}{path}"


def push_remote(address: str, project: str) -> str:
    """What a pusher adds as the git remote: `root@<master's public address>:<project>`."""
    return f"root@{address}:{project}"
