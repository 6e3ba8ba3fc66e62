"""The nginx load balancer with real nginx (Debian nginx-light): the rendered configuration
routes the seed's paths to healthy instances only, retries a dead one, routes domains, and a
configuration that fails `nginx -t` never replaces a good one."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from plugins.lb import ConfigRejected, LbConfig, LbContext, Site, Upstream
from plugins.lb.nginx import NginxLoadBalancer, render_config
from tests.support import free_port, nginx_binary
from tests.support.waiting import until

ADDRESS = "127.0.0.1"


@pytest.fixture(name="nginx_binary")
def nginx_binary_fixture() -> str:
    return nginx_binary()


@pytest.fixture
async def lb(nginx_binary: str, tmp_path: Path) -> AsyncIterator[NginxLoadBalancer]:
    balancer = NginxLoadBalancer(
        LbContext(directory=tmp_path / "lb", config={"binary": nginx_binary})
    )
    yield balancer
    await balancer.stop()


@pytest.fixture
async def backends() -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []

    async def start(name: str, port: int) -> web.AppRunner:
        async def hello(request: web.Request) -> web.Response:
            return web.Response(text=f"{name} {request.path} host={request.headers.get('Host')}")

        app = web.Application()
        app.router.add_get("/{tail:.*}", hello)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, ADDRESS, port).start()
        runners.append(runner)
        return runner

    yield start
    for runner in runners:
        await runner.cleanup()


async def get(url: str, host: str | None = None) -> tuple[int, str]:
    headers = {"Host": host} if host else {}
    timeout = aiohttp.ClientTimeout(total=5)
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, headers=headers, timeout=timeout) as r,
    ):
        return r.status, await r.text()


def config(
    lb: NginxLoadBalancer, listen: str, *upstreams: Upstream, sites: tuple[Site, ...] = ()
) -> LbConfig:
    return LbConfig(listen=listen, upstreams=upstreams, sites=sites)


async def test_the_seeds_routes_reach_every_healthy_instance(
    lb: NginxLoadBalancer, backends: Any
) -> None:
    one, two = free_port(ADDRESS), free_port(ADDRESS)
    await backends("one", one)
    await backends("two", two)
    listen = f"{ADDRESS}:{free_port(ADDRESS)}"
    backend = Upstream("shop", "prod", "backend", (f"{ADDRESS}:{one}", f"{ADDRESS}:{two}"))

    assert await lb.apply(config(lb, listen, backend)) is True

    seen = set()
    for _ in range(6):
        status, text = await get(f"http://{listen}/shop-prod/backend/items?x=1")
        assert status == 200
        name, path, _ = text.split(" ")
        assert path == "/items"  # the route's prefix is stripped
        seen.add(name)
    assert seen == {"one", "two"}
    assert await get(f"http://{listen}/health") == (200, "healthy\n")
    status, text = await get(f"http://{listen}/nowhere")
    assert status == 404 and "/<project>-<env>/<service>/" in text


async def test_a_dead_instance_is_retried_on_a_live_one(
    lb: NginxLoadBalancer, backends: Any
) -> None:
    live, dead = free_port(ADDRESS), free_port(ADDRESS)  # nothing listens on `dead`
    await backends("live", live)
    listen = f"{ADDRESS}:{free_port(ADDRESS)}"
    await lb.apply(
        config(
            lb,
            listen,
            Upstream("shop", "prod", "backend", (f"{ADDRESS}:{live}", f"{ADDRESS}:{dead}")),
        )
    )

    results = [await get(f"http://{listen}/shop-prod/backend/") for _ in range(10)]

    assert all(status == 200 and text.startswith("live") for status, text in results)


async def test_a_service_without_healthy_instances_answers_503_saying_so(
    lb: NginxLoadBalancer,
) -> None:
    listen = f"{ADDRESS}:{free_port(ADDRESS)}"
    await lb.apply(config(lb, listen, Upstream("shop", "uat", "frontend", ())))

    status, text = await get(f"http://{listen}/shop-uat/frontend/")

    assert (status, text) == (503, "no healthy instance of shop-uat frontend\n")


async def test_domains_route_to_the_frontend_and_service_prefixes(
    lb: NginxLoadBalancer, backends: Any
) -> None:
    front, back = free_port(ADDRESS), free_port(ADDRESS)
    await backends("front", front)
    await backends("back", back)
    frontend = Upstream("shop", "prod", "frontend", (f"{ADDRESS}:{front}",))
    backend = Upstream("shop", "prod", "backend", (f"{ADDRESS}:{back}",))
    site = Site("shop", "prod", ("shop.example.com",), frontend, (backend, frontend))
    listen = f"{ADDRESS}:{free_port(ADDRESS)}"
    await lb.apply(config(lb, listen, backend, frontend, sites=(site,)))

    status, text = await get(f"http://{listen}/about", host="shop.example.com")
    assert status == 200 and text == "front /about host=shop.example.com"
    status, text = await get(f"http://{listen}/backend/api", host="shop.example.com")
    assert status == 200 and text == "back /api host=shop.example.com"


async def test_a_configuration_nginx_refuses_never_replaces_the_good_one(
    lb: NginxLoadBalancer, backends: Any
) -> None:
    port = free_port(ADDRESS)
    await backends("one", port)
    listen = f"{ADDRESS}:{free_port(ADDRESS)}"
    good = config(lb, listen, Upstream("shop", "prod", "backend", (f"{ADDRESS}:{port}",)))
    await lb.apply(good)

    bad = config(lb, listen, Upstream("shop", "prod", "backend", (f"{ADDRESS}:99999",)))
    with pytest.raises(ConfigRejected, match="nginx -t refused.*invalid port"):
        await lb.apply(bad)

    assert (await get(f"http://{listen}/shop-prod/backend/"))[0] == 200
    assert (lb.run_dir / "nginx.conf").read_text() == render_config(good, lb.run_dir)
    assert await lb.apply(good) is False  # what runs already: no reload


async def test_nginx_that_died_is_started_again_with_the_last_good_configuration(
    lb: NginxLoadBalancer, backends: Any
) -> None:
    port = free_port(ADDRESS)
    await backends("one", port)
    listen = f"{ADDRESS}:{free_port(ADDRESS)}"
    await lb.apply(config(lb, listen, Upstream("shop", "prod", "backend", (f"{ADDRESS}:{port}",))))
    pid = int((lb.run_dir / "nginx.pid").read_text())

    os.kill(pid, 9)
    await until(lambda: not lb.serving, "nginx's death to be seen")

    assert await lb.ensure_running() is True
    assert (await get(f"http://{listen}/shop-prod/backend/"))[0] == 200


async def post(url: str, body: bytes, host: str | None = None) -> tuple[int, str]:
    headers = {"X-Hub-Signature-256": "sha256=abc", **({"Host": host} if host else {})}
    timeout = aiohttp.ClientTimeout(total=5)
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, data=body, headers=headers, timeout=timeout) as r,
    ):
        return r.status, await r.text()


async def test_push_webhooks_go_to_the_holders_agent_on_every_host_name(
    lb: NginxLoadBalancer, backends: Any
) -> None:
    seen: list[tuple[str, bytes, str | None, str | None]] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        signature = request.headers.get("X-Hub-Signature-256")
        seen.append((request.path, body, signature, request.headers.get("X-Real-IP")))
        return web.json_response({"queued": []}, status=202)

    app = web.Application()
    app.router.add_post("/_mesh/hooks/git/{project}", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    agent = f"{ADDRESS}:{free_port(ADDRESS)}"
    await web.TCPSite(runner, ADDRESS, int(agent.split(":")[1])).start()
    try:
        front = free_port(ADDRESS)
        await backends("front", front)
        frontend = Upstream("shop", "prod", "frontend", (f"{ADDRESS}:{front}",))
        site = Site("shop", "prod", ("shop.example.com",), frontend, (frontend,))
        listen = f"{ADDRESS}:{free_port(ADDRESS)}"
        await lb.apply(LbConfig(listen=listen, upstreams=(frontend,), sites=(site,), agent=agent))
        url = f"http://{listen}/_mesh/hooks/git/shop"

        assert (await post(url, b'{"ref": 1}'))[0] == 202
        assert (await post(url, b"{}", host="shop.example.com"))[0] == 202
        assert seen == [
            ("/_mesh/hooks/git/shop", b'{"ref": 1}', "sha256=abc", ADDRESS),
            ("/_mesh/hooks/git/shop", b"{}", "sha256=abc", ADDRESS),
        ]
        assert (await get(url))[0] == 403  # only POST
        assert (await get(url, host="shop.example.com"))[0] == 403
        assert (await post(url, b"x" * (1024 * 1024 + 1)))[0] == 413
        assert len(seen) == 2
    finally:
        await runner.cleanup()


async def test_without_an_agent_address_there_is_no_webhook_route(lb: NginxLoadBalancer) -> None:
    listen = f"{ADDRESS}:{free_port(ADDRESS)}"
    await lb.apply(LbConfig(listen=listen, upstreams=()))

    status, _ = await post(f"http://{listen}/_mesh/hooks/git/shop", b"{}")

    assert status == 404
    assert "_mesh" not in (lb.run_dir / "nginx.conf").read_text()
