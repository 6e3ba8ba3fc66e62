"""The agent's push webhook endpoint over real HTTP on 127.0.0.1, with the in-memory store and
a project secret really sealed to the droplet: a delivery signed with the project's
`webhook_secret` queues one deploy request per pushed branch; anything else queues nothing (a
bad or missing signature is 401 and one rate-limited `webhook_refused` event; no secret is 404
saying how to set one; a ping, a tag or a deletion is answered with nothing to do)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from meshd.agent.api import create_app
from meshd.agent.hooks import MAX_BODY, REFUSED_EVERY_S, GitHooks
from meshd.agent.meshview import MeshView
from meshd.agent.sealed import SealedSecrets
from meshd.agent.sealkey import droplet_keys
from meshd.core.sealing import entry_context, seal, to_text
from meshd.core.secret_plan import PROJECT_WIDE, WEBHOOK_SECRET
from meshd.core.webhooks import signature_of
from plugins.secrets.env import EnvSecrets
from protocol import subjects
from protocol.codec import decode
from protocol.releases import DeployAction, DeployRequest
from protocol.secrets import SealedSecret
from tests.support.factories import node
from tests.support.memstore import Clock, MemoryStore
from tests.support.states import state_from_csv
from tests.support.waiting import until

SECRET = b"shop's webhook secret"
CASES: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "cases" / "webhook_pushes.json").read_text(encoding="utf-8")
)["deliveries"]
URL = "/_mesh/hooks/git/shop"
NOT_A_BRANCH = "not a branch push (tag, deletion)"
CSV = "Project,Servers,MasterSpec,WebSpec\nshop,1,s-1vcpu-2gb,s-1vcpu-1gb\n"


class Endpoint:
    """The endpoint under test and what it touches."""

    def __init__(self, client: TestClient[Any, Any], store: MemoryStore, hooks: GitHooks) -> None:
        self.client = client
        self.store = store
        self.hooks = hooks

    async def post(
        self, body: bytes, headers: dict[str, str], url: str = URL
    ) -> tuple[int, dict[str, Any] | str]:
        async with self.client.post(url, data=body, headers=headers) as response:
            text = await response.text()
            is_json = response.content_type == "application/json"
            return response.status, json.loads(text) if is_json else text

    async def queued(self) -> list[DeployRequest]:
        queue = await self.store.work_queue(subjects.deploy("shop"), "mesh.deploy.>", "test")
        found = []
        while (delivery := await queue.take(0)) is not None:
            found.append(decode(delivery.data, DeployRequest))
        return found

    def refused(self) -> list[dict[str, Any]]:
        return [e.detail for e in self.store.events if e.name == "webhook_refused"]


async def sealed_secrets(tmp_path: Path, project: str, value: bytes) -> SealedSecrets:
    """The droplet's secrets with `project`'s webhook secret sealed to it, as the `secrets`
    role seals it to a trusted droplet."""
    keys = droplet_keys(tmp_path, "1")
    key = subjects.sealed_key("master", WEBHOOK_SECRET, project, PROJECT_WIDE)
    entry = SealedSecret(
        droplet="master",
        name=WEBHOOK_SECRET,
        project=project,
        env=PROJECT_WIDE,
        source=subjects.secret_value_key(WEBHOOK_SECRET, project),
        version=1,
        sealed=to_text(seal(keys.current.public, value, entry_context(key, 1))),
        key=keys.current.fingerprint,
        fence=1,
    )
    secrets = SealedSecrets(keys, EnvSecrets({}))
    await secrets.set_sealed({key: entry})
    return secrets


@pytest.fixture
async def endpoint(tmp_path: Path) -> AsyncIterator[Endpoint]:
    store = MemoryStore(Clock())
    view = MeshView()
    view.state = state_from_csv(CSV + "blog,1,s-1vcpu-2gb,s-1vcpu-1gb\n")
    view.nodes = {"master": node("master")}
    secrets = await sealed_secrets(tmp_path, "shop", SECRET)
    hooks = GitHooks("master", lambda: store, view, secrets, clock=store.clock)
    app = create_app(lambda: pytest.fail("no status asked"), lambda: True, hooks)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield Endpoint(client, store, hooks)


def delivery(case: str, secret: bytes = SECRET) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(CASES[case]["payload"]).encode()
    signature = signature_of(body, secret)
    if case.startswith("gitea"):
        return body, {"X-Gitea-Event": "push", "X-Gitea-Signature": signature}
    headers = {"X-GitHub-Event": CASES[case]["event"], "Content-Type": "application/json"}
    return body, headers | {"X-Hub-Signature-256": f"sha256={signature}"}


async def test_a_signed_push_queues_a_deploy_request_of_the_branch(endpoint: Endpoint) -> None:
    body, headers = delivery("github_push_to_main")

    status, answer = await endpoint.post(body, headers)

    assert status == 202
    (request,) = await endpoint.queued()
    assert answer == {
        "queued": [{"ref": "refs/heads/main", "sha": request.sha, "request_id": request.request_id}]
    }
    assert (request.project, request.action, request.env) == ("shop", DeployAction.PUSH, None)
    after = CASES["github_push_to_main"]["payload"]["after"]
    assert (request.ref, request.sha) == ("refs/heads/main", after)
    assert (request.requested_by, request.progress) == ("ada", None)  # nobody follows it
    assert endpoint.refused() == []


async def test_giteas_signature_is_taken_too(endpoint: Endpoint) -> None:
    status, _ = await endpoint.post(*delivery("gitea_push"))
    assert status == 202
    assert [r.ref for r in await endpoint.queued()] == ["refs/heads/develop"]


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ({"X-GitHub-Event": "push"}, "no X-Hub-Signature-256"),
        ({"X-Hub-Signature-256": "sha256=" + "0" * 64}, "does not match"),
        ({"X-Hub-Signature-256": "sha256=" + signature_of(b"{}", b"a guess")}, "does not match"),
    ],
)
async def test_a_wrong_or_missing_signature_is_401_and_nothing_queued(
    endpoint: Endpoint, headers: dict[str, str], says: str
) -> None:
    body, _ = delivery("github_push_to_main")

    status, text = await endpoint.post(body, headers)

    assert status == 401 and says in str(text)
    assert await endpoint.queued() == []
    await until(endpoint.refused, "the refusal's event")
    (event,) = endpoint.refused()
    assert event == {"reason": event["reason"], "from": "127.0.0.1", "left_out": 0}
    assert says in event["reason"] and SECRET.decode() not in json.dumps(event)


async def test_a_flood_of_bad_deliveries_makes_one_event_a_minute(endpoint: Endpoint) -> None:
    body, headers = delivery("github_push_to_main", secret=b"wrong")
    headers["X-Real-IP"] = "203.0.113.9"  # as this droplet's nginx says who it came from
    for _ in range(30):
        assert (await endpoint.post(body, headers))[0] == 401
    await until(endpoint.refused, "the first refusal's event")

    endpoint.store.clock.advance(REFUSED_EVERY_S)
    assert (await endpoint.post(body, headers))[0] == 401

    await until(lambda: len(endpoint.refused()) == 2, "the next minute's event")
    assert [(e["left_out"], e["from"]) for e in endpoint.refused()] == [
        (0, "203.0.113.9"),
        (29, "203.0.113.9"),
    ]
    assert await endpoint.queued() == []


async def test_a_project_without_a_webhook_secret_answers_how_to_set_one(
    endpoint: Endpoint,
) -> None:
    body = json.dumps(CASES["github_push_to_main"]["payload"]).encode()
    headers = {"X-Hub-Signature-256": "sha256=" + signature_of(body, SECRET)}

    status, text = await endpoint.post(body, headers, url="/_mesh/hooks/git/blog")

    assert status == 404
    assert text == "webhooks are off for this project: meshctl secret set blog webhook_secret\n"
    await endpoint.store.put(
        subjects.SECRETS_BUCKET, subjects.secret_value_key(WEBHOOK_SECRET, "blog"), b"sealed"
    )
    status, text = await endpoint.post(body, headers, url="/_mesh/hooks/git/blog")
    assert status == 503 and "not sealed to this droplet yet" in str(text)  # set just now
    assert await endpoint.queued() == [] and endpoint.refused() == []


async def test_an_unknown_project_is_404(endpoint: Endpoint) -> None:
    status, text = await endpoint.post(b"{}", {}, url="/_mesh/hooks/git/nowhere")
    assert (status, text) == (404, "no project 'nowhere' is published\n")


@pytest.mark.parametrize(
    ("case", "status", "answer"),
    [
        ("github_ping_on_creating_the_hook", 200, {"pong": True, "project": "shop"}),
        ("github_tag_push_of_the_builder", 200, {"queued": [], "ignored": NOT_A_BRANCH}),
        ("github_branch_deletion", 200, {"queued": [], "ignored": NOT_A_BRANCH}),
    ],
)
async def test_a_signed_delivery_that_deploys_nothing_queues_nothing(
    endpoint: Endpoint, case: str, status: int, answer: dict[str, Any]
) -> None:
    got_status, got = await endpoint.post(*delivery(case))

    assert (got_status, got) == (status, answer)
    assert await endpoint.queued() == []


async def test_a_signed_body_that_is_no_push_payload_is_400(endpoint: Endpoint) -> None:
    body = b'{"zen": "Keep it logically awesome."}'
    signature = "sha256=" + signature_of(body, SECRET)
    headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": signature}
    status, text = await endpoint.post(body, headers)
    assert status == 400 and "no 'ref'" in str(text)


async def test_a_body_over_the_limit_is_413_before_its_signature_is_checked(
    endpoint: Endpoint,
) -> None:
    status, _ = await endpoint.post(b" " * (MAX_BODY + 1), {"X-Hub-Signature-256": "sha256=0"})
    assert status == 413
    assert await endpoint.queued() == [] and endpoint.refused() == []


async def test_only_post_is_answered(endpoint: Endpoint) -> None:
    async with endpoint.client.get(URL) as response:
        assert response.status == 405


async def test_a_store_that_does_not_answer_is_503_to_be_delivered_again(
    endpoint: Endpoint,
) -> None:
    endpoint.store.unavailable = True
    status, text = await endpoint.post(*delivery("github_push_to_main"))
    assert status == 503 and "could not be queued" in str(text)


async def test_nothing_is_taken_before_the_desired_state_is_known(endpoint: Endpoint) -> None:
    endpoint.hooks.view.state = None
    status, _ = await endpoint.post(*delivery("github_push_to_main"))
    assert status == 503
