"""The mesh's git server on master with real git and a real nats-server: git runs the git
shell as sshd would run the forced command (`SSH_ORIGINAL_COMMAND` set to what git asked
for); a first push makes the repository with meshd's hook, which queues the deploy as the
user `deployer`; a clone reads it back; anything but git is refused."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import stat
import sys
from pathlib import Path

from meshd.agent.git_shell import authorize_git_keys, shell_command
from meshd.agent.store import Store
from meshd.cli.context import Context
from meshd.core.git_hosting import KEY_MARK
from protocol.releases import DeployAction
from tests.support.deploys import PROJECT, environment, git, publish, run, take
from tests.support.mesh import ROOT
from tests.support.nats import NatsServer

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMeshdGitKeyForTestsOnlyAAAAAAAAAAAAAAAAAAAA pusher"


def master(tmp_path: Path, server: NatsServer) -> tuple[Path, dict[str, str]]:
    """A droplet directory as a bootstrap leaves it, and git's environment with an `ssh`
    that runs the git shell there, as sshd runs the forced command."""
    droplet = tmp_path / "master"
    droplet.mkdir()
    (droplet / "user_data").write_text(server.config.to_json())
    # The hook reaches the test's server through the context of the droplet's own meshctl.
    context = Context(
        name=server.config.mesh, mesh=server.config.mesh, servers=[server.url],
        user="deployer", password=server.config.passwords["deployer"],
    )  # fmt: skip
    contexts = droplet / "meshctl" / "contexts"
    contexts.mkdir(parents=True)
    (contexts / f"{context.name}.json").write_text(json.dumps(dataclasses.asdict(context)))
    ssh = tmp_path / "ssh"
    ssh.write_text(
        "#!/bin/sh\n"
        'eval "last=\\${$#}"\n'
        f'SSH_ORIGINAL_COMMAND="$last" PYTHONPATH={ROOT} '
        f'exec {sys.executable} -m meshd.agent git-shell "$MASTER"\n'
    )
    ssh.chmod(0o755)
    env = environment(tmp_path) | {"GIT_SSH": str(ssh), "MASTER": str(droplet)}
    return droplet, env


async def test_a_first_push_makes_the_repository_and_queues_its_deploy(
    tmp_path: Path, nats_server: NatsServer, store: Store
) -> None:
    droplet, env = master(tmp_path, nats_server)
    await publish(store, "mesh")
    work = tmp_path / "work"
    await git("init", "-q", "-b", "main", work, env=env)
    (work / "app.txt").write_text("one\n")
    await git("add", "app.txt", env=env, cwd=work)
    await git("commit", "-q", "-m", "one", env=env, cwd=work)
    sha = (await git("rev-parse", "HEAD", env=env, cwd=work)).strip()

    builder = asyncio.create_task(take(store, 1, answer=("release is live",)))
    pushed = await run("git", "push", f"root@master:{PROJECT}", "main", env=env, cwd=work)
    assert pushed.code == 0, pushed.both
    (request,) = await asyncio.wait_for(builder, 30)
    assert (request.project, request.action, request.ref, request.sha) == (
        PROJECT, DeployAction.PUSH, "refs/heads/main", sha,
    )  # fmt: skip
    assert "remote: meshd: release is live" in pushed.both

    repository = droplet / "git" / f"{PROJECT}.git"
    assert (await git("rev-parse", "main", env=env, cwd=repository)).strip() == sha
    credentials = repository / "hooks" / "meshd-deploy.json"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    written = json.loads(credentials.read_text())
    assert written["user"] == "deployer"
    assert written["password"] == nats_server.config.passwords["deployer"]

    clone = tmp_path / "clone"
    await git("clone", "-q", f"root@master:{PROJECT}.git", clone, env=env)
    assert (clone / "app.txt").read_text() == "one\n"


async def test_anything_but_git_on_a_project_repository_is_refused(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    droplet, env = master(tmp_path, nats_server)
    shell = [sys.executable, "-m", "meshd.agent", "git-shell", str(droplet)]
    env = env | {"PYTHONPATH": str(ROOT)}
    for asked, says in (
        (None, "only pushes and fetches"),
        ("sh -c id", "'sh' is not allowed"),
        ("git-receive-pack '../../etc'", "not a project's repository"),
        ("git-upload-pack 'shop'", "no repository 'shop' yet; push first"),
    ):
        ran = await run(*shell, env=env | ({"SSH_ORIGINAL_COMMAND": asked} if asked else {}))
        assert ran.code == 1 and says in ran.err, (asked, ran.both)
        assert "Traceback" not in ran.both
    assert not (droplet / "git").exists()


def test_the_pushers_keys_are_rewritten_and_every_other_line_is_kept(tmp_path: Path) -> None:
    authorized = tmp_path / "authorized_keys"
    authorized.write_text("ssh-ed25519 AAAAC3Nza...root operator\n")
    assert authorize_git_keys(tmp_path, [KEY], authorized)
    assert not authorize_git_keys(tmp_path, [KEY], authorized)  # nothing to change
    lines = authorized.read_text().splitlines()
    assert lines[0] == "ssh-ed25519 AAAAC3Nza...root operator"
    assert lines[1].startswith(f'command="{shell_command(tmp_path)}",restrict ssh-ed25519 ')
    assert lines[1].endswith(f" {KEY_MARK}") and " pusher" not in lines[1]
    assert stat.S_IMODE(authorized.stat().st_mode) == 0o600
    assert authorize_git_keys(tmp_path, [], authorized)
    assert authorized.read_text().splitlines() == lines[:1]
