"""`meshctl git remote PROJECT`: where to push a project whose repository the mesh hosts
(`"git_repo": "mesh"`): master, over SSH, with the key `up` made for pushes
(`~/.ssh/meshd_git_key`), which master lets run nothing but git (docs/deploys.md, "Pushing to
the mesh")."""

from __future__ import annotations

import json
import shlex

import click

from meshd.cli.cloud import GIT_KEY
from meshd.cli.context import load_context
from meshd.core.git_hosting import push_remote
from protocol.errors import MeshError


@click.group()
def git() -> None:
    """Repositories the mesh hosts on master (DigitalOcean meshes)."""


@git.command(no_args_is_help=True)
@click.argument("project")
@click.option("--context", "context_name", metavar="NAME", help="Mesh to push to.")
@click.option("--json", "as_json", is_flag=True, help="remote, ssh_command and key as JSON.")
def remote(project: str, context_name: str | None, as_json: bool) -> None:
    """The git remote of PROJECT on master, and how git reaches it.

    Pushing a branch there deploys it as a push to any repository with meshd's hook does
    (main to uat, other branches to test); the first push makes the repository. Either
    push with the key named on the command line:

        GIT_SSH_COMMAND="ssh -i ~/.ssh/meshd_git_key -o IdentitiesOnly=yes" git push REMOTE main

    or add the printed `Host` entry to ~/.ssh/config and `git remote add mesh <remote>`.
    """
    context = load_context(context_name)
    if not context.tunnel:
        raise MeshError(
            f"git remote: mesh {context.mesh!r} is local and hosts no repositories; push to "
            "a bare repository with meshd's hook instead (meshctl hook install REPO)"
        )
    key = GIT_KEY.expanduser()
    if not key.exists():
        raise MeshError(f"git remote: no push key {key}; `meshctl up` makes it")
    host = str(context.tunnel["host"])
    url = push_remote(host, project)
    ssh = shlex.join(["ssh", "-i", str(key), "-o", "IdentitiesOnly=yes"])
    if as_json:
        click.echo(json.dumps({"remote": url, "ssh_command": ssh, "key": str(key)}))
        return
    alias = f"meshd-{context.mesh}"
    click.echo(f"remote:       {url}")
    click.echo(f'push with:    GIT_SSH_COMMAND="{ssh}" git push {url} main')
    click.echo(f"or, with this in ~/.ssh/config, `git remote add mesh {alias}:{project}`:")
    click.echo(f"  Host {alias}\n    HostName {host}\n    User root")
    click.echo(f"    IdentityFile {key}\n    IdentitiesOnly yes")
