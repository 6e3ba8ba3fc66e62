"""The agent's HTTP endpoints on its droplet's address: `/health` for peers' probes,
`/status` for operators, `/metrics` for Prometheus, `POST /_mesh/hooks/git/<project>` for
push webhooks, the dashboard below `/_mesh/` and the answers to ACME HTTP-01 challenges at
`/.well-known/acme-challenge/<token>` (read from `mesh_certs`, where the `certificates`
role puts them), which the entry point's nginx passes on (`meshd.agent.hooks`,
`meshd.agent.dashboard`, docs/tls.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web

from meshd.agent.dashboard import Dashboard
from meshd.agent.hooks import ROUTE, GitHooks
from meshd.agent.store import Store, StoreUnavailable
from protocol import certs, subjects
from protocol.messages import NodeStatus

__all__ = ["Dashboard", "GitHooks", "create_app", "serve"]  # the composition root builds both
CHALLENGE_PATH = "/.well-known/acme-challenge/"
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus's text format


def _instance(status: Any) -> dict[str, Any]:
    return {
        "project": status.project,
        "env": status.env,
        "service": status.service,
        "state": status.state.value,
        "healthy": status.healthy,
        "restarts": status.restarts,
        "last_error": status.last_error,
        "runtime_id": status.runtime_id,  # a pid (process) or a container id (docker)
        "generation": status.generation,
        "slot": status.slot,
        "port": status.port,
        "draining": status.draining,
    }


def create_app(
    status: Callable[[], NodeStatus],
    connected: Callable[[], bool],
    hooks: GitHooks | None = None,
    metrics: Callable[[], bytes] | None = None,
    dashboard: Dashboard | None = None,
    store: Callable[[], Store | None] | None = None,
) -> web.Application:
    """`metrics` renders the Prometheus text format (`meshd.agent.metrics`); `dashboard`
    serves `/_mesh/` but for the hooks' route; `store` (the agent's, once connected) has the
    ACME challenges' answers."""

    async def health(_: web.Request) -> web.Response:
        node = status()
        return web.json_response(
            {
                "droplet": node.droplet,
                "incarnation": node.incarnation,
                "instances": [_instance(i) for i in node.instances],
            }
        )

    async def full_status(_: web.Request) -> web.Response:
        node = status()
        return web.json_response(
            {
                "droplet": node.droplet,
                "address": node.address,
                "incarnation": node.incarnation,
                "size": node.size,
                "roles": list(node.roles),
                "nats_connected": connected(),
                "instances": [_instance(i) for i in node.instances],
            }
        )

    async def prometheus(_: web.Request) -> web.Response:
        assert metrics is not None
        body = await asyncio.to_thread(metrics)  # reads /proc: not on the event loop
        return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def acme_challenge(request: web.Request) -> web.Response:
        token = request.match_info["token"]
        current = store() if store is not None else None
        if not certs.CHALLENGE_TOKEN.fullmatch(token):
            raise web.HTTPNotFound(text="no such challenge\n")
        if current is None:
            raise web.HTTPServiceUnavailable(text="not connected to the mesh yet\n")
        try:
            entry = await current.get(subjects.CERTS_BUCKET, certs.challenge_key(token))
        except StoreUnavailable:
            raise web.HTTPServiceUnavailable(text="the mesh's state is not readable\n") from None
        if entry is None or not entry.value:
            raise web.HTTPNotFound(text="no such challenge\n")
        return web.Response(body=entry.value, content_type="text/plain")

    app = web.Application()
    app.add_routes([web.get("/health", health), web.get("/status", full_status)])
    if metrics is not None:
        app.add_routes([web.get("/metrics", prometheus)])
    if hooks is not None:
        app.add_routes([web.post(ROUTE, hooks.handle)])
    if dashboard is not None:
        app.add_routes(dashboard.routes())
    if store is not None:
        app.add_routes([web.get(f"{CHALLENGE_PATH}{{token}}", acme_challenge)])
    return app


async def serve(app: web.Application, address: str, port: int) -> web.AppRunner:
    """The app listening on `address:port`; the caller cleans the runner up."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, address, port).start()
    return runner
