"""The mesh's own git server on master (docs/deploys.md, "Pushing to the mesh"): the forced
command of the pushers' keys (`meshd git-shell DIR`, run by sshd with what git asked for in
`SSH_ORIGINAL_COMMAND`), and the `authorized_keys` lines that force it, written by master's
agent at every start (the command names the code the agent runs, which a bootstrap may
change). A first push makes the project's bare repository with meshd's post-receive hook,
whose credentials (the NATS user `deployer`) are rewritten at every push from the droplet's
own configuration, so they follow JetStream's moves."""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path

from meshd.agent.config import MeshConfig, ServerPlacement
from meshd.core.deploys import HookCredentials, hook_script
from meshd.core.git_hosting import (
    GIT_HOST,
    REPOSITORIES,
    GitCommand,
    GitShellRefused,
    authorized_key_line,
    parse_git_command,
    with_git_keys,
)
from plugins.fs import atomic_write

log = logging.getLogger(__name__)

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "hooks" / "post-receive"
CREDENTIALS = "meshd-deploy.json"
AUTHORIZED_KEYS = Path("/root/.ssh/authorized_keys")


def git_shell(droplet_dir: Path, original: str | None) -> int:  # noqa: RET503
    """Run what the pusher's git asked for, or refuse it on standard error (exit 1)."""
    try:
        command = parse_git_command(original)
        repository = droplet_dir / REPOSITORIES / f"{command.project}.git"
        if command.pushes:
            _ensure_repository(droplet_dir, repository, command)
        elif not (repository / "HEAD").is_file():
            raise GitShellRefused(f"there is no repository {command.project!r} yet; push first")
    except GitShellRefused as err:
        print(f"meshd: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # the repository or its hook could not be made: say so, no trace
        print(f"meshd: cannot prepare the repository: {err}", file=sys.stderr)
        return 1
    os.execvp(command.program, [command.program, str(repository)])  # never returns


def _ensure_repository(droplet_dir: Path, repository: Path, command: GitCommand) -> None:
    """The bare repository, made at the first push, and its hook as of now."""
    if not (repository / "HEAD").is_file():
        repository.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _git("init", "--quiet", "--bare", "-b", "main", str(repository))
        _git("-C", str(repository), "config", "receive.advertisePushOptions", "true")
    config = MeshConfig.from_json((droplet_dir / "user_data").read_text())
    credentials = hook_credentials(config, ServerPlacement.load(droplet_dir, config), command)
    hooks = repository / "hooks"
    atomic_write(hooks / CREDENTIALS, credentials.to_json().encode(), 0o600)
    meshctl = hooks / "meshctl"  # this interpreter and code, as the hook's `meshctl`
    program = _this_python("-c", "from meshd.cli import main; main()")
    atomic_write(meshctl, f'#!/bin/sh\nexec {program} "$@"\n'.encode(), 0o755)
    script = hook_script(
        TEMPLATE.read_text(),
        {
            "MESHCTL": str(meshctl),
            "CREDENTIALS": str(hooks / CREDENTIALS),
            "CONFIG_HOME": str(droplet_dir / "meshctl"),
        },
    )
    atomic_write(hooks / "post-receive", script.encode(), 0o755)


def hook_credentials(
    config: MeshConfig, placement: ServerPlacement, command: GitCommand
) -> HookCredentials:
    """What the hook of a repository on this droplet reaches NATS with: the deployer user,
    TLS from the mesh CA where the mesh has one."""
    return HookCredentials(
        mesh=config.mesh,
        context=config.mesh,
        project=command.project,
        servers=tuple(config.with_servers(placement.servers).nats_urls()),
        password=config.passwords["deployer"],
        tls_ca=config.tls_ca,
    )


def _git(*args: str) -> None:
    result = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise GitShellRefused(f"git {args[0]}: {result.stderr.strip() or result.returncode}")


def shell_command(droplet_dir: Path) -> str:
    """The forced command: this interpreter and code running `meshd git-shell DIR`."""
    return _this_python("-m", "meshd.agent", "git-shell", str(droplet_dir))


def _this_python(*args: str) -> str:
    """A shell command running this interpreter with this code (the release the agent runs,
    named by PYTHONPATH on a bootstrapped droplet) and `args`."""
    code = os.environ.get("PYTHONPATH")
    run = shlex.join([sys.executable, *args])
    return f"env PYTHONPATH={shlex.quote(code)} {run}" if code else run


def authorize_git_keys(
    droplet_dir: Path, keys: list[str], authorized: Path = AUTHORIZED_KEYS
) -> bool:
    """`keys` in `authorized` as lines that may only run the git shell (blocking: run it in a
    thread); whether the file changed."""
    command = shell_command(droplet_dir)
    before = authorized.read_text() if authorized.exists() else ""
    after = with_git_keys(before, [authorized_key_line(k, command) for k in keys])
    if after == before:
        return False
    authorized.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(authorized, after.encode(), 0o600)
    log.info("Git keys authorized. keys=%d file=%s", len(keys), authorized)
    return True


async def serve_git(droplet_dir: Path, config: MeshConfig, droplet: str) -> None:
    """On master of a bootstrapped mesh: the pushers' keys (`bootstrap.git_keys` of the mesh
    config) may push and fetch the mesh's repositories, and only that."""
    keys = [str(k) for k in config.bootstrap.get("git_keys", [])]
    if keys and droplet == GIT_HOST:
        await asyncio.to_thread(authorize_git_keys, droplet_dir, keys)
