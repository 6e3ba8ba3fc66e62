"""`meshctl metrics`: what Prometheus needs to scrape the mesh (docs/metrics.md)."""

from __future__ import annotations

import asyncio
import json

import click

from meshd.agent.config import AGENT_HTTP_PORT
from meshd.cli.context import load_context
from meshd.cli.session import connect, read_nodes


@click.group()
def metrics() -> None:
    """Every agent serves Prometheus metrics on http://<droplet address>:8080/metrics;
    deploy/prometheus/ holds a scrape configuration and alert rules."""


@metrics.command()
@click.option("--context", "context_name", metavar="NAME", help="Mesh to talk to.")
def targets(context_name: str | None) -> None:
    """Print the agents as Prometheus file-based discovery targets (JSON), labelled with
    droplet and mesh: `meshctl metrics targets > meshd-targets.json` beside prometheus.yml."""
    click.echo(json.dumps(asyncio.run(_targets(context_name)), indent=2))


async def _targets(context_name: str | None) -> list[dict[str, object]]:
    context = load_context(context_name)
    store = await connect(context)
    try:
        nodes = await read_nodes(store)
    finally:
        await store.close()
    return [
        {
            "targets": [f"{node.address}:{AGENT_HTTP_PORT}"],
            "labels": {"droplet": name, "mesh": context.mesh},
        }
        for name, node in sorted(nodes.items())
    ]
