"""`meshctl deploy`, `promote`, `rollback` and `releases` against a real nats-server: each
queues exactly the request it says in `MESH_DEPLOY`; a project, environment or ref that cannot
be deployed is one line and exit 2 with nothing sent; `--follow` prints the builder's lines
and exits by its final one; `releases` lists the records of `mesh_releases`."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from meshd.agent.store import Store
from protocol import subjects
from protocol.codec import encode
from protocol.releases import DeployAction, Release, ReleaseStatus
from tests.support.deploys import PROJECT, environment, meshctl, publish, queued, save_context, take
from tests.support.nats import NatsServer

SHA = "bffeb74224043ba2feb48d137756c8a9331c449a"


@pytest.fixture
async def env(tmp_path: Path, nats_server: NatsServer, store: Store) -> dict[str, str]:
    save_context(nats_server, tmp_path)
    await publish(store, tmp_path / "shop.git")
    return environment(tmp_path)


async def test_each_command_queues_the_request_it_names(env: dict[str, str], store: Store) -> None:
    commands = [
        ("deploy", PROJECT, "uat"),
        ("deploy", PROJECT, "test", "--ref", "feature/x"),
        ("promote", PROJECT, "--release", "3"),
        ("rollback", PROJECT, "uat", "--to", "2"),
        ("rollback", PROJECT, "prod"),
        ("deploy", "--cancel", PROJECT, "prod"),
    ]
    ids = []
    for command in commands:
        ran = await meshctl(*command, "--json", env=env)
        assert ran.code == 0, ran.both
        ids.append(json.loads(ran.out)["request_id"])
    requests = await take(store, len(commands))
    assert [r.request_id for r in requests] == ids
    assert [(r.action, r.env, r.ref, r.release, r.cancel) for r in requests] == [
        (DeployAction.DEPLOY, "uat", "main", 0, False),
        (DeployAction.DEPLOY, "test", "feature/x", 0, False),
        (DeployAction.PROMOTE, "prod", "", 3, False),
        (DeployAction.ROLLBACK, "uat", "", 2, False),
        (DeployAction.ROLLBACK, "prod", "", 0, False),
        (DeployAction.DEPLOY, "prod", "", 0, True),
    ]
    assert all(r.project == PROJECT and r.progress is None and r.requested_by for r in requests)


@pytest.mark.parametrize(
    ("command", "says"),
    [
        (("deploy", PROJECT, "prod"), "prod is deployed only by `meshctl promote`"),
        (("deploy", PROJECT, "prod", "--ref", "main"), "only by `meshctl promote`"),
        (("deploy", "nope", "uat"), "no project 'nope' is published (known: shop)"),
        (("deploy", PROJECT, "staging"), "environment 'staging' is not one of prod, uat, test"),
        (("deploy", PROJECT, "test"), "test takes any branch matching '*'"),
        (("deploy", PROJECT, "uat", "--ref", ""), "--ref is empty"),
        (("promote", "nope"), "no project 'nope'"),
        (("rollback", PROJECT, "staging"), "environment 'staging'"),
        (("releases", "nope"), "no project 'nope'"),
    ],
)
async def test_what_cannot_be_deployed_is_one_line_and_exit_2_with_nothing_sent(
    env: dict[str, str], store: Store, command: tuple[str, ...], says: str
) -> None:
    ran = await meshctl(*command, env=env)
    assert ran.code == 2, ran.both
    assert ran.err.count("\n") == 1 and says in ran.err and ran.out == ""
    assert await queued(store) == 0


async def test_follow_prints_the_progress_and_exits_by_the_final_line(
    env: dict[str, str], store: Store
) -> None:
    builder = asyncio.create_task(take(store, 1, answer=("building backend", "v1 is live")))
    ran = await meshctl("deploy", PROJECT, "uat", "--follow", env=env)
    await asyncio.wait_for(builder, 30)
    assert ran.code == 0, ran.both
    assert ran.out.splitlines()[1:] == ["building backend", "v1 is live"]
    builder = asyncio.create_task(take(store, 1, answer=("build failed: exit 2",), ok=False))
    ran = await meshctl("promote", PROJECT, "--follow", "--json", env=env)
    await asyncio.wait_for(builder, 30)
    assert ran.code == 1, ran.both
    assert ran.err == "meshctl: promote shop prod: build failed: exit 2\n"
    data = json.loads(ran.out)
    assert (data["ok"], data["finished"], data["lines"]) == (False, True, ["build failed: exit 2"])


async def test_releases_lists_the_records_newest_first_and_explains_failures(
    env: dict[str, str], store: Store
) -> None:
    now = time.time()
    records = [
        release(1, "uat", now - 7200, ReleaseStatus.LIVE, tag="v0.1.0-uat-20250529-1430"),
        release(2, "uat", now - 600, ReleaseStatus.FAILED, detail="health check timed out"),
        release(1, "prod", now - 60, ReleaseStatus.LIVE, action=DeployAction.PROMOTE),
    ]
    for record in records:
        key = subjects.release_key(record.project, record.env, record.number)
        await store.put(subjects.RELEASES_BUCKET, key, encode(record))
    ran = await meshctl("releases", PROJECT, env=env)
    assert ran.code == 0, ran.both
    rows = [line.split() for line in ran.out.splitlines() if line.strip().startswith("v")]
    assert [row[:4] for row in rows[:3]] == [
        ["v1", "prod", "promote", "live"],
        ["v2", "uat", "push", "failed"],
        ["v1", "uat", "push", "live"],
    ]
    assert "v2 uat failed: health check timed out" in ran.out
    assert SHA[:12] in ran.out and SHA[:13] not in ran.out
    ran = await meshctl("releases", PROJECT, "uat", "--json", "--limit", "1", env=env)
    (only,) = json.loads(ran.out)["releases"]
    assert (only["env"], only["number"], only["status"], only["sha"]) == ("uat", 2, "failed", SHA)


def release(number: int, env: str, at: float, status: ReleaseStatus, **more: object) -> Release:
    values: dict[str, object] = {
        "project": PROJECT,
        "env": env,
        "number": number,
        "action": DeployAction.PUSH,
        "status": status,
        "ref": "refs/heads/main",
        "sha": SHA,
        "requested_by": "ada",
        "created_at": at,
        "updated_at": at,
        "request_id": f"{env}{number}",
    }
    return Release(**{**values, **more})  # type: ignore[arg-type]
