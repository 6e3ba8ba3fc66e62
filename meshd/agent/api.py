"""The agent's HTTP endpoints on its droplet's address: `/health` for peers' probes,
`/status` for operators, `/metrics` for Prometheus, `POST /_mesh/hooks/git/<project>` for
push webhooks and the dashboard below `/_mesh/`, which the entry point's nginx passes on
(`meshd.agent.hooks`, `meshd.agent.dashboard`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web

from meshd.agent.dashboard import Dashboard
from meshd.agent.hooks import ROUTE, GitHooks
from protocol.messages import NodeStatus

__all__ = ["Dashboard", "GitHooks", "create_app", "serve"]  # the composition root builds both
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
) -> web.Application:
    """`metrics` renders the Prometheus text format (`meshd.agent.metrics`); `dashboard`
    serves `/_mesh/` but for the hooks' route."""

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

    app = web.Application()
    app.add_routes([web.get("/health", health), web.get("/status", full_status)])
    if metrics is not None:
        app.add_routes([web.get("/metrics", prometheus)])
    if hooks is not None:
        app.add_routes([web.post(ROUTE, hooks.handle)])
    if dashboard is not None:
        app.add_routes(dashboard.routes())
    return app


async def serve(app: web.Application, address: str, port: int) -> web.AppRunner:
    """The app listening on `address:port`; the caller cleans the runner up."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, address, port).start()
    return runner
