"""The dashboard on the agent's API over real HTTP on 127.0.0.1, with the in-memory store: any
anonymous request below `/_mesh/` gets 401 and the login form (the hooks' route keeps its own
guard), a wrong password is refused and, repeated, limited (429); the right one gives a session
with which the page lists the droplets and services, and the event stream sends the body again
once the mesh changes. A new password ends the session."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from meshd.agent.api import create_app
from meshd.agent.dashboard import COOKIE, Dashboard
from meshd.agent.hooks import GitHooks
from meshd.agent.meshview import MeshView
from meshd.core.dashboard import FAILURES_ALLOWED, PASSWORD_SECRET
from plugins.secrets.env import EnvSecrets
from protocol import subjects
from protocol.codec import encode
from protocol.messages import Lease
from tests.support.factories import allocation, instance, node
from tests.support.memstore import Clock, MemoryStore

PASSWORD = b"the operator's dashboard password"


class Mesh:
    def __init__(self, client: TestClient[Any, Any], view: MeshView, secrets: dict[str, bytes]):
        self.client = client
        self.view = view
        self.secrets = secrets

    async def login(self, password: str, client: str = "10.1.1.1") -> tuple[int, str]:
        async with self.client.post(
            "/_mesh/login",
            data={"password": password},
            headers={"X-Real-IP": client},  # as nginx on this droplet passes it on
            allow_redirects=False,
        ) as response:
            return response.status, await response.text()

    async def get(self, path: str) -> tuple[int, str]:
        async with self.client.get(path) as response:
            return response.status, await response.text()


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    store = MemoryStore(Clock())
    await store.create(subjects.LEASES_BUCKET, "lb", encode(lease("master", "lb")))
    await store.record("deploy_requested", "ann@laptop", "shop.prod", {"ref": "main"})
    view = MeshView()
    now = time.time()
    backend = allocation(droplets=("master", "web1"))
    await view.set_allocations({"shop.prod.backend": backend})
    await view.set_nodes(
        {
            "master": node("master", instance(), address="127.0.0.1", updated_at=now),
            "web1": node("web1", instance(), address="127.0.0.2", updated_at=now),
        }
    )
    secrets = {PASSWORD_SECRET: PASSWORD}
    board = Dashboard(view, lambda: store, secrets.get, "mesh1", "127.0.0.1")
    hooks = GitHooks("master", lambda: store, view, EnvSecrets({}))
    app = create_app(lambda: pytest.fail("no status asked"), lambda: True, hooks, None, board)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield Mesh(client, view, secrets)


def lease(holder: str, role: str) -> Lease:
    return Lease(role=role, holder=holder, incarnation=1, acquired_at=time.time())


@pytest.mark.parametrize("path", ["/_mesh/", "/_mesh/stream", "/_mesh/anything/below"])
async def test_anonymous_requests_get_401_and_the_login_form(mesh: Mesh, path: str) -> None:
    status, body = await mesh.get(path)
    assert status == 401
    assert 'action="/_mesh/login"' in body and 'type="password"' in body
    assert "web1" not in body


async def test_the_hooks_route_keeps_its_own_guard(mesh: Mesh) -> None:
    async with mesh.client.post("/_mesh/hooks/git/shop", data=b"{}") as response:
        assert response.status != 401  # the hooks' own answer (no mesh state here: 503)
        assert 'action="/_mesh/login"' not in await response.text()


async def test_a_wrong_password_is_refused_then_limited(mesh: Mesh) -> None:
    for _ in range(FAILURES_ALLOWED):
        status, body = await mesh.login("guess")
        assert (status, "Wrong password." in body) == (401, True)
    status, body = await mesh.login(PASSWORD.decode())  # right, but too late for this client
    assert status == 429 and "Too many wrong passwords" in body
    status, _ = await mesh.login(PASSWORD.decode(), client="10.2.2.2")
    assert status == 303


async def test_the_right_password_shows_the_droplets_and_services(mesh: Mesh) -> None:
    async with mesh.client.post(
        "/_mesh/login", data={"password": PASSWORD.decode()}, allow_redirects=False
    ) as response:
        assert response.status == 303 and response.headers["Location"] == "/_mesh/"
        cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Path=/_mesh/" in cookie and PASSWORD.decode() not in cookie
    status, page = await mesh.get("/_mesh/")
    assert status == 200
    assert 'data-droplet="master"' in page and 'data-droplet="web1"' in page
    assert 'data-service="shop.prod.backend"' in page and "2/2" in page
    assert "deploy_requested" in page and "EventSource" in page
    assert "<b>master</b>" in page  # the entry point's holder


async def test_the_stream_sends_the_body_again_when_the_mesh_changes(mesh: Mesh) -> None:
    await mesh.login(PASSWORD.decode())
    async with mesh.client.get("/_mesh/stream") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        first = await next_body(response)
        assert "2/2" in first
        web1 = mesh.view.nodes["web1"]
        sick = replace(web1, instances=(instance(healthy=False),), updated_at=time.time())
        await mesh.view.set_nodes({**mesh.view.nodes, "web1": sick})
        second = await next_body(response)
        assert "1/2" in second and 'id="failed">1<' in second
        assert 'class="ok">2/2<' in second  # both droplets still report: up


async def test_a_new_password_ends_the_session(mesh: Mesh) -> None:
    await mesh.login(PASSWORD.decode())
    assert (await mesh.get("/_mesh/"))[0] == 200
    mesh.secrets[PASSWORD_SECRET] = b"a new one"
    assert (await mesh.get("/_mesh/"))[0] == 401


async def next_body(response: Any) -> str:
    """The next `body` event's data (its lines joined back)."""
    lines: list[str] = []
    async with asyncio.timeout(10):
        while True:
            line = (await response.content.readline()).decode().rstrip("\n")
            if line.startswith("data: "):
                lines.append(line.removeprefix("data: "))
            elif line == "" and lines:
                return "\n".join(lines)
