"""For tests of git deploys against a real nats-server: a `meshctl` context for it, a
published project whose `git_repo` is a local bare repository, processes run without
blocking the event loop, requests read back from `MESH_DEPLOY`, and a stand-in builder that
answers progress lines the way the builder role does."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshd.agent.store import Store
from meshd.cli.context import Context
from meshd.core.spec import DesiredState, ProjectSpec
from protocol import subjects
from protocol.codec import decode, encode
from protocol.messages import PublishedSpec
from protocol.releases import DeployProgress, DeployRequest
from tests.support.nats import NatsServer

PROJECT = "shop"
CONSUMER = "test-builder"


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str

    @property
    def both(self) -> str:
        return self.out + self.err


def meshctl_path() -> Path:
    # The script beside this interpreter: PyPI has an unrelated package named meshctl.
    beside = Path(sys.executable).parent / "meshctl"
    if beside.is_file():
        return beside
    found = shutil.which("meshctl")
    if found is None:
        pytest.fail("meshctl is not installed; run `pip install -e .[test]` in the repository")
    return Path(found)


def environment(home: Path) -> dict[str, str]:
    """The environment of `meshctl` and `git` in these tests: the test's mesh context, no
    user or system git configuration, fixed authors."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "MESHD_"))}
    env |= {
        "MESHD_CONFIG_HOME": str(home / "config"),
        "MESHD_STATE_HOME": str(home / "state"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": str(home / "gitconfig"),
        "GIT_AUTHOR_NAME": "Ada",
        "GIT_AUTHOR_EMAIL": "ada@example.org",
        "GIT_COMMITTER_NAME": "Ada",
        "GIT_COMMITTER_EMAIL": "ada@example.org",
        "NO_COLOR": "1",
    }
    return env


async def run(
    *args: str | Path, env: dict[str, str], cwd: Path | None = None, stdin: bytes = b""
) -> Ran:
    process = await asyncio.create_subprocess_exec(
        *map(str, args),
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), 60)
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


async def meshctl(*args: str | Path, env: dict[str, str]) -> Ran:
    return await run(meshctl_path(), *args, env=env)


async def git(*args: str | Path, env: dict[str, str], cwd: Path | None = None) -> str:
    ran = await run("git", *args, env=env, cwd=cwd)
    assert ran.code == 0, f"git {' '.join(map(str, args))}: {ran.err}"
    return ran.out.strip()


def save_context(server: NatsServer, home: Path, *, deployer: bool = True) -> Context:
    """The operator's context of the test's server, in `home/config` (as `meshctl up` makes
    it, with the deployer's password unless told otherwise)."""
    context = Context(
        name="test",
        mesh="test",
        servers=[server.url],
        user="operator",
        password=server.config.passwords["operator"],
        deployer_password=server.config.passwords["deployer"] if deployer else None,
    )
    directory = home / "config" / "contexts"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "test.json").write_text(json.dumps(dataclasses.asdict(context)))
    (directory / "test.json").chmod(0o600)
    (home / "config" / "current").write_text("test")
    return context


async def publish(store: Store, git_repo: Path | str | None, *more: str) -> None:
    """Publish project `shop` (and projects `more`, all with that `git_repo`)."""
    projects = tuple(
        ProjectSpec(
            name=name,
            servers=1,
            master_size="s-1vcpu-1gb",
            web_size="s-1vcpu-1gb",
            services=(),
            git_repo=None if git_repo is None else str(git_repo),
        )
        for name in (PROJECT, *more)
    )
    spec = PublishedSpec(
        spec=DesiredState(projects=projects).to_data(),
        published_by="test",
        published_at=time.time(),
    )
    await store.put(subjects.DESIRED_BUCKET, subjects.DESIRED_KEY, encode(spec))


async def queued(store: Store) -> int:
    return await store.queued(subjects.DEPLOY_STREAM)


async def take(
    store: Store, count: int, *, answer: Sequence[str] = (), ok: bool = True
) -> list[DeployRequest]:
    """Take `count` requests from `MESH_DEPLOY` in order, answering each that names a progress
    inbox with the lines `answer` (the last one final, `ok` as told), as the builder does."""
    queue = await store.work_queue(subjects.DEPLOY_STREAM, subjects.DEPLOY_SUBJECTS, CONSUMER)
    taken: list[DeployRequest] = []
    deadline = time.monotonic() + 30
    try:
        while len(taken) < count:
            assert time.monotonic() < deadline, f"only {len(taken)} of {count} requests came"
            delivery = await queue.take(wait=1.0)
            if delivery is None:
                continue
            request = decode(delivery.data, DeployRequest)
            await queue.done(delivery)
            taken.append(request)
            if request.progress is None:
                continue
            for number, line in enumerate(answer, start=1):
                final = number == len(answer)
                progress = DeployProgress(
                    request_id=request.request_id,
                    line=line,
                    final=final,
                    ok=ok or not final,
                    release=len(taken),
                )
                await store.publish(request.progress, encode(progress))
    finally:
        await queue.close()
    return taken
