"""The git side of deploys with a real nats-server and real bare repositories:
`meshctl hook install` writes a hook that, on `git push`, queues one request per pushed
branch in `MESH_DEPLOY` as the `deployer` user and shows the builder's progress as `remote:`
lines; tags and deletions queue nothing; a mesh that does not answer fails no push."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import nats
import pytest

from meshd.agent.store import Store
from meshd.core.deploys import HOOK_MARK
from protocol import subjects
from protocol.releases import DeployAction
from tests.support.deploys import (
    PROJECT,
    environment,
    git,
    meshctl,
    publish,
    queued,
    run,
    save_context,
    take,
)
from tests.support.nats import NatsServer
from tests.support.waiting import until


@pytest.fixture
def env(tmp_path: Path, nats_server: NatsServer) -> dict[str, str]:
    save_context(nats_server, tmp_path)
    return environment(tmp_path)


async def repository(tmp_path: Path, env: dict[str, str]) -> tuple[Path, Path]:
    """A bare repository `shop.git` and a clone of it with commits on main and feature."""
    bare, work = tmp_path / "shop.git", tmp_path / "work"
    await git("init", "--bare", "-q", "-b", "main", bare, env=env)
    await git("clone", "-q", bare, work, env=env)
    await commit(work, env, "one")
    await git("branch", "feature", env=env, cwd=work)
    return bare, work


async def commit(work: Path, env: dict[str, str], text: str) -> str:
    (work / "app.txt").write_text(text)
    await git("add", "app.txt", env=env, cwd=work)
    await git("commit", "-q", "-m", text, env=env, cwd=work)
    return await git("rev-parse", "HEAD", env=env, cwd=work)


async def installed(tmp_path: Path, env: dict[str, str], store: Store) -> tuple[Path, Path]:
    bare, work = await repository(tmp_path, env)
    await publish(store, bare)
    ran = await meshctl("hook", "install", bare, env=env)
    assert ran.code == 0, ran.err
    return bare, work


async def test_install_refuses_what_is_not_a_bare_repository(
    tmp_path: Path, env: dict[str, str]
) -> None:
    bare, work = await repository(tmp_path, env)
    (tmp_path / "plain").mkdir()
    for path in (work, tmp_path / "plain", tmp_path / "missing", bare / "refs"):
        ran = await meshctl("hook", "install", path, "--project", PROJECT, env=env)
        assert ran.code == 2, (path, ran.both)
        assert len(ran.err.strip().splitlines()) == 1 and "Traceback" not in ran.both
        assert "bare" in ran.err, ran.err
    assert not (bare / "hooks" / "post-receive").exists()


async def test_install_finds_the_project_by_git_repo_and_leaves_only_the_deployer_password(
    tmp_path: Path, env: dict[str, str], store: Store, nats_server: NatsServer
) -> None:
    bare, _ = await installed(tmp_path, env, store)
    hook = bare / "hooks" / "post-receive"
    credentials = bare / "hooks" / "meshd-deploy.json"
    assert hook.stat().st_mode & stat.S_IXUSR and HOOK_MARK in hook.read_text()
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    data = json.loads(credentials.read_text())
    passwords = nats_server.config.passwords
    assert (data["user"], data["password"], data["project"]) == (
        "deployer",
        passwords["deployer"],
        PROJECT,
    )
    assert passwords["operator"] not in credentials.read_text() + hook.read_text()
    assert await git("config", "receive.advertisePushOptions", env=env, cwd=bare) == "true"
    first = hook.read_text()
    again = await meshctl("hook", "install", bare, "--project", PROJECT, env=env)
    assert again.code == 0, again.err
    assert hook.read_text() == first


async def test_install_refuses_an_unknown_project_and_a_foreign_hook(
    tmp_path: Path, env: dict[str, str], store: Store
) -> None:
    bare, _ = await repository(tmp_path, env)
    await publish(store, "https://example.org/elsewhere.git")
    for args in (("--project", "nope"), ()):
        ran = await meshctl("hook", "install", bare, *args, env=env)
        assert ran.code == 2 and len(ran.err.strip().splitlines()) == 1, ran.both
    assert "--project" in ran.err  # no project has this git_repo
    (bare / "hooks" / "post-receive").write_text("#!/bin/sh\necho mine\n")
    ran = await meshctl("hook", "install", bare, "--project", PROJECT, env=env)
    assert ran.code == 2 and "--force" in ran.err, ran.both
    ran = await meshctl("hook", "install", bare, "--project", PROJECT, "--force", env=env)
    assert ran.code == 0, ran.err


async def test_a_push_queues_one_request_per_branch_and_prints_the_builders_progress(
    tmp_path: Path, env: dict[str, str], store: Store
) -> None:
    bare, work = await installed(tmp_path, env, store)
    builder = asyncio.create_task(take(store, 2, answer=("building backend", "release is live")))
    pushed = await git_push(work, {**env, "MESHD_PUSHER": "ada"}, "origin", "main", "feature")
    requests = await asyncio.wait_for(builder, 30)
    sha = await git("rev-parse", "main", env=env, cwd=bare)
    assert sorted((r.ref, r.sha) for r in requests) == [
        ("refs/heads/feature", sha),
        ("refs/heads/main", sha),
    ]
    for request in requests:
        assert (request.project, request.action, request.env) == (PROJECT, DeployAction.PUSH, None)
        assert request.requested_by == "ada" and request.progress is not None
        assert subjects.is_deploy_inbox(request.progress)
    for branch in ("main", "feature"):
        assert f"remote: meshd: [{branch}] building backend" in pushed
        assert f"remote: meshd: [{branch}] release is live" in pushed
    assert await queued(store) == 0


async def test_a_failed_release_is_shown_and_the_push_still_succeeds(
    tmp_path: Path, env: dict[str, str], store: Store
) -> None:
    _, work = await installed(tmp_path, env, store)
    builder = asyncio.create_task(take(store, 1, answer=("health check timed out",), ok=False))
    pushed = await git_push(work, env, "origin", "main")
    await asyncio.wait_for(builder, 30)
    assert "remote: meshd: failed: health check timed out" in pushed


async def test_tags_and_deletions_queue_nothing_and_nowait_does_not_wait(
    tmp_path: Path, env: dict[str, str], store: Store
) -> None:
    bare, work = await installed(tmp_path, env, store)
    await git("push", "-q", "origin", "feature", "-o", "nowait", env=env, cwd=work)
    await take(store, 1)  # the new branch, not followed
    await git("tag", "v0.1.0-uat-20250529-1430", env=env, cwd=work)
    await git_push(work, env, "origin", "--tags")
    await git_push(work, env, "origin", "--delete", "feature")
    assert await queued(store) == 0
    sha = await commit(work, env, "two")
    pushed = await git_push(work, env, "-o", "nowait", "-o", "shiny", "origin", "main")
    assert "not waiting" in pushed and "ignored push options: shiny" in pushed
    (request,) = await take(store, 1)
    assert (request.ref, request.sha, request.progress) == ("refs/heads/main", sha, None)
    assert await git("rev-parse", "main", env=env, cwd=bare) == sha


async def test_a_push_succeeds_when_the_mesh_is_unreachable(
    tmp_path: Path, env: dict[str, str], store: Store, nats_server: NatsServer
) -> None:
    bare, work = await installed(tmp_path, env, store)
    await store.close()
    nats_server.kill()
    sha = await commit(work, env, "two")
    pushed = await git_push(work, env, "origin", "main")
    assert "remote: meshd: mesh 'test' is not reachable" in pushed
    assert "nothing deployed" in pushed
    assert await git("rev-parse", "main", env=env, cwd=bare) == sha


async def git_push(work: Path, env: dict[str, str], *args: str) -> str:
    """`git push ARGS` from `work`, which must succeed; what it printed (the hook's lines come
    as `remote:` lines on its standard error)."""
    ran = await run("git", "push", *args, env=env, cwd=work)
    assert ran.code == 0, ran.both
    assert "Traceback" not in ran.both
    return ran.both


async def test_the_deployer_may_queue_requests_and_hear_its_own_inboxes_only(
    nats_server: NatsServer, store: Store
) -> None:
    refused: list[str] = []

    async def error(err: Exception) -> None:
        refused.append(str(err).lower())

    deployer = await nats.connect(
        nats_server.url,
        user="deployer",
        password=nats_server.config.passwords["deployer"],
        inbox_prefix=subjects.DEPLOY_INBOX,
        error_cb=error,
    )
    try:
        ack = await deployer.jetstream(timeout=5).publish(subjects.deploy(PROJECT), b"x")
        assert ack.stream == subjects.DEPLOY_STREAM
        await deployer.subscribe("_INBOX.>")
        await deployer.publish("mesh.events.publish", b"x")
        await deployer.subscribe(f"$KV.{subjects.DESIRED_BUCKET}.>")
        await until(lambda: len(refused) >= 3, "three permission violations")
    finally:
        await deployer.close()
    assert all("permissions violation" in text for text in refused), refused
    assert {"_inbox.>", "mesh.events.publish", f"$kv.{subjects.DESIRED_BUCKET}.>"} == {
        text.rsplit('"', 2)[-2] for text in refused
    }
